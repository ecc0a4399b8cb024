//! The request head: request line, header lines and the framing decision, parsed
//! in place from the read buffer into offsets ([`Span`]s), with the strict checks
//! RFC 9112 asks of a server that must not be desynchronised from a proxy.
//!
//! This module does no I/O and knows no Python. [`parse_head`] is a pure
//! function of the bytes received so far: it answers "need more" (`Ok(None)`),
//! a complete [`ParsedHead`], or an [`HttpError`]. It allocates nothing but the
//! headers `Vec` of a successful result.
//!
//! It works in three passes over the head:
//!
//! 1. A line scanner (ours, `memchr` for LF) that enforces every limit, CRLF
//!    line endings, the request-line grammar, obs-fold and the header count.
//!    It decides line by line, in the order the bytes arrived, and only from
//!    bytes it has seen, so a prefix of a request can only ever give "need
//!    more" or the very error the whole request gives. That is what makes the
//!    result independent of where a read happened to end, and what lets the
//!    limits fire on incomplete input (a slow or oversized client cannot make
//!    us buffer forever).
//! 2. httparse, once the head is complete, to tokenize the header lines (its
//!    SIMD scanning of names and values). It is lenient where pass 1 is not
//!    (bare LF, non-ASCII targets), so it never runs on anything pass 1 did not
//!    accept; it is strict where we want it (token names, no whitespace before
//!    the colon, no CTL in values).
//! 3. The message-level rules: `Host`, `Content-Length`, `Transfer-Encoding`,
//!    `Connection`, `Expect`, giving [`BodyFraming`] and keep-alive.

#![forbid(unsafe_code)]

use std::mem::MaybeUninit;

use crate::http::body::BodyFraming;
use crate::http::error::HttpError;

/// A byte range `start..end` in the buffer that was parsed.
///
/// Offsets are `u32`: a head is bounded by `Limits::max_head_size`, which
/// [`parse_head`] caps at `u32::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// Callers guarantee `start <= end <= u32::MAX` (offsets inside a head).
    fn new(start: usize, end: usize) -> Span {
        debug_assert!(start <= end && end <= u32::MAX as usize);
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The bytes this span covers in `buf`, which must be the buffer (or an
    /// extension of the buffer) that was parsed.
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start) as usize
    }
}

/// The protocol version of the request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    /// As the request line and `SERVER_PROTOCOL` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// One header line: its name and its value with surrounding OWS trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSpan {
    pub name: Span,
    pub value: Span,
}

/// Size bounds of a request head. Every one of them also applies to a head
/// that has not been completely received yet.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request line, without its CRLF (gunicorn `limit_request_line`).
    pub max_request_line: usize,
    /// Most header lines (gunicorn `limit_request_fields`).
    pub max_headers: usize,
    /// Longest header line, without its CRLF (gunicorn
    /// `limit_request_field_size`, nginx `large_client_header_buffers`).
    pub max_field_size: usize,
    /// Longest head, from the first byte (leading empty lines included)
    /// through the empty line that ends it. Capped at `u32::MAX`.
    pub max_head_size: usize,
}

impl Default for Limits {
    /// gunicorn's defaults for the line, count and field bounds; 32 KiB for the
    /// whole head (nginx's default 4 × 8 KiB header buffers).
    fn default() -> Self {
        Limits {
            max_request_line: 4094,
            max_headers: 100,
            max_field_size: 8190,
            max_head_size: 32768,
        }
    }
}

/// A complete, validated request head. Every [`Span`] indexes the buffer that
/// was given to [`parse_head`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedHead {
    /// Bytes consumed through the terminating empty line, including skipped
    /// leading empty lines. The body (if any) starts here.
    pub head_len: usize,
    pub method: Span,
    /// The raw request-target.
    pub target: Span,
    /// Raw, still percent-encoded path. Origin-form: up to `?`. Absolute-form:
    /// from the first `/` after the authority, empty if there is none (callers
    /// treat that as `/`). Asterisk-form: the `*`.
    pub path: Span,
    /// Raw query after `?`, without the `?`; empty when there is none.
    pub query: Span,
    pub version: Version,
    /// In the order received; repeated headers are separate entries.
    pub headers: Vec<HeaderSpan>,
    pub framing: BodyFraming,
    /// Whether the request allows a persistent connection. HTTP/1.1: unless
    /// `Connection` holds `close`. HTTP/1.0: only if `Connection` holds
    /// `keep-alive` (and not `close`). One fact of the decision in
    /// [`Persistence`](crate::http::Persistence).
    pub keep_alive: bool,
    /// HTTP/1.1 with `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The method is exactly `HEAD` (methods are case-sensitive, RFC 9110 §9.1).
    pub is_head: bool,
}

