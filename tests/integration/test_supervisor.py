"""The supervisor and its workers, with real processes, real signals and real clients:
nothing sent before a stop, a reload or a recycle is lost; a worker that dies or hangs is
replaced; a reload with broken code keeps the old code serving.

Requests "sent before" an event are those written before the signal left the test (or
before the recycle began); each test counts them, and each fails on the first one lost.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from conftest import READY_V4, base_args, run_spindle
from load import Load
from rawhttp import IncompleteResponse, ReadTimeout, request

LIFECYCLE = "lifecycle_app:app"


def base(*extra: str) -> list[str]:
    """The suite's usual flags, minus the thread count (each test says its own)."""
    args = base_args()
    i = args.index("--py-threads")
    del args[i:i + 2]
    return args + list(extra)


def start(spindle, *extra: str, app: str = LIFECYCLE):
    return spindle(app, *base(*extra), base=False)


def wait_until(what: str, check, timeout: float = 15.0, every: float = 0.02):
    """Polls `check` until it returns something true; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(every)


def get(srv, path: str = "/", timeout: float = 5.0):
    return srv.get(path, timeout=timeout)


def try_get(srv, path: str = "/", timeout: float = 2.0):
    try:
        return srv.get(path, timeout=timeout)
    except (OSError, IncompleteResponse, ReadTimeout):
        return None


def served_by(srv) -> int | None:
    resp = try_get(srv)
    if resp is not None and resp.status == 200 and resp.body.startswith(b"pid "):
        return int(resp.body.split()[1])
    return None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, or being reaped as we read
        return False


# -- stopping and reloading under load --------------------------------------------------

def test_sigterm_under_load_loses_nothing_and_exits_0(spindle):
    srv = start(spindle, "--workers", "2", "--threads", "4", "--graceful-timeout", "10")
    with Load(srv.port, "/sleep?s=0.02", clients=6) as load:
        load.wait_for_ok(100)
        signalled = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(12)
        stopped = time.monotonic()
    assert code == 0, srv.log_since()
    assert stopped - signalled < 10
    lost = load.failed_sent_before(signalled)
    assert not lost, f"{len(lost)} of {load.sent_before(signalled)} requests sent before SIGTERM failed: {lost[:5]}"
    assert load.sent_before(signalled) >= 100


def test_sigterm_serves_connections_waiting_in_the_accept_queue(spindle):
    # gunicorn#3397: connections the kernel accepted before SIGTERM, which no worker had
    # taken yet, are served too. The worker is frozen (SIGSTOP) while they queue up.
    srv = start(spindle, "--workers", "1", "--threads", "2")
    [worker] = srv.worker_pids()
    os.kill(worker, signal.SIGSTOP)
    try:
        conns = [srv.connect(timeout=10) for _ in range(5)]
        for i, conn in enumerate(conns):
            conn.send(request("GET", f"/?queued={i}", srv.host_header))
        srv.proc.send_signal(signal.SIGTERM)
    finally:
        os.kill(worker, signal.SIGCONT)
    for i, conn in enumerate(conns):
        try:
            resp = conn.read_response(timeout=10)
        except IncompleteResponse as err:
            raise AssertionError(f"queued connection {i}: {err}\n{srv.log_since()}") from None
        assert resp.status == 200 and resp.body == f"pid {worker}".encode(), resp
        conn.close()
    assert srv.proc.wait(10) == 0, srv.log_since()


def test_sighup_reloads_under_load_without_losing_a_request(spindle):
    srv = start(spindle, "--workers", "2", "--threads", "4")
    old = set(srv.worker_pids())
    assert len(old) == 2
    with Load(srv.port, "/", clients=6) as load:
        load.wait_for_ok(100)
        mark = srv.log_mark()
        signalled = time.monotonic()
        srv.proc.send_signal(signal.SIGHUP)
        srv.wait_for_log(r"reload: 2 new worker\(s\) ready", 20, since=mark)
        wait_until("the old workers to exit", lambda: not any(alive(p) for p in old))
        after = len(load.snapshot())
        load.wait_for_ok(after + 100)
    new = set(srv.worker_pids())
    assert len(new) == 2 and not new & old, (old, new)
    assert load.sent_before(signalled) >= 100
    assert not load.failures(), load.summary()
    served = {int(body.split()[1]) for body in load.bodies()}
    # Keep-alive connections stay where they were accepted: some old worker served, and
    # new workers served after the reload.
    assert old & served and new & served, (old, new, served)


def test_max_requests_recycles_without_losing_a_request(spindle):
    srv = start(spindle, "--workers", "1", "--threads", "2", "--max-requests", "300",
                "--max-requests-jitter", "50")
    [first] = srv.worker_pids()
    mark = srv.log_mark()
    with Load(srv.port, "/", clients=4) as load:
        srv.wait_for_log(r"to be replaced \(max-requests\)", 30, since=mark)
        srv.wait_for_log(r"ready: the one it replaces \(pid %d\) finishes" % first, 20, since=mark)
        wait_until("the recycled worker to exit", lambda: not alive(first))
        after = len(load.snapshot())
        load.wait_for_ok(after + 50)
    assert not load.failures(), load.summary()
    served = {body for body in load.bodies()}
    assert f"pid {first}" in served and len(served) >= 2, served


def test_memory_ceiling_recycles_without_losing_a_request(spindle):
    srv = start(spindle, "--workers", "1", "--threads", "2", "--max-worker-memory", "200")
    [first] = srv.worker_pids()
    mark = srv.log_mark()
    with Load(srv.port, "/", clients=4) as load:
        load.wait_for_ok(50)
        assert get(srv, "/grow?mb=240", timeout=20).status == 200
        srv.wait_for_log(r"worker \(pid %d\) uses \d+ MiB, over --max-worker-memory 200" % first, 10, since=mark)
        srv.wait_for_log(r"ready: the one it replaces \(pid %d\) finishes" % first, 20, since=mark)
        wait_until("the recycled worker to exit", lambda: not alive(first))
        after = len(load.snapshot())
        load.wait_for_ok(after + 50)
    assert not load.failures(), load.summary()


# -- workers that die ---------------------------------------------------------------------

@pytest.mark.parametrize("how, cause", [
    ("SIGKILL", r"was killed by SIGKILL"),
    ("/abort", r"was killed by SIGABRT"),
    ("/segfault", r"was killed by SIGSEGV"),
], ids=["sigkill", "abort", "segfault"])
def test_a_dead_worker_is_replaced_and_the_log_says_how_it_died(spindle, how, cause):
    # ctypes loads in sub-interpreters only from 3.13 on: the segfault comes from the main one.
    main = ["--interpreters", "main"] if how == "/segfault" else []
    srv = start(spindle, "--workers", "1", "--threads", "2", *main)
    [worker] = srv.worker_pids()
    mark = srv.log_mark()
    died = time.monotonic()
    if how == "SIGKILL":
        os.kill(worker, signal.SIGKILL)
    else:
        assert try_get(srv, how) is None, f"{how} answered"
    line = srv.wait_for_log(r"worker 1 \(pid %d\) %s" % (worker, cause), 10, since=mark).string
    assert "starting a new one" in line, line
    new = wait_until("the site to answer again", lambda: served_by(srv), timeout=10)
    back = time.monotonic() - died
    assert new != worker
    # "Within a second or two" (what a worker's start-up costs), with room for a busy CI.
    assert back < 5, f"the site answered again only {back:.1f} s after the worker died"
    print(f"answered again {back:.2f} s after the worker died")


def test_a_crash_loop_backs_off_and_the_supervisor_stays_up(spindle, tmp_path):
    flag = tmp_path / "broken"
    (tmp_path / "crashy.py").write_text(
        "import os\n"
        f"if os.path.exists({str(flag)!r}):\n"
        "    raise RuntimeError('this worker cannot start now')\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Length', '2')])\n"
        "    return [b'ok']\n")
    srv = start(spindle, "--workers", "1", "--threads", "1", "--pythonpath", str(tmp_path), app="crashy:app")
    [worker] = srv.worker_pids()
    flag.write_text("")
    mark = srv.log_mark()
    os.kill(worker, signal.SIGKILL)
    srv.wait_for_log(r"keeps dying right after it starts \(3 times\): the next one in", 20, since=mark)
    assert srv.proc.poll() is None, "the supervisor exited"
    assert "this worker cannot start now" in srv.log_since(mark)
    flag.unlink()
    resp = wait_until("the site to answer after the fix", lambda: try_get(srv), timeout=20)
    assert resp.status == 200 and resp.body == b"ok"


def test_workers_of_a_killed_supervisor_stop(spindle):
    # An orphan would keep serving the old code on the port for ever (gunicorn's workers
    # watch their parent the same way).
    srv = start(spindle, "--workers", "2", "--threads", "1")
    workers = srv.worker_pids()
    assert len(workers) == 2
    spindle.servers.remove(srv)
    srv.kill()  # SIGKILL: no chance to tell the workers
    wait_until("the orphaned workers to stop", lambda: not any(alive(p) for p in workers), timeout=10)
    assert srv.log_since().count("stopped") == 2, srv.log_since()  # gracefully, both


# -- requests that hang ---------------------------------------------------------------------

def test_stuck_threads_are_reported_answered_and_their_worker_replaced(spindle):
    srv = start(spindle, "--workers", "1", "--threads", "2", "--timeout", "2", "--graceful-timeout", "2")
    [stuck_worker] = srv.worker_pids()
    mark = srv.log_mark()
    stuck = []
    for i in range(2):
        conn = srv.connect(timeout=20)
        conn.send(request("GET", f"/sleep?s=60&marker=stuck-{i}", srv.host_header))
        stuck.append(conn)
    for i in range(2):
        srv.wait_for_log(rf"sleep started stuck-{i}", 5, since=mark)
    # Every Python thread is stuck: a new request is answered within --timeout plus a few
    # seconds (here by the worker that replaces the stuck one, or a 504 from the stuck one).
    sent = time.monotonic()
    with srv.connect(timeout=20) as conn:
        conn.send(request("GET", "/", srv.host_header))
        resp = conn.read_response(timeout=20)
    answered = time.monotonic() - sent
    assert resp.status in (200, 504), resp
    assert answered < 2 + 4, f"answered after {answered:.1f} s"
    for conn in stuck:
        resp = conn.read_response(timeout=10)
        assert resp.status == 504, resp
        conn.close()
    # The report may follow the 504s (the watchdog looks every limit/4 at most).
    srv.wait_for_log(r"longer than --timeout 2 s", 5, since=mark)
    srv.wait_for_log(r"^\s+time\.sleep", 5, since=mark)
    log = srv.log_since(mark)
    # The stack of where it is stuck: the app's line, down to time.sleep.
    assert re.search(r'lifecycle_app\.py", line \d+, in app\n\s+time\.sleep', log), log
    srv.wait_for_log(r"to be replaced \(timeout\)", 10, since=mark)
    new = wait_until("a new worker to serve", lambda: (pid := served_by(srv)) and pid != stuck_worker and pid)
    assert new != stuck_worker


# -- reloading code ---------------------------------------------------------------------------

APP_TEMPLATE = """
VERSION = {version!r}

