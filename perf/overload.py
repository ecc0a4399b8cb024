#!/usr/bin/env python3
"""Overload soak (issue 14, "What it must show"): many keep-alive clients against a 5 ms
app (tests/apps/overload_app.py, /sleep?ms=5), with Spindle's defaults and with too few
Python threads for the load (--threads 2). Measures what admission control promises
(ARCHITECTURE.md §4, "Admission control"):

- req/s of admitted requests (200), their p50 and p99 latency;
- the 503s (each must carry Retry-After), errors and client time-outs;
- the longest any client waited for an answer (must stay near --max-queue-wait);
- the server's RSS at the start, its peak and at the end (sampled every 0.25 s);
- the latency of one request on a fresh connection 2 s after the load ends.

Each client is a coroutine with one keep-alive connection (a new one after a 503, which
closes); the clients are spread over a few processes (asyncio in each), with
RLIMIT_NOFILE raised for their sockets. Everything goes to 127.0.0.1.

Usage: perf/overload.py [--clients 1500] [--seconds 15] [--processes 2]
                        [--config defaults|threads2|all] [--args 'SERVER ARGS']
                        [--client-timeout 30] [--out DIR [--out-name overload]]
The server is the `spindle` next to this Python (SPINDLE_BIN overrides), run with
--single-process so the RSS measured is the serving process's. Prints a table, and with
--out writes overload.json and overload.md there. tests/integration/test_overload.py
runs a short version of the same load (`run_load`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "tests" / "apps"
READY = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")
# A client gives up on one answer after this long (counted as a time-out): far above any
# --max-queue-wait we test, so a server that breaks its limit shows up as waits, not as
# time-outs.
CLIENT_TIMEOUT = 30.0


def raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(max(soft, n), hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def _one_request(reader, writer, request: bytes):
    """(status, retry_after, closes) of one response on the connection."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            fields[name.strip().lower()] = value.strip()
    length = int(fields.get("content-length", "0"))
    if length:
        await reader.readexactly(length)
    closes = fields.get("connection", "").lower() == "close"
    return status, "retry-after" in fields, closes


async def _client(port: int, request: bytes, deadline: float, out: list, timeout: float) -> None:
    reader = writer = None
    while time.monotonic() < deadline:
        began = time.monotonic()
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), timeout)
            status, retry_after, closes = await asyncio.wait_for(
                _one_request(reader, writer, request), timeout - (time.monotonic() - began))
        except asyncio.TimeoutError:
            out.append(("timeout", time.monotonic() - began, False, began))
            status, closes = None, True
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            out.append(("error:" + type(exc).__name__, time.monotonic() - began, False, began))
            status, closes = None, True
        else:
            out.append((status, time.monotonic() - began, retry_after, began))
        if closes and writer is not None:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


def _client_process(port: int, n: int, request: bytes, start_at: float, seconds: float, timeout: float,
                    conn) -> None:
    raise_nofile(n + 64)

    async def main():
        # Every process starts its clients at the same moment.
        await asyncio.sleep(max(0.0, start_at - time.time()))
        deadline = time.monotonic() + seconds
        out: list = []
        await asyncio.gather(*(_client(port, request, deadline, out, timeout) for _ in range(n)))
        return out

    results = asyncio.run(main())
    # (status, latency, retry_after, began) with `began` made relative to the start.
    conn.send(results)
    conn.close()


def run_load(port: int, clients: int, seconds: float, path: str = "/sleep?ms=5",
             processes: int = 2, timeout: float = CLIENT_TIMEOUT) -> list:
    """`clients` keep-alive clients for `seconds` against `path`; every answer as
    (status or "timeout"/"error:...", latency s, has Retry-After, start time). A client
    that waited `timeout` for an answer closes its connection and opens another."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    # spawn, not fork: the caller may have threads (pytest, the RSS sampler).
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 1.0
    procs = []
    per = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    for n in per:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_client_process, args=(port, n, request, start_at, seconds, timeout, child))
        proc.start()
        child.close()
        procs.append((proc, parent))
    results = []
    for proc, parent in procs:
        if parent.poll(seconds + timeout + 30):
            results.extend(parent.recv())
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return results


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    """Samples a process's RSS every `every` seconds in a thread."""

    def __init__(self, pid: int, every: float = 0.25):
        self.pid, self.every, self.samples = pid, every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), rss_mib(self.pid)))
            except OSError:
                return
            self._stop.wait(self.every)

    def stop(self) -> list:
        self._stop.set()
        self._thread.join()
        return self.samples


def one_request_latency(port: int, path: str = "/sleep?ms=5", timeout: float = 30.0):
    """(status, seconds) of one request on a fresh connection."""
    import socket
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
    return status, time.monotonic() - began


