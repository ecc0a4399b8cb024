"""Slow readers (issue 14): N clients each ask for a 1 MiB streamed response (a generator
of 64 KiB pieces, perf/apps/stream.py) and read nothing. Reports the server's RSS before,
at its peak while they hold on, and after they close; and meanwhile the latency of normal
requests (hello, each on a new connection, four a second). Every server runs with its
defaults (--single-process so the one process is the server; the pool of Python threads
grows on demand), epoll, one after the other on this machine.

Usage: python perf/slow_readers.py [--clients 300] [--hold 6] [--chunks 16] [--spindle BIN ...]
                                   [--label NAME ...] [--extra "ARGS"] [--out FILE]

Several --spindle give a before/after in one run (main's build, then this one's); without
one, this checkout's wheel (perf/harness.py). --extra adds flags to every server (say
"--max-response-buffer 16").
"""

from __future__ import annotations

import argparse
import shlex
import socket
import statistics
import time
from pathlib import Path

import harness


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise KeyError("VmRSS")


def hello_ms(port: int) -> float:
    """One normal request on a new connection: milliseconds to its whole answer."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            got = s.recv(65536)
            if not got:
                break
            data += got
    if not data.startswith(b"HTTP/1.1 200") or not data.endswith(b"Hello, World!"):
        raise RuntimeError(f"bad answer: {data[:200]!r}")
    return (time.monotonic() - started) * 1000


def run(spindle: str, clients: int, hold: float, extra: list[str], chunks: int = 16) -> dict:
    port = harness.free_port()
    cmd = [spindle, "--bind", f"127.0.0.1:{port}", "--single-process", "--driver", "epoll",
           "--pythonpath", str(harness.APPS), "--log-level", "warn", *extra, "stream:app"]
    proc = harness.start(cmd)
    socks: list[socket.socket] = []
    try:
        harness.wait_ready(port, proc)
        for _ in range(20):  # warm-up: a few whole streams and hellos
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                while s.recv(1 << 20):
                    pass
            hello_ms(port)
        before = rss_mib(proc.pid)
        for _ in range(clients):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /stream?chunks=%d HTTP/1.1\r\nHost: x\r\n\r\n" % chunks)
            socks.append(s)
        peak, latencies, failures, threads = before, [], 0, 0
        end = time.monotonic() + hold
        while time.monotonic() < end:
            peak = max(peak, rss_mib(proc.pid))
            try:
                latencies.append(hello_ms(port))
            except (OSError, RuntimeError):
                failures += 1
            peak = max(peak, rss_mib(proc.pid))
            threads = max(threads, harness.tree_threads(proc.pid))
            time.sleep(0.25)
        for s in socks:
            s.close()
        socks.clear()
        time.sleep(2)  # the server notices the closes (its writes fail) and lets go
        hello_ms(port)
        after = rss_mib(proc.pid)
    finally:
        for s in socks:
            s.close()
        harness.stop(proc)
    return {
        "before": before, "peak": peak, "after": after, "failures": failures,
        "lat_median": statistics.median(latencies) if latencies else float("nan"),
        "lat_max": max(latencies) if latencies else float("nan"), "answered": len(latencies),
        "threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--hold", type=float, default=6.0)
    parser.add_argument("--chunks", type=int, default=16, help="64 KiB pieces per response")
    parser.add_argument("--spindle", action="append")
    parser.add_argument("--label", action="append")
    parser.add_argument("--extra", default="")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    binaries = args.spindle or [harness.spindle_bin()]
    labels = args.label or [Path(b).parent.parent.name for b in binaries]
    lines = [
        "# Slow readers (perf/slow_readers.py)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {args.clients} clients each ask for a "
        f"{args.chunks * 64 // 1024 if args.chunks >= 16 else args.chunks * 64} {'MiB' if args.chunks >= 16 else 'KiB'} "
        f"streamed response ({args.chunks} pieces of 64 KiB from a generator) and read nothing for {args.hold} s, then close; "
        f"meanwhile a hello on a new connection every 0.25 s. Spindle --single-process, defaults"
        + (f", {args.extra}" if args.extra else "") + ".",
        "",
        "| server | RSS before MiB | peak MiB | peak - before | after close MiB | after - before "
        "| hellos answered | failed | hello median ms | hello max ms | threads (all) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, spindle in zip(labels, binaries):
        r = run(spindle, args.clients, args.hold, shlex.split(args.extra), args.chunks)
        line = (f"| {label} | {r['before']:.1f} | {r['peak']:.1f} | +{r['peak'] - r['before']:.1f} | "
                f"{r['after']:.1f} | {r['after'] - r['before']:+.1f} | {r['answered']} | {r['failures']} | "
                f"{r['lat_median']:.1f} | {r['lat_max']:.1f} | {r['threads']} |")
        print(line, flush=True)
        lines.append(line)
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
