//! The request a gateway protocol (uwsgi, SCGI, FastCGI) carries: CGI variables set by a
//! front end such as nginx, read into the same spans an HTTP/1.1 head gives. The three
//! wire syntaxes (`uwsgi.rs`, `scgi.rs`, `fastcgi.rs`) only find the name/value pairs and
//! feed them to a [`CgiHeadBuilder`]; what the variables mean is decided here, once.
//!
//! - `REQUEST_METHOD` is required (a token); `REQUEST_URI` gives the target, split into
//!   path and query at the first `?` (without it, `PATH_INFO` and `QUERY_STRING`).
//!   `PATH_INFO` and `SCRIPT_NAME` are not passed on: the environ derives them from the
//!   target and `--root-path`, the same way for every protocol (nginx's fastcgi_params
//!   sets `SCRIPT_NAME` to the whole path, which a WSGI application would misread).
//! - `HTTP_*` variables are the request's header fields: their names are turned back into
//!   field names in place (`HTTP_USER_AGENT` -> `user-agent`, [`header_names_in_place`]) so
//!   the environ builds `HTTP_*` keys exactly as it does for HTTP/1.1.
//! - `CONTENT_LENGTH` frames the body (empty or absent: none); a repeated or non-decimal
//!   value is refused. `REMOTE_ADDR`/`REMOTE_PORT` name the client.
//! - Every other variable (`SERVER_NAME`, `SERVER_PORT`, `HTTPS`, `DOCUMENT_ROOT`, ...) is
//!   kept as it came, and the environ sets it verbatim.
//!
//! Bounded as an HTTP head is ([`Limits`]): the whole block by `max_head_size`, the target
//! by `max_request_line`, each variable by `max_field_size`, the header fields by
//! `max_headers`. No I/O, no Python.

#![forbid(unsafe_code)]

use std::fmt;

use crate::http::head::{is_tchar, HeaderSpan, Limits, Span, Version};

/// Why a gateway request was refused. The connection is closed without a response (the
/// front end reports its own 502): the input is not a request we can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgiError {
    /// The block is not well-formed for its protocol (bad length prefix, missing
    /// terminator, a pair cut short).
    Malformed,
    /// The connection ended inside the block.
    Truncated,
    /// A uwsgi packet with modifiers other than 0/0 (only WSGI requests are served).
    UnsupportedModifier,
    /// An SCGI block without `CONTENT_LENGTH` first or without `SCGI=1`.
    NotScgi,
    /// The block is larger than `--limit-request-head`, or a variable than its limit.
    TooLarge,
    /// More variables or header fields than the limits allow.
    TooManyVars,
    /// A variable name that is empty or holds a byte outside `[A-Za-z0-9_.-]`, or a value
    /// with a control character.
    InvalidVar,
    /// No `REQUEST_METHOD`, or one that is not a token.
    InvalidMethod,
    /// No `REQUEST_URI` (nor `PATH_INFO`), or one with a space or control character.
    InvalidTarget,
    /// `CONTENT_LENGTH` not decimal, or given twice.
    InvalidContentLength,
}

impl fmt::Display for CgiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgiError::Malformed => "malformed variable block",
            CgiError::Truncated => "the connection ended inside the variable block",
            CgiError::UnsupportedModifier => "uwsgi modifiers other than 0 are not supported",
            CgiError::NotScgi => "not SCGI: CONTENT_LENGTH must come first and SCGI be 1",
            CgiError::TooLarge => "variable block larger than --limit-request-head",
            CgiError::TooManyVars => "too many variables (--limit-request-fields)",
            CgiError::InvalidVar => "invalid variable name or value",
            CgiError::InvalidMethod => "missing or invalid REQUEST_METHOD",
            CgiError::InvalidTarget => "missing or invalid REQUEST_URI",
            CgiError::InvalidContentLength => "invalid or repeated CONTENT_LENGTH",
        })
    }
}

impl std::error::Error for CgiError {}

/// A gateway request's head, as spans of the buffer the variables were read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgiHead {
    pub method: Span,
    pub target: Span,
    pub path: Span,
    pub query: Span,
    pub version: Version,
    /// `HTTP_*` variables: `name` spans the part after `HTTP_`, to be turned into a field
    /// name by [`header_names_in_place`].
    pub headers: Vec<HeaderSpan>,
    /// The other variables, set verbatim in the environ.
    pub vars: Vec<HeaderSpan>,
    pub content_length: u64,
    pub remote_addr: Option<Span>,
    pub remote_port: Option<Span>,
    /// `HTTPS` is `on` (or `1`), or `REQUEST_SCHEME` is `https`.
    pub https: bool,
    pub is_head: bool,
}

