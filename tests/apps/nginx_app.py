"""The app behind tests/integration/test_nginx.py: wsgi_app's routes, plus `/big`, a
response of one large `bytes` object (`n` bytes, a pattern the test can check), which
the server writes from the object's own memory (and, over FastCGI, wraps in records).
"""

from wsgiref.validate import validator

from wsgi_app import app as wsgi_app, query


def big(environ, start_response):
    n = int(query(environ).get("n", "1048576"))
    body = (bytes(range(256)) * (n // 256 + 1))[:n]
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(n))])
    return [body]


_big = validator(big)


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/big":
        return _big(environ, start_response)
    return wsgi_app(environ, start_response)
