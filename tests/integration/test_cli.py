"""The command line: flags, app loading, errors with their exit codes,
binding and graceful shutdown."""

import json
import platform
import re
import signal
import socket
import sys

import pytest

from conftest import READY_V4, READY_V6, base_args, run_spindle
from rawhttp import request

PY_MAJOR_MINOR = "%d.%d" % sys.version_info[:2]

ALL_FLAGS = ["--bind", "--unix-socket-mode", "--pid", "--user", "--group", "--io-threads", "--threads", "--py-threads", "--max-threads", "--thread-idle-timeout",
             "--sub-interpreters", "--interpreters", "--workers", "--single-process", "--timeout",
             "--max-requests", "--max-requests-jitter", "--max-worker-memory", "--preload", "--reload", "--chdir", "--pythonpath", "--log-level",
             "--access-log", "--access-logfile", "--access-logformat", "--error-logfile", "--error-logformat",
             "--capture-output", "--config", "--print-config", "--check-config", "--umask", "--name", "--env", "--keep-alive", "--backlog", "--driver", "--limit-request-line",
             "--limit-request-fields", "--limit-request-field-size", "--limit-request-head",
             "--limit-request-body", "--header-timeout", "--root-path", "--version", "--help"]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


# -- information --------------------------------------------------------------

def test_version():
    result = run_spindle(["--version"])
    assert result.returncode == 0, result
    out = result.stdout + result.stderr
    assert re.search(r"^spindle \d+\.\d+\.\d+", out, re.M), out
    match = re.search(r"Python (3\.\d+\.\d+)", out)
    assert match, out
    assert match.group(1) == platform.python_version(), \
        f"spindle runs on Python {match.group(1)}, its venv has {platform.python_version()}"


def test_venv_flag_is_gone_with_the_fix():
    # Spindle runs in the Python that starts it: an old command line gets the fix.
    result = run_spindle(["--venv", "/srv/app/.venv", "wsgi_app:app"])
    assert result.returncode == 2, result
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "/srv/app/.venv/bin/spindle" in errors[0], result.stderr


def test_help_lists_every_flag():
    result = run_spindle(["--help"])
    assert result.returncode == 0, result
    out = result.stdout + result.stderr
    missing = [flag for flag in ALL_FLAGS if not re.search(re.escape(flag) + r"\b", out)]
    assert not missing, f"--help does not mention {missing}:\n{out}"


@pytest.mark.parametrize("args", [
    ["--no-such-flag"],
    ["--io-threads", "lots"],
    ["--driver", "carrier-pigeon"],
    ["--log-level", "chatty"],
    ["--unix-socket-mode", "999"],
    ["--bind", "fd://three"],
    ["--bind", "unix:"],
], ids=["unknown-flag", "bad-number", "bad-driver", "bad-log-level", "bad-mode", "bad-fd", "empty-unix-path"])
def test_bad_command_line_exits_2(args):
    result = run_spindle(args + ["wsgi_app:app"])
    assert result.returncode == 2, f"exit {result.returncode}; stderr:\n{result.stderr}"
    assert result.stderr.strip(), "no message for a bad command line"
    assert "listening on" not in result.stderr


# -- app loading errors ---------------------------------------------------------

def test_missing_app_module_exits_1():
    result = run_spindle(base_args() + ["nosuchmodule:app"])
    assert result.returncode == 1, f"exit {result.returncode}; stderr:\n{result.stderr}"
    errors = error_lines(result.stderr)
    assert len(errors) == 1, f"want one error: line, got {errors}; stderr:\n{result.stderr}"
    assert "No module named 'nosuchmodule'" in errors[0], errors[0]


def test_failing_import_inside_app_exits_1_with_traceback():
    result = run_spindle(base_args() + ["broken_import:app"])
    assert result.returncode == 1, f"exit {result.returncode}; stderr:\n{result.stderr}"
    assert "Traceback (most recent call last)" in result.stderr, result.stderr
    assert "broken_import.py" in result.stderr, "the traceback does not show the failing module"
    errors = error_lines(result.stderr)
    assert len(errors) == 1, f"want one error: line, got {errors}"
    assert "No module named 'nosuchmodule'" in errors[0], errors[0]
    assert result.stderr.index("Traceback") < result.stderr.index(errors[0]), "error: line before the traceback"


