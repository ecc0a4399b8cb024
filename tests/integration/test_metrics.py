"""Prometheus metrics (`--metrics-bind`), with real processes and real scrapes: `/metrics`
parses with prometheus_client's own parser, counts exactly what was sent per status
class, sums over workers, keeps counting (never backwards) across a worker's death, and
says why workers were replaced.

Requests are counted when the Python thread hands the response back, which can be a
moment after the client has read it: a value that must reach a number is polled for with
a deadline (`converge`), never slept for.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import READY_V4, base_args, run_spindle
from rawhttp import request

APP = "metrics_app:app"
METRICS_READY = r"metrics on http://127\.0\.0\.1:(\d+)/metrics"
# One of each class the app can answer, and how many of each each test sends.
STATUSES = {200: 5, 302: 2, 404: 3, 503: 1}
BUCKETS = ["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
           "1", "2.5", "5", "10", "+Inf"]


def start(spindle, *extra: str):
    srv = spindle(APP, *base_args(), "--metrics-bind", "127.0.0.1:0", *extra, base=False,
                  ready=[READY_V4, METRICS_READY])
    srv.metrics_port = srv.ports[1]
    return srv


def fetch(srv, method: str = "GET", path: str = "/metrics"):
    conn = http.client.HTTPConnection("127.0.0.1", srv.metrics_port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


class Scrape:
    """One scrape, parsed by prometheus_client: samples by (name, labels)."""

    def __init__(self, srv):
        status, headers, text = fetch(srv)
        assert status == 200, (status, text)
        assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8", headers
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {}
        for family in self.families.values():
            for s in family.samples:
                self.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(self, name: str, **labels) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]

    def by_class(self, method: str = "GET") -> dict[str, int]:
        return {c: int(self.value("spindle_requests_total", method=method, status=c))
                for c in ("1xx", "2xx", "3xx", "4xx", "5xx")}

    def total_requests(self) -> int:
        return int(sum(v for (name, _), v in self.samples.items() if name == "spindle_requests_total"))

    def worker_info(self) -> dict[int, dict[str, str]]:
        return {int(s.labels["pid"]): s.labels for s in self.families["spindle_worker_info"].samples}


def converge(srv, what: str, check, timeout: float = 10.0) -> Scrape:
    """Scrapes until `check(scrape)` holds; fails with the last scrape after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        scrape = Scrape(srv)
        if check(scrape):
            return scrape
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s; last scrape:\n{scrape.text}"
        time.sleep(0.05)


def send_statuses(srv, statuses: dict[int, int] = STATUSES) -> tuple[dict[str, int], int, dict[int, int]]:
    """Each status as many times as asked, one new connection each: the expected count per
    class, the request bytes sent, and how many each worker pid served."""
    expected = {c: 0 for c in ("1xx", "2xx", "3xx", "4xx", "5xx")}
    sent = 0
    served: dict[int, int] = {}
    for status, n in statuses.items():
        for _ in range(n):
            raw = request("GET", f"/?status={status}", srv.host_header)
            with srv.connect() as conn:
                conn.send(raw)
                resp = conn.read_response()
            assert resp.status == status, resp
            sent += len(raw)
            expected[f"{status // 100}xx"] += 1
            pid = int(resp.body.split()[1])
            served[pid] = served.get(pid, 0) + 1
    return expected, sent, served


def check_histogram(scrape: Scrape, count: int) -> None:
    family = scrape.families["spindle_request_duration_seconds"]
    assert family.type == "histogram"
    buckets = [scrape.value("spindle_request_duration_seconds_bucket", le=le) for le in BUCKETS]
    assert buckets == sorted(buckets), f"buckets not cumulative: {buckets}"
    assert buckets[-1] == count == scrape.value("spindle_request_duration_seconds_count")
    assert scrape.value("spindle_request_duration_seconds_sum") > 0


