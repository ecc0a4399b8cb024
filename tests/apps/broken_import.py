"""An app module whose import fails: the server must report the failing
import (`No module named 'nosuchmodule'`) and exit 1."""

import nosuchmodule  # noqa: F401  (the point of this module)


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"unreachable"]
