"""The app behind tests/integration/test_wsgi_shared_body.py: large response bodies of one
`bytes` object, which the server writes from the object's own memory. The same
module-level objects are returned again and again, so a reference the server forgets to
release (or releases twice) shows in their reference counts.
"""

import sys

BIG = bytes(range(256)) * 1024  # 256 KiB, every byte value
MEDIUM = b"m" * 20000


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [BIG]
    if path == "/big-declared":
        start_response("200 OK", [("Content-Length", str(len(BIG)))])
        return [BIG]
    if path == "/big-wrong-length":
        # Declares less than it returns: the excess must not reach the client.
        start_response("200 OK", [("Content-Length", "1000")])
        return [BIG]
    if path == "/medium-tuple":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (MEDIUM,)
    if path == "/refcounts":
        body = b"%d %d" % (sys.getrefcount(BIG), sys.getrefcount(MEDIUM))
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    body = path.encode()  # what the harness's liveness check expects
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
