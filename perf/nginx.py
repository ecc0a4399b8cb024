"""Behind nginx: the same app (perf/apps/lab.py) behind one nginx, through each protocol
nginx speaks to application servers, Spindle against gunicorn and uWSGI, in one run.

Usage: python perf/nginx.py [--rounds 2] [--duration 5] [--warmup 2] [--connections 64]
                            [--rows ROW,ROW,...] [--scenarios hello,64k]
                            [--stack-core 0] [--wrk-core 1] [--out perf/runs/DIR/nginx.md]

Rows (each a fresh nginx and a fresh app server, one process each):

  spindle-direct      Spindle over HTTP, no nginx: the reference
  spindle-proxy       nginx proxy_pass, HTTP/1.1, upstream keepalive -> spindle --protocol http
  spindle-uwsgi       nginx uwsgi_pass -> spindle --protocol uwsgi (a connection per request)
  spindle-fastcgi-keep nginx fastcgi_pass, fastcgi_keep_conn on, upstream keepalive -> --protocol fastcgi
  spindle-fastcgi     the same without keep_conn (a connection per request)
  spindle-scgi        nginx scgi_pass -> spindle --protocol scgi (a connection per request)
  gunicorn-proxy      nginx proxy_pass, upstream keepalive -> gunicorn -w 1 -k gthread --threads 4
  uwsgi-uwsgi         nginx uwsgi_pass -> uwsgi --socket (one process, no master)
  uwsgi-proxy         nginx proxy_pass -> uwsgi --http-socket (one process, HTTP/1.0: a
                      connection per request; --http11-socket would let one keep-alive
                      connection from nginx hold the only process)

Spindle: --single-process --io-threads 1 --py-threads 1 --driver epoll. nginx: 1 worker
process, access_log off, the same buffers for every module (16k + 8 x 16k: a 64 KiB
response stays in memory), upstream keepalive 64 (as many as wrk's connections) where the
row keeps connections.

Pinning (2 cores): the serving stack, nginx and the app server, on --stack-core (0); wrk
alone on --wrk-core (1). req/s is what one core of nginx + app serves with the client off
that core; CPU per request is read for the app server and for nginx separately, from
/proc (user + system of every thread of each process tree, over the measured run,
divided by the requests wrk completed). Softirq time of the loopback traffic is charged
to no process and is in neither; the core-busy columns include it.

Before measuring, each row must answer GET / with 200 and "Hello, World!" and GET /64k
with 200 and 65536 bytes through nginx, else it is n/a with the reason. Rounds are
interleaved (the row order reverses each round), so the machine's drift hits every row
alike; the table shows the mean over the rounds and each round's req/s, so a noisy round
is visible rather than picked away.

Every wait is bounded, every wrk run too; all traffic on 127.0.0.1; only the processes
this script started are stopped, by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import harness

NGINX = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx"
ROWS = ("spindle-direct", "spindle-proxy", "spindle-uwsgi", "spindle-fastcgi-keep", "spindle-fastcgi",
        "spindle-scgi", "gunicorn-proxy", "uwsgi-uwsgi", "uwsgi-proxy")
SCENARIOS = {"hello": ("/", b"Hello, World!"), "64k": ("/64k", b"x" * 65536)}
BASE = "spindle-proxy"

# What nginx does with a row: the location block (PORT: the app server's port).
LOCATIONS = {
    "proxy-keep": """
    upstream app { server 127.0.0.1:PORT; keepalive 64; keepalive_requests 100000000; }""",
    "fastcgi-keep": """
    upstream app { server 127.0.0.1:PORT; keepalive 64; keepalive_requests 100000000; }""",
}
FRONT = {
    "spindle-proxy": "proxy-keep", "gunicorn-proxy": "proxy-keep", "uwsgi-proxy": "proxy",
    "spindle-uwsgi": "uwsgi", "uwsgi-uwsgi": "uwsgi", "spindle-fastcgi-keep": "fastcgi-keep",
    "spindle-fastcgi": "fastcgi", "spindle-scgi": "scgi",
}
BUFFERS = "{m}_buffer_size 16k; {m}_buffers 8 16k; {m}_busy_buffers_size 32k;"


def location(front: str, port: int) -> tuple[str, str]:
    """(http-level upstream block, location body) for a front."""
    if front == "proxy-keep":
        return (LOCATIONS[front].replace("PORT", str(port)),
                "proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; "
                "proxy_set_header Host $http_host; " + BUFFERS.format(m="proxy"))
    if front == "proxy":
        return ("", f"proxy_pass http://127.0.0.1:{port}; proxy_set_header Host $http_host; "
                + BUFFERS.format(m="proxy"))
    if front == "fastcgi-keep":
        return (LOCATIONS[front].replace("PORT", str(port)),
                "include /etc/nginx/fastcgi_params; fastcgi_pass app; fastcgi_keep_conn on; "
                + BUFFERS.format(m="fastcgi"))
    module = front  # uwsgi, fastcgi, scgi: a connection per request
    return ("", f"include /etc/nginx/{module}_params; {module}_pass 127.0.0.1:{port}; "
            + BUFFERS.format(m=module))


def nginx_conf(tmp: Path, listen: int, front: str, port: int) -> str:
    upstream, body = location(front, port)
    return f"""# Generated by perf/nginx.py: one worker, no access log, {front} to 127.0.0.1:{port}.
