//! Responses: the application's status and headers validated ([`ResponseHead`], HTTP
//! semantics that every wire protocol shares), their HTTP/1.1 encoding with body framing
//! ([`Http1Encoder`]), the server's own error responses, chunk framing, and the rules for
//! which responses carry a body (RFC 9110 §6.4.1, RFC 9112 §6.3). Bytes in, bytes out: no
//! I/O, no Python, no logging (mismatches are reported to the caller, which logs them).

use crate::http::date::DateCache;
use crate::http::head::is_tchar;
use crate::http::persist::Persistence;

/// The interim response sent when the application first reads a body announced with
/// `Expect: 100-continue` (RFC 9110 §10.1.1).
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The end of a chunked body with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Why an application's status or header was refused (raised in Python as `ValueError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// The status is not `NNN reason` (three digits, the first not 0, a space, then text
    /// without control characters other than tab).
    BadStatus,
    /// The header name is empty or not a `token` (RFC 9110 §5.1).
    BadName,
    /// A hop-by-hop field, which only the server may send (PEP 3333, "Other HTTP
    /// Features"; RFC 9110 §7.6.1).
    HopByHop,
    /// The value has a control character: CR, LF and NUL would split or end the head
    /// (RFC 9110 §5.5).
    ControlChar,
    /// `Content-Length` is not a decimal number.
    BadContentLength,
    /// Two `Content-Length` fields with different values.
    ConflictingContentLength,
}

/// The status code of a WSGI status line such as `200 OK`, or `None` when it is malformed.
pub fn parse_status(status: &[u8]) -> Option<u16> {
    let valid = status.len() >= 4
        && status[..3].iter().all(u8::is_ascii_digit)
        && status[3] == b' '
        && status[0] != b'0'
        && status[4..]
            .iter()
            .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    valid.then(|| {
        (status[0] - b'0') as u16 * 100 + (status[1] - b'0') as u16 * 10 + (status[2] - b'0') as u16
    })
}

/// Hop-by-hop fields belong to the server's connection management, never the app's
/// (PEP 3333, "Other HTTP Features"; RFC 9110 §7.6.1).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Checks an application's header name: a non-empty token, and not hop-by-hop.
pub fn check_header_name(name: &[u8]) -> Result<(), HeadError> {
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(HeadError::BadName);
    }
    if is_hop_by_hop(name) {
        return Err(HeadError::HopByHop);
    }
    Ok(())
}

/// The status and the application's validated headers, before any framing header: what
/// `start_response` produces. Protocol-neutral: each wire protocol's encoder puts its own
/// status line in front (`HTTP/1.1 200 OK`, or CGI's `Status: 200 OK`). Built apart from the
/// encoder so validation (which may run Python code in the caller) never holds the
/// response borrowed.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    status: u16,
    /// `<status>\r\n` (e.g. `200 OK`) then one `name: value\r\n` per header.
    bytes: Vec<u8>,
    content_length: Option<u64>,
    has_date: bool,
}

impl ResponseHead {
    /// Starts a head from a status such as `200 OK` (see [`parse_status`]).
    pub fn new(status: &[u8]) -> Result<ResponseHead, HeadError> {
        let code = parse_status(status).ok_or(HeadError::BadStatus)?;
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(status);
        bytes.extend_from_slice(b"\r\n");
        Ok(ResponseHead {
            status: code,
            bytes,
            content_length: None,
            has_date: false,
        })
    }

