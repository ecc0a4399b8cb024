"""wsgi.input (PEP 3333 "Input and Error Streams"): every read method over
bodies bigger than any buffer, large uploads in bounded memory, and bodies
that end early."""

import hashlib
import json
import os
import socket
import sys
import warnings
from io import BytesIO

import pytest
import requests

from checks import poll, read_lines, wait_until
from conftest import APPS
from rawhttp import chunked, request

MiB = 1024 * 1024


def line_body() -> bytes:
    """About 1.6 MiB of lines of many lengths, one of them 200 KiB long
    (longer than any sane read buffer), an empty one, and a last line
    without its LF."""
    lines = []
    for i in range(1200):
        n = (i * 7919) % 2500
        lines.append(bytes([97 + i % 26]) * n + b"\n")
    lines[300] = b"\n"
    lines[600] = b"L" * (200 * 1024) + b"\n"
    return b"".join(lines) + b"tail without newline"


BODY = line_body()


def reference(op: str, body: bytes) -> dict:
    """What the app reports when wsgi.input is a real file (BytesIO): the
    file-object semantics PEP 3333 asks wsgi.input to follow."""
    if str(APPS) not in sys.path:
        sys.path.insert(0, str(APPS))
    with warnings.catch_warnings():  # the app module turns warnings into errors
        import wsgi_app
        environ = {"QUERY_STRING": f"op={op}", "wsgi.input": BytesIO(body), "CONTENT_LENGTH": str(len(body))}
        result = wsgi_app.input_ops(environ, lambda status, headers: None)
    return json.loads(result[0])


def streamed(body: bytes, piece: int = 65521):
    """A generator, so that requests sends the body chunked, in pieces that
    do not line up with lines or buffers."""
    for i in range(0, len(body), piece):
        yield body[i:i + piece]


@pytest.mark.parametrize("op, prefix", [
    ("read_n", ""), ("read_small", ""), ("readline", ""), ("readline_n", ""), ("readlines", ""),
    ("mixed", ""),
    # /raw/: the validator allows read() only with a size, and replaces
    # __iter__ with its own readline() loop.
    ("read_all", "/raw"), ("iter", "/raw"),
])
def test_input_methods_over_chunked_stream(server, op, prefix):
    assert len(BODY) > MiB
    resp = requests.post(server.url(f"{prefix}/input?op={op}"), data=streamed(BODY), timeout=20)
    assert resp.status_code == 200, resp.text
    got = resp.json()
    want = reference(op, BODY)
    assert got["length"] == want["length"] == len(BODY)
    assert got["sha256"] == want["sha256"] == hashlib.sha256(BODY).hexdigest()
    assert got == want, f"wsgi.input.{op} does not behave like a file"


@pytest.mark.parametrize("op", ["readline", "readline_n", "mixed", "read_small"])
def test_input_methods_over_content_length_body(server, op):
    with server.connect(timeout=10) as conn:
        conn.send(request("POST", f"/input?op={op}", server.host_header, body=BODY))
        resp = conn.read_response()
    assert resp.status == 200, resp
    assert json.loads(resp.body) == reference(op, BODY)


def test_read_content_length_returns_whole_body(server):
    # The common `wsgi.input.read(int(CONTENT_LENGTH))` must get everything
    # in one call, even when the body arrives in many segments.
    body = os.urandom(3 * MiB)
    with server.connect(timeout=10) as conn:
        conn.send(request("POST", "/input?op=read_cl", server.host_header, body=body))
        resp = conn.read_response()
    got = json.loads(resp.body)
    assert got["sizes_head"][0] == len(body), "read(CONTENT_LENGTH) returned a short read"
    assert got["sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("split", [None, 99991])
def test_streamed_body_then_pipelined_requests(server, framing, split):
    """A body larger than any read is read from the socket straight into the pieces
    wsgi.input copies from (src/server/body.rs, `read_piece`): a Content-Length read never
    passes the body's end, and what a chunked read brings past it goes back to the
    connection, so the requests pipelined behind it, in the same send or arriving in odd
    pieces, are answered in turn, and the body arrives whole."""
    body = os.urandom(5 * MiB + 12345)
    if framing == "chunked":
        first = request("POST", "/echo", server.host_header, [("Transfer-Encoding", "chunked")],
                        body=chunked([body[i:i + 65543] for i in range(0, len(body), 65543)]))
    else:
        first = request("POST", "/echo", server.host_header, body=body)
    wire = (first + request("GET", "/hello", server.host_header)
            + request("POST", "/echo", server.host_header, body=b"second body"))
    with server.connect(timeout=20) as conn:
        step = split or len(wire)
        for i in range(0, len(wire), step):
            conn.send(wire[i:i + step])
        first, hello, second = conn.read_responses(["POST", "GET", "POST"], timeout=20)
    got = json.loads(first.body)
    assert first.status == 200 and got["length"] == len(body), first
    assert got["sha256"] == hashlib.sha256(body).hexdigest()
    assert hello.status == 200 and hello.body == b"Hello, World!\n", hello
    assert json.loads(second.body)["sha256"] == hashlib.sha256(b"second body").hexdigest()


def test_input_read_to_its_end_stays_at_its_end_in_close(server, tmp_path):
    # A streamed body, read whole by the app; its response's close() reads wsgi.input again
    # (after the response ended) and must get b"", not an error.
    rec = tmp_path / "drain.log"
    body = os.urandom(MiB + 5)
    with server.connect(timeout=10) as conn:
        conn.send(request("POST", f"/raw/drain-in-close?record={rec}", server.host_header, body=body))
        resp = conn.read_response()
    assert resp.status == 200 and resp.body == b"read %d" % len(body), resp
    assert wait_until(lambda: read_lines(rec), 5, what="close()'s record") == ["close drained 0"]
    server.assert_serving()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="__buffer__ (PEP 688) is 3.12+")