def test_app_module_raising_exits_1():
    result = run_spindle(base_args() + ["raising_import:app"])
    assert result.returncode == 1, f"exit {result.returncode}; stderr:\n{result.stderr}"
    assert "RuntimeError: raising_import refuses to be imported" in result.stderr
    assert len(error_lines(result.stderr)) == 1, result.stderr


def test_missing_app_attribute_exits_1():
    result = run_spindle(base_args() + ["wsgi_app:no_such_app"])
    assert result.returncode == 1, f"exit {result.returncode}; stderr:\n{result.stderr}"
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "no_such_app" in errors[0], result.stderr


def test_port_in_use_exits_1():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        args = [a if a != "127.0.0.1:0" else f"127.0.0.1:{port}" for a in base_args()]
        result = run_spindle(args + ["wsgi_app:app"])
    finally:
        holder.close()
    assert result.returncode == 1, f"exit {result.returncode}; stderr:\n{result.stderr}"
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "in use" in errors[0], result.stderr


def test_port_held_by_another_spindle_is_in_use(spindle):
    # SO_REUSEPORT listeners must not let a second server silently share
    # (and split the traffic of) a port that a running one holds.
    first = spindle("wsgi_app:app")
    args = [a if a != "127.0.0.1:0" else f"127.0.0.1:{first.port}" for a in base_args()]
    try:
        result = run_spindle(args + ["wsgi_app:app"], timeout=8)
    except Exception as exc:  # subprocess.TimeoutExpired: it started and kept running.
        pytest.fail(f"a second spindle started on port {first.port} held by the first: {exc}")
    assert result.returncode == 1, f"exit {result.returncode}; stderr:\n{result.stderr}"
    assert any("in use" in line for line in error_lines(result.stderr)), result.stderr


# -- running ----------------------------------------------------------------------

def test_demo_app_without_module(spindle):
    srv = spindle(None)
    resp = srv.get("/")
    assert resp.status == 200, resp
    assert resp.header("Content-Type").startswith("text/html"), resp
    text = resp.body.decode("utf-8", "replace")
    assert "Spindle" in text
    assert PY_MAJOR_MINOR in text, "the demo page does not show the Python version"


@pytest.mark.parametrize("spec, want", [
    ("factory_app:create_app()", {"greeting": "hello", "times": 1, "text": "hello"}),
    ("factory_app:create_app('x', 2)", {"greeting": "x", "times": 2, "text": "xx"}),
    ("factory_app:service.app", {"greeting": "dotted", "times": 2, "text": "dotteddotted"}),
    ("factory_app: service.app ", {"greeting": "dotted", "times": 2, "text": "dotteddotted"}),
])
def test_factory_app(spindle, spec, want):
    srv = spindle(spec)
    resp = srv.get("/")
    assert resp.status == 200, resp
    assert json.loads(resp.body) == want


@pytest.mark.parametrize("spec, message", [
    ("factory_app:service.nope", "'service.nope'"),
    ("factory_app:create_app(x)", "factory arguments must be Python literals"),
    ("factory_app:create_app(", "is not a name or a call"),
    ("factory_app:1 + 2", "is not a name or a call"),
])
def test_bad_app_spec_exits_1(spec, message):
    result = run_spindle(base_args() + [spec])
    assert result.returncode == 1, f"exit {result.returncode}; stderr:\n{result.stderr}"
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and message in errors[0], result.stderr


