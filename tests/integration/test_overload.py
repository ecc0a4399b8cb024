"""Admission control under overload (ARCHITECTURE.md §4, "Admission control"; issue 14):
a queued request whose client left never reaches the application; a request that waits
past --max-queue-wait is answered 503 with Retry-After; connections past
--worker-connections are refused the same way; what was shed shows in
`spindle_shed_total{reason}` and in one log line a second; and a short overload soak
(perf/overload.py's load, smaller) keeps every wait bounded, memory flat and the server
answering right after.

Every wait is bounded and waits on something observable (a file the app writes, a metric,
a log line), never on a sleep.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

from prometheus_client.parser import text_string_to_metric_families

from checks import wait_until
from conftest import APPS, READY_V4, ROOT
from rawhttp import RawConnection, request

sys.path.insert(0, str(ROOT / "perf"))
import overload  # noqa: E402  (perf/overload.py: the soak's load client)

APP = "overload_app:app"
METRICS_READY = r"metrics on http://127\.0\.0\.1:(\d+)/metrics"


def start(spindle, *extra: str):
    """One worker process, one I/O thread, metrics on: the numbers below are exact."""
    srv = spindle(APP, "--bind", "127.0.0.1:0", "--pythonpath", str(APPS), "--log-level", "debug",
                  "--single-process", "--io-threads", "1", "--metrics-bind", "127.0.0.1:0",
                  *extra, base=False, ready=[READY_V4, METRICS_READY])
    srv.metrics_port = srv.ports[1]
    return srv


def metrics(srv) -> dict:
    """Samples of one scrape, by (name, sorted labels)."""
    with socket.create_connection(("127.0.0.1", srv.metrics_port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    text = data.split(b"\r\n\r\n", 1)[1].decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def shed(srv, reason: str) -> float:
    return metrics(srv)[("spindle_shed_total", (("reason", reason),))]


def converge(what: str, value, timeout: float = 10.0, every: float = 0.02):
    """checks.wait_until, with what is awaited first, as these tests read."""
    return wait_until(value, timeout, every, what=what)


def lines(path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def test_queued_request_of_a_client_that_left_never_reaches_the_app(spindle, tmp_path):
    srv = start(spindle, "--threads", "1")
    log, release = tmp_path / "calls.log", tmp_path / "release"
    blocker = srv.connect()
    blocker.send(request("GET", f"/block?log={log}&release={release}", srv.host_header))
    converge("the app to hold its one thread", lambda: "block" in lines(log))
    # Five requests queue behind it; their clients leave before a thread is free.
    for i in range(5):
        conn = srv.connect()
        conn.send(request("GET", f"/record?log={log}&id=gone{i}", srv.host_header))
        converge(f"request {i} to be queued",
                 lambda: metrics(srv)[("spindle_request_queue_depth", ())] >= i + 1)
        conn.close()
    converge("the five departed clients to be shed",
             lambda: shed(srv, "client_gone") == 5)
    release.touch()
    assert blocker.read_response().status == 200
    with srv.connect() as conn:
        conn.send(request("GET", f"/record?log={log}&id=after", srv.host_header))
        assert conn.read_response().status == 200
    assert lines(log) == ["block", "after"], lines(log)
    # The queue emptied (the shed ones were taken out without running), and the log says.
    converge("the queue to empty", lambda: metrics(srv)[("spindle_request_queue_depth", ())] == 0)
    srv.wait_for_log(r"shed 5 requests in the last [0-9.]+ s \(queue wait 0, client gone 5, "
                     r"connections 0\); queue depth \d+")


def test_request_held_back_by_a_full_queue_of_a_client_that_left_is_dropped(spindle, tmp_path):
    srv = start(spindle, "--threads", "1", "--queue-size", "1")
    log, release = tmp_path / "calls.log", tmp_path / "release"
    blocker = srv.connect()
    blocker.send(request("GET", f"/block?log={log}&release={release}", srv.host_header))
    converge("the app to hold its one thread", lambda: "block" in lines(log))
    queued = srv.connect()
    queued.send(request("GET", f"/record?log={log}&id=queued", srv.host_header))
    converge("the queue to be full", lambda: metrics(srv)[("spindle_request_queue_depth", ())] == 1)
    received = metrics(srv)[("spindle_received_bytes_total", ())]
    held = srv.connect()
    held_request = request("GET", f"/record?log={log}&id=held", srv.host_header)
    held.send(held_request)
    converge("the held-back request to be read",
             lambda: metrics(srv)[("spindle_received_bytes_total", ())] >= received + len(held_request))
    held.close()
    converge("the held-back request of the departed client to be shed",
             lambda: shed(srv, "client_gone") == 1)
    release.touch()
    assert blocker.read_response().status == 200
    assert queued.read_response().status == 200
    assert lines(log) == ["block", "queued"], lines(log)
    blocker.close()
    queued.close()


def test_bytes_sent_while_queued_are_kept_for_the_next_request(spindle, tmp_path):
    """The socket of a queued request is watched; what arrives meanwhile (a pipelined
    request) is read into the connection's buffer, and served after, in order."""
    srv = start(spindle, "--threads", "1")
    log, release = tmp_path / "calls.log", tmp_path / "release"
    blocker = srv.connect()
    blocker.send(request("GET", f"/block?log={log}&release={release}", srv.host_header))
    converge("the app to hold its one thread", lambda: "block" in lines(log))
    conn = srv.connect()
    conn.send(request("GET", f"/record?log={log}&id=first", srv.host_header))
    converge("the request to be queued",
             lambda: metrics(srv)[("spindle_request_queue_depth", ())] >= 1)
    received = metrics(srv)[("spindle_received_bytes_total", ())]
    second = request("GET", f"/record?log={log}&id=second", srv.host_header)
    conn.send(second)
    # Counted as received only when read: the watch took it while the first was queued.
    converge("the watch to read the pipelined request",
             lambda: metrics(srv)[("spindle_received_bytes_total", ())] >= received + len(second))
    release.touch()
    assert blocker.read_response().status == 200
    assert [r.status for r in conn.read_responses(["GET", "GET"], timeout=10)] == [200, 200]
    assert lines(log) == ["block", "first", "second"], lines(log)
    conn.close()


