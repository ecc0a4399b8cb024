"""Assertions shared by several test modules."""

import socket
import struct
import time

import pytest

from rawhttp import ConnectionResetBeforeResponse, RawConnection


def assert_error_response(conn: RawConnection, expected, what: str):
    """The server's own error response: the expected status, Content-Length,
    `Connection: close`, and then the connection is closed."""
    try:
        resp = conn.read_response(timeout=5)
    except ConnectionResetBeforeResponse as exc:
        pytest.fail(f"{what}: connection reset before a response arrived "
                    f"(partial bytes: {exc.partial!r})")
    if isinstance(expected, int):
        expected = {expected}
    assert resp.status in expected, f"{what}: expected {sorted(expected)}, got {resp!r}"
    assert resp.header("Content-Length") is not None, f"{what}: error response without Content-Length: {resp!r}"
    assert resp.has_token("Connection", "close"), f"{what}: error response without Connection: close: {resp!r}"
    assert conn.wait_closed(3), f"{what}: connection not closed after the error response"
    return resp


def wait_until(predicate, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll `predicate` until it returns a true value or the deadline passes.
    Only for side effects that have no socket to wait on (files written by
    an app)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} not reached within {timeout} s", pytrace=False)
        time.sleep(interval)


def poll(predicate, timeout: float, interval: float = 0.02):
    """Like wait_until, but returns the last (false) value at the deadline
    instead of failing."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def read_lines(path) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def reset_on_close(sock: socket.socket) -> None:
    """SO_LINGER with a zero timeout: closing `sock` then sends a reset, not a FIN, so the
    server's next write to it fails (a client gone mid-response)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
