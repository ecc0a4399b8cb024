"""Pipelined requests (RFC 9112 §9.3.2): the requests of one write go to Python together,
and their responses come back in request order, whatever order they finish in."""

from __future__ import annotations

import pytest

from checks import wait_until
from rawhttp import request


@pytest.fixture(scope="module")
def pipe(module_spindle):
    return module_spindle("pipeline_app:app", "--py-threads", "2")


@pytest.mark.needs_pool
def test_pipelined_requests_run_together_and_answer_in_order(pipe, tmp_path):
    # The first request waits until the second has run: served one at a time, it would
    # wait for ever (here: 5 s, then say so).
    marker = tmp_path / "touched"
    with pipe.connect(timeout=10) as conn:
        conn.send(request("GET", f"/wait?marker={marker}", pipe.host_header)
                  + request("GET", f"/touch?marker={marker}", pipe.host_header))
        first, second = conn.read_response(), conn.read_response()
    assert (first.status, first.body) == (200, b"saw it"), first
    assert (second.status, second.body) == (200, b"touched"), second


def test_small_responses_wait_behind_a_large_streamed_one(pipe):
    # 40 chunks of 64 KiB: more than the 1 MiB response window, so the first response is
    # still streaming while the ones behind it are complete.
    reqs = [request("GET", "/chunks?count=40&size=65536", pipe.host_header)]
    reqs += [request("GET", f"/path/{i}", pipe.host_header) for i in range(8)]
    with pipe.connect(timeout=10) as conn:
        conn.send(b"".join(reqs))
        big = conn.read_response()
        rest = [conn.read_response().body for _ in range(8)]
    assert big.status == 200
    assert big.body == b"".join(bytes([97 + i % 26]) * 65536 for i in range(40))
    assert rest == [f"/path/{i}".encode() for i in range(8)]


def test_connection_close_ends_the_pipeline(pipe):
    reqs = [
        request("GET", "/path/one", pipe.host_header),
        request("GET", "/path/two", pipe.host_header, [("Connection", "close")]),
        request("GET", "/path/three", pipe.host_header),
    ]
    with pipe.connect() as conn:
        conn.send(b"".join(reqs))
        assert conn.read_response().body == b"/path/one"
        last = conn.read_response()
        assert last.body == b"/path/two" and last.has_token("Connection", "close"), last
        assert conn.wait_closed(2), "the request after Connection: close was answered"


def test_invalid_request_behind_valid_ones_is_answered_after_them(pipe):
    with pipe.connect() as conn:
        conn.send(request("GET", "/path/a", pipe.host_header)
                  + request("GET", "/path/b", pipe.host_header)
                  + b"GET /bad HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        assert conn.read_response().body == b"/path/a"
        assert conn.read_response().body == b"/path/b"
        assert conn.read_response().status == 400
        assert conn.wait_closed(2)


def test_client_gone_mid_pipeline_closes_every_started_response(pipe, tmp_path):
    # Ten streamed responses of 4 MiB each, pipelined; the client reads a little and
    # leaves. Every response the app started must be closed.
    marker = tmp_path / "marks"
    reqs = [request("GET", f"/chunks?count=64&size=65536&marker={marker}&id={i}", pipe.host_header)
            for i in range(10)]
    with pipe.connect() as conn:
        conn.send(b"".join(reqs))
        conn.read_head()

    def balanced():
        if not marker.exists():
            return False
        lines = marker.read_text().split()
        starts = {lines[i + 1] for i in range(0, len(lines), 2) if lines[i] == "start"}
        closes = {lines[i + 1] for i in range(0, len(lines), 2) if lines[i] == "close"}
        return starts and starts == closes

    wait_until(balanced, 10, what="close() for every started response")
    pipe.assert_serving()


def test_pipelined_bodies_are_each_their_own(pipe):
    bodies = [b"x" * n for n in (0, 1, 1000, 70000, 5)]
    reqs = [request("POST", f"/path/{i}", pipe.host_header, body=b) for i, b in enumerate(bodies)]
    with pipe.connect() as conn:
        conn.send(b"".join(reqs))
        got = [conn.read_response().body for _ in bodies]
    assert got == [f"/path/{i}".encode() for i in range(len(bodies))]


def test_request_refused_mid_pipeline_is_answered_in_its_turn(spindle):
    # The 413 for the second request must not overtake the first one's response.
    srv = spindle("pipeline_app:app", "--limit-request-body", "100")
    with srv.connect() as conn:
        conn.send(request("GET", "/path/first", srv.host_header)
                  + request("POST", "/path/too-big", srv.host_header, body=b"x" * 500))
        first = conn.read_response()
        assert (first.status, first.body) == (200, b"/path/first"), first
        assert conn.read_response().status == 413
        assert conn.wait_closed(3)


def test_response_begun_before_reading_the_body_reaches_the_client_first(pipe):
    # The client announces its body with Expect: 100-continue and waits. The app writes
    # part of its response, then reads: that part must be on the wire while we wait for
    # the body (no 100 then: the final response has begun), not held back.
    with pipe.connect() as conn:
        conn.send(b"POST /write-then-read HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        head = conn.read_head(timeout=3)
        assert head.status == 200, head
        conn.send(b"0123456789")
        assert conn.read_body(head) == b"head-first\ngot 10"
