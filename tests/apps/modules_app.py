"""Answers with the names in `sys.modules` of the interpreter that runs it, as JSON: what
the server itself imported there stays in every interpreter's memory."""

import json
import sys


def app(environ, start_response):
    body = json.dumps(sorted(sys.modules)).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