    /// Validates and appends one header. `Content-Length` is remembered for framing and
    /// `Date` to avoid sending a second one.
    pub fn push_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), HeadError> {
        check_header_name(name)?;
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(HeadError::ControlChar);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let text = std::str::from_utf8(value).unwrap_or("").trim();
            match text.parse::<u64>() {
                Ok(n) if self.content_length.is_some_and(|c| c != n) => {
                    return Err(HeadError::ConflictingContentLength);
                }
                Ok(n) if text.bytes().all(|b| b.is_ascii_digit()) => self.content_length = Some(n),
                _ => return Err(HeadError::BadContentLength),
            }
        }
        self.has_date |= name.eq_ignore_ascii_case(b"date");
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(b": ");
        self.bytes.extend_from_slice(value);
        self.bytes.extend_from_slice(b"\r\n");
        Ok(())
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// The status text and header lines (`200 OK\r\nname: value\r\n...`).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// How the body of a response is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// Not decided yet (head not sent).
    Pending,
    /// `Content-Length: n`: exactly n bytes follow.
    Length(u64),
    Chunked,
    /// HTTP/1.0 without a length: the body ends when the connection closes.
    CloseDelimited,
    /// HEAD, 1xx, 204, 304.
    NoBody,
    /// No length and no chunks: the wire protocol ends the body itself (a FastCGI
    /// END_REQUEST), and the connection may persist.
    ProtocolDelimited,
}

/// A body that disagreed with the application's `Content-Length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthMismatch {
    /// More bytes than declared: the excess was dropped.
    Excess { declared: u64 },
    /// The response ended short: the connection must close, or the client would wait.
    Short { sent: u64, declared: u64 },
}

/// One encoded message of a response: the head when not yet sent, then body parts framed.
#[derive(Debug)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    /// What decides whether the connection persists, as the encoder knows it after this
    /// message; the I/O thread adds what it knows (the request body read or not) once the
    /// response has ended.
    pub persistence: Persistence,
    pub mismatch: Option<LengthMismatch>,
}

/// `build` was called before the status was known (`start_response` not called).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotStarted;

/// Encodes one application response as HTTP/1.1 (or 1.0): the head (status line, the
/// application's headers, then `Content-Length` or `Transfer-Encoding`, `Date` and
/// `Connection` as needed), then each body part framed. Framing is decided when the head is
/// built, from the request (version, HEAD), the status and what is known of the length;
/// `Connection` from the [`Persistence`] the connection started it with.
#[derive(Debug)]
pub struct Http1Encoder {
    http11: bool,
    /// A CGI response (FastCGI's STDOUT): `Status:` instead of a status line, no framing
    /// headers but a known `Content-Length`, no `Date` or `Connection`.
    cgi: bool,
    is_head: bool,
    persistence: Persistence,
    status: Option<u16>,
    /// Status text and the application's validated headers, until the head is built.
    head: Vec<u8>,
    content_length: Option<u64>,
    has_date: bool,
    headers_sent: bool,
    framing: ResponseFraming,
    body_bytes: u64,
}

impl Http1Encoder {
    /// A response to a request of this version and method; `persistence` holds what the
    /// request and the server allow.
    pub fn new(http11: bool, is_head: bool, persistence: Persistence) -> Http1Encoder {
        Http1Encoder {
            http11,
            cgi: false,
            is_head,
            persistence,
            status: None,
            head: Vec::new(),
            content_length: None,
            has_date: false,
            headers_sent: false,
            framing: ResponseFraming::Pending,
            body_bytes: 0,
        }
    }

    /// A CGI response (FastCGI's STDOUT), whose body the wire protocol delimits.
    pub fn cgi(is_head: bool, persistence: Persistence) -> Http1Encoder {
        Http1Encoder {
            cgi: true,
            ..Http1Encoder::new(true, is_head, persistence)
        }
    }

    /// Sets (or, before the head is built, replaces) the status and headers.
    pub fn start(&mut self, head: ResponseHead) {
        self.status = Some(head.status);
        self.head = head.bytes;
        self.content_length = head.content_length;
        self.has_date = head.has_date;
    }

    /// The request body will not have been read to its end when the response ends, so the
    /// connection cannot carry another request: the head says `Connection: close` if it is
    /// not built yet.
    pub fn request_body_unread(&mut self) {
        self.persistence.body_unread();
    }

    /// Counts body bytes sent by other means (a file sent with sendfile after the head).
    pub fn count_body_bytes(&mut self, n: u64) {
        self.body_bytes += n;
    }

