//! The one error type of the HTTP/1.1 request core, and the one place that maps
//! an error to the status code of the response that reports it.
//!
//! `HttpError` is a small `Copy` enum: building one never allocates, and the
//! hot path can return it by value. This module does no I/O and knows no Python.
//! Every error here ends the connection after the error response (RFC 9112
//! §11.2: once framing is in doubt, the rest of the stream cannot be trusted).

#![forbid(unsafe_code)]

use std::fmt;

/// Why a request was refused. Each variant names one rule of RFC 9112 / RFC 9110
/// that the request broke; [`HttpError::status`] says how to answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// The request line is not `method SP request-target SP HTTP-version`
    /// (missing parts, doubled spaces, a version that is not `HTTP/D.D`).
    MalformedRequestLine,
    /// The method is not a token (RFC 9110 §9.1).
    InvalidMethod,
    /// The request-target is not origin-form, absolute-form (http/https) or
    /// `*` with OPTIONS, or holds a byte no request-target may hold.
    InvalidTarget,
    /// The request line is longer than `Limits::max_request_line`.
    UriTooLong,
    /// A well-formed `HTTP/D.D` other than HTTP/1.0 and HTTP/1.1.
    UnsupportedVersion,
    /// A line of the head ends in LF without CR (RFC 9112 §2.2: we do not
    /// accept bare LF, so that we never split lines where a proxy does not).
    BareLf,
    /// A header line starts with SP or HTAB: obsolete line folding
    /// (RFC 9112 §5.2), or whitespace before the first header (§2.2).
    ObsFold,
    /// A header name that is not a token, is empty, or is followed by
    /// whitespace before the colon (RFC 9112 §5.1).
    InvalidHeaderName,
    /// A header value holding a CTL other than HTAB, DEL or a bare CR,
    /// or a `Host` value that is not a valid authority.
    InvalidHeaderValue,
    /// More header lines than `Limits::max_headers`.
    TooManyHeaders,
    /// One header line longer than `Limits::max_field_size`.
    HeaderTooLarge,
    /// The whole head longer than `Limits::max_head_size`.
    HeadTooLarge,
    /// An HTTP/1.1 request without `Host` (RFC 9112 §3.2).
    MissingHost,
    /// More than one `Host` header line (RFC 9112 §3.2).
    DuplicateHost,
    /// Both `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.1, §11.2).
    ContentLengthWithTransferEncoding,
    /// A `Content-Length` that is not `1*DIGIT`, or does not fit in a u64.
    InvalidContentLength,
    /// Several `Content-Length` lines with different values (RFC 9110 §8.6).
    ConflictingContentLength,
    /// `chunked` is not the last transfer coding, or appears twice
    /// (RFC 9112 §6.3 rule 4: 400 and close).
    TransferEncodingNotChunkedLast,
    /// A transfer coding this server does not implement (RFC 9112 §6.1: 501).
    UnknownTransferCoding,
    /// `Transfer-Encoding` on an HTTP/1.0 request (RFC 9112 §6.1: the
    /// framing must be treated as faulty).
    TransferEncodingOnHttp10,
    /// A chunk-size line that is not `1*HEXDIG [chunk-ext]` (RFC 9112 §7.1).
    InvalidChunkSize,
    /// A chunk size with more significant hex digits than a u64 holds.
    ChunkSizeOverflow,
    /// Chunk framing not followed by exactly CRLF (after the size line,
    /// after the data, in the trailer), including a bare LF anywhere.
    InvalidChunkTerminator,
    /// The trailer section of a chunked body is larger than we keep reading.
    TrailerTooLarge,
    /// The body is larger than the configured maximum.
    BodyTooLarge,
    /// A FastCGI record other than the request's STDIN while its body was read (an
    /// ABORT_REQUEST, a second request: nginx sends neither).
    InvalidRecord,
}

