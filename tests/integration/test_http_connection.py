"""HTTP/1.1 connection behaviour (ARCHITECTURE.md §5): keep-alive, HTTP/1.0,
pipelining, chunked uploads, Expect: 100-continue, HEAD, bodiless statuses,
response framing and the Date header."""

import email.utils
import hashlib
import json
import time

import pytest
import requests

from rawhttp import chunked, request


def echo_json(resp):
    assert resp.status == 200, resp
    return json.loads(resp.body)


# -- keep-alive ---------------------------------------------------------------

def test_keep_alive_reuses_one_connection(server):
    with server.connect() as conn:
        for i in range(5):
            conn.send(request("GET", f"/env/{i}", server.host_header))
            resp = conn.read_response()
            assert resp.status == 200, resp
            assert not resp.has_token("Connection", "close"), resp
            env = json.loads(resp.body)
            assert env["PATH_INFO"]["value"] == f"/env/{i}"
            # Same socket every time: the server saw the same client port.
            assert env["REMOTE_PORT"]["value"] == str(conn.local_port)
        assert not conn.readable_within(0.05), "server sent bytes or closed after the responses"


def test_keep_alive_idle_timeout_closes_connection(spindle):
    srv = spindle("wsgi_app:app", "--keep-alive", "1")
    with srv.connect() as conn:
        conn.send(request("GET", "/hello", srv.host_header))
        assert conn.read_response().status == 200
        started = time.monotonic()
        closed = conn.wait_closed(timeout=4)
        waited = time.monotonic() - started
    assert closed, "idle keep-alive connection still open 4 s after the response with --keep-alive 1"
    assert waited >= 0.5, f"closed after {waited:.2f} s: before the 1 s keep-alive timeout"


def test_connection_close_request_closes_after_response(server):
    with server.connect() as conn:
        conn.send(request("GET", "/hello", server.host_header, [("Connection", "close")]))
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.has_token("Connection", "close"), resp
        assert conn.wait_closed(2), "server kept the connection open after Connection: close"