    pub fn status(&self) -> Option<u16> {
        self.status
    }
    pub fn http11(&self) -> bool {
        self.http11
    }
    pub fn is_head(&self) -> bool {
        self.is_head
    }
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }
    pub fn headers_sent(&self) -> bool {
        self.headers_sent
    }
    /// What decides whether the connection persists, as known so far.
    pub fn persistence(&self) -> Persistence {
        self.persistence
    }
    pub fn framing(&self) -> ResponseFraming {
        self.framing
    }
    /// Body bytes sent so far (after framing, without chunk sizes).
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// Builds the next message: the head when not yet built, then `parts` framed, then the
    /// end of the body when `end`. `known_total`: the whole body's length when the caller
    /// has it all at once (it becomes the `Content-Length` if the application gave none).
    pub fn build(
        &mut self,
        parts: &[&[u8]],
        end: bool,
        known_total: Option<u64>,
        date: &mut DateCache,
    ) -> Result<Encoded, NotStarted> {
        if self.status.is_none() {
            return Err(NotStarted);
        }
        let data_len: usize = parts.iter().map(|p| p.len()).sum();
        let mut out = Vec::with_capacity(self.head.len() + data_len + 160);
        if !self.headers_sent {
            self.write_head(&mut out, known_total, date);
        }
        let mut mismatch = None;
        for part in parts {
            match self.framing {
                ResponseFraming::NoBody | ResponseFraming::Pending => {}
                ResponseFraming::Length(n) => {
                    let room = n.saturating_sub(self.body_bytes) as usize;
                    let take = room.min(part.len());
                    if take < part.len() {
                        mismatch = Some(LengthMismatch::Excess { declared: n });
                    }
                    out.extend_from_slice(&part[..take]);
                    self.body_bytes += take as u64;
                }
                ResponseFraming::Chunked => {
                    push_chunk(&mut out, part);
                    self.body_bytes += part.len() as u64;
                }
                ResponseFraming::CloseDelimited | ResponseFraming::ProtocolDelimited => {
                    out.extend_from_slice(part);
                    self.body_bytes += part.len() as u64;
                }
            }
        }
        if end {
            match self.framing {
                ResponseFraming::Chunked => out.extend_from_slice(LAST_CHUNK),
                ResponseFraming::Length(n) if self.body_bytes < n => {
                    mismatch = Some(LengthMismatch::Short {
                        sent: self.body_bytes,
                        declared: n,
                    });
                    self.persistence.broken();
                }
                _ => {}
            }
        }
        Ok(Encoded {
            bytes: out,
            persistence: self.persistence,
            mismatch,
        })
    }

    /// The head of a whole response whose `len` body bytes are written apart (from the
    /// application's own buffer), and the end of it: one message for the entire response.
    pub fn build_whole(&mut self, len: u64, date: &mut DateCache) -> Result<Encoded, NotStarted> {
        let head = self.build(&[], false, Some(len), date)?;
        self.count_body_bytes(len);
        let end = self.build(&[], true, None, date)?;
        debug_assert!(
            end.bytes.is_empty(),
            "a length-framed response has no trailer"
        );
        Ok(Encoded {
            bytes: head.bytes,
            persistence: end.persistence,
            mismatch: end.mismatch,
        })
    }

    /// The server's own error response in place of the application's, which failed before
    /// its head went out; the connection closes after it.
    pub fn error(&mut self, status: u16, date: &mut DateCache) -> Encoded {
        let mut out = Vec::with_capacity(192);
        error_response(&mut out, status, date.get());
        if self.cgi {
            out.splice(..b"HTTP/1.1 ".len(), b"Status: ".iter().copied());
        }
        self.status = Some(status);
        self.headers_sent = true;
        self.persistence.broken();
        Encoded {
            bytes: out,
            persistence: self.persistence,
            mismatch: None,
        }
    }

    /// Appends the head (status line, app headers, framing headers, Date, Connection) and
    /// decides the framing.
    fn write_head(&mut self, out: &mut Vec<u8>, known_total: Option<u64>, date: &mut DateCache) {
        let status = self.status.unwrap_or(500);
        out.extend_from_slice(if self.cgi { b"Status: " } else { b"HTTP/1.1 " });
        out.extend_from_slice(&self.head);
        self.framing = if self.is_head || !status_allows_body(status) {
            ResponseFraming::NoBody
        } else if let Some(n) = self.content_length {
            ResponseFraming::Length(n)
        } else if let Some(n) = known_total {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
            ResponseFraming::Length(n)
        } else if self.cgi {
            ResponseFraming::ProtocolDelimited
        } else if self.http11 {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            ResponseFraming::Chunked
        } else {
            self.persistence.close_delimited();
            ResponseFraming::CloseDelimited
        };
        if self.is_head && self.content_length.is_none() {
            if let Some(n) = known_total {
                // HEAD gets the headers GET would get (RFC 9110 §9.3.2).
                out.extend_from_slice(b"Content-Length: ");
                push_decimal(out, n);
                out.extend_from_slice(b"\r\n");
            }
        }
        // A CGI response has neither: the front end adds Date and manages its connection.
        if !self.has_date && !self.cgi {
            out.extend_from_slice(b"Date: ");
            out.extend_from_slice(date.get());
            out.extend_from_slice(b"\r\n");
        }
        if self.cgi {
            // See above.
        } else if !self.persistence.keep_alive() {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if !self.http11 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        self.headers_sent = true;
        self.head = Vec::new();
    }
}

