"""The WSGI app behind most integration tests (run as `wsgi_app:app`).

Every route goes through `wsgiref.validate.validator`, except those under
`/raw/`: each of those does something the validator forbids or hides, and
says which. Warnings are errors here, so a validator warning becomes an
exception: a 500 and a logged traceback that the tests see.

Apps may run in several sub-interpreters at once, each with its own module
globals, so nothing here keeps state in globals: side effects the tests need
to observe (close() calls, what a read saw) are appended to a file whose path
the test passes in the query string (`record=`).
"""

import hashlib
import io
import json
import os
import sys
import time
import warnings
from urllib.parse import parse_qs
from wsgiref.validate import validator

warnings.simplefilter("error")

TEXT = [("Content-Type", "text/plain; charset=utf-8")]
JSON = [("Content-Type", "application/json")]


def query(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items()}


def record(environ, line):
    path = query(environ).get("record")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def json_response(start_response, obj, status="200 OK"):
    body = json.dumps(obj).encode()
    start_response(status, JSON + [("Content-Length", str(len(body)))])
    return [body]


def text_response(start_response, body, status="200 OK"):
    start_response(status, TEXT + [("Content-Length", str(len(body)))])
    return [body]


def errors_log(environ, message):
    errors = environ["wsgi.errors"]
    errors.write(message + "\n")
    errors.flush()


# -- routes -----------------------------------------------------------------

def hello(environ, start_response):
    return text_response(start_response, b"Hello, World!\n")


def path_echo(environ, start_response):
    """The body is PATH_INFO itself: pipelining tests match responses to requests."""
    return text_response(start_response, environ["PATH_INFO"].encode("latin-1"))


def describe(value):
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, tuple):
        return [describe(v) for v in value]
    return repr(value)


def env(environ, start_response):
    """Every environ key with the name of its type and its value (repr for
    objects). JSON escapes non-ASCII, so latin-1 strings survive exactly."""
    seen = {key: {"type": type(value).__name__, "value": describe(value)} for key, value in environ.items()}
    seen["_file_wrapper_callable"] = callable(environ.get("wsgi.file_wrapper"))
    return json_response(start_response, seen)


def read_all_sized(inp, size=65536):
    h, n, pieces = hashlib.sha256(), 0, 0
    while True:
        chunk = inp.read(size)
        if not chunk:
            return n, h.hexdigest(), pieces
        assert len(chunk) <= size, (len(chunk), size)
        h.update(chunk)
        n += len(chunk)
        pieces += 1


def echo(environ, start_response):
    """Length and sha256 of the body, read with read(65536) until b""."""
    n, digest, pieces = read_all_sized(environ["wsgi.input"])
    return json_response(start_response, {"length": n, "sha256": digest, "pieces": pieces,
                                          "content_length": environ.get("CONTENT_LENGTH"),
                                          "transfer_encoding": environ.get("HTTP_TRANSFER_ENCODING")})


def noread(environ, start_response):
    return text_response(start_response, b"did not read the body")


def status(environ, start_response):
    code = environ["PATH_INFO"].rsplit("/", 1)[-1]
    reasons = {"200": "OK", "201": "Created", "204": "No Content", "304": "Not Modified",
               "404": "Not Found", "418": "I'm a teapot"}
    line = f"{code} {reasons.get(code, 'Whatever')}"
    if code in ("204", "304"):
        # No Content-Type: the validator (rightly) forbids one on 204/304.
        start_response(line, [("ETag", '"v1"')])
        return []
    return text_response(start_response, f"status {code}\n".encode(), line)


def generator(environ, start_response):
    """A generator body without Content-Length; `lazy=1` calls
    start_response from inside the generator, before its first yield; `every=S`
    sleeps S seconds before each piece after the first."""
    q = query(environ)
    n = int(q.get("n", "3"))
    every = float(q.get("every", "0"))

    def body():
        if q.get("lazy"):
            start_response("200 OK", TEXT)
        for i in range(n):
            if i and every:
                time.sleep(every)
            yield b"piece %d\n" % i

    if not q.get("lazy"):
        start_response("200 OK", TEXT)
    return body()


def stream_gated(environ, start_response):
    """Yields b"first", then waits (up to 5 s) for the file named by `gate`
    to exist before yielding the rest: the test only creates the file after
    it has received the first chunk, which proves the body is streamed."""
    gate = query(environ)["gate"]
    start_response("200 OK", TEXT)

    def body():
        yield b"first;"
        deadline = time.monotonic() + 5
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                yield b"timeout"
                return
            time.sleep(0.01)
        yield b"released"

    return body()


