"""Direct answers (ARCHITECTURE.md §4): when an I/O thread waits for one reply and nothing
else, it lends the connection's socket and the Python thread writes the whole response
itself. Each test here makes that happen (a keep-alive connection's later requests, one
at a time) and checks that everything a connection promises still holds: bytes in order,
keep-alive and `Connection: close`, `--timeout`'s 504 with nothing after it, a request
pipelined while the first runs, nothing written after a response ended, a prompt stop.
The I/O threads count the answers written directly in their last log line (debug), which
the tests read to know the path they meant to test was taken. Most routes are under /raw/,
whose responses are lists of one bytes object (one message); the validator's routes give
their pieces one by one, which are written directly too while they come quickly."""

import re
import signal
import time

from rawhttp import request


def direct_answers(srv) -> int:
    """Stops the server (SIGTERM, exit code 0) and sums what its I/O threads report."""
    assert srv.stop() == 0, "\n".join(srv.lines[-30:])
    counts = re.findall(r"I/O thread \d+: \d+ requests, \d+ run inline, (\d+) answered directly",
                        srv.log_since())
    assert counts, "no I/O thread reported its requests:\n" + "\n".join(srv.lines[-30:])
    return sum(int(n) for n in counts)


def start(spindle, *args: str):
    return spindle("wsgi_app:app", "--log-level", "debug", *args)


def hellos(srv, conn, n: int = 10) -> None:
    """`n` requests one at a time on `conn`: after the first, each may be answered directly."""
    for _ in range(n):
        conn.send(request("GET", "/raw/hello", srv.host_header))
        assert conn.read_response().status == 200


def test_a_keep_alive_client_one_request_at_a_time_is_answered_directly(spindle):
    srv = start(spindle)
    with srv.connect() as conn:
        for i in range(60):
            conn.send(request("GET", f"/raw/path/d{i}", srv.host_header))
            resp = conn.read_response()
            assert resp.status == 200 and resp.body == f"/raw/path/d{i}".encode(), resp
            assert not resp.has_token("Connection", "close"), resp
        assert not conn.readable_within(0.05), "bytes after the last response"
    direct = direct_answers(srv)
    # The first request of a connection is never lent for; of the others most are
    # (a Python thread on another core may finish before the socket is lent).
    assert 15 <= direct <= 59, f"{direct} of 59 answered directly"


def test_an_iterated_response_is_answered_directly_in_pieces(spindle):
    srv = start(spindle)
    with srv.connect() as conn:
        for i in range(30):
            conn.send(request("GET", f"/generator?n={i % 4 + 1}", srv.host_header))
            resp = conn.read_response()
            assert resp.status == 200, resp
            assert resp.body == b"".join(b"piece %d\n" % k for k in range(i % 4 + 1)), resp
        assert not conn.readable_within(0.05), "bytes after the last response"
    assert direct_answers(srv) >= 10


def test_a_slow_stream_is_taken_back_and_timeout_sees_its_progress(spindle):
    # Pieces 0.3 s apart for 1.8 s under --timeout 1: written directly at first, taken
    # back at the I/O thread's first look, and never cut, since it keeps making progress.
    srv = start(spindle, "--timeout", "1")
    mark = srv.log_mark()
    with srv.connect(timeout=10) as conn:
        hellos(srv, conn, 1)
        conn.send(request("GET", "/generator?n=7&every=0.3", srv.host_header))
        resp = conn.read_response(timeout=10)
        assert resp.status == 200, resp
        assert resp.body == b"".join(b"piece %d\n" % k for k in range(7)), resp
        hellos(srv, conn)
    assert "sent nothing for --timeout" not in srv.log_since(mark)
    assert direct_answers(srv) >= 1


def test_keep_alive_timeout_still_closes_an_idle_connection_after_a_direct_answer(spindle):
    srv = start(spindle, "--keep-alive", "1")
    with srv.connect() as conn:
        hellos(srv, conn)
        started = time.monotonic()
        closed = conn.wait_closed(timeout=4)
        waited = time.monotonic() - started
    assert closed, "idle connection still open 4 s after a direct answer with --keep-alive 1"
    assert waited >= 0.5, f"closed after {waited:.2f} s: before the 1 s keep-alive timeout"
    assert direct_answers(srv) >= 1


def test_connection_close_on_a_later_request_closes_after_its_direct_answer(spindle):
    srv = start(spindle)
    with srv.connect() as conn:
        for i in range(10):
            conn.send(request("GET", f"/raw/path/c{i}", srv.host_header))
            assert conn.read_response().body == f"/raw/path/c{i}".encode()
        conn.send(request("GET", "/raw/path/last", srv.host_header, [("Connection", "close")]))
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == b"/raw/path/last", resp
        assert resp.has_token("Connection", "close"), resp
        assert conn.wait_closed(2), "connection left open after Connection: close"
    assert direct_answers(srv) >= 1


