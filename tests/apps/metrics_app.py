"""An application for the metrics tests: it answers the status the query asks for and
says which process served.

    /?status=N   status N (200 when absent), body "pid P"
    /sleep?s=S   sleeps S seconds, then 200
"""

import os
import time
from urllib.parse import parse_qs
from wsgiref.validate import validator

REASONS = {200: "OK", 201: "Created", 302: "Found", 404: "Not Found", 418: "I'm a teapot",
           500: "Internal Server Error", 503: "Service Unavailable"}


def _app(environ, start_response):
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(float(q.get("s", "1")))
    code = int(q.get("status", "200"))
    body = f"pid {os.getpid()}".encode()
    start_response(f"{code} {REASONS.get(code, 'Whatever')}",
                   [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
