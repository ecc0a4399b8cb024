#!/usr/bin/env python3
"""Apps that wait: Spindle's defaults against its peers with their usual production
settings, on the whole 2-core machine, one run.

1. The waiting app (perf/apps/wait.py: 5 ms of time.sleep per request, standing in for a
   database query) at 256 and at 1500 keep-alive connections: req/s, p50, p99, errors and
   timeouts (5 s), and the server's total peak RSS (every process of it). Each server gets
   a 3 s warm-up at the same load first (Spindle's and Granian's thread pools grow on
   demand), then a measured run (wrk -t2).
2. Long responses: 20 clients each reading a 60 s server-sent-events stream (one event per
   100 ms) while wrk (8 connections) sends short requests (no wait): their req/s and p99.
   Short requests must not queue behind the streams (Granian's issue #873 is that trap).

Servers (no pinning; wrk shares the 2 cores):
  spindle                     defaults (2 own-GIL sub-interpreters, threads on demand)
  gunicorn gthread            -k gthread -w 2 --threads 8
  granian                     --interface wsgi --workers 2 (its blocking pool grows on demand)
  uwsgi                       --master --processes 2 --threads 8 (HTTP/1.1 socket, no router)

Usage: perf/wait.py [--duration 10] [--only spindle,granian] [--skip-streams]
Writes perf/runs/<date>-<host>/wait.md (and wait.json) and prints the tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import socket
import sys
import threading
import time

from harness import (APPS, ROOT, dist_version, free_port, peak_rss_mib, peer, reset_peak_rss, server_python,
                     spindle_bin, start, stop, tree_threads, wait_ready, wrk)


def servers(spindle: str) -> dict:
    """name -> (command for a port, working directory, stop signal), or None when missing."""
    gunicorn, granian, uwsgi = peer("gunicorn"), peer("granian"), peer("uwsgi")
    table = {
        "spindle (defaults)": lambda port: [spindle, "--bind", f"127.0.0.1:{port}", "--pythonpath", str(APPS),
                                            "--log-level", "warn", "wait:app"],
    }
    if gunicorn:
        table["gunicorn -k gthread -w 2 --threads 8"] = lambda port: [
            gunicorn, "-k", "gthread", "-w", "2", "--threads", "8", "-b", f"127.0.0.1:{port}",
            "--chdir", str(APPS), "--log-level", "warning", "wait:app"]
    if granian:
        table["granian --workers 2"] = lambda port: [
            granian, "--interface", "wsgi", "--workers", "2", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "wait:app"]
    if uwsgi:
        table["uwsgi --processes 2 --threads 8"] = lambda port: [
            uwsgi, "--http11-socket", f"127.0.0.1:{port}", "--wsgi-file", "wait.py", "--callable", "app",
            "--master", "--processes", "2", "--threads", "8", "--disable-logging", "--listen", "1024",
            "--die-on-term", "--buffer-size", "32768"]
    return table


def waiting(name: str, command, connections: int, duration: int) -> dict:
    port = free_port()
    proc = start(command(port), cwd=APPS)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_ready(port, proc)
        wrk(url, 3, connections, threads=2)  # warm-up: pools grow, caches fill
        reset_peak_rss(proc.pid)
        result = wrk(url, duration, connections, threads=2)
        result["rss"] = peak_rss_mib(proc.pid)
        result["threads"] = tree_threads(proc.pid)
    finally:
        stop(proc)
    print(f"  {name:40s} c{connections:<5d} {result['rps']:9.0f} req/s  p50 {result['p50']:8.2f} ms  "
          f"p99 {result['p99']:8.2f} ms  errors {result['errors']:5d}  {result['rss']:6.1f} MiB  "
          f"{result['threads']} threads", file=sys.stderr)
    return result


class Streams:
    """N clients each reading one long /stream response, counting events."""

    def __init__(self, port: int, n: int, seconds: int):
        self.events = [0] * n
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._read, args=(port, i, seconds), daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _read(self, port: int, i: int, seconds: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET /stream?seconds=%d HTTP/1.1\r\nHost: x\r\n\r\n" % seconds)
                while not self.stop.is_set():
                    data = s.recv(65536)
                    if not data:
                        break
                    self.events[i] += data.count(b"data: ")
        except OSError as exc:
            self.failed.append(repr(exc))

    def started(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(e > 0 for e in self.events):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)


def streams(name: str, command, duration: int) -> dict:
    port = free_port()
    proc = start(command(port), cwd=APPS)
    try:
        wait_ready(port, proc, path="/?ms=0")
        group = Streams(port, 20, duration + 30)
        try:
            all_started = group.started(10)
            before = sum(group.events)
            result = wrk(f"http://127.0.0.1:{port}/?ms=0", duration, 8, threads=1)
            result["stream_events"] = sum(group.events) - before
            result["streams_started"] = all_started
        finally:
            group.close()
    finally:
        stop(proc)
    print(f"  {name:40s} short: {result['rps']:9.0f} req/s  p99 {result['p99']:8.2f} ms  errors "
          f"{result['errors']}; 20 streams {'flowing' if result['streams_started'] else 'NOT ALL STARTED'}, "
          f"{result['stream_events']} events meanwhile", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--only", default="", help="comma-separated name prefixes")
    parser.add_argument("--skip-streams", action="store_true")
    args = parser.parse_args()
    spindle = spindle_bin()
    pyver = server_python(spindle)
    table = servers(spindle)
    if args.only:
        prefixes = args.only.split(",")
        table = {k: v for k, v in table.items() if any(k.startswith(p) for p in prefixes)}

    results: dict = {"waiting": {}, "streams": {}}
    for connections in (256, 1500):
        print(f"waiting app, {connections} connections:", file=sys.stderr)
        for name, command in table.items():
            try:
                results["waiting"][f"{name} c{connections}"] = waiting(name, command, connections, args.duration)
            except Exception as exc:  # one server failing must not lose the others' rows
                print(f"  {name}: failed: {exc}", file=sys.stderr)
    if not args.skip_streams:
        print("20 long streams and short requests:", file=sys.stderr)
        for name, command in table.items():
            try:
                results["streams"][name] = streams(name, command, args.duration)
            except Exception as exc:
                print(f"  {name}: failed: {exc}", file=sys.stderr)

    host = socket.gethostname()
    out_dir = ROOT / "perf" / "runs" / os.environ.get("RUN_NAME", f"{datetime.date.today()}-{host}")
    out_dir.mkdir(parents=True, exist_ok=True)
    versions = ", ".join(f"{d} {dist_version(d)}" for d in ("gunicorn", "granian", "uwsgi"))
    spindle_version = os.popen(f"{spindle} --version").read().split("\n")[0]
    lines = [
        "# Apps that wait (perf/wait.py)",
        "",
        f"- {datetime.datetime.now().isoformat(timespec='seconds')}, {host}, {os.cpu_count()} cores, "
        f"Python {pyver}; {spindle_version}; {versions}",
        f"- wrk --latency --timeout 5s, {args.duration} s measured after a 3 s warm-up at the same load; "
        "no pinning (server and wrk share the 2 cores)",
        "- peak RSS: VmHWM summed over every process of the server, reset before the measured run",
        "",
        "## The waiting app (5 ms per request)",
        "",
        "| server | connections | req/s | p50 ms | p99 ms | errors (timeouts) | peak RSS MiB | threads |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, r in results["waiting"].items():
        name, conns = key.rsplit(" c", 1)
        lines.append(f"| {name} | {conns} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                     f"{r['errors']} ({r['timeouts']}) | {r['rss']:.1f} | {r['threads']} |")
    if results["streams"]:
        lines += [
            "",
            "## 20 long streams open, short requests (no wait) on 8 more connections",
            "",
            "| server | short req/s | short p99 ms | errors | all 20 streams flowing | stream events meanwhile |",
            "|---|---:|---:|---:|---|---:|",
        ]
        for name, r in results["streams"].items():
            lines.append(f"| {name} | {r['rps']:.0f} | {r['p99']:.2f} | {r['errors']} | "
                         f"{'yes' if r['streams_started'] else 'no'} | {r['stream_events']} |")
    lines += ["", f"Command: `perf/wait.py --duration {args.duration}"
                  f"{' --only ' + args.only if args.only else ''}{' --skip-streams' if args.skip_streams else ''}`", ""]
    for r in list(results["waiting"].values()) + list(results["streams"].values()):
        r.pop("raw", None)
    (out_dir / "wait.md").write_text("\n".join(lines))
    (out_dir / "wait.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
