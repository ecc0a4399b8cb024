"""Slow readers (issue 14): a worker's streamed responses share one budget of bytes in
flight (--max-response-buffer), and a response that finds no room is parked, not waited
for, so the Python thread goes on serving. Many clients that read nothing cost the budget,
not a window each; normal requests are answered meanwhile, even with one Python thread;
when the clients read, every response arrives whole and in order; a client that leaves
while its response is parked gets its iterator closed; a stop closes what is parked."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import sys
import time

import pytest

from checks import reset_on_close
from conftest import APPS
from rawhttp import parse_all

sys.path.insert(0, str(APPS))
from slow_app import piece  # noqa: E402  (the app's own pieces, to check what arrives)

CHUNK = 64 * 1024
CHUNKS = 64  # 4 MiB per response
READERS = 40


def slow_args(budget_mib: int, *extra: str) -> list[str]:
    return ["--bind", "127.0.0.1:0", "--pythonpath", str(APPS), "--log-level", "debug",
            "--io-threads", "1", "--threads", "1", "--max-response-buffer", str(budget_mib),
            *extra]


class SlowReader:
    """A client that asks for a large streamed response and reads nothing until told to;
    its receive buffer is small, so the kernel holds little of it for us."""

    def __init__(self, port: int, stream_id: int, log: str, chunks: int = CHUNKS):
        self.stream_id, self.chunks = stream_id, chunks
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(f"GET /stream?id={stream_id}&chunks={chunks}&size={CHUNK}&log={log} "
                          f"HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())

    def read_all(self, timeout: float = 20.0) -> bytes:
        """Everything until the server closes, as one response's body."""
        data = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            got = self.sock.recv(1 << 20)
            if not got:
                break
            data += got
        self.sock.close()
        [resp] = parse_all(bytes(data))
        assert resp.status == 200, resp
        return resp.body

    def expected_digest(self) -> str:
        h = hashlib.sha256()
        for k in range(self.chunks):
            h.update(piece(self.stream_id, k, CHUNK))
        return h.hexdigest()

    def close(self) -> None:
        self.sock.close()


def pulled(server) -> dict:
    """What the app's iterators gave so far, asked on a new connection: answered within a
    few seconds, or the thread is not serving."""
    resp = server.get("/pulled", timeout=5)
    assert resp.status == 200, resp
    return json.loads(resp.body)


def settle(server, timeout: float = 15.0) -> dict:
    """Waits until the iterators stop being pulled (every response parked or done): the
    count is the same over five looks 0.1 s apart. Each look is a normal request."""
    deadline = time.monotonic() + timeout
    last, same = None, 0
    while time.monotonic() < deadline:
        now = pulled(server)
        same = same + 1 if now == last else 0
        if same >= 5:
            return now
        last = now
        time.sleep(0.1)
    pytest.fail(f"the responses were still being pulled after {timeout} s: {last}")


def rss_mib(server) -> float:
    return server.proc_status("VmRSS") / 1024


def open_slow_readers(server, tmp_path, n: int = READERS) -> tuple[list[SlowReader], str]:
    log = str(tmp_path / "closed.log")
    # Warm-up: one stream read whole, so the allocator's arenas exist before the baseline.
    warm = SlowReader(server.port, 10_000, log, chunks=8)
    warm.read_all()
    return [SlowReader(server.port, i, log) for i in range(n)], log


def closed_ids(log: str) -> set[int]:
    with open(log) as f:
        return {int(line.split()[1]) for line in f if line.startswith("closed ")}


def test_slow_readers_cost_the_budget_and_others_are_served(spindle, tmp_path):
    budget = 8
    server = spindle("slow_app:app", *slow_args(budget), base=False)
    readers, log = open_slow_readers(server, tmp_path)
    before = rss_mib(server)
    try:
        state = settle(server)
        grown = rss_mib(server) - before
        print(f"budget {budget} MiB, {READERS} slow readers: RSS +{grown:.1f} MiB, {state}")
        # One thread, and every response parked: a normal request is still answered.
        assert server.get("/hello", timeout=5).body == b"hello"
        # The budget, a piece per response past it, and allocator slack; without the
        # budget each response's 1 MiB window fills (the control test below).
        bound = budget + READERS * CHUNK / 2**20 + 8
        assert grown < bound, (f"RSS grew {grown:.1f} MiB with {READERS} slow readers, "
                               f"over {bound:.1f}; pulled {state}")
        assert state["open"] == READERS, state
        # Now they read: every response arrives whole, its pieces in order.
        for reader in readers:
            body = reader.read_all()
            assert hashlib.sha256(body).hexdigest() == reader.expected_digest(), (
                f"stream {reader.stream_id}: {len(body)} bytes, not what the app gave")
        assert closed_ids(log) >= set(range(READERS))
        assert pulled(server)["open"] == 0
    finally:
        for reader in readers:
            reader.close()


def test_without_a_tight_budget_the_same_readers_cost_a_window_each(spindle, tmp_path):
    """The control of the test above: the bound it asserts is one that can fail."""
    server = spindle("slow_app:app", *slow_args(4096), base=False)
    readers, _ = open_slow_readers(server, tmp_path)
    before = rss_mib(server)
    try:
        settle(server)
        grown = rss_mib(server) - before
        print(f"budget 4096 MiB, {READERS} slow readers: RSS +{grown:.1f} MiB")
        assert grown > 8 + READERS * CHUNK / 2**20 + 8, f"RSS grew only {grown:.1f} MiB"
    finally:
        for reader in readers:
            reader.close()


