"""Behind a proxy (README.md "Behind a proxy", ARCHITECTURE.md §5): the PROXY protocol
(`--proxy-protocol`, `--proxy-allow-from`) and the forwarding fields of a trusted peer
(`--forwarded-allow-ips`, `--forwarded-hops`, `--forwarded-host`).

The app (`/env`) answers with its environ as JSON. Every connection here comes from
127.0.0.1, so a peer that is *not* trusted is made with an allow list that leaves it out,
or with a PROXY header that names another client."""

import json
import socket
import struct
import subprocess

import pytest

from conftest import SPINDLE_BIN, child_env, require_binary
from rawhttp import RawConnection, request

CLOSE_WAIT = 5.0
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_header(src, sport, command=1, tlvs=b""):
    """A PROXY v2 header: PROXY (1) or LOCAL (0), INET or INET6 by the source's form."""
    if ":" in src:
        fam = 0x21
        addrs = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, "::1")
    else:
        fam = 0x11
        addrs = socket.inet_aton(src) + socket.inet_aton("127.0.0.1")
    payload = addrs + struct.pack("!HH", sport, 8000) + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, fam]) + struct.pack("!H", len(payload)) + payload


def env_over(conn, server, preamble=b"", headers=None, target="/env/p"):
    conn.send(preamble + request("GET", target, server.host_header, headers))
    resp = conn.read_response()
    assert resp.status == 200, resp
    return {k: v["value"] for k, v in json.loads(resp.body).items() if isinstance(v, dict)}


def get_env(server, headers=None, preamble=b""):
    with server.connect() as conn:
        env = env_over(conn, server, preamble, headers)
        env["_client_port"] = conn.local_port
        return env


def assert_closed_unanswered(server, data):
    with server.connect() as conn:
        conn.send(data)
        assert conn.read_until_close(CLOSE_WAIT) == b"", "a response where none was due"


@pytest.fixture(scope="module")
def proxied(module_spindle):
    return module_spindle("wsgi_app:app", "--proxy-protocol")


# -- the PROXY protocol -----------------------------------------------------


def test_v1_tcp4_header_sets_remote_addr_and_port(proxied):
    env = get_env(proxied, preamble=b"PROXY TCP4 192.0.2.1 127.0.0.1 56324 8000\r\n")
    assert env["REMOTE_ADDR"] == "192.0.2.1"
    assert env["REMOTE_PORT"] == "56324"


def test_v1_tcp6_header(proxied):
    env = get_env(proxied, preamble=b"PROXY TCP6 2001:db8::7 ::1 4711 8000\r\n")
    assert env["REMOTE_ADDR"] == "2001:db8::7"
    assert env["REMOTE_PORT"] == "4711"


def test_v1_unknown_keeps_the_real_peer(proxied):
    env = get_env(proxied, preamble=b"PROXY UNKNOWN\r\n")
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(env["_client_port"])


def test_v2_inet_and_inet6_headers_with_tlvs(proxied):
    unique_id = b"\x05\x00\x04abcd"
    env = get_env(proxied, preamble=v2_header("198.51.100.9", 40000, tlvs=unique_id))
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("198.51.100.9", "40000")
    env = get_env(proxied, preamble=v2_header("2001:db8::9", 443))
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("2001:db8::9", "443")


def test_v2_local_keeps_the_real_peer(proxied):
    env = get_env(proxied, preamble=v2_header("198.51.100.9", 40000, command=0))
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(env["_client_port"])


def test_header_split_across_writes(proxied):
    header = v2_header("203.0.113.5", 1234)
    with proxied.connect() as conn:
        conn.send(header[:7])
        conn.send(header[7:15])
        env = env_over(conn, proxied, header[15:])
    assert env["REMOTE_ADDR"] == "203.0.113.5"


def test_requests_pipelined_behind_the_header_are_served(proxied):
    with proxied.connect() as conn:
        conn.send(b"PROXY TCP4 192.0.2.44 127.0.0.1 5000 8000\r\n"
                  + request("GET", "/env/one", proxied.host_header)
                  + request("GET", "/env/two", proxied.host_header))
        first, second = conn.read_responses(["GET", "GET"])
        for resp, path in ((first, "/env/one"), (second, "/env/two")):
            assert resp.status == 200, resp
            env = json.loads(resp.body)
            assert env["PATH_INFO"]["value"] == path
            assert env["REMOTE_ADDR"]["value"] == "192.0.2.44"
        # The connection stays the client's for the next request, with no new header.
        env = env_over(conn, proxied, target="/env/three")
        assert env["REMOTE_ADDR"] == "192.0.2.44"


