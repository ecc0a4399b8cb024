"""A CPU-bound WSGI app for the interpreter-scaling benchmark (perf/subinterp.py): about
200 µs of pure-Python work per request (a loop that never releases the GIL), then a short
answer. The number of iterations is fixed, so runs compare; the script reports the time
one call takes on the machine it ran on."""

ITERATIONS = 2000


def work(n=ITERATIONS):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def app(environ, start_response):
    body = b"%d\n" % work()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
