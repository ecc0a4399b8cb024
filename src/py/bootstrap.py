"""Spindle's Python-side helpers, executed once in every interpreter as module `_spindle`.

Spindle injects before this runs:
  log(level, text)      -- writes one line to the server log (0 error, 1 warn, 2 info, 3 debug)
  SERVER_INFO           -- dict: version, python, driver, mode, io_threads, py_threads
Nothing here runs per request except the wsgi.input, wsgi.errors and file_wrapper methods
an application calls itself; the request path proper is in Rust.
"""

import importlib
import io
import os
import stat
import sys

# `ast` and `traceback` (which bring re, enum, collections, textwrap...) are imported where
# they are needed: this runs in every interpreter, and an import there stays in its memory,
# about 1.3 MiB each (ARCHITECTURE.md §6, "Memory").


class ClientDisconnected(OSError):
    """The request body did not arrive whole: the client closed the connection early, broke
    the chunked framing, or sent more than --limit-request-body. Raised by wsgi.input; a
    short body is never handed over as if it were complete."""


class _BodyStream(io.RawIOBase):
    """The raw side of a streamed wsgi.input: `read_body` copies the body's next bytes into
    the reader's buffer from the piece the I/O thread last sent, and asks it for the next
    piece when that one is used up (the first ask also answers `Expect: 100-continue`)."""

    def __init__(self, read_body, token):
        super().__init__()
        self._read_body = read_body
        self._token = token

    def readable(self):
        return True

    def readinto(self, buffer):
        return self._read_body(self._token, buffer)


def stream_input(read_body, token):
    """wsgi.input for a body still on the socket: read(), read(n), readline(), readline(n),
    readlines() and iteration, from a 64 KiB buffer."""
    return io.BufferedReader(_BodyStream(read_body, token), 65536)


class _EmptyInput:
    """wsgi.input for requests without a body. Stateless, so one instance serves all."""

    def read(self, size=-1):
        return b""

    def readline(self, size=-1):
        return b""

    def readlines(self, hint=-1):
        return []

    def __iter__(self):
        return iter(())


EMPTY_INPUT = _EmptyInput()
BytesIO = io.BytesIO


class ErrorStream:
    """wsgi.errors: each write goes to the server log as a warning line."""

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError("wsgi.errors.write() takes str, not %s" % type(text).__name__)
        text = text.rstrip("\n")
        if text:
            log(1, text)
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        pass


ERRORS = ErrorStream()


class FileWrapper:
    """wsgi.file_wrapper. When the file has a real descriptor of a regular file, Spindle
    sends it with sendfile(2) and never calls __next__; otherwise it is iterated."""

    def __init__(self, filelike, blksize=8192):
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        return self

    def __next__(self):
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


def file_source(wrapper):
    """(fd, offset, length) when `wrapper` can go out with sendfile, else None."""
    filelike = wrapper.filelike
    try:
        fd = filelike.fileno()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        offset = filelike.tell() if hasattr(filelike, "tell") else os.lseek(fd, 0, os.SEEK_CUR)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return fd, offset, max(st.st_size - offset, 0)


def load_app(spec):
    """Imports MODULE:NAME or MODULE:FACTORY(literal args) and returns the WSGI callable."""
    if spec is None:
        return demo_app
    module_name, sep, expr = spec.partition(":")
    if not sep or not module_name or not expr:
        raise ValueError("%r: expected MODULE:APP, e.g. myproject.wsgi:application" % spec)
    module = importlib.import_module(module_name)
    expr = expr.strip()
    names = expr.split(".")
    if all(name.isidentifier() for name in names):  # NAME or NAME.ATTR, the usual case
        return _callable(spec, _lookup(module, module_name, names))
    import ast

    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError:
        raise ValueError("%r: %r is not a name or a call" % (spec, expr)) from None
    call = None
    if isinstance(tree, ast.Call):
        call, tree = tree, tree.func
    names = []
    while isinstance(tree, ast.Attribute):
        names.append(tree.attr)
        tree = tree.value
    if not isinstance(tree, ast.Name):
        raise ValueError("%r: %r is not a name or a call" % (spec, expr))
    names.append(tree.id)
    obj = _lookup(module, module_name, names[::-1])
    if call is not None:
        try:
            args = [ast.literal_eval(a) for a in call.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        except ValueError:
            raise ValueError("%r: factory arguments must be Python literals" % spec) from None
        obj = obj(*args, **kwargs)
    return _callable(spec, obj)


def _lookup(module, module_name, names):
    obj = module
    for name in names:
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise AttributeError("module %r has no attribute %r" % (module_name, ".".join(names))) from None
    return obj


def _callable(spec, obj):
    if not callable(obj):
        raise TypeError("%r is not callable (got %s)" % (spec, type(obj).__name__))
    return obj


def report_exception(exc, context):
    """Logs `context` and the traceback of `exc` as one block in the server log."""
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    log(0, "%s\n%s" % (context, text.rstrip("\n")))


def demo_app(environ, start_response):
    """The page served when no application is named."""
    info = SERVER_INFO
    rows = [
        ("Spindle", info["version"]),
        ("Python", sys.version.split()[0] + " (" + sys.executable + ")"),
        ("I/O driver", info["driver"]),
        ("I/O threads", str(info["io_threads"])),
        ("Python threads", info["py_threads"]),
        ("Interpreter mode", info["mode"]),
        ("Your request", "%s %s" % (environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/"))),
    ]
    table = "".join(
        "<tr><th>%s</th><td>%s</td></tr>" % (k, v.replace("&", "&amp;").replace("<", "&lt;")) for k, v in rows
    )
    body = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Spindle is running</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:3em;color:#222}"
        "th{text-align:left;padding-right:2em}td,th{padding:.3em 0}</style></head><body>"
        "<h1>Spindle is running</h1><p>This is the demo page: name your app to serve it, "
        "for example <code>spindle myproject.wsgi:application</code>.</p>"
        "<table>%s</table></body></html>" % table
    ).encode("utf-8")
    start_response(
        "200 OK",
        [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]
