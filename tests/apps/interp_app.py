"""An app that tells which interpreter and thread serve it, for
tests/integration/test_interpreters.py and test_threads.py.

Module state is per interpreter (as per process): TOKEN is drawn once per import, so two
requests answered with different tokens ran in different interpreters.

/rendezvous?board=FILE&me=0|1&wait=S marks slot `me` of a 2-byte board shared through
mmap, then spins in pure Python (holding its GIL, no system call) until the other slot is
marked or S seconds pass. Two requests can only meet if both run Python at the same time;
with `sys.setswitchinterval(30)` a spinning thread on a shared GIL never hands it over
within S, so on the main interpreter the second request waits for the first.
"""

import atexit
import json
import mmap
import os
import random
import sys
import threading
import time
import warnings
from urllib.parse import parse_qsl
from wsgiref.validate import validator

warnings.simplefilter("error")
sys.setswitchinterval(30.0)

TOKEN = "%016x" % random.getrandbits(64)

_atexit_file = os.environ.get("SPINDLE_TEST_ATEXIT_FILE")
if _atexit_file:

    def _at_exit():
        with open(_atexit_file, "a") as f:
            f.write("atexit %s\n" % TOKEN)

    atexit.register(_at_exit)


def _rendezvous(query, errors):
    me = int(query["me"])
    errors.write("rendezvous %d started\n" % me)
    deadline = time.monotonic() + float(query.get("wait", "3"))
    with open(query["board"], "r+b") as f:
        board = mmap.mmap(f.fileno(), 2)
    board[me] = 1
    # Look at least once after marking: a request that waited for the GIL past its
    # deadline still meets a partner that marked before it.
    met = False
    while True:
        if board[1 - me]:
            met = True
            break
        if time.monotonic() >= deadline:
            break
    board.close()
    errors.write("rendezvous %d done: %s\n" % (me, "met" if met else "alone"))
    return {"met": met, "token": TOKEN}


def _gather(query, environ):
    """/gather?board=FILE&me=I&n=N&wait=S: marks slot I of an N-byte board shared through
    mmap, then waits (sleeping, the GIL released) until all N slots are marked or S seconds
    pass. N requests only meet if N threads serve them at once."""
    me, n = int(query["me"]), int(query["n"])
    deadline = time.monotonic() + float(query.get("wait", "5"))
    with open(query["board"], "r+b") as f:
        board = mmap.mmap(f.fileno(), n)
    board[me] = 1
    environ["wsgi.errors"].write("gather %d started\n" % me)
    met = False
    while True:
        if all(board[i] for i in range(n)):
            met = True
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(0.005)
    board.close()
    # Module state is per interpreter: SEEN collects the threads of this interpreter only.
    SEEN.add(threading.get_ident())
    return {
        "met": met,
        "token": TOKEN,
        "thread": threading.get_ident(),
        "seen_threads": len(SEEN),
        "multithread": environ["wsgi.multithread"],
    }


SEEN = set()


def _stream(query):
    """/stream?chunks=N&delay=S: a slow generator (server-sent events, say) holding its
    thread for N x S seconds."""
    for i in range(int(query.get("chunks", "20"))):
        time.sleep(float(query.get("delay", "0.1")))
        yield b"data: %d\n\n" % i


def _app(environ, start_response):
    query = dict(parse_qsl(environ["QUERY_STRING"]))
    if environ["PATH_INFO"] == "/stream":
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return _stream(query)
    if environ["PATH_INFO"] == "/rendezvous":
        result = _rendezvous(query, environ["wsgi.errors"])
    elif environ["PATH_INFO"] == "/gather":
        result = _gather(query, environ)
    elif environ["PATH_INFO"] == "/spindle":
        # What this interpreter has of Spindle's own Python package and extension.
        import spindle

        result = {
            "token": TOKEN,
            "version": spindle.__version__,
            "native_loaded": "spindle._native" in sys.modules,
            "executable": sys.executable,
            "prefix": sys.prefix,
        }
    else:
        result = {
            "token": TOKEN,
            "multithread": environ["wsgi.multithread"],
            "multiprocess": environ["wsgi.multiprocess"],
        }
    body = json.dumps(result).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
