//! [`RequestHead`]: a request as any wire protocol delivers it to the application side.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::http::{HeaderSpan, ParsedHead, Span, Version};

/// The request line's parts, the header fields and the addresses of one request, as byte
/// ranges of one frozen buffer: nothing is copied between the socket and the environ
/// strings. Built by a wire protocol on the I/O thread (HTTP/1.1: `server::conn`, from a
/// `ParsedHead`), read by `py::environ`.
pub struct RequestHead {
    /// The bytes every span indexes (for HTTP/1.1, the head frozen out of the read buffer).
    pub bytes: Bytes,
    pub method: Span,
    /// The request target as sent, for logs.
    pub target: Span,
    /// The path, still percent-encoded; empty means `/`.
    pub path: Span,
    /// The query without its `?`; empty when there is none.
    pub query: Span,
    pub version: Version,
    /// HTTP header fields in the order received (repeated fields are separate entries).
    pub headers: Vec<HeaderSpan>,
    /// Environ variables a front end set itself (uwsgi, FastCGI and SCGI carry CGI
    /// variables such as `HTTPS` or `DOCUMENT_ROOT`); they are set verbatim after, and so
    /// over, what the fields above give. Empty for HTTP.
    pub vars: Vec<HeaderSpan>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

impl RequestHead {
    /// An HTTP/1.1 request head: `bytes` is the buffer `parsed` was parsed from.
    pub fn from_http1(
        bytes: Bytes,
        parsed: ParsedHead,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> RequestHead {
        RequestHead {
            bytes,
            method: parsed.method,
            target: parsed.target,
            path: parsed.path,
            query: parsed.query,
            version: parsed.version,
            headers: parsed.headers,
            vars: Vec::new(),
            peer,
            local,
        }
    }

    /// The bytes of `span`.
    #[inline]
    pub fn get(&self, span: Span) -> &[u8] {
        span.get(&self.bytes)
    }
}
