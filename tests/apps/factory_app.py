"""An app built by a factory: `factory_app:create_app()` or
`factory_app:create_app('x', 2)` on the command line; or one found by a dotted name,
`factory_app:service.app`."""

import json
import types
import warnings
from wsgiref.validate import validator

warnings.simplefilter("error")


def create_app(greeting="hello", times=1):
    def factory_made(environ, start_response):
        body = json.dumps({"greeting": greeting, "times": times, "text": greeting * times}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return validator(factory_made)


service = types.SimpleNamespace(app=create_app("dotted", 2))
