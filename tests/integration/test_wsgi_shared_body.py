"""Large response bodies of one `bytes` object go out from the object's own memory (no
copy): the bytes on the wire, the framing and every reference must still be right."""

from __future__ import annotations

import pytest
import requests

from checks import wait_until
from rawhttp import request

BIG = bytes(range(256)) * 1024
MEDIUM = b"m" * 20000


@pytest.fixture(scope="module")
def body_server(module_spindle):
    # One Python thread: one interpreter, whose objects' counts every request sees.
    return module_spindle("body_app:app", "--py-threads", "1")


def refcounts(server) -> tuple[int, int]:
    resp = requests.get(server.url("/refcounts"), timeout=5)
    big, medium = resp.text.split()
    return int(big), int(medium)


def test_large_bodies_arrive_whole_on_a_kept_alive_connection(body_server):
    with body_server.connect(timeout=10) as conn:
        for path in ["/big", "/big-declared", "/medium-tuple", "/big"]:
            conn.send(request("GET", path, body_server.host_header))
            resp = conn.read_response()
            assert resp.status == 200, resp
            want = MEDIUM if path == "/medium-tuple" else BIG
            assert resp.header("Content-Length") == str(len(want))
            assert resp.body == want, path


def test_head_and_a_wrong_content_length_keep_their_framing(body_server):
    with body_server.connect(timeout=10) as conn:
        conn.send(request("HEAD", "/big", body_server.host_header))
        head = conn.read_response("HEAD")
        assert head.status == 200 and head.body == b""
        assert head.header("Content-Length") == str(len(BIG))
        conn.send(request("GET", "/big-wrong-length", body_server.host_header))
        short = conn.read_response()
        assert short.body == BIG[:1000]
        # The connection is still in sync after the dropped excess.
        conn.send(request("GET", "/medium-tuple", body_server.host_header))
        assert conn.read_response().body == MEDIUM


def test_every_reference_to_a_shared_body_is_released(body_server):
    # Warm up, then serve many large bodies (pipelined, so several are in flight at
    # once): the objects' reference counts come back to where they were.
    refcounts(body_server)
    before = refcounts(body_server)
    with body_server.connect(timeout=20) as conn:
        for _ in range(10):
            paths = ["/big", "/medium-tuple", "/big-declared"] * 5
            conn.send(b"".join(request("GET", p, body_server.host_header) for p in paths))
            for p in paths:
                resp = conn.read_response()
                assert resp.body == (MEDIUM if p == "/medium-tuple" else BIG)
    # Released by the Python thread after a batch, or soon when it is idle.
    wait_until(lambda: refcounts(body_server) == before, 5, what=f"reference counts back to {before}")


def test_client_gone_mid_body_releases_it(body_server):
    before = refcounts(body_server)
    for _ in range(20):
        with body_server.connect() as conn:
            conn.send(request("GET", "/big", body_server.host_header) * 4)
            conn.read_head()
    wait_until(lambda: refcounts(body_server) == before, 5, what=f"reference counts back to {before}")
    body_server.assert_serving()
