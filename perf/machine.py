#!/usr/bin/env python3
"""The whole machine (issue 13): Spindle's 2-core shape against its peers' 2-process
shapes, on the hello app and on the CPU-bound app, one run, Spindle first.

Each server uses both cores its usual way, stated on the command line:
  spindle -w 1 --io-threads 2 --sub-interpreters 2
      the defaults on 2 cores, spelled out: one worker process under the supervisor (the
      shape `spindle app` runs; the supervisor is counted, as gunicorn's arbiter and
      Granian's and uWSGI's main processes are), 2 I/O threads, 2 own-GIL sub-interpreters
      (--interpreters sub), Python threads on demand
  granian --interface wsgi --workers 2 --http 1   its default blocking threads (per worker)
  gunicorn -w 2 (sync)                             one process per core, the usual pre-fork setup
  gunicorn -k gthread -w 2 --threads 4
  bjoern x2                                        two bjoern processes on one port, each its own
      SO_REUSEPORT socket (perf/apps/bjoern_reuseport.py), started here, counted as one server
  uwsgi --master --processes 2                     HTTP/1.1 socket, no router, no request log
and, when asked for (--servers ...,spindle-single), Spindle's shape without the supervisor:
  spindle --single-process --io-threads 2 --sub-interpreters 2
or with the app on its I/O threads (--servers ...,spindle-inline):
  spindle -w 1 --io-threads 2 --sub-interpreters 2 --inline

For each app (cpu:app, ~200 µs of pure Python per request; hello:app) and server: wrk -t1
-c16 (1 s warm-up, then --duration s measured), no pinning: req/s, its ratio to Spindle's,
peak RSS summed over every process of the server (VmHWM, reset after the warm-up), PSS of
those processes just after the run (shared pages counted once), the cores they kept busy
(and each process's share), server CPU per request, and the cores wrk and everything else
took. Before it is measured, each server must answer 20 requests, each on a new connection,
with 200 and the app's exact body; a server that does not is reported with the reason and
not measured.

Servers are interleaved: each round runs every server once, the order rotating by one each
round, so a neighbour's load that comes and goes hits all of them alike; each figure is the
median of the rounds. Every wait is bounded; all traffic goes to 127.0.0.1; every process
is stopped by its PID.

Usage: perf/machine.py [--duration 10] [--connections 16] [--rounds 3] [--apps cpu:app,hello:app]
                       [--servers spindle,granian,gunicorn-sync,gunicorn-gthread,bjoern,uwsgi[,spindle-single][,spindle-inline]]
  SPINDLE_BIN (default: this checkout's wheel, installed into build/perf-venv-X.Y); the peers
  from that venv (harness.peer; bjoern needs libev-dev); RUN_DIR (default perf/runs/<date>-<host>).
Writes RUN_DIR/machine.md (and machine.json) and prints the tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from harness import (APPS, ROOT, dist_version, free_port, peer, reset_peak_rss, server_python, spindle_bin, stop,
                     tree_pids, venv, wrk)
from workers import busy_cores, children_cpu, get, rotated

SPINDLE = "spindle -w 1 --io-threads 2 --sub-interpreters 2"
SPINDLE_SINGLE = "spindle --single-process --io-threads 2 --sub-interpreters 2"
SPINDLE_INLINE = "spindle -w 1 --io-threads 2 --sub-interpreters 2 --inline"
CHECK_REQUESTS = 20


@dataclass
class Server:
    """One server as started here: one command per process it takes to start it (bjoern x2
    is two), and how it is stopped."""
    name: str
    commands: Callable[[int, str], list[list[str]]]  # (port, "module:callable") -> commands
    stop_signal: int = signal.SIGTERM
    # Each process prints `listening on` once its own socket listens: with SO_REUSEPORT the
    # port answers as soon as the first one does, so readiness is waited for per process.
    announces: bool = False


@dataclass
class Running:
    """The processes of one server while it runs, and the files their stderr goes to (a
    file, not a pipe nobody reads, so a chatty server cannot block on a full pipe)."""
    procs: list[subprocess.Popen]
    logs: list = field(default_factory=list)

    def pids(self) -> list[int]:
        return [p for proc in self.procs for p in tree_pids(proc.pid)]

    def log_tail(self) -> str:
        tails = []
        for log in self.logs:
            log.seek(0)
            tails.append(log.read().decode(errors="replace")[-1500:])
        return "\n".join(tails)


def servers(spindle: str, wanted: list[str]) -> dict[str, Server | str]:
    """key -> Server, or the reason it cannot run; in the report's order, Spindle first."""
    def unavailable(dist: str) -> str:
        return f"n/a: pip install {dist} failed"

    table: dict[str, Server | str] = {}
    for key in wanted:
        if key == "spindle":
            table[key] = Server(SPINDLE, lambda port, app: [[
                spindle, "-w", "1", "--io-threads", "2", "--interpreters", "sub", "--sub-interpreters", "2",
                "--bind", f"127.0.0.1:{port}", "--pythonpath", str(APPS), "--log-level", "warn", app]])
        elif key == "spindle-single":
            table[key] = Server(SPINDLE_SINGLE, lambda port, app: [[
                spindle, "--single-process", "--io-threads", "2", "--interpreters", "sub", "--sub-interpreters",
                "2", "--bind", f"127.0.0.1:{port}", "--pythonpath", str(APPS), "--log-level", "warn", app]])
        elif key == "spindle-inline":
            table[key] = Server(SPINDLE_INLINE, lambda port, app: [[
                spindle, "-w", "1", "--io-threads", "2", "--interpreters", "sub", "--sub-interpreters", "2",
                "--inline", "--bind", f"127.0.0.1:{port}", "--pythonpath", str(APPS), "--log-level", "warn",
                app]])
        elif key == "granian":
            granian = peer("granian")
            table[key] = Server("granian --workers 2", lambda port, app: [[
                granian, "--interface", "wsgi", "--workers", "2", "--http", "1", "--host", "127.0.0.1",
                "--port", str(port), "--log-level", "warning", app]]) if granian else unavailable("granian")
        elif key == "gunicorn-sync":
            gunicorn = peer("gunicorn")
            table[key] = Server("gunicorn -w 2 (sync)", lambda port, app: [[
                gunicorn, "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{port}", "--chdir", str(APPS),
                "--log-level", "warning", app]]) if gunicorn else unavailable("gunicorn")
        elif key == "gunicorn-gthread":
            gunicorn = peer("gunicorn")
            table[key] = Server("gunicorn -k gthread -w 2 --threads 4", lambda port, app: [[
                gunicorn, "-k", "gthread", "-w", "2", "--threads", "4", "-b", f"127.0.0.1:{port}",
                "--chdir", str(APPS), "--log-level", "warning", app]]) if gunicorn else unavailable("gunicorn")
        elif key == "bjoern":
            python = module_peer("bjoern")
            runner = str(APPS / "bjoern_reuseport.py")
            table[key] = Server("bjoern x2 (reuse_port)", lambda port, app: [
                [python, runner, app, "127.0.0.1", str(port)] for _ in range(2)],
                announces=True) if python else "n/a: pip install bjoern failed (it needs libev-dev)"
        elif key == "uwsgi":
            uwsgi = peer("uwsgi")
            table[key] = Server("uwsgi --master --processes 2", lambda port, app: [[
                uwsgi, "--http11-socket", f"127.0.0.1:{port}", "--wsgi-file", app.split(":")[0] + ".py",
                "--callable", app.split(":")[1], "--master", "--processes", "2", "--single-interpreter",
                "--disable-logging", "--listen", "1024", "--buffer-size", "32768",
                "--die-on-term"]]) if uwsgi else unavailable("uwsgi")
        else:
            raise SystemExit(f"error: unknown server {key!r}; known: {', '.join(ALL_SERVERS)}")
    return table