def test_metrics_parse_and_count_each_status_class_exactly(spindle):
    srv = start(spindle, "--workers", "1")
    before = Scrape(srv)
    assert before.total_requests() == 0
    expected, sent, _ = send_statuses(srv)
    n = sum(STATUSES.values())
    scrape = converge(srv, f"{n} requests counted", lambda s: s.total_requests() == n)
    assert scrape.by_class() == expected
    check_histogram(scrape, n)
    # Every family the issue names, with its type.
    types = {name: f.type for name, f in scrape.families.items()}
    for name, kind in [("spindle_requests", "counter"), ("spindle_requests_in_flight", "gauge"),
                       ("spindle_request_queue_depth", "gauge"), ("spindle_connections_open", "gauge"),
                       ("spindle_connections", "counter"), ("spindle_received_bytes", "counter"),
                       ("spindle_sent_bytes", "counter"), ("spindle_python_busy_seconds", "counter"),
                       ("spindle_worker_spawns", "counter"), ("spindle_worker_restarts", "counter"),
                       ("spindle_workers", "gauge"), ("spindle_worker_info", "gauge")]:
        assert types.get(name) == kind, (name, types.get(name))
    assert "# HELP spindle_requests_total " in scrape.text
    # Each request came on its own connection, and every byte of them was read.
    assert scrape.value("spindle_connections_total") == n
    assert scrape.value("spindle_received_bytes_total") == sent
    assert scrape.value("spindle_sent_bytes_total") > n * len("HTTP/1.1 200 OK\r\n")
    assert scrape.value("spindle_python_busy_seconds_total") > 0
    idle = converge(srv, "connections closed, nothing in flight",
                    lambda s: s.value("spindle_connections_open") == 0
                    and s.value("spindle_requests_in_flight") == 0)
    assert idle.value("spindle_request_queue_depth") == 0
    [worker] = srv.worker_pids()
    [(pid, info)] = idle.worker_info().items()
    assert pid == worker and info["slot"] == "1"
    asked = os.environ.get("SPINDLE_INTERPRETERS", "auto")
    assert info["interpreters"] == asked if asked in ("sub", "main") else info["interpreters"] in ("sub", "main")
    assert idle.value("spindle_workers") == 1
    assert idle.value("spindle_worker_spawns_total") == 1
    assert idle.value("spindle_worker_restarts_total", reason="crash") == 0


def test_in_flight_counts_a_request_the_application_holds(spindle):
    srv = start(spindle, "--workers", "1")
    with srv.connect(timeout=10) as conn:
        conn.send(request("POST", "/sleep?s=1", srv.host_header, body=b"x" * 100))
        converge(srv, "one request in flight", lambda s: s.value("spindle_requests_in_flight") == 1
                 and s.value("spindle_connections_open") == 1)
        assert conn.read_response(timeout=10).status == 200
    scrape = converge(srv, "the request counted", lambda s: s.total_requests() == 1)
    assert scrape.by_class("POST")["2xx"] == 1
    assert scrape.value("spindle_request_duration_seconds_bucket", le="0.5") == 0
    assert scrape.value("spindle_request_duration_seconds_bucket", le="1") == 0
    assert scrape.value("spindle_request_duration_seconds_bucket", le="2.5") == 1
    assert scrape.value("spindle_python_busy_seconds_total") >= 1.0


