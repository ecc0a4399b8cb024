#!/usr/bin/env python3
"""Real frameworks: a Flask app and a Django project (hello and a 10 KB JSON document) on
Spindle and its peers, one serving process each, and the share of each request's CPU that
is the server's own overhead rather than the framework's (issue 13).

Apps, both with the same two endpoints and the same 150-item structure serialised per request:
  flask   perf/apps/flaskapp.py:app                  `/` hello, `/json` (jsonify, about 9 KB)
  django  perf/apps/djangoapp (startproject's settings and middleware, DEBUG off)
          djangoapp.wsgi:application                 `/` hello, `/json/` (JsonResponse, about 11 KB)
Flask and Django are installed into the perf venv at the versions pinned in REQUIREMENTS.

Scenarios: flask-hello, flask-json, django-hello, django-json; keep-alive, wrk -t1
-c CONNECTIONS (64), --timeout 2s.

Servers, one process each, all on the perf venv's Python (build/perf-venv-<X.Y>, see
perf/harness.py), started from the app's folder:
  spindle-epoll     spindle --single-process --io-threads 1 --py-threads 1 --driver epoll
                    (one I/O thread and one Python thread, as the lab runs it; interpreters: the default)
  spindle-uring     the same with --driver io-uring
  granian           --interface wsgi --workers 1 --blocking-threads 1 --http 1 --no-ws
  gunicorn-gthread  -k gthread -w 1 --threads 4
  bjoern            perf/apps/bjoern_run.py HOST PORT MODULE:CALLABLE
  uwsgi             --http11-socket, --processes 1, no master (as perf/lab.sh runs it)
  spindle-epoll-main  (only when named in --servers) spindle-epoll with --interpreters main:
                    the app on the main interpreter, as alone and under the peers
A server that is not installed, does not start, or answers a scenario wrong is "n/a" or
"failed" in that scenario with the reason (its log in the raw folder); the run goes on.

Each run of a server in a scenario, as perf/lab.sh does it: start it pinned to core 0
(taskset), wait until the scenario's path answers 200 (30 s at most), check the answer
(status 200; hello: the body is "Hello, World!"; JSON: application/json, 150 items, the
last one "item 149"; and whether a second request on the same connection is answered on
it: a server that closes is noted), warm up (wrk, --warmup s), then a measured run (wrk
on core 1, --duration s) with the server's process tree's CPU time (/proc, every thread)
and peak RSS (VmHWM summed over the tree, reset just before) around it; `ss` snapshots of
wrk's connections 1 s in and 1 s before the end count the connections that received
nothing in between (starved); stop it by PID (SIGTERM, SIGINT for uWSGI, SIGKILL after
15 s). Rounds are interleaved: every round runs every scenario on every server, the
servers' order rotating by one each round, so a neighbour's load hits them all alike; the
tables show medians over the rounds.

Server overhead. For each scenario and round, the app's own CPU per request is measured
in-process, on the same venv's Python, in a subprocess pinned to core 0: the WSGI app
called directly in a tight loop, with an environ like a server's for wrk's request
(wsgiref.util.setup_testing_defaults over GET PATH, HTTP/1.1, Host: 127.0.0.1:PORT, a
fresh copy and an empty wsgi.input per call), its body iterated to the end and close()
called; a warm-up of 300 calls, then N calls (about --app-seconds of CPU, 2000 at least) timed with
time.process_time. Then for each server:
    overhead µs = server CPU µs per request - app µs per call
    share       = overhead µs / server CPU µs per request
Its limits: the loop is warmer than any server (the same environ and objects on every
call, nothing else between two calls touching the caches), so app µs is a floor of what
the app costs under a server and the overhead an upper bound; the loop's own
bookkeeping (the environ copy, start_response, iterating the body) counts as app time,
and the report gives its size (the same loop over a null app); the server's CPU includes
the kernel's TCP work on its side of loopback (softirq time charged to no process is in
neither); a server that runs the app on more threads (gunicorn's 4) pays for their
switching, which is its overhead; the loop runs on the main interpreter, Spindle's default
on a sub-interpreter (spindle-epoll-main shows what that changes). For Spindle the notes
split its CPU per request between its Python thread and its I/O thread (by thread name):
both run on the one core, so at a framework's rates, where nothing batches, each request
costs a wake-up of each. CPU per
request is user + system time of the server's process tree over the measured run divided by
wrk's completed requests.

Usage: perf/frameworks.py [--duration 5] [--warmup 1] [--rounds 3] [--connections 64]
                          [--scenarios flask-hello,...] [--servers spindle-epoll,...] [--app-seconds 1]
  SPINDLE_BIN (default: this checkout's wheel, installed into the perf venv), SPINDLE_PYTHON;
  RUN_DIR (default perf/runs/<date>-<host>).
Writes RUN_DIR/frameworks.md and frameworks.json, server logs and wrk output in
RUN_DIR/frameworks-raw/, and prints the tables. All traffic goes to 127.0.0.1; only
processes this script started are stopped, by PID.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness import (APPS, ROOT, dist_version, free_port, log_tail as tail, peak_rss_mib, peer, reset_peak_rss,
                     server_python, spindle_bin, stop, thread_cpu, venv, wrk)

# The frameworks' versions, pinned: the Django project's settings are startproject's of 5.1.4.
REQUIREMENTS = {"flask": "flask==3.1.3", "django": "django==5.1.4"}

SERVER_CORE, CLIENT_CORE = "0", "1"
BASE = "spindle-epoll"
HELLO = b"Hello, World!"
JSON_ITEMS = 150

# app name -> (the folder it is served from, MODULE:CALLABLE)
APPS_SPEC = {
    "flask": (APPS, "flaskapp:app"),
    "django": (APPS / "djangoapp", "djangoapp.wsgi:application"),
}

# scenario -> (app, path, what the body must be, description)
SCENARIOS = {
    "flask-hello": ("flask", "/", "hello", "Flask, `/`: hello, 13 bytes of text/plain"),
    "flask-json": ("flask", "/json", "json", "Flask, `/json`: 150 items through `jsonify`, about 9 KB"),
    "django-hello": ("django", "/", "hello", "Django, `/`: hello through startproject's middleware"),
    "django-json": ("django", "/json/", "json", "Django, `/json/`: 150 items through `JsonResponse`, about 11 KB"),
}

SERVERS = ["spindle-epoll", "spindle-uring", "granian", "gunicorn-gthread", "bjoern", "uwsgi"]
# Not in the default run (--servers): spindle-epoll on the main interpreter, where the app runs
# as it does alone and under the peers, to tell the sub-interpreter's cost from the server's.
EXTRA_SERVERS = ["spindle-epoll-main"]


class NotApplicable(Exception):
    """The server cannot serve this scenario (the reason is the message)."""


class Failed(Exception):
    """The server did not start, died, or wrk failed (the reason is the message)."""


# ---------------------------------------------------------------- the answer

def body_problem(kind: str, status: int, content_type: str, body: bytes) -> str | None:
    """What is wrong with a response to the scenario, or None when it is right."""
    if status != 200:
        return f"status {status}, body {body[:120]!r}"
    if kind == "hello":
        return None if body == HELLO else f"body {body[:120]!r}, not {HELLO!r}"
    if not content_type.startswith("application/json"):
        return f"Content-Type {content_type!r}, not application/json"
    try:
        items = json.loads(body)["items"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"not the JSON document ({exc!r}): {body[:120]!r}"
    if len(items) != JSON_ITEMS or items[-1].get("name") != f"item {JSON_ITEMS - 1}":
        return f"{len(items)} items, the last {items[-1] if items else None!r}"
    return None


def check_answer(port: int, path: str, kind: str) -> str:
    """Two requests on one connection, as wrk sends them. Raises NotApplicable when an answer
    is wrong; returns a note ("" or that the server closed after the first response)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        for i in range(2):
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            problem = body_problem(kind, resp.status, resp.getheader("Content-Type", ""), body)
            if problem:
                raise NotApplicable(f"check failed: GET {path}: {problem}")
            if resp.will_close:
                return "closes the connection after each response"
    except OSError as exc:
        raise NotApplicable(f"check failed: GET {path}: {exc!r}") from exc
    finally:
        conn.close()
    return ""


