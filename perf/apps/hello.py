"""The hello-world WSGI app of the perf harness: the smallest complete request.

A fixed 13-byte body with an explicit Content-Length, so every server sends the
same bytes and none of them has to choose chunked framing. The header list is a
fresh literal on each call: some servers (wsgiref among them) add headers to
the list they are given, and a shared module-level list would grow.
"""

BODY = b"Hello, World!"
CONTENT_LENGTH = str(len(BODY))


def app(environ, start_response):
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", CONTENT_LENGTH)],
    )
    return [BODY]