def test_requests_past_max_queue_wait_get_503_with_retry_after(spindle):
    limit = 0.5
    srv = start(spindle, "--threads", "1", "--max-queue-wait", str(limit))
    results: list = [None] * 12

    def one(i: int) -> None:
        began = time.monotonic()
        with RawConnection("127.0.0.1", srv.port, timeout=10) as conn:
            conn.send(request("GET", "/sleep?ms=200", srv.host_header))
            resp = conn.read_response()
            results[i] = (resp.status, time.monotonic() - began, resp.header("Retry-After"),
                          resp.header("Connection"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(results), results
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    assert len(ok) + len(refused) == len(results), results
    # One thread at 200 ms a request cannot serve 12 within 0.5 s: some are shed, and
    # whoever was admitted first is served.
    assert ok and refused, results
    for status, waited, retry_after, connection in refused:
        assert retry_after == "1" and connection == "close", results
        # Within the limit plus a margin for a loaded 2-core machine.
        assert waited < limit + 1.5, results
    # Right after the load a request is answered normally, at once.
    began = time.monotonic()
    with srv.connect() as conn:
        conn.send(request("GET", "/sleep?ms=1", srv.host_header))
        assert conn.read_response().status == 200
    assert time.monotonic() - began < 1.0
    converge("the metric to count every 503",
             lambda: shed(srv, "queue_wait") == len(refused))
    srv.wait_for_log(rf"shed \d+ requests in the last [0-9.]+ s \(queue wait \d+, client gone 0")


def test_connections_past_worker_connections_are_refused_cleanly(spindle):
    srv = start(spindle, "--worker-connections", "10")
    conns = []
    for _ in range(10):
        conn = srv.connect()
        conn.send(request("GET", "/sleep?ms=1", srv.host_header))
        assert conn.read_response().status == 200
        conns.append(conn)
    # The 11th is refused at once, before it sends anything: 503, Retry-After, closed.
    with srv.connect() as extra:
        resp = extra.read_response()
        assert resp.status == 503 and resp.header("Retry-After") == "1", resp
        assert extra.wait_closed(5)
    # The ten are still served.
    for conn in conns:
        conn.send(request("GET", "/sleep?ms=1", srv.host_header))
        assert conn.read_response().status == 200
    assert shed(srv, "connections") == 1
    # When one closes, a new connection is accepted (once the server saw the close).
    conns.pop().close()

    def a_new_connection_is_served():
        with srv.connect() as conn:
            try:
                conn.send(request("GET", "/sleep?ms=1", srv.host_header))
            except OSError:
                return False  # refused and closed before our request went out
            return conn.read_response().status == 200

    converge("a new connection to be served", a_new_connection_is_served, timeout=5, every=0.05)
    for conn in conns:
        conn.close()
    srv.wait_for_log(r"shed \d+ requests in the last [0-9.]+ s \(queue wait 0, client gone 0, "
                     r"connections [1-9]")


def test_short_overload_soak_keeps_waits_bounded_and_memory_flat(spindle):
    """perf/overload.py's must-show, short: 300 clients for 3 s against one Python thread
    and a 5 ms app (capacity 200 req/s, 300 clients want far more)."""
    limit = 1.0
    srv = start(spindle, "--threads", "1", "--max-queue-wait", str(limit))
    overload.raise_nofile(600)
    overload.one_request_latency(srv.port)
    pid = srv.serving_pid
    rss_before = overload.rss_mib(pid)
    results = overload.run_load(srv.port, clients=300, seconds=3.0, processes=2)
    summary = overload.summarize(results, 3.0)
    assert summary["ok"] > 0 and summary["shed_503"] > 0, summary
    assert summary["other"] == {}, summary  # no time-out, no error, no other status
    assert summary["shed_503_without_retry_after"] == 0, summary
    # No client waited past the limit without an answer (a margin for a loaded machine).
    assert summary["max_wait_s"] < limit + 1.5, summary
    status, after = overload.one_request_latency(srv.port)
    assert status == 200 and after < 1.0, (status, after)
    rss_after = overload.rss_mib(pid)
    assert rss_after - rss_before < 64, (rss_before, rss_after)


# -- the gateway protocols: the same connection code, so the same admission control -------

def fcgi_record(kind: int, rid: int, content: bytes = b"") -> bytes:
    return bytes([1, kind]) + rid.to_bytes(2, "big") + len(content).to_bytes(2, "big") + b"\0\0" + content


def fcgi_request(rid: int, target: str) -> bytes:
    path, _, query = target.partition("?")
    params = [(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", target.encode()),
              (b"SCRIPT_NAME", b""), (b"PATH_INFO", path.encode()), (b"QUERY_STRING", query.encode()),
              (b"SERVER_NAME", b"x"), (b"SERVER_PORT", b"80"), (b"SERVER_PROTOCOL", b"HTTP/1.1")]
    encoded = b"".join(len(n).to_bytes(1, "big") + (len(v) | (0x80000000 if len(v) > 127 else 0))
                       .to_bytes(4 if len(v) > 127 else 1, "big") + n + v for n, v in params)
    return (fcgi_record(1, rid, b"\x00\x01\x00" + b"\0" * 5) + fcgi_record(4, rid, encoded)
            + fcgi_record(4, rid) + fcgi_record(5, rid))


def read_until_close(s: socket.socket, timeout: float = 10.0) -> bytes:
    s.settimeout(timeout)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def test_fastcgi_request_past_max_queue_wait_gets_503_in_records(spindle, tmp_path):
    srv = start(spindle, "--protocol", "fastcgi", "--threads", "1", "--max-queue-wait", "0.3")
    log, release = tmp_path / "calls.log", tmp_path / "release"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as blocker, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=10) as queued:
        blocker.sendall(fcgi_request(1, f"/block?log={log}&release={release}"))
        converge("the app to hold its one thread", lambda: "block" in lines(log))
        queued.sendall(fcgi_request(1, f"/record?log={log}&id=late"))
        data = read_until_close(queued)
        # STDOUT records carry a CGI 503 with Retry-After, then END_REQUEST.
        assert data[1] == 6 and b"Status: 503 Service Unavailable\r\n" in data, data
        assert b"Retry-After: 1\r\n" in data, data
        assert bytes([1, 3, 0, 1]) in data, data
        release.touch()
        assert b"Status: 200 OK" in read_until_close(blocker)
    assert lines(log) == ["block"], lines(log)
    assert shed(srv, "queue_wait") == 1
