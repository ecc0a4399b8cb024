"""An app that waits 5 ms per request, standing in for a database query: what most
production WSGI apps spend their time on (perf/wait.sh). `/` sleeps 5 ms and answers
13 bytes; `?ms=N` sleeps N ms instead."""

import time


def app(environ, start_response):
    query = environ.get("QUERY_STRING", "")
    ms = 5.0
    if query.startswith("ms="):
        ms = float(query[3:])
    time.sleep(ms / 1000.0)
    body = b"Hello, World!"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