/// Collects a gateway request's variables, checking each as it comes.
#[derive(Debug)]
pub struct CgiHeadBuilder {
    limits: Limits,
    method: Option<Span>,
    request_uri: Option<Span>,
    path_info: Option<Span>,
    query_string: Option<Span>,
    version: Version,
    headers: Vec<HeaderSpan>,
    vars: Vec<HeaderSpan>,
    content_length: Option<u64>,
    remote_addr: Option<Span>,
    remote_port: Option<Span>,
    https: bool,
}

/// Variables beyond the header fields a request may carry (nginx sends about 15).
const MAX_OTHER_VARS: usize = 64;

fn span(start: usize, end: usize) -> Span {
    Span {
        start: start as u32,
        end: end as u32,
    }
}

impl CgiHeadBuilder {
    pub fn new(limits: Limits) -> CgiHeadBuilder {
        CgiHeadBuilder {
            limits,
            method: None,
            request_uri: None,
            path_info: None,
            query_string: None,
            version: Version::Http11,
            headers: Vec::new(),
            vars: Vec::new(),
            content_length: None,
            remote_addr: None,
            remote_port: None,
            https: false,
        }
    }

    /// Takes one variable: `buf[name]` = `buf[value]` (byte ranges of `buf`). An empty
    /// `CONTENT_LENGTH` or `CONTENT_TYPE` is left out.
    pub fn push(
        &mut self,
        buf: &[u8],
        name: std::ops::Range<usize>,
        value: std::ops::Range<usize>,
    ) -> Result<(), CgiError> {
        let (n, v) = (&buf[name.clone()], &buf[value.clone()]);
        if n.is_empty()
            || !n
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
            || v.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Err(CgiError::InvalidVar);
        }
        if n.len() + v.len() > self.limits.max_field_size {
            return Err(CgiError::TooLarge);
        }
        let pair = HeaderSpan {
            name: span(name.start, name.end),
            value: span(value.start, value.end),
        };
        match n {
            b"REQUEST_METHOD" => {
                if v.is_empty() || !v.iter().all(|&b| is_tchar(b)) || self.method.is_some() {
                    return Err(CgiError::InvalidMethod);
                }
                self.method = Some(pair.value);
                return Ok(());
            }
            b"REQUEST_URI" => {
                if v.is_empty() || v.len() > self.limits.max_request_line || v.contains(&b' ') {
                    return Err(CgiError::InvalidTarget);
                }
                self.request_uri = Some(pair.value);
                return Ok(());
            }
            b"PATH_INFO" => {
                self.path_info = Some(pair.value);
                return Ok(());
            }
            b"QUERY_STRING" => {
                self.query_string = Some(pair.value);
                return Ok(());
            }
            b"SCRIPT_NAME" => return Ok(()),
            b"CONTENT_LENGTH" => {
                if self.content_length.is_some() {
                    return Err(CgiError::InvalidContentLength);
                }
                self.content_length = Some(parse_length(v)?);
                if v.is_empty() {
                    // nginx sends it empty for a request without a body: absent, as over
                    // HTTP (PEP 3333 allows either).
                    return Ok(());
                }
            }
            b"CONTENT_TYPE" if v.is_empty() => return Ok(()),
            b"SERVER_PROTOCOL" if v == b"HTTP/1.0" => self.version = Version::Http10,
            b"REMOTE_ADDR" => self.remote_addr = Some(pair.value),
            b"REMOTE_PORT" => self.remote_port = Some(pair.value),
            b"HTTPS" => self.https |= v.eq_ignore_ascii_case(b"on") || v == b"1",
            b"REQUEST_SCHEME" => self.https |= v.eq_ignore_ascii_case(b"https"),
            _ => {}
        }
        if n.len() > 5
            && n.starts_with(b"HTTP_")
            && n != b"HTTP_CONTENT_LENGTH"
            && n != b"HTTP_CONTENT_TYPE"
        {
            if self.headers.len() >= self.limits.max_headers {
                return Err(CgiError::TooManyVars);
            }
            self.headers.push(HeaderSpan {
                name: span(name.start + 5, name.end),
                value: pair.value,
            });
        } else if n.starts_with(b"HTTP_") {
            // HTTP_CONTENT_LENGTH and HTTP_CONTENT_TYPE would pose as the real ones.
        } else {
            if self.vars.len() >= MAX_OTHER_VARS {
                return Err(CgiError::TooManyVars);
            }
            self.vars.push(pair);
        }
        Ok(())
    }

    /// The head, once every variable was pushed.
    pub fn finish(self, buf: &[u8]) -> Result<CgiHead, CgiError> {
        let method = self.method.ok_or(CgiError::InvalidMethod)?;
        let (target, path, query) = match (self.request_uri, self.path_info) {
            (Some(uri), _) => {
                let raw = uri.get(buf);
                match memchr::memchr(b'?', raw) {
                    Some(i) => {
                        let q = uri.start as usize + i;
                        (
                            uri,
                            span(uri.start as usize, q),
                            span(q + 1, uri.end as usize),
                        )
                    }
                    None => (uri, uri, span(uri.end as usize, uri.end as usize)),
                }
            }
            (None, Some(path)) => {
                let query = self.query_string.unwrap_or(span(0, 0));
                (path, path, query)
            }
            (None, None) => return Err(CgiError::InvalidTarget),
        };
        Ok(CgiHead {
            is_head: method.get(buf) == b"HEAD",
            method,
            target,
            path,
            query,
            version: self.version,
            headers: self.headers,
            vars: self.vars,
            content_length: self.content_length.unwrap_or(0),
            remote_addr: self.remote_addr,
            remote_port: self.remote_port,
            https: self.https,
        })
    }
}

