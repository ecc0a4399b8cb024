"""Operating Spindle as one operates gunicorn: its settings under gunicorn's names, from a
gunicorn.conf.py, SPINDLE_CMD_ARGS and the command line; the access log in gunicorn's
format (compared with a real gunicorn's, atom for atom) or JSON; the error log; SIGUSR1
after a log rotation; PasteDeploy; and one clear line for a bad setting."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import APPS, ROOT, SPINDLE_BIN, child_env, require_binary, run_spindle

# Every atom gunicorn knows, and each kind of braced one.
ALL_ATOMS = ('%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(m)s %(U)s %(q)s %(H)s %(B)s %(b)s '
             '"%(f)s" "%(a)s" %(T)s %(p)s %({x-request-id}i)s %({x-app}o)s '
             '%({content-type}o)s %({wsgi.url_scheme}e)s %({REQUEST_METHOD}e)s %({absent}i)s %(zz)s')
GUNICORN_CONF = """\
import multiprocessing

bind = "127.0.0.1:{port}"
workers = 2
threads = 4
timeout = 20
keepalive = 3
accesslog = {accesslog!r}
access_log_format = {fmt!r}
max_requests = 1000
max_requests_jitter = 50
pythonpath = {apps!r}
cores = multiprocessing.cpu_count()   # a variable of the file's own


def post_fork(server, worker):        # a gunicorn hook
    pass
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing listening on {port} after {timeout} s")


