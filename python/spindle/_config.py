"""Settings from outside the command line, read once by the process that starts Spindle
(the supervisor) before any interpreter starts, and passed to the Rust core as layers of
command-line arguments, lowest precedence first:

1. ``[tool.spindle]`` in ``./pyproject.toml``;
2. a config file of Python like ``gunicorn.conf.py``: ``-c FILE``, else ``./spindle.conf.py``
   when there is one;
3. ``SPINDLE_CMD_ARGS`` (else ``GUNICORN_CMD_ARGS``), split as a shell would;
4. the command line.

A later layer overrides an earlier one, setting by setting (gunicorn's order). The Rust
side (``config.rs``) parses each layer, says which one a bad value came from, and shows
where each setting came from with ``--print-config``. Workers get the merged command line
and read none of this again.

A config file's names are gunicorn's (``workers``, ``keepalive``, ``accesslog``,
``raw_env``...) or Spindle's own with ``_`` for ``-`` (``io_threads``). Like gunicorn, other
names are the file's own variables and are ignored, unless one is so close to a setting's
name that it is surely a typo: that is an error naming the setting meant.
"""

from __future__ import annotations

import os
import sys

# difflib and shlex (which bring re, collections, enum...) are imported where used: every
# `spindle` process reads its layers, and what a module imports stays in its memory.

# Keep in step with config.rs: LAYER_MARK.
LAYER_MARK = "\0spindle-layer:"

# gunicorn's config-file names whose flag is not simply the name with '-' for '_'.
GUNICORN_NAMES = {
    "keepalive": "keep-alive",
    "preload_app": "preload",
    "accesslog": "access-logfile",
    "access_log_format": "access-logformat",
    "errorlog": "error-logfile",
    "loglevel": "log-level",
    "raw_env": "env",
    "pidfile": "pid",
    "proc_name": "name",
    "proxy_allow_ips": "proxy-allow-from",
    "secure_scheme_headers": "secure-scheme-header",
    "logconfig": "log-config",
    "logconfig_json": "log-config-json",
    "syslog": "log-syslog",
    "syslog_addr": "log-syslog-to",
    "syslog_prefix": "log-syslog-prefix",
    "syslog_facility": "log-syslog-facility",
    "reload_extra_files": "reload-extra-file",
    "wsgi_app": "wsgi-app",
}

# gunicorn settings with no flag here, and what becomes of them.
GUNICORN_IGNORED = {
    "logconfig_dict": "Spindle writes its logs itself (--error-logfile, --access-logfile)",
    "forwarder_headers": "header names with an underscore (SCRIPT_NAME, PATH_INFO) never reach the "
                         "environ, so they cannot pose as these variables; use --root-path for SCRIPT_NAME",
    "raw_paste_global_conf": "PasteDeploy runs Spindle through its own entry point",
    "config": None,
    "print_config": None,
    "check_config": None,
}

# gunicorn's server hooks: functions a gunicorn.conf.py may define.
GUNICORN_HOOKS = {
    "on_starting", "on_reload", "when_ready", "pre_fork", "post_fork", "post_worker_init",
    "worker_int", "worker_abort", "pre_exec", "pre_request", "post_request", "child_exit",
    "worker_exit", "nworkers_changed", "on_exit", "ssl_context",
}


class ConfigError(Exception):
    """A config file that cannot be read: one line to print, exit code 2."""


def layers(argv: list[str], settings: tuple[str, ...]) -> list[str]:
    """``argv`` (the command line) with the layers below it in front, each behind its
    marker. ``settings``: every long flag name the Rust side knows."""
    if any(arg in ("-h", "--help", "--version") for arg in argv):
        return argv
    known = set(settings)
    env_name = "SPINDLE_CMD_ARGS" if "SPINDLE_CMD_ARGS" in os.environ else "GUNICORN_CMD_ARGS"
    try:
        env_value = os.environ.get(env_name, "")
        if env_value.strip():
            import shlex

            env_args = shlex.split(env_value)
        else:
            env_args = []
    except ValueError as exc:
        raise ConfigError("%s: %s" % (env_name, exc)) from None
    out: list[str] = []
    table = _pyproject(known)
    if table is not None:
        out += [LAYER_MARK + "pyproject.toml [tool.spindle]", *table]
    path = _config_path(argv) or _config_path(env_args)
    if path is None and os.path.isfile("spindle.conf.py"):
        path = "spindle.conf.py"
    if path is not None:
        out += [LAYER_MARK + path, *_config_file(path, known)]
    if env_args:
        out += [LAYER_MARK + env_name, *env_args]
    if not out:
        return argv
    return out + [LAYER_MARK + "command line", *argv]