def test_a_client_gone_while_parked_gets_its_iterator_closed(spindle, tmp_path):
    server = spindle("slow_app:app", *slow_args(8), base=False)
    readers, log = open_slow_readers(server, tmp_path, n=10)
    settle(server)
    mark = server.log_mark()
    for reader in readers[:5]:
        reset_on_close(reader.sock)
        reader.close()  # a reset: the server's next write fails
    deadline = time.monotonic() + 10
    while not closed_ids(log) >= set(range(5)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert closed_ids(log) >= set(range(5)), (closed_ids(log), server.log_since(mark)[-2000:])
    # The others are still parked, and still complete.
    assert pulled(server)["open"] == 5
    for reader in readers[5:]:
        body = reader.read_all()
        assert hashlib.sha256(body).hexdigest() == reader.expected_digest()
    assert pulled(server)["open"] == 0


def test_a_stop_closes_parked_responses(spindle, tmp_path):
    server = spindle("slow_app:app", *slow_args(8, "--graceful-timeout", "2"), base=False)
    readers, log = open_slow_readers(server, tmp_path, n=10)
    try:
        settle(server)
        started = time.monotonic()
        code = server.stop(signal.SIGTERM, timeout=10)
        took = time.monotonic() - started
        assert code == 0, server.log_since()[-3000:]
        assert took < 2 + 3, f"the stop took {took:.1f} s with --graceful-timeout 2"
        assert closed_ids(log) >= set(range(10)), closed_ids(log)
    finally:
        for reader in readers:
            reader.close()


def read_responses(sock: socket.socket, n: int, timeout: float) -> list:
    """Reads until `n` whole responses arrived on `sock` (or fails at `timeout`)."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        # Both are chunked: parse only when the data ends where a body may end.
        if data.endswith(b"0\r\n\r\n"):
            try:
                resps = parse_all(bytes(data))
            except Exception:  # a piece that happens to end so: incomplete
                resps = []
            if len(resps) >= n:
                return resps
        else:
            resps = []
        left = deadline - time.monotonic()
        assert left > 0, f"{len(resps)} of {n} responses after {timeout} s ({len(data)} bytes)"
        sock.settimeout(left)
        got = sock.recv(1 << 20)
        assert got, f"closed after {len(resps)} of {n} responses ({len(data)} bytes)"
        data += got


def test_a_write_response_pipelined_behind_a_parked_one_waits_for_it_not_the_thread(spindle):
    # One connection pipelines an iterated 4 MiB response (A) and one written with write()
    # (B), one Python thread. A parks once its window is full; B, taken by the same thread,
    # could not go out before A anyway, and run at once its write() would wait for room
    # only that thread can make (by resuming A): held until A ends instead. Meanwhile the
    # thread serves others; then both arrive whole and in order, well inside --timeout.
    server = spindle("slow_app:app", *slow_args(32, "--timeout", "20"), base=False)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", server.port))
    s.sendall(f"GET /stream?id=1&chunks={CHUNKS}&size={CHUNK} HTTP/1.1\r\nHost: x\r\n\r\n"
              f"GET /write?id=2&chunks={CHUNKS}&size={CHUNK} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    settle(server)  # A parked (nothing more pulled), and the thread answers others
    t0 = time.monotonic()
    first, second = read_responses(s, 2, timeout=15)
    s.close()
    assert time.monotonic() - t0 < 10, "the responses waited for --timeout"
    for resp, stream_id in ((first, 1), (second, 2)):
        assert resp.status == 200, resp
        want = b"".join(piece(stream_id, k, CHUNK) for k in range(CHUNKS))
        assert hashlib.sha256(resp.body).hexdigest() == hashlib.sha256(want).hexdigest(), stream_id


@pytest.mark.needs_pool
def test_a_woken_response_is_not_kept_waiting_behind_a_slow_generator(spindle, tmp_path):
    # One Python thread. Stream A parks on a client that reads nothing; then the thread
    # serves B, a generator slower than its client (0.1 s a piece, 3 s in all), which never
    # runs out of room. A's client starts reading: A must be resumed between B's pieces, not
    # after B's end.
    server = spindle("slow_app:app", *slow_args(32), base=False)
    log = str(tmp_path / "closed.log")
    a = SlowReader(server.port, 1, log)
    settle(server)
    b = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    b.sendall(f"GET /slowgen?id=2&chunks=30&size=1024&delay=0.1 HTTP/1.1\r\nHost: x\r\n"
              f"Connection: close\r\n\r\n".encode())
    assert b.recv(1 << 16).startswith(b"HTTP/1.1 200 "), "B started"
    t0 = time.monotonic()
    body = a.read_all(timeout=20)
    a_done = time.monotonic() - t0
    assert hashlib.sha256(body).hexdigest() == a.expected_digest()
    rest = b""
    while chunk := b.recv(1 << 16):
        rest += chunk
    b_done = time.monotonic() - t0
    b.close()
    assert a_done < b_done - 1.0, f"A ended at {a_done:.2f} s, B at {b_done:.2f} s"
