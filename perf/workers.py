#!/usr/bin/env python3
"""Worker processes (spindle -w N) against one process of sub-interpreters and against
pre-fork peers, side by side in one run.

1. The whole machine: the CPU-bound app (perf/apps/cpu.py, ~200 µs of pure Python per
   request) and the hello app, wrk -t1 -c16 (1 s warm-up, then --duration s measured), no
   pinning (the point is using both cores). For each server: req/s, peak RSS of the whole
   process tree (VmHWM summed over supervisor and workers, reset after the warm-up), PSS of
   the tree just after the run (shared pages counted once), the cores the tree kept busy,
   and each figure over gunicorn -w 2's. Servers:
     spindle -w 2 --sub-interpreters 1   two worker processes, one own-GIL sub-interpreter each
     spindle -w 1                        the defaults: one worker, one sub-interpreter per core (2)
     spindle -w 2                        the defaults in each of two workers
     gunicorn -w 2 (sync)                one process per core, the usual pre-fork setup
2. One busy worker: each server with 2 workers of one Python thread each, serving
   perf/apps/slow.py. One request to /sleep?s=12 holds one worker's thread; 0.5 s later
   300 fast requests are sent one after the other, each on a NEW connection (Connection:
   close). Their latency says whether a new connection can land on the busy worker and wait
   there behind the slow request. Servers:
     spindle -w 2 --threads 1 --interpreters main
     gunicorn -w 2 (sync)
     granian --interface wsgi --workers 2 --blocking-threads 1
Servers are interleaved: each round runs every server once (the order rotates by one each
round), so a neighbour's load that comes and goes hits all of them alike. Part 1 reports the
median of the rounds; part 2 pools the rounds' fast requests. Every wait is bounded; all
traffic goes to 127.0.0.1.

Usage: perf/workers.py [--duration 10] [--connections 16] [--rounds 2] [--skip-busy] [--skip-load]
  SPINDLE_BIN (default: this checkout's wheel, installed into build/perf-venv-X.Y); gunicorn
  and granian from that venv (harness.peer); RUN_DIR (default perf/runs/<date>-<host>).
Writes RUN_DIR/workers.md (and workers.json) and prints the tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness import (APPS, ROOT, dist_version, free_port, peak_rss_mib, peer, pss_mib, reset_peak_rss,
                     server_python, spindle_bin, start, stop, thread_cpu, tree_pids, wait_ready, wrk)

BASE = "gunicorn -w 2 (sync)"


def load_servers(spindle: str, gunicorn: str | None) -> dict:
    """Part 1: name -> command for (port, app)."""
    def sp(*flags):
        return lambda port, app: [spindle, *flags, "--bind", f"127.0.0.1:{port}", "--pythonpath", str(APPS),
                                  "--log-level", "warn", app]
    table = {
        "spindle -w 2 --sub-interpreters 1": sp("-w", "2", "--sub-interpreters", "1"),
        "spindle -w 1 (defaults)": sp("-w", "1"),
        "spindle -w 2 (defaults)": sp("-w", "2"),
    }
    if gunicorn:
        table[BASE] = lambda port, app: [gunicorn, "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{port}",
                                         "--chdir", str(APPS), "--log-level", "warning", app]
    return table


def busy_servers(spindle: str, gunicorn: str | None, granian: str | None) -> dict:
    """Part 2: name -> command for a port, every server with 2 workers of 1 Python thread."""
    table = {
        "spindle -w 2 --threads 1 --interpreters main": lambda port: [
            spindle, "-w", "2", "--threads", "1", "--interpreters", "main", "--bind", f"127.0.0.1:{port}",
            "--pythonpath", str(APPS), "--log-level", "warn", "slow:app"],
    }
    if gunicorn:
        table[BASE] = lambda port: [gunicorn, "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{port}",
                                    "--chdir", str(APPS), "--log-level", "warning", "slow:app"]
    if granian:
        helptext = subprocess.run([granian, "--help"], capture_output=True, text=True, timeout=30).stdout
        threads = ["--blocking-threads", "1"] if "--blocking-threads" in helptext else []
        name = "granian --workers 2" + (" --blocking-threads 1" if threads else " (no --blocking-threads flag)")
        table[name] = lambda port: [granian, "--interface", "wsgi", "--workers", "2", *threads,
                                    "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                                    "slow:app"]
    return table


def busy_cores() -> float:
    """CPU-seconds all cores have been busy so far (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU-seconds of this script's reaped children: wrk's, read around a wrk run."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu() -> float:
    """CPU-seconds of this script so far (its client side of part 2)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rotated(items: list, by: int) -> list:
    by %= len(items)
    return items[by:] + items[:by]


# ---------------------------------------------------------------- part 1: the whole machine

def measure_load(name: str, command, app: str, args) -> dict:
    port = free_port()
    proc = start(command(port, app), cwd=APPS)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_ready(port, proc)
        wrk(url, 1, args.connections)  # warm-up
        reset_peak_rss(proc.pid)
        cpu0, busy0, wrk0, t0 = sum(thread_cpu(proc.pid).values()), busy_cores(), children_cpu(), time.monotonic()
        result = wrk(url, args.duration, args.connections)
        elapsed = time.monotonic() - t0
        cpu1, busy1, wrk1 = sum(thread_cpu(proc.pid).values()), busy_cores(), children_cpu()
        result["rss"] = peak_rss_mib(proc.pid)
        result["pss"] = pss_mib(proc.pid)
        result["processes"] = len(tree_pids(proc.pid))
    finally:
        stop(proc)
    result["server_cores"] = (cpu1 - cpu0) / elapsed
    result["wrk_cores"] = (wrk1 - wrk0) / elapsed
    result["other_cores"] = max(0.0, (busy1 - busy0) / elapsed - result["server_cores"] - result["wrk_cores"])
    result.pop("raw", None)
    print(f"  {name:36s} {result['rps']:9.0f} req/s  errors {result['errors']:4d}  peak RSS {result['rss']:6.1f} MiB  "
          f"PSS {result['pss']:6.1f} MiB  server {result['server_cores']:.2f} cores  wrk {result['wrk_cores']:.2f}  "
          f"other {result['other_cores']:.2f}", file=sys.stderr)
    return result


# ---------------------------------------------------------------- part 2: one busy worker

def get(port: int, path: str, timeout: float) -> tuple[float, int, bytes]:
    """One request on a new connection with Connection: close: (seconds, status, body).
    Reads the head and Content-Length bytes of body (or up to EOF), bounded by timeout."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            s.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                               if line.lower().startswith(b"content-length:")), None)
                if length is not None and len(body) >= length:
                    break
    elapsed = time.monotonic() - t0
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return elapsed, status, body


def settle(proc, port: int, processes: int, timeout: float = 20.0) -> None:
    """Until the tree has its workers (supervisor/arbiter + `processes`), then 1 s for their
    imports and 20 fast requests, so no worker is still starting when the test begins."""
    deadline = time.monotonic() + timeout
    while len(tree_pids(proc.pid)) < processes + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    for _ in range(20):
        get(port, "/", 5.0)


def measure_busy(name: str, command, args) -> dict:
    port = free_port()
    proc = start(command(port), cwd=APPS)
    slow: dict = {}

    def slow_request() -> None:
        try:
            slow["seconds"], slow["status"], _ = get(port, f"/sleep?s={args.sleep}", args.sleep + 20)
        except OSError as exc:
            slow["error"] = repr(exc)
        slow["done_at"] = time.monotonic()

    fast: list[float] = []
    fast_end: list[float] = []
    failures: list[str] = []
    try:
        wait_ready(port, proc)
        settle(proc, port, 2)
        thread = threading.Thread(target=slow_request, daemon=True)
        cpu0, busy0, self0 = sum(thread_cpu(proc.pid).values()), busy_cores(), self_cpu()
        started = time.monotonic()
        thread.start()
        time.sleep(0.5)
        deadline = time.monotonic() + args.sleep + 40  # the whole burst, even if requests hang
        for _ in range(args.fast):
            if time.monotonic() > deadline:
                failures.append("burst deadline passed")
                break
            try:
                seconds, status, body = get(port, "/", 20.0)
            except OSError as exc:
                failures.append(repr(exc))
                continue
            if status != 200 or body != b"Hello, World!":
                failures.append(f"status {status}, body {body[:40]!r}")
                continue
            fast.append(seconds)
            fast_end.append(time.monotonic())
        burst = time.monotonic() - started
        cpu1, busy1, self1 = sum(thread_cpu(proc.pid).values()), busy_cores(), self_cpu()
        thread.join(args.sleep + 25)
    finally:
        stop(proc)
    done_at = slow.get("done_at", float("inf"))
    result = {
        "latencies_ms": [round(x * 1000, 3) for x in fast],
        "failures": failures,
        "slow_seconds": slow.get("seconds"),
        "slow_status": slow.get("status"),
        "slow_error": slow.get("error"),
        # Fast requests answered while the slow one was still running: the ones the test is about.
        "during_sleep": sum(1 for t in fast_end if t < done_at),
        "burst_seconds": (fast_end[-1] - started - 0.5) if fast_end else None,
        # From the slow request's start to the last fast answer: the server tree's CPU, and the
        # rest of the machine's (all busy time but the server's and this script's).
        "server_cores": (cpu1 - cpu0) / burst,
        "other_cores": max(0.0, (busy1 - busy0 - (cpu1 - cpu0) - (self1 - self0)) / burst),
    }
    s = summarize(result["latencies_ms"])
    print(f"  {name:48s} p50 {s['p50']:7.2f} ms  p99 {s['p99']:8.2f} ms  max {s['max']:9.2f} ms  "
          f"> 1 s: {s['over_1s']}  failed {len(failures)}  during the sleep {result['during_sleep']}/{len(fast)}  "
          f"slow request {slow.get('seconds') or 0:.2f} s ({slow.get('status') or slow.get('error')})  "
          f"server {result['server_cores']:.2f} cores  other {result['other_cores']:.2f}",
          file=sys.stderr)
    return result


def summarize(latencies_ms: list[float]) -> dict:
    if not latencies_ms:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan"), "over_1s": 0}
    ordered = sorted(latencies_ms)
    p99 = statistics.quantiles(ordered, n=100, method="inclusive")[98] if len(ordered) > 1 else ordered[0]
    return {"n": len(ordered), "p50": statistics.median(ordered), "p99": p99, "max": ordered[-1],
            "over_1s": sum(1 for x in ordered if x > 1000)}


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="measured wrk seconds (part 1)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every server, both parts")
    parser.add_argument("--sleep", type=int, default=12, help="seconds the slow request sleeps (part 2)")
    parser.add_argument("--fast", type=int, default=300, help="fast requests sent meanwhile (part 2)")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-busy", action="store_true")
    args = parser.parse_args()
    spindle = spindle_bin()
    pyver = server_python(spindle)
    gunicorn, granian = peer("gunicorn"), peer("granian")
    t_start = time.monotonic()

    sys.path.insert(0, str(APPS))
    import cpu  # noqa: E402  (the app module, to time one call here)

    t0 = time.perf_counter()
    for _ in range(200):
        cpu.work()
    call_us = (time.perf_counter() - t0) / 200 * 1e6

    results: dict = {"load": {}, "busy": {}}
    if not args.skip_load:
        table = load_servers(spindle, gunicorn)
        for app in ("cpu:app", "hello:app"):
            print(f"{app}:", file=sys.stderr)
            runs: dict[str, list[dict]] = {name: [] for name in table}
            for r in range(args.rounds):
                for name in rotated(list(table), r):
                    try:
                        runs[name].append(measure_load(name, table[name], app, args))
                    except Exception as exc:  # one server failing must not lose the others' rows
                        print(f"  {name}: failed: {exc}", file=sys.stderr)
            results["load"][app] = runs

    if not args.skip_busy:
        table = busy_servers(spindle, gunicorn, granian)
        print(f"one busy worker (/sleep?s={args.sleep}, then {args.fast} fast requests, new connection each):",
              file=sys.stderr)
        runs = {name: [] for name in table}
        for r in range(args.rounds):
            for name in rotated(list(table), r):
                try:
                    runs[name].append(measure_busy(name, table[name], args))
                except Exception as exc:
                    print(f"  {name}: failed: {exc}", file=sys.stderr)
        results["busy"] = runs

    host = socket.gethostname()
    out_dir = Path(os.environ.get("RUN_DIR") or ROOT / "perf" / "runs" / f"{datetime.date.today()}-{host}")
    out_dir.mkdir(parents=True, exist_ok=True)
    versions = ", ".join(f"{d} {dist_version(d)}" for d in ("gunicorn", "granian"))
    spindle_version = subprocess.run([spindle, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = len(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True,
                               text=True).stdout.splitlines())
    command = (f"perf/workers.py --duration {args.duration} --connections {args.connections} --rounds {args.rounds}"
               f" --sleep {args.sleep} --fast {args.fast}"
               f"{' --skip-load' if args.skip_load else ''}{' --skip-busy' if args.skip_busy else ''}")
    lines = [
        "# Worker processes (perf/workers.py)",
        "",
        f"- {datetime.datetime.now().isoformat(timespec='seconds')}, {host}, {os.cpu_count()} cores, "
        f"Python {pyver}; {spindle_version} ({spindle}); {versions}; commit {commit}, "
        f"{dirty} files changed or untracked",
        f"- {args.rounds} interleaved rounds (the order rotates each round); "
        f"whole run {(time.monotonic() - t_start) / 60:.1f} min",
    ]
    if results["load"]:
        lines += [
            f"- cpu:app: {call_us:.0f} µs per call here (one core tops out near {1e6 / call_us:.0f} req/s)",
            "",
            "## 1. The whole machine",
            "",
            f"wrk -t1 -c{args.connections}, 1 s warm-up then {args.duration} s, no pinning. Each figure is the "
            "median of the rounds; × = over gunicorn -w 2 in the same app. Peak RSS: VmHWM summed over every "
            "process of the tree (supervisor/arbiter and workers), reset after the warm-up, so pages shared "
            "between processes count in each. PSS: the tree's Pss just after the run, shared pages counted "
            "once. Cores: CPU time per second of the run of the server tree, of wrk, and of everything else "
            "on the machine (the neighbour's tests, interrupts).",
            "",
            "| app | server | req/s | × | req/s each round | errors | peak RSS MiB | × | PSS MiB | × | "
            "processes | server cores | wrk cores | other cores |",
            "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for app, runs in results["load"].items():
            med = {name: {k: statistics.median(r[k] for r in rs) for k in
                          ("rps", "rss", "pss", "server_cores", "wrk_cores", "other_cores", "processes")}
                   for name, rs in runs.items() if rs}
            base = med.get(BASE)

            def ratio(name, key):
                return f"{med[name][key] / base[key]:.2f}" if base and base[key] else "-"

            for name, m in med.items():
                rs = runs[name]
                lines.append(
                    f"| {app} | {name} | {m['rps']:.0f} | {ratio(name, 'rps')} | "
                    f"{' / '.join('%.0f' % r['rps'] for r in rs)} | {sum(r['errors'] for r in rs)} | "
                    f"{m['rss']:.1f} | {ratio(name, 'rss')} | {m['pss']:.1f} | {ratio(name, 'pss')} | "
                    f"{m['processes']:.0f} | {m['server_cores']:.2f} | {m['wrk_cores']:.2f} | "
                    f"{m['other_cores']:.2f} |")
    if results["busy"]:
        lines += [
            "",
            "## 2. One busy worker",
            "",
            f"2 workers of 1 Python thread each, perf/apps/slow.py. One request to /sleep?s={args.sleep} on its "
            f"own connection, 0.5 s later {args.fast} fast requests one after the other, each on a new "
            "connection (Connection: close). Latencies pooled over the rounds. \"during the sleep\": fast "
            "requests answered before the slow one was (all of them, unless one waited behind it). "
            "Cores: from the slow request's start to the last fast answer, CPU time per second of the server "
            "tree and of everything else on the machine but this script (median of the rounds). "
            "> 10 ms: fast requests slower than 10 ms.",
            "",
            "| server | fast requests | p50 ms | p99 ms | max ms | > 10 ms | > 1 s (each round) | failed | "
            "during the sleep | slow request s | server cores | other cores |",
            "|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|",
        ]
        for name, rs in results["busy"].items():
            if not rs:
                continue
            s = summarize([x for r in rs for x in r["latencies_ms"]])
            each = " + ".join(str(summarize(r["latencies_ms"])["over_1s"]) for r in rs)
            slow = " / ".join(f"{r['slow_seconds']:.2f}" if r["slow_seconds"] is not None else f"{r['slow_error']}"
                              for r in rs)
            over_10ms = sum(1 for r in rs for x in r["latencies_ms"] if x > 10)
            lines.append(f"| {name} | {s['n']} | {s['p50']:.2f} | {s['p99']:.2f} | {s['max']:.2f} | {over_10ms} | "
                         f"{s['over_1s']} ({each}) | {sum(len(r['failures']) for r in rs)} | "
                         f"{sum(r['during_sleep'] for r in rs)} | {slow} | "
                         f"{statistics.median(r['server_cores'] for r in rs):.2f} | "
                         f"{statistics.median(r['other_cores'] for r in rs):.2f} |")
    lines += ["", f"Command: `{command}`", ""]
    (out_dir / "workers.md").write_text("\n".join(lines))
    (out_dir / "workers.json").write_text(json.dumps({"args": vars(args), "call_us": call_us, **results}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
