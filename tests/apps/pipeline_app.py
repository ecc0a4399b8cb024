"""The app behind tests/integration/test_http_pipelining.py: routes that show whether
pipelined requests of one connection run at the same time, stay in order, and are all
closed when the client goes away. Markers are files named in the query string, since
apps may run in several sub-interpreters with separate globals.
"""

import os
import time
from urllib.parse import parse_qsl


def _query(environ):
    return dict(parse_qsl(environ["QUERY_STRING"]))


def _mark(path, text):
    with open(path, "a") as f:
        f.write(text + "\n")


class _Chunks:
    """`count` chunks of `size` bytes; start and close() leave marks."""

    def __init__(self, marker, ident, count, size):
        self.marker, self.ident, self.count, self.size = marker, ident, count, size
        if marker:
            _mark(marker, "start %s" % ident)

    def __iter__(self):
        for i in range(self.count):
            yield bytes([97 + i % 26]) * self.size

    def close(self):
        if self.marker:
            _mark(self.marker, "close %s" % self.ident)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    q = _query(environ)
    if path == "/wait":
        # Waits (bounded) until another request creates the marker file.
        deadline = time.monotonic() + float(q.get("limit", "5"))
        while not os.path.exists(q["marker"]) and time.monotonic() < deadline:
            time.sleep(0.005)
        body = b"saw it" if os.path.exists(q["marker"]) else b"never saw it"
    elif path == "/touch":
        _mark(q["marker"], "touched")
        body = b"touched"
    elif path == "/chunks":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _Chunks(q.get("marker"), q.get("id", ""), int(q["count"]), int(q["size"]))
    elif path == "/write-then-read":
        # Sends part of its response, then reads the request body.
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"head-first\n")
        got = environ["wsgi.input"].read()
        return [b"got %d" % len(got)]
    else:
        body = path.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
