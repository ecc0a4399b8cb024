//! FastCGI (the FastCGI 1.0 specification, Responder role) as nginx's `fastcgi_pass`
//! speaks it: records (an 8-byte header: version 1, type, request id, content length,
//! padding length; then content and padding), a request as BEGIN_REQUEST, PARAMS records
//! (name-value pairs with 1- or 4-byte lengths; an empty PARAMS ends them) and STDIN
//! records (an empty one ends the body); the response as STDOUT records carrying a
//! CGI response (`Status: 200 OK`, the headers, the body), an empty STDOUT and
//! END_REQUEST.
//!
//! Here: the record parser, the PARAMS stream read into a [`CgiHead`], the STDIN decoder
//! (used through [`BodyDecoder`](crate::http::BodyDecoder)), the encoder that wraps a
//! response in STDOUT records, and the management records. Pure: no I/O, no Python.

#![forbid(unsafe_code)]

use crate::http::body::Payload;
use crate::http::cgi::{CgiError, CgiHead, CgiHeadBuilder};
use crate::http::date::DateCache;
use crate::http::error::HttpError;
use crate::http::head::Limits;
use crate::http::persist::Persistence;
use crate::http::response::{Encoded, Http1Encoder, NotStarted, ResponseHead};

pub const BEGIN_REQUEST: u8 = 1;
pub const ABORT_REQUEST: u8 = 2;
pub const END_REQUEST: u8 = 3;
pub const PARAMS: u8 = 4;
pub const STDIN: u8 = 5;
pub const STDOUT: u8 = 6;
pub const GET_VALUES: u8 = 9;
pub const GET_VALUES_RESULT: u8 = 10;
pub const UNKNOWN_TYPE: u8 = 11;

pub const ROLE_RESPONDER: u16 = 1;
/// BEGIN_REQUEST flag: keep the connection for the next request.
pub const KEEP_CONN: u8 = 1;

/// END_REQUEST protocol statuses.
pub const REQUEST_COMPLETE: u8 = 0;
pub const CANT_MPX_CONN: u8 = 1;
pub const UNKNOWN_ROLE: u8 = 3;

/// The record header's size.
pub const HEADER: usize = 8;
/// The most content one record carries.
pub const MAX_CONTENT: usize = 0xffff;

/// One record at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: u8,
    pub request_id: u16,
    /// Where the content is, in the buffer parsed.
    pub content: std::ops::Range<usize>,
    /// Header, content and padding: the bytes the record takes.
    pub len: usize,
}

/// The record at the start of `buf`, once all of it (padding included) is here.
pub fn parse_record(buf: &[u8]) -> Result<Option<Record>, CgiError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != 1 {
        return Err(CgiError::Malformed);
    }
    if buf.len() < HEADER {
        return Ok(None);
    }
    let content_len = u16::from_be_bytes([buf[4], buf[5]]) as usize;
    let len = HEADER + content_len + buf[6] as usize;
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(Record {
        kind: buf[1],
        request_id: u16::from_be_bytes([buf[2], buf[3]]),
        content: HEADER..HEADER + content_len,
        len,
    }))
}

/// A BEGIN_REQUEST body: the role and whether to keep the connection.
pub fn parse_begin(content: &[u8]) -> Result<(u16, bool), CgiError> {
    if content.len() != 8 {
        return Err(CgiError::Malformed);
    }
    Ok((
        u16::from_be_bytes([content[0], content[1]]),
        content[2] & KEEP_CONN != 0,
    ))
}