@pytest.mark.parametrize("data", [
    request("GET", "/env/x", "localhost"),
    b"PROXY TCP4 192.0.2.1 127.0.0.1 56324\r\n" + request("GET", "/env/x", "localhost"),
    b"PROXY TCP4 192.0.2.1 127.0.0.1 56324 8000\n" + request("GET", "/env/x", "localhost"),
    b"PROXY UNKNOWN " + b"x" * 120 + b"\r\n",
    V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12,
    V2_SIGNATURE + b"\x21\x11\x00\x0b" + b"\x00" * 11,
    V2_SIGNATURE[:11] + b"X",
], ids=["missing", "v1-short", "v1-bare-lf", "v1-too-long", "v2-version", "v2-short", "v2-signature"])
def test_missing_or_malformed_header_closes_without_a_response(proxied, data):
    assert_closed_unanswered(proxied, data)


def test_server_still_serves_after_bad_headers(proxied):
    env = get_env(proxied, preamble=b"PROXY TCP4 192.0.2.2 127.0.0.1 1 8000\r\n")
    assert env["REMOTE_ADDR"] == "192.0.2.2"


def test_a_peer_outside_proxy_allow_from_is_closed(spindle):
    srv = spindle("wsgi_app:app", "--proxy-protocol", "--proxy-allow-from", "10.0.0.1")
    mark = srv.log_mark()
    assert_closed_unanswered(srv, b"PROXY TCP4 192.0.2.1 127.0.0.1 56324 8000\r\n"
                             + request("GET", "/env/x", srv.host_header))
    srv.wait_for_log(r"not in --proxy-allow-from", since=mark)


def test_a_header_not_finished_within_the_header_timeout_closes(spindle):
    srv = spindle("wsgi_app:app", "--proxy-protocol", "--header-timeout", "0.5")
    with srv.connect() as conn:
        conn.send(b"PROXY TCP4 192.0.2.1")
        assert conn.read_until_close(CLOSE_WAIT) == b""


