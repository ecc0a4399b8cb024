"""Connections spread over a worker's I/O threads by load (ARCHITECTURE.md §10, "Spread over
I/O threads"): each I/O thread's SO_REUSEPORT socket gets whatever the kernel's hash gives
it, and a thread that accepts a connection while it holds more than the other hands it over.
With connections opened one after another and all kept open, two I/O threads end up with
exactly half each; the kernel's hash alone splits 8 connections 4/4 in only 27% of runs."""

from __future__ import annotations

import re
import signal

from conftest import request

CONNECTIONS = 8


def served_per_thread(srv) -> dict[int, tuple[int, int]]:
    """I/O thread -> (requests, connections handed away), from the debug lines at exit."""
    for thread in (0, 1):
        srv.wait_for_log(rf"I/O thread {thread}: \d+ requests", 5, what=f"I/O thread {thread}'s exit line")
    found = {}
    for m in re.finditer(r"I/O thread (\d+): (\d+) requests, .*, (\d+) connections handed", srv.log_since()):
        found[int(m.group(1))] = (int(m.group(2)), int(m.group(3)))
    return found


def test_connections_kept_open_end_up_evenly_on_both_io_threads(spindle):
    srv = spindle("wsgi_app:app", "--single-process")  # base args: --io-threads 2
    conns = []
    try:
        for i in range(CONNECTIONS):
            conn = srv.connect(timeout=10)
            conn.send(request("GET", f"/path/spread-{i}", srv.host_header))
            resp = conn.read_response(timeout=10)
            assert resp.status == 200, resp
            conns.append(conn)
        assert srv.stop(signal.SIGTERM, timeout=15) == 0, "\n".join(srv.lines[-30:])
    finally:
        for conn in conns:
            conn.close()
    per_thread = served_per_thread(srv)
    assert sorted(per_thread) == [0, 1], srv.log_since()
    requests = [per_thread[t][0] for t in (0, 1)]
    assert requests == [CONNECTIONS // 2] * 2, (
        f"requests per I/O thread {requests}, connections handed away "
        f"{[per_thread[t][1] for t in (0, 1)]}")


def test_with_spreading_off_the_counts_say_nothing_was_handed(spindle):
    """`SPINDLE_SPREAD=0` (for measuring) leaves every connection where the kernel put it:
    the connections stay open, as in the test above, where some are always handed over."""
    srv = spindle("wsgi_app:app", "--single-process", env={"SPINDLE_SPREAD": "0"})
    conns = []
    try:
        for i in range(CONNECTIONS):
            conn = srv.connect(timeout=10)
            conn.send(request("GET", f"/path/hashed-{i}", srv.host_header))
            assert conn.read_response(timeout=10).status == 200
            conns.append(conn)
        assert srv.stop(signal.SIGTERM, timeout=15) == 0
    finally:
        for conn in conns:
            conn.close()
    per_thread = served_per_thread(srv)
    assert sum(r for r, _ in per_thread.values()) == CONNECTIONS
    assert all(h == 0 for _, h in per_thread.values()), per_thread
