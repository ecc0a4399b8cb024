"""Regression tests, each named after what broke (found in review of the first core)."""

from __future__ import annotations

import socket
import time

from checks import wait_until
from rawhttp import RawConnection


def get(conn: RawConnection, target: str, extra: bytes = b"") -> None:
    conn.send(b"GET " + target.encode() + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")


def test_connection_close_storm_does_not_leak_memory(spindle):
    # Every idle wait used to leave its waker behind: ~6 KB per connection, never freed.
    server = spindle("regress_app:app", "--io-threads", "1")

    def storm(n: int) -> None:
        for _ in range(n):
            with server.connect() as conn:
                get(conn, "/", b"Connection: close\r\n")
                assert conn.read_response().status == 200

    storm(300)  # warm up allocator pools
    before = server.proc_status("VmRSS")
    storm(3000)
    grown_kib = server.proc_status("VmRSS") - before
    assert grown_kib < 4096, f"RSS grew {grown_kib} KiB over 3000 connections"


def test_write_after_end_does_not_reach_the_next_response(spindle, tmp_path):
    server = spindle("regress_app:app")
    marker = tmp_path / "marks"
    with server.connect() as conn:
        get(conn, f"/write-after-end?marker={marker}")
        first = conn.read_response()
        assert first.status == 200 and first.body == b"first", first
        wait_until(lambda: marker.exists() and "refused" in marker.read_text(), 5, what="close() to run")
        get(conn, "/second")
        second = conn.read_response()
        assert second.status == 200 and second.body == b"/second", second


def test_close_raising_after_a_complete_response_keeps_the_next_request(spindle):
    server = spindle("regress_app:app")
    with server.connect() as conn:
        # Pipelined: the second request is already queued when close() raises.
        conn.send(b"GET /close-raises HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        first, second = conn.read_responses(["GET", "GET"])
        assert first.body == b"complete" and second.status == 200 and second.body == b"/after"


def test_reading_input_after_the_response_does_not_hang_the_thread(spindle, tmp_path):
    # One Python thread: if the late read blocked, nothing else would ever be served.
    server = spindle("regress_app:app", "--py-threads", "1")
    marker = tmp_path / "marks"
    with server.connect() as conn:
        head = (f"POST /read-input-in-close?marker={marker} HTTP/1.1\r\nHost: x\r\n"
                "Content-Length: 200000\r\n\r\n").encode()
        conn.send(head + b"z" * 100000)  # half the body, then silence
        assert conn.read_response().body == b"answered"
        wait_until(lambda: marker.exists() and "refused" in marker.read_text(), 5, what="close() to run")
    server.assert_serving()


def test_client_that_never_reads_is_dropped_after_the_write_timeout(spindle, tmp_path):
    server = spindle("regress_app:app", "--py-threads", "1", "--write-timeout", "1")
    marker = tmp_path / "marks"
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET /endless?marker={marker} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        # Never read: the server must give up, stop the app's iteration and close() it.
        wait_until(lambda: marker.exists() and "closed after" in marker.read_text(), 15,
                   what="close() after the write timeout")
        server.assert_serving()
    finally:
        sock.close()


def test_one_huge_chunk_to_a_slow_client_does_not_hold_the_gil(spindle):
    # Main interpreter, two threads: one stuck sending 32 MiB to a client that does not
    # read must not keep the shared GIL from the other.
    server = spindle("regress_app:app", "--interpreters", "main", "--write-timeout", "30")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /one-big-chunk HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            server.assert_serving(timeout=2)
    finally:
        sock.close()


def test_reading_exactly_content_length_keeps_the_connection_alive(spindle):
    server = spindle("regress_app:app")
    with server.connect() as conn:
        conn.send(b"POST /read-exactly HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n" + b"q" * 200000)
        resp = conn.read_response()
        assert resp.body == b"200000" and resp.header("connection") != "close", resp
        get(conn, "/again")
        assert conn.read_response().body == b"/again"


def test_exc_info_that_is_not_an_exception_raises_type_error(spindle):
    server = spindle("regress_app:app")
    resp = server.get("/bad-exc-info")
    assert resp.status == 200 and resp.body == b"head sent;TypeError", resp
    server.assert_serving()
