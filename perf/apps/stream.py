"""An app for perf/slow_readers.py: a streamed response, and a normal one.

  /stream?chunks=N&size=S   N pieces of S bytes from a generator (default 16 of 64 KiB:
                            1 MiB, issue 14's slow-reader case)
  anything else             13 bytes at once (the hello app's response)
"""

BODY = b"Hello, World!"


def _pieces(chunks, size):
    piece = b"x" * size
    for _ in range(chunks):
        yield piece[:]  # a fresh object each time, as an app rendering its pieces makes


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/stream":
        params = dict(p.split("=", 1) for p in environ.get("QUERY_STRING", "").split("&") if "=" in p)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _pieces(int(params.get("chunks", "16")), int(params.get("size", "65536")))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]
