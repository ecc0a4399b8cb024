//! The uwsgi packet nginx's `uwsgi_pass` sends (uWSGI's "uwsgi protocol"): a 4-byte
//! header (`modifier1` 0, the vars block's size as a little-endian u16, `modifier2` 0),
//! then the vars block, pairs of u16-LE length-prefixed names and values; the request body
//! (`CONTENT_LENGTH` bytes) follows. What the variables mean is `cgi.rs`'s.
//!
//! Pure: bytes in, "need more" or the parsed head out, at any split of the input.

#![forbid(unsafe_code)]

use crate::http::cgi::{CgiError, CgiHead, CgiHeadBuilder};
use crate::http::head::Limits;

/// Size of the packet header.
const HEADER: usize = 4;

/// Parses a uwsgi request head from the start of `buf`: `Ok(None)` until the whole vars
/// block is here, then the head and the bytes it took (the body follows).
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(CgiHead, usize)>, CgiError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != 0 {
        return Err(CgiError::UnsupportedModifier);
    }
    if buf.len() < 3 {
        return Ok(None);
    }
    let size = u16::from_le_bytes([buf[1], buf[2]]) as usize;
    if HEADER + size > limits.max_head_size {
        return Err(CgiError::TooLarge);
    }
    if buf.len() < HEADER {
        return Ok(None);
    }
    if buf[3] != 0 {
        return Err(CgiError::UnsupportedModifier);
    }
    let end = HEADER + size;
    if buf.len() < end {
        return Ok(None);
    }
    let mut builder = CgiHeadBuilder::new(*limits);
    let mut at = HEADER;
    while at < end {
        let name = field(buf, &mut at, end)?;
        let value = field(buf, &mut at, end)?;
        builder.push(buf, name, value)?;
    }
    Ok(Some((builder.finish(buf)?, end)))
}

/// One length-prefixed string of the block ending at `end`.
fn field(buf: &[u8], at: &mut usize, end: usize) -> Result<std::ops::Range<usize>, CgiError> {
    if *at + 2 > end {
        return Err(CgiError::Malformed);
    }
    let len = u16::from_le_bytes([buf[*at], buf[*at + 1]]) as usize;
    let start = *at + 2;
    if start + len > end {
        return Err(CgiError::Malformed);
    }
    *at = start + len;
    Ok(start..start + len)
}

/// A uwsgi packet carrying `vars` (for tests and benches).
pub fn encode(vars: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut block = Vec::new();
    for (n, v) in vars {
        block.extend_from_slice(&(n.len() as u16).to_le_bytes());
        block.extend_from_slice(n);
        block.extend_from_slice(&(v.len() as u16).to_le_bytes());
        block.extend_from_slice(v);
    }
    let mut out = vec![0];
    out.extend_from_slice(&(block.len() as u16).to_le_bytes());
    out.push(0);
    out.extend_from_slice(&block);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARS: &[(&[u8], &[u8])] = &[
        (b"QUERY_STRING", b"a=1"),
        (b"REQUEST_METHOD", b"POST"),
        (b"CONTENT_TYPE", b"text/plain"),
        (b"CONTENT_LENGTH", b"5"),
        (b"REQUEST_URI", b"/p%2Fq?a=1"),
        (b"PATH_INFO", b"/p/q"),
        (b"SERVER_PROTOCOL", b"HTTP/1.1"),
        (b"REMOTE_ADDR", b"10.0.0.1"),
        (b"REMOTE_PORT", b"5555"),
        (b"SERVER_NAME", b"example.com"),
        (b"SERVER_PORT", b"80"),
        (b"HTTP_HOST", b"example.com"),
        (b"HTTP_X_A", b""),
    ];

    #[test]
    fn whole_and_split_at_every_byte() {
        let mut packet = encode(VARS);
        let head_len = packet.len();
        packet.extend_from_slice(b"hello");
        let limits = Limits::default();
        let (head, used) = parse(&packet, &limits).unwrap().unwrap();
        assert_eq!(used, head_len);
        assert_eq!(head.content_length, 5);
        assert_eq!(head.method.get(&packet), b"POST");
        assert_eq!(head.path.get(&packet), b"/p%2Fq");
        assert_eq!(head.headers.len(), 2);
        assert_eq!(head.remote_addr.unwrap().get(&packet), b"10.0.0.1");
        for cut in 0..head_len {
            assert_eq!(parse(&packet[..cut], &limits), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn malformed_truncated_and_oversized() {
        let limits = Limits::default();
        let mut bad = encode(VARS);
        bad[0] = 5;
        assert_eq!(parse(&bad, &limits), Err(CgiError::UnsupportedModifier));
        let mut bad = encode(VARS);
        bad[3] = 1;
        assert_eq!(parse(&bad, &limits), Err(CgiError::UnsupportedModifier));
        // A block whose last pair runs past its end.
        let mut bad = encode(VARS);
        let n = bad.len() as u16 - 4 - 1;
        bad[1..3].copy_from_slice(&n.to_le_bytes());
        assert_eq!(parse(&bad, &limits), Err(CgiError::Malformed));
        // Larger than --limit-request-head: refused from its header alone.
        let small = Limits {
            max_head_size: 64,
            ..Limits::default()
        };
        let big = encode(VARS);
        assert_eq!(parse(&big[..3], &small), Err(CgiError::TooLarge));
        // No method.
        let packet = encode(&[(b"REQUEST_URI", b"/")]);
        assert_eq!(parse(&packet, &limits), Err(CgiError::InvalidMethod));
    }
}