@pytest.mark.parametrize("shape", [[], ["--single-process"]], ids=["worker", "single-process"])
def test_server_imports_little_in_the_app_interpreter(spindle, shape):
    # What Spindle imports in an interpreter stays in its memory, once per interpreter:
    # `ast` (parsing a factory call), `traceback` (an exception report) and the config
    # layer's `difflib` and `shlex` are imported only when used (1.3 MiB or more each
    # interpreter otherwise, which pulled in re, enum and collections).
    srv = spindle("modules_app:app", *shape)
    resp = srv.get("/")
    assert resp.status == 200, resp
    loaded = set(json.loads(resp.body))
    assert "modules_app" in loaded
    assert not loaded & {"ast", "traceback", "difflib", "shlex"}, sorted(loaded)


def test_chdir(spindle, tmp_path):
    srv = spindle("wsgi_app:app", "--chdir", str(tmp_path))
    assert srv.get("/cwd").body.decode() == str(tmp_path)


def test_chdir_to_missing_directory_fails(tmp_path):
    result = run_spindle(base_args() + ["--chdir", str(tmp_path / "nope"), "wsgi_app:app"])
    assert result.returncode != 0
    assert error_lines(result.stderr), result.stderr


def test_ipv6_bind(spindle):
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError as exc:
        pytest.skip(f"no ::1 on this machine: {exc}")
    srv = spindle("wsgi_app:app", "--bind", "[::1]:0", ready=[READY_V4, READY_V6])
    v6_port = srv.ports[1]
    with srv.connect(host="::1", port=v6_port) as conn:
        conn.send(request("GET", "/env/v6", f"[::1]:{v6_port}"))
        env = json.loads(conn.read_response().body)
    assert env["REMOTE_ADDR"]["value"] == "::1"
    assert env["SERVER_PORT"]["value"] == str(v6_port)
    srv.assert_serving()  # and still on 127.0.0.1: --bind is repeatable


def test_wildcard_bind_reports_the_real_local_address(spindle):
    # A specific address is known from the listener; a wildcard one is asked of each
    # connection: SERVER_NAME is never 0.0.0.0.
    ready_any = r"listening on http://0\.0\.0\.0:(\d+)"
    srv = spindle("wsgi_app:app", "--bind", "0.0.0.0:0", ready=[READY_V4, ready_any])
    for port in srv.ports:
        with srv.connect(port=port) as conn:
            conn.send(request("GET", "/env/any", f"127.0.0.1:{port}"))
            env = json.loads(conn.read_response().body)
        assert env["SERVER_NAME"]["value"] == "127.0.0.1", env["SERVER_NAME"]
        assert env["SERVER_PORT"]["value"] == str(port)


def test_access_log(spindle):
    srv = spindle("wsgi_app:app", "--access-log")
    mark = srv.log_mark()
    assert srv.get("/path/access-marker-331").status == 200
    srv.wait_for_log(r"GET.*/path/access-marker-331.*\b200\b", 5, since=mark, what="an access log line")


def test_driver_epoll_and_backlog(spindle):
    srv = spindle("wsgi_app:app", "--driver", "epoll", "--backlog", "8")
    srv.assert_serving()


# Supervised (the default), SIGTERM is the graceful stop and SIGINT the fast one, as in
# gunicorn; a single process, run from a terminal, takes Ctrl-C gracefully too.
@pytest.mark.parametrize("sig, extra", [(signal.SIGTERM, []), (signal.SIGTERM, ["--single-process"]),
                                        (signal.SIGINT, ["--single-process"])],
                         ids=["SIGTERM", "SIGTERM-single", "SIGINT-single"])
def test_signal_lets_in_flight_request_finish(spindle, sig, extra):
    srv = spindle("wsgi_app:app", *extra)
    mark = srv.log_mark()
    with srv.connect(timeout=10) as conn:
        conn.send(request("GET", "/sleep?s=1&marker=inflight-42", srv.host_header))
        srv.wait_for_log(r"sleep started inflight-42", 5, since=mark, what="the app to start sleeping")
        srv.proc.send_signal(sig)
        resp = conn.read_response(timeout=10)
        assert resp.status == 200 and resp.body == b"slept well", resp
    assert srv.stop(timeout=10) == 0, "\n".join(srv.lines[-30:])