# ---------------------------------------------------------------- the app alone

def measure_app(app_dir: str, spec: str, path: str, kind: str, seconds: float) -> None:
    """Runs in a subprocess (--app-cost): the app called in a loop; prints JSON."""
    import io
    import importlib
    import wsgiref.util

    sys.path.insert(0, app_dir)
    os.chdir(app_dir)
    module, _, name = spec.partition(":")
    app = getattr(importlib.import_module(module), name)
    port = 8000
    base = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SCRIPT_NAME": "",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": str(port), "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": f"127.0.0.1:{port}", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000"}
    wsgiref.util.setup_testing_defaults(base)
    seen: list = []

    def start_response(status, headers, exc_info=None):
        seen[:] = [status, headers]
        return seen.append

    def call(wsgi_app) -> int:
        environ = dict(base)
        environ["wsgi.input"] = io.BytesIO(b"")
        iterable = wsgi_app(environ, start_response)
        try:
            return sum(len(chunk) for chunk in iterable)
        finally:
            if hasattr(iterable, "close"):
                iterable.close()

    def null_app(environ, start):
        start("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]

    def timed(wsgi_app, target: float) -> tuple[float, int]:
        for _ in range(300):  # warm-up: imports, caches, the specialising interpreter
            call(wsgi_app)
        t0 = time.process_time()
        for _ in range(300):
            call(wsgi_app)
        pilot = max((time.process_time() - t0) / 300, 1e-7)
        n = max(2000, int(target / pilot))
        t0 = time.process_time()
        for _ in range(n):
            call(wsgi_app)
        return (time.process_time() - t0) / n * 1e6, n

    # The answer first: the same check a server's answer gets.
    environ = dict(base)
    environ["wsgi.input"] = io.BytesIO(b"")
    iterable = app(environ, start_response)
    try:
        body = b"".join(iterable)
    finally:
        if hasattr(iterable, "close"):
            iterable.close()
    status = int(seen[0].split()[0])
    content_type = next((v for k, v in seen[1] if k.lower() == "content-type"), "")
    problem = body_problem(kind, status, content_type, body)
    app_us, calls = timed(app, seconds)
    loop_us, _ = timed(null_app, min(seconds, 0.3))
    print(json.dumps({"app_us": app_us, "calls": calls, "loop_us": loop_us, "bytes": len(body),
                      "problem": problem}))


def app_cost(python: str, scenario: str, seconds: float) -> dict:
    app, path, kind, _ = SCENARIOS[scenario]
    app_dir, spec = APPS_SPEC[app]
    cmd = ["taskset", "-c", SERVER_CORE, python, str(Path(__file__).resolve()), "--app-cost", str(app_dir), spec,
           path, kind, "--app-seconds", str(seconds)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120 + 10 * seconds, env=clean_env())
    if done.returncode != 0:
        raise Failed(f"the app alone failed: {done.stderr[-800:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["problem"]:
        raise Failed(f"the app alone answers wrong: {result['problem']}")
    return result


# ---------------------------------------------------------------- servers

def clean_env() -> dict:
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH"):
        env.pop(name, None)
    return env


def server_table(spindle: str) -> dict:
    """name -> (command for (port, app folder, MODULE:CALLABLE), stop signal, why it cannot run or None)."""
    bin_dir = venv() / "bin"
    py = str(bin_dir / "python")
    installed = {d: peer(d) is not None for d in ("gunicorn", "granian", "uwsgi")}
    # bjoern has no command for peer() to look for: the import says whether it is there.
    installed["bjoern"] = subprocess.run([py, "-c", "import bjoern"], capture_output=True).returncode == 0
    if not installed["bjoern"]:
        subprocess.run([py, "-m", "pip", "install", "-q", "bjoern"], capture_output=True, timeout=600)
        installed["bjoern"] = subprocess.run([py, "-c", "import bjoern"], capture_output=True).returncode == 0

    def spindle_cmd(driver, *extra):
        return lambda port, d, spec: [spindle, "--bind", f"127.0.0.1:{port}", "--single-process", "--io-threads", "1",
                                      "--py-threads", "1", "--driver", driver, *extra, "--pythonpath", str(d),
                                      "--log-level", "info", spec]

    def missing(dist, extra=""):
        return None if installed[dist] else f"not installed: pip install {dist} failed{extra}"

    return {
        "spindle-epoll": (spindle_cmd("epoll"), signal.SIGTERM, None),
        "spindle-uring": (spindle_cmd("io-uring"), signal.SIGTERM, None),
        "spindle-epoll-main": (spindle_cmd("epoll", "--interpreters", "main"), signal.SIGTERM, None),
        "granian": (lambda port, d, spec: [
            str(bin_dir / "granian"), "--interface", "wsgi", "--workers", "1", "--blocking-threads", "1",
            "--http", "1", "--no-ws", "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(d),
            "--log-level", "warning", spec], signal.SIGTERM, missing("granian")),
        "gunicorn-gthread": (lambda port, d, spec: [
            str(bin_dir / "gunicorn"), "-k", "gthread", "-w", "1", "--threads", "4", "-b", f"127.0.0.1:{port}",
            "--chdir", str(d), "--log-level", "warning", spec], signal.SIGTERM, missing("gunicorn")),
        "bjoern": (lambda port, d, spec: [py, str(APPS / "bjoern_run.py"), "127.0.0.1", str(port), spec],
                   signal.SIGTERM, missing("bjoern", " (it needs libev-dev)")),
        # One process, no master, keep-alive on its own HTTP/1.1 socket, no request log, the
        # lab's backlog and buffer; without a master SIGTERM means "reload" and SIGINT "exit".
        "uwsgi": (lambda port, d, spec: [
            str(bin_dir / "uwsgi"), "--http11-socket", f"127.0.0.1:{port}", "--pythonpath", str(d),
            "--module", spec, "--processes", "1", "--single-interpreter", "--disable-logging", "--listen", "1024",
            "--buffer-size", "32768"], signal.SIGINT, missing("uwsgi")),
    }


def wait_answering(port: int, path: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    """Polls until PATH answers 200, at most `timeout` seconds; Failed if the server exits first."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failed(f"did not start: exited with {proc.returncode}: {tail(log)}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", path)
                status = conn.getresponse().status
            finally:
                conn.close()
            if status == 200:
                return
            last = f"status {status}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.05)
    raise Failed(f"did not answer 200 on {path} within {timeout:.0f} s ({last}): {tail(log)}")


# ---------------------------------------------------------------- measuring

def cores_busy() -> float:
    """CPU-seconds cores 0 and 1 have spent so far on neither idle nor interrupts."""
    total = 0.0
    with open("/proc/stat") as f:
        for line in f:
            name = line.split(" ", 1)[0]
            if name in (f"cpu{SERVER_CORE}", f"cpu{CLIENT_CORE}"):
                v = [int(x) for x in line.split()[1:]]
                total += v[0] + v[1] + v[2] + v[7]  # user, nice, system, steal
    return total / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def conn_snapshot(port: int) -> dict[str, int]:
    """wrk's established connections to PORT: "local port/socket cookie" -> bytes received."""
    out = subprocess.run(["taskset", "-c", CLIENT_CORE, "ss", "-tineH", "state", "established",
                          f"( dport = :{port} )"], capture_output=True, text=True, timeout=10).stdout
    conns: dict[str, int] = {}
    key = None
    for line in out.splitlines():
        if line and not line[0].isspace():
            fields = line.split()
            cookie = next((f[3:] for f in fields[4:] if f.startswith("sk:")), "")
            key = fields[2].rsplit(":", 1)[-1] + "/" + cookie
            conns[key] = 0
        elif key is not None:
            m = re.search(r"bytes_received:(\d+)", line)
            if m:
                conns[key] = int(m.group(1))
    return conns


class ConnSampler(threading.Thread):
    """Two snapshots of wrk's connections, 1 s into the run and 1 s before its end."""

    def __init__(self, port: int, duration: int):
        super().__init__(daemon=True)
        self.port, self.duration = port, duration
        self.snaps: list[dict[str, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        if self.done.wait(1):
            return
        self.snaps.append(conn_snapshot(self.port))
        if self.done.wait(self.duration - 2):
            return
        self.snaps.append(conn_snapshot(self.port))

    def starved(self) -> tuple[int, int] | None:
        """(open, starved) or None without both snapshots."""
        if len(self.snaps) < 2:
            return None
        first, second = self.snaps
        return len(second), sum(1 for k, v in second.items() if k in first and v <= first[k])


def run_wrk(url: str, duration: int, connections: int) -> dict:
    """wrk -t1 on the client core, bounded (harness.wrk); Failed when it reports nothing."""
    try:
        return wrk(url, duration, connections, timeout="2s", cores=CLIENT_CORE)
    except (AttributeError, subprocess.TimeoutExpired) as exc:  # AttributeError: no "Requests/sec" line
        raise Failed(f"wrk failed: {exc!r}") from exc


def run_one(table: dict, server: str, scenario: str, args, raw: Path, round_no: int) -> dict:
    app, path, kind, _ = SCENARIOS[scenario]
    app_dir, spec = APPS_SPEC[app]
    command, stop_signal, na = table[server]
    if na:
        raise NotApplicable(na)
    port = free_port()
    cmd = ["taskset", "-c", SERVER_CORE, *command(port, app_dir, spec)]
    log = raw / f"{scenario}--{server}--r{round_no}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=app_dir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=clean_env())
    url = f"http://127.0.0.1:{port}{path}"
    try:
        wait_answering(port, path, proc, log)
        note = check_answer(port, path, kind)
        run_wrk(url, args.warmup, args.connections)
        if proc.poll() is not None:
            raise Failed(f"died during the warm-up: {tail(log)}")
        reset_peak_rss(proc.pid)
        sampler = ConnSampler(port, args.duration) if args.duration >= 3 else None
        threads0 = thread_cpu(proc.pid)
        cpu0, busy0, wrk0, t0 = sum(threads0.values()), cores_busy(), children_cpu(), time.monotonic()
        if sampler:
            sampler.start()
        try:
            result = run_wrk(url, args.duration, args.connections)
        finally:
            if sampler:
                sampler.done.set()
                sampler.join(15)
        threads1 = thread_cpu(proc.pid)
        cpu, busy, wrk_cpu, elapsed = (sum(threads1.values()) - cpu0, cores_busy() - busy0, children_cpu() - wrk0,
                                       time.monotonic() - t0)
        rss = peak_rss_mib(proc.pid)
        if proc.poll() is not None:
            raise Failed(f"died during the measured run: {tail(log)}")
    finally:
        stop(proc, stop_signal)
    (raw / f"{scenario}--{server}--r{round_no}.wrk").write_text(result.pop("raw") + f"\n# {' '.join(cmd)}\n")
    m = re.search(r"(\d+) requests in", (raw / f"{scenario}--{server}--r{round_no}.wrk").read_text())
    requests = int(m.group(1)) if m else 0
    if requests == 0:
        raise Failed("wrk completed no request")
    # Spindle's threads by name: its Python threads, its I/O threads, the rest (peers: all "other").
    split = {g: (threads1[g] - threads0.get(g, 0.0)) / requests * 1e6 for g in threads1}
    result.update(requests=requests, cpu_us=cpu / requests * 1e6, rss=rss, note=note, thread_us=split,
                  other_pct=max(0.0, busy - cpu - wrk_cpu) / elapsed / 2 * 100,
                  wrk_pct=wrk_cpu / elapsed * 100)
    if sampler and sampler.starved():
        result["open"], result["starved"] = sampler.starved()
    # Spindle says at start how it runs (driver, threads, which interpreters "auto" chose).
    said = re.search(r"listening on \S+ \((.*)\)", log.read_text(errors="replace"))
    if said:
        result["shape"] = said.group(1)
    return result


# ---------------------------------------------------------------- report

def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(results: dict, apps: dict, args, meta: dict, scenarios: list[str], servers: list[str],
           commands: dict) -> str:
    lines = [
        "# Real frameworks: Flask and Django, one serving process each (perf/frameworks.py)",
        "",
        f"- {meta['when']}, {meta['host']}, {os.cpu_count()} cores; Python {meta['python']}; {meta['spindle']}; "
        f"commit {meta['commit']} ({meta['dirty']} changed or untracked paths)",
        f"- {meta['versions']}",
        f"- every server on core {SERVER_CORE} (taskset), wrk -t1 -c{args.connections} --timeout 2s on core "
        f"{CLIENT_CORE}; per run: start, check the answer, {args.warmup} s warm-up, {args.duration} s measured, "
        f"stop; {args.rounds} interleaved round(s) (the servers' order rotates), medians over the rounds",
        "- **CPU µs/req**: user + system time of the server's process tree over the measured run / wrk's "
        "requests; **app µs**: the WSGI app called directly in a loop on the same Python, pinned to core "
        f"{SERVER_CORE} (median over the rounds); **overhead** = CPU µs/req - app µs, **share** = overhead / "
        "CPU µs/req: the part of each request that is the server's (see the script's docstring for the limits: "
        "the loop is warmer than a server, so the overhead is an upper bound)",
        "- **peak RSS**: VmHWM summed over the server's processes, reset before the measured run; "
        "**notes**: errors (socket errors + non-2xx), connections starved (open 1 s in and 1 s before the end, "
        "nothing received in between), other load on the 2 cores during the run (neither the server nor wrk) "
        "when 10% or more; for Spindle, its CPU per request split between its Python thread and its I/O thread "
        "(both on the one core: each request wakes the other thread there)",
        "",
    ]
    for scenario in scenarios:
        desc = SCENARIOS[scenario][3]
        cost = apps.get(scenario, {})
        app_us = med([c["app_us"] for c in cost.get("runs", [])])
        lines += [f"## {scenario}", "", desc + ".", ""]
        if cost.get("error"):
            lines += [f"The app alone: {cost['error']}", ""]
        else:
            runs = cost["runs"]
            each = ", ".join("%.1f" % c["app_us"] for c in runs)
            lines += [f"The app alone: {app_us:.1f} µs per call (rounds: {each}; {runs[0]['calls']} calls each; "
                      f"the loop's own share, over a null app: {med([c['loop_us'] for c in runs]):.2f} µs; "
                      f"body {runs[0]['bytes']} bytes).", ""]
        lines += ["| server | req/s | × epoll req/s | CPU µs/req | × epoll CPU | app µs | overhead µs | "
                  "overhead share | p99 ms | peak RSS MiB | notes |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        base = results.get((BASE, scenario), {}).get("runs", [])
        b_rps, b_cpu = med([r["rps"] for r in base]), med([r["cpu_us"] for r in base])
        for server in servers:
            entry = results.get((server, scenario), {})
            runs = entry.get("runs", [])
            if not runs:
                lines.append(f"| {server} | {entry.get('status', 'not run')}: {entry.get('reason', '')} "
                             "| | | | | | | | | |")
                continue
            rps, cpu, p99, rss = (med([r[k] for r in runs]) for k in ("rps", "cpu_us", "p99", "rss"))
            over = cpu - app_us
            notes = []
            errors = sum(r["errors"] for r in runs)
            if errors:
                notes.append(f"{errors} errors")
            starved = [r for r in runs if r.get("starved")]
            if starved:
                notes.append("starved " + ", ".join(f"{r['starved']} of {r['open']}" for r in starved)
                             + " connections")
            if "python" in runs[0]["thread_us"]:  # Spindle: where its CPU per request went
                py_us, io_us = (med([r["thread_us"].get(g, 0.0) for r in runs]) for g in ("python", "io"))
                notes.append(f"Python thread {py_us:.1f} µs, I/O thread {io_us:.1f} µs")
            note = next((r["note"] for r in runs if r["note"]), "")
            if note:
                notes.append(note)
            busy = max(r["other_pct"] for r in runs)
            if busy >= 10:
                notes.append(f"other load up to {busy:.0f}%")
            if over < 0:
                notes.append("overhead below 0: the two measurements' noise is larger than it")
            if entry.get("reason"):
                notes.append(f"{entry['status']} in a round: {entry['reason'][:120]}")
            rps_x, cpu_x = (f"{rps / b_rps:.2f}x", f"{cpu / b_cpu:.2f}x") if base else ("—", "—")
            lines.append(f"| {server} | {rps:.0f} | {rps_x} | {cpu:.1f} | {cpu_x} | "
                         f"{app_us:.1f} | {over:.1f} | {over / cpu:.0%} | {p99:.2f} | {rss:.1f} | "
                         f"{'; '.join(notes)} |")
        lines.append("")
    lines += ["## Servers", "", "| server | command (run from the app's folder APPDIR; APP: MODULE:CALLABLE) |",
              "|---|---|"]
    for server in servers:
        lines.append(f"| {server} | `{commands[server]}` |")
    shapes = sorted({f"{k[0]}: {r['shape']}" for k, v in results.items() for r in v.get("runs", []) if "shape" in r})
    if shapes:
        lines += ["", "Spindle at start (its `listening on` line): " + "; ".join(f"{s}" for s in shapes) + "."]
    lines += ["", f"Command: `{meta['command']}`; server logs and wrk output in `frameworks-raw/`.", ""]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--app-cost":
        p = argparse.ArgumentParser(prog="frameworks.py --app-cost")
        p.add_argument("app_dir")
        p.add_argument("spec")
        p.add_argument("path")
        p.add_argument("kind")
        p.add_argument("--app-seconds", type=float, default=1.0)
        a = p.parse_args(sys.argv[2:])
        measure_app(a.app_dir, a.spec, a.path, a.kind, a.app_seconds)
        return

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="measured wrk run, seconds")
    parser.add_argument("--warmup", type=int, default=1, help="wrk warm-up, seconds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--app-seconds", type=float, default=1.0, help="CPU time of the app-alone loop")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--servers", default=",".join(SERVERS))
    args = parser.parse_args()
    scenarios, servers = args.scenarios.split(","), args.servers.split(",")
    for s in scenarios:
        if s not in SCENARIOS:
            sys.exit(f"error: unknown scenario {s!r} (known: {', '.join(SCENARIOS)})")
    for s in servers:
        if s not in SERVERS + EXTRA_SERVERS:
            sys.exit(f"error: unknown server {s!r} (known: {', '.join(SERVERS + EXTRA_SERVERS)})")
    if args.duration < 1 or args.warmup < 1 or args.rounds < 1 or args.connections < 1:
        sys.exit("error: --duration, --warmup, --rounds and --connections must be at least 1")
    if os.cpu_count() < 2:
        sys.exit("error: needs 2 cores (server on core 0, wrk on core 1)")

    spindle = spindle_bin()
    pyver = server_python(spindle)
    python = str(venv() / "bin" / "python")
    for app in {SCENARIOS[s][0] for s in scenarios}:
        if peer(REQUIREMENTS[app], "flask" if app == "flask" else "django-admin") is None:
            sys.exit(f"error: pip install {REQUIREMENTS[app]} into {venv()} failed")
    table = server_table(spindle)

    host = socket.gethostname()
    out_dir = Path(os.environ.get("RUN_DIR") or ROOT / "perf" / "runs" / f"{datetime.date.today()}-{host}")
    raw = out_dir / "frameworks-raw"
    raw.mkdir(parents=True, exist_ok=True)

    results: dict = {}
    apps: dict = {}
    for round_no in range(1, args.rounds + 1):
        for scenario in scenarios:
            cost = apps.setdefault(scenario, {"runs": []})
            if not cost.get("error"):
                try:
                    cost["runs"].append(app_cost(python, scenario, args.app_seconds))
                    print(f"round {round_no} {scenario:13s} {'app alone':17s} "
                          f"{cost['runs'][-1]['app_us']:8.1f} µs per call", file=sys.stderr)
                except (Failed, subprocess.TimeoutExpired, ValueError) as exc:
                    cost["error"] = str(exc)
                    print(f"round {round_no} {scenario:13s} app alone: {exc}", file=sys.stderr)
            shift = (round_no - 1) % len(servers)
            for server in servers[shift:] + servers[:shift]:
                entry = results.setdefault((server, scenario), {"runs": []})
                if entry.get("status") == "n/a" or (entry.get("status") == "failed" and not entry["runs"]):
                    continue  # known not to work here: not tried again
                try:
                    r = run_one(table, server, scenario, args, raw, round_no)
                except NotApplicable as exc:
                    entry.update(status="n/a", reason=str(exc))
                    print(f"round {round_no} {scenario:13s} {server:17s} n/a: {exc}", file=sys.stderr)
                    continue
                except (Failed, RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                    entry.update(status="failed", reason=str(exc))
                    print(f"round {round_no} {scenario:13s} {server:17s} failed: {exc}", file=sys.stderr)
                    continue
                entry["runs"].append(r)
                print(f"round {round_no} {scenario:13s} {server:17s} {r['rps']:9.0f} req/s "
                      f"{r['cpu_us']:7.1f} µs/req p99 {r['p99']:7.2f} ms {r['rss']:6.1f} MiB {r['errors']} errors"
                      + (f", {r['starved']} of {r['open']} starved" if r.get("starved") else ""), file=sys.stderr)

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "none"
    dirty = len(subprocess.run(["git", "-C", str(ROOT), "--no-optional-locks", "status", "--porcelain"],
                               capture_output=True, text=True).stdout.splitlines())
    dists = ("flask", "django", "granian", "gunicorn", "bjoern", "uwsgi")
    given = [f"--{k.replace('_', '-')} {getattr(args, k)}" for k, d in
             (("duration", 5), ("warmup", 1), ("rounds", 3), ("connections", 64), ("app_seconds", 1.0))
             if getattr(args, k) != d]
    if args.scenarios != ",".join(SCENARIOS):
        given.append(f"--scenarios {args.scenarios}")
    if args.servers != ",".join(SERVERS):
        given.append(f"--servers {args.servers}")
    meta = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": host, "python": pyver, "commit": commit, "dirty": dirty,
        "spindle": subprocess.run([spindle, "--version"], capture_output=True, text=True).stdout.split("\n")[0],
        "versions": ", ".join(f"{d} {dist_version(d)}" for d in dists),
        "command": " ".join(["perf/frameworks.py", *given]),
    }
    commands = {s: " ".join(["taskset", "-c", SERVER_CORE, *table[s][0]("PORT", Path("APPDIR"), "APP")])
                .replace(str(ROOT) + "/", "") for s in servers}
    text = report(results, apps, args, meta, scenarios, servers, commands)
    (out_dir / "frameworks.md").write_text(text)
    (out_dir / "frameworks.json").write_text(json.dumps({
        "meta": meta, "args": vars(args), "app_alone": apps,
        "servers": {f"{k[0]} {k[1]}": v for k, v in results.items()},
    }, indent=1))
    print(text)
    print(f"report: {out_dir / 'frameworks.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