class RecordingIterable:
    """A response iterable (not a generator, so close() is explicit) that
    records each close() call, and may raise at item `raise_at`."""

    def __init__(self, environ, n, size, raise_at):
        self.environ = environ
        self.n, self.raise_at, self.i = n, raise_at, 0
        self.chunk = b"x" * size

    def __iter__(self):
        return self

    def __next__(self):
        if self.i == self.raise_at:
            raise RuntimeError("RecordingIterable raises at item %d as asked" % self.i)
        if self.i >= self.n:
            raise StopIteration
        self.i += 1
        return self.chunk

    def close(self):
        record(self.environ, f"close after {self.i}")


class ClosingList(list):
    """A list subclass with close(): the server may skip looking for close() on an exact
    list, never on a subclass. A missing close is an AttributeError, quietly none; another
    error raised by the lookup is the app's error."""

    def __init__(self, environ, items):
        super().__init__(items)
        self.environ = environ

    def close(self):
        record(self.environ, f"close after {len(self)}")


class CloseLookupFails(list):
    @property
    def close(self):
        raise ValueError("looking up close() fails")


class DrainsInClose:
    """A response whose close() reads wsgi.input again after the app read it to the end:
    each read there is b"" (the end stays the end after the response ended), and close()
    records what it got."""

    def __init__(self, environ, length):
        self.environ, self.length = environ, length

    def __iter__(self):
        yield b"read %d" % self.length

    def close(self):
        inp = self.environ["wsgi.input"]
        extra = sum(len(inp.read(65536)) for _ in range(3)) + len(inp.read())
        record(self.environ, f"close drained {extra}")


def raw_drain_in_close(environ, start_response):
    n, _, _ = read_all_sized(environ["wsgi.input"])
    start_response("200 OK", TEXT)
    return DrainsInClose(environ, n)


class ReentrantBuffer:
    """A buffer (PEP 688) whose `__buffer__` reads wsgi.input itself: the read it is
    handed to is under way, so the inner one must be refused, and no byte lost."""

    def __init__(self, inp):
        self.inp, self.target, self.inner = inp, bytearray(100), None

    def __buffer__(self, flags):
        try:
            self.inp.raw.readinto(bytearray(10))
            self.inner = "read"
        except RuntimeError as exc:
            self.inner = str(exc)
        return memoryview(self.target)

    def __release_buffer__(self, view):
        view.release()


def raw_reentrant_buffer(environ, start_response):
    inp = environ["wsgi.input"]
    buf = ReentrantBuffer(inp)
    n = inp.raw.readinto(buf)
    rest, _, _ = read_all_sized(inp)
    start_response("200 OK", TEXT)
    return [f"{n} {rest} {buf.inner}".encode()]


def raw_closing_list(environ, start_response):
    start_response("200 OK", TEXT)
    if query(environ).get("lookup") == "fails":
        return CloseLookupFails([b"a", b"b"])
    return ClosingList(environ, [b"a", b"b"])


class WritesInClose(list):
    """A one-item response whose close() calls the write callable after the response
    ended: those bytes must never reach the client, whoever wrote the response."""

    def __init__(self, environ, write):
        super().__init__([b"answered"])
        self.environ, self.write = environ, write

    def close(self):
        try:
            self.write(b"LATE")
            record(self.environ, "late write returned")
        except Exception as exc:
            record(self.environ, f"late write raised {type(exc).__name__}")


def raw_late_write(environ, start_response):
    # The validator forbids write() after the response began.
    write = start_response("200 OK", TEXT + [("Content-Length", "8")])
    return WritesInClose(environ, write)


def closing(environ, start_response):
    q = query(environ)
    start_response("200 OK", TEXT)
    return RecordingIterable(environ, int(q.get("n", "3")), int(q.get("size", "10")),
                             int(q.get("raise_at", "-1")))


def write_callable(environ, start_response):
    write = start_response("200 OK", TEXT)
    write(b"written-1;")
    write(b"written-2;")
    return [b"returned"]


def errors_route(environ, start_response):
    q = query(environ)
    errors = environ["wsgi.errors"]
    errors.write(q["msg"] + "\n")
    errors.writelines([q["msg"] + "-writelines\n"])
    errors.flush()
    return text_response(start_response, b"logged")


def raise_before(environ, start_response):
    raise RuntimeError("raised before start_response: " + query(environ).get("marker", ""))


def raise_after_headers(environ, start_response):
    marker = query(environ).get("marker", "")
    start_response("200 OK", TEXT)

    def body():
        yield b"first chunk;"
        yield b"second chunk;"
        raise RuntimeError("raised after headers were sent: " + marker)

    return body()


def second_start_response(environ, start_response):
    start_response("200 OK", TEXT)
    try:
        start_response("201 Created", TEXT)
    except Exception as exc:
        return [f"second call raised {type(exc).__name__}".encode()]
    return [b"second call did not raise"]


