#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/.

Seeds are made, not committed: the request corpus of tests/corpus/ (raw requests with
their expected outcomes) gives the `head` seeds whole and the `body` seeds from what follows
the head; the PROXY, response-head and forwarding seeds are written here. Each seed starts
with the selector bytes its target reads first (see fuzz/fuzz_targets/*.rs). Re-running
only rewrites the seed files; what libFuzzer added to a corpus stays.
"""
import hashlib
import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz" / "corpus"


def write(target, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / ("seed-" + hashlib.sha1(data).hexdigest()[:16])).write_bytes(data)


def requests():
    for kind in ("valid", "invalid"):
        for http in sorted((ROOT / "tests" / "corpus" / kind).glob("*.http")):
            case = json.loads(http.with_suffix(".json").read_text())
            yield http.read_bytes(), case


def seed_head():
    for raw, _ in requests():
        # Default limits, splits at a quarter, half and three quarters; and small limits.
        write("head", bytes([0, 64, 128, 192]) + raw)
        if len(raw) < 200:
            write("head", bytes([0x85, 30, 90, 200]) + raw)


def seed_body():
    for raw, case in requests():
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            continue
        body = raw[end + 4:]
        head = raw[:end].lower()
        chunked = b"transfer-encoding" in head and b"chunked" in head
        if chunked:
            modes = [0x00, 0x80 | 0x00]
            length = case.get("max_body") or 0
        elif b"content-length" in head:
            modes = [0x01]
            length = min(len(body), 0xFFFF)
            try:
                length = int(case["headers"][[n.lower() for n, _ in case["headers"]].index("content-length")][1])
            except (KeyError, ValueError, IndexError):
                pass
            length = min(length, 0xFFFF)
        else:
            continue
        for mode in modes:
            if case.get("max_body") is not None:
                mode |= 0x02
                length = case["max_body"] * 2
            write("body", bytes([mode]) + struct.pack("<H", length) + bytes([50, 120, 230]) + body)
    # The filler check from the usual waiting states: mid size, extension, trailer.
    for tail in (b"5\r\nab", b"5;x=y", b"0\r\nX-T: 1", b"1\r\na\r\n", b"000", b"4 ;"):
        write("body", bytes([0x80, ord(";"), 0, 10, 100, 200]) + tail)
        write("body", bytes([0x80, ord("a"), 0, 10, 100, 200]) + tail)


def seed_proxy():
    v1 = [
        b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\nGET / HTTP/1.1\r\n",
        b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n",
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
    ]
    sig = b"\r\n\r\n\x00\r\nQUIT\n"

    def v2(cmd, fam, payload):
        return sig + bytes([0x20 | cmd, fam]) + struct.pack(">H", len(payload)) + payload

    inet = bytes([192, 0, 2, 1, 127, 0, 0, 1]) + struct.pack(">HH", 56324, 8000)
    inet6 = bytes(range(16)) + bytes(16) + struct.pack(">HH", 1, 2)
    v2s = [
        v2(1, 0x11, inet),
        v2(1, 0x11, inet + b"\x04\x00\x03abc"),
        v2(1, 0x21, inet6),
        v2(0, 0x00, b""),
        v2(1, 0x31, bytes(216)),
        v2(1, 0x12, inet) + b"GET",
    ]
    for h in v1 + v2s:
        write("proxy", bytes([len(h) // 2, len(h) - 1]) + h)


def seed_response_head():
    def case(status, headers):
        out = bytes([len(status)]) + status
        for n, v in headers:
            out += bytes([len(n), len(v)]) + n + v
        return out

    write("response_head", case(b"200 OK", [(b"Content-Type", b"text/plain"), (b"Content-Length", b"5")]))
    write("response_head", case(b"404 Not Found", [(b"Set-Cookie", b"a=b; Path=/"), (b"Date", b"x")]))
    write("response_head", case(b"204 No Content", [(b"X-A", b"\t1 2\t"), (b"Connection", b"close")]))
    write("response_head", case(b"500 \xff\xfe", [(b"X", b"a\r\nInjected: 1"), (b"Y", b"\x00")]))
    write("response_head", case(b"200 OK\r\nX: y", [(b"Z", b"1")]))
    write("response_head", case(b"304 Not Modified", [(b"Content-Length", b" 12 "), (b"content-length", b"12")]))


def seed_forwarded():
    def case(selector, lines):
        write("forwarded", bytes([selector]) + b"\n".join(lines))

    case(0, [b"\x00:192.0.2.1, 10.0.0.1", b"\x02:https"])
    case(1, [b"\x00:192.0.2.1", b"\x00:198.51.100.7:4711, [2001:db8::1]:80"])
    case(4, [b'\x01:for="[2001:db8::1]:4711";proto=https;host=example.com, for=10.0.0.1', b"\x03:a.example:8080"])
    case(5, [b"\x01:for=unknown;by=_hidden, for=192.0.2.9;host=x", b"\x05:on", b"\x04:ssl"])
    case(8, [b"\x06:https", b"\x06:http, https"])
    case(0, [b"127.0.0.1,::1,10.0.0.0/8, 192.168.0.0/16"])


def seed_gateway():
    """uwsgi (selector 0), SCGI (1), FastCGI records (2) and STDIN bodies (3), from nginx's
    stock params: what a real front end sends."""
    params = [(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/a%20b?x=1"), (b"QUERY_STRING", b"x=1"),
              (b"SERVER_PROTOCOL", b"HTTP/1.1"), (b"CONTENT_LENGTH", b"5"), (b"CONTENT_TYPE", b"text/plain"),
              (b"REMOTE_ADDR", b"127.0.0.1"), (b"REMOTE_PORT", b"4711"), (b"SERVER_NAME", b"localhost"),
              (b"SERVER_PORT", b"80"), (b"HTTP_HOST", b"example.com"), (b"HTTPS", b"on")]
    block = b"".join(struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v for k, v in params)
    write("gateway", bytes([0, 3, 200]) + struct.pack("<BHB", 0, len(block), 0) + block + b"hello")
    ordered = [(b"CONTENT_LENGTH", b"5"), (b"SCGI", b"1")] + [p for p in params if p[0] != b"CONTENT_LENGTH"]
    header = b"".join(k + b"\0" + v + b"\0" for k, v in ordered)
    write("gateway", bytes([1, 10, 90]) + str(len(header)).encode() + b":" + header + b"," + b"hello")

    def record(kind, rid, content, padding=0):
        return struct.pack(">BBHHBB", 1, kind, rid, len(content), padding, 0) + content + b"\0" * padding

    def pair(k, v):
        enc = lambda n: bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)
        return enc(len(k)) + enc(len(v)) + k + v

    fparams = b"".join(pair(k, v) for k, v in params)
    write("gateway", bytes([2, 4, 12]) + record(1, 1, struct.pack(">HB5x", 1, 1)))
    write("gateway", bytes([2, 9, 30]) + record(4, 1, fparams, 3))
    write("gateway", bytes([2, 1, 2]) + record(9, 0, pair(b"FCGI_MAX_CONNS", b"")))
    write("gateway", bytes([3, 5, 20]) + record(5, 1, b"hello", 3) + record(5, 1, b""))
    write("gateway", bytes([3, 11, 13]) + record(5, 1, b"he") + record(5, 1, b"llo", 5) + record(5, 1, b"") + b"next")


if __name__ == "__main__":
    seed_gateway()
    seed_head()
    seed_body()
    seed_proxy()
    seed_response_head()
    seed_forwarded()
    for d in sorted(OUT.iterdir()):
        print(f"{d.name}: {sum(1 for _ in d.iterdir())} files")
