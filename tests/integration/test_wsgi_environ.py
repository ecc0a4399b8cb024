"""The WSGI environ (PEP 3333, ARCHITECTURE.md §6): every key, its type and value.
The app (`/env`) answers with JSON: {key: {"type": ..., "value": ...}}."""

import json

import pytest

from rawhttp import request


def get_env(server, target, headers=None, method="GET", body=None, version="HTTP/1.1"):
    with server.connect() as conn:
        host = server.host_header if version == "HTTP/1.1" else None
        conn.send(request(method, target, host, headers, body, version))
        resp = conn.read_response(method)
        assert resp.status == 200, resp
        env = json.loads(resp.body)
        env["_client_port"] = conn.local_port
        return env


def value(env, key):
    assert key in env, f"{key} missing from environ"
    return env[key]["value"]


def typed(env, key, type_name):
    assert key in env, f"{key} missing from environ"
    assert env[key]["type"] == type_name, f"{key} is a {env[key]['type']}, not a {type_name}: {env[key]!r}"
    return env[key]["value"]


@pytest.fixture(scope="module")
def basic_env(server):
    return get_env(server, "/env/basic?a=1&b=%20x+y&c=%C3%A9", [("X-Custom", "yes")])


def test_cgi_keys_are_native_strings(basic_env):
    for key, entry in basic_env.items():
        if "." not in key and not key.startswith("_"):
            assert entry["type"] == "str", f"{key} is a {entry['type']}"


def test_request_method_path_and_query(basic_env):
    assert typed(basic_env, "REQUEST_METHOD", "str") == "GET"
    assert typed(basic_env, "PATH_INFO", "str") == "/env/basic"
    # Raw, not decoded: percent escapes and '+' stay as they were sent.
    assert typed(basic_env, "QUERY_STRING", "str") == "a=1&b=%20x+y&c=%C3%A9"


def test_script_name_empty_by_default(basic_env):
    assert typed(basic_env, "SCRIPT_NAME", "str") == ""


def test_server_and_remote_addresses(server, basic_env):
    assert typed(basic_env, "SERVER_NAME", "str"), "SERVER_NAME is empty"
    assert typed(basic_env, "SERVER_PORT", "str") == str(server.port)
    assert typed(basic_env, "SERVER_PROTOCOL", "str") == "HTTP/1.1"
    assert typed(basic_env, "REMOTE_ADDR", "str") == "127.0.0.1"
    assert typed(basic_env, "REMOTE_PORT", "str") == str(basic_env["_client_port"])


def test_server_protocol_http10(server):
    env = get_env(server, "/env/ten", version="HTTP/1.0")
    assert value(env, "SERVER_PROTOCOL") == "HTTP/1.0"


def test_server_software_mentions_spindle(basic_env):
    assert "spindle" in typed(basic_env, "SERVER_SOFTWARE", "str").lower()


def test_wsgi_keys(basic_env):
    assert typed(basic_env, "wsgi.version", "tuple") == [1, 0]
    assert typed(basic_env, "wsgi.url_scheme", "str") == "http"
    typed(basic_env, "wsgi.multithread", "bool")
    typed(basic_env, "wsgi.multiprocess", "bool")
    assert typed(basic_env, "wsgi.run_once", "bool") is False
    assert typed(basic_env, "wsgi.input_terminated", "bool") is True
    assert "wsgi.input" in basic_env and "wsgi.errors" in basic_env
    assert basic_env["_file_wrapper_callable"] is True, basic_env.get("wsgi.file_wrapper")


def test_content_type_and_length_absent_when_not_sent(basic_env):
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH", "HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
        assert key not in basic_env, f"{key} present for a GET without a body: {basic_env[key]!r}"


