"""Soak and abuse, bounded in time: what a hostile or unlucky crowd does to one worker.

Each test pushes one kind of abuse at a `--single-process` server for a few seconds and
asserts three things that hold for a server that is not hurt by it:
- a new, ordinary request is answered promptly during the abuse (or right after it, where
  the abuse is made of whole requests that take their turn);
- the server's RSS grows by less than a stated bound;
- its open descriptors come back to where they were once the abusers are gone (the server
  closes what it must close on its own: header and keep-alive timeouts).
Slow readers and overload have their own files (test_slow_readers.py, test_overload.py).

SPINDLE_SOAK_SCALE multiplies the crowd sizes and durations: the suite runs at 1 (about
half a minute for the file); scripts/soak.sh runs the same tests at a larger scale and
keeps the output, for the long runs recorded in perf/runs/.
"""

from __future__ import annotations

import os
import random
import re
import selectors
import socket
import threading
import time
from pathlib import Path

import pytest

from checks import wait_until

SCALE = float(os.environ.get("SPINDLE_SOAK_SCALE", "1"))
CORPUS = Path(__file__).resolve().parents[1] / "corpus"
STATUS_LINE = re.compile(rb"HTTP/1\.[01] [1-5]\d\d [^\r\n]*\r\n")


def scaled(n: float) -> int:
    return max(1, int(n * SCALE))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def start(spindle, *extra: str):
    server = spindle("soak_app:app", "--single-process", "--io-threads", "2", *extra)
    server.assert_serving()
    return server


def settle(server, fds_before: int, what: str, timeout: float) -> None:
    """The server's descriptors come back to `fds_before` (a few more are allowed: the
    runtime may keep an eventfd or a timer it made under load)."""
    wait_until(lambda: open_fds(server.serving_pid) <= fds_before + 4, timeout,
               what=f"{what}: descriptors back to {fds_before} (now {open_fds(server.serving_pid)})")


def answered_within(server, seconds: float) -> float:
    t0 = time.monotonic()
    server.assert_serving(timeout=seconds)
    return time.monotonic() - t0


def test_a_slowloris_crowd_is_timed_out_while_others_are_served(spindle):
    # Each connection sends the start of a head and then one header line every 0.3 s:
    # never idle long enough for a read timeout, never done. --header-timeout bounds the
    # whole head, so every one of them is closed 2 s after its first byte.
    server = start(spindle, "--header-timeout", "2")
    pid = server.serving_pid
    fds, rss = open_fds(pid), server.proc_status("VmRSS")
    crowd = []
    for _ in range(min(scaled(400), crowd_limit())):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        s.setblocking(False)
        crowd.append(s)
    sel = selectors.DefaultSelector()
    for s in crowd:
        sel.register(s, selectors.EVENT_READ)
    open_ = set(crowd)
    deadline = time.monotonic() + 2 + 6
    next_trickle = 0.0
    worst = 0.0
    while open_ and time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_trickle:
            for s in list(open_):
                try:
                    s.send(b"X-a: b\r\n")
                except OSError:
                    pass  # closed by the server: the read below sees it
            worst = max(worst, answered_within(server, 1.0))
            next_trickle = now + 0.3
        for key, _ in sel.select(0.05):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except (ConnectionResetError, BlockingIOError):
                data = b""
            if not data or data.startswith(b"HTTP/1.1 408"):
                sel.unregister(s)
                open_.discard(s)
    assert not open_, f"{len(open_)} of {len(crowd)} slowloris connections still open after 8 s"
    for s in crowd:
        s.close()
    assert worst < 1.0
    settle(server, fds, "slowloris", 5)
    # A slowloris connection's high-water is its read buffer and its task: RSS measured
    # after they closed keeps that high-water (the allocator holds freed pages for reuse),
    # so the bound is per connection.
    grown = server.proc_status("VmRSS") - rss
    print(f"\n  slowloris: {len(crowd)} connections closed by the header timeout; a new request "
          f"answered in {worst * 1000:.1f} ms at worst; RSS +{grown} KiB")
    assert grown < 4 * 1024 + 16 * len(crowd), f"RSS grew {grown} KiB over {len(crowd)} slowloris connections"


def test_an_idle_flood_costs_little_and_is_released_by_the_header_timeout(spindle):
    # Connections that connect and say nothing are held for --header-timeout (a new
    # connection's first request has that long to arrive whole), then closed. Meanwhile a
    # real client is served at once.
    n = min(scaled(3000), crowd_limit())
    held = 3 + n // 1000  # long enough for the whole crowd to connect before any is let go
    server = start(spindle, "--header-timeout", str(held))
    pid = server.serving_pid
    fds, rss = open_fds(pid), server.proc_status("VmRSS")
    crowd = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(n)]
    wait_until(lambda: open_fds(pid) >= fds + n - 4, 5 + n / 1000, what=f"the server to accept {n} idle connections")
    assert answered_within(server, 1.0) < 1.0
    per_conn = (server.proc_status("VmRSS") - rss) * 1024 / n
    print(f"\n  idle flood: {n} connections held, {per_conn:.0f} bytes of RSS each")
    assert per_conn < 16 * 1024, f"{per_conn:.0f} bytes of RSS per idle connection"
    # The server ends them itself, after the header timeout.
    for s in crowd:
        s.settimeout(held + 5)
    for s in crowd:
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
        s.close()
    settle(server, fds, "idle flood", 5)
    assert answered_within(server, 1.0) < 1.0


