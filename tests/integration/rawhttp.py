"""A raw-socket HTTP/1.x client with a small, strict response parser.

The integration tests talk to Spindle byte by byte: they send exact request
bytes (including malformed ones) and check the exact framing of what comes
back.  `requests`/`httpx` are too forgiving for that (they accept bare LF,
guess at framing, retry), so this module parses responses itself and raises
`ProtocolError` on anything RFC 9112 does not allow a server to send.

Every wait is bounded by a socket timeout; nothing here sleeps.
"""

from __future__ import annotations

import re
import select
import socket
import time
from dataclasses import dataclass, field

# RFC 9110 §5.6.2 token characters.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_STATUS_LINE = re.compile(rb"HTTP/(1\.[01]) ([0-9]{3}) ([^\r\n]*)")
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(.*?)[ \t]*")
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})((?:[ \t]*;[^\r\n]*)?)")
_MAX_HEAD = 64 * 1024


class ProtocolError(AssertionError):
    """The server sent bytes that are not a well-formed HTTP/1.x response."""


class IncompleteResponse(AssertionError):
    """The connection ended (EOF or reset) before a whole response arrived."""

    def __init__(self, message: str, partial: bytes = b"", head: "Response | None" = None):
        super().__init__(message)
        self.partial = partial
        self.head = head


class ConnectionResetBeforeResponse(IncompleteResponse):
    """RST arrived while waiting: the server closed with unread request bytes
    (no lingering close), and the kernel may have discarded its response."""


class ReadTimeout(AssertionError):
    """No byte arrived within the timeout."""


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    # "length", "chunked", "close" (read until EOF) or "none" (HEAD/1xx/204/304).
    framing: str = "none"
    trailers: list[tuple[str, str]] = field(default_factory=list)
    raw_head: bytes = b""

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def header(self, name: str) -> str | None:
        """The single value of `name`, None when absent; repeated -> error."""
        values = self.get_all(name)
        if len(values) > 1:
            raise ProtocolError(f"header {name!r} repeated: {values!r}")
        return values[0] if values else None

    def has_token(self, name: str, token: str) -> bool:
        """Whether a comma-separated header (Connection, Transfer-Encoding)
        lists `token`, case-insensitively."""
        for value in self.get_all(name):
            if token.lower() in [t.strip().lower() for t in value.split(",")]:
                return True
        return False

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 200 else self.body[:200] + b"..."
        return (f"<Response {self.version} {self.status} {self.reason!r} "
                f"headers={self.headers!r} framing={self.framing} body={body!r}>")


def no_body_expected(method: str, status: int) -> bool:
    """RFC 9112 §6.3 rule 1: these responses end with their head."""
    return method.upper() == "HEAD" or 100 <= status < 200 or status in (204, 304)


