"""An app importing a stdlib extension that refuses own-GIL sub-interpreters (single-phase
init): `--interpreters auto` must fall back to the main interpreter, `sub` must exit with a
clear message."""

import readline  # noqa: F401  (the point of this module)
from wsgiref.validate import validator

import interp_app


def _app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7")])
    return [b"refused"]


_refused = validator(_app)


def app(environ, start_response):
    # Everything but / as interp_app answers it (which threads serve, and where).
    if environ.get("PATH_INFO", "/") == "/":
        return _refused(environ, start_response)
    return interp_app.app(environ, start_response)
