"""A CPU-bound WSGI app for the interpreter-scaling benchmark (perf/subinterp.py): about
200 µs of pure-Python work per request (`app`; a loop that never releases the GIL), or
about 1 ms (`heavy`, the order of rendering a large template), then a short answer. The
numbers of iterations are fixed, so runs compare; the script reports the time one call
takes on the machine it ran on."""

ITERATIONS = 2000
HEAVY_ITERATIONS = 5 * ITERATIONS


def work(n=ITERATIONS):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def app(environ, start_response):
    body = b"%d\n" % work()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def heavy(environ, start_response):
    body = b"%d\n" % work(HEAVY_ITERATIONS)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
