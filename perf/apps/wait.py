"""An app that waits, standing in for a database query: what most production WSGI apps
spend their time on (perf/wait.py).

  /            sleeps 5 ms, answers 13 bytes; `?ms=N` sleeps N ms instead (0: no wait)
  /stream      a long response: one server-sent event every 100 ms for `?seconds=S` (60)
"""

import time


def _stream(seconds):
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        time.sleep(0.1)
        i += 1
        yield b"data: %d\n\n" % i


def app(environ, start_response):
    query = environ.get("QUERY_STRING", "")
    params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
    if environ.get("PATH_INFO") == "/stream":
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
        return _stream(float(params.get("seconds", "60")))
    ms = float(params.get("ms", "5"))
    if ms > 0:
        time.sleep(ms / 1000.0)
    body = b"Hello, World!"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
