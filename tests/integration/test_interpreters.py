"""Interpreter modes (--interpreters auto|sub|main): Python in parallel on own-GIL
sub-interpreters, the fallback to the main interpreter, and what the app is told.

The rest of the suite runs in whichever mode SPINDLE_INTERPRETERS selects (scripts/test.sh
runs it once per mode); the tests here pin the mode they are about with the flag."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading

import pytest

from checks import wait_until
from conftest import SPINDLE_BIN, base_args, run_spindle


def python_version() -> tuple[int, int]:
    out = subprocess.run([str(SPINDLE_BIN), "--version"], capture_output=True, text=True, timeout=20).stdout
    major, minor = re.search(r"Python (\d+)\.(\d+)", out).groups()
    return int(major), int(minor)


HAS_SUB = python_version() >= (3, 12)
needs_sub = pytest.mark.skipif(not HAS_SUB, reason="own-GIL sub-interpreters need Python 3.12+")


def get_json(server, target: str, timeout: float = 10.0) -> dict:
    resp = server.get(target, timeout=timeout)
    assert resp.status == 200, resp
    return json.loads(resp.body)


def rendezvous_pair(server, tmp_path) -> list[dict]:
    """Two concurrent /rendezvous requests on two connections; their answers."""
    board = tmp_path / "board"
    board.write_bytes(b"\0\0")
    results: list[dict | BaseException] = [None, None]

    def one(i: int) -> None:
        try:
            results[i] = get_json(server, f"/rendezvous?board={board}&me={i}&wait=3", timeout=15)
        except BaseException as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


@needs_sub
def test_sub_runs_python_in_parallel(spindle, tmp_path):
    server = spindle("interp_app:app", "--interpreters", "sub")
    server.wait_for_log(r"2 sub-interpreters, each with its own GIL", what="mode line")
    a, b = rendezvous_pair(server, tmp_path)
    assert a["met"] and b["met"], (a, b)
    assert a["token"] != b["token"], "both requests ran in the same interpreter"


def test_main_serialises_cpu_bound_python(spindle, tmp_path):
    server = spindle("interp_app:app", "--interpreters", "main")
    server.wait_for_log(r"main interpreter, 2 threads sharing its GIL", what="mode line")
    a, b = rendezvous_pair(server, tmp_path)
    # The first to take the GIL spins alone until its deadline; the other runs after it.
    assert sorted([a["met"], b["met"]]) == [False, True], (a, b)
    assert a["token"] == b["token"]


@needs_sub
def test_sub_tells_the_app_the_truth(spindle):
    server = spindle("interp_app:app", "--interpreters", "sub")
    info = get_json(server, "/info")
    assert info["multithread"] is False and info["multiprocess"] is True, info


def test_main_tells_the_app_the_truth(spindle):
    # Alone (--single-process), the main interpreter's threads are all there is.
    server = spindle("interp_app:app", "--interpreters", "main", "--single-process")
    info = get_json(server, "/info")
    assert info["multithread"] is True and info["multiprocess"] is False, info


def test_a_supervised_worker_is_never_alone(spindle):
    # Under the supervisor another process may serve at any time, even with one worker:
    # a reload or a recycle starts the new worker before the old one stops, and SIGTTIN
    # adds one. So wsgi.multiprocess is True there, and stays true after a SIGTTIN.
    server = spindle("interp_app:app", "--interpreters", "main", "--workers", "1")
    assert get_json(server, "/info")["multiprocess"] is True
    server.proc.send_signal(signal.SIGTTIN)
    wait_until(lambda: len(server.worker_pids()) == 2, 20, what="a second worker after SIGTTIN")
    for _ in range(6):
        assert get_json(server, "/info")["multiprocess"] is True


@needs_sub
def test_auto_picks_sub_for_a_clean_app(spindle):
    server = spindle("interp_app:app", "--interpreters", "auto")
    server.wait_for_log(r"Python 3\.\d+\.\d+ \(2 sub-interpreters, each with its own GIL\)", what="mode line")


def _has_readline() -> bool:
    try:
        import readline  # noqa: F401
    except ImportError:
        return False
    return True


@needs_sub
@pytest.mark.skipif(not _has_readline(), reason="this Python has no readline module")
def test_auto_falls_back_when_a_module_refuses(spindle):
    server = spindle("refusing_app:app", "--interpreters", "auto")
    line = server.wait_for_log(r"cannot run in a sub-interpreter", what="fallback line").string
    assert "readline" in line and "main interpreter" in line, line
    server.wait_for_log(r"main interpreter, 2 threads sharing its GIL", what="mode line")
    resp = server.get("/")
    assert resp.status == 200 and resp.body == b"refused", resp


@needs_sub
@pytest.mark.skipif(not _has_readline(), reason="this Python has no readline module")
def test_sub_refuses_such_an_app_clearly():
    done = run_spindle(base_args() + ["--interpreters", "sub", "refusing_app:app"])
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "sub-interpreter" in last and "readline" in last, last
    assert "--interpreters main" in last, last


@pytest.mark.skipif(HAS_SUB, reason="this binary embeds Python 3.12+")
def test_sub_on_311_is_a_clear_error():
    done = run_spindle(base_args() + ["--interpreters", "sub", "interp_app:app"])
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "3.12" in last, last


@pytest.mark.parametrize("mode,interpreters", [("sub", 2), ("main", 1)])
def test_every_interpreter_runs_its_atexit_handlers(spindle, tmp_path, monkeypatch, mode, interpreters):
    if mode == "sub" and not HAS_SUB:
        pytest.skip("own-GIL sub-interpreters need Python 3.12+")
    marks = tmp_path / "atexit.txt"
    monkeypatch.setenv("SPINDLE_TEST_ATEXIT_FILE", str(marks))
    server = spindle("interp_app:app", "--interpreters", mode)
    get_json(server, "/info")
    assert server.stop() == 0, server.log_since()
    if mode == "sub" and python_version()[:2] == (3, 12):
        # On 3.12 Spindle also imports the app's module in the main interpreter first (a
        # CPython 3.12 crash workaround, README "Interpreter modes"): one more import.
        interpreters += 1
    lines = marks.read_text().splitlines()
    assert len(lines) == interpreters and len(set(lines)) == interpreters, lines


@needs_sub
def test_sub_stops_cleanly_with_requests_in_flight(spindle, tmp_path):
    server = spindle("interp_app:app", "--interpreters", "sub")
    board = tmp_path / "board"
    board.write_bytes(b"\0\0")
    conns = []
    for i in (0, 1):
        conn = server.connect(timeout=15)
        conn.send(b"GET /rendezvous?board=%s&me=%d&wait=1 HTTP/1.1\r\nHost: x\r\n\r\n" % (str(board).encode(), i))
        conns.append(conn)
    # Both requests are inside Python when SIGTERM arrives.
    server.wait_for_log(r"rendezvous 0 started", 10, what="first request in Python")
    server.wait_for_log(r"rendezvous 1 started", 10, what="second request in Python")
    server.proc.send_signal(15)
    for conn in conns:
        resp = conn.read_response(timeout=15)
        assert resp.status == 200 and json.loads(resp.body)["met"], resp
        conn.close()
    assert server.stop() == 0, server.log_since()
    assert "Fatal Python error" not in server.log_since()