def app(environ, start_response):
    body = VERSION.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def test_timeout_counts_from_the_last_piece_a_streaming_response_yielded(spindle):
    # 4 s of response, a piece every 0.5 s, under --timeout 2: never cut, never reported.
    srv = start(spindle, "--workers", "1", "--threads", "2", "--timeout", "2")
    mark = srv.log_mark()
    with srv.connect(timeout=20) as conn:
        conn.send(request("GET", "/stream?n=8&every=0.5", srv.host_header))
        resp = conn.read_response(timeout=20)
    assert resp.status == 200 and resp.body == b"tick\n" * 8, resp
    assert "longer than --timeout" not in srv.log_since(mark)
    assert "sent nothing for --timeout" not in srv.log_since(mark)


def test_sighup_with_a_syntax_error_keeps_the_old_code_then_loads_the_fix(spindle, tmp_path):
    source = tmp_path / "reloadable.py"
    source.write_text(APP_TEMPLATE.format(version="first"))
    srv = start(spindle, "--workers", "2", "--threads", "1", "--pythonpath", str(tmp_path), app="reloadable:app")
    assert get(srv).body == b"first"

    source.write_text("def app(environ, start_response:\n    pass\n")
    mark = srv.log_mark()
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for_log(r"reload failed .*the old workers keep serving the old code", 20, since=mark)
    assert "SyntaxError" in srv.log_since(mark)
    for _ in range(10):
        assert get(srv).body == b"first"

    source.write_text(APP_TEMPLATE.format(version="the second version"))
    mark = srv.log_mark()
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for_log(r"reload: 2 new worker\(s\) ready", 20, since=mark)
    wait_until("the new code to answer", lambda: (r := try_get(srv)) and r.body == b"the second version")


