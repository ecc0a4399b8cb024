#!/usr/bin/env python3
"""Interpreter scaling, side by side in one run: does Python run on every core?

For a CPU-bound app (perf/apps/cpu.py: `cpu:app` ~200 µs of pure Python per request,
`cpu:heavy` ~1 ms) and the hello app, measures req/s and peak RSS of:
  Spindle's defaults with 1 and with 2 own-GIL sub-interpreters (PEP 684): threads start at
    one per interpreter and grow while requests wait and the interpreter's GIL is free
  Spindle --interpreters sub --threads 1 and 2 (fixed: one thread per interpreter)
  Spindle --interpreters main, threads on demand, and --threads 2 (threads sharing one GIL)
  gunicorn -w 2 (sync workers: one process per core, the usual way to use 2 cores)
Every server gets one I/O thread / no pinning: the point is how Python spreads over the
2 cores; wrk (1 thread) needs little CPU at these rates. The goal: the defaults with 2
sub-interpreters >= 1.8x the defaults with 1 on the CPU-bound app.

The ceiling. wrk, the I/O thread and the kernel's TCP work share the 2 cores with Python.
With 1 interpreter they run beside it on the other core; with 2 they take their share of
the cores Python needs. If Python needs p µs of CPU per request and everything else o µs,
2 cores serve at most 2/(p+o) requests a second against 1/p, a ratio of 2p/(p+o): so the
report also gives p (from the 1-interpreter run), o (I/O threads, Spindle's other threads
and wrk, per request, from the 2-interpreter run) and that ceiling, and how close the
defaults came to it. A heavier request (`cpu:heavy`) makes o a smaller share.

Usage: perf/subinterp.py [--duration 10] [--connections 16] [--apps cpu:app,cpu:heavy,hello:app]
  SPINDLE_BIN (default: this checkout's wheel, installed into build/perf-venv-X.Y), GUNICORN (default:
  that venv's gunicorn, installed with pip when missing); see perf/harness.py.
Writes perf/runs/<date>-<host>/subinterp.md and prints it.
"""

import argparse
import datetime
import os
import resource
import socket
import statistics
import sys
import time

from harness import (APPS, ROOT, free_port, peak_rss_mib, peer, server_python, spindle_bin, start, stop,
                     thread_cpu, wait_ready, wrk)


def children_cpu() -> float:
    """CPU seconds of this script's finished children: wrk's, once it has been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(name: str, cmd: list[str], port: int, args) -> tuple[float, float, float, float]:
    """req/s, peak RSS (MiB), the cores the server's Python threads kept busy (for
    Spindle; for gunicorn the whole process tree), and the cores everything else took:
    the server's other threads and wrk."""
    proc = start(cmd)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_ready(port, proc)
        wrk(url, 2, args.connections)  # warm-up
        before, wrk_before, t0 = thread_cpu(proc.pid), children_cpu(), time.monotonic()
        rps = wrk(url, args.duration, args.connections)["rps"]
        after, wrk_after, elapsed = thread_cpu(proc.pid), children_cpu(), time.monotonic() - t0
        rss = peak_rss_mib(proc.pid)
    finally:
        stop(proc)
    spent = {g: after.get(g, 0.0) - before.get(g, 0.0) for g in after}
    group = "python" if "python" in after else "other"
    cores = spent.get(group, 0.0) / elapsed
    rest = (sum(spent.values()) - spent.get(group, 0.0) + wrk_after - wrk_before) / elapsed
    print(f"  {name:32s} {rps:10.0f} req/s  {rss:7.1f} MiB  {cores:4.2f} Python cores  "
          f"{rest:4.2f} other cores", file=sys.stderr)
    return rps, rss, cores, rest


