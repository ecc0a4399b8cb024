"""An app that tells which interpreter serves it, for tests/integration/test_interpreters.py.

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


def _app(environ, start_response):
    query = dict(parse_qsl(environ["QUERY_STRING"]))
    if environ["PATH_INFO"] == "/rendezvous":
        result = _rendezvous(query, environ["wsgi.errors"])
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
