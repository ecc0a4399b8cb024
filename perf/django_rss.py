#!/usr/bin/env python3
"""A Django project with startproject's settings (perf/apps/djangoapp: DEBUG off, the
default middleware, a hello view and a 10 KB JSON view): memory at the same throughput.

Each server serves the same fixed request rate (h2load --h1 -r: new connections at the rate,
one request each, so gunicorn's sync workers, which close after every response, get the same
load; after a warm-up at that rate), and we read its total peak RSS (VmHWM summed over its processes,
reset after the warm-up), the requests that succeeded and their latency; then its maximum
rate on hello (wrk, 16 connections), for context. Whole machine, no pinning.

  spindle              defaults (2 own-GIL sub-interpreters, threads on demand)
  gunicorn -w 2        sync workers, one per core
  gunicorn -w 5        sync workers, gunicorn's recommended (2 x cores) + 1

Usage: perf/django_rss.py [--rate 1000] [--duration 15]
Writes perf/runs/<date>-<host>/django_rss.md and prints it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys

from harness import (APPS, ROOT, dist_version, fixed_rate, free_port, pss_mib, peak_rss_mib, peer, reset_peak_rss,
                     server_python, spindle_bin, start, stop, tree_threads, wait_ready, wrk)

PROJECT = APPS / "djangoapp"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="requests per second in all")
    parser.add_argument("--duration", type=int, default=15)
    args = parser.parse_args()
    spindle = spindle_bin()
    pyver = server_python(spindle)
    peer("django")
    gunicorn = peer("gunicorn")
    servers = {
        "spindle (defaults)": lambda port: [spindle, "--bind", f"127.0.0.1:{port}", "--log-level", "warn",
                                            "djangoapp.wsgi:application"],
        "gunicorn -w 2": lambda port: [gunicorn, "-w", "2", "-b", f"127.0.0.1:{port}", "--log-level", "warning",
                                       "djangoapp.wsgi:application"],
        "gunicorn -w 5": lambda port: [gunicorn, "-w", "5", "-b", f"127.0.0.1:{port}", "--log-level", "warning",
                                       "djangoapp.wsgi:application"],
    }
    rows = []
    for name, command in servers.items():
        for path in ("/", "/json/"):
            port = free_port()
            proc = start(command(port), cwd=PROJECT)
            url = f"http://127.0.0.1:{port}{path}"
            try:
                wait_ready(port, proc, path=path)
                fixed_rate(url, args.rate, 3)  # warm-up at the rate
                reset_peak_rss(proc.pid)
                fixed = fixed_rate(url, args.rate, args.duration)
                rss = peak_rss_mib(proc.pid)
                pss = pss_mib(proc.pid)
                threads = tree_threads(proc.pid)
                top = wrk(url, 5, 16) if path == "/" else None
            finally:
                stop(proc)
            rows.append((name, path, fixed, rss, pss, threads, top))
            print(f"  {name:22s} {path:7s} {fixed['rps']:7.0f} req/s ({fixed['succeeded']} ok of {fixed['done']}), "
                  f"mean {fixed['mean_ms']:.2f} ms, {rss:6.1f} MiB RSS, {pss:6.1f} MiB PSS, {threads} threads"
                  + (f"; max {top['rps']:.0f} req/s" if top else ""), file=sys.stderr)

    host = socket.gethostname()
    out_dir = ROOT / "perf" / "runs" / os.environ.get("RUN_NAME", f"{datetime.date.today()}-{host}")
    out_dir.mkdir(parents=True, exist_ok=True)
    spindle_version = os.popen(f"{spindle} --version").read().split("\n")[0]
    lines = [
        "# Django with startproject's settings: memory at the same throughput (perf/django_rss.py)",
        "",
        f"- {datetime.datetime.now().isoformat(timespec='seconds')}, {host}, {os.cpu_count()} cores, Python {pyver}; "
        f"{spindle_version}; Django {dist_version('django')}, gunicorn {dist_version('gunicorn')}",
        f"- a fixed {args.rate} req/s (h2load --h1 -r {args.rate}: a new connection per request) for "
        f"{args.duration} s after a 3 s warm-up; peak RSS summed over the server's processes, reset after the warm-up",
        "- PSS: proportional set size summed over the processes just after the run (a forked "
        "worker's pages shared with its master count once); summed RSS counts them per process",
        "- max: hello with wrk -t1 -c16 for 5 s, after the fixed-rate run",
        "",
        "| server | view | req/s served | succeeded | mean latency ms | peak RSS MiB (sum) | PSS MiB | threads "
        "| max hello req/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, path, fixed, rss, pss, threads, top in rows:
        lines.append(f"| {name} | `{path}` | {fixed['rps']:.0f} | {fixed['succeeded']} of {fixed['done']} | "
                     f"{fixed['mean_ms']:.2f} | {rss:.1f} | {pss:.1f} | {threads} | "
                     + (f"{top['rps']:.0f} |" if top else " |"))
    lines += ["", f"Command: `perf/django_rss.py --rate {args.rate} --duration {args.duration}`", ""]
    (out_dir / "django_rss.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
