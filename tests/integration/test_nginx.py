"""Spindle behind a real nginx, through each protocol nginx speaks to application servers:
`proxy_pass` (HTTP/1.1 with upstream keep-alive), `uwsgi_pass`, `fastcgi_pass` (with and
without `fastcgi_keep_conn`) and `scgi_pass`, each with Debian's stock params file.

The test starts its own nginx (Debian's `nginx` package; scripts/test.sh installs it) from
a configuration in a temporary directory, bound to 127.0.0.1 ports, and stops it by its
PID. Through each front end the same WSGI checks run: the environ, request bodies
(Content-Length, chunked, several MiB), a streamed response (its first piece must arrive
before the app is allowed to finish), large responses (a file sent with sendfile, one
large `bytes`), the app's 500 and HEAD. Every wait is bounded.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import INLINE

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
READY_TIMEOUT = 10.0
IO_TIMEOUT = 20.0

FRONTS = ["proxy", "uwsgi", "fastcgi", "fastcgi_keep", "scgi"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                text = log.read_text() if log.exists() else ""
                pytest.fail(f"nginx not listening on {port} (exit {proc.poll()}):\n{text}", pytrace=False)
            time.sleep(0.02)


CONF = """
worker_processes 1;
error_log {tmp}/error.log info;
{user}
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    client_max_body_size 64m;
    server_tokens off;

    upstream spindle_http {{ server 127.0.0.1:{http}; keepalive 8; }}
    upstream spindle_fastcgi_keep {{ server 127.0.0.1:{fastcgi}; keepalive 8; }}

    server {{
        listen 127.0.0.1:{front_proxy};
        server_name localhost;
        location / {{
            proxy_pass http://spindle_http;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
        }}
    }}
    server {{
        listen 127.0.0.1:{front_uwsgi};
        server_name localhost;
        location / {{
            include /etc/nginx/uwsgi_params;
            uwsgi_pass 127.0.0.1:{uwsgi};
            uwsgi_buffering off;
        }}
    }}
    server {{
        listen 127.0.0.1:{front_fastcgi};
        server_name localhost;
        location / {{
            include /etc/nginx/fastcgi_params;
            fastcgi_pass 127.0.0.1:{fastcgi};
            fastcgi_buffering off;
        }}
    }}
    server {{
        listen 127.0.0.1:{front_fastcgi_keep};
        server_name localhost;
        location / {{
            include /etc/nginx/fastcgi_params;
            fastcgi_pass spindle_fastcgi_keep;
            fastcgi_keep_conn on;
            fastcgi_buffering off;
        }}
    }}
    server {{
        listen 127.0.0.1:{front_scgi};
        server_name localhost;
        location / {{
            include /etc/nginx/scgi_params;
            scgi_pass 127.0.0.1:{scgi};
            scgi_buffering off;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, tmp: Path, upstreams: dict[str, int]):
        self.tmp = tmp
        self.ports = {front: free_port() for front in FRONTS}
        conf = CONF.format(
            tmp=tmp,
            user="user root;" if os.geteuid() == 0 else "",
            **upstreams,
            **{f"front_{front}": port for front, port in self.ports.items()},
        )
        (tmp / "nginx.conf").write_text(conf)
        self.log = tmp / "error.log"
        self.proc = subprocess.Popen(
            [NGINX, "-c", str(tmp / "nginx.conf"), "-p", str(tmp),
             "-g", f"daemon off; pid {tmp}/nginx.pid;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        for port in self.ports.values():
            wait_listening(port, self.proc, self.log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def stack(module_spindle, tmp_path_factory):
    """Four Spindles (one per protocol) behind one nginx."""
    if NGINX is None:
        pytest.fail("nginx is not installed: apt-get install nginx (scripts/test.sh does it as root)",
                    pytrace=False)
    servers = {
        "http": module_spindle("nginx_app:app"),
        "uwsgi": module_spindle("nginx_app:app", "--protocol", "uwsgi"),
        "fastcgi": module_spindle("nginx_app:app", "--protocol", "fastcgi"),
        "scgi": module_spindle("nginx_app:app", "--protocol", "scgi"),
    }
    tmp = tmp_path_factory.mktemp("nginx")
    nginx = Nginx(tmp, {name: server.port for name, server in servers.items()})
    yield nginx, servers
    nginx.stop()


def client(stack, front: str) -> http.client.HTTPConnection:
    nginx, _ = stack
    return http.client.HTTPConnection("127.0.0.1", nginx.ports[front], timeout=IO_TIMEOUT)


def fetch(stack, front, method, target, body=None, headers=None, **kw):
    conn = client(stack, front)
    try:
        conn.request(method, target, body=body, headers=headers or {}, **kw)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def error_log(stack) -> str:
    nginx, _ = stack
    return nginx.log.read_text()


@pytest.mark.parametrize("front", FRONTS)
def test_environ(stack, front):
    nginx, _ = stack
    status, _, body = fetch(stack, front, "GET", "/env/caf%C3%A9/a%20b?x=1&y=%2F",
                            headers={"X-Custom": "yes", "Accept": "text/plain"})
    assert status == 200, body
    env = {k: v["value"] for k, v in json.loads(body).items() if isinstance(v, dict)}
    assert env["REQUEST_METHOD"] == "GET"
    assert env["PATH_INFO"] == "/env/caf\u00c3\u00a9/a b"
    assert env["QUERY_STRING"] == "x=1&y=%2F"
    assert env["SCRIPT_NAME"] == ""
    assert env["HTTP_X_CUSTOM"] == "yes"
    assert env["HTTP_ACCEPT"] == "text/plain"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "http"
    assert env["SERVER_PROTOCOL"] in ("HTTP/1.1", "HTTP/1.0")
    if front == "proxy":
        # nginx is Spindle's HTTP client: Spindle's own address, the Host nginx passed.
        assert env["SERVER_NAME"] == "127.0.0.1"
        assert env["HTTP_HOST"] == f"127.0.0.1:{nginx.ports[front]}"
    else:
        # What nginx said of itself.
        assert env["SERVER_NAME"] == "localhost"
        assert env["SERVER_PORT"] == str(nginx.ports[front])
        assert env["HTTP_HOST"] == "127.0.0.1"
        # nginx sends CONTENT_LENGTH and CONTENT_TYPE empty without a body: left out
        # (SCGI requires CONTENT_LENGTH, and nginx sends 0: kept as it came).
        assert env.get("CONTENT_LENGTH") == ("0" if front == "scgi" else None)
        assert "CONTENT_TYPE" not in env


@pytest.mark.parametrize("front", FRONTS)
def test_body_with_content_length(stack, front):
    data = os.urandom(100_000)
    status, _, body = fetch(stack, front, "POST", "/echo", body=data,
                            headers={"Content-Type": "application/octet-stream"})
    assert status == 200, body
    got = json.loads(body)
    assert got["length"] == len(data)
    assert got["sha256"] == hashlib.sha256(data).hexdigest()
    assert got["content_length"] == str(len(data))


@pytest.mark.parametrize("front", FRONTS)
def test_chunked_upload(stack, front):
    pieces = [os.urandom(n) for n in (1, 1000, 70_000, 5)]
    data = b"".join(pieces)
    status, _, body = fetch(stack, front, "POST", "/echo", body=iter(pieces), encode_chunked=True,
                            headers={"Transfer-Encoding": "chunked"})
    assert status == 200, body
    got = json.loads(body)
    assert (got["length"], got["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("front", FRONTS)
def test_large_upload(stack, front):
    data = os.urandom(6 * 1024 * 1024 + 17)
    status, _, body = fetch(stack, front, "POST", "/echo", body=data)
    assert status == 200, body
    got = json.loads(body)
    assert (got["length"], got["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("front", FRONTS)
def test_streaming_response_arrives_in_pieces(stack, front, tmp_path):
    """The app yields its first piece, then waits for a file the test creates only once
    that piece arrived through nginx: the response is streamed end to end."""
    if INLINE and front.startswith("fastcgi"):
        pytest.skip("--inline writes a FastCGI response when the call returns: the I/O "
                    "thread frames its records")
    nginx, _ = stack
    gate = tmp_path / "gate"
    with socket.create_connection(("127.0.0.1", nginx.ports[front]), timeout=IO_TIMEOUT) as s:
        s.sendall(f"GET /stream-gated?gate={gate} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        seen = b""
        deadline = time.monotonic() + IO_TIMEOUT
        while b"first;" not in seen:
            assert time.monotonic() < deadline, seen
            chunk = s.recv(65536)
            assert chunk, f"closed before the first piece: {seen!r}"
            seen += chunk
        assert b"released" not in seen
        gate.touch()
        while chunk:
            assert time.monotonic() < deadline, seen
            chunk = s.recv(65536)
            seen += chunk
    assert seen.startswith(b"HTTP/1.1 200"), seen
    assert b"released" in seen and b"timeout" not in seen, seen


@pytest.mark.parametrize("front", FRONTS)
def test_large_file_response(stack, front, tmp_path):
    data = os.urandom(5 * 1024 * 1024 + 3)
    path = tmp_path / "payload"
    path.write_bytes(data)
    # /raw/file: the file wrapper reaches the server unwrapped, so it goes out with sendfile.
    status, headers, body = fetch(stack, front, "GET", f"/raw/file?path={path}")
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("front", FRONTS)
def test_large_bytes_response(stack, front):
    n = 3 * 1024 * 1024 + 5
    status, headers, body = fetch(stack, front, "GET", f"/big?n={n}")
    assert status == 200
    assert body == (bytes(range(256)) * (n // 256 + 1))[:n]


@pytest.mark.parametrize("front", FRONTS)
def test_generator_response(stack, front):
    status, _, body = fetch(stack, front, "GET", "/generator?n=50")
    assert status == 200
    assert body == b"".join(b"piece %d\n" % i for i in range(50))


@pytest.mark.parametrize("front", FRONTS)
def test_app_exception_is_500(stack, front):
    status, _, body = fetch(stack, front, "GET", "/raise-before")
    assert status == 500, body


@pytest.mark.parametrize("front", FRONTS)
def test_head(stack, front):
    status, headers, body = fetch(stack, front, "HEAD", "/hello")
    assert status == 200
    assert body == b""


@pytest.mark.parametrize("front", FRONTS)
def test_many_requests_in_a_row(stack, front):
    """Sequential requests on one client connection (and, for proxy and
    fastcgi_keep, over nginx's cached upstream connections)."""
    conn = client(stack, front)
    try:
        for i in range(30):
            conn.request("GET", f"/path/{i}")
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, f"/path/{i}".encode())
    finally:
        conn.close()
    assert "upstream prematurely closed" not in error_log(stack)


# -- without nginx: what the protocols refuse ---------------------------------------------

def uwsgi_packet(pairs: list[tuple[bytes, bytes]]) -> bytes:
    block = b"".join(len(n).to_bytes(2, "little") + n + len(v).to_bytes(2, "little") + v for n, v in pairs)
    return b"\x00" + len(block).to_bytes(2, "little") + b"\x00" + block


def read_all(s: socket.socket) -> bytes:
    data = b""
    deadline = time.monotonic() + IO_TIMEOUT
    while time.monotonic() < deadline:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    pytest.fail(f"connection not closed: {data!r}")


def test_uwsgi_direct_request_gets_an_http1_response_then_the_close(stack):
    _, servers = stack
    port = servers["uwsgi"].port
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as s:
        s.sendall(uwsgi_packet([(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/echo"),
                                (b"CONTENT_LENGTH", b"3"), (b"SERVER_NAME", b"x"),
                                (b"SERVER_PORT", b"80"), (b"SERVER_PROTOCOL", b"HTTP/1.1")]) + b"abc")
        data = read_all(s)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), data
    assert json.loads(body)["length"] == 3


@pytest.mark.parametrize("garbage", [b"\x05\x00\x00\x00", b"\x00\x10\x00\x00\x03\x00ABC",
                                     b"GET / HTTP/1.1\r\n\r\n"])
def test_uwsgi_bad_input_closes_with_one_line(stack, garbage):
    _, servers = stack
    server = servers["uwsgi"]
    mark = server.log_mark()
    with socket.create_connection(("127.0.0.1", server.port), timeout=IO_TIMEOUT) as s:
        s.sendall(garbage)
        s.shutdown(socket.SHUT_WR)
        assert read_all(s) == b""
    server.wait_for_log(r"bad uwsgi request, closing", since=mark)


def test_scgi_bad_input_closes_with_one_line(stack):
    _, servers = stack
    server = servers["scgi"]
    mark = server.log_mark()
    with socket.create_connection(("127.0.0.1", server.port), timeout=IO_TIMEOUT) as s:
        s.sendall(b"4:A\x00B\x00,")
        assert read_all(s) == b""
    server.wait_for_log(r"bad SCGI request, closing: not SCGI", since=mark)


def record(kind, rid, content=b""):
    """A FastCGI record."""
    return bytes([1, kind]) + rid.to_bytes(2, "big") + len(content).to_bytes(2, "big") + b"\0\0" + content


def pairs(items):
    """FastCGI name-value pairs (short names and values)."""
    return b"".join(bytes([len(n), len(v)]) + n + v for n, v in items)


def parse_records(data: bytes) -> list[tuple[int, int, bytes]]:
    records = []
    while data:
        kind, rid, n, pad = data[1], int.from_bytes(data[2:4], "big"), int.from_bytes(data[4:6], "big"), data[6]
        records.append((kind, rid, data[8:8 + n]))
        data = data[8 + n + pad:]
    return records


def read_records_until_end(s: socket.socket, rid: int) -> list[tuple[int, int, bytes]]:
    """Records up to and including `rid`'s END_REQUEST."""
    data = b""
    deadline = time.monotonic() + IO_TIMEOUT
    while True:
        records, rest = [], data
        while len(rest) >= 8 and len(rest) >= 8 + int.from_bytes(rest[4:6], "big") + rest[6]:
            n = 8 + int.from_bytes(rest[4:6], "big") + rest[6]
            records += parse_records(rest[:n])
            rest = rest[n:]
            if records[-1][:2] == (3, rid):
                return records
        assert time.monotonic() < deadline, data
        chunk = s.recv(65536)
        assert chunk, f"closed before END_REQUEST: {data!r}"
        data += chunk


def test_fastcgi_keep_conn_serves_requests_in_turn_and_an_abort_ends_the_body(stack):
    _, servers = stack
    begin_keep = b"\x00\x01\x01" + b"\0" * 5
    with socket.create_connection(("127.0.0.1", servers["fastcgi"].port), timeout=IO_TIMEOUT) as s:
        for rid in (1, 2):
            params = pairs([(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/echo"),
                            (b"CONTENT_LENGTH", b"5")])
            s.sendall(record(1, rid, begin_keep) + record(4, rid, params) + record(4, rid)
                      + record(5, rid, b"he") + record(5, rid, b"llo") + record(5, rid))
            records = read_records_until_end(s, rid)
            stdout = b"".join(c for k, r, c in records if k == 6 and r == rid)
            assert stdout.startswith(b"Status: 200 OK\r\n"), stdout
            assert json.loads(stdout.partition(b"\r\n\r\n")[2])["length"] == 5
            assert records[-1] == (3, rid, b"\0" * 8)
        # An ABORT_REQUEST in the middle of the body: the request is answered 400 (in
        # records, with END_REQUEST) and the connection ends.
        params = pairs([(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/echo"),
                        (b"CONTENT_LENGTH", b"5")])
        s.sendall(record(1, 3, begin_keep) + record(4, 3, params) + record(4, 3)
                  + record(5, 3, b"he") + record(2, 3))
        records = parse_records(read_all(s))
    stdout = b"".join(c for k, r, c in records if k == 6 and r == 3)
    assert stdout.startswith(b"Status: 400 Bad Request\r\n"), stdout
    assert records[-1][:2] == (3, 3)


def test_fastcgi_get_values_and_refused_second_request(stack):
    """GET_VALUES is answered; a second BEGIN_REQUEST while the first is read gets
    FCGI_CANT_MPX_CONN, and the first is served."""
    _, servers = stack
    params = pairs([(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/path/x"),
                    (b"SERVER_NAME", b"x"), (b"SERVER_PORT", b"80")])
    stream = (record(9, 0, pairs([(b"FCGI_MPXS_CONNS", b"")]))
              + record(1, 1, b"\x00\x01\x00" + b"\0" * 5)
              + record(1, 2, b"\x00\x01\x00" + b"\0" * 5)
              + record(4, 1, params) + record(4, 1) + record(5, 1))
    with socket.create_connection(("127.0.0.1", servers["fastcgi"].port), timeout=IO_TIMEOUT) as s:
        s.sendall(stream)
        records = parse_records(read_all(s))
    assert records[0] == (10, 0, b"\x0f\x01FCGI_MPXS_CONNS0")
    assert records[1] == (3, 2, b"\0\0\0\0\x01\0\0\0")
    stdout = b"".join(c for k, r, c in records if k == 6 and r == 1)
    assert stdout.startswith(b"Status: 200 OK\r\n") and stdout.endswith(b"\r\n\r\n/path/x"), stdout
    assert records[-1] == (3, 1, b"\0\0\0\0\0\0\0\0")


def test_gateway_peer_not_allowed_is_refused(spindle):
    server = spindle("nginx_app:app", "--protocol", "uwsgi", "--uwsgi-allow-ips", "10.9.8.7,192.168.0.0/16")
    with socket.create_connection(("127.0.0.1", server.port), timeout=IO_TIMEOUT) as s:
        # Closed at once, before anything is read (so nothing is sent: unread bytes would
        # turn the close into a reset).
        assert read_all(s) == b""
    server.wait_for_log(r"refused a uwsgi connection: the peer is not in --uwsgi-allow-ips")


def hostile_inputs(protocol: str) -> list[tuple[str, bytes]]:
    """Truncated, oversized, wrong lengths and random bytes, for each gateway protocol."""
    import random
    rng = random.Random(f"spindle-{protocol}")  # the same bytes every run
    noise = [("random-%d" % i, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600))))
             for i in range(6)]
    if protocol == "uwsgi":
        return [("truncated-header", b"\x00\x10"),
                ("truncated-vars", b"\x00\x40\x00\x00" + b"\x0e\x00REQUEST_METHOD"),
                ("oversized", b"\x00\xff\xff\x00" + b"\x01\x00A\xff\xffB" * 200),
                ("var-length-past-block", b"\x00\x06\x00\x00\x02\x00AB\x09\x00C"),
                ("wrong-modifier", b"\x07\x04\x00\x00\x01\x00A\x01\x00B"), *noise]
    if protocol == "scgi":
        return [("truncated-netstring", b"70:CONTENT_LENGTH\x000\x00"),
                ("oversized", b"99999999:"),
                ("length-not-digits", b"1x:"),
                ("missing-comma", b"24:CONTENT_LENGTH\x000\x00SCGI\x001\x00;"),
                ("no-content-length-first", b"7:SCGI\x001\x00,"), *noise]
    begin = record(1, 1, b"\x00\x01\x00\x00\x00\x00\x00\x00")
    return [("truncated-record", begin[:5]),
            ("bad-version", b"\x09" + begin[1:]),
            ("params-pair-past-record", begin + record(4, 1, b"\x05\x7fABCDE")),
            ("stdin-before-params-end", begin + record(5, 1, b"body")),
            ("wrong-request-id", begin + record(4, 2, pairs([(b"A", b"B")]))),
            ("oversized-params", begin + b"".join(record(4, 1, pairs([(b"X" * 100, b"Y" * 120)])) for _ in range(400))),
            *noise]


@pytest.mark.parametrize("protocol", ["uwsgi", "scgi", "fastcgi"])
def test_hostile_input_gets_a_close_and_a_line_and_the_server_lives_on(stack, protocol):
    _, servers = stack
    server = servers[protocol]
    name = {"uwsgi": "uwsgi", "scgi": "SCGI", "fastcgi": "FastCGI"}[protocol]
    for case, data in hostile_inputs(protocol):
        mark = server.log_mark()
        with socket.create_connection(("127.0.0.1", server.port), timeout=IO_TIMEOUT) as s:
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                answer = read_all(s)
            except OSError as exc:
                # Closed with our bytes unread (a reset, or the close already done when we
                # shut our side: ENOTCONN, EPIPE): a close all the same.
                if exc.errno not in (errno.ECONNRESET, errno.ENOTCONN, errno.EPIPE):
                    raise
                answer = b""
        # Nothing that looks like an answered request; FastCGI may end the request with a
        # record, never with an application response.
        assert b"200 OK" not in answer, (case, answer)
        server.wait_for_log(rf"bad {name} request, closing|{name} request not received|refused",
                            since=mark, what=f"the log line for {case}")
        assert server.proc.poll() is None, f"{protocol} server died on {case}"
    # And it still serves, through nginx.
    front = "fastcgi" if protocol == "fastcgi" else protocol
    status, _, body = fetch(stack, front, "GET", "/env/after-garbage")
    assert status == 200, body


@pytest.mark.parametrize("protocol", ["uwsgi", "fastcgi", "scgi"])
def test_the_listening_line_names_the_protocol(stack, protocol):
    _, servers = stack
    server = servers[protocol]
    server.wait_for_log(rf"listening on {protocol}://127\.0\.0\.1:{server.port} ", what="the listening line")