def test_forwarding_fields_trusted_after_the_proxy_header_only_by_its_client(spindle):
    # The PROXY header makes 10.0.0.1 the peer: trusted with this allow list, so its
    # X-Forwarded-For counts; 192.0.2.1 is not trusted, so its fields change nothing.
    srv = spindle("wsgi_app:app", "--proxy-protocol", "--forwarded-allow-ips", "10.0.0.0/8")
    xff = [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https")]
    env = get_env(srv, xff, b"PROXY TCP4 10.0.0.1 127.0.0.1 5555 8000\r\n")
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("203.0.113.7", "https")
    assert env["spindle.peer_addr"] == "10.0.0.1"
    env = get_env(srv, xff, b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 8000\r\n")
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("192.0.2.1", "http")
    assert "spindle.peer_addr" not in env


# -- forwarding fields ------------------------------------------------------


@pytest.fixture(scope="module")
def plain(module_spindle):
    return module_spindle("wsgi_app:app", "--access-logfile", "-")


def test_x_forwarded_proto_and_for_honoured_from_localhost_by_default(plain):
    env = get_env(plain, [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https")])
    assert env["REMOTE_ADDR"] == "203.0.113.9"
    assert env["wsgi.url_scheme"] == "https"
    # The connection's own peer is kept for the app; REMOTE_PORT is the connection's.
    assert env["spindle.peer_addr"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(env["_client_port"])


def test_without_forwarding_fields_nothing_changes(plain):
    env = get_env(plain)
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("127.0.0.1", "http")
    assert "spindle.peer_addr" not in env


def test_other_secure_scheme_headers(plain):
    assert get_env(plain, [("X-Forwarded-Ssl", "on")])["wsgi.url_scheme"] == "https"
    assert get_env(plain, [("X-Forwarded-Protocol", "ssl")])["wsgi.url_scheme"] == "https"
    assert get_env(plain, [("X-Forwarded-Proto", "http")])["wsgi.url_scheme"] == "http"


def test_forwarded_header_parsed(plain):
    env = get_env(plain, [("Forwarded", 'for="[2001:db8::17]:4711";proto=https')])
    assert env["REMOTE_ADDR"] == "2001:db8::17"
    assert env["REMOTE_PORT"] == "4711"
    assert env["wsgi.url_scheme"] == "https"


def test_x_forwarded_for_wins_over_forwarded(plain):
    env = get_env(plain, [("Forwarded", "for=198.51.100.1"), ("X-Forwarded-For", "198.51.100.2")])
    assert env["REMOTE_ADDR"] == "198.51.100.2"


def test_unparseable_address_ignored(plain):
    for bad in ("unknown", "evil.example", "1.2.3.4.5", ""):
        env = get_env(plain, [("X-Forwarded-For", bad)])
        assert env["REMOTE_ADDR"] == "127.0.0.1", bad
        assert "spindle.peer_addr" not in env


def test_repeated_x_forwarded_for_lines_are_one_list(plain):
    env = get_env(plain, [("X-Forwarded-For", "192.0.2.1"), ("X-Forwarded-For", "192.0.2.2")])
    assert env["REMOTE_ADDR"] == "192.0.2.2"


def test_access_log_shows_the_forwarded_client(plain):
    mark = plain.log_mark()
    get_env(plain, [("X-Forwarded-For", "203.0.113.77")])
    plain.wait_for_log(r'^203\.0\.113\.77 - - \[.*\] "GET /env/p HTTP/1\.1" 200 ', since=mark)


def test_untrusted_peer_changes_nothing(spindle):
    srv = spindle("wsgi_app:app", "--forwarded-allow-ips", "10.0.0.1")
    env = get_env(srv, [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https"),
                        ("Forwarded", "for=203.0.113.10;proto=https")])
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("127.0.0.1", "http")
    assert "spindle.peer_addr" not in env
    # The fields themselves still reach the app, as any header does.
    assert env["HTTP_X_FORWARDED_FOR"] == "203.0.113.9"


def test_forwarded_allow_ips_from_the_environment(spindle):
    srv = spindle("wsgi_app:app", env={"FORWARDED_ALLOW_IPS": "10.0.0.1"})
    env = get_env(srv, [("X-Forwarded-For", "203.0.113.9")])
    assert env["REMOTE_ADDR"] == "127.0.0.1"


def test_hop_counting(spindle):
    srv = spindle("wsgi_app:app", "--forwarded-hops", "2", "--forwarded-allow-ips", "127.0.0.0/8")
    chain = [("X-Forwarded-For", "6.6.6.6, 203.0.113.1, 10.0.0.2")]
    assert get_env(srv, chain)["REMOTE_ADDR"] == "203.0.113.1"
    # Fewer entries than hops: the client may have written all of them.
    assert get_env(srv, [("X-Forwarded-For", "6.6.6.6")])["REMOTE_ADDR"] == "127.0.0.1"
    assert get_env(srv, [("Forwarded", "for=203.0.113.3, for=10.0.0.2")])["REMOTE_ADDR"] == "203.0.113.3"


def test_forwarded_host_only_when_asked(plain, spindle):
    fields = [("X-Forwarded-Host", "shop.example:8443")]
    env = get_env(plain, fields)
    assert env["HTTP_HOST"] == plain.host_header
    srv = spindle("wsgi_app:app", "--forwarded-host")
    env = get_env(srv, fields)
    assert env["HTTP_HOST"] == "shop.example:8443"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("shop.example", "8443")


# -- UNIX sockets and config files -------------------------------------------


def test_unix_socket_peers_are_allowed_and_trusted(spindle, tmp_path):
    path = tmp_path / "s.sock"
    srv = spindle("wsgi_app:app", "--bind", f"unix:{path}", "--proxy-protocol",
                  "--proxy-allow-from", "10.0.0.1", "--forwarded-allow-ips", "10.0.0.1",
                  ready=[r"listening on unix:(\S+)"])
    # A UNIX peer may send a PROXY header whatever --proxy-allow-from says...
    with RawConnection("", 0, 5.0, unix_path=str(path)) as conn:
        env = env_over(conn, srv, b"PROXY TCP4 192.0.2.8 127.0.0.1 7000 8000\r\n")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("192.0.2.8", "7000")
    # ...and without one (LOCAL: the proxy's own health check) its forwarding fields count,
    # as gunicorn trusts UNIX-socket peers.
    with RawConnection("", 0, 5.0, unix_path=str(path)) as conn:
        env = env_over(conn, srv, v2_header("192.0.2.8", 1, command=0),
                       [("X-Forwarded-For", "203.0.113.4")])
    assert env["REMOTE_ADDR"] == "203.0.113.4"
    assert env["spindle.peer_addr"] == ""


def test_gunicorn_config_file_names_are_real_settings(tmp_path):
    require_binary()
    (tmp_path / "gunicorn.conf.py").write_text(
        "proxy_protocol = True\n"
        "proxy_allow_ips = ['10.0.0.1', '10.0.0.2']\n"
        "forwarded_allow_ips = '*'\n"
        "secure_scheme_headers = {'X-SCHEME': 'https'}\n")
    result = subprocess.run([str(SPINDLE_BIN), "-c", "gunicorn.conf.py", "--print-config"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30, env=child_env())
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert "proxy_protocol = True  # gunicorn.conf.py" in lines
    assert 'proxy_allow_from = "10.0.0.1,10.0.0.2"  # gunicorn.conf.py' in lines
    assert 'forwarded_allow_ips = "*"  # gunicorn.conf.py' in lines
    assert 'secure_scheme_header = ["X-SCHEME=https"]  # gunicorn.conf.py' in lines
