"""The response side of the WSGI bridge (PEP 3333, ARCHITECTURE.md §6):
start_response validation, write(), streamed iterables, close() on every
path, app exceptions, wsgi.errors and wsgi.file_wrapper."""

import hashlib
import os
import re

import pytest

from checks import assert_error_response, read_lines, wait_until
from rawhttp import IncompleteResponse, request

MiB = 1024 * 1024


def get(server, target, **kw):
    with server.connect(**kw) as conn:
        conn.send(request("GET", target, server.host_header))
        return conn.read_response()


# -- start_response -----------------------------------------------------------

@pytest.mark.parametrize("case", [
    "no-reason", "lf-in-value", "cr-in-value", "nul-in-value", "lf-in-name", "colon-in-name",
    "crlf-in-status", "bytes-status", "bytes-header",
    "hop-connection", "hop-keep-alive", "hop-transfer-encoding", "hop-upgrade",
    "subclass-lf-in-value",
])
def test_start_response_rejects_bad_arguments(server, case):
    mark = server.log_mark()
    with server.connect() as conn:
        conn.send(request("GET", f"/raw/start-response?case={case}", server.host_header))
        resp = assert_error_response(conn, 500, f"start_response case {case}")
    assert b"X-Injected" not in resp.raw_head and resp.header("X-Bad") is None, resp
    # The app itself got the exception (it logs it before re-raising).
    server.wait_for_log(rf"start_response rejected {re.escape(case)}: \w+", 5, since=mark,
                        what="the app's record of start_response raising")
    server.assert_serving()


def test_start_response_takes_headers_in_a_list_subclass(server):
    resp = get(server, "/raw/start-response?case=subclass-ok")
    assert resp.status == 200 and resp.header("X-Sub") == "yes", resp
    assert resp.body == b"start_response accepted subclass-ok"


def test_second_start_response_without_exc_info_raises(server):
    resp = get(server, "/second-start-response")
    assert resp.status == 200, resp
    assert resp.body.startswith(b"second call raised "), resp.body


def test_start_response_with_exc_info_before_headers_replaces_status(server):
    resp = get(server, "/excinfo-replace")
    assert (resp.status, resp.reason) == (503, "Replaced"), resp
    assert resp.header("X-Replaced") == "yes"
    assert resp.body == b"replaced"


def test_start_response_with_exc_info_after_headers_reraises(server):
    mark = server.log_mark()
    with server.connect() as conn:
        conn.send(request("GET", "/excinfo-after-headers?marker=eah-1", server.host_header))
        head = conn.read_head()
        assert head.status == 200
        with pytest.raises(IncompleteResponse):
            body = conn.read_body(head)
            pytest.fail(f"complete body although start_response had to re-raise: {body!r}")
    server.wait_for_log(r"excinfo-after-headers eah-1", 5, since=mark, what="the re-raised exception")
    server.assert_serving()


# -- bodies ---------------------------------------------------------------------

def test_list_of_one_bytes_fast_path(server):
    resp = get(server, "/raw/hello")
    assert resp.status == 200 and resp.body == b"Hello, World!\n", resp
    assert resp.header("Content-Length") == "14"


def test_write_callable(server):
    resp = get(server, "/write")
    assert resp.status == 200
    assert resp.body == b"written-1;written-2;returned"


def test_generator_response_is_chunked(server):
    resp = get(server, "/generator?n=50")
    assert resp.framing == "chunked", resp
    assert resp.body == b"".join(b"piece %d\n" % i for i in range(50))


def test_lazy_start_response_inside_generator(server):
    resp = get(server, "/generator?n=2&lazy=1")
    assert resp.status == 200 and resp.body == b"piece 0\npiece 1\n", resp


def test_generator_response_is_streamed(server, tmp_path):
    gate = tmp_path / "gate"
    with server.connect() as conn:
        conn.send(request("GET", f"/stream-gated?gate={gate}", server.host_header))
        head = conn.read_head(timeout=3)
        assert head.framing == "chunked", head
        first = conn.read_chunk(head)
        assert first == b"first;", "the first chunk was not sent before the generator finished"
        gate.touch()
        rest = conn.read_body(head)
    assert rest == b"released"


@pytest.mark.parametrize("kind", ["none", "int", "str-items"])
def test_bad_result_becomes_500(server, kind):
    # /raw/: the validator would assert on these results itself.
    with server.connect() as conn:
        conn.send(request("GET", f"/raw/bad-result?kind={kind}", server.host_header))
        assert_error_response(conn, 500, f"app returned a bad result ({kind})")
    server.assert_serving()


# -- close() --------------------------------------------------------------------

def closes(rec):
    return [line for line in read_lines(rec) if line.startswith("close")]


def assert_closed_once(server, rec):
    wait_until(lambda: closes(rec), 10, what="close() of the response iterable")
    # A later request round trip gives a second close() the chance to show.
    server.assert_serving()
    server.assert_serving()
    assert len(closes(rec)) == 1, f"close() called {len(closes(rec))} times: {read_lines(rec)}"


def test_close_called_once_on_success(server, tmp_path):
    rec = tmp_path / "close.log"
    resp = get(server, f"/closing?n=3&size=10&record={rec}")
    assert resp.status == 200 and resp.body == b"x" * 30
    # The response is complete only after close(): it was called before or
    # at the end, never lost.
    assert_closed_once(server, rec)
    assert closes(rec) == ["close after 3"]