# (name, flags): the first is the ratio's base; the second is the defaults on 2 cores.
CONFIGS = [
    ("spindle sub, 1 interpreter (defaults)", ["--interpreters", "sub", "--sub-interpreters", "1"]),
    ("spindle sub, 2 interpreters (defaults)", ["--interpreters", "sub", "--sub-interpreters", "2"]),
    ("spindle sub --threads 1", ["--interpreters", "sub", "--threads", "1"]),
    ("spindle sub --threads 2", ["--interpreters", "sub", "--threads", "2"]),
    ("spindle main (threads on demand)", ["--interpreters", "main"]),
    ("spindle main --threads 2", ["--interpreters", "main", "--threads", "2"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of every server, interleaved; each figure is their median")
    parser.add_argument("--apps", default="cpu:app,cpu:heavy,hello:app",
                        help="comma-separated apps from perf/apps")
    parser.add_argument("--no-gunicorn", action="store_true", help="leave gunicorn out")
    parser.add_argument("--defaults-only", action="store_true",
                        help="only Spindle's defaults with 1 and 2 interpreters (the ratio and its ceiling)")
    args = parser.parse_args()
    binary = spindle_bin()
    pyver = server_python(binary)
    gunicorn = os.environ.get("GUNICORN") or peer("gunicorn")

    sys.path.insert(0, str(APPS))
    import cpu  # noqa: E402  (the app module, to time one call here)

    t0 = time.perf_counter()
    for _ in range(200):
        cpu.work()
    call_us = (time.perf_counter() - t0) / 200 * 1e6

    t0 = time.perf_counter()
    for _ in range(40):
        cpu.work(cpu.HEAVY_ITERATIONS)
    heavy_us = (time.perf_counter() - t0) / 40 * 1e6

    rows = []
    ceilings = []
    for app in args.apps.split(","):
        print(f"{app}:", file=sys.stderr)
        runs: dict[str, list[tuple[float, float, float]]] = {}
        # Interleaved rounds: other tenants of a shared machine come and go, and a ratio
        # between two runs far apart in time says more about them than about us.
        for _ in range(args.rounds):
            for name, flags in (CONFIGS[:2] if args.defaults_only else CONFIGS):
                port = free_port()
                cmd = [binary, "--bind", f"127.0.0.1:{port}", "--io-threads", "1", *flags,
                       "--pythonpath", str(APPS), "--log-level", "warn", app]
                runs.setdefault(name, []).append(measure(name, cmd, port, args))
            if args.no_gunicorn:
                continue
            port = free_port()
            cmd = [gunicorn, "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{port}", "--chdir", str(APPS),
                   "--log-level", "warning", app]
            runs.setdefault("gunicorn -w 2 (sync)", []).append(measure("gunicorn -w 2 (sync)", cmd, port, args))
        results = {name: tuple(statistics.median(r[i] for r in rs) for i in range(4)) for name, rs in runs.items()}
        base = results[CONFIGS[0][0]][0]
        for name, (rps, rss, cores, rest) in results.items():
            rows.append((app, name, rps, rps / base, rss, cores, rest))
        # The ceiling (see the docstring): p from the 1-interpreter defaults, o from the
        # 2-interpreter defaults, both per request.
        one, two = results[CONFIGS[0][0]], results[CONFIGS[1][0]]
        p_us, o_us = one[2] / one[0] * 1e6, two[3] / two[0] * 1e6
        ceiling = 2 * p_us / (p_us + o_us)
        ceilings.append((app, p_us, o_us, ceiling, two[0] / one[0]))

    host = socket.gethostname()
    out_dir = ROOT / "perf" / "runs" / f"{datetime.date.today()}-{host}"
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Interpreter scaling (perf/subinterp.py)",
        "",
        f"- {datetime.datetime.now().isoformat(timespec='seconds')}, {host}, {os.cpu_count()} cores, "
        f"Spindle {binary} (Python {pyver}), wrk -t1 -c{args.connections} -d{args.duration}s, "
        f"{args.rounds} interleaved rounds: each figure is the median of its rounds",
        f"- cpu:app does {cpu.ITERATIONS} loop iterations: {call_us:.0f} µs per call here "
        f"(so one core tops out near {1e6 / call_us:.0f} req/s); cpu:heavy {cpu.HEAVY_ITERATIONS}: "
        f"{heavy_us:.0f} µs",
        f"- ratio: req/s relative to `{CONFIGS[0][0]}` on the same app",
        "- Python cores: CPU time of Spindle's Python threads per second of the run (gunicorn: all",
        "  its processes); the I/O thread and wrk share the same 2 cores, so 2 is out of reach",
        "",
        "- other cores: everything else per second of the run: Spindle's I/O thread and its other",
        "  threads, and wrk (gunicorn: wrk only)",
        "",
        "| app | server | req/s | ratio | Python cores | other cores | peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {a} | {n} | {r:.0f} | {x:.2f} | {c:.2f} | {o:.2f} | {m:.1f} |" for a, n, r, x, m, c, o in rows]
    lines += [
        "",
        "The ceiling the shared cores allow the defaults (docstring): p, Python's CPU per request with",
        "1 interpreter; o, everything else's with 2; at most 2p/(p+o).",
        "",
        "| app | p µs | o µs | ceiling | defaults, 2 vs 1 interpreters | share of the ceiling |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {a} | {p:.0f} | {o:.0f} | {c:.2f}x | {r:.2f}x | {r / c:.0%} |" for a, p, o, c, r in ceilings]
    lines += ["", f"Command: `perf/subinterp.py --duration {args.duration} --connections {args.connections} "
                  f"--rounds {args.rounds} --apps {args.apps}{' --no-gunicorn' if args.no_gunicorn else ''}"
                  f"{' --defaults-only' if args.defaults_only else ''}`", ""]
    (out_dir / "subinterp.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
