//! [`ResponseEncoder`]: the application's response in the bytes of the wire protocol that
//! read the request. One variant per protocol; the Python side only calls the methods here.

use crate::http::date::DateCache;
use crate::http::fastcgi::FastCgiEncoder;
use crate::http::response::{Encoded, Http1Encoder, NotStarted, ResponseHead};
use crate::http::{ParsedHead, Persistence, Version};

/// Encodes one response for the protocol its request came in on.
#[derive(Debug)]
pub enum ResponseEncoder {
    /// HTTP/1.x, and uwsgi and SCGI, whose front ends read an HTTP/1 response.
    Http1(Http1Encoder),
    /// A FastCGI responder's STDOUT records.
    FastCgi(FastCgiEncoder),
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

    /// The encoder for a uwsgi or SCGI request: one request per connection, so the
    /// response is HTTP/1.0-framed (`Content-Length`, else the close ends it) under an
    /// HTTP/1.1 status line, which nginx's uwsgi and scgi modules read.
    pub fn for_gateway(is_head: bool) -> ResponseEncoder {
        ResponseEncoder::Http1(Http1Encoder::new(
            false,
            is_head,
            Persistence::new(false, false),
        ))
    }

    /// The encoder for a FastCGI request: `keep_conn` is its BEGIN_REQUEST's flag.
    pub fn for_fastcgi(
        request_id: u16,
        is_head: bool,
        keep_conn: bool,
        server_allows_keep_alive: bool,
    ) -> ResponseEncoder {
        ResponseEncoder::FastCgi(FastCgiEncoder::new(
            request_id,
            is_head,
            Persistence::new(keep_conn, server_allows_keep_alive),
        ))
    }

    /// The FastCGI request id, for a body the connection writes apart (and wraps).
    pub fn fastcgi_request_id(&self) -> Option<u16> {
        match self {
            ResponseEncoder::Http1(_) => None,
            ResponseEncoder::FastCgi(e) => Some(e.request_id()),
        }
    }

    fn http1(&self) -> &Http1Encoder {
        match self {
            ResponseEncoder::Http1(e) => e,
            ResponseEncoder::FastCgi(e) => e.inner(),
        }
    }

    fn http1_mut(&mut self) -> &mut Http1Encoder {
        match self {
            ResponseEncoder::Http1(e) => e,
            ResponseEncoder::FastCgi(e) => e.inner_mut(),
        }
    }

    /// Whether the connection may persist, as far as the request and the server decide.
    pub fn may_persist(&self) -> bool {
        self.http1().persistence().keep_alive()
    }

    /// Sets (or, before the head is built, replaces) the status and headers.
    #[inline]
    pub fn start(&mut self, head: ResponseHead) {
        match self {
            ResponseEncoder::Http1(e) => e.start(head),
            ResponseEncoder::FastCgi(e) => e.start(head),
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
            ResponseEncoder::FastCgi(e) => e.build(parts, end, known_total, date),
        }
    }

    /// The head of a whole response whose `len` body bytes are written apart, and its end.
    /// (FastCGI: the head only; the connection wraps the body and ends the response.)
    #[inline]
    pub fn build_whole(&mut self, len: u64, date: &mut DateCache) -> Result<Encoded, NotStarted> {
        match self {
            ResponseEncoder::Http1(e) => e.build_whole(len, date),
            ResponseEncoder::FastCgi(e) => e.build_whole(len, date),
        }
    }

    /// The server's own error response in place of one that failed before its head went out.
    pub fn error(&mut self, status: u16, date: &mut DateCache) -> Encoded {
        match self {
            ResponseEncoder::Http1(e) => e.error(status, date),
            ResponseEncoder::FastCgi(e) => e.error(status, date),
        }
    }

    /// The request body will not have been read to its end when the response ends.
    pub fn request_body_unread(&mut self) {
        self.http1_mut().request_body_unread()
    }

    /// Counts body bytes sent by other means (a file sent with sendfile after the head).
    pub fn count_body_bytes(&mut self, n: u64) {
        self.http1_mut().count_body_bytes(n)
    }

    /// The status code, once `start` was called.
    #[inline]
    pub fn status(&self) -> Option<u16> {
        self.http1().status()
    }

    /// The response to a HEAD request carries no body.
    #[inline]
    pub fn is_head(&self) -> bool {
        self.http1().is_head()
    }

    /// The application's `Content-Length`, if it gave one.
    #[inline]
    pub fn content_length(&self) -> Option<u64> {
        self.http1().content_length()
    }

    #[inline]
    pub fn headers_sent(&self) -> bool {
        self.http1().headers_sent()
    }

    /// Body bytes sent so far.
    #[inline]
    pub fn body_bytes(&self) -> u64 {
        self.http1().body_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_responses_end_with_their_length_or_the_close() {
        let mut date = DateCache::new();
        let mut e = ResponseEncoder::for_gateway(false);
        assert!(!e.may_persist());
        e.start(ResponseHead::new(b"200 OK").unwrap());
        let out = e.build(&[b"x"], false, None, &mut date).unwrap();
        let text = String::from_utf8(out.bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(!text.contains("Transfer-Encoding"), "{text}");
        assert!(text.ends_with("\r\n\r\nx"), "{text}");
        assert_eq!(e.fastcgi_request_id(), None);
        let f = ResponseEncoder::for_fastcgi(9, false, true, true);
        assert!(f.may_persist());
        assert_eq!(f.fastcgi_request_id(), Some(9));
    }
}