/// Empty lines before the request line that we skip (RFC 9112 §2.2: a server
/// SHOULD ignore at least one; some clients send a CRLF after a POST body).
/// More than this is garbage, not a request.
const MAX_LEADING_EMPTY_LINES: usize = 8;

/// httparse writes its tokens into a caller-provided array. Up to this many
/// headers it lives on the stack (4 KiB); only a server configured with
/// `max_headers` above this allocates it on the heap for larger requests.
const STACK_HEADERS: usize = 128;

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)`: the head is not complete yet and nothing seen so far breaks a
/// rule or a limit; call again with more bytes (the whole buffer, from its
/// start). A prefix of a request never yields an error other than the one the
/// complete request yields. Never allocates except the headers `Vec` on success
/// (and httparse's scratch array when `max_headers` was raised above
/// 128 and a request uses that many).
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<ParsedHead>, HttpError> {
    let max_head = limits.max_head_size.min(u32::MAX as usize);
    // A byte at index >= max_head can only prove the head too large, so the
    // scanner never looks further than one byte past that.
    let window = &buf[..buf.len().min(max_head.saturating_add(1))];

    // Pass 1: the line scanner.
    let mut pos = 0;
    let mut leading_empty_lines = 0;
    let mut request_line: Option<RequestLine> = None;
    let mut n_headers = 0;
    let (head_len, request_line) = loop {
        let line_start = pos;
        let lf = memchr::memchr(b'\n', &window[line_start..]).map(|i| line_start + i);
        let available_end = lf.map_or(window.len(), |i| i + 1);

        // The limits, decided as thresholds on byte positions: a line is too
        // long once it has a byte at `line_start + limit + 2` (limit bytes of
        // content, then CRLF), the head once it has a byte at `max_head`.
        // Whichever threshold comes first in the byte stream wins, so the
        // answer does not depend on how much of the stream has arrived.
        let (line_limit, line_error) = match request_line {
            None => (limits.max_request_line, HttpError::UriTooLong),
            Some(_) => (limits.max_field_size, HttpError::HeaderTooLarge),
        };
        let line_threshold = line_start.saturating_add(line_limit).saturating_add(2);
        if available_end > line_threshold.min(max_head) {
            return Err(if line_threshold <= max_head {
                line_error
            } else {
                HttpError::HeadTooLarge
            });
        }
        let Some(lf) = lf else {
            return Ok(None);
        };
        // RFC 9112 §2.2 lets a recipient accept a bare LF; we do not, because
        // a proxy in front of us that does not would see other lines than we
        // do (the CVE-2024-1135 family).
        if lf == line_start || window[lf - 1] != b'\r' {
            return Err(HttpError::BareLf);
        }
        let content_end = lf - 1;
        pos = lf + 1;
        let is_empty_line = content_end == line_start;

        match request_line {
            None if is_empty_line => {
                leading_empty_lines += 1;
                if leading_empty_lines > MAX_LEADING_EMPTY_LINES {
                    return Err(HttpError::MalformedRequestLine);
                }
            }
            None => request_line = Some(parse_request_line(buf, line_start, content_end)?),
            Some(line) if is_empty_line => break (pos, line),
            Some(_) => {
                n_headers += 1;
                if n_headers > limits.max_headers {
                    return Err(HttpError::TooManyHeaders);
                }
                // A line starting with whitespace continues the previous one
                // (obs-fold, RFC 9112 §5.2) or, as the first header line, is
                // whitespace before the headers (§2.2). Both are rejected: a
                // peer that unfolds would see a different header than we do.
                if matches!(window[line_start], b' ' | b'\t') {
                    return Err(HttpError::ObsFold);
                }
            }
        }
    };

    // Passes 2 and 3 on the complete head. httparse writes into `storage`,
    // sized by the header count pass 1 established.
    if n_headers <= STACK_HEADERS {
        let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        finish_head(buf, request_line, head_len, &mut storage[..n_headers]).map(Some)
    } else {
        let mut storage = Vec::with_capacity(n_headers);
        storage.resize_with(n_headers, MaybeUninit::uninit);
        finish_head(buf, request_line, head_len, &mut storage).map(Some)
    }
}

/// Pass 2 (httparse tokenizes the header lines of the complete head, request
/// line included and already validated) and pass 3 (the message-level rules,
/// applied to httparse's slices). The headers `Vec` is only allocated once
/// both passed. `storage` has exactly one slot per header line.
fn finish_head<'b>(
    buf: &'b [u8],
    request_line: RequestLine,
    head_len: usize,
    storage: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<ParsedHead, HttpError> {
    let head = &buf[request_line.start..head_len];
    let mut request = httparse::Request::new(&mut []);
    match request.parse_with_uninit_headers(head, storage) {
        Ok(httparse::Status::Complete(len)) => debug_assert_eq!(len, head.len()),
        Ok(httparse::Status::Partial) => {
            // Pass 1 saw the empty line that ends the head, so httparse must too.
            debug_assert!(false, "httparse found no end in a complete head");
            return Err(HttpError::MalformedRequestLine);
        }
        Err(error) => return Err(map_httparse_error(error)),
    }

    let message = MessageRules::check(
        request_line.version,
        request.headers.iter().map(|h| (h.name.as_bytes(), h.value)),
    )?;

    let base = buf.as_ptr() as usize;
    let mut headers = Vec::with_capacity(request.headers.len());
    for header in request.headers.iter() {
        let name = span_in(base, buf.len(), header.name.as_bytes())?;
        let raw_value = span_in(base, buf.len(), header.value)?;
        headers.push(HeaderSpan {
            name,
            value: trim_ows_span(buf, raw_value),
        });
    }
    Ok(ParsedHead {
        head_len,
        method: request_line.method,
        target: request_line.target,
        path: request_line.path,
        query: request_line.query,
        version: request_line.version,
        headers,
        framing: message.framing,
        keep_alive: message.keep_alive,
        expect_continue: message.expect_continue,
        is_head: request_line.method.get(buf) == b"HEAD",
    })
}

/// The validated parts of a request line.
#[derive(Debug, Clone, Copy)]
struct RequestLine {
    /// Offset of the request line (after skipped empty lines).
    start: usize,
    method: Span,
    target: Span,
    path: Span,
    query: Span,
    version: Version,
}

/// Validates `buf[start..end]` (a request line without its CRLF) against
/// RFC 9112 §3: `method SP request-target SP HTTP-version`, single spaces.
fn parse_request_line(buf: &[u8], start: usize, end: usize) -> Result<RequestLine, HttpError> {
    let line = &buf[start..end];
    let first_sp = memchr::memchr(b' ', line).ok_or(HttpError::MalformedRequestLine)?;
    let last_sp = memchr::memrchr(b' ', line).ok_or(HttpError::MalformedRequestLine)?;
    if first_sp == last_sp {
        // Only two parts: HTTP/0.9 style, or a missing version.
        return Err(HttpError::MalformedRequestLine);
    }

    let method = &line[..first_sp];
    if method.is_empty() {
        return Err(HttpError::MalformedRequestLine);
    }
    if !method.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::InvalidMethod);
    }

    let version = parse_version(&line[last_sp + 1..])?;

    // Splitting at the first and the last space leaves any other space in the
    // target. Next to a delimiter it is a doubled delimiter, which RFC 9112 §3
    // does not allow; inside the target it is an invalid target byte.
    let target = &line[first_sp + 1..last_sp];
    let target_start = start + first_sp + 1;
    if target.is_empty() {
        return Err(HttpError::InvalidTarget);
    }
    if target[0] == b' ' || target[target.len() - 1] == b' ' {
        return Err(HttpError::MalformedRequestLine);
    }
    // Every request-target form is visible ASCII. A '#' (fragment) is never
    // sent (RFC 9112 §3.2); CTLs, SP, DEL and non-ASCII bytes are not URI
    // characters. Other visible characters outside RFC 3986 (`|`, `{`, `"`...)
    // are sent unescaped by real clients and are passed through as-is;
    // percent-escapes are not validated here (decoding is the caller's).
    if !target.iter().all(|&b| is_target_byte(b)) {
        return Err(HttpError::InvalidTarget);
    }
    // CONNECT asks for a tunnel (authority-form); a WSGI server has none.
    if method == b"CONNECT" {
        return Err(HttpError::InvalidTarget);
    }

    let (path, query) = if target[0] == b'/' {
        split_path_query(target, target_start)
    } else if target == b"*" {
        // asterisk-form is only for a server-wide OPTIONS (RFC 9112 §3.2.4).
        if method != b"OPTIONS" {
            return Err(HttpError::InvalidTarget);
        }
        let star = Span::new(target_start, target_start + 1);
        (star, Span::new(target_start + 1, target_start + 1))
    } else if let Some(scheme_len) = absolute_form_scheme_len(target) {
        let after_scheme = &target[scheme_len..];
        let authority_len = after_scheme
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(after_scheme.len());
        let authority = &after_scheme[..authority_len];
        // http(s) URIs need a host (RFC 9110 §4.2.1); userinfo is refused as
        // RFC 9110 §4.2.4 advises (it is used to disguise the authority).
        if authority.is_empty() || !is_valid_authority(authority) {
            return Err(HttpError::InvalidTarget);
        }
        let rest_start = target_start + scheme_len + authority_len;
        split_path_query(&after_scheme[authority_len..], rest_start)
    } else {
        // authority-form without CONNECT, relative references, other schemes.
        return Err(HttpError::InvalidTarget);
    };

    Ok(RequestLine {
        start,
        method: Span::new(start, start + first_sp),
        target: Span::new(target_start, target_start + target.len()),
        path,
        query,
        version,
    })
}