/// The name-value pairs of `buf[range]`, each as (name, value) ranges of `buf`.
fn pairs(
    buf: &[u8],
    range: std::ops::Range<usize>,
    mut each: impl FnMut(std::ops::Range<usize>, std::ops::Range<usize>) -> Result<(), CgiError>,
) -> Result<(), CgiError> {
    let end = range.end;
    let mut at = range.start;
    let length = |at: &mut usize| -> Result<usize, CgiError> {
        let b = *buf
            .get(*at)
            .filter(|_| *at < end)
            .ok_or(CgiError::Malformed)?;
        if b & 0x80 == 0 {
            *at += 1;
            return Ok(b as usize);
        }
        if *at + 4 > end {
            return Err(CgiError::Malformed);
        }
        let n = u32::from_be_bytes([b & 0x7f, buf[*at + 1], buf[*at + 2], buf[*at + 3]]);
        *at += 4;
        Ok(n as usize)
    };
    while at < end {
        let name_len = length(&mut at)?;
        let value_len = length(&mut at)?;
        let name = at..at.checked_add(name_len).ok_or(CgiError::Malformed)?;
        let value = name.end..name.end.checked_add(value_len).ok_or(CgiError::Malformed)?;
        if value.end > end {
            return Err(CgiError::Malformed);
        }
        at = value.end;
        each(name, value)?;
    }
    Ok(())
}

/// The request head from a request's whole PARAMS stream (the contents of its PARAMS
/// records, joined). The caller bounds the stream by `--limit-request-head`.
pub fn parse_params(buf: &[u8], limits: &Limits) -> Result<CgiHead, CgiError> {
    if buf.len() > limits.max_head_size {
        return Err(CgiError::TooLarge);
    }
    let mut builder = CgiHeadBuilder::new(*limits);
    pairs(buf, 0..buf.len(), |name, value| {
        builder.push(buf, name, value)
    })?;
    builder.finish(buf)
}