impl HttpError {
    /// The status code of the response that reports this error.
    ///
    /// This is the only place that maps an error to a status: the match is
    /// exhaustive, so a new variant cannot be added without choosing one.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::MalformedRequestLine
            | HttpError::InvalidMethod
            | HttpError::InvalidTarget
            | HttpError::BareLf
            | HttpError::ObsFold
            | HttpError::InvalidHeaderName
            | HttpError::InvalidHeaderValue
            | HttpError::MissingHost
            | HttpError::DuplicateHost
            | HttpError::ContentLengthWithTransferEncoding
            | HttpError::InvalidContentLength
            | HttpError::ConflictingContentLength
            | HttpError::TransferEncodingNotChunkedLast
            | HttpError::TransferEncodingOnHttp10
            | HttpError::InvalidChunkSize
            | HttpError::ChunkSizeOverflow
            | HttpError::InvalidChunkTerminator
            | HttpError::TrailerTooLarge
            | HttpError::InvalidRecord => 400,
            HttpError::BodyTooLarge => 413,
            HttpError::UriTooLong => 414,
            HttpError::TooManyHeaders | HttpError::HeaderTooLarge | HttpError::HeadTooLarge => 431,
            HttpError::UnknownTransferCoding => 501,
            HttpError::UnsupportedVersion => 505,
        }
    }

    /// A short human-readable reason, fit for a log line or an error body.
    pub fn reason(&self) -> &'static str {
        match self {
            HttpError::MalformedRequestLine => "malformed request line",
            HttpError::InvalidMethod => "invalid method",
            HttpError::InvalidTarget => "invalid request target",
            HttpError::UriTooLong => "request line too long",
            HttpError::UnsupportedVersion => "unsupported HTTP version",
            HttpError::BareLf => "bare LF in request head",
            HttpError::ObsFold => "obsolete line folding in header",
            HttpError::InvalidHeaderName => "invalid header name",
            HttpError::InvalidHeaderValue => "invalid header value",
            HttpError::TooManyHeaders => "too many headers",
            HttpError::HeaderTooLarge => "header line too large",
            HttpError::HeadTooLarge => "request head too large",
            HttpError::MissingHost => "missing Host header",
            HttpError::DuplicateHost => "more than one Host header",
            HttpError::ContentLengthWithTransferEncoding => {
                "both Content-Length and Transfer-Encoding"
            }
            HttpError::InvalidContentLength => "invalid Content-Length",
            HttpError::ConflictingContentLength => "conflicting Content-Length values",
            HttpError::TransferEncodingNotChunkedLast => "chunked is not the final transfer coding",
            HttpError::UnknownTransferCoding => "unsupported transfer coding",
            HttpError::TransferEncodingOnHttp10 => "Transfer-Encoding on an HTTP/1.0 request",
            HttpError::InvalidChunkSize => "invalid chunk size line",
            HttpError::ChunkSizeOverflow => "chunk size too large",
            HttpError::InvalidChunkTerminator => "chunk not terminated by CRLF",
            HttpError::TrailerTooLarge => "chunked trailer too large",
            HttpError::BodyTooLarge => "request body too large",
            HttpError::InvalidRecord => "FastCGI record other than STDIN in the request body",
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for HttpError {}

#[cfg(test)]
mod tests {
    use super::HttpError;

    #[test]
    fn limit_errors_have_their_own_statuses() {
        assert_eq!(HttpError::UriTooLong.status(), 414);
        assert_eq!(HttpError::HeadTooLarge.status(), 431);
        assert_eq!(HttpError::BodyTooLarge.status(), 413);
        assert_eq!(HttpError::UnknownTransferCoding.status(), 501);
        assert_eq!(HttpError::UnsupportedVersion.status(), 505);
        assert_eq!(HttpError::BareLf.status(), 400);
    }

    #[test]
    fn display_is_the_reason() {
        assert_eq!(HttpError::BareLf.to_string(), "bare LF in request head");
    }
}
