"""The empty WSGI app of benches/wsgi.rs: no headers, an empty body.

What the hand-off round trip costs with (almost) nothing of the application in it: one
call, one start_response, a list of one bytes (the bridge's fast path).
"""


def app(environ, start_response):
    start_response("200 OK", [])
    return [b""]
