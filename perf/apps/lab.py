"""The WSGI app of the performance lab (perf/lab.sh): one callable, several routes.

Every Python server in the lab serves this same module, so they all run the same
application code on the same interpreter. Routes, chosen by PATH_INFO:

  /         hello: 200, text/plain, Content-Length 13, "Hello, World!"
  /64k      64 KiB body (65536 bytes of "x"), Content-Length, one bytes object
  /post     reads the whole request body and answers its length in decimal
            ("4096" for the lab's 4 KiB POST); the chunked scenario posts here
            too, with Transfer-Encoding: chunked instead of Content-Length
  anything else: 404

Reading the body: with a Content-Length, exactly that many bytes (PEP 3333).
Without one (a chunked request), read() until the end: servers that de-chunk
set wsgi.input_terminated (or hand over a terminated stream), and a server
that cannot do either shows up in the lab as failing the chunked check, which
is what the lab wants to know. Header lists are fresh literals on every call:
some servers append to the list they are given.
"""

HELLO = b"Hello, World!"
HELLO_LEN = str(len(HELLO))
BIG = b"x" * 65536
BIG_LEN = str(len(BIG))
NOT_FOUND = b"not found\n"


def _read_body(environ):
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH", "")
    if length:
        want = int(length)
        data = stream.read(want)
        if len(data) != want:
            raise OSError("short body: %d of %d bytes" % (len(data), want))
        return data
    return stream.read()


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/":
        start_response(
            "200 OK",
            [("Content-Type", "text/plain"), ("Content-Length", HELLO_LEN)],
        )
        return [HELLO]
    if path == "/64k":
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", BIG_LEN)],
        )
        return [BIG]
    if path == "/post":
        body = str(len(_read_body(environ))).encode("ascii")
        start_response(
            "200 OK",
            [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
        )
        return [body]
    start_response(
        "404 Not Found",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(NOT_FOUND)))],
    )
    return [NOT_FOUND]
