"""The large-upload app (perf/upload.py): reads the request body in 64 KiB pieces and
answers how many bytes it read.

Any method and path: `wsgi.input.read(65536)` until it returns b"" (a chunked body, which
servers that de-chunk end with b""), or until CONTENT_LENGTH bytes are read when there is
one (PEP 3333: an app must not read past it; the last read asks only for what is left).
Nothing is kept: each piece is dropped once counted, so the app's memory stays flat and
what the server holds is the server's. The answer is 200, text/plain, the byte count in
decimal ("0" for a GET, which is what readiness polling sees).
"""

PIECE = 65536


def app(environ, start_response):
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH", "")
    total = 0
    if length:
        left = int(length)
        while left > 0:
            piece = stream.read(PIECE if left > PIECE else left)
            if not piece:
                break
            total += len(piece)
            left -= len(piece)
    else:
        while True:
            piece = stream.read(PIECE)
            if not piece:
                break
            total += len(piece)
    body = str(total).encode("ascii")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
