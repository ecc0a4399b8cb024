"""Fixtures that run the real Spindle, installed from its wheel.

`SPINDLE_BIN` names the command (default: the `spindle` console script of the
virtual environment these tests run in, where scripts/test.sh installed the
wheel); `SPINDLE_DRIVER` and `SPINDLE_INTERPRETERS` are passed through
untouched, Spindle reads them itself. Spindle runs in that venv's Python, so
the test apps (tests/apps, on --pythonpath) import Flask and friends from it;
VIRTUAL_ENV is removed from its environment to show nothing relies on it.

A server is ready when it prints `listening on http://HOST:PORT` (uwsgi://, fastcgi://,
scgi:// under --protocol); with
`--bind 127.0.0.1:0` that line carries the real port. Its combined
stdout/stderr is drained by a thread into a list of lines for the tests to
inspect. Every server is stopped with SIGTERM and must exit 0.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rawhttp import RawConnection, request

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "tests" / "apps"
SPINDLE_BIN = Path(os.environ.get("SPINDLE_BIN") or Path(sys.prefix) / "bin" / "spindle")
# The scheme is the protocol the listener speaks (--protocol): http, uwsgi, fastcgi, scgi.
READY_V4 = r"listening on (?:http|uwsgi|fastcgi|scgi)://127\.0\.0\.1:(\d+)"
READY_V6 = r"listening on (?:http|uwsgi|fastcgi|scgi)://\[::1\]:(\d+)"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

# Lines that wsgiref.validate produces when the server breaks PEP 3333 in a
# way it cannot raise for (a warning is turned into an error by the apps, an
# iterator nobody closed is only reported from __del__).
# "Exception ignored" is how Python reports an exception it could not raise
# (in __del__, in a close() during finalization): never expected here.
VALIDATOR_COMPLAINTS = ("WSGIWarning", "Iterator garbage collected without being closed", "Exception ignored")


def base_args() -> list[str]:
    return ["--bind", "127.0.0.1:0", "--pythonpath", str(APPS),
            "--log-level", "debug", "--io-threads", "2", "--py-threads", "2"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(name, None)
    return env


def require_binary() -> None:
    if not SPINDLE_BIN.exists():
        pytest.fail(f"spindle not found at {SPINDLE_BIN}: install the wheel into this venv "
                    f"(scripts/test.sh does) or set SPINDLE_BIN", pytrace=False)


class Spindle:
    """One running Spindle process."""

    _live: list["Spindle"] = []

    def __init__(self, args: list[str], ready: list[str], command: list[str] | None = None,
                 env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()):
        """`command`: what to run instead of the spindle command (args follow it);
        `env`: added to its environment; `pass_fds`: descriptors it inherits."""
        if command is None:
            require_binary()
        self.args = [*(command or [str(SPINDLE_BIN)]), *args]
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._closed_output = False
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env={**child_env(), **(env or {})},
                                     cwd=ROOT, pass_fds=pass_fds)
        self._drain = threading.Thread(target=self._drain_output, daemon=True)
        self._drain.start()
        Spindle._live.append(self)
        self.ports: list[int] = []
        deadline = time.monotonic() + START_TIMEOUT
        try:
            for pattern in ready:
                match = self.wait_for_log(pattern, deadline - time.monotonic(), what="readiness line")
                if match.re.groups and match.group(1).isdigit():
                    self.ports.append(int(match.group(1)))
        except BaseException:
            self.kill()
            raise
        self.host = "127.0.0.1"
        self.port = self.ports[0] if self.ports else None

    # -- output -----------------------------------------------------------

    def _drain_output(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                self._cond.notify_all()
        with self._cond:
            self._closed_output = True
            self._cond.notify_all()

    def log_mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def log_since(self, mark: int = 0) -> str:
        with self._cond:
            return "\n".join(self.lines[mark:])

    def wait_for_log(self, pattern: str, timeout: float = 5.0, since: int = 0,
                     what: str = "log line") -> re.Match:
        """First line from index `since` on matching `pattern`; fails with the
        log seen when none appears in `timeout` seconds or the process ends."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked = since
        with self._cond:
            while True:
                for i in range(checked, len(self.lines)):
                    match = regex.search(self.lines[i])
                    if match:
                        return match
                checked = max(checked, len(self.lines))
                left = deadline - time.monotonic()
                if self._closed_output or left <= 0:
                    status = "exited with %s" % self.proc.poll() if self._closed_output else "timed out"
                    seen = "\n".join(self.lines[since:][-80:])
                    pytest.fail(f"{what} /{pattern}/ not seen ({status} after "
                                f"{timeout:.1f} s); output:\n{seen}", pytrace=False)
                self._cond.wait(left)

    def assert_no_validator_complaints(self, since: int = 0) -> None:
        bad = [line for line in self.log_since(since).splitlines()
               if any(c in line for c in VALIDATOR_COMPLAINTS)]
        assert not bad, "wsgiref.validate complained:\n" + "\n".join(bad[:20])

    # -- talking to it ----------------------------------------------------

    def connect(self, timeout: float = 5.0, port: int | None = None, host: str | None = None) -> RawConnection:
        return RawConnection(host or self.host, port or self.port, timeout)

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    @property
    def host_header(self) -> str:
        return f"{self.host}:{self.port}"

    def get(self, target: str, headers: list[tuple[str, str]] | None = None, timeout: float = 5.0):
        """One request on a fresh connection, answered within `timeout`."""
        with self.connect(timeout) as conn:
            conn.send(request("GET", target, self.host_header, headers))
            return conn.read_response()

    def assert_serving(self, timeout: float = 2.0) -> None:
        """A good request on a NEW connection is answered at once."""
        resp = self.get("/path/still-serving", timeout=timeout)
        assert resp.status == 200 and resp.body == b"/path/still-serving", resp

    # -- process ----------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """The processes the started one spawned: its workers when it supervises."""
        children: list[int] = []
        for task in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{task}/children") as f:
                    children += [int(p) for p in f.read().split()]
            except FileNotFoundError:
                pass  # a thread that ended since the listing
        return children

    @property
    def serving_pid(self) -> int:
        """The process that runs the application: the one worker of a supervisor started
        with one (the default), or the started process itself with --single-process."""
        workers = self.worker_pids()
        if not workers:
            return self.pid
        assert len(workers) == 1, f"serving_pid needs one worker, and there are {workers}"
        return workers[0]

    def proc_status(self, field: str) -> int:
        """A /proc/<pid>/status field in KiB (VmRSS, VmHWM) of the serving process."""
        with open(f"/proc/{self.serving_pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise KeyError(field)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """Send `sig` and wait; the exit code, or None after a SIGKILL."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        self._drain.join(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._drain.join(5)
        if self in Spindle._live:
            Spindle._live.remove(self)

    def finish(self) -> None:
        """Teardown: SIGTERM must end the server with exit code 0 within
        STOP_TIMEOUT, and the validator must have had nothing to say."""
        try:
            code = self.stop()
            assert code == 0, (f"spindle exited with {code} after SIGTERM "
                               f"(None: still running after {STOP_TIMEOUT} s, killed); "
                               f"last output:\n" + "\n".join(self.lines[-40:]))
            self.assert_no_validator_complaints()
        finally:
            self.kill()


class SpindleFactory:
    def __init__(self):
        self.servers: list[Spindle] = []

    def __call__(self, app_spec: str | None, *extra_args: str, ready: list[str] | None = None,
                 base: bool = True, command: list[str] | None = None,
                 env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()) -> Spindle:
        args = (base_args() if base else []) + list(extra_args)
        if app_spec is not None:
            args.append(app_spec)
        server = Spindle(args, ready or [READY_V4], command, env, pass_fds)
        self.servers.append(server)
        return server

    def finish_all(self) -> None:
        errors = []
        for server in self.servers:
            try:
                server.finish()
            except AssertionError as exc:
                errors.append(str(exc))
        if errors:
            pytest.fail("\n\n".join(errors), pytrace=False)


@pytest.fixture
def spindle():
    """Factory: spindle(app_spec, *extra_args) -> a ready server, stopped at teardown."""
    factory = SpindleFactory()
    yield factory
    factory.finish_all()


@pytest.fixture(scope="module")
def module_spindle():
    """The same factory, with servers shared by a whole test module."""
    factory = SpindleFactory()
    yield factory
    factory.finish_all()


@pytest.fixture(scope="module")
def server(module_spindle):
    """The module's shared server running tests/apps/wsgi_app.py."""
    return module_spindle("wsgi_app:app")


def run_spindle(args: list[str], timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess:
    """Run the binary to completion (for flags and failures that exit)."""
    require_binary()
    return subprocess.run([str(SPINDLE_BIN), *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, errors="replace", timeout=timeout, env=child_env(), cwd=ROOT)


# `SPINDLE_INLINE=1` (passed through, Spindle reads it): the I/O threads run the app
# themselves (--inline); scripts/test.sh runs the conformance files so once. A test marked
# `needs_pool` is about what only the Python threads do (an app that waits for another
# request of the same thread, the queue, --timeout of a running call) and is skipped then.
INLINE = os.environ.get("SPINDLE_INLINE", "").lower() in ("1", "true", "yes", "on", "y", "t")


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_pool: needs the Python threads to run the app "
                                       "(skipped under SPINDLE_INLINE=1)")


def pytest_collection_modifyitems(config, items):
    if not INLINE:
        return
    skip = pytest.mark.skip(reason="--inline runs one request of an I/O thread at a time")
    for item in items:
        if "needs_pool" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.spindle_failed = report.failed


@pytest.fixture(autouse=True)
def _server_log_checks(request):
    """After each test: no validator complaint in any live server's log
    during it; and when the test failed, show what the servers logged."""
    marks = {id(s): s.log_mark() for s in Spindle._live}
    yield
    if getattr(request.node, "spindle_failed", False):
        for s in Spindle._live:
            text = "\n".join(s.log_since(marks.get(id(s), 0)).splitlines()[-60:])
            print(f"--- spindle pid {s.pid} ({' '.join(s.args[1:])}) log during the test ---\n{text}")
        return
    for s in Spindle._live:
        s.assert_no_validator_complaints(since=marks.get(id(s), 0))