class RawConnection:
    """One TCP connection with a receive buffer shared by every read, so that
    pipelined responses arriving in one segment are parsed one by one."""

    def __init__(self, host: str, port: int, timeout: float = 5.0, unix_path: str | None = None):
        """TCP to host:port, or with `unix_path`, a UNIX socket (host and port unused)."""
        if unix_path is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address = unix_path
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.sock = socket.socket(family, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            address = (host, port)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False

    # -- plumbing ---------------------------------------------------------

    def __enter__(self) -> "RawConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, timeout: float | None = None) -> bool:
        """Receive more bytes into the buffer. False on EOF; raises
        ReadTimeout when nothing arrives in time and on reset raises
        ConnectionResetBeforeResponse."""
        if self.eof:
            return False
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            data = self.sock.recv(256 * 1024)
        except socket.timeout:
            raise ReadTimeout(f"no data within {self.sock.gettimeout()} s; "
                              f"buffered so far: {bytes(self.buf[:300])!r}") from None
        except ConnectionResetError:
            self.eof = True
            raise ConnectionResetBeforeResponse(
                "connection reset by the server", bytes(self.buf)) from None
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _read_line(self, what: str, limit: int = _MAX_HEAD) -> bytes:
        """One CRLF-terminated line, without its CRLF. A bare LF is an error."""
        while True:
            idx = self.buf.find(b"\n")
            if idx >= 0:
                if idx == 0 or self.buf[idx - 1] != 0x0D:
                    raise ProtocolError(f"bare LF in {what}: {bytes(self.buf[:idx + 1])!r}")
                line = self._take(idx + 1)[:-2]
                if b"\r" in line:
                    raise ProtocolError(f"bare CR in {what}: {line!r}")
                return line
            if len(self.buf) > limit:
                raise ProtocolError(f"{what} longer than {limit} bytes")
            if not self._fill():
                raise IncompleteResponse(f"EOF inside {what}", bytes(self.buf))

    def _read_exact(self, n: int, what: str) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise IncompleteResponse(
                    f"EOF inside {what}: wanted {n} bytes, got {len(self.buf)}", bytes(self.buf))
        return self._take(n)

    # -- responses --------------------------------------------------------

    def read_head(self, method: str = "GET", timeout: float | None = None) -> Response:
        """Status line and header fields of the next response (any status,
        including 1xx). Validates the framing headers but reads no body."""
        if timeout is not None:
            saved, self.timeout = self.timeout, timeout
        try:
            if not self.buf and not self._fill():
                raise IncompleteResponse("EOF before a response", b"")
            line = self._read_line("status line")
            match = _STATUS_LINE.fullmatch(line)
            if not match:
                raise ProtocolError(f"malformed status line: {line!r}")
            version, status, reason = match.group(1).decode(), int(match.group(2)), match.group(3)
            headers = self._read_fields("header section")
        finally:
            if timeout is not None:
                self.timeout = saved
        resp = Response("HTTP/" + version, status, reason.decode("latin-1"), headers)
        resp.raw_head = line + b"\r\n" + b"".join(
            f"{k}: {v}\r\n".encode("latin-1") for k, v in headers) + b"\r\n"
        self._decide_framing(resp, method)
        return resp

    def _read_fields(self, what: str) -> list[tuple[str, str]]:
        fields: list[tuple[str, str]] = []
        total = 0
        while True:
            line = self._read_line(what)
            total += len(line) + 2
            if total > _MAX_HEAD:
                raise ProtocolError(f"{what} larger than {_MAX_HEAD} bytes")
            if not line:
                return fields
            if line[:1] in (b" ", b"\t"):
                raise ProtocolError(f"obs-fold in {what}: {line!r}")
            match = _HEADER_LINE.fullmatch(line)
            if not match:
                raise ProtocolError(f"malformed field line in {what}: {line!r}")
            value = match.group(2)
            if re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value):
                raise ProtocolError(f"control byte in field value: {line!r}")
            fields.append((match.group(1).decode("ascii"), value.decode("latin-1")))

    def _decide_framing(self, resp: Response, method: str) -> None:
        te = resp.get_all("Transfer-Encoding")
        cls = resp.get_all("Content-Length")
        if te and cls:
            raise ProtocolError(f"both Transfer-Encoding and Content-Length sent: {resp.headers!r}")
        if cls:
            values = {v.strip() for c in cls for v in c.split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise ProtocolError(f"bad Content-Length: {cls!r}")
        if no_body_expected(method, resp.status):
            # RFC 9110 §8.6 and RFC 9112 §6.1: no Content-Length and no
            # Transfer-Encoding in a 1xx or 204 response.
            if (resp.status == 204 or 100 <= resp.status < 200) and (te or cls):
                raise ProtocolError(f"{resp.status} must not carry framing headers: {resp.headers!r}")
            resp.framing = "none"
        elif te:
            codings = [c.strip().lower() for v in te for c in v.split(",")]
            if resp.version == "HTTP/1.0":
                raise ProtocolError("Transfer-Encoding in an HTTP/1.0 response")
            resp.framing = "chunked" if codings[-1] == "chunked" else "close"
        elif cls:
            resp.framing = "length"
        else:
            resp.framing = "close"

    def read_body(self, resp: Response) -> bytes:
        """The whole body of `resp` (whose head was just read)."""
        if resp.framing == "none":
            body = b""
        elif resp.framing == "length":
            body = self._read_exact(int(resp.header("Content-Length")), "body")
        elif resp.framing == "chunked":
            parts = []
            while True:
                chunk = self.read_chunk(resp)
                if chunk is None:
                    break
                parts.append(chunk)
            body = b"".join(parts)
        else:
            while self._fill():
                pass
            body = self._take(len(self.buf))
        resp.body = body
        return body

    def read_chunk(self, resp: Response) -> bytes | None:
        """The next chunk of a chunked body; None after the last chunk and the
        trailer section were read."""
        try:
            line = self._read_line("chunk size line")
            match = _CHUNK_SIZE_LINE.fullmatch(line)
            if not match:
                raise ProtocolError(f"malformed chunk size line: {line!r}")
            size = int(match.group(1), 16)
            if size == 0:
                resp.trailers = self._read_fields("trailer section")
                return None
            data = self._read_exact(size, "chunk data")
            if self._read_exact(2, "chunk CRLF") != b"\r\n":
                raise ProtocolError("chunk data not followed by CRLF")
            return data
        except IncompleteResponse as exc:
            exc.head = resp
            raise

    def read_response(self, method: str = "GET", timeout: float | None = None,
                      skip_interim: bool = True) -> Response:
        """The next complete response. Interim 1xx responses are skipped
        unless `skip_interim` is False."""
        while True:
            resp = self.read_head(method, timeout)
            if skip_interim and 100 <= resp.status < 200 and resp.status != 101:
                continue
            try:
                self.read_body(resp)
            except IncompleteResponse as exc:
                exc.head = resp
                raise
            return resp

    def read_responses(self, methods: list[str], timeout: float | None = None) -> list[Response]:
        return [self.read_response(m, timeout) for m in methods]

    # -- connection state -------------------------------------------------

    def wait_closed(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the server to end the connection.

        True on EOF or reset, False when the connection is still open at the
        deadline. Bytes arriving meanwhile are a protocol error: a response
        the test did not expect."""
        if self.buf:
            raise ProtocolError(f"unexpected bytes after the response: {bytes(self.buf[:300])!r}")
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                if not self._fill(timeout=left):
                    return True
            except ReadTimeout:
                return False
            except ConnectionResetBeforeResponse:
                return True
            raise ProtocolError(f"unexpected bytes while waiting for close: {bytes(self.buf[:300])!r}")

    def read_until_close(self, timeout: float) -> bytes:
        """Every byte until EOF/reset, or ReadTimeout when the connection
        stays open for `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ReadTimeout(f"connection still open after {timeout} s; got {bytes(self.buf[:300])!r}")
            try:
                if not self._fill(timeout=left):
                    break
            except ConnectionResetBeforeResponse:
                break
        return self._take(len(self.buf))

    def readable_within(self, timeout: float) -> bool:
        """Whether a byte (or EOF) is ready within `timeout` seconds."""
        if self.buf or self.eof:
            return True
        ready, _, _ = select.select([self.sock], [], [], timeout)
        return bool(ready)


def parse_all(data: bytes, methods: list[str] | None = None) -> list[Response]:
    """Parse every complete response in `data` (bytes read until close).
    Raises IncompleteResponse when `data` ends inside a response."""
    conn = RawConnection.__new__(RawConnection)
    conn.buf = bytearray(data)
    conn.eof = True
    conn.timeout = 0
    out = []
    i = 0
    while conn.buf:
        method = methods[i] if methods and i < len(methods) else "GET"
        out.append(conn.read_response(method, skip_interim=False))
        i += 1
    return out


def request(method: str, target: str, host: str = "localhost", headers: list[tuple[str, str]] | None = None,
            body: bytes | None = None, version: str = "HTTP/1.1") -> bytes:
    """Bytes of a well-formed request. `body` gets a Content-Length unless
    the headers already frame it."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    names = set()
    for k, v in headers or []:
        lines.append(f"{k}: {v}")
        names.add(k.lower())
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def chunked(pieces: list[bytes]) -> bytes:
    """A chunked body (RFC 9112 §7.1) made of `pieces`, with its last chunk."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return out + b"0\r\n\r\n"