DEFAULT_SERVERS = ["spindle", "granian", "gunicorn-sync", "gunicorn-gthread", "bjoern", "uwsgi"]
# spindle-single: the same shape without the supervisor, to read what the supervisor costs;
# spindle-inline: the same shape with the app on the I/O threads (--inline).
ALL_SERVERS = [*DEFAULT_SERVERS, "spindle-single", "spindle-inline"]


def module_peer(dist: str) -> str | None:
    """The perf venv's python when it imports `dist` (installed with pip when missing), else None."""
    python = str(venv() / "bin" / "python")
    if subprocess.run([python, "-c", f"import {dist}"], capture_output=True).returncode != 0:
        done = subprocess.run([python, "-m", "pip", "install", "-q", dist], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"pip install {dist} failed: {done.stderr[-500:]}", file=sys.stderr)
            return None
    return python


# ---------------------------------------------------------------- processes

def launch(server: Server, port: int, app: str) -> Running:
    running = Running([])
    for command in server.commands(port, app):
        log = tempfile.TemporaryFile()
        running.logs.append(log)
        running.procs.append(subprocess.Popen(
            command, cwd=APPS, stdout=subprocess.PIPE if server.announces else subprocess.DEVNULL, stderr=log))
    return running


def halt(server: Server, running: Running) -> None:
    for proc in running.procs:
        stop(proc, server.stop_signal)
        if proc.stdout:
            proc.stdout.close()
    for log in running.logs:
        log.close()