def test_reload_flag_loads_a_changed_file_and_survives_a_syntax_error(spindle, tmp_path):
    source = tmp_path / "reloadable.py"
    source.write_text(APP_TEMPLATE.format(version="first"))
    srv = start(spindle, "--workers", "1", "--threads", "1", "--reload", "--pythonpath", str(tmp_path),
                app="reloadable:app")
    srv.wait_for_log(r"--reload: watching the Python files under .*" + re.escape(str(tmp_path)))
    assert get(srv).body == b"first"

    mark = srv.log_mark()
    source.write_text("def app(environ, start_response:\n    pass\n")
    srv.wait_for_log(r"--reload: .*reloadable\.py changed: reloading", 10, since=mark)
    srv.wait_for_log(r"reload failed .*the old workers keep serving the old code", 20, since=mark)
    assert "SyntaxError" in srv.log_since(mark)
    assert get(srv).body == b"first"

    mark = srv.log_mark()
    source.write_text(APP_TEMPLATE.format(version="fixed"))
    srv.wait_for_log(r"reload: 1 new worker\(s\) ready", 20, since=mark)
    wait_until("the new code to answer", lambda: (r := try_get(srv)) and r.body == b"fixed")


# -- sharing the listeners ----------------------------------------------------------------------

def test_a_busy_worker_is_not_handed_new_connections(spindle):
    # Two workers of one thread each; one is held by a slow request. Fast requests on new
    # connections must all go to the other one, not wait behind the slow one.
    srv = start(spindle, "--workers", "2", "--threads", "1", "--interpreters", "main")
    mark = srv.log_mark()
    slow = srv.connect(timeout=30)
    slow.send(request("GET", "/sleep?s=8&marker=hog", srv.host_header))
    srv.wait_for_log(r"sleep started hog", 5, since=mark)
    latencies = []
    for _ in range(60):
        t = time.monotonic()
        resp = get(srv, timeout=10)
        latencies.append(time.monotonic() - t)
        assert resp.status == 200
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert latencies[-1] < 2, f"a fast request waited {latencies[-1]:.2f} s behind the slow one (p99 {p99:.3f} s)"
    assert slow.read_response(timeout=15).status == 200
    slow.close()


