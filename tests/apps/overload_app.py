"""An application for the admission-control tests (tests/integration/test_overload.py)
and the overload soak (perf/overload.py).

    /sleep?ms=N              sleeps N milliseconds (5 when absent), then 200
    /record?log=PATH&id=ID   appends ID to PATH (every call the app saw), then 200
    /block?log=PATH&release=FILE
                             appends "block" to PATH, then waits (at most 30 s) until
                             FILE exists, then 200: holds a Python thread on demand
"""

import os
import time
from urllib.parse import parse_qs
from wsgiref.validate import validator


def _append(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")


def _app(environ, start_response):
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    path = environ["PATH_INFO"]
    if path == "/sleep":
        time.sleep(int(q.get("ms", "5")) / 1000)
    elif path == "/record":
        _append(q["log"], q.get("id", "?"))
    elif path == "/block":
        _append(q["log"], "block")
        deadline = time.monotonic() + 30
        while not os.path.exists(q["release"]) and time.monotonic() < deadline:
            time.sleep(0.01)
    body = b"ok\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