def wait_ready(server: Server, running: Running, port: int, timeout: float = 30.0) -> None:
    """Until every process that announces has said `listening on`, then until the port
    answers 200; raises with the servers' log when one exits or time runs out."""
    deadline = time.monotonic() + timeout

    def exited() -> None:
        for proc in running.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a process exited with {proc.returncode}: {running.log_tail()}")

    if server.announces:
        for proc in running.procs:
            line = b""
            while b"listening on" not in line:
                exited()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no `listening on` in {timeout:.0f} s: {running.log_tail()}")
                if select.select([proc.stdout], [], [], min(left, 0.5))[0]:
                    line = proc.stdout.readline()
    while True:
        exited()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"not answering in {timeout:.0f} s: {running.log_tail()}")
        time.sleep(0.05)


def check(port: int, expected: bytes) -> None:
    """CHECK_REQUESTS requests, each on a new connection (so with SO_REUSEPORT they land on
    the processes' sockets by the kernel's hash, not on one): 200 and the exact body."""
    for _ in range(CHECK_REQUESTS):
        _, status, body = get(port, "/", 5.0)
        if status != 200 or body != expected:
            raise RuntimeError(f"wrong answer: status {status}, body {body[:60]!r}, expected 200 {expected!r}")


def process_stats(pids: list[int]) -> dict[int, dict]:
    """Per process: its name, CPU seconds so far (every thread, live or exited), VmHWM and
    Pss now (KiB). A process gone meanwhile is left out."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
            fields = rest.split()
            hwm = pss = 0
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm = int(line.split()[1])
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss = int(line.split()[1])
        except (OSError, ValueError):
            continue
        stats[pid] = {"comm": head.split("(", 1)[1], "cpu": (int(fields[11]) + int(fields[12])) / tick,
                      "hwm_kib": hwm, "pss_kib": pss}
    return stats


# ---------------------------------------------------------------- one measurement

def measure(server: Server, app: str, expected: bytes, args) -> dict:
    port = free_port()
    running = launch(server, port, app)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_ready(server, running, port)
        check(port, expected)
        wrk(url, 1, args.connections)  # warm-up
        for proc in running.procs:
            reset_peak_rss(proc.pid)
        before = process_stats(running.pids())
        busy0, wrk0, t0 = busy_cores(), children_cpu(), time.monotonic()
        result = wrk(url, args.duration, args.connections)
        elapsed = time.monotonic() - t0
        busy1, wrk1 = busy_cores(), children_cpu()
        after = process_stats(running.pids())
    finally:
        halt(server, running)
    result.pop("raw", None)
    # A process that started during the run (a replaced worker) counts from zero.
    per_process = [{"pid": pid, "comm": s["comm"],
                    "cores": (s["cpu"] - before.get(pid, {"cpu": 0.0})["cpu"]) / elapsed,
                    "peak_rss": s["hwm_kib"] / 1024, "pss": s["pss_kib"] / 1024}
                   for pid, s in sorted(after.items())]
    result["processes"] = per_process
    result["rss"] = sum(p["peak_rss"] for p in per_process)
    result["pss"] = sum(p["pss"] for p in per_process)
    result["server_cores"] = sum(p["cores"] for p in per_process)
    result["cpu_us"] = result["server_cores"] / result["rps"] * 1e6 if result["rps"] else float("nan")
    result["wrk_cores"] = (wrk1 - wrk0) / elapsed
    result["other_cores"] = max(0.0, (busy1 - busy0) / elapsed - result["server_cores"] - result["wrk_cores"])
    print(f"  {server.name:38s} {result['rps']:9.0f} req/s  errors {result['errors']:4d}  "
          f"peak RSS {result['rss']:6.1f} MiB  PSS {result['pss']:6.1f} MiB  "
          f"server {result['server_cores']:.2f} cores ({' + '.join('%.2f' % p['cores'] for p in per_process)})  "
          f"wrk {result['wrk_cores']:.2f}  other {result['other_cores']:.2f}", file=sys.stderr)
    return result


# ---------------------------------------------------------------- report

def median_round(rounds: list[dict]) -> dict:
    """The round whose req/s is the median (the lower of the middle two): where the
    per-process columns come from, so they describe one real run."""
    return sorted(rounds, key=lambda r: r["rps"])[(len(rounds) - 1) // 2]


def app_table(app: str, table: dict, runs: dict[str, list[dict]], failures: dict[str, list[str]]) -> list[str]:
    keys = ("rps", "rss", "pss", "server_cores", "cpu_us", "wrk_cores", "other_cores")
    med = {key: {k: statistics.median(r[k] for r in rs) for k in keys} for key, rs in runs.items() if rs}
    base = med.get("spindle")

    def ratio(key: str, field: str) -> str:
        return f"{med[key][field] / base[field]:.2f}" if base and base[field] else "-"

    lines = [
        f"### {app}",
        "",
        "| server | req/s | × Spindle | req/s each round | errors | peak RSS MiB | × Spindle | PSS MiB | "
        "× Spindle | processes: cores | processes: peak RSS MiB | server cores | server CPU µs/req | "
        "wrk cores | other cores |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for key, server in table.items():
        if isinstance(server, str):
            lines.append(f"| {key} | {server} |" + " |" * 13)
            continue
        rs = runs.get(key, [])
        if not rs:
            reason = "; ".join(failures.get(key, [])) or "not run"
            lines.append(f"| {server.name} | failed: {reason[:300]} |" + " |" * 13)
            continue
        m, mid = med[key], median_round(rs)
        lines.append(
            f"| {server.name} | {m['rps']:.0f} | {ratio(key, 'rps')} | {' / '.join('%.0f' % r['rps'] for r in rs)} | "
            f"{sum(r['errors'] for r in rs)} | {m['rss']:.1f} | {ratio(key, 'rss')} | {m['pss']:.1f} | "
            f"{ratio(key, 'pss')} | {' + '.join('%.2f' % p['cores'] for p in mid['processes'])} | "
            f"{' + '.join('%.0f' % p['peak_rss'] for p in mid['processes'])} | {m['server_cores']:.2f} | "
            f"{m['cpu_us']:.0f} | {m['wrk_cores']:.2f} | {m['other_cores']:.2f} |")
    notes = []
    if base and any(not k.startswith("spindle") for k in med):
        peers = {k: v for k, v in med.items() if not k.startswith("spindle")}
        fastest = max(peers, key=lambda k: peers[k]["rps"])
        for field, what in (("rss", "less total peak RSS"), ("pss", "less PSS")):
            leanest = min(peers, key=lambda k: peers[k][field])
            notes.append(f"- {what} than every peer: {'yes' if base[field] < peers[leanest][field] else 'NO'}: "
                         f"{base[field]:.1f} MiB, the leanest peer {table[leanest].name} "
                         f"{peers[leanest][field]:.1f} MiB (Spindle at {base[field] / peers[leanest][field]:.2f}x it)")
        notes.insert(0, f"- Spindle first: {'yes' if base['rps'] > peers[fastest]['rps'] else 'NO'}: "
                        f"{base['rps']:.0f} req/s, the fastest peer {table[fastest].name} "
                        f"{peers[fastest]['rps']:.0f} (Spindle at {base['rps'] / peers[fastest]['rps']:.2f}x it)")
    for key, reasons in failures.items():
        if reasons and runs.get(key):
            notes.append(f"- {table[key].name} failed in {len(reasons)} round(s), its figures are from the others: "
                         f"{'; '.join(reasons)[:300]}")
    errors = [table[k].name for k, rs in runs.items() if any(r["errors"] for r in rs)]
    if errors:
        notes.append(f"- wrk counted errors for {', '.join(errors)}: their req/s is not comparable")
    if notes:
        lines += ["", *notes]
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="measured wrk seconds")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every server")
    parser.add_argument("--apps", default="cpu:app,hello:app", help="comma-separated apps from perf/apps")
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                        help=f"comma-separated, of {','.join(ALL_SERVERS)} (Spindle's row is the ratios' base)")
    args = parser.parse_args()
    wanted = [s for s in args.servers.split(",") if s]
    spindle = spindle_bin()
    pyver = server_python(spindle)
    if "spindle" in wanted and tuple(map(int, pyver.split("."))) < (3, 12):
        raise SystemExit(f"error: Spindle runs on Python {pyver}: own-GIL sub-interpreters need 3.12+ "
                         "(set SPINDLE_PYTHON)")
    table = servers(spindle, wanted)
    t_start = time.monotonic()

    sys.path.insert(0, str(APPS))
    import cpu  # noqa: E402  (the app module: one call timed here, and its expected body)

    t0 = time.perf_counter()
    for _ in range(200):
        cpu.work()
    call_us = (time.perf_counter() - t0) / 200 * 1e6
    bodies = {"cpu:app": b"%d\n" % cpu.work(), "cpu:heavy": b"%d\n" % cpu.work(cpu.HEAVY_ITERATIONS),
              "hello:app": b"Hello, World!"}

    results: dict = {}
    failures: dict = {}
    runnable = [k for k, s in table.items() if isinstance(s, Server)]
    for app in args.apps.split(","):
        if app not in bodies:
            raise SystemExit(f"error: no expected body for {app}; known: {', '.join(bodies)}")
        print(f"{app}:", file=sys.stderr)
        runs: dict[str, list[dict]] = {k: [] for k in runnable}
        failed: dict[str, list[str]] = {k: [] for k in runnable}
        for r in range(args.rounds):
            for key in rotated(runnable, r):
                try:
                    runs[key].append(measure(table[key], app, bodies[app], args))
                except Exception as exc:  # one server failing must not lose the others' rows
                    print(f"  {table[key].name}: failed: {exc}", file=sys.stderr)
                    failed[key].append(str(exc).replace("\n", " ").replace("|", "/"))
        results[app], failures[app] = runs, failed

    host = socket.gethostname()
    out_dir = Path(os.environ.get("RUN_DIR") or ROOT / "perf" / "runs" / f"{datetime.date.today()}-{host}")
    out_dir.mkdir(parents=True, exist_ok=True)
    versions = ", ".join(f"{d} {dist_version(d)}" for d in ("granian", "gunicorn", "bjoern", "uWSGI"))
    spindle_version = subprocess.run([spindle, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = len(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True,
                               text=True).stdout.splitlines())
    command = (f"perf/machine.py --duration {args.duration} --connections {args.connections} "
               f"--rounds {args.rounds} --apps {args.apps} --servers {args.servers}")
    lines = [
        "# The whole machine (perf/machine.py)",
        "",
        f"- {datetime.datetime.now().isoformat(timespec='seconds')}, {host}, {os.cpu_count()} cores, "
        f"Python {pyver}; {spindle_version} ({spindle}); {versions}; commit {commit}, "
        f"{dirty} files changed or untracked",
        f"- {args.rounds} interleaved rounds (the order rotates each round); whole run "
        f"{(time.monotonic() - t_start) / 60:.1f} min",
        f"- cpu:app: {call_us:.0f} µs per call here (one core tops out near {1e6 / call_us:.0f} req/s)",
        "",
        f"wrk -t1 -c{args.connections}, 1 s warm-up then {args.duration} s, no pinning. Each figure is the "
        "median of the rounds; × Spindle = over Spindle's in the same app. Peak RSS: VmHWM summed over every "
        "process of the server (supervisor, arbiter or main process included; bjoern x2: both processes), "
        "reset after the warm-up, so pages shared between forked processes count in each. PSS: Pss summed "
        "over the same processes just after the run, shared pages counted once. processes: each process's "
        "cores and peak RSS, by PID (the parent first), from the round with the median req/s. Cores: CPU "
        "time per second of the run of the server's processes, of wrk, and of everything else on the "
        "machine (the neighbour's builds and tests, interrupts). Every server answered "
        f"{CHECK_REQUESTS} requests on new connections with 200 and the exact body before it was measured.",
        "",
        "Servers: "
        + "; ".join(f"`{s.name}`" if isinstance(s, Server) else f"{k} ({s})" for k, s in table.items())
        + ". Spindle: one worker under the supervisor, the shape `spindle app` runs (the supervisor is the "
        "first process in its `processes` columns; --single-process would save it, but the peers' parents "
        "are counted too), 2 I/O threads, "
        "2 own-GIL sub-interpreters, Python threads on demand, "
        + (f"driver {os.environ['SPINDLE_DRIVER']} (SPINDLE_DRIVER)." if os.environ.get("SPINDLE_DRIVER")
           else "the default driver (auto: io_uring where the kernel allows it)."),
        "",
    ]
    for app in results:
        lines += app_table(app, table, results[app], failures[app])
    lines += [f"Command: `{command}`", ""]
    (out_dir / "machine.md").write_text("\n".join(lines))
    (out_dir / "machine.json").write_text(json.dumps(
        {"args": vars(args), "call_us": call_us, "servers": {k: s.name if isinstance(s, Server) else s
                                                             for k, s in table.items()},
         "results": results, "failures": failures}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
