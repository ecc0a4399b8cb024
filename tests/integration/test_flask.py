"""A real framework from PyPI on Spindle: Flask (tests/apps/flask_app.py)."""

import hashlib
import json

import httpx
import pytest
import requests

from conftest import APPS


@pytest.fixture(scope="module")
def flask_server(module_spindle):
    return module_spindle("flask_app:app")


def test_form_post(flask_server):
    resp = requests.post(flask_server.url("/form"), data=[("name", "Zoë"), ("tag", "a"), ("tag", "b & c")],
                         timeout=5)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"name": ["Zoë"], "tag": ["a", "b & c"]}


def test_json_in_and_out(flask_server):
    resp = requests.post(flask_server.url("/json"), json={"numbers": [1, 2, 3.5], "text": "ü"}, timeout=5)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {"received": {"numbers": [1, 2, 3.5], "text": "ü"}, "sum": 6.5}


def test_chunked_upload_read_by_flask(flask_server):
    data = bytes(range(256)) * 5000

    def gen():
        for i in range(0, len(data), 10000):
            yield data[i:i + 10000]

    resp = requests.post(flask_server.url("/upload"), data=gen(), timeout=10)
    assert resp.json() == {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_streamed_response(flask_server):
    with httpx.Client(timeout=5) as client:
        with client.stream("GET", flask_server.url("/stream?n=20")) as resp:
            assert resp.status_code == 200
            assert resp.headers.get("transfer-encoding") == "chunked"
            lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert lines == [{"i": i, "path": "/stream"} for i in range(20)]


def test_send_file_download(flask_server):
    source = (APPS / "flask_app.py").read_bytes()
    resp = requests.get(flask_server.url("/download"), timeout=5)
    assert resp.status_code == 200
    assert resp.content == source
    assert resp.headers["Content-Length"] == str(len(source))
    assert resp.headers["Content-Disposition"] == "attachment; filename=flask_app.py"


def test_send_file_conditional_304(flask_server):
    first = requests.get(flask_server.url("/download"), timeout=5)
    etag = first.headers["ETag"]
    with httpx.Client(timeout=5) as client:
        resp = client.get(flask_server.url("/download"), headers={"If-None-Match": etag})
    assert resp.status_code == 304
    assert resp.content == b""


def test_flask_404_and_keep_alive(flask_server):
    with httpx.Client(timeout=5) as client:
        for _ in range(3):
            assert client.get(flask_server.url("/missing")).status_code == 404
            assert client.post(flask_server.url("/json"), json={"numbers": [1]}).json()["sum"] == 1
