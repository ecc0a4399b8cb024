"""Apps behind tests/integration/test_regressions.py: each route reproduces one bug that
review found, named after what broke. Not wrapped in wsgiref.validate: several routes
break PEP 3333 on purpose (writing after the response ended, raising from close()) to
prove the server contains it.
"""

import os
from urllib.parse import parse_qsl


def _query(environ):
    return dict(parse_qsl(environ["QUERY_STRING"]))


def _mark(environ, text):
    path = _query(environ).get("marker")
    if path:
        with open(path, "a") as f:
            f.write(text + "\n")


class _WriteAfterEnd:
    """Chunked response whose close() calls write() once the response has ended."""

    def __init__(self, environ, write):
        self.environ, self.write = environ, write

    def __iter__(self):
        yield b"first"

    def close(self):
        try:
            self.write(b"INJECTED")
        except Exception as exc:  # the server must refuse: the response is over
            _mark(self.environ, "write after end refused: %s" % type(exc).__name__)


class _CloseRaises:
    def __iter__(self):
        yield b"complete"

    def close(self):
        raise RuntimeError("close() failed after a complete response")


class _ReadInputInClose:
    def __init__(self, environ):
        self.environ = environ

    def __iter__(self):
        yield b"answered"

    def close(self):
        try:
            self.environ["wsgi.input"].read()
        except Exception as exc:
            _mark(self.environ, "late read refused: %s" % type(exc).__name__)


class _Endless:
    """64 KiB chunks for as long as the client reads; close() leaves a mark."""

    def __init__(self, environ):
        self.environ = environ
        self.sent = 0

    def __iter__(self):
        chunk = b"x" * 65536
        for _ in range(100000):
            self.sent += 1
            yield chunk

    def close(self):
        _mark(self.environ, "closed after %d chunks" % self.sent)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/write-after-end":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        return _WriteAfterEnd(environ, write)
    if path == "/close-raises":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _CloseRaises()
    if path == "/read-input-in-close":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _ReadInputInClose(environ)
    if path == "/endless":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _Endless(environ)
    if path == "/one-big-chunk":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return iter([b"y" * (32 << 20)])
    if path == "/read-exactly":
        n = int(environ["CONTENT_LENGTH"])
        data = environ["wsgi.input"].read(n)
        body = b"%d" % len(data)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/bad-exc-info":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"head sent;")
        try:
            start_response("500 Oops", [], (None, None, None))
        except TypeError:
            return [b"TypeError"]
        return [b"no error"]
    if path == "/pid":
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    body = path.encode("latin-1")  # echo, as wsgi_app does for assert_serving()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