def test_a_response_started_directly_then_stalled_is_cut_never_answered_504(spindle):
    # Its head and first piece go out directly at once, then the app sleeps past
    # --timeout: the I/O side takes the socket back at its look and must know the
    # response started (no 504 after a 200), close the connection in the middle of it,
    # and not wait for the app to do so. A Python thread on another core may finish the
    # head before the socket is lent: tried on fresh connections until the log shows the
    # look took a direct response back.
    srv = start(spindle, "--timeout", "1", "--single-process")
    for attempt in range(5):
        mark = srv.log_mark()
        with srv.connect(timeout=10) as conn:
            hellos(srv, conn, 1)
            conn.send(request("GET", "/generator?n=2&every=3", srv.host_header))
            sent = time.monotonic()
            data = conn.read_until_close(timeout=6)
            closed_after = time.monotonic() - sent
        assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data
        assert b"piece 0" in data and b"piece 1" not in data, data
        assert b"504" not in data, f"a 504 after a response had started: {data!r}"
        assert closed_after < 2.5, f"closed {closed_after:.1f} s after the request: waited for the app"
        assert srv.wait_for_log(r"closing the connection in the middle of its response", timeout=5,
                                since=mark)
        if "taken back at a look" in srv.log_since(mark):
            break
    else:
        raise AssertionError("in 5 tries the socket was never lent for the stalled response")
    # The app's sleeps end after the closes; the server goes on serving.
    time.sleep(3)
    srv.assert_serving()


def test_timeout_504_is_final_even_when_the_app_answers_later(spindle):
    # The socket was lent while the app ran; --timeout takes it back, answers 504 and
    # closes: the app's late response must never follow, and the close must not wait for
    # the app (the lent descriptor is given back with the socket).
    srv = start(spindle, "--timeout", "1", "--single-process")
    with srv.connect(timeout=10) as conn:
        hellos(srv, conn)
        conn.send(request("GET", "/raw/sleep?s=3", srv.host_header))
        resp = conn.read_response(timeout=10)
        assert resp.status == 504, resp
        answered = time.monotonic()
        assert conn.wait_closed(timeout=1.5), "connection still open 1.5 s after its 504"
        assert time.monotonic() - answered < 1.5
    # The app's sleep ends after the close: the server logs nothing worse than debug
    # about it and goes on serving.
    time.sleep(2.5)
    srv.assert_serving()
    assert direct_answers(srv) >= 1


def test_requests_pipelined_in_one_write_keep_their_order_around_direct_answers(spindle):
    # Two requests in one write go to Python together: the first may be answered directly
    # while the second's reply comes by the mailbox, which must wait for the first's end.
    srv = start(spindle)
    with srv.connect(timeout=10) as conn:
        hellos(srv, conn, 1)
        for i in range(20):
            first = "/raw/sleep?s=0.01" if i % 2 else f"/raw/path/a{i}"
            conn.send(request("GET", first, srv.host_header)
                      + request("GET", f"/raw/path/b{i}", srv.host_header))
            a, b = conn.read_response(timeout=10), conn.read_response(timeout=10)
            assert a.status == 200 and a.body == (b"slept well" if i % 2 else f"/raw/path/a{i}".encode()), a
            assert b.status == 200 and b.body == f"/raw/path/b{i}".encode(), b
        assert not conn.readable_within(0.05), "bytes after the last response"
    assert direct_answers(srv) >= 1


def test_a_request_pipelined_while_the_first_runs_is_answered_in_order(spindle):
    srv = start(spindle)
    with srv.connect(timeout=10) as conn:
        hellos(srv, conn, 1)
        # The socket may be lent for the slow request (and taken back at 20 ms if it was
        # still queued then); either way the next one, arriving meanwhile, waits for it.
        conn.send(request("GET", "/raw/sleep?s=0.3", srv.host_header))
        time.sleep(0.1)
        conn.send(request("GET", "/raw/path/after", srv.host_header))
        first = conn.read_response(timeout=10)
        second = conn.read_response(timeout=10)
        assert first.status == 200 and first.body == b"slept well", first
        assert second.status == 200 and second.body == b"/raw/path/after", second
        # And the connection goes on, directly answered again.
        for i in range(10):
            conn.send(request("GET", f"/raw/path/p{i}", srv.host_header))
            assert conn.read_response().body == f"/raw/path/p{i}".encode()
    assert direct_answers(srv) >= 1


def test_a_write_after_the_response_ended_never_reaches_the_client(spindle, tmp_path):
    # The Python side refuses it before it is sent (the response ended); this checks the
    # whole path on directly answered responses, and the loom models check that the
    # hand-off would not write it either.
    rec = tmp_path / "late.log"
    srv = start(spindle)
    with srv.connect() as conn:
        hellos(srv, conn, 1)
        for _ in range(10):
            conn.send(request("GET", f"/raw/late-write?record={rec}", srv.host_header))
            resp = conn.read_response()
            assert resp.status == 200 and resp.body == b"answered", resp
        conn.send(request("GET", "/raw/path/next", srv.host_header))
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == b"/raw/path/next", \
            f"the next response is not what was asked (a late write got in?): {resp!r}"
        assert not conn.readable_within(0.1), "bytes after the last response"
    assert rec.read_text().count("\n") == 10, rec.read_text()
    assert direct_answers(srv) >= 1


def test_sigterm_closes_a_connection_idle_after_direct_answers_promptly(spindle):
    srv = start(spindle)
    with srv.connect() as conn:
        hellos(srv, conn)
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert conn.wait_closed(timeout=5), "idle connection still open 5 s after SIGTERM"
        assert srv.proc.wait(10) == 0
        assert time.monotonic() - started < 5
    assert direct_answers(srv) >= 1