def excinfo_replace(environ, start_response):
    """start_response with exc_info before anything was sent replaces the status."""
    start_response("200 OK", TEXT)
    try:
        raise ValueError("something went wrong after start_response")
    except ValueError:
        start_response("503 Replaced", TEXT + [("X-Replaced", "yes")], sys.exc_info())
    return [b"replaced"]


def excinfo_after_headers(environ, start_response):
    """start_response with exc_info after headers were sent must re-raise."""
    start_response("200 OK", TEXT)

    def body():
        yield b"first chunk;"
        yield b"second chunk;"
        try:
            raise ValueError("excinfo-after-headers " + query(environ).get("marker", ""))
        except ValueError:
            start_response("500 Too Late", TEXT, sys.exc_info())
        yield b"start_response did not re-raise"

    return body()


class RecordingFile:
    """A file-like object with a real fileno() whose close() is recorded.
    Not an io.IOBase, so nothing but an explicit close() (from the file
    wrapper's close(), from the server) can record it."""

    def __init__(self, environ, path):
        self.environ = environ
        self.file = open(path, "rb")

    def fileno(self):
        return self.file.fileno()

    def read(self, size=-1):
        return self.file.read(size)

    def seek(self, *args):
        return self.file.seek(*args)

    def tell(self):
        return self.file.tell()

    def close(self):
        if not self.file.closed:
            record(self.environ, "file closed")
        self.file.close()


