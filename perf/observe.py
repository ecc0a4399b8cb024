"""What observing costs: Spindle serving hello at 64 keep-alive connections with nothing
on, with the access log (gunicorn's format, to a file), with Prometheus metrics, and with
both, in interleaved rounds (off, access, metrics, both; then again), so the machine's
drift hits every variant alike. One process, one I/O thread, one Python thread, epoll:
the lab's spindle-epoll. Server on SERVER_CORE (0), wrk on CLIENT_CORE (1).

Usage: python perf/observe.py [--rounds 4] [--duration 5] [--out perf/runs/DIR/observe.md]
       python perf/observe.py --instructions [--out ...]

Reports per variant the median req/s and server CPU per request over the rounds and
their ratio to "off". A /metrics scrape after each metrics run checks the counters saw
every request wrk reported.

--instructions counts instead, under valgrind's callgrind, the instructions the server
executes per request (every thread): the difference between a run of 2,000 and one of
12,000 requests (h2load, 8 connections) over 10,000, which takes start-up and shutdown
out. Instruction counts do not move with the machine's noise, so this shows a cost of a
few hundred instructions that req/s cannot.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import harness

VARIANTS = ("off", "access-log", "metrics", "both")


def server_cpu(pid: int) -> float:
    return sum(harness.thread_cpu(pid).values())


def run_one(spindle: str, variant: str, duration: int, logdir: Path) -> dict:
    port = harness.free_port()
    cmd = ["taskset", "-c", "0", *server_command(spindle, variant, port, logdir)]
    metrics_port = None
    if "--metrics-bind" in cmd:
        metrics_port = int(cmd[cmd.index("--metrics-bind") + 1].rsplit(":", 1)[1])
    proc = harness.start(cmd)
    try:
        harness.wait_ready(port, proc)
        url = f"http://127.0.0.1:{port}/"
        harness.wrk(url, 1, 64, cores="1")  # warm-up
        before = server_cpu(proc.pid)
        result = harness.wrk(url, duration, 64, cores="1")
        cpu = server_cpu(proc.pid) - before
        requests = result["rps"] * duration
        result["cpu_us"] = cpu / requests * 1e6 if requests else float("nan")
        if metrics_port is not None:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                text = r.read().decode()
            counted = sum(float(m.group(1)) for m in re.finditer(r'^spindle_requests_total\{[^}]*\} (\S+)', text, re.M))
            result["counted"] = counted
    finally:
        harness.stop(proc)
    return result


def server_command(spindle: str, variant: str, port: int, logdir: Path) -> list[str]:
    cmd = [spindle, "--bind", f"127.0.0.1:{port}", "--single-process", "--io-threads", "1",
           "--py-threads", "1", "--driver", "epoll", "--pythonpath", str(harness.APPS), "--log-level", "warn"]
    if variant in ("access-log", "both"):
        cmd += ["--access-logfile", str(logdir / f"access-{port}.log")]
    if variant in ("metrics", "both"):
        cmd += ["--metrics-bind", f"127.0.0.1:{harness.free_port()}"]
    return [*cmd, "lab:app"]


def instructions(spindle: str, variant: str, requests: int, logdir: Path) -> int:
    """Instructions the server executed (all threads) over its life serving `requests`."""
    port = harness.free_port()
    out = logdir / f"callgrind-{variant}-{requests}"
    proc = harness.start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                          *server_command(spindle, variant, port, logdir)])
    try:
        harness.wait_ready(port, proc, timeout=120)
        subprocess.run(["h2load", "-n", str(requests), "-c", "8", "--h1", f"http://127.0.0.1:{port}/"],
                       check=True, capture_output=True, timeout=600)
    finally:
        harness.stop(proc)
    match = re.search(r"^summary: (\d+)", out.read_text(), re.M)
    return int(match.group(1))


def instructions_report(spindle: str) -> str:
    low, high = 2_000, 12_000
    lines = [
        "# What observing costs, in instructions (perf/observe.py --instructions)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; callgrind, every thread of the server; hello over 8 keep-alive "
        f"connections (h2load); per request = (run of {high} - run of {low}) / {high - low}. Spindle "
        "--single-process, 1 I/O thread, 1 Python thread, epoll.",
        "",
        "| variant | instructions per request | more than off |",
        "|---|---|---|",
    ]
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            per = (instructions(spindle, variant, high, Path(tmp))
                   - instructions(spindle, variant, low, Path(tmp))) / (high - low)
            base = per if base is None else base
            print(f"{variant:>10}: {per:.0f} instructions/request", flush=True)
            lines.append(f"| {variant} | {per:.0f} | {per - base:+.0f} ({(per / base - 1) * 100:+.1f}%) |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    spindle = harness.spindle_bin()
    if args.instructions:
        text = instructions_report(spindle)
        print(text)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
        return
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(args.rounds):
            order = VARIANTS if round_no % 2 == 0 else tuple(reversed(VARIANTS))
            for variant in order:
                r = run_one(spindle, variant, args.duration, Path(tmp))
                results[variant].append(r)
                print(f"round {round_no + 1} {variant:>10}: {r['rps']:9.0f} req/s, {r['cpu_us']:.2f} µs CPU/req"
                      + (f", counted {r['counted']:.0f}" if "counted" in r else ""), flush=True)
    base_rps = statistics.median(r["rps"] for r in results["off"])
    base_cpu = statistics.median(r["cpu_us"] for r in results["off"])
    lines = [
        "# What observing costs (perf/observe.py)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; hello, 64 keep-alive connections, {args.rounds} interleaved rounds "
        f"of {args.duration} s; Spindle --single-process, 1 I/O thread, 1 Python thread, epoll, on core 0; wrk on core 1.",
        "",
        "| variant | median req/s | x off | median server CPU µs/req | x off | req/s of each round |",
        "|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        rps = statistics.median(r["rps"] for r in results[variant])
        cpu = statistics.median(r["cpu_us"] for r in results[variant])
        rounds = ", ".join("%.0f" % r["rps"] for r in results[variant])
        lines.append(f"| {variant} | {rps:.0f} | {rps / base_rps:.3f} | {cpu:.2f} | {cpu / base_cpu:.3f} | {rounds} |")
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