def test_a_read_from_inside_the_buffer_being_filled_is_refused_and_nothing_is_lost(server):
    body = os.urandom(MiB)
    with server.connect(timeout=10) as conn:
        conn.send(request("POST", "/raw/reentrant-buffer", server.host_header, body=body))
        resp = conn.read_response()
    assert resp.status == 200, resp
    first, rest, inner = resp.body.decode().split(" ", 2)
    assert int(first) == 100 and int(first) + int(rest) == len(body), resp.body
    assert inner == "wsgi.input read re-entrantly", inner
    server.assert_serving()


def test_empty_body_reads_empty(server):
    with server.connect() as conn:
        conn.send(request("POST", "/input?op=mixed", server.host_header, body=b""))
        got = json.loads(conn.read_response().body)
    assert got["length"] == 0 and got["types"] == ["bytes"]


def _reset_peak_rss(pid: int) -> bool:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def test_100_mib_upload_streams_in_bounded_memory(server):
    total = 100 * MiB
    block = bytearray(os.urandom(MiB))
    digest = hashlib.sha256()
    # Warm up the path first so one-time allocations are not counted.
    server.get("/hello")
    reset = _reset_peak_rss(server.serving_pid)
    baseline_kib = server.proc_status("VmRSS") if reset else server.proc_status("VmHWM")
    with server.connect(timeout=30) as conn:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
        conn.send(request("POST", "/echo", server.host_header, [("Content-Length", str(total))]))
        for i in range(total // MiB):
            block[:8] = i.to_bytes(8, "little")
            digest.update(block)
            conn.send(block)
        resp = conn.read_response(timeout=30)
    assert resp.status == 200, resp
    got = json.loads(resp.body)
    assert got["length"] == total
    assert got["sha256"] == digest.hexdigest()
    peak_kib = server.proc_status("VmHWM")
    grew_mib = (peak_kib - baseline_kib) / 1024
    assert grew_mib < 80, (f"peak RSS grew by {grew_mib:.0f} MiB during a 100 MiB upload "
                           f"(baseline {baseline_kib} KiB, peak {peak_kib} KiB): the body sat in memory")


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_body_cut_short_is_never_complete(server, tmp_path, framing):
    """ARCHITECTURE.md §5: a body that ends early is never handed to the app as
    complete; reading it raises an OSError subclass. (Dropping the request
    before the app runs is fine too: the app then never sees it at all.)"""
    rec = tmp_path / "truncated.log"
    if framing == "content-length":
        head = request("POST", f"/truncated?record={rec}", server.host_header, [("Content-Length", str(4 * MiB))])
        partial = b"p" * (256 * 1024)
    else:
        head = request("POST", f"/truncated?record={rec}", server.host_header, [("Transfer-Encoding", "chunked")])
        partial = b"40000\r\n" + b"p" * 0x40000 + b"\r\n" + b"1000\r\n" + b"q" * 100
    conn = server.connect()
    conn.send(head + partial)
    # Give the server the chance to start the app while the body is still
    # arriving (it may also wait for the whole body; both are fine).
    started = poll(lambda: "started" in read_lines(rec), 1.0)
    conn.sock.shutdown(socket.SHUT_WR)
    conn.close()
    if started:
        lines = wait_until(lambda: [line for line in read_lines(rec) if line != "started"], 5,
                           what="the app's read of a cut-short body to finish")
        assert lines[0].startswith("OSError"), f"the app saw {lines[0]!r} for a body cut short"
    else:
        # The app never started within 1 s of the partial body; it must not
        # later see that body as complete.
        server.assert_serving()
        assert not any(line.startswith("complete") for line in read_lines(rec)), read_lines(rec)
    server.assert_serving()