def test_content_type_and_length_present_when_sent(server):
    env = get_env(server, "/env/post", [("Content-Type", "application/x-www-form-urlencoded")],
                  method="POST", body=b"a=1&b=2")
    assert typed(env, "REQUEST_METHOD", "str") == "POST"
    assert typed(env, "CONTENT_TYPE", "str") == "application/x-www-form-urlencoded"
    assert typed(env, "CONTENT_LENGTH", "str") == "7"
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_request_methods(server, method):
    env = get_env(server, "/env/m", method=method, body=b"" if method in ("PUT", "PATCH") else None)
    assert value(env, "REQUEST_METHOD") == method


def test_extension_method_passed_through(server):
    # /raw/: the validator warns on methods it does not know.
    env = get_env(server, "/raw/env/m", method="PURGE")
    assert value(env, "REQUEST_METHOD") == "PURGE"


def test_http_headers(basic_env):
    assert typed(basic_env, "HTTP_X_CUSTOM", "str") == "yes"
    assert value(basic_env, "HTTP_HOST").startswith("127.0.0.1:")


def test_repeated_headers_joined_with_comma(server):
    env = get_env(server, "/env/r", [("X-Multi", "a"), ("X-Other", "o"), ("x-multi", "b"), ("X-MULTI", "c")])
    assert value(env, "HTTP_X_MULTI") == "a,b,c"
    assert value(env, "HTTP_X_OTHER") == "o"


def test_repeated_common_headers_and_empty_values_joined(server):
    # Common names have interned keys; one-character and empty values are cached str
    # singletons in CPython: neither may hide a repeat.
    env = get_env(server, "/env/c", [("Accept", "x"), ("accept", ""), ("ACCEPT", "x"),
                                    ("User-Agent", "ua"), ("X-Forwarded-For", "1.2.3.4"),
                                    ("x-forwarded-for", "5.6.7.8")])
    assert value(env, "HTTP_ACCEPT") == "x,,x"
    assert value(env, "HTTP_USER_AGENT") == "ua"
    assert value(env, "HTTP_X_FORWARDED_FOR") == "1.2.3.4,5.6.7.8"


def test_header_with_underscore_dropped(server):
    env = get_env(server, "/env/u", [("X-Dash", "dash"), ("X_Dash", "underscore"), ("X_Only", "1")])
    assert value(env, "HTTP_X_DASH") == "dash", "a header with '_' posed as a dashed one"
    assert "HTTP_X_ONLY" not in env


def test_header_value_whitespace_trimmed_and_latin1(server):
    with server.connect() as conn:
        conn.send(b"GET /env/h HTTP/1.1\r\nHost: x\r\nX-Pad: \t padded value \t\r\nX-Latin: caf\xe9\r\n\r\n")
        env = json.loads(conn.read_response().body)
    assert value(env, "HTTP_X_PAD") == "padded value"
    assert value(env, "HTTP_X_LATIN") == "caf\u00e9"


@pytest.mark.parametrize("target, path_info", [
    ("/env/caf%C3%A9", "/env/caf\u00c3\u00a9"),   # percent-decoded bytes, then latin-1
    ("/env/a%2Fb", "/env/a/b"),
    ("/env/a+b", "/env/a+b"),                      # '+' means '+' in a path
    ("/env/%25done", "/env/%done"),
    ("/env/sp%20ace", "/env/sp ace"),
    ("/env/lower%c3%a9", "/env/lower\u00c3\u00a9"),
])
def test_path_info_decoding(server, target, path_info):
    env = get_env(server, target)
    assert value(env, "PATH_INFO") == path_info


def test_empty_query_string_present(server):
    env = get_env(server, "/env/q?")
    assert value(env, "QUERY_STRING") == ""
    env = get_env(server, "/env/q")
    assert value(env, "QUERY_STRING") == ""


def test_root_path_sets_script_name(spindle):
    srv = spindle("wsgi_app:app", "--root-path", "/mount")
    env = get_env(srv, "/mount/env/x%20y?q=1")
    # PEP 3333: SCRIPT_NAME + PATH_INFO is the whole (decoded) request path.
    assert value(env, "SCRIPT_NAME") == "/mount"
    assert value(env, "PATH_INFO") == "/env/x y"
    assert value(env, "QUERY_STRING") == "q=1"
