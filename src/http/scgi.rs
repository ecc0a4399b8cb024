//! The SCGI request nginx's `scgi_pass` sends (scgi.org's protocol): a netstring
//! (`<length>:` then the block then `,`) whose block is NUL-terminated names and values,
//! `CONTENT_LENGTH` first and `SCGI` = `1` among them; the body (`CONTENT_LENGTH` bytes)
//! follows. What the variables mean is `cgi.rs`'s.
//!
//! Pure: bytes in, "need more" or the parsed head out, at any split of the input.

#![forbid(unsafe_code)]

use crate::http::cgi::{CgiError, CgiHead, CgiHeadBuilder};
use crate::http::head::Limits;

/// Parses an SCGI request head from the start of `buf`: `Ok(None)` until the whole
/// netstring is here, then the head and the bytes it took (the body follows).
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(CgiHead, usize)>, CgiError> {
    // The length: decimal digits without leading zeros (a netstring's), then ':'.
    let mut len: usize = 0;
    let mut colon = None;
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b':' if i > 0 => {
                colon = Some(i);
                break;
            }
            b'0'..=b'9' if !(i == 1 && buf[0] == b'0') => {
                len = len * 10 + (b - b'0') as usize;
                if len + i + 2 > limits.max_head_size {
                    return Err(CgiError::TooLarge);
                }
            }
            _ => return Err(CgiError::Malformed),
        }
    }
    let Some(colon) = colon else {
        return Ok(None);
    };
    let start = colon + 1;
    let end = start + len;
    if buf.len() <= end {
        return Ok(None);
    }
    if buf[end] != b',' || len == 0 || buf[end - 1] != 0 {
        return Err(CgiError::Malformed);
    }
    let mut builder = CgiHeadBuilder::new(*limits);
    let mut at = start;
    let mut first = true;
    let mut scgi = false;
    while at < end {
        let name = until_nul(buf, &mut at, end)?;
        let value = until_nul(buf, &mut at, end)?;
        let n = &buf[name.clone()];
        if first && n != b"CONTENT_LENGTH" {
            return Err(CgiError::NotScgi);
        }
        first = false;
        if n == b"SCGI" {
            if &buf[value.clone()] != b"1" {
                return Err(CgiError::NotScgi);
            }
            scgi = true;
            continue;
        }
        builder.push(buf, name, value)?;
    }
    if !scgi {
        return Err(CgiError::NotScgi);
    }
    Ok(Some((builder.finish(buf)?, end + 1)))
}

/// The bytes from `at` to the next NUL before `end`, and `at` past the NUL.
fn until_nul(buf: &[u8], at: &mut usize, end: usize) -> Result<std::ops::Range<usize>, CgiError> {
    let start = *at;
    let nul = memchr::memchr(0, &buf[start..end]).ok_or(CgiError::Malformed)?;
    *at = start + nul + 1;
    Ok(start..start + nul)
}

/// An SCGI request head carrying `vars` (for tests and benches).
pub fn encode(vars: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut block = Vec::new();
    for (n, v) in vars {
        block.extend_from_slice(n);
        block.push(0);
        block.extend_from_slice(v);
        block.push(0);
    }
    let mut out = format!("{}:", block.len()).into_bytes();
    out.extend_from_slice(&block);
    out.push(b',');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARS: &[(&[u8], &[u8])] = &[
        (b"CONTENT_LENGTH", b"3"),
        (b"SCGI", b"1"),
        (b"REQUEST_METHOD", b"PUT"),
        (b"REQUEST_URI", b"/x?y"),
        (b"SERVER_NAME", b"h"),
        (b"HTTP_ACCEPT", b"*/*"),
    ];

    #[test]
    fn whole_and_split_at_every_byte() {
        let mut packet = encode(VARS);
        let head_len = packet.len();
        packet.extend_from_slice(b"abc");
        let limits = Limits::default();
        let (head, used) = parse(&packet, &limits).unwrap().unwrap();
        assert_eq!(used, head_len);
        assert_eq!(head.content_length, 3);
        assert_eq!(head.query.get(&packet), b"y");
        assert_eq!(head.headers.len(), 1);
        for cut in 0..head_len {
            assert_eq!(parse(&packet[..cut], &limits), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn malformed_truncated_and_oversized() {
        let limits = Limits::default();
        let good = encode(VARS);
        let mut bad = good.clone();
        *bad.last_mut().unwrap() = b';';
        assert_eq!(parse(&bad, &limits), Err(CgiError::Malformed));
        assert_eq!(parse(b"x:", &limits), Err(CgiError::Malformed));
        assert_eq!(parse(b":", &limits), Err(CgiError::Malformed));
        assert_eq!(parse(b"01:", &limits), Err(CgiError::Malformed));
        assert_eq!(parse(b"0:,", &limits), Err(CgiError::Malformed));
        assert_eq!(parse(b"99999999999", &limits), Err(CgiError::TooLarge));
        // A block cut inside a pair, with a valid netstring around it.
        assert_eq!(
            parse(b"16:CONTENT_LENGTH\x000,", &limits),
            Err(CgiError::Malformed)
        );
        let not_first = encode(&[(b"SCGI", b"1"), (b"CONTENT_LENGTH", b"0")]);
        assert_eq!(parse(&not_first, &limits), Err(CgiError::NotScgi));
        let no_scgi = encode(&[(b"CONTENT_LENGTH", b"0"), (b"REQUEST_METHOD", b"GET")]);
        assert_eq!(parse(&no_scgi, &limits), Err(CgiError::NotScgi));
    }
}