worker_processes 1;
{"user root;" if os.geteuid() == 0 else ""}
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    keepalive_timeout 65;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{upstream}
    server {{
        listen 127.0.0.1:{listen} backlog=1024;
        server_name localhost;
        location / {{ {body} }}
    }}
}}
"""


def app_command(row: str, port: int, venv: Path, spindle: str) -> tuple[list[str], int]:
    """The app server's command (run in perf/apps) and the signal that stops it."""
    if row.startswith("spindle-"):
        protocol = {"direct": "http", "proxy": "http", "uwsgi": "uwsgi", "fastcgi-keep": "fastcgi",
                    "fastcgi": "fastcgi", "scgi": "scgi"}[row.split("-", 1)[1]]
        return ([spindle, "--bind", f"127.0.0.1:{port}", "--single-process", "--io-threads", "1",
                 "--py-threads", "1", "--driver", "epoll", "--protocol", protocol, "--log-level", "warn",
                 "--pythonpath", str(harness.APPS), "lab:app"], signal.SIGTERM)
    if row == "gunicorn-proxy":
        return ([str(venv / "bin/gunicorn"), "-w", "1", "-k", "gthread", "--threads", "4",
                 "-b", f"127.0.0.1:{port}", "lab:app"], signal.SIGTERM)
    socket_flag = "--socket" if row == "uwsgi-uwsgi" else "--http-socket"
    # Without a master, SIGTERM means "reload" to uWSGI; SIGINT means exit.
    return ([str(venv / "bin/uwsgi"), socket_flag, f"127.0.0.1:{port}", "--wsgi-file", "lab.py",
             "--callable", "app", "--processes", "1", "--single-interpreter", "--disable-logging",
             "--listen", "1024", "--buffer-size", "32768"], signal.SIGINT)