/// Appends a record header.
pub fn push_header(out: &mut Vec<u8>, kind: u8, request_id: u16, content_len: usize) {
    debug_assert!(content_len <= MAX_CONTENT);
    out.extend_from_slice(&[1, kind]);
    out.extend_from_slice(&request_id.to_be_bytes());
    out.extend_from_slice(&(content_len as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
}

/// A record header as its own value (for a body written apart, between its pieces).
pub fn header(kind: u8, request_id: u16, content_len: usize) -> [u8; HEADER] {
    let mut out = Vec::with_capacity(HEADER);
    push_header(&mut out, kind, request_id, content_len);
    out.try_into().expect("a record header is 8 bytes")
}

/// Appends `data` as STDOUT records (none for empty data: an empty STDOUT ends the stream).
pub fn push_stdout(out: &mut Vec<u8>, request_id: u16, data: &[u8]) {
    for piece in data.chunks(MAX_CONTENT) {
        push_header(out, STDOUT, request_id, piece.len());
        out.extend_from_slice(piece);
    }
}

/// Appends an END_REQUEST record.
pub fn push_end_request(out: &mut Vec<u8>, request_id: u16, protocol_status: u8) {
    push_header(out, END_REQUEST, request_id, 8);
    out.extend_from_slice(&[0, 0, 0, 0, protocol_status, 0, 0, 0]);
}

/// The end of a response: the empty STDOUT, then END_REQUEST (complete, status 0).
pub fn push_end_of_response(out: &mut Vec<u8>, request_id: u16) {
    push_header(out, STDOUT, request_id, 0);
    push_end_request(out, request_id, REQUEST_COMPLETE);
}

/// The GET_VALUES_RESULT for a GET_VALUES record's content: the variables asked for that
/// we know (`FCGI_MAX_CONNS`, `FCGI_MAX_REQS`, `FCGI_MPXS_CONNS`), others left out as the
/// specification says.
pub fn get_values_result(content: &[u8], max_conns: u64) -> Result<Vec<u8>, CgiError> {
    let mut body = Vec::new();
    let conns = max_conns.to_string();
    pairs(content, 0..content.len(), |name, _| {
        let value: &[u8] = match &content[name.clone()] {
            b"FCGI_MAX_CONNS" | b"FCGI_MAX_REQS" => conns.as_bytes(),
            b"FCGI_MPXS_CONNS" => b"0",
            _ => return Ok(()),
        };
        body.push(name.len() as u8);
        body.push(value.len() as u8);
        body.extend_from_slice(&content[name]);
        body.extend_from_slice(value);
        Ok(())
    })?;
    let mut out = Vec::with_capacity(HEADER + body.len());
    push_header(&mut out, GET_VALUES_RESULT, 0, body.len().min(MAX_CONTENT));
    body.truncate(MAX_CONTENT);
    out.extend_from_slice(&body);
    Ok(out)
}

/// The UNKNOWN_TYPE answer to a management record of a type we do not know.
pub fn unknown_type(kind: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    push_header(&mut out, UNKNOWN_TYPE, 0, 8);
    out.extend_from_slice(&[kind, 0, 0, 0, 0, 0, 0, 0]);
    out
}

/// Decodes a request's STDIN stream from the connection's bytes: STDIN records of its
/// request id, until the empty one. Any other record meanwhile (nginx sends none; an
/// ABORT_REQUEST, a second request) ends the body as invalid and the connection with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdinDecoder {
    request_id: u16,
    state: StdinState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StdinState {
    /// `have` bytes of the next record header are in `bytes`.
    Header {
        have: u8,
        bytes: [u8; HEADER],
    },
    Content {
        remaining: u16,
        padding: u8,
    },
    Padding {
        remaining: u8,
        last: bool,
    },
    Done,
}

impl StdinDecoder {
    pub fn new(request_id: u16) -> StdinDecoder {
        StdinDecoder {
            request_id,
            state: StdinState::Header {
                have: 0,
                bytes: [0; HEADER],
            },
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == StdinState::Done
    }

    /// Consumes what it can of `input` (never past the end of the stream), appending the
    /// body bytes to `out`; returns the bytes consumed.
    pub fn decode<P: Payload>(&mut self, input: &[u8], out: &mut P) -> Result<usize, HttpError> {
        let mut i = 0;
        while i < input.len() {
            match &mut self.state {
                StdinState::Done => break,
                StdinState::Header { have, bytes } => {
                    let take = (HEADER - *have as usize).min(input.len() - i);
                    bytes[*have as usize..*have as usize + take]
                        .copy_from_slice(&input[i..i + take]);
                    *have += take as u8;
                    i += take;
                    if (*have as usize) < HEADER {
                        break;
                    }
                    let h = *bytes;
                    if h[0] != 1
                        || h[1] != STDIN
                        || u16::from_be_bytes([h[2], h[3]]) != self.request_id
                    {
                        return Err(HttpError::InvalidRecord);
                    }
                    let remaining = u16::from_be_bytes([h[4], h[5]]);
                    self.state = if remaining == 0 {
                        StdinState::Padding {
                            remaining: h[6],
                            last: true,
                        }
                    } else {
                        StdinState::Content {
                            remaining,
                            padding: h[6],
                        }
                    };
                }
                StdinState::Content { remaining, padding } => {
                    let take = (*remaining as usize).min(input.len() - i);
                    out.append(input, i..i + take);
                    i += take;
                    *remaining -= take as u16;
                    if *remaining == 0 {
                        self.state = StdinState::Padding {
                            remaining: *padding,
                            last: false,
                        };
                    }
                }
                StdinState::Padding { remaining, .. } => {
                    let take = (*remaining as usize).min(input.len() - i);
                    i += take;
                    *remaining -= take as u8;
                    if *remaining != 0 {
                        break;
                    }
                }
            }
            // A record's padding is over: the next header, or the end.
            if let StdinState::Padding { remaining: 0, last } = self.state {
                self.state = if last {
                    StdinState::Done
                } else {
                    StdinState::Header {
                        have: 0,
                        bytes: [0; HEADER],
                    }
                };
            }
        }
        if let StdinState::Padding {
            remaining: 0,
            last: true,
        } = self.state
        {
            self.state = StdinState::Done;
        }
        Ok(i)
    }
}

/// Encodes one response as FastCGI: the CGI response (`Status:` line, the application's
/// headers, the body) in STDOUT records, and at its end the empty STDOUT and END_REQUEST.
/// A body the caller writes apart ([`FastCgiEncoder::build_whole`], a file) is wrapped in
/// records by the connection, which then ends the response itself.
#[derive(Debug)]
pub struct FastCgiEncoder {
    inner: Http1Encoder,
    request_id: u16,
}

impl FastCgiEncoder {
    pub fn new(request_id: u16, is_head: bool, persistence: Persistence) -> FastCgiEncoder {
        FastCgiEncoder {
            inner: Http1Encoder::cgi(is_head, persistence),
            request_id,
        }
    }

    pub fn request_id(&self) -> u16 {
        self.request_id
    }

    pub fn inner(&self) -> &Http1Encoder {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut Http1Encoder {
        &mut self.inner
    }

    pub fn start(&mut self, head: ResponseHead) {
        self.inner.start(head);
    }

    fn wrap(&self, mut encoded: Encoded, end: bool) -> Encoded {
        let mut out = Vec::with_capacity(encoded.bytes.len() + 2 * HEADER + 16);
        push_stdout(&mut out, self.request_id, &encoded.bytes);
        if end {
            push_end_of_response(&mut out, self.request_id);
        }
        encoded.bytes = out;
        encoded
    }

    pub fn build(
        &mut self,
        parts: &[&[u8]],
        end: bool,
        known_total: Option<u64>,
        date: &mut DateCache,
    ) -> Result<Encoded, NotStarted> {
        let encoded = self.inner.build(parts, end, known_total, date)?;
        Ok(self.wrap(encoded, end))
    }

    /// The head only, in STDOUT records: the connection wraps the body written apart and
    /// ends the response (empty STDOUT, END_REQUEST) after it.
    pub fn build_whole(&mut self, len: u64, date: &mut DateCache) -> Result<Encoded, NotStarted> {
        let encoded = self.inner.build_whole(len, date)?;
        Ok(self.wrap(encoded, false))
    }

    pub fn error(&mut self, status: u16, date: &mut DateCache) -> Encoded {
        let encoded = self.inner.error(status, date);
        self.wrap(encoded, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, id: u16, content: &[u8], padding: u8) -> Vec<u8> {
        let mut out = vec![1, kind];
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&(content.len() as u16).to_be_bytes());
        out.extend_from_slice(&[padding, 0]);
        out.extend_from_slice(content);
        out.extend(std::iter::repeat_n(0, padding as usize));
        out
    }

    fn pair(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        for len in [name.len(), value.len()] {
            if len < 128 {
                out.push(len as u8);
            } else {
                out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
            }
        }
        out.extend_from_slice(name);
        out.extend_from_slice(value);
    }

    #[test]
    fn records_whole_and_split() {
        let rec = record(BEGIN_REQUEST, 1, &[0, 1, 1, 0, 0, 0, 0, 0], 3);
        let parsed = parse_record(&rec).unwrap().unwrap();
        assert_eq!(
            (parsed.kind, parsed.request_id, parsed.len),
            (BEGIN_REQUEST, 1, 19)
        );
        assert_eq!(
            parse_begin(&rec[parsed.content]),
            Ok((ROLE_RESPONDER, true))
        );
        for cut in 0..rec.len() {
            assert_eq!(parse_record(&rec[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse_record(&[2, 1]), Err(CgiError::Malformed));
    }

    #[test]
    fn params_with_both_length_forms() {
        let mut p = Vec::new();
        pair(&mut p, b"REQUEST_METHOD", b"GET");
        pair(&mut p, b"REQUEST_URI", b"/x");
        let long = vec![b'a'; 300];
        pair(&mut p, b"HTTP_X_LONG", &long);
        let head = parse_params(&p, &Limits::default()).unwrap();
        assert_eq!(head.headers[0].value.get(&p), &long[..]);
        // Every truncation is malformed (the stream is complete when parsed).
        for cut in 1..p.len() {
            if let Ok(head) = parse_params(&p[..cut], &Limits::default()) {
                // Only a cut between whole pairs parses.
                assert!(head.headers.is_empty(), "cut at {cut}");
            }
        }
        let small = Limits {
            max_head_size: 16,
            ..Limits::default()
        };
        assert_eq!(parse_params(&p, &small), Err(CgiError::TooLarge));
        assert_eq!(
            parse_params(&[0x80, 0, 0], &Limits::default()),
            Err(CgiError::Malformed)
        );
    }

    #[test]
    fn stdin_split_at_every_byte() {
        let mut stream = record(STDIN, 7, b"hello ", 2);
        stream.extend(record(STDIN, 7, b"world", 0));
        stream.extend(record(STDIN, 7, b"", 0));
        let end = stream.len();
        stream.extend(record(BEGIN_REQUEST, 8, &[0; 8], 0));
        for cut in 0..=end {
            let mut d = StdinDecoder::new(7);
            let mut out = Vec::new();
            let a = d.decode(&stream[..cut], &mut out).unwrap();
            assert_eq!(a, cut);
            let b = d.decode(&stream[cut..], &mut out).unwrap();
            assert_eq!(a + b, end, "cut at {cut}");
            assert!(d.is_done());
            assert_eq!(out, b"hello world");
        }
        let mut d = StdinDecoder::new(7);
        let bad = record(ABORT_REQUEST, 7, b"", 0);
        assert_eq!(
            d.decode(&bad, &mut Vec::new()),
            Err(HttpError::InvalidRecord)
        );
        let mut d = StdinDecoder::new(7);
        let other = record(STDIN, 8, b"x", 0);
        assert_eq!(
            d.decode(&other, &mut Vec::new()),
            Err(HttpError::InvalidRecord)
        );
    }

    #[test]
    fn encoder_wraps_in_stdout_and_ends() {
        let mut e = FastCgiEncoder::new(3, false, Persistence::new(true, true));
        e.start(ResponseHead::new(b"200 OK").unwrap());
        let mut date = DateCache::new();
        let out = e.build(&[b"hi"], true, Some(2), &mut date).unwrap();
        let first = parse_record(&out.bytes).unwrap().unwrap();
        assert_eq!((first.kind, first.request_id), (STDOUT, 3));
        let text = &out.bytes[first.content.clone()];
        assert!(text.starts_with(b"Status: 200 OK\r\n"), "{text:?}");
        assert!(text.ends_with(b"\r\n\r\nhi"));
        let rest = &out.bytes[first.len..];
        let empty = parse_record(rest).unwrap().unwrap();
        assert_eq!((empty.kind, empty.content.len()), (STDOUT, 0));
        let end = parse_record(&rest[empty.len..]).unwrap().unwrap();
        assert_eq!(end.kind, END_REQUEST);
        assert!(out.persistence.keep_alive());
    }

    #[test]
    fn streamed_cgi_body_has_no_framing_headers() {
        let mut e = FastCgiEncoder::new(1, false, Persistence::new(false, true));
        let mut head = ResponseHead::new(b"404 Not Found").unwrap();
        head.push_header(b"X-A", b"1").unwrap();
        e.start(head);
        let mut date = DateCache::new();
        let first = e.build(&[b"a"], false, None, &mut date).unwrap();
        let rec = parse_record(&first.bytes).unwrap().unwrap();
        assert_eq!(rec.len, first.bytes.len(), "no end records before the end");
        assert_eq!(
            &first.bytes[rec.content],
            b"Status: 404 Not Found\r\nX-A: 1\r\n\r\na"
        );
        let last = e.build(&[b"b"], true, None, &mut date).unwrap();
        let rec = parse_record(&last.bytes).unwrap().unwrap();
        assert_eq!(&last.bytes[rec.content], b"b");
        // KEEP_CONN was not asked for: the connection closes after END_REQUEST.
        assert!(!last.persistence.keep_alive());
    }

    #[test]
    fn get_values() {
        let mut q = Vec::new();
        pair(&mut q, b"FCGI_MPXS_CONNS", b"");
        pair(&mut q, b"OTHER", b"");
        let out = get_values_result(&q, 100).unwrap();
        let rec = parse_record(&out).unwrap().unwrap();
        assert_eq!(rec.kind, GET_VALUES_RESULT);
        assert_eq!(&out[rec.content], b"\x0f\x01FCGI_MPXS_CONNS0");
    }
}