def test_the_endpoint_answers_metrics_only(spindle):
    srv = start(spindle, "--workers", "1")
    status, headers, _ = fetch(srv, path="/other")
    assert status == 404 and headers["Connection"] == "close"
    status, headers, _ = fetch(srv, method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, _, text = fetch(srv, path="/metrics?name=x")
    assert status == 200 and "spindle_requests_total" in text
    # A client that says nothing is let go, and the endpoint keeps answering.
    with srv.connect(port=srv.metrics_port, timeout=10) as silent:
        started = time.monotonic()
        resp = silent.read_response(timeout=5)
        assert resp.status == 408 and time.monotonic() - started < 4
    assert Scrape(srv).value("spindle_workers") == 1


def test_two_workers_are_summed(spindle):
    srv = start(spindle, "--workers", "2")
    workers = srv.worker_pids()
    assert len(workers) == 2
    expected, sent, served = {c: 0 for c in ("1xx", "2xx", "3xx", "4xx", "5xx")}, 0, {}
    deadline = time.monotonic() + 20
    # New connections until both workers have served some (the kernel picks who accepts).
    while len(served) < 2 or sum(served.values()) < 20:
        assert time.monotonic() < deadline, f"both workers did not serve: {served}"
        more, more_sent, more_served = send_statuses(srv)
        for c, n in more.items():
            expected[c] += n
        sent += more_sent
        for pid, n in more_served.items():
            served[pid] = served.get(pid, 0) + n
    assert set(served) == set(workers)
    n = sum(served.values())
    scrape = converge(srv, f"{n} requests counted", lambda s: s.total_requests() == n)
    assert scrape.by_class() == expected
    check_histogram(scrape, n)
    assert scrape.value("spindle_received_bytes_total") == sent
    assert scrape.value("spindle_connections_total") == n
    assert set(scrape.worker_info()) == set(workers)
    assert scrape.value("spindle_workers") == 2
    assert scrape.value("spindle_worker_spawns_total") == 2


def test_a_killed_worker_is_a_crash_and_its_counts_stay(spindle):
    srv = start(spindle, "--workers", "2")
    expected, _, served = send_statuses(srv)
    n = sum(STATUSES.values())
    before = converge(srv, f"{n} requests counted", lambda s: s.total_requests() == n)
    victim = max(served, key=served.get)  # the worker that served the most
    os.kill(victim, signal.SIGKILL)
    # Scrapes go on while the worker is replaced; no counter ever goes back.
    last = before.total_requests()

    def replaced(s: Scrape) -> bool:
        nonlocal last
        total = s.total_requests()
        assert total >= last, f"requests_total went back from {last} to {total}"
        last = total
        info = s.worker_info()
        return (s.value("spindle_worker_restarts_total", reason="crash") == 1
                and victim not in info and len(info) == 2)

    after = converge(srv, "the killed worker replaced", replaced, timeout=15)
    assert after.by_class() == expected
    assert after.value("spindle_connections_total") == before.value("spindle_connections_total")
    assert after.value("spindle_received_bytes_total") == before.value("spindle_received_bytes_total")
    assert after.value("spindle_worker_spawns_total") == 3
    assert after.value("spindle_workers") == 2
    for reason in ("timeout", "max-requests", "memory", "reload"):
        assert after.value("spindle_worker_restarts_total", reason=reason) == 0
    # The new worker counts on top of what the dead one left.
    more, _, _ = send_statuses(srv, {200: 4})
    final = converge(srv, "the new requests counted", lambda s: s.total_requests() == n + 4)
    assert final.by_class()["2xx"] == expected["2xx"] + 4
    check_histogram(final, n + 4)


def test_reload_and_max_requests_are_counted_as_such(spindle):
    srv = start(spindle, "--workers", "2", "--max-requests", "5")
    mark = srv.log_mark()
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for_log(r"reload: 2 new worker\(s\) ready", 20, since=mark)
    converge(srv, "a reload of 2 workers", lambda s: s.value("spindle_worker_restarts_total", reason="reload") == 2)
    mark = srv.log_mark()
    served: dict[int, int] = {}
    while max(served.values(), default=0) < 5:
        assert sum(served.values()) < 100, f"no worker reached --max-requests 5: {served}"
        for pid, n in send_statuses(srv, {200: 1})[2].items():
            served[pid] = served.get(pid, 0) + n
    # A worker looks at its count once a second.
    srv.wait_for_log(r"\(--max-requests\): asking to be replaced", 5, since=mark)
    scrape = converge(srv, "a max-requests recycle",
                      lambda s: s.value("spindle_worker_restarts_total", reason="max-requests") >= 1)
    assert scrape.value("spindle_worker_restarts_total", reason="crash") == 0
    assert scrape.value("spindle_worker_spawns_total") >= 5


def test_single_process_serves_its_own_metrics(spindle):
    srv = start(spindle, "--single-process")
    expected, sent, _ = send_statuses(srv)
    n = sum(STATUSES.values())
    scrape = converge(srv, f"{n} requests counted", lambda s: s.total_requests() == n)
    assert scrape.by_class() == expected
    check_histogram(scrape, n)
    assert scrape.value("spindle_received_bytes_total") == sent
    assert scrape.value("spindle_workers") == 1
    assert list(scrape.worker_info()) == [srv.pid]
    assert "spindle_worker_spawns" not in scrape.families
    assert "spindle_worker_restarts" not in scrape.families


def test_without_the_flag_no_block_is_made(spindle):
    srv = spindle(APP, *base_args(), "--workers", "1", base=False)
    assert srv.get("/").status == 200
    [worker] = srv.worker_pids()
    with open(f"/proc/{worker}/maps") as f:
        assert "spindle-metrics" not in f.read()
    assert "metrics on" not in srv.log_since()


@pytest.mark.parametrize("bind", ["nonsense", "127.0.0.1", "127.0.0.1:port", "unix:/tmp/m.sock"])
def test_a_bad_metrics_bind_exits_2_with_one_line(bind):
    result = run_spindle(["--metrics-bind", bind, APP])
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: --metrics-bind {bind}: expected HOST:PORT, such as 127.0.0.1:9100"], result.stderr


def test_a_metrics_port_in_use_fails_the_start(spindle):
    srv = start(spindle, "--workers", "1")
    result = run_spindle(["--bind", "127.0.0.1:0", "--metrics-bind", f"127.0.0.1:{srv.metrics_port}", APP])
    assert result.returncode == 1, result
    assert re.search(r"error: --metrics-bind 127\.0\.0\.1:\d+: cannot listen there", result.stderr), result.stderr
