"""An app with one slow endpoint, for the busy-worker test of perf/workers.py: does a fast
request wait behind a slow one that holds a worker's only Python thread?

  /sleep?s=N   sleeps N seconds (time.sleep, 1 when N is missing), then answers 13 bytes
  anything else answers 13 bytes at once (the hello app's response)
"""

import time

BODY = b"Hello, World!"
CONTENT_LENGTH = str(len(BODY))


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/sleep":
        params = dict(p.split("=", 1) for p in environ.get("QUERY_STRING", "").split("&") if "=" in p)
        time.sleep(float(params.get("s", "1")))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", CONTENT_LENGTH)])
    return [BODY]
