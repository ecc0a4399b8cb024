"""Malformed and hostile requests (ARCHITECTURE.md §5, RFC 9112): each gets the
right status with Content-Length and `Connection: close`, the connection is
closed after it, and the server answers a good request on a new connection
at once."""

import time

import pytest

from checks import assert_error_response
from rawhttp import ConnectionResetBeforeResponse, parse_all, request

H = "Host: x\r\n"

# (id, raw request bytes, expected status or set of statuses)
BAD_REQUESTS = [
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: x\n\n", 400),
    ("bare-lf-in-header", b"GET / HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n", 400),
    ("bare-lf-after-request-line", b"GET / HTTP/1.1\nHost: x\r\n\r\n", 400),
    ("bare-cr-in-value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),
    ("nul-in-value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("obs-fold-tab", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n", 400),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n", 400),
    ("header-without-colon", b"GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n", 400),
    ("empty-header-name", b"GET / HTTP/1.1\r\nHost: x\r\n: value\r\n\r\n", 400),
    ("garbage-request-line", b"HELLO\r\nHost: x\r\n\r\n", 400),
    # HTTP/0.9 style: a bad request line, or a version the server refuses.
    ("missing-version", b"GET /\r\nHost: x\r\n\r\n", {400, 505}),
    ("cl-and-te", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-and-cl", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Length: 5\r\n\r\n0\r\n\r\n", 400),
    ("two-differing-cl", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                         b"Content-Length: 6\r\n\r\nhello!", 400),
    ("cl-list-differing", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!", 400),
    ("cl-plus-sign", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", 400),
    ("cl-negative", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    ("cl-hex", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\nhello", 400),
    # Not a number the server can hold (400), or a body too large (413).
    ("cl-overflow", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
     {400, 413}),
    ("te-chunked-not-last", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
                            b"0\r\n\r\n", 400),
    ("te-gzip-alone", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", {400, 501}),
    ("te-unknown-coding", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: foo\r\n\r\n", 501),
    ("te-unknown-then-chunked", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: foo, chunked\r\n\r\n"
                                b"0\r\n\r\n", 501),
    ("te-on-http10", b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("missing-host-http11", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("two-identical-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    ("chunk-size-not-hex", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"zz\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-negative", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"-5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-signed", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"+5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-overflow", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"fffffffffffffffffffff1\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-missing-crlf", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"5\r\nhelloXX0\r\n\r\n", 400),
    ("chunk-bare-lf", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\nhello\n0\n\n", 400),
    ("second-chunk-bad", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\nxyz\r\nabc\r\n0\r\n\r\n", 400),
    ("http-2.0", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ("http-3.0", b"GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505),
    ("long-request-line", b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("too-many-headers", b"GET / HTTP/1.1\r\nHost: x\r\n"
                         + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
    ("huge-header", b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n", 431),
    ("huge-head-total", b"GET / HTTP/1.1\r\nHost: x\r\n"
                        + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 8000) for i in range(5)) + b"\r\n", 431),
]


@pytest.mark.parametrize("raw, expected", [(r, e) for _, r, e in BAD_REQUESTS],
                         ids=[i for i, _, _ in BAD_REQUESTS])
def test_bad_request_rejected(server, raw, expected):
    with server.connect() as conn:
        conn.send(raw)
        assert_error_response(conn, expected, "bad request")
    server.assert_serving()


@pytest.mark.parametrize("raw", [
    # Within every default limit: must be served.
    b"GET /path/" + b"a" * 4000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /path/ok HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(90)) + b"\r\n",
    b"GET /path/ok HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 8000 + b"\r\n\r\n",
    b"GET /path/ok HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 7000) for i in range(4)) + b"\r\n",
    # HTTP/1.0 needs no Host.
    b"GET /path/ok HTTP/1.0\r\n\r\n",
    # Two equal Content-Length values may be accepted (RFC 9112 §6.3), but
    # so may a rejection: not tested. Empty header value is fine.
    b"GET /path/ok HTTP/1.1\r\nHost: x\r\nX-Empty:\r\n\r\n",
    # Header names are case-insensitive; whitespace around values is trimmed.
    b"GET /path/ok HTTP/1.1\r\nhOsT: x\r\nX-Pad:   padded   \r\n\r\n",
], ids=["request-line-4000", "90-headers", "header-8000", "head-28000", "http10-no-host",
        "empty-value", "mixed-case"])
def test_request_within_limits_served(server, raw):
    with server.connect() as conn:
        conn.send(raw)
        resp = conn.read_response()
    assert resp.status == 200, resp
    assert resp.body.startswith(b"/path/")


def test_unread_body_is_skipped_on_keep_alive(server):
    # /noread ignores the body: the server must skip it to find the next request.
    body = b"GET /path/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    with server.connect() as conn:
        conn.send(request("POST", "/noread", server.host_header, body=body)
                  + request("GET", "/path/next", server.host_header, [("Connection", "close")]))
        data = conn.read_until_close(5)
    bodies = [r.body for r in parse_all(data, ["POST", "GET"])]
    assert bodies == [b"did not read the body", b"/path/next"], bodies


# -- smuggling ----------------------------------------------------------------

SMUGGLE_TAIL = b"GET /path/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
SMUGGLING = [
    # CL.TE: a front end honouring Content-Length would forward all of it.
    ("cl-te", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"0\r\n\r\nG" + SMUGGLE_TAIL),
    # TE.CL
    ("te-cl", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"8\r\nSMUGGLED\r\n0\r\n\r\n" + SMUGGLE_TAIL),
    ("te-space-before-colon", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                              b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + SMUGGLE_TAIL),
    ("te-vertical-tab", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                        b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n" + SMUGGLE_TAIL),
    ("te-xchunked", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n"
                    b"0\r\n\r\n" + SMUGGLE_TAIL),
    ("te-obs-fold", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"
                    b"0\r\n\r\n" + SMUGGLE_TAIL),
    ("double-cl", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 43\r\n\r\n"
                  + SMUGGLE_TAIL),
    ("chunk-lf-only-terminator", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"2\r\nab\n0\r\n\r\n" + SMUGGLE_TAIL),
    ("bare-lf-header-hides-te", b"POST /echo HTTP/1.1\r\nHost: x\r\nX-A: b\nTransfer-Encoding: chunked\r\n"
                                b"Content-Length: 44\r\n\r\n0\r\n\r\n" + SMUGGLE_TAIL),
]


@pytest.mark.parametrize("raw", [r for _, r in SMUGGLING], ids=[i for i, _ in SMUGGLING])
def test_smuggling_attempt_never_yields_two_responses(server, raw):
    with server.connect() as conn:
        conn.send(raw)
        try:
            data = conn.read_until_close(5)
        except ConnectionResetBeforeResponse as exc:
            pytest.fail(f"connection reset before any response (partial {exc.partial!r})")
    responses = parse_all(data, ["POST"])
    assert len(responses) == 1, f"{len(responses)} responses to one smuggling attempt: {responses!r}"
    assert 400 <= responses[0].status < 600, responses[0]
    assert b"smuggled" not in data
    server.assert_serving()


# -- slow clients ---------------------------------------------------------------

@pytest.fixture(scope="module")
def short_timeouts(module_spindle):
    return module_spindle("wsgi_app:app", "--header-timeout", "1", "--keep-alive", "5")


def _assert_408_or_close(conn, started, what):
    try:
        data = conn.read_until_close(5)
    except Exception as exc:  # ReadTimeout: the server never gave up.
        pytest.fail(f"{what}: connection still open 5 s into a 1 s --header-timeout ({exc})")
    elapsed = time.monotonic() - started
    if data:
        responses = parse_all(data)
        assert [r.status for r in responses] == [408], responses
        assert responses[0].has_token("Connection", "close"), responses[0]
        assert responses[0].header("Content-Length") is not None, responses[0]
    assert elapsed >= 0.8, f"{what}: gave up after {elapsed:.2f} s, before the 1 s header timeout"


def test_slowloris_half_head_times_out(short_timeouts):
    with short_timeouts.connect() as conn:
        conn.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        _assert_408_or_close(conn, started, "half a head")
    short_timeouts.assert_serving()


def test_slowloris_trickling_head_times_out(short_timeouts):
    # A byte every 0.2 s keeps the connection busy but the head never ends:
    # the header timeout bounds the whole head, not the gap between reads.
    with short_timeouts.connect() as conn:
        started = time.monotonic()
        conn.send(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        deadline = started + 5
        while time.monotonic() < deadline:
            if conn.readable_within(0.2):
                break
            try:
                conn.send(b"a")
            except (BrokenPipeError, ConnectionResetError):
                break
        _assert_408_or_close(conn, started, "trickled head")
    short_timeouts.assert_serving()


def test_header_timeout_does_not_cut_a_slow_app(short_timeouts):
    # The header timeout bounds receiving the head, not the app: a 1.5 s
    # response under a 1 s header timeout is complete.
    resp = short_timeouts.get("/sleep?s=1.5", timeout=5)
    assert resp.status == 200 and resp.body == b"slept well", resp
