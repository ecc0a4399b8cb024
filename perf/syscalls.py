#!/usr/bin/env python3
"""System calls per request: Spindle (epoll and io_uring) beside bjoern and nginx `return
200`, on hello at 1 and at 64 keep-alive connections.

Where a request's CPU goes at one connection is mostly system calls and the context
switches they cause, and their counts, unlike timings, do not depend on what else the
machine is doing: this is the profile of hello-c1 that can be compared across runs on a
shared machine. For each server and connection count: start it on core 0 (as the lab
does), `strace -f -c` attached to every thread of it, `wrk -t1` on core 1 for
`--duration` s, then strace's totals divided by the requests wrk completed. Before that, one run without strace
counts the context switches of every thread per request (/proc/PID/task/*/status). strace slows
every call down, so the req/s under it mean nothing and are not shown; the counts are
what the server does per request. io_uring's submissions appear as `io_uring_enter`
(one call can submit and reap many operations).

Usage: perf/syscalls.py [--duration 3] [--connections 1,64] [--servers spindle-epoll,...]
Writes RUN_DIR/syscalls.md (default perf/runs/<date>-<host>/) and prints it. All traffic
goes to 127.0.0.1; servers are stopped by PID.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import APPS, ROOT, free_port, peer, spindle_bin, start, stop, tree_pids, venv, wait_ready

SERVER_CORE, CLIENT_CORE = "0", "1"
SERVERS = ["spindle-epoll", "spindle-uring", "bjoern", "nginx"]

NGINX_CONF = """daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    tcp_nodelay on;
    keepalive_requests 10000000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        default_type text/plain;
        location = / {{ return 200 "Hello, World!"; }}
    }}
}}
"""


def command(server: str, port: int, scratch: Path, spindle: str) -> list[str] | None:
    pin = ["taskset", "-c", SERVER_CORE]
    if server.startswith("spindle"):
        driver = "io-uring" if server == "spindle-uring" else "epoll"
        return [*pin, spindle, "--bind", f"127.0.0.1:{port}", "--single-process",
                "--io-threads", "1", "--py-threads", "1", "--driver", driver,
                "--pythonpath", str(APPS), "lab:app"]
    if server == "bjoern":
        if peer("bjoern") is None:
            return None
        return [*pin, str(venv() / "bin" / "python"), str(APPS / "bjoern_run.py"), "127.0.0.1", str(port)]
    if server == "nginx":
        if shutil.which("nginx") is None:
            return None
        (scratch / "nginx.conf").write_text(NGINX_CONF.format(dir=scratch, port=port))
        return [*pin, "nginx", "-p", f"{scratch}/", "-c", str(scratch / "nginx.conf"), "-e",
                str(scratch / "error.log")]
    raise ValueError(server)


def strace_totals(path: Path) -> dict[str, int]:
    """`strace -c`'s table: calls per system call."""
    calls = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            try:
                calls[fields[-1]] = int(fields[3])
            except ValueError:
                continue
    return calls


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of every thread of `pid` and its children."""
    total = 0
    for p in tree_pids(pid):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                status = Path(f"/proc/{p}/task/{task}/status").read_text()
            except OSError:
                continue
            total += sum(int(n) for n in re.findall(r"^(?:non)?voluntary_ctxt_switches:\s+(\d+)", status, re.M))
    return total


def wrk_requests(port: int, connections: int, duration: int) -> int | str:
    run = subprocess.run(["taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{connections}",
                          f"-d{duration}s", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, timeout=duration + 30)
    match = re.search(r"(\d+) requests in", run.stdout)
    return int(match.group(1)) if match else f"wrk failed: {run.stdout[-300:]} {run.stderr[-300:]}"


def measure(server: str, connections: int, duration: int, spindle: str) -> tuple[dict[str, int], int] | str:
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        port = free_port()
        cmd = command(server, port, scratch, spindle)
        if cmd is None:
            return "not installed"
        proc = start(cmd, cwd=APPS)
        try:
            wait_ready(port, proc)
            # First without strace: context switches per request (ptrace would add its own).
            before = context_switches(proc.pid)
            requests = wrk_requests(port, connections, duration)
            if isinstance(requests, str):
                return requests
            switches = (context_switches(proc.pid) - before) / requests
            out = scratch / "strace.txt"
            tracer = subprocess.Popen(["strace", "-f", "-c", "-o", str(out), "-p", str(proc.pid)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # strace attaches to every thread before the load starts
            requests = wrk_requests(port, connections, duration)
            tracer.send_signal(2)
            tracer.wait(30)
            if isinstance(requests, str):
                return requests
            calls = strace_totals(out)
            calls["(context switches, without strace)"] = round(switches * requests)
            return calls, requests
        finally:
            stop(proc, 2 if server == "nginx" else 15)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--connections", default="1,64")
    parser.add_argument("--servers", default=",".join(SERVERS))
    args = parser.parse_args()
    for tool in ("strace", "wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"perf/syscalls.py needs {tool}")
    run_dir = Path(os.environ.get("RUN_DIR") or ROOT / "perf" / "runs" /
                   f"{datetime.date.today()}-{socket.gethostname()}")
    run_dir.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    lines = [
        "# System calls per request (perf/syscalls.py)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, commit {commit}. hello (`perf/apps/lab.py`, or nginx "
        f"`return 200`), keep-alive, server on core {SERVER_CORE} (Spindle `--single-process --io-threads 1 "
        f"--py-threads 1`), `strace -f -c` on every thread, wrk -t1 on core {CLIENT_CORE} for "
        f"{args.duration} s; calls divided by the requests wrk completed.",
        "",
    ]
    spindle = spindle_bin()
    for connections in [int(c) for c in args.connections.split(",")]:
        results = {}
        for server in args.servers.split(","):
            results[server] = measure(server, connections, args.duration, spindle)
            print(f"c{connections} {server}: done", flush=True)
        names = sorted({n for r in results.values() if not isinstance(r, str) for n in r[0]},
                       key=lambda n: -max((r[0].get(n, 0) / r[1]) for r in results.values()
                                          if not isinstance(r, str)))
        lines += [f"## {connections} connection{'s' if connections > 1 else ''}", "",
                  "| system call | " + " | ".join(results) + " |",
                  "|---|" + "---:|" * len(results)]
        for name in names:
            row = []
            for r in results.values():
                row.append("—" if isinstance(r, str) else f"{r[0].get(name, 0) / r[1]:.2f}")
            if any(cell not in ("—", "0.00") for cell in row):
                shown = name if name.startswith("(") else f"`{name}`"
                lines.append(f"| {shown} | " + " | ".join(row) + " |")
        totals = ["—" if isinstance(r, str) else
                  f"**{sum(v for k, v in r[0].items() if not k.startswith('(')) / r[1]:.2f}**"
                  for r in results.values()]
        lines.append("| all system calls | " + " | ".join(totals) + " |")
        notes = [f"{s}: {r}" for s, r in results.items() if isinstance(r, str)]
        lines += [""] + ([f"Not measured: {'; '.join(notes)}.", ""] if notes else [])
    report = "\n".join(lines)
    (run_dir / "syscalls.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