def test_close_of_a_list_subclass_is_called_and_a_failing_lookup_is_the_apps_error(server, tmp_path):
    # An exact list is not searched for close() (it cannot have one); a subclass can.
    rec = tmp_path / "close.log"
    resp = get(server, f"/raw/closing-list?record={rec}")
    assert resp.status == 200 and resp.body == b"ab"
    assert_closed_once(server, rec)
    assert closes(rec) == ["close after 2"]
    # Looking up close() raised something other than AttributeError: reported, and the
    # server keeps serving (the response was already complete).
    resp = get(server, "/raw/closing-list?lookup=fails")
    assert resp.status == 200 and resp.body == b"ab"
    server.assert_serving()
    assert server.wait_for_log(r"looking up close\(\) fails", timeout=10)


def test_close_called_once_when_iteration_raises(server, tmp_path):
    rec = tmp_path / "close.log"
    with server.connect() as conn:
        conn.send(request("GET", f"/closing?n=5&size=10&raise_at=2&record={rec}", server.host_header))
        head = conn.read_head()
        assert head.status == 200
        with pytest.raises(IncompleteResponse):
            conn.read_body(head)
    assert_closed_once(server, rec)


def test_close_called_once_when_iteration_raises_before_headers(server, tmp_path):
    rec = tmp_path / "close.log"
    with server.connect() as conn:
        conn.send(request("GET", f"/closing?n=5&size=10&raise_at=0&record={rec}", server.host_header))
        assert_error_response(conn, 500, "iterable raising on its first item")
    assert_closed_once(server, rec)


def test_close_called_once_when_client_disconnects(server, tmp_path):
    rec = tmp_path / "close.log"
    conn = server.connect()
    conn.send(request("GET", f"/closing?n=1000&size=65536&record={rec}", server.host_header))
    head = conn.read_head()
    assert head.status == 200
    conn.close()
    assert_closed_once(server, rec)


# -- app exceptions -----------------------------------------------------------

def test_exception_before_start_response_is_500_with_traceback(server):
    mark = server.log_mark()
    with server.connect() as conn:
        conn.send(request("GET", "/raise-before?marker=rb-7431", server.host_header))
        assert_error_response(conn, 500, "app raising before start_response")
    server.wait_for_log(r"Traceback", 5, since=mark, what="a traceback")
    server.wait_for_log(r"RuntimeError: raised before start_response: rb-7431", 5, since=mark,
                        what="the exception line of the traceback")
    server.assert_serving()


def test_exception_after_headers_closes_connection(server):
    mark = server.log_mark()
    with server.connect() as conn:
        conn.send(request("GET", "/raise-after-headers?marker=rah-9", server.host_header))
        head = conn.read_head()
        assert head.status == 200
        with pytest.raises(IncompleteResponse):
            body = conn.read_body(head)
            pytest.fail(f"a complete body although the app raised: {body!r}")
        assert conn.eof, "the connection was not closed"
    server.wait_for_log(r"raised after headers were sent: rah-9", 5, since=mark, what="the traceback")
    server.assert_serving()


# -- wsgi.errors ----------------------------------------------------------------

def test_wsgi_errors_reach_the_log(server):
    mark = server.log_mark()
    resp = get(server, "/errors?msg=errors-marker-5521")
    assert resp.status == 200
    server.wait_for_log(r"errors-marker-5521$", 5, since=mark, what="the wsgi.errors write")
    server.wait_for_log(r"errors-marker-5521-writelines", 5, since=mark, what="the wsgi.errors writelines")


# -- wsgi.file_wrapper ----------------------------------------------------------

@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("files") / "ten-mib.bin"
    data = os.urandom(10 * MiB)
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("prefix", ["", "/raw"], ids=["validated", "sendfile-path"])
def test_file_wrapper_large_file(server, big_file, tmp_path, prefix):
    path, data = big_file
    rec = tmp_path / "file.log"
    with server.connect(timeout=10) as conn:
        conn.send(request("GET", f"{prefix}/file?path={path}&cl={len(data)}&record={rec}", server.host_header))
        resp = conn.read_response()
        assert resp.status == 200 and resp.header("Content-Length") == str(len(data)), resp
        assert len(resp.body) == len(data)
        assert hashlib.sha256(resp.body).digest() == hashlib.sha256(data).digest()
        # Keep-alive still in sync after a sendfile body.
        conn.send(request("GET", "/path/after-file", server.host_header))
        assert conn.read_response().body == b"/path/after-file"
    # PEP 3333: the wrapper's close() calls the file-like object's close().
    wait_until(lambda: "file closed" in read_lines(rec), 5, what="close() of the wrapped file")


@pytest.mark.parametrize("prefix", ["", "/raw"], ids=["validated", "sendfile-path"])
def test_file_wrapper_honours_content_length(server, big_file, prefix):
    path, data = big_file
    with server.connect(timeout=10) as conn:
        conn.send(request("GET", f"{prefix}/file?path={path}&cl=1000", server.host_header)
                  + request("GET", "/path/after-short-file", server.host_header))
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == data[:1000], resp
        # Anything beyond Content-Length would be parsed as the next response.
        try:
            after = conn.read_response()
        except IncompleteResponse as exc:
            assert exc.partial == b"", f"bytes beyond Content-Length: {exc.partial[:100]!r}"
        else:
            assert after.body == b"/path/after-short-file", after


def test_file_wrapper_without_length(server, big_file):
    path, data = big_file
    resp = get(server, f"/raw/file?path={path}", timeout=10)
    assert resp.status == 200 and resp.body == data


def test_file_wrapper_over_object_without_fileno(server):
    resp = get(server, "/raw/file?size=300000&blksize=4096")
    assert resp.status == 200
    assert resp.body == bytes(range(256)) * (300000 // 256)