/// `HTTP/1.0` or `HTTP/1.1`; another well-formed `HTTP/D.D` is a version we
/// do not serve (505); anything else is not a version at all (400). The
/// HTTP-name is case-sensitive (RFC 9112 §2.3).
fn parse_version(version: &[u8]) -> Result<Version, HttpError> {
    match version {
        b"HTTP/1.1" => Ok(Version::Http11),
        b"HTTP/1.0" => Ok(Version::Http10),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(HttpError::UnsupportedVersion)
        }
        _ => Err(HttpError::MalformedRequestLine),
    }
}

/// Splits `s` (starting at offset `offset` in the buffer) at its first `?`
/// into a path span and a query span (without the `?`).
fn split_path_query(s: &[u8], offset: usize) -> (Span, Span) {
    match memchr::memchr(b'?', s) {
        Some(q) => (
            Span::new(offset, offset + q),
            Span::new(offset + q + 1, offset + s.len()),
        ),
        None => (
            Span::new(offset, offset + s.len()),
            Span::new(offset + s.len(), offset + s.len()),
        ),
    }
}

/// Length of a leading `http://` or `https://` (scheme case-insensitive,
/// RFC 3986 §3.1), if there is one.
fn absolute_form_scheme_len(target: &[u8]) -> Option<usize> {
    if target.len() >= 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        Some(7)
    } else if target.len() >= 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        Some(8)
    } else {
        None
    }
}

