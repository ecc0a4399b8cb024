"""Threads per interpreter (--threads, --sub-interpreters, the pool that grows on demand):
several threads of one interpreter share its module state, and only its own; the fallback
runs its threads on the main interpreter; the pool grows while requests wait, and idle
threads leave; long streaming responses do not starve short requests; a stop with a
request in flight on every thread is clean."""

from __future__ import annotations

import json
import sys
import threading
import time

import pytest

from conftest import APPS

HAS_SUB = sys.version_info >= (3, 12)
needs_sub = pytest.mark.skipif(not HAS_SUB, reason="own-GIL sub-interpreters need Python 3.12+")


def growing_args(*extra: str) -> list[str]:
    """The base flags without --py-threads: the pool grows on demand."""
    return ["--bind", "127.0.0.1:0", "--pythonpath", str(APPS), "--log-level", "debug",
            "--io-threads", "2", *extra]


def gather(server, tmp_path, n: int, wait: float = 5.0) -> list[dict]:
    """N concurrent /gather requests on N connections: each waits in the app until all N
    are inside it (or `wait` passes). Their answers, in order."""
    board = tmp_path / f"board-{n}-{time.monotonic_ns()}"
    board.write_bytes(b"\0" * n)
    results: list = [None] * n

    def one(i: int) -> None:
        try:
            resp = server.get(f"/gather?board={board}&me={i}&n={n}&wait={wait}", timeout=wait + 15)
            assert resp.status == 200, resp
            results[i] = json.loads(resp.body)
        except BaseException as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(wait + 30)
    for r in results:
        if isinstance(r, BaseException) or r is None:
            raise AssertionError(f"a /gather request failed: {r!r}")
    return results


@needs_sub
def test_threads_of_a_sub_interpreter_share_its_module_state_and_only_its_own(spindle, tmp_path):
    server = spindle("interp_app:app", "--interpreters", "sub", "--sub-interpreters", "2", "--threads", "4")
    server.wait_for_log(r"2 sub-interpreters, each with its own GIL and 2 threads", what="mode line")
    results = gather(server, tmp_path, 4)
    assert all(r["met"] for r in results), results
    by_token: dict[str, set[int]] = {}
    for r in results:
        by_token.setdefault(r["token"], set()).add(r["thread"])
        # Module state is the interpreter's: its threads see one another, never the others'.
        assert 1 <= r["seen_threads"] <= 2, r
        assert r["multithread"] is True, r
    assert len(by_token) == 2, f"two interpreters, one import each: {by_token}"
    assert all(len(threads) == 2 for threads in by_token.values()), by_token


def _has_readline() -> bool:
    try:
        import readline  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_readline(), reason="this Python has no readline module")
def test_the_fallback_runs_its_threads_on_the_main_interpreter(spindle, tmp_path):
    server = spindle("refusing_app:app", "--interpreters", "auto", "--threads", "4")
    if HAS_SUB:
        server.wait_for_log(r"cannot run in a sub-interpreter", what="fallback line")
    server.wait_for_log(r"main interpreter, 4 threads sharing its GIL", what="mode line")
    results = gather(server, tmp_path, 4)
    assert all(r["met"] for r in results), results
    assert len({r["token"] for r in results}) == 1, results
    assert len({r["thread"] for r in results}) == 4, results
    assert all(r["multithread"] is True for r in results), results


@pytest.mark.parametrize("mode", ["sub", "main"] if HAS_SUB else ["main"])
def test_the_pool_grows_while_requests_wait_and_idle_threads_leave(spindle, tmp_path, mode):
    server = spindle("interp_app:app", *growing_args("--interpreters", mode, "--thread-idle-timeout", "1"),
                     base=False)
    server.wait_for_log(r"growing on demand to", what="mode line")
    mark = server.log_mark()
    # Sixteen requests can only all be inside the app at once if the pool grew to them.
    results = gather(server, tmp_path, 16, wait=10)
    assert all(r["met"] for r in results), [r["met"] for r in results]
    assert len({r["thread"] for r in results}) == 16
    grown = server.log_since(mark).count("one more thread")
    assert grown >= 16 - (2 if mode == "sub" else 1), server.log_since(mark)
    # Idle for --thread-idle-timeout, every thread beyond each interpreter's first leaves.
    deadline = time.monotonic() + 15
    while server.log_since(mark).count("a thread left") < grown and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.log_since(mark).count("a thread left") == grown, server.log_since(mark)[-3000:]
    # With the first thread of each interpreter left, it still serves (and grows again).
    again = gather(server, tmp_path, 4)
    assert all(r["met"] for r in again), ("the pool did not grow again", again)


def test_long_streams_do_not_starve_short_requests(spindle):
    server = spindle("interp_app:app", *growing_args(), base=False)
    # Twenty streams of 2 s each, all started (their heads arrived) before the short ones.
    streams = []
    for _ in range(20):
        conn = server.connect(timeout=30)
        conn.send(b"GET /stream?chunks=20&delay=0.1 HTTP/1.1\r\nHost: x\r\n\r\n")
        streams.append(conn)
    for conn in streams:
        assert conn.read_head(timeout=10).status == 200, "a stream did not start"
    # With every stream holding a thread, short requests still get threads of their own.
    for i in range(10):
        resp = server.get(f"/info?n={i}", timeout=5)
        assert resp.status == 200, resp
    for conn in streams:
        conn.close()


@pytest.mark.parametrize("mode", ["sub", "main"] if HAS_SUB else ["main"])
def test_stop_with_a_request_in_flight_on_every_thread_is_clean(spindle, tmp_path, mode):
    flags = ["--interpreters", mode, "--threads", "4"]
    if mode == "sub":
        flags += ["--sub-interpreters", "2"]
    server = spindle("interp_app:app", *flags)
    board = tmp_path / "board"
    board.write_bytes(b"\0" * 5)
    conns = []
    mark = server.log_mark()
    for i in range(4):
        conn = server.connect(timeout=20)
        # Five slots for four requests: they never meet, each holds its thread 2 s.
        conn.send(b"GET /gather?board=%s&me=%d&n=5&wait=2 HTTP/1.1\r\nHost: x\r\n\r\n" % (str(board).encode(), i))
        conns.append(conn)
    for i in range(4):
        server.wait_for_log(rf"gather {i} started", 10, since=mark, what=f"request {i} in Python")
    server.proc.send_signal(15)
    for conn in conns:
        resp = conn.read_response(timeout=20)
        assert resp.status == 200 and json.loads(resp.body)["met"] is False, resp
        conn.close()
    assert server.stop() == 0, server.log_since()
    assert "Fatal Python error" not in server.log_since()
