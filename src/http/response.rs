//! Response encoding: status lines, the server's own error responses, chunk framing, and
//! the rules for which responses carry a body (RFC 9110 §6.4.1, RFC 9112 §6.3).

/// The interim response sent when the application first reads a body announced with
/// `Expect: 100-continue` (RFC 9110 §10.1.1).
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The end of a chunked body with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

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
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// Appends a complete error response from the server itself: a short plain-text body,
/// `Content-Length`, and `Connection: close` (the connection is closed after it).
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
