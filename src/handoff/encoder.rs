//! [`ResponseEncoder`]: the application's response in the bytes of the wire protocol that
//! read the request. One variant per protocol; the Python side only calls the methods here.

use crate::http::date::DateCache;
use crate::http::response::{Encoded, Http1Encoder, NotStarted, ResponseHead};
use crate::http::{ParsedHead, Persistence, Version};

/// Encodes one response for the protocol its request came in on.
#[derive(Debug)]
pub enum ResponseEncoder {
    Http1(Http1Encoder),
}

impl ResponseEncoder {
    /// The encoder for an HTTP/1.x request; `server_allows_keep_alive`: keep-alive is
    /// enabled and the server is not stopping.
    pub fn for_http1(parsed: &ParsedHead, server_allows_keep_alive: bool) -> ResponseEncoder {
        ResponseEncoder::Http1(Http1Encoder::new(
            parsed.version == Version::Http11,
            parsed.is_head,
            Persistence::new(parsed.keep_alive, server_allows_keep_alive),
        ))
    }

    /// Whether the connection may persist, as far as the request and the server decide.
    pub fn may_persist(&self) -> bool {
        match self {
            ResponseEncoder::Http1(e) => e.persistence().keep_alive(),
        }
    }

    /// Sets (or, before the head is built, replaces) the status and headers.
    #[inline]
    pub fn start(&mut self, head: ResponseHead) {
        match self {
            ResponseEncoder::Http1(e) => e.start(head),
        }
    }

    /// The next message: the head when not yet built, then `parts` framed, then the end of
    /// the body when `end`. `known_total`: the whole body's length when the caller has it
    /// all at once.
    #[inline]
    pub fn build(
        &mut self,
        parts: &[&[u8]],
        end: bool,
        known_total: Option<u64>,
        date: &mut DateCache,
    ) -> Result<Encoded, NotStarted> {
        match self {
            ResponseEncoder::Http1(e) => e.build(parts, end, known_total, date),
        }
    }

    /// The head of a whole response whose `len` body bytes are written apart, and its end.
    #[inline]
    pub fn build_whole(&mut self, len: u64, date: &mut DateCache) -> Result<Encoded, NotStarted> {
        match self {
            ResponseEncoder::Http1(e) => e.build_whole(len, date),
        }
    }

    /// The server's own error response in place of one that failed before its head went out.
    pub fn error(&mut self, status: u16, date: &mut DateCache) -> Encoded {
        match self {
            ResponseEncoder::Http1(e) => e.error(status, date),
        }
    }

    /// The request body will not have been read to its end when the response ends.
    pub fn request_body_unread(&mut self) {
        match self {
            ResponseEncoder::Http1(e) => e.request_body_unread(),
        }
    }

    /// Counts body bytes sent by other means (a file sent with sendfile after the head).
    pub fn count_body_bytes(&mut self, n: u64) {
        match self {
            ResponseEncoder::Http1(e) => e.count_body_bytes(n),
        }
    }

    /// The status code, once `start` was called.
    #[inline]
    pub fn status(&self) -> Option<u16> {
        match self {
            ResponseEncoder::Http1(e) => e.status(),
        }
    }

    /// The response to a HEAD request carries no body.
    #[inline]
    pub fn is_head(&self) -> bool {
        match self {
            ResponseEncoder::Http1(e) => e.is_head(),
        }
    }

    /// The application's `Content-Length`, if it gave one.
    #[inline]
    pub fn content_length(&self) -> Option<u64> {
        match self {
            ResponseEncoder::Http1(e) => e.content_length(),
        }
    }

    #[inline]
    pub fn headers_sent(&self) -> bool {
        match self {
            ResponseEncoder::Http1(e) => e.headers_sent(),
        }
    }

    /// Body bytes sent so far.
    #[inline]
    pub fn body_bytes(&self) -> u64 {
        match self {
            ResponseEncoder::Http1(e) => e.body_bytes(),
        }
    }
}
