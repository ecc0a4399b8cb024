"""The app behind tests/integration/test_inline.py (`--inline`): routes that say which
thread ran them, stream more than a connection's response window, write() more than it,
and leave marks (files named in the query string: the app may run in several
interpreters) when their response iterable is closed."""

import threading
from urllib.parse import parse_qsl

WINDOW = 1 << 20  # the server's response window per connection (RESPONSE_WINDOW)


def _query(environ):
    return dict(parse_qsl(environ["QUERY_STRING"]))


def _thread_name():
    """The OS name of the thread running this call: Spindle's I/O threads are
    `spindle-io-N`."""
    with open("/proc/self/task/%d/comm" % threading.get_native_id()) as f:
        return f.read().strip()


def piece(i, size):
    return bytes([97 + i % 26]) * size


class Pieces:
    """`count` pieces of `size` bytes; close() leaves a mark in `marker`."""

    def __init__(self, count, size, marker):
        self.count, self.size, self.marker = count, size, marker

    def __iter__(self):
        for i in range(self.count):
            yield piece(i, self.size)

    def close(self):
        if self.marker:
            with open(self.marker, "a") as f:
                f.write("closed\n")


def app(environ, start_response):
    path = environ["PATH_INFO"]
    q = _query(environ)
    if path == "/thread":
        body = environ["wsgi.input"].read()
        out = ("%s %d" % (_thread_name(), len(body))).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))])
        return [out]
    if path == "/pieces":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Pieces(int(q["count"]), int(q["size"]), q.get("marker"))
    if path == "/write":
        # write() cannot wait for room inline: all of it queues at once.
        write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
        for i in range(int(q["count"])):
            write(piece(i, int(q["size"])))
        return []
    body = path.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
