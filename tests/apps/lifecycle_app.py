"""An application for the supervisor's tests: it says which process served, and can
sleep, eat memory, or die in the ways production applications die.

    /            "pid N": which worker served
    /sleep?s=S&marker=M   logs "sleep started M", sleeps S seconds
    /grow?mb=N   keeps N MiB more (touched, so it is resident)
    /abort       os.abort(): SIGABRT, as a failed assertion in C does
    /segfault    reads address 0 through ctypes: SIGSEGV
    /exit        os._exit(3)
    /stream?n=N&every=S   N chunks of "tick\n", one every S seconds
"""

import os
import resource
import sys
import time
from urllib.parse import parse_qs

_kept = []


def _query(environ):
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _no_core_file():
    # A crash test must not leave a core file behind (in the repository, say).
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _stream(n, every):
    for _ in range(n):
        time.sleep(every)
        yield b"tick\n"


def app(environ, start_response):
    path = environ["PATH_INFO"]
    q = _query(environ)
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream(int(q.get("n", "4")), float(q.get("every", "0.5")))
    if path == "/sleep":
        if "marker" in q:
            print(f"sleep started {q['marker']}", file=sys.stderr, flush=True)
        time.sleep(float(q.get("s", "1")))
        body = b"slept"
    elif path == "/grow":
        block = bytearray(int(q["mb"]) << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        _kept.append(block)
        body = b"grown"
    elif path == "/abort":
        _no_core_file()
        os.abort()
    elif path == "/segfault":
        # Imported here: _ctypes refuses sub-interpreters before 3.13 (the test runs this
        # one on the main interpreter).
        import ctypes

        _no_core_file()
        ctypes.string_at(0)
    elif path == "/exit":
        os._exit(3)
    else:
        body = f"pid {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