def wait_listening(port: int, proc: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not listening on {port} after {timeout:.0f} s")
            time.sleep(0.05)


def check(port: int) -> str | None:
    """None when / and /64k answer right, else what is wrong."""
    for path, want in SCENARIOS.values():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                status, body = r.status, r.read()
        except Exception as e:  # noqa: BLE001 - any failure is the row's reason
            return f"GET {path}: {e}"
        if status != 200 or body != want:
            return f"GET {path}: status {status}, {len(body)} bytes, not the expected body"
    return None


def cpu_s(pid: int) -> float:
    return sum(harness.thread_cpu(pid).values())


def core_times() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies of each cpuN from /proc/stat (idle and iowait are not busy)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if re.match(r"cpu\d+ ", line):
                name, *vals = line.split()
                vals = [int(v) for v in vals[:8]]
                out[name] = (sum(vals) - vals[3] - vals[4], sum(vals), vals[5] + vals[6])
    return out


def all_cpu() -> dict[int, float]:
    """CPU seconds so far of every process on the machine (its threads, live and reaped)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def others(before: dict[int, float], after: dict[int, float], ours: set[int]) -> float:
    """CPU seconds of the processes alive at both readings that are not ours (wrk, started
    and reaped between them, is in neither)."""
    return sum(after[p] - before[p] for p in before.keys() & after.keys() if p not in ours)


def core_busy(before: dict, after: dict, core: str, what: int = 0) -> float:
    """Share of the core's time busy (what=0) or in irq + softirq (what=2)."""
    b1, t1 = after[f"cpu{core}"][what], after[f"cpu{core}"][1]
    b0, t0 = before[f"cpu{core}"][what], before[f"cpu{core}"][1]
    return (b1 - b0) / (t1 - t0) if t1 > t0 else float("nan")


def run_row(row: str, args, venv: Path, spindle: str, raw: Path, round_no: int) -> dict:
    """One row, every scenario: {scenario: result} or {"na": reason}."""
    stack = ["taskset", "-c", args.stack_core]
    app_port = harness.free_port()
    cmd, stop_sig = app_command(row, app_port, venv, spindle)
    logs = []
    tmp = Path(tempfile.mkdtemp(prefix=f"nginxlab-{row}-"))
    app_log = open(tmp / "app.log", "w")
    app = subprocess.Popen([*stack, *cmd], cwd=harness.APPS, stdout=app_log, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL)
    nginx = None
    results: dict = {}
    try:
        wait_listening(app_port, app, row)
        port = app_port
        if row != "spindle-direct":
            port = harness.free_port()
            for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (tmp / d).mkdir()
            conf = nginx_conf(tmp, port, FRONT[row], app_port)
            (tmp / "nginx.conf").write_text(conf)
            if round_no == 0:
                (raw / f"nginx-{row}.conf").write_text(conf.replace(str(tmp), "$TMP"))
            nginx = subprocess.Popen([*stack, NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf"),
                                      "-g", f"daemon off; pid {tmp}/nginx.pid;"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            wait_listening(port, nginx, "nginx")
        reason = check(port)
        if reason:
            return {"na": reason}
        for scenario in args.scenarios:
            url = f"http://127.0.0.1:{port}{SCENARIOS[scenario][0]}"
            harness.wrk(url, args.warmup, args.connections, timeout="2s", cores=args.wrk_core)
            harness.reset_peak_rss(app.pid)
            before_app, before_nginx = cpu_s(app.pid), cpu_s(nginx.pid) if nginx else 0.0
            ours = set(harness.tree_pids(app.pid)) | (set(harness.tree_pids(nginx.pid)) if nginx else set())
            ours.add(os.getpid())
            procs_before = all_cpu()
            cores_before, t0 = core_times(), time.monotonic()
            wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            result = harness.wrk(url, args.duration, args.connections, timeout="2s", cores=args.wrk_core)
            wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cores_after, wall = core_times(), time.monotonic() - t0
            # wrk is the only child reaped meanwhile: its CPU is the difference
            wrk_cpu = (wrk_after.ru_utime + wrk_after.ru_stime) - (wrk_before.ru_utime + wrk_before.ru_stime)
            other = others(procs_before, all_cpu(), ours) / wall
            app_cpu = cpu_s(app.pid) - before_app
            nginx_cpu = (cpu_s(nginx.pid) - before_nginx) if nginx else 0.0
            m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", result["raw"])
            requests = int(m.group(1)) if m else result["rps"] * args.duration
            result.update(
                requests=requests,
                app_us=app_cpu / requests * 1e6 if requests else float("nan"),
                nginx_us=nginx_cpu / requests * 1e6 if requests and nginx else float("nan"),
                rss=harness.peak_rss_mib(app.pid),
                stack_busy=core_busy(cores_before, cores_after, args.stack_core),
                wrk_busy=core_busy(cores_before, cores_after, args.wrk_core),
                other=other,
                app_share=app_cpu / wall,
                nginx_share=nginx_cpu / wall,
                wrk_share=wrk_cpu / wall,
            )
            (raw / f"{row}-{scenario}-r{round_no + 1}.txt").write_text(result.pop("raw"))
            results[scenario] = result
            if app.poll() is not None or (nginx and nginx.poll() is not None):
                return {"na": "a process died during the run (see raw/)"}
        if nginx:
            log = (tmp / "error.log").read_text()
            errors = [line for line in log.splitlines() if "[error]" in line or "[crit]" in line]
            if errors:
                results["nginx_errors"] = len(errors)
                (raw / f"{row}-nginx-errors-r{round_no + 1}.log").write_text("\n".join(errors[:50]) + "\n")
        return results
    except Exception as e:  # noqa: BLE001
        return {"na": f"{e}"}
    finally:
        if nginx:
            harness.stop(nginx, signal.SIGTERM)
        harness.stop(app, stop_sig)
        app_log.close()
        text = (tmp / "app.log").read_text(errors="replace")
        if round_no == 0 or results.get("na"):
            (raw / f"{row}-app-r{round_no + 1}.log").write_text(text[-20000:])
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def ratio(x: float, base: float) -> str:
    return f"{x / base:.2f}" if x == x and base == base and base else "—"


def mean(xs):
    xs = [x for x in xs if x == x]
    return statistics.fmean(xs) if xs else float("nan")


def report(rows, scenarios, results, args, versions, command) -> str:
    lines = [
        "# Behind nginx (perf/nginx.py)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, commit {versions['commit']}. `perf/apps/lab.py` on every backend, "
        f"one process each; nginx 1 worker, `access_log off`. nginx and the app server pinned together to core "
        f"{args.stack_core}, wrk (`-t1 -c{args.connections}`, keep-alive to nginx, `--timeout 2s`) alone on core "
        f"{args.wrk_core}. {args.warmup} s warm-up, then {args.duration} s measured, {args.rounds} interleaved "
        "round(s) (the row order reverses each round); each figure is the mean over the rounds, and the req/s of "
        "each round is in the last column.",
        "",
        "Columns: **app µs/req** and **nginx µs/req**: user + system CPU of each process tree over the measured "
        "run over wrk's completed requests; **stack µs/req** their sum; **CPU % app / nginx / wrk**: each one's CPU time over the run's wall time (wrk's from getrusage of the reaped child): app + nginx near 100% means the stack's core was the limit, wrk near 100% that the client was; **core %**: busy share of the stack's "
        "core and of wrk's core (/proc/stat, softirq included); **other %**: CPU of every other process on the machine (both cores; kernel threads included) over the measured run, in % of one core: another tenant; at 10% and above the row is suspect; **peak RSS**: the app server's VmHWM, reset "
        "before the measured run. **× proxy**: over the `spindle-proxy` row of the same scenario.",
        "",
    ]
    for scenario in scenarios:
        lines += [f"## {scenario} ({SCENARIOS[scenario][0]}, {len(SCENARIOS[scenario][1])} bytes)", "",
                  "| row | nginx → app | req/s | × proxy | p50 ms | p99 ms | errors | app µs/req | nginx µs/req "
                  "| stack µs/req | × proxy | app peak RSS MiB | CPU % app / nginx / wrk | core % stack / wrk | other % | req/s per round |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---|"]
        base = results.get(BASE, [])
        base_rps = mean(r[scenario]["rps"] for r in base if scenario in r)
        base_cpu = mean(r[scenario]["app_us"] + r[scenario]["nginx_us"] for r in base if scenario in r)
        for row in rows:
            rounds = results[row]
            ok = [r[scenario] for r in rounds if scenario in r]
            front = "— (direct HTTP)" if row == "spindle-direct" else FRONT[row]
            if not ok:
                reason = next((r["na"] for r in rounds if "na" in r), "no result")
                lines.append(f"| {row} | {front} | n/a: {reason} |" + " |" * 13)
                continue
            rps = mean(r["rps"] for r in ok)
            app_us = mean(r["app_us"] for r in ok)
            nginx_us = mean(r["nginx_us"] for r in ok)
            stack_us = app_us + (nginx_us if nginx_us == nginx_us else 0.0)
            errors = sum(r["errors"] for r in ok)
            lines.append(
                f"| {row} | {front} | {rps:.0f} | {ratio(rps, base_rps)} | {mean(r['p50'] for r in ok):.2f} "
                f"| {mean(r['p99'] for r in ok):.2f} | {errors} | {app_us:.1f} "
                f"| {'—' if nginx_us != nginx_us else f'{nginx_us:.1f}'} | {stack_us:.1f} "
                f"| {ratio(stack_us, base_cpu)} | {max(r['rss'] for r in ok):.1f} "
                f"| {mean(r['app_share'] for r in ok) * 100:.0f} / {mean(r['nginx_share'] for r in ok) * 100:.0f} / "
                f"{mean(r['wrk_share'] for r in ok) * 100:.0f} "
                f"| {mean(r['stack_busy'] for r in ok) * 100:.0f} / {mean(r['wrk_busy'] for r in ok) * 100:.0f} "
                f"| {mean(r['other'] for r in ok) * 100:.0f} | {', '.join('%.0f' % r['rps'] for r in ok)} |")
        lines.append("")
    odd = []
    for row in rows:
        for i, r in enumerate(results[row]):
            if "na" in r:
                odd.append(f"- {row}, round {i + 1}: n/a: {r['na']}")
            if r.get("nginx_errors"):
                odd.append(f"- {row}, round {i + 1}: {r['nginx_errors']} error lines in nginx's error log "
                           f"(raw/{row}-nginx-errors-r{i + 1}.log)")
            for scenario in scenarios:
                if scenario in r and r[scenario]["errors"]:
                    odd.append(f"- {row} {scenario}, round {i + 1}: {r[scenario]['errors']} wrk errors")
    busy = [r[s]["other"] for row in rows for r in results[row] for s in scenarios if s in r]
    noisy = [x for x in busy if x >= 0.10]
    if noisy:
        odd.append(f"- the machine was not quiet: in {len(noisy)} of {len(busy)} measured runs other processes kept "
                   f"10% or more of a core busy ({min(busy) * 100:.0f}% to {max(busy) * 100:.0f}%, median "
                   f"{statistics.median(busy) * 100:.0f}%): absolute req/s and µs are inflated; ratios within the "
                   "run hold better (every row shared the machine alike, rounds interleaved)")
    if odd:
        lines += ["## Anything odd", "", *odd, ""]
    lines += [
        "## How it was run", "",
        "```sh", command, "```", "",
        f"Versions: {versions['nginx']}; Spindle {versions['spindle']}; gunicorn {versions['gunicorn']}; "
        f"uWSGI {versions['uwsgi']}; Python {versions['python']}; {versions['wrk']}; kernel {versions['kernel']}.",
        "",
        "App server commands (from `perf/apps/`, each prefixed with "
        f"`taskset -c {args.stack_core}`; PORT a free port):", "",
        "| row | command |", "|---|---|",
    ]
    for row in rows:
        cmd, sig = app_command(row, 0, Path(f"build/{versions['venv']}"), "spindle")
        text = " ".join(cmd).replace("127.0.0.1:0", "127.0.0.1:PORT").replace(str(harness.APPS), "perf/apps")
        lines.append(f"| {row} | `{text}` (stopped with {signal.Signals(sig).name}) |")
    lines += ["", "nginx: `taskset -c %s nginx -p $TMP -c $TMP/nginx.conf -g 'daemon off; pid $TMP/nginx.pid;'`, "
              "stopped with SIGTERM; each row's nginx.conf is in `raw/nginx-<row>.conf`; wrk's output of every "
              "measured run in `raw/<row>-<scenario>-r<round>.txt`." % args.stack_core, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--scenarios", default="hello,64k")
    parser.add_argument("--stack-core", default="0")
    parser.add_argument("--wrk-core", default="1")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    for name in rows:
        if name not in ROWS:
            sys.exit(f"unknown row {name}; rows: {', '.join(ROWS)}")
    for name in args.scenarios:
        if name not in SCENARIOS:
            sys.exit(f"unknown scenario {name}; scenarios: {', '.join(SCENARIOS)}")
    out = args.out or harness.ROOT / "perf" / "runs" / f"{time.strftime('%Y-%m-%d')}-vm-nginx" / "nginx.md"
    raw = out.parent / "raw"
    raw.mkdir(parents=True, exist_ok=True)

    spindle = harness.spindle_bin()
    venv = harness.venv()
    if any(r.startswith("gunicorn") for r in rows):
        harness.peer("gunicorn")
    if any(r.startswith("uwsgi") for r in rows):
        harness.peer("uwsgi")

    def run(cmd):
        done = subprocess.run(cmd, capture_output=True, text=True)
        return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else "?"

    dirty = len(run_lines(["git", "-C", str(harness.ROOT), "status", "--porcelain"]))
    versions = {
        "commit": run(["git", "-C", str(harness.ROOT), "rev-parse", "--short", "HEAD"])
                  + (f" ({dirty} files changed or untracked)" if dirty else ""),
        "nginx": run([NGINX, "-v"]).replace("nginx version: ", ""),
        "spindle": run([spindle, "--version"]),
        "gunicorn": harness.dist_version("gunicorn"),
        "uwsgi": harness.dist_version("uwsgi"),
        "python": run([str(venv / "bin/python"), "-c", "import sys; print(sys.version.split()[0])"]),
        "wrk": run(["wrk", "-v"]).split(" Copyright")[0],
        "kernel": os.uname().release,
        "venv": venv.name,
    }
    env = " ".join(f"{k}={os.environ[k]}" for k in ("SPINDLE_PYTHON", "SPINDLE_BIN", "PERF_VENV") if os.environ.get(k))
    python = os.path.relpath(sys.executable, harness.ROOT) if sys.executable.startswith(str(harness.ROOT)) else "python"
    command = " ".join(x for x in (env, python, "perf/nginx.py", *sys.argv[1:]) if x)

    results: dict[str, list[dict]] = {r: [] for r in rows}
    for round_no in range(args.rounds):
        order = rows if round_no % 2 == 0 else list(reversed(rows))
        for row in order:
            r = run_row(row, args, venv, spindle, raw, round_no)
            results[row].append(r)
            if "na" in r:
                print(f"round {round_no + 1} {row:>21}: n/a: {r['na']}", flush=True)
            for scenario in args.scenarios:
                if scenario in r:
                    s = r[scenario]
                    print(f"round {round_no + 1} {row:>21} {scenario:>5}: {s['rps']:8.0f} req/s, p99 {s['p99']:.2f} ms, "
                          f"errors {s['errors']}, app {s['app_us']:.1f} µs, nginx {s['nginx_us']:.1f} µs, "
                          f"RSS {s['rss']:.1f} MiB, cpu app/nginx/wrk {s['app_share'] * 100:.0f}/{s['nginx_share'] * 100:.0f}/"
                          f"{s['wrk_share'] * 100:.0f}%, cores {s['stack_busy'] * 100:.0f}/{s['wrk_busy'] * 100:.0f}%, "
                          f"other {s['other'] * 100:.0f}%",
                          flush=True)
    text = report(rows, args.scenarios, results, args, versions, command)
    print(text)
    out.write_text(text)
    (raw / "nginx.json").write_text(json.dumps({"command": command, "versions": versions, "results": results},
                                               indent=1, default=str))


def run_lines(cmd: list[str]) -> list[str]:
    return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()


if __name__ == "__main__":
    main()
