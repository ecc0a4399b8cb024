#!/usr/bin/env python3
"""Interpreter scaling, side by side in one run: does Python run on every core?

For a CPU-bound app (perf/apps/cpu.py, ~200 µs of pure Python per request) and the hello
app, measures req/s and peak RSS of:
  Spindle's defaults with 1 and with 2 own-GIL sub-interpreters (PEP 684): threads start at
    one per interpreter and grow while requests wait and the interpreter's GIL is free
  Spindle --interpreters sub --threads 1 and 2 (fixed: one thread per interpreter)
  Spindle --interpreters main, threads on demand, and --threads 2 (threads sharing one GIL)
  gunicorn -w 2 (sync workers: one process per core, the usual way to use 2 cores)
Every server gets one I/O thread / no pinning: the point is how Python spreads over the
2 cores; wrk (1 thread) needs little CPU at these rates. The goal: the defaults with 2
sub-interpreters >= 1.8x the defaults with 1 on the CPU-bound app.

Usage: perf/subinterp.py [--duration 10] [--connections 16]
  SPINDLE_BIN (default: this checkout's wheel, installed into build/perf-venv-X.Y), GUNICORN (default: from
  build/perf-venv-<ver>/bin/gunicorn, installed with pip when missing).
Writes perf/runs/<date>-<host>/subinterp.md and prints it.
"""

import argparse
import datetime
import glob
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "perf" / "apps"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spindle_bin() -> str:
    """SPINDLE_BIN, else this checkout's wheel for the newest Python found, installed into
    build/perf-venv-<X.Y> (shared with lab.sh)."""
    if os.environ.get("SPINDLE_BIN"):
        return os.environ["SPINDLE_BIN"]
    py = subprocess.run([str(ROOT / "scripts/find-python.sh"), "--any"], capture_output=True, text=True,
                        check=True).stdout.strip()
    pyver = subprocess.run([py, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    venv = ROOT / "build" / f"perf-venv-{pyver}"
    if not (venv / "bin" / "python").exists():
        subprocess.run([py, "-m", "venv", str(venv)], check=True)
    wheel = subprocess.run([str(ROOT / "scripts/wheel.sh"), py], capture_output=True, text=True,
                           check=True).stdout.strip()
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", wheel],
                   check=True)
    return str(venv / "bin" / "spindle")


def embedded_python(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    return re.search(r"Python (\d+\.\d+)", out).group(1)


def gunicorn_bin(pyver: str) -> str:
    if os.environ.get("GUNICORN"):
        return os.environ["GUNICORN"]
    venv = ROOT / "build" / f"perf-venv-{pyver}"
    exe = venv / "bin" / "gunicorn"
    if not exe.exists():
        py = subprocess.run([str(ROOT / "scripts/find-python.sh"), "--any"], capture_output=True, text=True).stdout.strip()
        subprocess.run([py, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", "gunicorn"], check=True)
    return str(exe)


def tree_pids(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return pids


def peak_rss_mib(pid: int) -> float:
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of every thread in the process tree, grouped by thread name:
    Spindle names its threads spindle-py and spindle-io-N."""
    tick = os.sysconf("SC_CLK_TCK")
    groups: dict[str, float] = {}
    for p in tree_pids(pid):
        for task in glob.glob(f"/proc/{p}/task/*"):
            try:
                with open(f"{task}/comm") as f:
                    name = f.read().strip()
                with open(f"{task}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            group = "python" if name.startswith("spindle-py") else "io" if name.startswith("spindle-io") else "other"
            groups[group] = groups.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return groups


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server not ready in time")


def wrk(port: int, duration: int, connections: int) -> float:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=duration + 30,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        print(out, file=sys.stderr)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(name: str, cmd: list[str], port: int, args) -> tuple[float, float, float]:
    """req/s, peak RSS (MiB) and the cores the server's Python threads kept busy (for
    Spindle; for gunicorn the whole process tree)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(port, proc)
        wrk(port, 2, args.connections)  # warm-up
        before, t0 = thread_cpu(proc.pid), time.monotonic()
        rps = wrk(port, args.duration, args.connections)
        after, elapsed = thread_cpu(proc.pid), time.monotonic() - t0
        rss = peak_rss_mib(proc.pid)
    finally:
        stop(proc)
    group = "python" if "python" in after else "other"
    cores = (after.get(group, 0.0) - before.get(group, 0.0)) / elapsed
    print(f"  {name:32s} {rps:10.0f} req/s  {rss:7.1f} MiB  {cores:4.2f} Python cores", file=sys.stderr)
    return rps, rss, cores


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
    args = parser.parse_args()
    binary = spindle_bin()
    pyver = embedded_python(binary)
    gunicorn = gunicorn_bin(pyver)

    sys.path.insert(0, str(APPS))
    import cpu  # noqa: E402  (the app module, to time one call here)

    t0 = time.perf_counter()
    for _ in range(200):
        cpu.work()
    call_us = (time.perf_counter() - t0) / 200 * 1e6

    rows = []
    for app in ("cpu:app", "hello:app"):
        print(f"{app}:", file=sys.stderr)
        results = {}
        for name, flags in CONFIGS:
            port = free_port()
            cmd = [binary, "--bind", f"127.0.0.1:{port}", "--io-threads", "1", *flags,
                   "--pythonpath", str(APPS), "--log-level", "warn", app]
            results[name] = measure(name, cmd, port, args)
        port = free_port()
        cmd = [gunicorn, "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{port}", "--chdir", str(APPS),
               "--log-level", "warning", app]
        results["gunicorn -w 2 (sync)"] = measure("gunicorn -w 2 (sync)", cmd, port, args)
        base = results[CONFIGS[0][0]][0]
        for name, (rps, rss, cores) in results.items():
            rows.append((app, name, rps, rps / base, rss, cores))

    host = socket.gethostname()
    out_dir = ROOT / "perf" / "runs" / f"{datetime.date.today()}-{host}"
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Interpreter scaling (perf/subinterp.py)",
        "",
        f"- {datetime.datetime.now().isoformat(timespec='seconds')}, {host}, {os.cpu_count()} cores, "
        f"Spindle {binary} (Python {pyver}), wrk -t1 -c{args.connections} -d{args.duration}s",
        f"- cpu:app does {cpu.ITERATIONS} loop iterations: {call_us:.0f} µs per call here "
        f"(so one core tops out near {1e6 / call_us:.0f} req/s)",
        f"- ratio: req/s relative to `{CONFIGS[0][0]}` on the same app",
        "- Python cores: CPU time of Spindle's Python threads per second of the run (gunicorn: all",
        "  its processes); the I/O thread and wrk share the same 2 cores, so 2 is out of reach",
        "",
        "| app | server | req/s | ratio | Python cores | peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {a} | {n} | {r:.0f} | {x:.2f} | {c:.2f} | {m:.1f} |" for a, n, r, x, m, c in rows]
    lines += ["", f"Command: `perf/subinterp.py --duration {args.duration} --connections {args.connections}`", ""]
    (out_dir / "subinterp.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