/// The span of `part` inside the buffer starting at address `base` with length
/// `len`. httparse returns sub-slices of its input, so this always succeeds;
/// the checks keep a surprise from turning into a wrong span.
fn span_in(base: usize, len: usize, part: &[u8]) -> Result<Span, HttpError> {
    let start = (part.as_ptr() as usize).wrapping_sub(base);
    match start.checked_add(part.len()) {
        Some(end) if start <= len && end <= len => Ok(Span::new(start, end)),
        _ => {
            debug_assert!(false, "httparse returned a slice outside its input");
            Err(HttpError::InvalidHeaderValue)
        }
    }
}

/// After pass 1, httparse can only object to a header line: a request-line
/// error here would mean the two passes disagree about the grammar.
fn map_httparse_error(error: httparse::Error) -> HttpError {
    match error {
        // Not a token, whitespace before the colon, no colon, or a line that
        // starts with a bare CR.
        httparse::Error::HeaderName | httparse::Error::NewLine => HttpError::InvalidHeaderName,
        // A CTL other than HTAB, DEL, or a bare CR in the value.
        httparse::Error::HeaderValue => HttpError::InvalidHeaderValue,
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::Token | httparse::Error::Version | httparse::Error::Status => {
            HttpError::MalformedRequestLine
        }
    }
}

