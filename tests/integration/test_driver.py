"""The I/O driver `--driver auto` (the default) chooses: io_uring where the kernel allows it,
else epoll with one log line saying why; `--driver io-uring` where io_uring is refused is an
error that exits. io_uring is refused here the way Docker's default seccomp profile refuses
it (tests/integration/no_io_uring.py), so these run on any machine."""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import READY_V4, SPINDLE_BIN, START_TIMEOUT, base_args, child_env, require_binary

NO_IO_URING = [sys.executable, str(Path(__file__).with_name("no_io_uring.py")), str(SPINDLE_BIN)]
SMALL_RINGS_ONLY = [sys.executable, str(Path(__file__).with_name("no_io_uring.py")), "--small-rings-only",
                    str(SPINDLE_BIN)]
READY = r"listening on http://127\.0\.0\.1:(\d+) \((io_uring|epoll),"
UNAVAILABLE = "io_uring is not available here (kernel or seccomp refuses it): using epoll"


def io_uring_allowed() -> bool:
    """Whether this process may set up an io_uring (io_uring_setup, 425 on every arch) that
    monoio takes: its probe needs the operations of Linux 5.7 and later."""
    release = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    if release < (5, 7):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    fd = libc.syscall(425, 2, params)
    if fd < 0:
        return False
    os.close(fd)
    return True


def driver_of(srv) -> str:
    return srv.wait_for_log(READY, 1, what="the listening line").group(2)


def test_auto_takes_io_uring_where_the_kernel_allows_it(spindle):
    if not io_uring_allowed():
        pytest.skip("this kernel or its seccomp profile refuses io_uring")
    srv = spindle("wsgi_app:app", "--driver", "auto", "--single-process")
    assert driver_of(srv) == "io_uring"
    assert UNAVAILABLE not in srv.log_since()
    srv.assert_serving()


def test_auto_falls_back_to_epoll_where_io_uring_is_refused(spindle):
    srv = spindle("wsgi_app:app", "--driver", "auto", "--single-process", command=NO_IO_URING)
    assert driver_of(srv) == "epoll"
    assert srv.log_since().count(UNAVAILABLE) == 1, srv.log_since()
    srv.assert_serving()


def test_auto_falls_back_in_every_worker(spindle):
    """Supervised: the supervisor and its workers all run under the filter (inherited
    across fork and exec); every worker serves on epoll, and the supervisor alone says why."""
    srv = spindle("wsgi_app:app", "--driver", "auto", "--workers", "2", command=NO_IO_URING)
    for slot in (1, 2):
        srv.wait_for_log(rf"worker {slot} \(pid \d+\) ready: epoll,", START_TIMEOUT,
                         what=f"worker {slot} on epoll")
    assert "ready: io_uring" not in srv.log_since()
    assert srv.log_since().count(UNAVAILABLE) == 1, srv.log_since()
    srv.assert_serving()


def test_io_uring_asked_for_where_it_is_refused_is_an_error():
    require_binary()
    done = subprocess.run([*NO_IO_URING, *base_args(), "--driver", "io-uring", "wsgi_app:app"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                          timeout=START_TIMEOUT, env=child_env())
    assert done.returncode != 0
    assert "--driver io-uring: io_uring is not available here" in done.stderr + done.stdout, done


def test_auto_runs_each_thread_on_epoll_whose_ring_the_kernel_refuses(spindle):
    """The probe's small ring passes but the server's rings are refused (RLIMIT_MEMLOCK
    before Linux 5.12): under `auto` each I/O thread says so and runs on epoll."""
    if not io_uring_allowed():
        pytest.skip("this kernel or its seccomp profile refuses io_uring")
    srv = spindle("wsgi_app:app", "--driver", "auto", "--single-process", command=SMALL_RINGS_ONLY)
    for thread in (0, 1):
        srv.wait_for_log(rf"I/O thread {thread}: cannot set up io_uring \(.*\): it runs on epoll", 5,
                         what=f"I/O thread {thread} falling back")
    srv.assert_serving()
    for i in range(8):  # over both threads' sockets
        assert srv.get(f"/path/fallback-{i}").status == 200


def test_io_uring_asked_for_whose_ring_the_kernel_refuses_fails_the_start():
    """`--driver io-uring` and rings the kernel refuses: the start fails with the reason,
    never a server that says it listens and serves nothing."""
    if not io_uring_allowed():
        pytest.skip("this kernel or its seccomp profile refuses io_uring")
    done = subprocess.run([*SMALL_RINGS_ONLY, *base_args(), "--single-process", "--driver", "io-uring",
                           "wsgi_app:app"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          errors="replace", timeout=START_TIMEOUT, env=child_env())
    out = done.stderr + done.stdout
    assert done.returncode != 0, out
    assert "cannot create the io_uring runtime" in out, out
    assert "listening on" not in out, out
