"""Side by side: Spindle builds or settings against each other on the lab's scenarios
(perf/lab.sh's eight), in interleaved rounds (A, B, C; then again), so the machine's drift hits every
variant alike. The way to show a hot-path change (before/after) or a lever (on/off) costs
or wins what it claims, where a single lab run per variant would mostly show the noise.

Every variant runs as the lab's spindle-epoll does (one process, one I/O thread, one
Python thread, perf/apps/lab.py) with its own extra flags and environment; server on
SERVER_CORE (0), wrk on CLIENT_CORE (1).

Usage:
  python perf/ab.py --variant 'before;build/ab-before/bin/spindle;--driver epoll' \\
                    --variant 'after;build/test-venv-3.13/bin/spindle;--driver epoll' \\
                    [--variant 'NAME;BIN;FLAGS;ENV=VALUE ENV2=VALUE'] \\
                    [--scenarios hello-c1,hello-c64,hello-c256,64k-c64] [--rounds 4] [--duration 5]
                    (also close-c64, pipeline16-c64, post4k-c64, chunked4k-c64)
                    [--app lab:app] [--out perf/runs/DIR/ab.md]

`--app MODULE:CALLABLE` serves another app of perf/apps (`flaskapp:app`: the hello
scenarios are its `/`), each variant from the perf venv's Python as installed.

Reports per variant and scenario the median req/s, server CPU µs per request and p99 over
the rounds, and each one's ratio to the first variant.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import harness

LUA = Path(__file__).resolve().parent / "lua"

SCENARIOS = {
    # name: (connections, path, extra wrk arguments): the lab's (perf/lab.sh, scenario_def)
    "hello-c1": (1, "/", ()),
    "hello-c64": (64, "/", ()),
    "hello-c256": (256, "/", ()),
    "close-c64": (64, "/", ("-H", "Connection: close")),
    "pipeline16-c64": (64, "/", ("-s", str(LUA / "pipeline.lua"), "--", "16")),
    "64k-c64": (64, "/64k", ()),
    "post4k-c64": (64, "/post", ("-s", str(LUA / "post.lua"))),
    "chunked4k-c64": (64, "/post", ("-s", str(LUA / "chunked.lua"))),
}


def server_cpu(pid: int) -> float:
    return sum(harness.thread_cpu(pid).values())


def run_one(variant: dict, scenario: str, duration: int, app: str = "lab:app") -> dict:
    connections, path, extra = SCENARIOS[scenario]
    port = harness.free_port()
    cmd = ["taskset", "-c", "0", variant["bin"], "--bind", f"127.0.0.1:{port}", "--single-process",
           "--io-threads", "1", "--py-threads", "1", "--pythonpath", str(harness.APPS),
           "--log-level", "warn", *variant["flags"], app]
    env = dict(os.environ, **variant["env"])
    for name in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH"):
        env.pop(name, None)
    proc = subprocess.Popen(cmd, cwd=harness.ROOT, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
    try:
        harness.wait_ready(port, proc)
        url = f"http://127.0.0.1:{port}{path}"
        harness.wrk(url, 1, connections, cores="1", extra=extra)  # warm-up
        before = server_cpu(proc.pid)
        result = harness.wrk(url, duration, connections, cores="1", extra=extra)
        cpu = server_cpu(proc.pid) - before
    finally:
        harness.stop(proc)
    requests = result["rps"] * duration
    result["cpu_us"] = cpu / requests * 1e6 if requests else float("nan")
    if result["errors"]:
        sys.exit(f"error: {variant['name']} on {scenario}: {result['errors']} errors\n{result['raw']}")
    return result


def parse_variant(text: str) -> dict:
    parts = text.split(";") + ["", ""]
    name, binary, flags, env = parts[0], parts[1], parts[2], parts[3]
    if not name or not binary:
        sys.exit(f"error: --variant {text!r}: give 'NAME;BIN[;FLAGS[;ENV=VALUE ...]]'")
    if not Path(binary).exists():
        sys.exit(f"error: --variant {name}: no {binary}")
    return {"name": name, "bin": binary, "flags": flags.split(),
            "env": dict(kv.split("=", 1) for kv in env.split())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append", required=True, type=parse_variant)
    parser.add_argument("--scenarios", default="hello-c1,hello-c64,hello-c256,64k-c64")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--app", default="lab:app")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    for s in scenarios:
        if s not in SCENARIOS:
            sys.exit(f"error: unknown scenario {s} (known: {', '.join(SCENARIOS)})")

    runs: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for scenario in scenarios:
            for v in args.variant:
                res = run_one(v, scenario, args.duration, args.app)
                runs.setdefault((v["name"], scenario), []).append(res)
                print(f"round {r + 1} {scenario:11s} {v['name']:16s} {res['rps']:9.0f} req/s "
                      f"{res['cpu_us']:6.2f} µs/req  p99 {res['p99']:.2f} ms", file=sys.stderr)

    def med(name: str, scenario: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[(name, scenario)])

    base = args.variant[0]["name"]
    host = socket.gethostname()
    lines = [
        "# Side by side (perf/ab.py)",
        "",
        f"- {datetime.datetime.now().isoformat(timespec='seconds')}, {host}, {os.cpu_count()} cores; "
        f"{args.rounds} interleaved rounds of {args.duration} s, medians; server on core 0, wrk on core 1; "
        f"app `{args.app}`",
        "- variants: " + "; ".join(f"`{v['name']}`: `{v['bin']} {' '.join(v['flags'])}`"
                                   + (f" with {' '.join(f'{k}={x}' for k, x in v['env'].items())}" if v["env"] else "")
                                   for v in args.variant),
        "",
        "| scenario | variant | req/s | vs " + base + " | CPU µs/req | vs " + base + " | p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for scenario in scenarios:
        b_rps, b_cpu = med(base, scenario, "rps"), med(base, scenario, "cpu_us")
        for v in args.variant:
            rps, cpu, p99 = (med(v["name"], scenario, k) for k in ("rps", "cpu_us", "p99"))
            lines.append(f"| {scenario} | {v['name']} | {rps:.0f} | {rps / b_rps:.3f}x | {cpu:.2f} | "
                         f"{cpu / b_cpu:.3f}x | {p99:.2f} |")
    cmd = "python perf/ab.py " + " ".join(
        f"--variant '{v['name']};{v['bin']};{' '.join(v['flags'])}" + (f";{' '.join(f'{k}={x}' for k, x in v['env'].items())}" if v["env"] else "") + "'"
        for v in args.variant) + f" --scenarios {args.scenarios} --rounds {args.rounds} --duration {args.duration}" \
        + (f" --app {args.app}" if args.app != "lab:app" else "")
    lines += ["", f"Command: `{cmd}`", ""]
    text = "\n".join(lines)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