/// The outcome of the message-level rules (pass 3).
struct MessageRules {
    framing: BodyFraming,
    keep_alive: bool,
    expect_continue: bool,
}

impl MessageRules {
    /// Applies RFC 9112 §3.2 (Host), §6 (framing), §9.3 (persistence) and
    /// RFC 9110 §10.1.1 (Expect) to the tokenized headers.
    ///
    /// The facts are gathered in one pass and judged afterwards in a fixed
    /// order, so that the error does not depend on the order of the header
    /// lines: Host, then Content-Length, then Content-Length with
    /// Transfer-Encoding, then Transfer-Encoding on 1.0, and only then the
    /// codings themselves (see [`TransferCodings::framing`]).
    fn check<'a>(
        version: Version,
        headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<Self, HttpError> {
        let mut host_count = 0usize;
        let mut host_invalid = false;
        let mut content_length: Option<u64> = None;
        let mut content_length_invalid = false;
        let mut content_length_conflict = false;
        let mut codings = TransferCodings::default();
        let mut connection_close = false;
        let mut connection_keep_alive = false;
        let mut expect_continue = false;

        for (name, value) in headers {
            // httparse already trims OWS around values; this keeps the rules
            // right even if it did not.
            let value = trim_ows(value);
            match name.len() {
                4 if name.eq_ignore_ascii_case(b"host") => {
                    host_count += 1;
                    host_invalid |= !is_valid_authority(value);
                }
                6 if name.eq_ignore_ascii_case(b"expect") => {
                    expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
                }
                10 if name.eq_ignore_ascii_case(b"connection") => {
                    for token in value.split(|&b| b == b',').map(trim_ows) {
                        connection_close |= token.eq_ignore_ascii_case(b"close");
                        connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                    }
                }
                14 if name.eq_ignore_ascii_case(b"content-length") => {
                    match parse_content_length(value) {
                        None => content_length_invalid = true,
                        Some(n) => match content_length {
                            None => content_length = Some(n),
                            Some(first) => content_length_conflict |= first != n,
                        },
                    }
                }
                17 if name.eq_ignore_ascii_case(b"transfer-encoding") => codings.add_field(value),
                _ => {}
            }
        }

        if host_count > 1 {
            return Err(HttpError::DuplicateHost);
        }
        if host_count == 0 && version == Version::Http11 {
            return Err(HttpError::MissingHost);
        }
        if host_invalid {
            // RFC 9112 §3.2: "a Host header field with an invalid field value".
            return Err(HttpError::InvalidHeaderValue);
        }
        if content_length_invalid {
            return Err(HttpError::InvalidContentLength);
        }
        if content_length_conflict {
            return Err(HttpError::ConflictingContentLength);
        }

        let framing = if codings.present {
            if content_length.is_some() {
                // RFC 9112 §6.1: "ought to be handled as an error"; it is the
                // CL.TE / TE.CL smuggling pair, so we never pick one of the two.
                return Err(HttpError::ContentLengthWithTransferEncoding);
            }
            if version == Version::Http10 {
                // RFC 9112 §6.1: an HTTP/1.0 recipient cannot know chunked, so
                // a 1.0 message with Transfer-Encoding has faulty framing.
                return Err(HttpError::TransferEncodingOnHttp10);
            }
            codings.framing()?
        } else {
            match content_length {
                Some(n) => BodyFraming::Length(n),
                None => BodyFraming::None,
            }
        };

        let keep_alive = match version {
            Version::Http11 => !connection_close,
            Version::Http10 => connection_keep_alive && !connection_close,
        };
        Ok(MessageRules {
            framing,
            keep_alive,
            expect_continue: expect_continue && version == Version::Http11,
        })
    }
}

/// What the `Transfer-Encoding` lines of a request said, accumulated over all
/// of them (several lines form one comma-separated list, RFC 9110 §5.3).
#[derive(Default)]
struct TransferCodings {
    present: bool,
    n_codings: usize,
    n_chunked: usize,
    last_is_chunked: bool,
    any_unknown: bool,
}