def test_a_connection_storm_leaves_no_descriptor_or_memory_behind(spindle):
    server = start(spindle)
    pid = server.serving_pid

    def storm(seconds: float, counts: list[int]) -> None:
        end = time.monotonic() + seconds
        ok = 0
        while time.monotonic() < end:
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                s.sendall(b"GET /path/storm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"/path/storm"), data[:200]
                ok += 1
        counts.append(ok)

    def run(seconds: float) -> int:
        counts: list[int] = []
        threads = [threading.Thread(target=storm, args=(seconds, counts)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 30)
        assert len(counts) == len(threads), "a storm thread failed (its assertion is above)"
        return sum(counts)

    run(0.5)  # warm the allocator's pools up
    fds, rss = open_fds(pid), server.proc_status("VmRSS")
    served = run(3 * SCALE)
    assert served > 100
    settle(server, fds, "connection storm", 5)
    grown = server.proc_status("VmRSS") - rss
    print(f"\n  connection storm: {served} connections, RSS +{grown} KiB, descriptors back")
    assert grown < 8 * 1024, f"RSS grew {grown} KiB over {served} connections"


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:  # flip a byte
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op == 1:  # insert bytes that mean something to a parser
            b[i:i] = rng.choice([b"\r\n", b"\n", b"\r", b" ", b":", b"\x00", b"0\r\n\r\n",
                                 b"Transfer-Encoding: chunked\r\n", b"Content-Length: 5\r\n"])
        elif op == 2 and b:  # delete a span
            del b[i:i + rng.randint(1, 8)]
        elif op == 3:  # truncate
            del b[i:]
        else:  # duplicate a span
            b[i:i] = b[max(0, i - 16):i]
    return bytes(b)


def test_mutated_requests_get_an_answer_or_a_close_and_the_server_lives_on(spindle):
    # Every valid corpus case, mutated, sent and then half-closed: each connection gets a
    # well-formed status line or a close, never a hang, a crash or a stray byte. The
    # half-close is what makes "never a hang" checkable in seconds: a truncated request
    # would otherwise rightly be waited for (a streamed body gets 30 s per read).
    server = start(spindle, "--header-timeout", "1", "--keep-alive", "1")
    pid = server.serving_pid
    seeds = [p.read_bytes() for p in sorted((CORPUS / "valid").glob("*.http"))]
    assert len(seeds) > 50
    rng = random.Random(20261205)
    cases = [mutate(rng, rng.choice(seeds)) for _ in range(scaled(3000))]
    fds, rss = open_fds(pid), server.proc_status("VmRSS")
    failures: list[str] = []
    lock = threading.Lock()
    work = iter(cases)

    def client() -> None:
        while True:
            with lock:
                case = next(work, None)
            if case is None:
                return
            try:
                with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                    s.sendall(case)
                    s.shutdown(socket.SHUT_WR)
                    data = b""
                    deadline = time.monotonic() + 5
                    while time.monotonic() < deadline:
                        try:
                            chunk = s.recv(65536)
                        except ConnectionResetError:
                            break
                        if not chunk:
                            break
                        data += chunk
                    else:
                        raise AssertionError("no answer and no close within 5 s")
            except (AssertionError, OSError) as exc:
                with lock:
                    failures.append(f"{case!r}: {exc}")
                continue
            if data and not STATUS_LINE.match(data):
                with lock:
                    failures.append(f"{case!r}: answered {data[:80]!r}")

    threads = [threading.Thread(target=client) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120 * SCALE)
    assert not any(t.is_alive() for t in threads), "the mutated-request clients did not finish"
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures[:10])
    assert "panicked" not in server.log_since(0)
    assert answered_within(server, 1.0) < 1.0
    settle(server, fds, "mutated requests", 5)
    grown = server.proc_status("VmRSS") - rss
    print(f"\n  mutated requests: {len(cases)} answered or closed, RSS +{grown} KiB, descriptors back")
    assert grown < 16 * 1024, f"RSS grew {grown} KiB over {len(cases)} mutated requests"


def crowd_limit() -> int:
    """The most connections one test may hold: its descriptors and the server's (which
    inherits this process's limit) each need one per connection."""
    import resource
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1024


@pytest.fixture(autouse=True)
def _nofile():
    """The crowds need more descriptors than a default soft limit of 1024 allows."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, scaled(3000) + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
