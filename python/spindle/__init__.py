"""Spindle: a fast, strict WSGI server (PEP 3333) with its core in Rust.

From a shell::

    spindle myproject.wsgi:application --bind 0.0.0.0:8000
    python -m spindle myproject.wsgi:application

From Python::

    import spindle
    spindle.serve("myproject.wsgi:application", bind="0.0.0.0:8000")   # an import string
    spindle.serve(app, bind="0.0.0.0:8000", threads=8)                 # an app object
    spindle.run(["--bind", "0.0.0.0:8000", "myproject.wsgi:application"])

The command (and `run()`) starts a supervisor in the calling process, which runs the
application in ``--workers`` worker processes: ``python -m spindle`` of this same Python,
with this process's ``sys.path``, so the virtual environment it runs in is the one the
application is imported from. ``--single-process``, and `serve()` given an application
object, serve in the calling process itself. `spindle --help` lists every setting.

Importing this package loads no native code: the extension ``spindle._native`` is loaded
by `run()` and `serve()` only, in the main interpreter. An application running in one of
Spindle's sub-interpreters may import ``spindle`` (to read ``__version__``, say), but not
call `run()` or `serve()` there.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # no `typing` import at run time: `import spindle` stays cheap
    from typing import Any, Callable, Iterable, Sequence

__all__ = ["run", "serve", "paste_server", "__version__"]


def __getattr__(name: str) -> str:
    # __version__ on first use: importlib.metadata costs tens of milliseconds to import,
    # and every `spindle` command starts by importing this package.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("spindle")
        except PackageNotFoundError:  # a source tree on sys.path, not installed
            value = "unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def run(argv: Sequence[str] | None = None) -> int:
    """Runs Spindle with a command line, as the ``spindle`` command does, and returns its
    exit code: 0 after a clean stop (SIGTERM, or SIGINT), 1 when it could not start (the
    reason is on stderr), 2 for a bad setting. ``argv`` excludes the program name;
    by default it is ``sys.argv[1:]``. Settings from a config file (``-c FILE``, or
    ``./spindle.conf.py``), ``[tool.spindle]`` in ``./pyproject.toml`` and
    ``SPINDLE_CMD_ARGS`` come first, and the command line overrides them.

    Call it from the main thread: Spindle takes SIGINT, SIGTERM and SIGHUP while it serves
    (Python's own handlers, such as KeyboardInterrupt, do not run meanwhile) and gives
    them back when it returns.
    """
    from spindle import _native

    if argv is None:
        argv = sys.argv[1:]
    argv = [os.fsdecode(arg) for arg in argv]
    if not any(arg.startswith("--internal-worker") for arg in argv):
        # A worker gets its supervisor's merged settings and reads no file again.
        from spindle import _config

        try:
            argv = _config.layers(argv, _native.settings())
        except _config.ConfigError as exc:
            print("error: %s" % exc, file=sys.stderr)
            return 2
    return _native.run(argv, None)


def serve(app: str | Callable[..., Iterable[bytes]], **settings: Any) -> None:
    """Serves ``app`` until SIGINT or SIGTERM; raises ``SystemExit`` with the exit code
    when Spindle could not start (the reason is on stderr) or stopped with an error.

    ``app`` is an import string (``"myproject.wsgi:application"``), which every
    sub-interpreter imports for itself, or a WSGI callable, which belongs to this
    interpreter and so runs on the main interpreter (``interpreters="main"``).

    ``settings`` are the command line's flags with ``_`` for ``-``: ``bind="0.0.0.0:8000"``
    (a list for several), ``threads=8``, ``access_log=True``. ``True`` passes a flag
    without a value; ``None`` and ``False`` leave it out.
    """
    from spindle import _native

    argv = _settings_to_argv(settings)
    if isinstance(app, str):
        code = _native.run(argv + [app], None)
    elif callable(app):
        code = _native.run(argv, app)
    else:
        raise TypeError("app must be an import string or a WSGI callable, not %s" % type(app).__name__)
    if code:
        raise SystemExit(code)


def paste_server(app: Callable[..., Iterable[bytes]], global_conf: dict[str, str] | None = None,
                 **local_conf: str) -> None:
    """PasteDeploy's server runner (``[server:main]`` with ``use = egg:spindle``): serves
    the application object PasteDeploy loaded, in this process, until SIGINT or SIGTERM.

    The section's keys are Spindle's settings with ``_`` for ``-`` (``threads = 8``,
    ``access_logfile = -``), plus PasteDeploy's usual ``host`` and ``port`` (or ``bind``,
    or waitress's ``listen``, several separated by spaces). ``true``/``false`` switch a
    flag. The application object lives in this interpreter, so it runs on the main
    interpreter, in one process (``--workers`` needs an import string:
    ``spindle myproject.wsgi:application``).
    """
    conf = dict(local_conf)
    host = conf.pop("host", None)
    port = conf.pop("port", None)
    binds = (conf.pop("bind", "") + " " + conf.pop("listen", "")).split()
    if host is not None or port is not None:
        host = host or "127.0.0.1"
        binds.append("%s:%s" % ("[%s]" % host if ":" in host else host, port or "8000"))
    # The object belongs to this interpreter (even when SPINDLE_INTERPRETERS says sub).
    settings: dict[str, Any] = {"interpreters": "main"}
    if binds:
        settings["bind"] = binds
    for key, value in conf.items():
        lowered = value.strip().lower()
        if lowered in ("true", "yes", "on"):
            settings[key] = True
        elif lowered in ("false", "no", "off"):
            settings[key] = False
        else:
            settings[key] = value
    serve(app, **settings)


def _settings_to_argv(settings: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is None or value is False:
            continue
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [flag, os.fsdecode(item) if isinstance(item, (bytes, os.PathLike)) else str(item)]
        else:
            argv += [flag, os.fsdecode(value) if isinstance(value, (bytes, os.PathLike)) else str(value)]
    return argv