/// `CONTENT_LENGTH`: empty (nginx sends it so for a request without a body) or decimal.
fn parse_length(v: &[u8]) -> Result<u64, CgiError> {
    if v.is_empty() {
        return Ok(0);
    }
    if v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(CgiError::InvalidContentLength);
    }
    Ok(v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Turns the `HTTP_*` names the builder found (`USER_AGENT`) into field names
/// (`user-agent`) in place, so the environ maps them to `HTTP_USER_AGENT` as for HTTP/1.1.
pub fn header_names_in_place(buf: &mut [u8], headers: &[HeaderSpan]) {
    for h in headers {
        for b in &mut buf[h.name.start as usize..h.name.end as usize] {
            *b = if *b == b'_' {
                b'-'
            } else {
                b.to_ascii_lowercase()
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(pairs: &[(&str, &str)]) -> (Vec<u8>, Result<CgiHead, CgiError>) {
        let mut buf = Vec::new();
        let mut ranges = Vec::new();
        for (n, v) in pairs {
            let ns = buf.len();
            buf.extend_from_slice(n.as_bytes());
            let vs = buf.len();
            buf.extend_from_slice(v.as_bytes());
            ranges.push((ns..vs, vs..buf.len()));
        }
        let mut b = CgiHeadBuilder::new(Limits::default());
        for (n, v) in ranges {
            if let Err(e) = b.push(&buf, n, v) {
                return (buf, Err(e));
            }
        }
        let head = b.finish(&buf);
        (buf, head)
    }

    #[test]
    fn target_headers_and_vars() {
        let (mut buf, head) = build(&[
            ("REQUEST_METHOD", "HEAD"),
            ("REQUEST_URI", "/a%20b?x=1&y"),
            ("PATH_INFO", "/a b"),
            ("SCRIPT_NAME", "/a b"),
            ("CONTENT_LENGTH", ""),
            ("SERVER_PROTOCOL", "HTTP/1.0"),
            ("HTTP_USER_AGENT", "t"),
            ("HTTP_CONTENT_LENGTH", "5"),
            ("SERVER_NAME", "example.com"),
            ("HTTPS", "on"),
        ]);
        let head = head.unwrap();
        assert_eq!(head.path.get(&buf), b"/a%20b");
        assert_eq!(head.query.get(&buf), b"x=1&y");
        assert_eq!(head.target.get(&buf), b"/a%20b?x=1&y");
        assert!(head.is_head && head.https);
        assert_eq!(head.version, Version::Http10);
        assert_eq!(head.content_length, 0);
        header_names_in_place(&mut buf, &head.headers);
        assert_eq!(head.headers.len(), 1);
        assert_eq!(head.headers[0].name.get(&buf), b"user-agent");
        let names: Vec<&[u8]> = head.vars.iter().map(|v| v.name.get(&buf)).collect();
        assert_eq!(names, [&b"SERVER_PROTOCOL"[..], b"SERVER_NAME", b"HTTPS"]);
    }

    #[test]
    fn refusals() {
        let m = ("REQUEST_METHOD", "GET");
        let u = ("REQUEST_URI", "/");
        assert_eq!(build(&[u]).1, Err(CgiError::InvalidMethod));
        assert_eq!(build(&[m]).1, Err(CgiError::InvalidTarget));
        assert_eq!(
            build(&[m, u, ("CONTENT_LENGTH", "1"), ("CONTENT_LENGTH", "1")]).1,
            Err(CgiError::InvalidContentLength)
        );
        assert_eq!(
            build(&[m, u, ("CONTENT_LENGTH", "-1")]).1,
            Err(CgiError::InvalidContentLength)
        );
        assert_eq!(build(&[m, u, ("A B", "1")]).1, Err(CgiError::InvalidVar));
        assert_eq!(build(&[m, u, ("X", "a\nb")]).1, Err(CgiError::InvalidVar));
        assert_eq!(
            build(&[("REQUEST_METHOD", "G T"), u]).1,
            Err(CgiError::InvalidMethod)
        );
        let (buf, head) = build(&[m, ("PATH_INFO", "/p"), ("QUERY_STRING", "q")]);
        let head = head.unwrap();
        assert_eq!(
            (head.path.get(&buf), head.query.get(&buf)),
            (&b"/p"[..], &b"q"[..])
        );
    }
}
