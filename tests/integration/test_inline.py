"""`--inline` (ARCHITECTURE.md §4, "Inline"): the I/O threads call the application
themselves for requests whose body is all read, as bjoern does, and hand the others to the
Python threads. Each test checks the thread that ran a request (the app reads its own OS
thread name), or what the I/O threads count in their last log line, so the path it means
to test is the one taken; and what a connection promises still holds there: responses
larger than the window to clients that read slowly, `write()` past the window, `close()`
when a client leaves mid-response, pipelined requests in order, a clean stop.

The conformance files also run whole with `SPINDLE_INLINE=1` (scripts/test.sh), minus the
tests marked `needs_pool` (an app that waits for another request, or a test of the
hand-off itself)."""

from __future__ import annotations

import json
import re
import select
import signal
import socket
import sys
import time

import pytest

from checks import reset_on_close, wait_until
from conftest import APPS
from rawhttp import parse_all, request

sys.path.insert(0, str(APPS))
from inline_app import WINDOW, piece  # noqa: E402  (the app's own pieces)


def start(spindle, *extra: str):
    return spindle("inline_app:app", "--inline", "--log-level", "debug", *extra)


def ran_on(srv, conn, method: str = "GET", body: bytes = b"", headers=None) -> str:
    """The OS name of the thread that ran one request on `conn`."""
    head = list(headers or [])
    if method == "POST":
        head.append(("Content-Length", str(len(body))))
    conn.send(request(method, "/thread", srv.host_header, head) + body)
    resp = conn.read_response(method)
    assert resp.status == 200, resp
    name, size = resp.body.decode().split()
    assert int(size) == len(body), resp
    return name


def counts(srv) -> tuple[int, int]:
    """Stops the server (SIGTERM, exit code 0): requests and requests run inline, summed
    over what its I/O threads report."""
    assert srv.stop() == 0, "\n".join(srv.lines[-30:])
    found = re.findall(r"I/O thread \d+: (\d+) requests, (\d+) run inline", srv.log_since())
    assert found, "no I/O thread reported its requests:\n" + "\n".join(srv.lines[-30:])
    return sum(int(a) for a, _ in found), sum(int(b) for _, b in found)


