"""What the Python benchmark scripts of perf/ share (subinterp.py, wait.py, django_rss.py):
the Spindle to measure and the peers, installed in one venv; servers started, waited for
and stopped by PID; process trees' CPU and peak RSS from /proc; wrk and h2load runs parsed.

Every server runs this checkout's code on the same Python, from build/perf-venv-<X.Y>
(shared with lab.sh): Spindle is built as a wheel (scripts/wheel.sh) and installed there,
unless SPINDLE_BIN names another `spindle` command. All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

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


def _python() -> tuple[str, str]:
    """The Python every server runs on, and its X.Y."""
    py = os.environ.get("SPINDLE_PYTHON") or subprocess.run(
        [str(ROOT / "scripts/find-python.sh"), "--any"], capture_output=True, text=True, check=True
    ).stdout.strip()
    ver = subprocess.run([py, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return py, ver


def venv() -> Path:
    """build/perf-venv-<X.Y>, made when missing."""
    py, ver = _python()
    path = ROOT / "build" / f"perf-venv-{ver}"
    if not (path / "bin" / "python").exists():
        subprocess.run([py, "-m", "venv", str(path)], check=True)
    return path


def spindle_bin() -> str:
    """SPINDLE_BIN, else this checkout's wheel installed into the perf venv."""
    if os.environ.get("SPINDLE_BIN"):
        # Absolute: some servers are started from another working directory.
        return os.path.abspath(os.environ["SPINDLE_BIN"])
    py, _ = _python()
    env = venv()
    wheel = subprocess.run([str(ROOT / "scripts/wheel.sh"), py], capture_output=True, text=True,
                           check=True).stdout.strip()
    subprocess.run([str(env / "bin/python"), "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps",
                    wheel], check=True)
    return str(env / "bin" / "spindle")


def server_python(spindle: str) -> str:
    """X.Y of the Python a `spindle` command runs on."""
    out = subprocess.run([spindle, "--version"], capture_output=True, text=True, check=True).stdout
    return re.search(r"Python (\d+\.\d+)", out).group(1)


def peer(dist: str, command: str | None = None) -> str | None:
    """The path of a peer's command in the perf venv, installing `dist` when missing;
    None when it cannot be installed (its rows then say so)."""
    env = venv()
    exe = env / "bin" / (command or dist)
    if not exe.exists():
        done = subprocess.run([str(env / "bin/python"), "-m", "pip", "install", "-q", dist],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"pip install {dist} failed: {done.stderr[-500:]}", file=sys.stderr)
            return None
    return str(exe)


def dist_version(dist: str) -> str:
    out = subprocess.run([str(venv() / "bin/python"), "-c",
                          "import importlib.metadata, sys; print(importlib.metadata.version(sys.argv[1]))", dist],
                         capture_output=True, text=True)
    return out.stdout.strip() or "?"


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


def reset_peak_rss(pid: int) -> None:
    """Starts VmHWM over at the current RSS for the whole tree (clear_refs 5)."""
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def peak_rss_mib(pid: int) -> float:
    """The sum of VmHWM over the process tree, in MiB."""
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


def pss_mib(pid: int) -> float:
    """The sum of Pss over the process tree now, in MiB: pages shared between processes
    (a forked worker's copy-on-write pages) count once in all, where summed RSS counts
    them in every process."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of every thread in the process tree, grouped: Spindle's Python
    threads (spindle-py), its I/O threads (spindle-io-N), everything else."""
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


def tree_threads(pid: int) -> int:
    return sum(len(glob.glob(f"/proc/{p}/task/*")) for p in tree_pids(pid))


def log_tail(log: Path, n: int = 300) -> str:
    """The last `n` characters of a server's log file, on one line (for a failure's reason)."""
    try:
        return log.read_text(errors="replace")[-n:].replace("\n", " ").strip()
    except OSError:
        return ""


def start(cmd: list[str], cwd: Path = ROOT) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(port: int, proc: subprocess.Popen, path: str = "/", timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server not ready in time")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stops a server this script started, by PID; SIGKILL after 15 s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            for p in reversed(tree_pids(proc.pid)):
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            proc.wait()


def _ms(value: str) -> float:
    number = float(re.match(r"[\d.]+", value).group(0))
    if value.endswith("us"):
        return number / 1000
    if value.endswith("ms"):
        return number
    if value.endswith("m"):
        return number * 60000
    if value.endswith("s"):
        return number * 1000
    return number


def wrk(url: str, duration: int, connections: int, threads: int = 1, timeout: str = "5s",
        cores: str | None = None, extra: tuple[str, ...] = ()) -> dict:
    """One bounded wrk run: req/s, p50/p99 (ms), errors (socket errors and non-2xx).
    `extra`: more wrk arguments (a header, a Lua script and its arguments), after the URL."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", timeout, url,
           *extra]
    if cores:
        cmd = ["taskset", "-c", cores, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "raw": out}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        result[f"p{pct}"] = _ms(m.group(1)) if m else float("nan")
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
        result["timeouts"] = int(m.group(4))
    else:
        result["timeouts"] = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    result["errors"] = errors
    return result


def fixed_rate(url: str, rate: int, duration: int) -> dict:
    """A fixed request rate: `rate` new connections a second for `duration` seconds, one
    request each (h2load --h1 -r), so a server that closes after every response (gunicorn's
    sync workers) and one that keeps connections open get the same load. Returns req/s
    over the run, requests done and succeeded, mean and max latency (ms)."""
    n = rate * duration
    # Every 10 ms a hundredth of the rate, not the whole second's connections in one burst.
    cmd = ["h2load", "--h1", "-r", str(max(1, rate // 100)), "--rate-period", "10ms", "-c", str(n), "-n", str(n),
           url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    req_s = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    return {
        "rps": float(req_s.group(1)) if req_s else float("nan"),
        "succeeded": int(done.group(2)) if done else 0,
        "done": int(done.group(1)) if done else 0,
        "mean_ms": _ms(lat.group(3)) if lat else float("nan"),
        "max_ms": _ms(lat.group(2)) if lat else float("nan"),
        "raw": out,
    }