def _config_path(args: list[str]) -> str | None:
    found = None
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith("--config="):
            found = arg[len("--config="):]
        elif arg.startswith("-c") and len(arg) > 2 and not arg.startswith("--"):
            found = arg[2:]
    return found


def _flag(name: str, known: set[str]) -> str | None:
    """The flag a setting's name stands for, or None for a name that is no setting."""
    if name in GUNICORN_NAMES:
        return GUNICORN_NAMES[name]
    flag = name.replace("_", "-")
    return flag if flag in known else None


def _tokens(source: str, name: str, flag: str, value: object) -> list[str]:
    if name == "sendfile":
        return ["--no-sendfile"] if value is False else []
    if value is None or value is False:
        return []
    if value is True:
        return ["--" + flag]
    if name == "umask" and isinstance(value, int):
        return ["--umask", oct(value)]
    if name == "secure_scheme_headers" and isinstance(value, dict):
        # gunicorn's {header: value}; an empty dict turns the defaults off.
        if not value:
            return ["--" + flag, ""]
        out = []
        for header, secure in value.items():
            out += ["--" + flag, "%s=%s" % (header, secure)]
        return out
    if name in ("forwarded_allow_ips", "proxy_allow_ips") and isinstance(value, (list, tuple)):
        return ["--" + flag, ",".join(str(v) for v in value)]
    if name == "pythonpath" and isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    if isinstance(value, (list, tuple)):
        out: list[str] = []
        for item in value:
            out += ["--" + flag, os.fsdecode(item) if isinstance(item, (bytes, os.PathLike)) else str(item)]
        return out
    if isinstance(value, (str, int, float, bytes, os.PathLike)):
        return ["--" + flag, os.fsdecode(value) if isinstance(value, (bytes, os.PathLike)) else str(value)]
    raise ConfigError("%s: %s = %r: expected a string, a number, True/False or a list" % (source, name, value))


def _near(name: str, known: set[str]) -> str | None:
    import difflib

    names = {flag.replace("-", "_") for flag in known} | set(GUNICORN_NAMES)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.8)
    return close[0] if close else None


def _warn(message: str) -> None:
    print("warning: %s" % message, file=sys.stderr)


def _config_file(path: str, known: set[str]) -> list[str]:
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as exc:
        raise ConfigError("-c %s: %s" % (path, exc.strerror or exc)) from None
    namespace: dict[str, object] = {"__file__": os.path.abspath(path), "__name__": "__config__"}
    try:
        exec(compile(source, path, "exec"), namespace)
    except SyntaxError as exc:
        raise ConfigError("%s, line %s: %s: %s" % (path, exc.lineno, type(exc).__name__, exc.msg)) from None
    except BaseException as exc:  # noqa: BLE001 - whatever the file raised is its error
        line = _failing_line(exc, path)
        raise ConfigError("%s%s: %s: %s" % (path, line, type(exc).__name__, exc)) from None
    out: list[str] = []
    for name, value in namespace.items():
        if name.startswith("_") or not name.islower():
            continue
        if callable(value) or type(value).__name__ == "module":
            if name in GUNICORN_HOOKS:
                _warn("%s: the server hook %s() is not run: Spindle has no gunicorn hooks "
                      "(its workers are spawned, not forked)" % (path, name))
            continue
        if name in GUNICORN_IGNORED:
            why = GUNICORN_IGNORED[name]
            if why is not None and value:
                _warn("%s: %s is a gunicorn setting Spindle does without: %s; ignored" % (path, name, why))
            continue
        flag = _flag(name, known)
        if flag is None:
            near = _near(name, known)
            if near is not None:
                raise ConfigError("%s: unknown setting %s: did you mean %s?" % (path, name, near))
            continue  # a variable of the file's own, as gunicorn allows
        out += _tokens(path, name, flag, value)
    return out


def _failing_line(exc: BaseException, path: str) -> str:
    tb = exc.__traceback__
    line = ""
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == path:
            line = ", line %d" % tb.tb_lineno
        tb = tb.tb_next
    return line


def _pyproject(known: set[str]) -> list[str] | None:
    if not os.path.isfile("pyproject.toml"):
        return None
    try:
        import tomllib
    except ImportError:  # Python 3.10: no TOML reader in the standard library
        return None
    try:
        with open("pyproject.toml", "rb") as f:
            table = tomllib.load(f).get("tool", {}).get("spindle")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("pyproject.toml: %s" % exc) from None
    if not table:
        return None
    source = "pyproject.toml [tool.spindle]"
    out: list[str] = []
    for key, value in table.items():
        name = key.replace("-", "_")
        flag = _flag(name, known)
        if flag is None:
            near = _near(name, known)
            hint = " (did you mean %s?)" % near if near else ""
            raise ConfigError("%s: unknown setting %s%s" % (source, key, hint))
        out += _tokens(source, name, flag, value)
    return out
