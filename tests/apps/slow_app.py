"""An application for the slow-reader tests (tests/integration/test_slow_readers.py): large
streamed responses whose every iterator records its close(), and a count of what was
pulled from them.

    /stream?id=I&chunks=N&size=S&log=PATH   N pieces of S bytes (piece k is `piece(I, k, S)`),
                                             from a generator-like iterator that appends
                                             "closed I" to PATH when closed
    /pulled                                  bytes pulled from all streams so far, and how
                                             many streams are open (not closed yet)
    /write?id=I&chunks=N&size=S               the same pieces through start_response's write()
    /slowgen?id=I&chunks=N&size=S&delay=D      the same pieces from a generator that sleeps D
                                             seconds before each (slower than any client)
    /hello                                   a short answer
"""

import json
import threading
import time
from urllib.parse import parse_qs
from wsgiref.validate import validator

_lock = threading.Lock()
_state = {"pulled": 0, "open": 0}


def piece(stream_id: int, k: int, size: int) -> bytes:
    """Piece k of stream `stream_id`: its number, then a byte that depends on both."""
    head = b"%d:%d;" % (stream_id, k)
    return (head + bytes([(stream_id * 31 + k) % 251]) * size)[:size]


class Stream:
    def __init__(self, stream_id: int, chunks: int, size: int, log: str | None):
        self.stream_id, self.chunks, self.size, self.log = stream_id, chunks, size, log
        self.k = 0
        with _lock:
            _state["open"] += 1

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        if self.k >= self.chunks:
            raise StopIteration
        data = piece(self.stream_id, self.k, self.size)
        self.k += 1
        with _lock:
            _state["pulled"] += len(data)
        return data

    def close(self) -> None:
        with _lock:
            _state["open"] -= 1
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"closed {self.stream_id}\n")


def _slow(stream_id: int, chunks: int, size: int, delay: float):
    for k in range(chunks):
        time.sleep(delay)
        yield piece(stream_id, k, size)


def _app(environ, start_response):
    path = environ["PATH_INFO"]
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Stream(int(q["id"]), int(q["chunks"]), int(q["size"]), q.get("log"))
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
        for k in range(int(q["chunks"])):
            write(piece(int(q["id"]), k, int(q["size"])))
        return []
    if path == "/slowgen":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _slow(int(q["id"]), int(q["chunks"]), int(q["size"]), float(q["delay"]))
    if path == "/pulled":
        with _lock:
            body = json.dumps(_state).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


app = validator(_app)
