#!/usr/bin/env python3
"""Large uploads (issue 13): one connection sends a large request body (1 GiB by default)
that the app reads in 64 KiB pieces (perf/apps/upload.py, which answers the byte count),
on Spindle and its peers, one serving process each.

Modes (--modes, both by default):
  chunked   Transfer-Encoding: chunked, chunks of --chunk KiB (64)
  length    Content-Length
Servers (--servers), each pinned to core 0 (taskset), all on the perf venv's Python
(build/perf-venv-<X.Y>, see perf/harness.py), serving upload:app from perf/apps:
  spindle-epoll     spindle --single-process --io-threads 1 --py-threads 1 --driver epoll
  spindle-uring     the same with --driver io-uring
  granian           --interface wsgi --workers 1 --blocking-threads 1 --http 1 --no-ws
  gunicorn-gthread  -k gthread -w 1 --threads 4
  bjoern            perf/apps/bjoern_run.py HOST PORT upload:app
  uwsgi             --http11-socket, --processes 1, no master (as perf/lab.sh runs it),
                    plus --http-chunked-input (which is the HTTP router's option: the check
                    below says whether its wsgi.input then sees a chunked body)
  sink              (only when named) not a WSGI server: a raw socket on core 0 that
                    discards whatever arrives and answers the raw byte count; what the
                    client can push at most (the client ceiling)

The client runs in its own process on core 1 (this script with --client): a raw socket,
one connection, the request head, then the body with `sendall` of memoryviews over one
pre-built buffer of --buffer MiB (16), already framed for the mode (for chunked: whole
chunks with their size lines, the last one `0\\r\\n\\r\\n`), so sending costs the client
one system call per buffer and no Python per chunk. The clock runs from the first byte
sent to the last byte of the answer; the answer must be 200 with the exact body size,
or the run is "wrong" (n/a for that mode, with the answer).

Each round starts every server once (the order rotating by one each round, so a
neighbour's load hits them all alike), waits until `GET /` answers 200 (30 s at most),
checks a 1 MiB upload in each mode, then for each mode: peak RSS reset (clear_refs),
the server's process tree's CPU time (/proc, every thread) read, one upload, both read
again; then it is stopped by PID (SIGTERM, SIGINT for uWSGI, SIGKILL after 15 s).
Per server and mode the report gives the median MiB/s over the rounds and every
round's, the server's CPU seconds per GiB (user + system), its peak RSS (VmHWM summed
over the tree; a server that buffers the whole body shows it here), the client's CPU
share of its core (near 100%: the client was the limit), the other load (busy time of
both cores, read by the client around the upload, that neither the server nor the client
accounts for: a neighbour), and the ratio to the best peer (the fastest server that is not
Spindle or the sink) and to spindle-epoll.

Usage: perf/upload.py [--mib 1024] [--chunk 64] [--modes chunked,length] [--rounds 3]
                      [--servers spindle-epoll,...] [--buffer 16]
  SPINDLE_BIN (default: this checkout's wheel, installed into the perf venv), SPINDLE_PYTHON;
  RUN_DIR (default perf/runs/<date>-<host>).
Writes RUN_DIR/upload.md and upload.json and prints the tables. All traffic goes to
127.0.0.1; only processes this script started are stopped, by PID.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import (APPS, ROOT, dist_version, free_port, log_tail as tail, peak_rss_mib, peer, reset_peak_rss,
                     spindle_bin, stop, thread_cpu, venv)

SERVER_CORE, CLIENT_CORE = "0", "1"
SERVERS = ["spindle-epoll", "spindle-uring", "granian", "gunicorn-gthread", "bjoern", "uwsgi"]
EXTRA_SERVERS = ["sink"]
MODES = ["chunked", "length"]
MIB = 1 << 20
CHECK_MIB = 1


# ---------------------------------------------------------------- the client (its own process)

def body_buffer(mode: str, buffer_mib: int, chunk_kib: int) -> tuple[bytes, int]:
    """One pre-built send buffer for the mode and the body bytes it carries."""
    payload = buffer_mib * MIB
    if mode == "length":
        return b"\x5a" * payload, payload
    chunk = chunk_kib * 1024
    one = b"%x\r\n" % chunk + b"\x5a" * chunk + b"\r\n"
    count = max(1, payload // chunk)
    return one * count, count * chunk


def client(port: int, mode: str, mib: int, chunk_kib: int, buffer_mib: int) -> dict:
    """Sends `mib` MiB in `mode` over one connection; returns timings and the answer."""
    buffer_mib = min(buffer_mib, mib)
    if mib % buffer_mib or (mode == "chunked" and (buffer_mib * MIB) % (chunk_kib * 1024)):
        raise SystemExit(f"--mib {mib} must be a multiple of the buffer ({buffer_mib} MiB), and the buffer of "
                         f"the chunk ({chunk_kib} KiB)")
    total = mib * MIB
    block, carried = body_buffer(mode, buffer_mib, chunk_kib)
    repeats = total // carried
    framing = (b"Transfer-Encoding: chunked\r\n" if mode == "chunked" else b"Content-Length: %d\r\n" % total)
    head = (b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/octet-stream\r\n" % port
            + framing + b"\r\n")
    view = memoryview(block)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    # Bounded: at 50 MiB/s, the slowest rate worth measuring, plus a minute.
    sock.settimeout(60 + total / (50 * MIB))
    busy0 = cores_busy()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    sock.sendall(head)
    for _ in range(repeats):
        sock.sendall(view)
    if mode == "chunked":
        sock.sendall(b"0\r\n\r\n")
    t_sent = time.perf_counter()
    answer = b""
    status, length = None, None
    while True:
        data = sock.recv(65536)
        if not data:
            break
        answer += data
        end = answer.find(b"\r\n\r\n")
        if end >= 0 and length is None:
            lines = answer[:end].split(b"\r\n")
            status = int(lines[0].split()[1])
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length is None:  # no Content-Length: the answer ends with the connection
                length = -1
        if length is not None and length >= 0 and len(answer) >= answer.find(b"\r\n\r\n") + 4 + length:
            break
    t1 = time.perf_counter()
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    busy1 = cores_busy()
    sock.close()
    end = answer.find(b"\r\n\r\n")
    body = answer[end + 4:] if end >= 0 else b""
    return {
        "seconds": t1 - t0,
        "send_seconds": t_sent - t0,
        "status": status,
        "body": body[:200].decode("latin-1"),
        "client_cpu": (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime),
        "bytes": total,
        "cores_busy": sum(busy1.values()) - sum(busy0.values()),
    }


def run_client(port: int, mode: str, mib: int, chunk_kib: int, buffer_mib: int) -> dict:
    cmd = ["taskset", "-c", CLIENT_CORE, sys.executable, str(Path(__file__).resolve()), "--client", str(port),
           mode, str(mib), str(chunk_kib), str(buffer_mib)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180 + mib / 50)
    if done.returncode != 0:
        raise Failed(f"client failed: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the sink (its own process)

def sink(port: int) -> None:
    """Accepts connections; for each, reads the head, then discards the body (Content-Length
    bytes, or up to the chunked body's last-chunk line: the end is looked for, not parsed)
    and answers the raw body bytes received. What the client can push at most."""
    listener = socket.create_server(("127.0.0.1", port), backlog=16)
    print("listening on", port, flush=True)
    buf = bytearray(4 * MIB)
    view = memoryview(buf)
    while True:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                more = conn.recv(65536)
                if not more:
                    break
                data += more
            head, _, rest = data.partition(b"\r\n\r\n")
            lower = head.lower()
            received = len(rest)
            if b"content-length:" in lower:
                want = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                while received < want:
                    n = conn.recv_into(view)
                    if not n:
                        break
                    received += n
            elif b"transfer-encoding: chunked" in lower:
                tail = rest[-16:]
                while not tail.endswith(b"\r\n0\r\n\r\n"):
                    n = conn.recv_into(view)
                    if not n:
                        break
                    received += n
                    tail = (tail + bytes(view[max(0, n - 16):n]))[-16:]
            body = str(received).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


# ---------------------------------------------------------------- servers

class NotApplicable(Exception):
    """The server cannot serve this mode (the reason is the message)."""


class Failed(Exception):
    """The server did not start, died, or the client failed (the reason is the message)."""


def clean_env() -> dict:
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH"):
        env.pop(name, None)
    return env


def server_table(spindle: str, wanted: list[str]) -> dict:
    """name -> (command for a port, stop signal, why it cannot run or None)."""
    bin_dir = venv() / "bin"
    py = str(bin_dir / "python")
    installed = {d: peer(d) is not None for d in ("gunicorn", "granian", "uwsgi") if d in " ".join(wanted)}
    if "bjoern" in wanted:
        ok = subprocess.run([py, "-c", "import bjoern"], capture_output=True).returncode == 0
        if not ok:
            subprocess.run([py, "-m", "pip", "install", "-q", "bjoern"], capture_output=True, timeout=600)
            ok = subprocess.run([py, "-c", "import bjoern"], capture_output=True).returncode == 0
        installed["bjoern"] = ok

    def spindle_cmd(driver):
        return lambda port: [spindle, "--bind", f"127.0.0.1:{port}", "--single-process", "--io-threads", "1",
                             "--py-threads", "1", "--driver", driver, "--pythonpath", str(APPS),
                             "--log-level", "info", "upload:app"]

    def missing(dist, extra=""):
        return None if installed.get(dist) else f"not installed: pip install {dist} failed{extra}"

    return {
        "spindle-epoll": (spindle_cmd("epoll"), signal.SIGTERM, None),
        "spindle-uring": (spindle_cmd("io-uring"), signal.SIGTERM, None),
        "granian": (lambda port: [
            str(bin_dir / "granian"), "--interface", "wsgi", "--workers", "1", "--blocking-threads", "1",
            "--http", "1", "--no-ws", "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(APPS),
            "--log-level", "warning", "upload:app"], signal.SIGTERM, missing("granian")),
        "gunicorn-gthread": (lambda port: [
            str(bin_dir / "gunicorn"), "-k", "gthread", "-w", "1", "--threads", "4", "-b", f"127.0.0.1:{port}",
            "--chdir", str(APPS), "--log-level", "warning", "upload:app"], signal.SIGTERM, missing("gunicorn")),
        "bjoern": (lambda port: [py, str(APPS / "bjoern_run.py"), "127.0.0.1", str(port), "upload:app"],
                   signal.SIGTERM, missing("bjoern", " (it needs libev-dev)")),
        # One process, no master: SIGTERM means "reload" there and SIGINT "exit".
        "uwsgi": (lambda port: [
            str(bin_dir / "uwsgi"), "--http11-socket", f"127.0.0.1:{port}", "--pythonpath", str(APPS),
            "--module", "upload:app", "--processes", "1", "--single-interpreter", "--disable-logging",
            "--listen", "1024", "--buffer-size", "32768", "--http-chunked-input"], signal.SIGINT, missing("uwsgi")),
        "sink": (lambda port: [py, str(Path(__file__).resolve()), "--sink", str(port)], signal.SIGTERM, None),
    }


def wait_listening(port: int, proc: subprocess.Popen, log: Path, server: str, timeout: float = 30.0) -> None:
    """Until `GET /` answers 200 (the sink: until it accepts), `timeout` s at most."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failed(f"did not start: exited with {proc.returncode}: {tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if server == "sink":
                    return
                s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                answer = s.recv(4096)
            if answer.startswith(b"HTTP/1.") and answer.split(b" ", 2)[1] == b"200":
                return
            last = repr(answer[:80])
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.05)
    raise Failed(f"did not answer 200 on / within {timeout:.0f} s ({last}): {tail(log)}")


def tree_cpu(pid: int) -> float:
    return sum(thread_cpu(pid).values())


def cores_busy() -> dict[str, float]:
    """CPU seconds so far of cores 0 and 1 spent on neither idle nor interrupts (user, nice,
    system, steal)."""
    busy = {}
    with open("/proc/stat") as f:
        for line in f:
            name = line.split(" ", 1)[0]
            if name in (f"cpu{SERVER_CORE}", f"cpu{CLIENT_CORE}"):
                v = [int(x) for x in line.split()[1:]]
                busy[name] = (v[0] + v[1] + v[2] + v[7]) / os.sysconf("SC_CLK_TCK")
    return busy


def answer_problem(result: dict, server: str, mode: str, mib: int, chunk_kib: int) -> str | None:
    if result["status"] != 200:
        return f"status {result['status']}, body {result['body'][:120]!r}"
    want = mib * MIB
    if server == "sink" and mode == "chunked":  # raw bytes, framing included
        chunk = chunk_kib * 1024
        want = want // chunk * (len(b"%x\r\n" % chunk) + chunk + 2) + 5
    if result["body"] != str(want):
        return f"answered {result['body'][:120]!r}, not {want}"
    return None


def run_server(table: dict, server: str, modes: list[str], args, raw: Path, round_no: int) -> dict:
    """One start of a server: the check, then one measured upload per mode."""
    command, stop_signal, na = table[server]
    if na:
        return {mode: {"na": na} for mode in modes}
    port = free_port()
    log = raw / f"{server}--r{round_no}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["taskset", "-c", SERVER_CORE, *command(port)], cwd=APPS, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=clean_env())
    results: dict = {}
    try:
        try:
            wait_listening(port, proc, log, server)
        except Failed as exc:
            return {mode: {"failed": str(exc)} for mode in modes}
        for mode in modes:
            try:
                check = run_client(port, mode, CHECK_MIB, args.chunk, CHECK_MIB)
                problem = answer_problem(check, server, mode, CHECK_MIB, args.chunk)
                if problem:
                    why = ""
                    if server == "uwsgi" and mode == "chunked":
                        why = ("; uWSGI does not de-chunk request bodies into wsgi.input (--http-chunked-input "
                               "is its HTTP router's option): only its own uwsgi.chunked_read() API sees them")
                    results[mode] = {"na": f"check failed ({CHECK_MIB} MiB): {problem}{why}"}
                    continue
                reset_peak_rss(proc.pid)
                cpu0 = tree_cpu(proc.pid)
                result = run_client(port, mode, args.mib, args.chunk, args.buffer)
                cpu1 = tree_cpu(proc.pid)
                problem = answer_problem(result, server, mode, args.mib, args.chunk)
                if problem:
                    results[mode] = {"na": f"wrong answer: {problem}"}
                    continue
                result["server_cpu"] = cpu1 - cpu0
                result["rss"] = peak_rss_mib(proc.pid)
                result["mib_s"] = args.mib / result["seconds"]
                # Busy time of the two cores that neither the server nor the client accounts
                # for: another tenant (a neighbour's build), in cores over the upload's time.
                result["other"] = max(0.0, result["cores_busy"] - result["server_cpu"]
                                      - result["client_cpu"]) / result["seconds"]
                results[mode] = result
            except (Failed, subprocess.TimeoutExpired, OSError, ValueError) as exc:
                results[mode] = {"failed": f"{exc!r}"[:400]}
            if proc.poll() is not None:
                for rest in modes:
                    results.setdefault(rest, {"failed": f"the server exited ({proc.returncode}): {tail(log)}"})
                break
    finally:
        stop(proc, stop_signal)
    return results


# ---------------------------------------------------------------- the report

def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def summarize(rows: dict, servers: list[str], modes: list[str]) -> dict:
    """server -> mode -> medians (or why not)."""
    out: dict = {}
    for server in servers:
        for mode in modes:
            runs = rows[server][mode]
            good = [r for r in runs if "mib_s" in r]
            if not good:
                bad = next((r for r in runs if "na" in r), None) or next((r for r in runs if "failed" in r), {})
                out.setdefault(server, {})[mode] = {"reason": bad.get("na") or f"failed: {bad.get('failed', '?')}",
                                                    "na": "na" in bad}
                continue
            gib = good[0]["bytes"] / (1 << 30)
            out.setdefault(server, {})[mode] = {
                "mib_s": statistics.median(r["mib_s"] for r in good),
                "rounds": [r["mib_s"] for r in good],
                "cpu_per_gib": statistics.median(r["server_cpu"] / gib for r in good),
                "rss": max(r["rss"] for r in good),
                "client_share": statistics.median(r["client_cpu"] / r["seconds"] for r in good),
                "other": statistics.median(r["other"] for r in good),
                "failed_rounds": len(runs) - len(good),
            }
    return out


def report(summary: dict, servers: list[str], modes: list[str], args, meta: dict) -> str:
    lines = [
        "# Large uploads (perf/upload.py)",
        "",
        f"- {meta['when']}, {meta['host']}, {os.cpu_count()} cores, commit {meta['commit']}"
        f"{' (' + meta['dirty'] + ' files changed)' if meta['dirty'] else ''}; Python {meta['python']}; "
        f"{meta['spindle']}; {meta['versions']}",
        f"- one connection, a {args.mib} MiB body, app `perf/apps/upload.py` reading `wsgi.input` in 64 KiB "
        f"pieces; chunked: chunks of {args.chunk} KiB; client: raw socket, `sendall` of a pre-built "
        f"{min(args.buffer, args.mib)} MiB buffer, on core {CLIENT_CORE}; server on core {SERVER_CORE}",
        f"- {args.rounds} round(s), servers interleaved (the order rotates each round); medians shown",
        "- MiB/s: body MiB over the time from the first byte sent to the whole answer; CPU s/GiB: the "
        "server's user + system time (every thread of its process tree) per GiB of body; peak RSS: "
        "VmHWM summed over the tree, reset before the upload; client core: the client's CPU over the "
        "upload's time (near 100%: the client was the limit); other load: busy time of the two cores that "
        "neither accounts for (another tenant), in % of one core",
        "",
    ]
    peers = [s for s in servers if not s.startswith("spindle") and s != "sink"]
    for mode in modes:
        best = max((s for s in peers if "mib_s" in summary[s][mode]), key=lambda s: summary[s][mode]["mib_s"],
                   default=None)
        best_rate = summary[best][mode]["mib_s"] if best else None
        base = summary.get("spindle-epoll", {}).get(mode, {}).get("mib_s")
        title = f"chunked, {args.chunk} KiB chunks" if mode == "chunked" else "Content-Length"
        lines += [f"## {title}", "",
                  "| server | MiB/s | x best peer | x spindle-epoll | CPU s/GiB | peak RSS MiB | client core "
                  "| other load | every round MiB/s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for server in servers:
            s = summary[server][mode]
            if "mib_s" not in s:
                lines.append(f"| {server} | {'n/a' if s['na'] else 'failed'}: {s['reason']} | | | | | | | |")
                continue
            ratio_best = f"{s['mib_s'] / best_rate:.2f}" if best_rate else "—"
            ratio_base = f"{s['mib_s'] / base:.2f}" if base else "—"
            rounds = ", ".join(fmt(r) for r in s["rounds"])
            if s["failed_rounds"]:
                rounds += f" ({s['failed_rounds']} failed)"
            lines.append(f"| {server} | {fmt(s['mib_s'])} | {ratio_best} | {ratio_base} | {s['cpu_per_gib']:.2f} | "
                         f"{s['rss']:.1f} | {s['client_share'] * 100:.0f}% | {s['other'] * 100:.0f}% | {rounds} |")
        lines.append("")
        if best:
            for spindle in ("spindle-epoll", "spindle-uring"):
                s = summary.get(spindle, {}).get(mode, {})
                if "mib_s" in s:
                    verdict = "meets" if s["mib_s"] >= best_rate else "misses"
                    lines.append(f"- {spindle}: {fmt(s['mib_s'])} MiB/s against the best peer's ({best}) "
                                 f"{fmt(best_rate)}: {s['mib_s'] / best_rate:.2f}x, {verdict} issue 13's target "
                                 "(>= 1.0x)")
            lines.append("")
    busy = [s for s in servers for m in modes if summary[s][m].get("client_share", 0) > 0.9]
    if busy:
        lines += [f"Client-bound (client core over 90%): {', '.join(sorted(set(busy)))}: their MiB/s is a floor; "
                  "compare CPU s/GiB.", ""]
    noisy = [s for s in servers for m in modes if summary[s][m].get("other", 0) > 0.1]
    if noisy:
        lines += [f"Other load over 10% of a core during: {', '.join(sorted(set(noisy)))}: the machine was not "
                  "quiet; read CPU s/GiB, or run again.", ""]
    lines += [f"Command: `perf/upload.py {' '.join(meta['argv'])}`", ""]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        port, mode, mib, chunk, buffer = sys.argv[2:7]
        print(json.dumps(client(int(port), mode, int(mib), int(chunk), int(buffer))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--sink":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        sink(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="body size in MiB (1024)")
    parser.add_argument("--chunk", type=int, default=64, help="chunk size in KiB for the chunked mode (64)")
    parser.add_argument("--modes", default=",".join(MODES), help="chunked, length, or both (the default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"subset of {','.join(SERVERS)}; also {','.join(EXTRA_SERVERS)}")
    parser.add_argument("--buffer", type=int, default=16, help="the client's send buffer in MiB (16)")
    args = parser.parse_args()
    servers = args.servers.split(",")
    modes = args.modes.split(",")
    for name in servers:
        if name not in SERVERS + EXTRA_SERVERS:
            parser.error(f"unknown server {name!r}")
    for mode in modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}")
    if args.mib % min(args.buffer, args.mib) or (args.buffer * 1024) % args.chunk:
        parser.error("--mib must be a multiple of --buffer, and --buffer (in KiB) of --chunk")

    run_dir = Path(os.environ.get("RUN_DIR") or ROOT / "perf" / "runs" /
                   f"{datetime.date.today()}-{socket.gethostname()}")
    run_dir.mkdir(parents=True, exist_ok=True)
    raw = run_dir / "upload-raw"
    raw.mkdir(exist_ok=True)
    spindle = spindle_bin() if any(s.startswith("spindle") for s in servers) else ""
    table = server_table(spindle, servers)

    rows: dict = {s: {m: [] for m in modes} for s in servers}
    for round_no in range(args.rounds):
        order = servers[round_no % len(servers):] + servers[:round_no % len(servers)]
        for server in order:
            results = run_server(table, server, modes, args, raw, round_no)
            for mode in modes:
                r = results.get(mode, {"failed": "not run"})
                rows[server][mode].append(r)
                what = (f"{r['mib_s']:8.0f} MiB/s  server CPU {r['server_cpu']:.2f} s  RSS {r['rss']:.0f} MiB"
                        if "mib_s" in r else r.get("na") or f"failed: {r.get('failed')}")
                print(f"round {round_no + 1} {server:17s} {mode:8s} {what}", file=sys.stderr, flush=True)

    summary = summarize(rows, servers, modes)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    meta = {
        "when": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "commit": commit,
        "dirty": str(len(dirty.splitlines())) if dirty.strip() else "",
        "python": subprocess.run([str(venv() / "bin/python"), "--version"], capture_output=True,
                                 text=True).stdout.strip(),
        "spindle": subprocess.run([spindle, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        if spindle else "Spindle not run",
        "versions": ", ".join(f"{d} {dist_version(d)}" for d in ("granian", "gunicorn", "bjoern", "uwsgi")),
        "argv": sys.argv[1:],
    }
    text = report(summary, servers, modes, args, meta)
    (run_dir / "upload.md").write_text(text)
    (run_dir / "upload.json").write_text(json.dumps({"meta": meta, "summary": summary, "rounds": rows}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