impl TransferCodings {
    fn add_field(&mut self, value: &[u8]) {
        self.present = true;
        for coding in value.split(|&b| b == b',').map(trim_ows) {
            let is_chunked = coding.eq_ignore_ascii_case(b"chunked");
            // An empty element (or an empty field) counts as a coding we do
            // not know. RFC 9110 §5.6.1 asks list recipients to skip empty
            // elements, but this is the one header that decides framing, and
            // refusing what a peer might read differently is always safe.
            // Parameters (`;`) make a coding unknown too: chunked has none.
            let is_known = is_chunked
                || [
                    &b"gzip"[..],
                    b"x-gzip",
                    b"deflate",
                    b"compress",
                    b"x-compress",
                    b"identity",
                ]
                .iter()
                .any(|known| coding.eq_ignore_ascii_case(known));
            self.n_codings += 1;
            self.n_chunked += usize::from(is_chunked);
            self.last_is_chunked = is_chunked;
            self.any_unknown |= !is_known;
        }
    }

    /// The framing these codings give a request, RFC 9112 §6.1 and §6.3. A
    /// coding we do not know is reported first (501, §6.1), even when chunked
    /// is also not last: "xchunked" is an unknown coding, not a misplaced one.
    fn framing(&self) -> Result<BodyFraming, HttpError> {
        if self.any_unknown {
            return Err(HttpError::UnknownTransferCoding);
        }
        if !self.last_is_chunked || self.n_chunked > 1 {
            // §6.3 rule 4: the length cannot be determined: 400 and close.
            // Chunked twice is §6.1's "MUST NOT apply chunked more than once".
            return Err(HttpError::TransferEncodingNotChunkedLast);
        }
        if self.n_codings > 1 {
            // "gzip, chunked": well-formed, but we do not decode content
            // codings on the way in, so it is not implemented (501).
            return Err(HttpError::UnknownTransferCoding);
        }
        Ok(BodyFraming::Chunked)
    }
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6): no sign, no spaces, no list,
/// and it must fit in a u64.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn trim_ows_span(buf: &[u8], span: Span) -> Span {
    let mut start = span.start as usize;
    let mut end = span.end as usize;
    while start < end && matches!(buf[start], b' ' | b'\t') {
        start += 1;
    }
    while end > start && matches!(buf[end - 1], b' ' | b'\t') {
        end -= 1;
    }
    Span::new(start, end)
}

/// A 256-entry membership table, built at compile time.
const fn byte_table(ranges: &[(u8, u8)], singles: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut i = 0;
    while i < ranges.len() {
        let mut b = ranges[i].0;
        while b <= ranges[i].1 {
            table[b as usize] = true;
            b += 1;
        }
        i += 1;
    }
    let mut i = 0;
    while i < singles.len() {
        table[singles[i] as usize] = true;
        i += 1;
    }
    table
}

/// `tchar` of RFC 9110 §5.6.2.
static TCHAR: [bool; 256] = byte_table(
    &[(b'a', b'z'), (b'A', b'Z'), (b'0', b'9')],
    b"!#$%&'*+-.^_`|~",
);

/// Bytes allowed in a request-target: visible ASCII except `#`.
static TARGET_BYTE: [bool; 256] = {
    let mut table = byte_table(&[(0x21, 0x7e)], b"");
    table[b'#' as usize] = false;
    table
};

/// Bytes of `uri-host [":" port]` (RFC 3986 §3.2.2: unreserved, pct-encoded,
/// sub-delims, and the brackets of an IP literal). No `@`, `/`, `\`, space.
static AUTHORITY_BYTE: [bool; 256] = byte_table(
    &[(b'a', b'z'), (b'A', b'Z'), (b'0', b'9')],
    b"-._~!$&'()*+,;=:[]%",
);

pub(crate) fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

fn is_target_byte(b: u8) -> bool {
    TARGET_BYTE[b as usize]
}