def small_window_client(srv) -> socket.socket:
    """A client whose receive buffer is small (set before it connects, so the window it
    offers is small too): the kernel holds little of a response for it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", srv.port))
    return sock


def expected(count: int, size: int) -> bytes:
    return b"".join(piece(i, size) for i in range(count))


def test_requests_with_their_body_run_on_the_io_thread(spindle):
    srv = start(spindle)
    with srv.connect() as conn:
        for _ in range(5):
            assert ran_on(srv, conn).startswith("spindle-io-")
        assert ran_on(srv, conn, "POST", b"x" * 3000).startswith("spindle-io-")
    assert counts(srv) == (6, 6)


def test_a_body_still_on_the_socket_goes_to_a_python_thread(spindle):
    # With Expect: 100-continue the body is not read before the app asks for it, so this
    # I/O thread must be free to read it: a Python thread runs the request.
    srv = start(spindle)
    with srv.connect() as conn:
        conn.send(request("POST", "/thread", srv.host_header,
                          [("Content-Length", "5"), ("Expect", "100-continue")]))
        cont = conn.read_head()
        assert cont.status == 100, cont
        conn.send(b"hello")
        resp = conn.read_response("POST")
        name, size = resp.body.decode().split()
        assert size == "5" and not name.startswith("spindle-io-"), resp
        assert ran_on(srv, conn).startswith("spindle-io-")
    assert counts(srv) == (2, 1)


def test_without_the_flag_python_threads_run_everything(spindle, monkeypatch):
    monkeypatch.delenv("SPINDLE_INLINE", raising=False)
    srv = spindle("inline_app:app", "--log-level", "debug")
    with srv.connect() as conn:
        assert not ran_on(srv, conn).startswith("spindle-io-")
    assert counts(srv) == (1, 0)


def test_a_response_larger_than_the_window_reaches_a_slow_reader_whole(spindle, tmp_path):
    # 4 MiB in 64 KiB pieces to a client that reads nothing at first: the response parks
    # at its window, other connections of the same I/O thread are served meanwhile, and
    # once the client reads, every piece arrives in order and close() is called once.
    marker = tmp_path / "closed"
    srv = start(spindle, "--io-threads", "1")
    slow = small_window_client(srv)
    slow.sendall(request("GET", f"/pieces?count=64&size=65536&marker={marker}", srv.host_header,
                         [("Connection", "close")]))
    try:
        # Its first bytes are out: the call that pumps it to its window has run (the I/O
        # thread serves the next connection only after it returned).
        assert select.select([slow], [], [], 5)[0], "no response began within 5 s"
        with srv.connect() as other:
            assert ran_on(srv, other).startswith("spindle-io-")
        assert not marker.exists(), "the iterable was closed before its client read it"
        data = bytearray()
        while chunk := slow.recv(1 << 20):
            data += chunk
    finally:
        slow.close()
    [resp] = parse_all(bytes(data))
    assert resp.status == 200
    assert resp.body == expected(64, 65536)
    wait_until(lambda: marker.exists(), 5, what="close() of the response")
    assert marker.read_text() == "closed\n"
    srv.assert_serving()


def test_a_client_that_leaves_mid_response_gets_its_iterable_closed(spindle, tmp_path):
    marker = tmp_path / "closed"
    srv = start(spindle, "--io-threads", "1")
    with small_window_client(srv) as gone:
        gone.sendall(request("GET", f"/pieces?count=512&size=65536&marker={marker}", srv.host_header))
        assert gone.recv(4096).startswith(b"HTTP/1.1 200")
        # Leaves with a 32 MiB response parked at its window.
        reset_on_close(gone)
    wait_until(lambda: marker.exists(), 10, what="close() of the abandoned response")
    assert marker.read_text() == "closed\n"
    with srv.connect() as conn:
        assert ran_on(srv, conn).startswith("spindle-io-")


def test_write_past_the_window_queues_whole_and_arrives(spindle):
    # write() cannot wait for room on the thread that would make it: 3 MiB queue at once.
    srv = start(spindle, "--io-threads", "1")
    with srv.connect(timeout=10) as conn:
        conn.send(request("GET", "/write?count=48&size=65536", srv.host_header))
        resp = conn.read_response()
        assert resp.status == 200
        assert len(resp.body) == 48 * 65536 > 2 * WINDOW
        assert resp.body == expected(48, 65536)
        assert ran_on(srv, conn).startswith("spindle-io-")


def test_pipelined_requests_behind_a_parked_response_answer_in_order(spindle):
    srv = start(spindle, "--io-threads", "1")
    reqs = [request("GET", "/pieces?count=40&size=65536", srv.host_header)]
    reqs += [request("GET", f"/path/{i}", srv.host_header) for i in range(8)]
    with srv.connect(timeout=10) as conn:
        conn.send(b"".join(reqs))
        big = conn.read_response()
        rest = [conn.read_response().body for _ in range(8)]
    assert big.body == expected(40, 65536)
    assert rest == [f"/path/{i}".encode() for i in range(8)]


def test_sigterm_ends_a_parked_response_and_closes_it(spindle, tmp_path):
    # A client that reads nothing holds a parked response when the stop comes: the
    # connection is cut at the drain's deadline, close() is called, and the exit is clean.
    marker = tmp_path / "closed"
    srv = start(spindle, "--io-threads", "1", "--graceful-timeout", "2")
    with small_window_client(srv) as stuck:
        stuck.sendall(request("GET", f"/pieces?count=512&size=65536&marker={marker}", srv.host_header))
        assert stuck.recv(4096).startswith(b"HTTP/1.1 200")
        began = time.monotonic()
        assert srv.stop(signal.SIGTERM) == 0, "\n".join(srv.lines[-30:])
        assert time.monotonic() - began < 5
    assert marker.read_text() == "closed\n"


def test_two_io_threads_each_run_requests(spindle):
    # Each I/O thread joins an interpreter of its own (with sub-interpreters, k-th for k):
    # connections spread over both, and both serve.
    srv = start(spindle, "--io-threads", "2")
    conns = [srv.connect() for _ in range(8)]
    try:
        names = {ran_on(srv, conn) for conn in conns}
    finally:
        for conn in conns:
            conn.close()
    assert names == {"spindle-io-0", "spindle-io-1"}, names


def test_inline_requests_are_in_the_access_log(spindle, tmp_path):
    log = tmp_path / "access.jsonl"
    srv = start(spindle, "--access-logfile", str(log), "--access-logformat", "json")
    with srv.connect() as conn:
        assert ran_on(srv, conn).startswith("spindle-io-")
        conn.send(request("GET", "/path/two?x=1", srv.host_header))
        assert conn.read_response().body == b"/path/two"

    def lines():
        text = log.read_text() if log.exists() else ""
        found = [json.loads(line) for line in text.splitlines()]
        return found if len(found) >= 2 else None

    records = wait_until(lines, 5, what="two access-log lines")
    assert sorted((r["path"], r["status"]) for r in records) == [("/path/two", 200), ("/thread", 200)]
    assert counts(srv) == (2, 2)


def test_the_python_threads_stay_for_bodies_still_on_the_socket(spindle):
    # The I/O threads join the interpreter as guests, not as its threads: with one Python
    # thread, idle while the I/O threads run everything, that thread must not leave as
    # if others were left (review found it did, and none could be added back: a body
    # still on the socket then waited for nobody).
    srv = start(spindle, "--interpreters", "main", "--threads", "1", "--io-threads", "2",
                "--thread-idle-timeout", "0.2", "--max-queue-wait", "3")
    with srv.connect() as conn:
        assert ran_on(srv, conn).startswith("spindle-io-")
    mark = srv.log_mark()
    # Five idle timeouts: a thread allowed to leave has left by then (the pool says so).
    with pytest.raises(pytest.fail.Exception):
        srv.wait_for_log(r"a thread left", 1.0, since=mark, what="a Python thread leaving")
    with srv.connect() as conn:
        conn.send(request("POST", "/thread", srv.host_header,
                          [("Content-Length", "5"), ("Expect", "100-continue")]))
        assert conn.read_head(timeout=5).status == 100
        conn.send(b"hello")
        resp = conn.read_response("POST")
        assert resp.status == 200, resp
        assert not resp.body.decode().startswith("spindle-io-"), resp


def scgi_request(target: str) -> bytes:
    path, _, query = target.partition("?")
    fields = [("CONTENT_LENGTH", "0"), ("SCGI", "1"), ("REQUEST_METHOD", "GET"),
              ("REQUEST_URI", target), ("PATH_INFO", path), ("QUERY_STRING", query),
              ("SERVER_PROTOCOL", "HTTP/1.1"), ("SERVER_NAME", "x"), ("SERVER_PORT", "80")]
    head = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in fields)
    return str(len(head)).encode() + b":" + head + b","


def test_a_gateway_client_that_leaves_mid_response_gets_its_iterable_closed(spindle, tmp_path):
    # The same as over HTTP, behind nginx's scgi_pass (uwsgi and FastCGI connections end the
    # same way): the connection's end resumes what it left parked, with no other request
    # to do it (review found only HTTP connections did).
    marker = tmp_path / "closed"
    srv = start(spindle, "--io-threads", "1", "--protocol", "scgi")
    with small_window_client(srv) as gone:
        gone.sendall(scgi_request(f"/pieces?count=512&size=65536&marker={marker}"))
        assert gone.recv(4096).startswith(b"HTTP/1.1 200")
        reset_on_close(gone)
    wait_until(lambda: marker.exists(), 10, what="close() of the abandoned response")
    assert marker.read_text() == "closed\n"