# -- signals, one by one ---------------------------------------------------------------------------

def test_ttin_and_ttou_add_and_remove_a_worker(spindle):
    srv = start(spindle, "--workers", "1", "--threads", "1")
    assert len(srv.worker_pids()) == 1
    srv.proc.send_signal(signal.SIGTTIN)
    srv.wait_for_log(r"SIGTTIN received: one worker more \(2\)")
    wait_until("a second worker", lambda: len(srv.worker_pids()) == 2)
    srv.proc.send_signal(signal.SIGTTOU)
    srv.wait_for_log(r"SIGTTOU received: one worker less \(1\)")
    wait_until("back to one worker", lambda: len([p for p in srv.worker_pids() if alive(p)]) == 1)
    assert served_by(srv)


def test_sigint_stops_the_supervisor_at_once(spindle):
    srv = start(spindle, "--workers", "2", "--threads", "1")
    mark = srv.log_mark()
    slow = srv.connect(timeout=30)
    slow.send(request("GET", "/sleep?s=30&marker=long", srv.host_header))
    srv.wait_for_log(r"sleep started long", 5, since=mark)
    t = time.monotonic()
    srv.proc.send_signal(signal.SIGINT)
    assert srv.proc.wait(10) == 0
    assert time.monotonic() - t < 8
    slow.close()


def test_single_process_survives_sighup(spindle):
    srv = start(spindle, "--single-process", "--threads", "1")
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for_log(r"SIGHUP received: reloading needs the supervisor")
    assert served_by(srv) == srv.pid


def test_workers_and_single_process_conflict():
    done = run_spindle(base("--single-process", "--workers", "2", LIFECYCLE))
    assert done.returncode == 2, done.stderr
    assert "--single-process" in done.stderr and "--workers" in done.stderr


def test_web_concurrency_sets_the_workers(spindle, monkeypatch):
    monkeypatch.setenv("WEB_CONCURRENCY", "2")
    srv = start(spindle, "--threads", "1")
    assert "(2 workers," in srv.wait_for_log(READY_V4).string
    assert len(srv.worker_pids()) == 2