/// A Host value or the authority of an absolute-form target. An empty Host is
/// valid (RFC 9112 §3.2: sent when the target URI has no authority).
fn is_valid_authority(value: &[u8]) -> bool {
    value.iter().all(|&b| AUTHORITY_BYTE[b as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(buf: &[u8]) -> Result<Option<ParsedHead>, HttpError> {
        parse_head(buf, &Limits::default())
    }

    #[test]
    fn minimal_get() {
        let buf = b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\nrest";
        let head = parse(buf).unwrap().unwrap();
        assert_eq!(head.head_len, buf.len() - 4);
        assert_eq!(head.method.get(buf), b"GET");
        assert_eq!(head.target.get(buf), b"/a?b=c");
        assert_eq!(head.path.get(buf), b"/a");
        assert_eq!(head.query.get(buf), b"b=c");
        assert_eq!(head.version, Version::Http11);
        assert_eq!(head.headers.len(), 1);
        assert_eq!(head.headers[0].name.get(buf), b"Host");
        assert_eq!(head.headers[0].value.get(buf), b"x");
        assert_eq!(head.framing, BodyFraming::None);
        assert!(head.keep_alive);
        assert!(!head.is_head);
    }

    #[test]
    fn every_prefix_of_a_request_needs_more() {
        let buf = b"\r\nPOST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n";
        for k in 0..buf.len() {
            assert_eq!(parse(&buf[..k]), Ok(None), "prefix {k}");
        }
        let head = parse(buf).unwrap().unwrap();
        assert_eq!(head.framing, BodyFraming::Length(3));
        assert_eq!(head.head_len, buf.len());
    }

    #[test]
    fn limits_fire_on_incomplete_input() {
        let limits = Limits {
            max_request_line: 10,
            max_headers: 2,
            max_field_size: 10,
            max_head_size: 64,
        };
        assert_eq!(
            parse_head(b"GET /0123456789", &limits),
            Err(HttpError::UriTooLong)
        );
        // Exactly the limit, then CR: still undecided.
        assert_eq!(parse_head(b"GET /12345\r", &limits), Ok(None));
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\n", &limits),
            Err(HttpError::UriTooLong)
        );
        let limits = Limits {
            max_request_line: 20,
            ..limits
        };
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nX-Long: 12345", &limits),
            Err(HttpError::HeaderTooLarge)
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n", &limits),
            Err(HttpError::TooManyHeaders)
        );
        let limits = Limits {
            max_head_size: 24,
            ..limits
        };
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nA: 123456", &limits),
            Err(HttpError::HeadTooLarge)
        );
    }

    #[test]
    fn head_exactly_at_the_limit_is_accepted() {
        let buf = b"GET / HTTP/1.0\r\n\r\n";
        let limits = Limits {
            max_head_size: buf.len(),
            ..Limits::default()
        };
        assert!(parse_head(buf, &limits).unwrap().is_some());
        let limits = Limits {
            max_head_size: buf.len() - 1,
            ..Limits::default()
        };
        assert_eq!(parse_head(buf, &limits), Err(HttpError::HeadTooLarge));
    }

    #[test]
    fn more_headers_than_the_stack_storage() {
        let mut buf = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..200 {
            buf.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        let limits = Limits {
            max_headers: 300,
            ..Limits::default()
        };
        let head = parse_head(&buf, &limits).unwrap().unwrap();
        assert_eq!(head.headers.len(), 201);
        assert_eq!(head.headers[200].value.get(&buf), b"199");
    }

    #[test]
    fn content_length_grammar() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"0042"), Some(42));
        assert_eq!(
            parse_content_length(b"18446744073709551615"),
            Some(u64::MAX)
        );
        assert_eq!(parse_content_length(b"18446744073709551616"), None);
        for bad in [&b""[..], b"+1", b"-1", b"1 2", b"0x1", b"1,1", b"1.0"] {
            assert_eq!(parse_content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn version_classes() {
        assert_eq!(parse_version(b"HTTP/1.1"), Ok(Version::Http11));
        assert_eq!(
            parse_version(b"HTTP/2.0"),
            Err(HttpError::UnsupportedVersion)
        );
        assert_eq!(
            parse_version(b"HTTP/0.9"),
            Err(HttpError::UnsupportedVersion)
        );
        assert_eq!(
            parse_version(b"HTTP/1.1 "),
            Err(HttpError::MalformedRequestLine)
        );
        assert_eq!(
            parse_version(b"HTTP/11"),
            Err(HttpError::MalformedRequestLine)
        );
        assert_eq!(
            parse_version(b"http/1.1"),
            Err(HttpError::MalformedRequestLine)
        );
    }

    #[test]
    fn trims_ows() {
        assert_eq!(trim_ows(b" \t a b \t"), b"a b");
        assert_eq!(trim_ows(b" \t "), b"");
    }
}