/// Responses to HEAD and with status 1xx, 204 or 304 never carry a body.
#[inline]
pub fn status_allows_body(status: u16) -> bool {
    !(100..200).contains(&status) && status != 204 && status != 304
}

/// The reason phrase the server uses for its own responses.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// Appends a complete error response from the server itself: a short plain-text body,
/// `Content-Length`, `Retry-After` on a 503, and `Connection: close` (the connection is
/// closed after it).
pub fn error_response(out: &mut Vec<u8>, status: u16, date: &[u8]) {
    let reason = reason(status);
    let mut code = itoa_buf(status as u64);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(
        b"\r\nServer: spindle\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ",
    );
    code = itoa_buf(reason.len() as u64 + 1);
    out.extend_from_slice(code.as_bytes());
    if status == 503 {
        // The server's 503s say it is overloaded or stopping (a request shed after
        // --max-queue-wait, a full queue): a client may try again in a second
        // (RFC 9110 §10.2.3).
        out.extend_from_slice(b"\r\nRetry-After: 1");
    }
    out.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    out.extend_from_slice(reason.as_bytes());
    out.push(b'\n');
}

/// Appends one chunk of a chunked body (`SIZE CRLF data CRLF`); empty data appends nothing,
/// since an empty chunk would end the body.
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    push_hex(out, data.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in lower-case hex.
pub fn push_hex(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa_buf(n).as_bytes());
}

/// A small stack buffer holding a decimal number.
pub struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    pub fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }
}