def file_route(environ, start_response):
    """wsgi.file_wrapper over a real file (`path`), or over a BytesIO of
    `size` bytes (no fileno). `cl` sets Content-Length."""
    q = query(environ)
    headers = [("Content-Type", "application/octet-stream")]
    if "cl" in q:
        headers.append(("Content-Length", q["cl"]))
    if "path" in q:
        filelike = RecordingFile(environ, q["path"])
    else:
        filelike = io.BytesIO(bytes(range(256)) * (int(q["size"]) // 256))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](filelike, int(q.get("blksize", "65536")))


def input_ops(environ, start_response):
    """Reads the body with the wsgi.input method named by `op` and reports
    length, sha256, number of pieces, the largest piece and whether every
    piece but the last ends a line."""
    op = query(environ)["op"]
    inp = environ["wsgi.input"]
    pieces = []
    if op == "read_n":
        while chunk := inp.read(65536):
            pieces.append(chunk)
    elif op == "read_small":
        while chunk := inp.read(1000):
            pieces.append(chunk)
    elif op == "read_cl":
        pieces.append(inp.read(int(environ["CONTENT_LENGTH"])))
    elif op == "read_all":
        pieces.append(inp.read())
        pieces.append(inp.read())  # at EOF: b""
    elif op == "readline":
        while line := inp.readline():
            pieces.append(line)
    elif op == "readline_n":
        while line := inp.readline(100):
            pieces.append(line)
    elif op == "readlines":
        pieces = inp.readlines()
    elif op == "iter":
        pieces = [line for line in inp]
    elif op == "mixed":
        pieces = [inp.read(7), inp.readline(), inp.readline(5), inp.read(3), inp.read(0), inp.readline()]
        while chunk := inp.read(65536):
            pieces.append(chunk)
        pieces.append(inp.readline())  # at EOF: b""
    else:
        raise ValueError(op)
    data = b"".join(pieces)
    nonempty = [p for p in pieces if p]
    return json_response(start_response, {
        "length": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "pieces": len(nonempty),
        "max_piece": max((len(p) for p in nonempty), default=0),
        "lines_end_with_lf": all(p.endswith(b"\n") for p in nonempty[:-1]),
        "types": sorted({type(p).__name__ for p in pieces}),
        "sizes_head": [len(p) for p in pieces[:6]],
    })


def truncated(environ, start_response):
    """Records what reading a body that the client cut short looked like."""
    record(environ, "started")
    try:
        n, _, _ = read_all_sized(environ["wsgi.input"])
        record(environ, f"complete {n}")
    except OSError as exc:
        record(environ, f"OSError {type(exc).__name__}")
        raise
    except Exception as exc:
        record(environ, f"other {type(exc).__name__}: {exc}")
        raise
    return text_response(start_response, b"read it all")


def sleep_route(environ, start_response):
    q = query(environ)
    errors_log(environ, "sleep started " + q.get("marker", ""))
    time.sleep(float(q.get("s", "1")))
    return text_response(start_response, b"slept well")


def cwd(environ, start_response):
    return text_response(start_response, os.getcwd().encode())


# -- routes outside the validator -------------------------------------------

def raw_hello(environ, start_response):
    # Unvalidated: the validator wraps every result in its own iterator, so a
    # plain list of one bytes object (the server's fast path) never reaches
    # the server through it.
    start_response("200 OK", TEXT + [("Content-Length", "14")])
    return [b"Hello, World!\n"]


class HeaderList(list):
    """Headers in a list subclass, which the server reads through its iterator (an exact
    list it reads by index)."""


START_RESPONSE_CASES = {
    "subclass-ok": ("200 OK", HeaderList(TEXT + [("X-Sub", "yes")])),
    "subclass-lf-in-value": ("200 OK", HeaderList(TEXT + [("X-Bad", "a\nb")])),
    "no-reason": ("200", TEXT),
    "lf-in-value": ("200 OK", TEXT + [("X-Bad", "a\nb")]),
    "cr-in-value": ("200 OK", TEXT + [("X-Bad", "a\rX-Injected: 1")]),
    "nul-in-value": ("200 OK", TEXT + [("X-Bad", "a\x00b")]),
    "lf-in-name": ("200 OK", TEXT + [("X-Bad\nX-Injected", "1")]),
    "colon-in-name": ("200 OK", TEXT + [("X-Bad: x", "1")]),
    "crlf-in-status": ("200 OK\r\nX-Injected: 1", TEXT),
    "bytes-status": (b"200 OK", TEXT),
    "bytes-header": ("200 OK", [(b"Content-Type", b"text/plain")]),
    "hop-connection": ("200 OK", TEXT + [("Connection", "close")]),
    "hop-keep-alive": ("200 OK", TEXT + [("Keep-Alive", "timeout=5")]),
    "hop-transfer-encoding": ("200 OK", TEXT + [("Transfer-Encoding", "chunked")]),
    "hop-upgrade": ("200 OK", TEXT + [("Upgrade", "h2c")]),
}


def raw_start_response(environ, start_response):
    # Unvalidated: the validator would itself reject (or warn about) these
    # arguments before the server's start_response could see them.
    case = query(environ)["case"]
    status_line, headers = START_RESPONSE_CASES[case]
    try:
        start_response(status_line, headers)
    except Exception as exc:
        errors_log(environ, f"start_response rejected {case}: {type(exc).__name__}")
        raise
    return [b"start_response accepted " + case.encode()]


def raw_bad_result(environ, start_response):
    # Unvalidated: the validator asserts on these results itself.
    kind = query(environ)["kind"]
    start_response("200 OK", TEXT)
    if kind == "none":
        return None
    if kind == "int":
        return 5
    if kind == "str-items":
        return ["not bytes"]
    raise ValueError(kind)


ROUTES = {
    "hello": hello,
    "path": path_echo,
    "env": env,
    "echo": echo,
    "noread": noread,
    "status": status,
    "generator": generator,
    "stream-gated": stream_gated,
    "closing": closing,
    "write": write_callable,
    "errors": errors_route,
    "raise-before": raise_before,
    "raise-after-headers": raise_after_headers,
    "second-start-response": second_start_response,
    "excinfo-replace": excinfo_replace,
    "excinfo-after-headers": excinfo_after_headers,
    "file": file_route,
    "input": input_ops,
    "truncated": truncated,
    "sleep": sleep_route,
    "cwd": cwd,
}

RAW_ROUTES = {
    "hello": raw_hello,
    # A list of one bytes object, which the validator would wrap: what a Python thread
    # may write to its client itself (tests/integration/test_direct_answers.py).
    "path": path_echo,
    "sleep": sleep_route,
    # Custom request methods: the validator warns on any method it does not know.
    "env": env,
    # read() without a size and the server's own __iter__: the validator
    # asserts read() gets exactly one argument and replaces __iter__ with
    # readline() calls.
    "input": input_ops,
    "start-response": raw_start_response,
    "bad-result": raw_bad_result,
    "closing-list": raw_closing_list,
    "drain-in-close": raw_drain_in_close,
    "late-write": raw_late_write,
    "reentrant-buffer": raw_reentrant_buffer,
    # The validator wraps the file wrapper in its own iterator, which hides it
    # from the server's sendfile path.
    "file": file_route,
}


def first_segment(path):
    return path.lstrip("/").split("/", 1)[0]


def route(routes, path):
    handler = routes.get(first_segment(path))
    return handler or not_found


def not_found(environ, start_response):
    return text_response(start_response, b"no such route\n", "404 Not Found")


def validated_router(environ, start_response):
    return route(ROUTES, environ.get("PATH_INFO", ""))(environ, start_response)


_validated = validator(validated_router)


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path.startswith("/raw/"):
        return route(RAW_ROUTES, path[len("/raw"):])(environ, start_response)
    return _validated(environ, start_response)