def wait_for(predicate, timeout: float = 10.0, what: str = "a condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"{what} not seen within {timeout} s")


def lines_of(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def send_request(port: int) -> bytes:
    """One request with every part a log line shows; the whole response."""
    raw = (b"GET /some%20path/x?q=1&r=two HTTP/1.1\r\n"
           b"Host: 127.0.0.1\r\n"
           b"Authorization: Basic YWxpY2U6c2VjcmV0\r\n"
           b"Referer: http://example.com/from\r\n"
           b"User-Agent: tester \"quoted\" 1.0\r\n"
           b"X-Request-Id: req-42\r\n"
           b"Connection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data
    return data


def run_and_log(command: list[str], port: int, log: Path, cwd: Path, reference: bool = False) -> str:
    """Starts a server, sends the request, stops it with SIGTERM, returns its log line.

    For the reference gunicorn, only its line matters. Its own shutdown has a race that is
    not ours to test: a worker signalled between its fork and its `init_signals` runs the
    arbiter's inherited handler, ignores the TERM, and is killed only after gunicorn's
    30 s graceful timeout. So gunicorn, in a session of its own, is killed at our bound."""
    proc = subprocess.Popen(command, cwd=cwd, env=child_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=reference)
    try:
        wait_listening(port, proc)
        send_request(port)
        line = wait_for(lambda: lines_of(log), what=f"a line in {log}")[-1]
    finally:
        out = stop(proc, reference)
    if out is not None:
        assert proc.returncode == 0, out.decode(errors="replace")
    return line


def stop(proc: subprocess.Popen, reference: bool) -> bytes | None:
    """SIGTERM and the output; None when the reference had to be killed."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=20)[0]
    except subprocess.TimeoutExpired:
        if not reference:
            raise
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=20)
    return None


def comparable(line: str) -> str:
    # Apart from time and pid, as the issue allows.
    return re.sub(r"<\d+>", "<PID>", re.sub(r"\[\d\d/\w{3}/\d{4}:[\d:]{8} [+-]\d{4}\]", "[TIME]", line))


@pytest.fixture
def gunicorn_python():
    import gunicorn  # noqa: F401  (tests/requirements.txt installs it: a missing one fails)
    return sys.executable


@pytest.mark.parametrize("how", ["config-file", "command-line"])
def test_a_gunicorn_deployment_runs_unchanged_and_logs_the_same_line(tmp_path, gunicorn_python, how):
    require_binary()
    port = free_port()
    log = tmp_path / "access.log"
    if how == "config-file":
        (tmp_path / "gunicorn.conf.py").write_text(GUNICORN_CONF.format(
            port=port, accesslog=str(log), fmt=ALL_ATOMS, apps=str(APPS)))
        args = ["-c", "gunicorn.conf.py", "ops_app:app"]
    else:
        args = ["-b", f"127.0.0.1:{port}", "-w", "2", "--threads", "4", "-t", "20", "--keep-alive", "3",
                "--access-logfile", str(log), "--access-logformat", ALL_ATOMS, "--max-requests", "1000",
                "--max-requests-jitter", "50", "--pythonpath", str(APPS), "ops_app:app"]
    theirs = run_and_log([gunicorn_python, "-m", "gunicorn", *args], port, log, tmp_path, reference=True)
    log.unlink()
    ours = run_and_log([str(SPINDLE_BIN), *args], port, log, tmp_path)
    assert comparable(ours) == comparable(theirs), f"\ngunicorn: {theirs}\nspindle:  {ours}"
    # Not trivially equal: the atoms carry the request.
    assert 'alice' in ours and '"GET /some%20path/x?q=1&r=two HTTP/1.1"' in ours, ours
    assert '/some path/x q=1&r=two' in ours and 'tester \\"quoted\\" 1.0' in ours, ours
    assert 'req-42 ops \\"quoted\\" text/plain http GET - -' in ours, ours


def test_json_access_log_parses_and_usr1_reopens_after_rotation(spindle, tmp_path):
    log = tmp_path / "access.jsonl"
    srv = spindle("ops_app:app", "--access-logfile", str(log), "--access-logformat", "json")
    for status in (200, 404, 503):
        assert srv.get(f"/status/{status}" if status != 200 else "/hello?x=1").status == status
    records = wait_for(lambda: (lambda ls: ls if len(ls) >= 3 else None)(lines_of(log)),
                       what="three JSON lines")
    # Each Python thread buffers its own lines: across threads, lines come in any order.
    parsed = sorted((json.loads(line) for line in records), key=lambda r: r["status"])
    assert [r["status"] for r in parsed] == [200, 404, 503]
    first = parsed[0]
    assert first["method"] == "GET" and first["path"] == "/hello" and first["query"] == "x=1"
    assert first["remote_addr"] == "127.0.0.1" and first["protocol"] == "HTTP/1.1"
    assert first["bytes"] == len(b"hello from ops_app\n") and first["duration_us"] >= 0
    assert first["pid"] == srv.serving_pid and "T" in first["time"]

    # A log rotation: the file is moved away, SIGUSR1 makes the workers open it anew.
    rotated = tmp_path / "access.jsonl.1"
    log.rename(rotated)
    mark = srv.log_mark()
    os.kill(srv.pid, signal.SIGUSR1)
    srv.wait_for_log(r"SIGUSR1 received: log files reopened", 5, since=mark, what="the reopen")
    assert srv.get("/after-rotation").status == 200
    after = wait_for(lambda: lines_of(log), what="a line in the new file")
    assert json.loads(after[0])["path"] == "/after-rotation"
    assert len(lines_of(rotated)) == 3, "the moved file got a line after the rotation"


def test_error_log_file_in_gunicorns_layout_and_json(spindle, tmp_path):
    errors = tmp_path / "error.log"
    port = free_port()
    require_binary()
    proc = subprocess.Popen([str(SPINDLE_BIN), "--bind", f"127.0.0.1:{port}", "--pythonpath", str(APPS),
                             "--error-logfile", str(errors), "--capture-output", "ops_app:app"],
                            cwd=ROOT, env=child_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc)
        line = wait_for(lambda: [l for l in lines_of(errors) if "listening on" in l], what="listening line")[0]
        assert re.match(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] \[INFO\] listening on ", line), line
        rotated = tmp_path / "error.log.1"
        errors.rename(rotated)
        os.kill(proc.pid, signal.SIGUSR1)
        wait_for(lambda: any("SIGUSR1" in l for l in lines_of(errors)), what="the supervisor's line in the new file")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert out == b"", f"with --error-logfile and --capture-output nothing goes to the terminal: {out!r}"
    assert any("stopped" in l for l in lines_of(errors))

    srv = spindle("ops_app:app", "--error-logformat", "json")
    records = [json.loads(l) for l in srv.lines if l.startswith("{")]
    assert any(r["level"] == "info" and r["message"].startswith("listening on") for r in records), srv.lines
    assert all({"time", "pid", "level", "message"} <= r.keys() for r in records)


def test_env_umask_and_name(spindle):
    srv = spindle("ops_app:app", "-e", "OPS_GREETING=hi=there", "--env", "OPS_OTHER=2",
                  "--umask", "0o27", "-n", "opsdemo")
    assert srv.get("/env/OPS_GREETING").body == b"hi=there"
    assert srv.get("/env/OPS_OTHER").body == b"2"
    assert srv.get("/umask").body == b"0o27"
    with open(f"/proc/{srv.pid}/comm") as f:
        assert f.read().strip() == "opsdemo"
    with open(f"/proc/{srv.serving_pid}/comm") as f:
        assert f.read().strip() == "opsdemo:w1"


def print_config(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    result = subprocess.run([str(SPINDLE_BIN), *args, "--print-config"], cwd=cwd, capture_output=True,
                            text=True, timeout=30, env={**child_env(), **(env or {})})
    assert result.returncode == 0, result.stderr
    settings = {}
    for line in result.stdout.splitlines():
        name, rest = line.split(" = ", 1)
        value, source = rest.rsplit("  # ", 1)
        settings[name] = (value, source)
    return settings


def test_precedence_file_then_env_then_command_line_and_print_config(tmp_path):
    require_binary()
    (tmp_path / "spindle.conf.py").write_text("workers = 4\ntimeout = 60\nkeepalive = 9\nloglevel = 'warning'\n")
    (tmp_path / "pyproject.toml").write_text('[tool.spindle]\nthreads = 6\nworkers = 5\n')
    settings = print_config(["--timeout", "10"], tmp_path, {"SPINDLE_CMD_ARGS": "--keep-alive 7 --workers 3"})
    assert settings["workers"] == ("3", "SPINDLE_CMD_ARGS")
    assert settings["timeout"] == ("10", "command line")
    assert settings["keep_alive"] == ("7", "SPINDLE_CMD_ARGS")
    assert settings["log_level"] == ('"warning"', "spindle.conf.py")
    assert settings["threads"] == ("6", "pyproject.toml [tool.spindle]")
    assert settings["backlog"][1] == "default"
    # gunicorn's PORT and WEB_CONCURRENCY.
    settings = print_config([], ROOT, {"PORT": "5123", "WEB_CONCURRENCY": "3"})
    assert settings["bind"] == ('["0.0.0.0:5123"]', "default (PORT)")
    assert settings["workers"] == ("3", "environment WEB_CONCURRENCY")
    # GUNICORN_CMD_ARGS when there is no SPINDLE_CMD_ARGS.
    settings = print_config([], ROOT, {"GUNICORN_CMD_ARGS": "--workers 2"})
    assert settings["workers"] == ("2", "GUNICORN_CMD_ARGS")


def one_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.parametrize("args, expected", [
    (["--wokers", "2"], "error: unknown setting --wokers: did you mean --workers?"),
    (["--access-log-file", "x"], "error: unknown setting --access-log-file: did you mean --access-logfile?"),
    (["--workers", "two"], "error: invalid value 'two' for '--workers <N>'"),
    (["--log-level", "loud"], "error: invalid value 'loud' for '--log-level <LOG_LEVEL>'"),
    (["--access-logfile", "-", "--access-logformat", "%(h"], "error: --access-logformat: unterminated %("),
    (["--keyfile", "k.pem"], "error: --keyfile: Spindle does not terminate TLS"),
    (["--error-logfile", "/nonexistent-dir/error.log"], "error: --error-logfile /nonexistent-dir/error.log: No such file"),
])
def test_a_bad_setting_is_one_line_and_exit_2(args, expected):
    assert one_error(run_spindle([*args, "wsgi_app:app"])).startswith(expected)


@pytest.mark.parametrize("text, expected", [
    ("workers = (\n", "line 1: SyntaxError"),
    ("import os\nworkers = int(os.environ['NO_SUCH_VARIABLE'])\n", "line 2: KeyError"),
    ("wrokers = 3\n", "unknown setting wrokers: did you mean workers?"),
    ("workers = 'many'\n", "invalid value 'many' for '--workers <N>'"),
    ("workers = {'a': 1}\n", "workers = {'a': 1}: expected a string"),
])
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path, text, expected):
    conf = tmp_path / "bad.conf.py"
    conf.write_text(text)
    line = one_error(run_spindle(["-c", str(conf), "wsgi_app:app"]))
    assert str(conf) in line and expected in line, line


def test_gunicorn_only_settings_warn_once_each():
    result = run_spindle(["-k", "gthread", "--worker-connections", "500", "--check-config", "wsgi_app:app"])
    assert result.returncode == 0, result
    warnings = [l for l in result.stderr.splitlines() if "gunicorn setting Spindle does without" in l]
    # --worker-connections is a setting of Spindle's own (admission control): no warning.
    assert len(warnings) == 1 and "--threads" in warnings[0], result.stderr


def test_pastedeploy_server_runner(spindle, tmp_path):
    import paste.deploy  # noqa: F401  (tests/requirements.txt installs it)
    ini = tmp_path / "site.ini"
    ini.write_text("[app:main]\nuse = call:ops_app:paste_factory\n\n"
                   "[server:main]\nuse = egg:spindle\nhost = 127.0.0.1\nport = 0\n"
                   "io_threads = 2\nthreads = 2\n")
    script = ("import sys; sys.path.insert(0, %r)\n"
              "from paste.deploy import loadapp, loadserver\n"
              "uri = 'config:' + %r\n"
              "loadserver(uri)(loadapp(uri))\n" % (str(APPS), str(ini)))
    srv = spindle(None, base=False, command=[sys.executable, "-c", script])
    assert srv.get("/").body == b"hello from ops_app\n"
