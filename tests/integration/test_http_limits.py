"""The --limit-request-* flags: each bound is applied at the configured value
(with margins on both sides, since what a limit counts exactly, the CRLF or
not, is an implementation detail) and answered with its status."""

import hashlib
import json

import pytest

from checks import assert_error_response
from rawhttp import chunked, request

LIMITS = ["--limit-request-line", "256", "--limit-request-fields", "10",
          "--limit-request-field-size", "200", "--limit-request-head", "1024",
          "--limit-request-body", "1000"]


@pytest.fixture(scope="module")
def limited(module_spindle):
    return module_spindle("wsgi_app:app", *LIMITS)


def head_with(headers, path="/path/ok"):
    return request("GET", path, "x", headers)


OVER = [
    ("request-line", head_with([], "/path/" + "a" * 400), 414),
    ("fields", head_with([(f"X-H{i}", "v") for i in range(15)]), 431),
    ("field-size", head_with([("X-Big", "v" * 300)]), 431),
    ("head", head_with([(f"X-H{i}", "v" * 150) for i in range(8)]), 431),
    ("body-content-length", request("POST", "/echo", "x", [("Content-Length", "1001")]), 413),
    ("body-content-length-huge", request("POST", "/echo", "x", [("Content-Length", str(10**12))]), 413),
]
UNDER = [
    ("request-line", head_with([], "/path/" + "a" * 150)),
    ("fields", head_with([(f"X-H{i}", "v") for i in range(5)])),
    ("field-size", head_with([("X-Big", "v" * 100)])),
    ("head", head_with([(f"X-H{i}", "v" * 150) for i in range(3)])),
]


@pytest.mark.parametrize("raw, status", [(r, s) for _, r, s in OVER], ids=[i for i, _, _ in OVER])
def test_over_configured_limit_rejected(limited, raw, status):
    with limited.connect() as conn:
        conn.send(raw)
        assert_error_response(conn, status, "over the configured limit")
    limited.assert_serving()


@pytest.mark.parametrize("raw", [r for _, r in UNDER], ids=[i for i, _ in UNDER])
def test_under_configured_limit_served(limited, raw):
    with limited.connect() as conn:
        conn.send(raw)
        resp = conn.read_response()
    assert resp.status == 200 and resp.body.startswith(b"/path/"), resp


def test_body_at_limit_accepted(limited):
    body = bytes(range(250)) * 4
    with limited.connect() as conn:
        conn.send(request("POST", "/echo", limited.host_header, body=body))
        resp = conn.read_response()
    assert resp.status == 200, resp
    assert json.loads(resp.body)["sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_body_within_limit_accepted(limited):
    body = chunked([b"a" * 400, b"b" * 400, b"c" * 200])
    with limited.connect() as conn:
        conn.send(request("POST", "/echo", limited.host_header, [("Transfer-Encoding", "chunked")], body))
        resp = conn.read_response()
    assert resp.status == 200 and json.loads(resp.body)["length"] == 1000, resp


def test_chunked_body_over_limit_rejected(limited):
    # Each chunk is small; only their sum is over the limit.
    body = chunked([b"a" * 400, b"b" * 400, b"c" * 400])
    with limited.connect() as conn:
        conn.send(request("POST", "/echo", limited.host_header, [("Transfer-Encoding", "chunked")], body))
        assert_error_response(conn, 413, "chunked body over --limit-request-body")
    limited.assert_serving()
