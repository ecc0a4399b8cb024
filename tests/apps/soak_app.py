"""The app of tests/integration/test_soak.py: answers anything (no validator, since the
abuse tests send methods and targets that wsgiref.validate rightly warns about), echoing
the path, after reading the whole body."""


def app(environ, start_response):
    environ["wsgi.input"].read()
    body = environ.get("PATH_INFO", "").encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