def percentile(values: list, p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def summarize(results: list, seconds: float) -> dict:
    ok = [lat for status, lat, _, _ in results if status == 200]
    shed = [(lat, ra) for status, lat, ra, _ in results if status == 503]
    other = {}
    for status, _, _, _ in results:
        if status not in (200, 503):
            other[str(status)] = other.get(str(status), 0) + 1
    return {
        "answers": len(results),
        "ok": len(ok),
        "req_per_s": round(len(ok) / seconds, 1),
        "p50_ms": round(percentile(ok, 50) * 1000, 1),
        "p99_ms": round(percentile(ok, 99) * 1000, 1),
        "shed_503": len(shed),
        "shed_503_without_retry_after": sum(1 for _, ra in shed if not ra),
        "shed_max_wait_s": round(max((lat for lat, _ in shed), default=0.0), 3),
        "other": other,
        "max_wait_s": round(max((lat for _, lat, _, _ in results), default=0.0), 3),
    }


def spindle_bin() -> str:
    return os.environ.get("SPINDLE_BIN") or str(Path(sys.prefix) / "bin" / "spindle")


def start_server(extra: list) -> tuple:
    """A single-process Spindle on a free port, ready: (proc, port, log lines)."""
    cmd = [spindle_bin(), "--bind", "127.0.0.1:0", "--single-process", "--pythonpath", str(APPS),
           *extra, "overload_app:app"]
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    lines: list = []
    port_box: list = []
    ready = threading.Event()

    def drain():
        for raw in iter(proc.stdout.readline, b""):
            lines.append(raw.decode("utf-8", "replace").rstrip())
            m = READY.search(raw)
            if m and not port_box:
                port_box.append(int(m.group(1)))
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(30) or not port_box:
        proc.kill()
        raise RuntimeError("spindle did not start:\n" + "\n".join(lines[-20:]))
    return proc, port_box[0], lines


def stop_server(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def shed_totals(lines: list) -> dict:
    """The server's shed summary lines, added up."""
    totals = {"queue_wait": 0, "client_gone": 0, "connections": 0}
    for line in lines:
        m = re.search(r"\(queue wait (\d+), client gone (\d+), connections (\d+)\)", line)
        if m:
            for key, value in zip(totals, m.groups()):
                totals[key] += int(value)
    return totals


def soak(name: str, extra: list, clients: int, seconds: float, processes: int,
         timeout: float = CLIENT_TIMEOUT) -> dict:
    proc, port, lines = start_server(extra)
    try:
        # Warm the connection path and the app once, then the RSS at rest.
        one_request_latency(port)
        rss_start = rss_mib(proc.pid)
        sampler = RssSampler(proc.pid)
        began = time.monotonic()
        results = run_load(port, clients, seconds, processes=processes, timeout=timeout)
        load_end = time.monotonic()
        # The clients start together about 1 s after run_load is called.
        load_start = load_end - seconds
        time.sleep(2.0)  # the must-show's "a request 2 s after the load ends"
        after_status, after_s = one_request_latency(port)
        samples = sampler.stop()
        rss_end = rss_mib(proc.pid)
        summary = summarize(results, seconds)
        summary.update({
            "config": name,
            "client_timeout_s": timeout,
            "server_shed": shed_totals(lines),
            "args": " ".join(extra) or "(defaults)",
            "clients": clients,
            "seconds": seconds,
            "wall_s": round(load_end - began, 1),
            "rss_start_mib": round(rss_start, 1),
            "rss_peak_mib": round(max((r for _, r in samples), default=rss_start), 1),
            # Flat means the second half of the load needs no more than the first.
            "rss_first_half_peak_mib": round(max(
                (r for t, r in samples if load_start <= t < load_start + seconds / 2), default=0.0), 1),
            "rss_second_half_peak_mib": round(max(
                (r for t, r in samples if load_start + seconds / 2 <= t <= load_end), default=0.0), 1),
            "rss_end_mib": round(rss_end, 1),
            "after_load_status": after_status,
            "after_load_ms": round(after_s * 1000, 1),
            "shed_log_lines": [line for line in lines if "shed " in line and "requests in the last" in line][-3:],
        })
        return summary
    finally:
        stop_server(proc)


CONFIGS = {
    "defaults": [],
    "threads2": ["--threads", "2"],
}


def table(rows: list) -> str:
    cols = ["config", "req_per_s", "p50_ms", "p99_ms", "shed_503", "shed_503_without_retry_after",
            "other", "max_wait_s", "server_shed", "rss_start_mib", "rss_first_half_peak_mib", "rss_second_half_peak_mib",
            "rss_end_mib", "after_load_status",
            "after_load_ms"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1500)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--config", default="all", choices=["all", *CONFIGS])
    ap.add_argument("--args", help="run one custom configuration with these server arguments")
    ap.add_argument("--client-timeout", type=float, default=CLIENT_TIMEOUT,
                    help="a client gives up on an answer after this long and reconnects")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--out-name", default="overload", help="file names under --out (NAME.json, NAME.md)")
    args = ap.parse_args()
    raise_nofile(args.clients + 256)
    if args.args is not None:
        CONFIGS["custom"] = args.args.split()
        args.config = "custom"
    names = list(CONFIGS) if args.config == "all" else [args.config]
    rows = []
    for name in names:
        row = soak(name, CONFIGS[name], args.clients, args.seconds, args.processes, args.client_timeout)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(table(rows))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.out_name}.json").write_text(json.dumps(rows, indent=2) + "\n")
        logs = "\n".join(f"- {r['config']}: " + "; ".join(r["shed_log_lines"]) for r in rows)
        (args.out / f"{args.out_name}.md").write_text(
            f"# Overload soak\n\n{time.strftime('%Y-%m-%d %H:%M %Z')}, `{' '.join(sys.argv)}` "
            f"({spindle_bin()}, Python {sys.version.split()[0]}); latencies are the clients' "
            f"(connect included for a new connection), p50/p99 over admitted (200) requests.\n\n"
            f"{table(rows)}\n\nThe last shed summaries each server logged:\n\n{logs}\n")


if __name__ == "__main__":
    main()
