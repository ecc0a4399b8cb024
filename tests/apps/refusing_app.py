"""An app importing a stdlib extension that refuses own-GIL sub-interpreters (single-phase
init): `--interpreters auto` must fall back to the main interpreter, `sub` must exit with a
clear message."""

import readline  # noqa: F401  (the point of this module)
from wsgiref.validate import validator


def _app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7")])
    return [b"refused"]


app = validator(_app)
