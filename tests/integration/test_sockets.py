"""Sockets the way deployments hand them over: a UNIX socket Spindle makes, a listening
descriptor it inherits (`fd://N`), systemd socket activation (`systemd-socket-activate`
from Debian's systemd package starts it with LISTEN_FDS), and what a service manager
expects around them: the `--pid` file, `--user`/`--group`, and `sd_notify` messages.
Real processes, real sockets, real signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import APPS, SPINDLE_BIN, child_env
from rawhttp import RawConnection, request

APP = "wsgi_app:app"
COMMON = ["--pythonpath", str(APPS), "--log-level", "debug", "--threads", "2"]
READY_UNIX = r"listening on unix:(\S+)"


def unix_get(path: str, target: str, host: str = "example.org:8080", timeout: float = 5.0):
    with RawConnection("", 0, timeout, unix_path=path) as conn:
        conn.send(request("GET", target, host))
        return conn.read_response()


def wait_until(what: str, check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)
    return value


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- UNIX sockets ------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_unix_socket_serves_with_its_mode_and_is_removed_at_exit(spindle, tmp_path, workers):
    path = tmp_path / "app.sock"
    srv = spindle(APP, "--bind", f"unix:{path}", "--unix-socket-mode", "600", "--workers", workers,
                  *COMMON, base=False, ready=[READY_UNIX])
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    resp = unix_get(str(path), "/env")
    assert resp.status == 200, resp
    env = {k: v["value"] for k, v in json.loads(resp.body).items() if isinstance(v, dict)}
    # PEP 3333 wants SERVER_NAME and SERVER_PORT: from Host, as gunicorn does; a UNIX peer
    # has no address.
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("example.org", "8080"), env
    assert env["REMOTE_ADDR"] == "" and "REMOTE_PORT" not in env, env
    assert srv.stop() == 0
    assert not path.exists()


def test_a_stale_unix_socket_file_is_replaced_and_a_live_one_refused(spindle, tmp_path):
    path = tmp_path / "app.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # bound, never listened on, closed: what a killed server leaves
    stale.close()
    srv = spindle(APP, "--bind", f"unix:{path}", *COMMON, base=False, ready=[READY_UNIX])
    assert unix_get(str(path), "/hello").status == 200
    # A second server on the same path must not steal it.
    second = subprocess.run([str(SPINDLE_BIN), "--bind", f"unix:{path}", *COMMON, APP],
                            capture_output=True, text=True, timeout=60, env=child_env())
    assert second.returncode == 1
    assert "socket is in use" in second.stderr, second.stderr
    assert unix_get(str(path), "/hello").status == 200
    srv.stop()


# -- inherited descriptors -------------------------------------------------------------------

@pytest.mark.parametrize("mode", [["--single-process"], ["--workers", "2"]], ids=["single", "workers"])
def test_fd_bind_serves_an_inherited_listening_socket(spindle, mode):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    srv = spindle(APP, "--bind", f"fd://{fd}", *mode, *COMMON, base=False, pass_fds=(fd,),
                  ready=[r"listening on http://127\.0\.0\.1:(\d+)"])
    assert srv.port == port
    listener.close()  # ours; Spindle serves on its own copy
    assert srv.get("/path/x").body == b"/path/x"


def test_fd_bind_refuses_a_descriptor_that_is_not_a_listening_socket():
    with open(os.devnull) as f:
        fd = f.fileno()
        result = subprocess.run([str(SPINDLE_BIN), "--bind", f"fd://{fd}", *COMMON, APP],
                                capture_output=True, text=True, timeout=60, pass_fds=(fd,), env=child_env())
    assert result.returncode == 1
    assert f"--bind fd://{fd}" in result.stderr and "not a listening socket" in result.stderr, result.stderr


def test_systemd_socket_activation(spindle):
    activate = shutil.which("systemd-socket-activate")
    assert activate, "systemd-socket-activate (Debian's systemd package) is needed: .ci/run installs it"
    port = free_port()
    srv = spindle(APP, "--workers", "2", *COMMON, base=False,
                  command=[activate, "--listen", f"127.0.0.1:{port}", str(SPINDLE_BIN)],
                  ready=[r"Listening on 127\.0\.0\.1:\d+ as 3"])
    # systemd-socket-activate starts Spindle on the first connection, which waits in the
    # socket's queue meanwhile and must be answered.
    srv.port = port
    with srv.connect(timeout=30) as first:
        first.send(request("GET", "/path/first", srv.host_header))
        srv.wait_for_log(rf"listening on http://127\.0\.0\.1:{port} \(2 workers", 30)
        assert first.read_response(timeout=30).body == b"/path/first"
    assert srv.get("/path/activated").body == b"/path/activated"
    # The application's children must not take systemd's sockets for theirs.
    env = json.loads(srv.get("/env").body)
    assert "LISTEN_FDS" not in env and "LISTEN_PID" not in env


# -- what a service manager sees ---------------------------------------------------------------

def test_pid_file_names_the_supervisor_while_it_runs(spindle, tmp_path):
    pid_file = tmp_path / "spindle.pid"
    srv = spindle(APP, "--bind", "127.0.0.1:0", "--pid", str(pid_file), "--workers", "2", *COMMON, base=False)
    assert int(pid_file.read_text()) == srv.pid
    # Another server with the same PID file refuses to start.
    second = subprocess.run([str(SPINDLE_BIN), "--bind", "127.0.0.1:0", "--pid", str(pid_file), *COMMON, APP],
                            capture_output=True, text=True, timeout=60, env=child_env())
    assert second.returncode == 1 and f"process {srv.pid} is running" in second.stderr, second.stderr
    assert srv.stop() == 0
    assert not pid_file.exists()


def test_sd_notify_ready_reloading_stopping(spindle, tmp_path):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = tmp_path / "notify"
    notify.bind(str(notify_path))
    notify.settimeout(20)
    srv = spindle(APP, "--bind", "127.0.0.1:0", "--workers", "1", *COMMON, base=False,
                  env={"NOTIFY_SOCKET": str(notify_path)})

    def message() -> dict[str, str]:
        return dict(line.split("=", 1) for line in notify.recv(4096).decode().splitlines())

    ready = message()
    assert ready["READY"] == "1" and ready["MAINPID"] == str(srv.pid), ready
    srv.proc.send_signal(signal.SIGHUP)
    reloading = message()
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0, reloading
    assert message()["READY"] == "1"  # the new generation serves
    # Workers and the app's children do not get the variable.
    env = json.loads(srv.get("/env").body)
    assert "NOTIFY_SOCKET" not in env
    srv.proc.send_signal(signal.SIGTERM)
    assert message() == {"STOPPING": "1"}
    assert srv.stop() == 0
    notify.close()


def nobody_can_run_this_checkout() -> str | None:
    """Why `nobody` cannot run Spindle from here (this Python or checkout is not readable
    to it: a pyenv under /root, say), or None. Tried the way Spindle's supervisor starts a
    worker after dropping to --user: setgroups, setgid, setuid, then exec."""
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import spindle, sys; sys.path.insert(0, sys.argv[1]); import wsgi_app",
             str(APPS)],
            user="nobody", group="nogroup", extra_groups=[],
            capture_output=True, text=True, timeout=60, env=child_env(), cwd="/")
    except OSError as err:
        return f"nobody cannot run {sys.executable}: {err}"
    return None if probe.returncode == 0 else f"nobody cannot import spindle and the app here: {probe.stderr[-300:]}"


def test_user_and_group_are_taken_after_binding(spindle):
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    why = nobody_can_run_this_checkout()
    if why:
        pytest.skip(why)
    # A port below 1024 needs root to bind: serving on one as nobody shows the order.
    port = next(p for p in range(700, 1000) if port_is_free(p))
    srv = spindle(APP, "--bind", f"127.0.0.1:{port}", "--user", "nobody", "--group", "nogroup",
                  "--workers", "2", *COMMON, base=False)
    for pid in [srv.pid, *srv.worker_pids()]:
        status = Path(f"/proc/{pid}/status").read_text()
        uid = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        gid = next(line for line in status.splitlines() if line.startswith("Gid:")).split()[1:]
        assert set(uid) == {"65534"} and set(gid) == {"65534"}, (pid, uid, gid)
    assert srv.get("/path/as-nobody").body == b"/path/as-nobody"


def test_an_unknown_user_is_one_clear_error():
    result = subprocess.run([str(SPINDLE_BIN), "--bind", "127.0.0.1:0", "--user", "no-such-user-here",
                             *COMMON, APP], capture_output=True, text=True, timeout=60, env=child_env())
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: --user no-such-user-here: no such user", result.stderr