pub fn itoa_buf(mut n: u64) -> Decimal {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    Decimal { digits, start: i }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::persist::ConnectionEnd;

    #[test]
    fn error_response_is_complete_and_closes() {
        let mut out = Vec::new();
        error_response(&mut out, 431, b"Sun, 06 Nov 1994 08:49:37 GMT");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }

    #[test]
    fn chunks_are_hex_framed() {
        let mut out = Vec::new();
        push_chunk(&mut out, &[b'x'; 26]);
        push_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(&out[..4], b"1a\r\n");
        assert!(out.ends_with(b"\r\n0\r\n\r\n"));
    }

    fn hello(http11: bool, is_head: bool, keep_alive: bool) -> Http1Encoder {
        let mut head = ResponseHead::new(b"200 OK").unwrap();
        head.push_header(b"Content-Type", b"text/plain").unwrap();
        let mut encoder = Http1Encoder::new(http11, is_head, Persistence::new(keep_alive, true));
        encoder.start(head);
        encoder
    }

    fn text(encoded: &Encoded) -> &str {
        std::str::from_utf8(&encoded.bytes).unwrap()
    }

    #[test]
    fn whole_body_gets_a_content_length() {
        let mut date = DateCache::new();
        let mut encoder = hello(true, false, true);
        let out = encoder
            .build(&[b"Hello, ", b"world!"], true, Some(13), &mut date)
            .unwrap();
        let (head, body) = text(&out).split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"));
        assert!(head.contains("\r\nContent-Length: 13\r\nDate: "));
        assert!(!head.contains("Connection"));
        assert_eq!(body, "Hello, world!");
        assert_eq!(encoder.framing(), ResponseFraming::Length(13));
        assert!(out.persistence.keep_alive() && out.mismatch.is_none());
    }

    #[test]
    fn app_content_length_is_kept_and_enforced() {
        let mut date = DateCache::new();
        let mut head = ResponseHead::new(b"200 OK").unwrap();
        head.push_header(b"Content-Length", b"4").unwrap();
        let mut encoder = Http1Encoder::new(true, false, Persistence::new(true, true));
        encoder.start(head);
        let out = encoder.build(&[b"abcdef"], false, None, &mut date).unwrap();
        assert!(text(&out).contains("\r\nContent-Length: 4\r\n"));
        assert!(text(&out).ends_with("\r\n\r\nabcd"));
        assert_eq!(out.mismatch, Some(LengthMismatch::Excess { declared: 4 }));
        // `start` again before the head is built replaces status and headers.
        let mut short = hello(true, false, true);
        let mut head = ResponseHead::new(b"200 OK").unwrap();
        head.push_header(b"content-length", b"10").unwrap();
        short.start(head);
        let out = short.build(&[b"abc"], true, None, &mut date).unwrap();
        assert_eq!(
            out.mismatch,
            Some(LengthMismatch::Short {
                sent: 3,
                declared: 10
            })
        );
        assert!(!out.persistence.keep_alive());
    }

    #[test]
    fn streamed_http11_body_is_chunked() {
        let mut date = DateCache::new();
        let mut encoder = hello(true, false, true);
        let first = encoder.build(&[b"abc"], false, None, &mut date).unwrap();
        let (head, body) = text(&first).split_once("\r\n\r\n").unwrap();
        assert!(head.contains("\r\nTransfer-Encoding: chunked\r\n"));
        assert_eq!(body, "3\r\nabc\r\n");
        let last = encoder.build(&[], true, None, &mut date).unwrap();
        assert_eq!(last.bytes, LAST_CHUNK);
        assert!(last.persistence.keep_alive());
        assert_eq!(encoder.body_bytes(), 3);
    }

    #[test]
    fn streamed_http10_body_is_close_delimited() {
        let mut date = DateCache::new();
        let mut encoder = hello(false, false, true);
        let first = encoder.build(&[b"abc"], false, None, &mut date).unwrap();
        let (head, body) = text(&first).split_once("\r\n\r\n").unwrap();
        assert!(head.ends_with("\r\nConnection: close"));
        assert!(!head.contains("Transfer-Encoding") && !head.contains("Content-Length"));
        assert_eq!(body, "abc");
        assert_eq!(encoder.framing(), ResponseFraming::CloseDelimited);
        assert!(!encoder
            .build(&[], true, None, &mut date)
            .unwrap()
            .persistence
            .keep_alive());
    }

    #[test]
    fn http10_keep_alive_is_announced() {
        let mut date = DateCache::new();
        let out = hello(false, false, true)
            .build(&[b"hi"], true, Some(2), &mut date)
            .unwrap();
        assert!(text(&out).contains("\r\nConnection: keep-alive\r\n\r\nhi"));
    }

    #[test]
    fn head_and_bodyless_statuses_have_no_body() {
        let mut date = DateCache::new();
        let mut encoder = hello(true, true, true);
        let out = encoder
            .build(&[b"Hello"], true, Some(5), &mut date)
            .unwrap();
        // The length GET would have, but no body (RFC 9110 §9.3.2).
        assert!(text(&out).contains("\r\nContent-Length: 5\r\n"));
        assert!(text(&out).ends_with("\r\n\r\n"));
        assert_eq!(encoder.framing(), ResponseFraming::NoBody);
        assert_eq!(encoder.body_bytes(), 0);

        let mut encoder = Http1Encoder::new(true, false, Persistence::new(true, true));
        encoder.start(ResponseHead::new(b"304 Not Modified").unwrap());
        let out = encoder.build(&[b"x"], true, None, &mut date).unwrap();
        assert!(text(&out).ends_with("\r\n\r\n") && !text(&out).contains("chunked"));
    }

    #[test]
    fn build_before_start_is_refused() {
        let mut encoder = Http1Encoder::new(true, false, Persistence::new(true, true));
        let result = encoder.build(&[b"x"], true, None, &mut DateCache::new());
        assert_eq!(result.unwrap_err(), NotStarted);
    }

    #[test]
    fn app_date_is_not_doubled_and_an_unread_body_closes() {
        let mut head = ResponseHead::new(b"200 OK").unwrap();
        head.push_header(b"Date", b"Sun, 06 Nov 1994 08:49:37 GMT")
            .unwrap();
        let mut encoder = Http1Encoder::new(true, false, Persistence::new(true, true));
        encoder.start(head);
        encoder.request_body_unread();
        let out = encoder
            .build(&[], true, Some(0), &mut DateCache::new())
            .unwrap();
        assert_eq!(text(&out).matches("Date: ").count(), 1);
        assert!(text(&out).ends_with("\r\nConnection: close\r\n\r\n"));
        assert_eq!(out.persistence.end(), ConnectionEnd::Linger);
    }

    #[test]
    fn a_whole_response_is_one_head_for_a_body_sent_apart() {
        let mut date = DateCache::new();
        let mut encoder = hello(true, false, true);
        let out = encoder.build_whole(70_000, &mut date).unwrap();
        assert!(text(&out).contains("\r\nContent-Length: 70000\r\n"));
        assert!(text(&out).ends_with("\r\n\r\n"));
        assert_eq!(encoder.body_bytes(), 70_000);
        assert!(out.persistence.keep_alive() && out.mismatch.is_none());
        // The server's 500 in place of a failed application's response closes.
        let mut failed = hello(true, false, true);
        let out = failed.error(500, &mut date);
        assert!(text(&out).starts_with("HTTP/1.1 500 "));
        assert!(!out.persistence.keep_alive());
        assert!(failed.headers_sent());
    }

    #[test]
    fn bad_statuses_and_headers_are_refused() {
        for status in [&b"200"[..], b"200OK", b"020 OK", b"2x0 OK", b"200 O\r\nK"] {
            assert_eq!(ResponseHead::new(status).unwrap_err(), HeadError::BadStatus);
        }
        assert_eq!(parse_status(b"404 Not Found"), Some(404));
        let mut head = ResponseHead::new(b"200 OK").unwrap();
        let cases: [(&[u8], &[u8], HeadError); 8] = [
            (b"", b"x", HeadError::BadName),
            (b"X Bad", b"x", HeadError::BadName),
            (b"X:Bad", b"x", HeadError::BadName),
            (b"Transfer-Encoding", b"chunked", HeadError::HopByHop),
            (b"connection", b"close", HeadError::HopByHop),
            (b"X-Split", b"a\r\nInjected: yes", HeadError::ControlChar),
            (b"X-Nul", b"a\0b", HeadError::ControlChar),
            (b"Content-Length", b"+5", HeadError::BadContentLength),
        ];
        for (name, value, error) in cases {
            assert_eq!(head.push_header(name, value), Err(error));
        }
        head.push_header(b"Content-Length", b" 5 ").unwrap();
        assert_eq!(
            head.push_header(b"Content-Length", b"6"),
            Err(HeadError::ConflictingContentLength)
        );
        head.push_header(b"X-Tab", b"a\tb").unwrap();
    }

    #[test]
    fn bodyless_statuses() {
        for s in [100, 101, 199, 204, 304] {
            assert!(!status_allows_body(s), "{s}");
        }
        for s in [200, 201, 301, 404, 500] {
            assert!(status_allows_body(s), "{s}");
        }
    }
}