def test_http10_closes_by_default(server):
    with server.connect() as conn:
        conn.send(b"GET /path/ten HTTP/1.0\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == b"/path/ten", resp
        assert not resp.has_token("Connection", "keep-alive"), resp
        assert conn.wait_closed(2), "HTTP/1.0 connection without keep-alive left open"


def test_http10_keep_alive_when_asked(server):
    with server.connect() as conn:
        for i in range(3):
            conn.send(f"GET /path/ten-{i} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
            resp = conn.read_response()
            assert resp.status == 200 and resp.body == f"/path/ten-{i}".encode(), resp
            assert resp.has_token("Connection", "keep-alive"), \
                f"an HTTP/1.0 keep-alive response must say Connection: keep-alive: {resp!r}"
            assert resp.framing == "length", resp


def test_http10_keep_alive_without_length_falls_back_to_close(server):
    with server.connect() as conn:
        conn.send(b"GET /generator HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200, resp
        assert resp.framing == "close", resp
        assert not resp.has_token("Connection", "keep-alive"), resp
        assert resp.body == b"piece 0\npiece 1\npiece 2\n"


# -- pipelining ---------------------------------------------------------------

def test_pipelining_ten_requests_in_one_write(server):
    with server.connect() as conn:
        conn.send(b"".join(request("GET", f"/path/p{i}", server.host_header) for i in range(10)))
        bodies = [conn.read_response().body for _ in range(10)]
        assert bodies == [f"/path/p{i}".encode() for i in range(10)]
        assert not conn.readable_within(0.05)


def test_pipelining_large_heads_across_reads(server):
    # About 60 KiB of heads in one write: requests straddle every read buffer
    # boundary, and what is left after one request is the start of the next.
    pad = [("X-Pad-%d" % j, "p" * 1500) for j in range(4)]
    reqs = [request("GET", f"/path/big{i}", server.host_header, pad) for i in range(10)]
    with server.connect() as conn:
        conn.send(b"".join(reqs))
        bodies = [conn.read_response().body for _ in range(10)]
    assert bodies == [f"/path/big{i}".encode() for i in range(10)]


def test_head_split_across_many_writes(server):
    # 20 KiB of head (each field under the 8190-byte default) in 1000-byte writes.
    fields = [(f"X-Long-{i}", chr(97 + i) * 5000) for i in range(4)] + [("X-After", "tail")]
    raw = request("GET", "/env/split", server.host_header, fields)
    with server.connect() as conn:
        for i in range(0, len(raw), 1000):
            conn.send(raw[i:i + 1000])
        resp = conn.read_response()
    assert resp.status == 200, resp
    env = json.loads(resp.body)
    for i in range(4):
        assert env[f"HTTP_X_LONG_{i}"]["value"] == chr(97 + i) * 5000
    assert env["HTTP_X_AFTER"]["value"] == "tail"


def test_pipelining_mixed_methods_and_bodies_in_order(server):
    payloads = [b"a" * 10, b"", b"b" * 70000, b"c"]
    reqs = [
        request("POST", "/echo", server.host_header, body=payloads[0]),
        request("HEAD", "/hello", server.host_header),
        request("POST", "/echo", server.host_header, [("Transfer-Encoding", "chunked")],
                body=chunked([payloads[2][:30000], payloads[2][30000:]])),
        request("GET", "/path/last", server.host_header, [("Connection", "close")]),
    ]
    with server.connect() as conn:
        conn.send(b"".join(reqs))
        r1, r2, r3, r4 = conn.read_responses(["POST", "HEAD", "POST", "GET"])
        assert echo_json(r1)["sha256"] == hashlib.sha256(payloads[0]).hexdigest()
        assert r2.status == 200 and r2.body == b"", r2
        assert echo_json(r3)["length"] == 70000
        assert echo_json(r3)["sha256"] == hashlib.sha256(payloads[2]).hexdigest()
        assert r4.body == b"/path/last"
        assert conn.wait_closed(2)


# -- chunked request bodies ---------------------------------------------------

def test_chunked_upload_streamed_by_requests(server):
    pieces = [bytes([i % 251]) * (1000 + 37 * i) for i in range(200)]

    def gen():
        yield from pieces

    resp = requests.post(server.url("/echo"), data=gen(), timeout=10)
    assert resp.status_code == 200
    got = resp.json()
    data = b"".join(pieces)
    assert got["length"] == len(data)
    assert got["sha256"] == hashlib.sha256(data).hexdigest()
    assert got["content_length"] in (None, ""), "a chunked request must not get a made-up CONTENT_LENGTH"


def test_chunked_upload_with_extensions_and_trailers(server):
    body = (b"5;name=value\r\nhello\r\n"
            b"6 ; quoted=\"a;b\"\r\n world\r\n"
            b"0\r\nX-Trailer: one\r\nX-Other: two\r\n\r\n")
    with server.connect() as conn:
        conn.send(request("POST", "/echo", server.host_header, [("Transfer-Encoding", "chunked")], body))
        got = echo_json(conn.read_response())
        assert got["length"] == 11
        assert got["sha256"] == hashlib.sha256(b"hello world").hexdigest()
        # The trailer section was consumed: the connection is still in sync.
        conn.send(request("GET", "/path/after-trailers", server.host_header))
        assert conn.read_response().body == b"/path/after-trailers"


def test_chunked_upload_split_across_many_writes(server):
    body = chunked([b"abc", b"defgh", b"i" * 5000])
    with server.connect() as conn:
        conn.send(request("POST", "/echo", server.host_header, [("Transfer-Encoding", "chunked")]))
        for i in range(0, len(body), 7):
            conn.send(body[i:i + 7])
        got = echo_json(conn.read_response())
        assert got["length"] == 8 + 5000


# -- Expect: 100-continue -----------------------------------------------------

def test_expect_100_continue_sent_when_app_reads_body(server):
    body = b"x" * 5000
    with server.connect() as conn:
        conn.send(request("POST", "/echo", server.host_header,
                          [("Expect", "100-continue"), ("Content-Length", str(len(body)))]))
        interim = conn.read_head(timeout=5)
        assert interim.status == 100, f"expected 100 Continue before sending the body, got {interim!r}"
        assert interim.version == "HTTP/1.1"
        conn.send(body)
        got = echo_json(conn.read_response(skip_interim=False))
        assert got["length"] == 5000


def test_expect_100_continue_not_sent_when_app_ignores_body(server):
    with server.connect() as conn:
        conn.send(request("POST", "/noread", server.host_header,
                          [("Expect", "100-continue"), ("Content-Length", "5000")]))
        resp = conn.read_response(skip_interim=False)
        assert resp.status == 200, f"the app does not read the body: no 100 Continue expected, got {resp!r}"
        assert resp.body == b"did not read the body"


# -- bodiless responses -------------------------------------------------------

def test_head_has_no_body_and_same_headers_as_get(server):
    with server.connect() as conn:
        conn.send(request("GET", "/hello", server.host_header) + request("HEAD", "/hello", server.host_header)
                  + request("GET", "/path/after-head", server.host_header))
        get, head, after = conn.read_responses(["GET", "HEAD", "GET"])
    assert get.status == head.status == 200
    assert head.body == b""
    assert head.header("Content-Length") == get.header("Content-Length") == "14"

    def comparable(resp):
        return sorted((k.lower(), v) for k, v in resp.headers if k.lower() != "date")

    assert comparable(head) == comparable(get)
    # Had the server sent a body after the HEAD head, this would not parse.
    assert after.body == b"/path/after-head"


def test_head_of_generator_response_has_no_body(server):
    with server.connect() as conn:
        conn.send(request("HEAD", "/generator", server.host_header)
                  + request("GET", "/path/after-head", server.host_header))
        head, after = conn.read_responses(["HEAD", "GET"])
    assert head.status == 200 and head.body == b""
    assert after.body == b"/path/after-head"


def test_204_and_304_have_no_body(server):
    with server.connect() as conn:
        conn.send(request("GET", "/status/204", server.host_header)
                  + request("GET", "/status/304", server.host_header)
                  + request("GET", "/path/after", server.host_header))
        r204, r304, after = conn.read_responses(["GET", "GET", "GET"])
    assert r204.status == 204 and r204.body == b""
    assert r204.header("Transfer-Encoding") is None and r204.header("Content-Length") is None, r204
    assert r304.status == 304 and r304.body == b""
    assert r304.header("Transfer-Encoding") is None, r304
    assert r304.header("ETag") == '"v1"'
    assert after.body == b"/path/after", "stray bytes after a 204/304 broke the framing"


# -- response framing ---------------------------------------------------------

def test_response_without_length_is_chunked_on_http11(server):
    with server.connect() as conn:
        conn.send(request("GET", "/generator?n=4", server.host_header))
        resp = conn.read_response()
        assert resp.framing == "chunked", resp
        assert resp.body == b"piece 0\npiece 1\npiece 2\npiece 3\n"
        conn.send(request("GET", "/path/next", server.host_header))
        assert conn.read_response().body == b"/path/next"


def test_response_without_length_is_close_delimited_on_http10(server):
    with server.connect() as conn:
        conn.send(b"GET /generator?n=4 HTTP/1.0\r\n\r\n")
        resp = conn.read_response()
        assert resp.framing == "close", resp
        assert resp.header("Transfer-Encoding") is None
        assert resp.body == b"piece 0\npiece 1\npiece 2\npiece 3\n"


def test_date_header_present_and_well_formed(server):
    before = time.time()
    resp = server.get("/hello")
    after = time.time()
    date = resp.header("Date")
    assert date is not None, resp
    # RFC 9110 §5.6.7 IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT".
    assert time.strptime(date, "%a, %d %b %Y %H:%M:%S GMT"), date
    stamp = email.utils.parsedate_to_datetime(date).timestamp()
    assert before - 2 <= stamp <= after + 1, f"Date {date!r} is not now"


def test_absolute_form_request_target(server):
    # RFC 9112 §3.2.2: a server MUST accept the absolute form.
    with server.connect() as conn:
        conn.send(request("GET", f"http://{server.host_header}/env/abs?q=1", server.host_header))
        env = json.loads(conn.read_response().body)
    assert env["PATH_INFO"]["value"] == "/env/abs"
    assert env["QUERY_STRING"]["value"] == "q=1"


# -- concurrency ----------------------------------------------------------------

def test_many_concurrent_connections(server):
    conns = [server.connect() for _ in range(64)]
    try:
        for i, conn in enumerate(conns):
            conn.send(request("GET", f"/path/c{i}", server.host_header))
        for i, conn in enumerate(conns):
            assert conn.read_response().body == f"/path/c{i}".encode()
    finally:
        for conn in conns:
            conn.close()


# Not under --inline: there an I/O thread in the app accepts nothing, so when both
# connections hash to one thread and the first request starts before the second
# connection is accepted, spreading never sees it and the two run one after the other
# (ARCHITECTURE.md §4, "Inline": an app that waits holds its I/O thread).
@pytest.mark.needs_pool
def test_py_threads_serve_blocking_requests_concurrently(server):
    # Two Python threads (--py-threads 2): two requests that sleep 0.6 s
    # each (releasing the GIL) overlap, so both end well before 1.2 s.
    conns = [server.connect() for _ in range(2)]
    try:
        started = time.monotonic()
        for conn in conns:
            conn.send(request("GET", "/sleep?s=0.6", server.host_header))
        for conn in conns:
            assert conn.read_response().body == b"slept well"
        elapsed = time.monotonic() - started
    finally:
        for conn in conns:
            conn.close()
    assert elapsed < 1.1, f"two 0.6 s requests took {elapsed:.2f} s: served one after the other"
