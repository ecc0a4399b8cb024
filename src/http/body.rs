//! Request body framing and the resumable body decoder: `Content-Length`
//! bodies and chunked transfer coding (RFC 9112 §6, §7.1).
//!
//! This module does no I/O and knows no Python. [`BodyDecoder::decode`] takes
//! whatever bytes a read produced, appends the payload they carry to the
//! caller's buffer and says how many it consumed; it can stop at any byte
//! (mid size line, mid CRLF, mid trailer) and resume on the next call. It
//! never consumes a byte past the end of the message, so the bytes of a
//! pipelined next request stay with the caller.
//!
//! The chunked grammar is enforced strictly, because a lenient chunk parser is
//! a request-smuggling vector (gunicorn CVE-2024-6827 and its relatives): the
//! size is `1*HEXDIG` and cannot overflow, every line ends in exactly CRLF,
//! extensions may not hide CTLs, trailers are bounded.

#![forbid(unsafe_code)]

use std::ops::Range;

use crate::http::error::HttpError;
use crate::http::head::is_tchar;

/// How the body of a request is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No `Content-Length` and no `Transfer-Encoding`: the body is empty.
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Longest chunk-size line we read: size, extensions and its CR (not the LF).
/// Extensions are ignored, so this only bounds what a client can make us skip.
const MAX_CHUNK_SIZE_LINE: u32 = 4096;

/// Most trailer bytes (all field lines with their CRLFs) we read and discard.
const MAX_TRAILER_SECTION: u32 = 8192;

/// A u64 holds 16 hex digits; leading zeros do not count.
const MAX_CHUNK_SIZE_DIGITS: u8 = 16;

/// Where [`BodyDecoder::decode`] puts the payload it finds: copied out (`Vec<u8>`), or only
/// located, as ranges of the input ([`PayloadRuns`]), for a caller that read the input into
/// a buffer it hands on whole (a streamed body's piece: `server/body.rs`).
pub trait Payload {
    /// `input[range]` is the next stretch of payload.
    fn append(&mut self, input: &[u8], range: Range<usize>);
    /// Payload bytes appended so far.
    fn payload_len(&self) -> usize;
}

impl Payload for Vec<u8> {
    fn append(&mut self, input: &[u8], range: Range<usize>) {
        self.extend_from_slice(&input[range]);
    }

    fn payload_len(&self) -> usize {
        self.len()
    }
}

/// The payload's ranges in the input of one `decode` call, in order, adjacent ones merged.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PayloadRuns {
    runs: Vec<Range<usize>>,
    len: usize,
}

impl PayloadRuns {
    pub fn runs(&self) -> &[Range<usize>] {
        &self.runs
    }

    pub fn into_runs(self) -> Vec<Range<usize>> {
        self.runs
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Payload for PayloadRuns {
    fn append(&mut self, _input: &[u8], range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        self.len += range.len();
        match self.runs.last_mut() {
            Some(last) if last.end == range.start => last.end = range.end,
            _ => self.runs.push(range),
        }
    }

    fn payload_len(&self) -> usize {
        self.len
    }
}

/// Decodes one request body, fed in pieces of any size.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: DecodeState,
    /// Payload bytes appended to `out` so far.
    decoded: u64,
    max_body: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecodeState {
    /// A `Content-Length` body with `remaining` bytes still to come.
    Length {
        remaining: u64,
    },
    Chunked(ChunkState),
    /// A FastCGI request's STDIN records (`fastcgi.rs`).
    FastCgi(crate::http::fastcgi::StdinDecoder),
    /// The message is complete; nothing more is consumed.
    Done,
    /// An error was found; every later call repeats it.
    Failed(HttpError),
}

/// Where the chunked decoder is, in RFC 9112 §7.1 terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// At the start of a chunk-size line, no digit yet.
    SizeStart,
    /// In the hex digits of a chunk size. `significant` counts digits after
    /// leading zeros; `line_len` counts the bytes of the size line so far.
    Size {
        size: u64,
        significant: u8,
        line_len: u32,
    },
    /// Whitespace after the size: only `;` (an extension) may follow (BWS).
    SizeWhitespace { size: u64, line_len: u32 },
    /// In chunk extensions, which are skipped.
    Extension { size: u64, line_len: u32 },
    /// The CR that ends the size line was seen; LF must follow.
    SizeLf { size: u64 },
    /// In chunk data.
    Data { remaining: u64 },
    /// After chunk data: CR must follow.
    DataCr,
    /// After chunk data and CR: LF must follow.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerLineStart { total: u32 },
    /// In a trailer field name.
    TrailerName { total: u32 },
    /// In a trailer field value.
    TrailerValue { total: u32 },
    /// A trailer field line's CR was seen; LF must follow.
    TrailerLf { total: u32 },
    /// The CR of the final empty line was seen; LF ends the message.
    EndLf,
}

impl BodyDecoder {
    /// A decoder for a body framed as `framing`.
    ///
    /// With `max_body: Some(limit)`, a `Content-Length` above the limit is
    /// refused here, before any byte is read, and a chunked body is refused as
    /// soon as a chunk size would take the decoded total above it.
    pub fn new(framing: BodyFraming, max_body: Option<u64>) -> Result<Self, HttpError> {
        let state = match framing {
            BodyFraming::None | BodyFraming::Length(0) => DecodeState::Done,
            BodyFraming::Length(n) => {
                if max_body.is_some_and(|limit| n > limit) {
                    return Err(HttpError::BodyTooLarge);
                }
                DecodeState::Length { remaining: n }
            }
            BodyFraming::Chunked => DecodeState::Chunked(ChunkState::SizeStart),
        };
        Ok(BodyDecoder {
            state,
            decoded: 0,
            max_body,
        })
    }

    /// A decoder for a FastCGI request's body: the STDIN records of `request_id`.
    pub fn fastcgi_stdin(request_id: u16, max_body: Option<u64>) -> Self {
        BodyDecoder {
            state: DecodeState::FastCgi(crate::http::fastcgi::StdinDecoder::new(request_id)),
            decoded: 0,
            max_body,
        }
    }

    /// Consumes bytes from `input`, appending decoded payload to `out`.
    /// Returns how many input bytes were consumed: all of them unless the
    /// message ended inside `input` (then [`is_done`](Self::is_done) is true
    /// and the rest belongs to the next request).
    pub fn decode<P: Payload>(&mut self, input: &[u8], out: &mut P) -> Result<usize, HttpError> {
        match self.state {
            DecodeState::Done => Ok(0),
            DecodeState::Failed(error) => Err(error),
            DecodeState::Length { remaining } => {
                let take = usize::try_from(remaining).map_or(input.len(), |r| r.min(input.len()));
                out.append(input, 0..take);
                self.decoded += take as u64;
                let remaining = remaining - take as u64;
                self.state = if remaining == 0 {
                    DecodeState::Done
                } else {
                    DecodeState::Length { remaining }
                };
                Ok(take)
            }
            DecodeState::FastCgi(mut stdin) => {
                let before = out.payload_len();
                let result = stdin.decode(input, out);
                self.decoded += (out.payload_len() - before) as u64;
                let result = result.and_then(|consumed| {
                    if self.max_body.is_some_and(|limit| self.decoded > limit) {
                        Err(HttpError::BodyTooLarge)
                    } else {
                        Ok(consumed)
                    }
                });
                self.state = match result {
                    Ok(_) if stdin.is_done() => DecodeState::Done,
                    Ok(_) => DecodeState::FastCgi(stdin),
                    Err(error) => DecodeState::Failed(error),
                };
                result
            }
            DecodeState::Chunked(state) => match self.decode_chunked(state, input, out) {
                Ok((consumed, next)) => {
                    self.state = next;
                    Ok(consumed)
                }
                Err(error) => {
                    self.state = DecodeState::Failed(error);
                    Err(error)
                }
            },
        }
    }

    /// How many of the message's next bytes are payload exactly as they stand: the rest
    /// of a `Content-Length` body, which a caller reading into a buffer of its own need not
    /// read past. `None` when the bytes are framed (chunked, FastCGI records), so where
    /// the message ends is not known before decoding, or the body is over.
    pub fn verbatim_remaining(&self) -> Option<u64> {
        match self.state {
            DecodeState::Length { remaining } => Some(remaining),
            _ => None,
        }
    }

    /// True once the whole body, and for chunked its trailer, was consumed.
    pub fn is_done(&self) -> bool {
        self.state == DecodeState::Done
    }

    /// Payload bytes produced so far.
    pub fn decoded_len(&self) -> u64 {
        self.decoded
    }

    /// Runs the chunked state machine over `input` from `state`. Returns the
    /// bytes consumed and the state to resume from.
    fn decode_chunked<P: Payload>(
        &mut self,
        mut state: ChunkState,
        input: &[u8],
        out: &mut P,
    ) -> Result<(usize, DecodeState), HttpError> {
        let mut i = 0;
        while i < input.len() {
            state = match state {
                // Chunk data is the bulk of the bytes: copy it in one go.
                ChunkState::Data { remaining } => {
                    let available = input.len() - i;
                    let take = usize::try_from(remaining).map_or(available, |r| r.min(available));
                    out.append(input, i..i + take);
                    self.decoded += take as u64;
                    i += take;
                    let remaining = remaining - take as u64;
                    if remaining == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data { remaining }
                    }
                }
                framing => {
                    let b = input[i];
                    i += 1;
                    match self.step(framing, b)? {
                        Some(next) => next,
                        None => return Ok((i, DecodeState::Done)),
                    }
                }
            };
        }
        Ok((i, DecodeState::Chunked(state)))
    }

    /// One byte of chunk framing (everything but chunk data). `Ok(None)`:
    /// this byte ended the message.
    fn step(&self, state: ChunkState, b: u8) -> Result<Option<ChunkState>, HttpError> {
        let next = match state {
            ChunkState::SizeStart => match hex_value(b) {
                Some(digit) => ChunkState::Size {
                    size: u64::from(digit),
                    significant: u8::from(digit != 0),
                    line_len: 1,
                },
                None if b == b'\n' => return Err(HttpError::InvalidChunkTerminator),
                // Empty size line, sign, "0x", whitespace first...
                None => return Err(HttpError::InvalidChunkSize),
            },
            ChunkState::Size {
                size,
                significant,
                line_len,
            } => {
                let line_len = size_line_len(line_len)?;
                match hex_value(b) {
                    Some(digit) => {
                        let significant = significant + u8::from(size != 0 || digit != 0);
                        if significant > MAX_CHUNK_SIZE_DIGITS {
                            // Known to overflow now: an error at once, not a
                            // wait for the rest of the line.
                            return Err(HttpError::ChunkSizeOverflow);
                        }
                        ChunkState::Size {
                            size: (size << 4) | u64::from(digit),
                            significant,
                            line_len,
                        }
                    }
                    None => match b {
                        b'\r' => ChunkState::SizeLf { size },
                        b';' => ChunkState::Extension { size, line_len },
                        b' ' | b'\t' => ChunkState::SizeWhitespace { size, line_len },
                        b'\n' => return Err(HttpError::InvalidChunkTerminator),
                        _ => return Err(HttpError::InvalidChunkSize),
                    },
                }
            }
            ChunkState::SizeWhitespace { size, line_len } => {
                let line_len = size_line_len(line_len)?;
                match b {
                    b' ' | b'\t' => ChunkState::SizeWhitespace { size, line_len },
                    b';' => ChunkState::Extension { size, line_len },
                    b'\n' => return Err(HttpError::InvalidChunkTerminator),
                    // "5 \r\n": whitespace that does not lead to an extension
                    // is not part of the grammar (BWS only comes before ';').
                    _ => return Err(HttpError::InvalidChunkSize),
                }
            }
            ChunkState::Extension { size, line_len } => {
                let line_len = size_line_len(line_len)?;
                match b {
                    b'\r' => ChunkState::SizeLf { size },
                    b'\n' => return Err(HttpError::InvalidChunkTerminator),
                    // Extensions are ignored, but only field-value bytes may
                    // hide in them: no CTL, no DEL.
                    _ if is_field_value_byte(b) => ChunkState::Extension { size, line_len },
                    _ => return Err(HttpError::InvalidChunkSize),
                }
            }
            ChunkState::SizeLf { size } => {
                if b != b'\n' {
                    return Err(HttpError::InvalidChunkTerminator);
                }
                if size == 0 {
                    ChunkState::TrailerLineStart { total: 0 }
                } else if self
                    .max_body
                    .is_some_and(|limit| size > limit.saturating_sub(self.decoded))
                {
                    // Refused when the size is known, not after buffering it.
                    return Err(HttpError::BodyTooLarge);
                } else {
                    ChunkState::Data { remaining: size }
                }
            }
            ChunkState::Data { remaining } => ChunkState::Data { remaining },
            ChunkState::DataCr => match b {
                b'\r' => ChunkState::DataLf,
                _ => return Err(HttpError::InvalidChunkTerminator),
            },
            ChunkState::DataLf => match b {
                b'\n' => ChunkState::SizeStart,
                _ => return Err(HttpError::InvalidChunkTerminator),
            },
            ChunkState::TrailerLineStart { total } => {
                let total = trailer_len(total)?;
                match b {
                    b'\r' => ChunkState::EndLf,
                    b'\n' => return Err(HttpError::InvalidChunkTerminator),
                    b' ' | b'\t' => return Err(HttpError::ObsFold),
                    _ if is_tchar(b) => ChunkState::TrailerName { total },
                    _ => return Err(HttpError::InvalidHeaderName),
                }
            }
            ChunkState::TrailerName { total } => {
                let total = trailer_len(total)?;
                match b {
                    b':' => ChunkState::TrailerValue { total },
                    b'\n' => return Err(HttpError::InvalidChunkTerminator),
                    _ if is_tchar(b) => ChunkState::TrailerName { total },
                    _ => return Err(HttpError::InvalidHeaderName),
                }
            }
            ChunkState::TrailerValue { total } => {
                let total = trailer_len(total)?;
                match b {
                    b'\r' => ChunkState::TrailerLf { total },
                    b'\n' => return Err(HttpError::InvalidChunkTerminator),
                    _ if is_field_value_byte(b) => ChunkState::TrailerValue { total },
                    _ => return Err(HttpError::InvalidHeaderValue),
                }
            }
            ChunkState::TrailerLf { total } => {
                let total = trailer_len(total)?;
                match b {
                    b'\n' => ChunkState::TrailerLineStart { total },
                    _ => return Err(HttpError::InvalidChunkTerminator),
                }
            }
            ChunkState::EndLf => match b {
                b'\n' => return Ok(None),
                _ => return Err(HttpError::InvalidChunkTerminator),
            },
        };
        Ok(Some(next))
    }
}

/// Counts one more byte of a size line against [`MAX_CHUNK_SIZE_LINE`].
fn size_line_len(line_len: u32) -> Result<u32, HttpError> {
    if line_len >= MAX_CHUNK_SIZE_LINE {
        Err(HttpError::InvalidChunkSize)
    } else {
        Ok(line_len + 1)
    }
}

/// Counts one more trailer byte against [`MAX_TRAILER_SECTION`].
fn trailer_len(total: u32) -> Result<u32, HttpError> {
    if total >= MAX_TRAILER_SECTION {
        Err(HttpError::TrailerTooLarge)
    } else {
        Ok(total + 1)
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `field-vchar / SP / HTAB` (RFC 9110 §5.5): anything but CTLs and DEL.
fn is_field_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(framing: BodyFraming, input: &[u8]) -> Result<(Vec<u8>, usize, bool), HttpError> {
        let mut decoder = BodyDecoder::new(framing, None)?;
        let mut out = Vec::new();
        let consumed = decoder.decode(input, &mut out)?;
        Ok((out, consumed, decoder.is_done()))
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn payload_runs_locate_what_a_copy_would_take() {
        let input = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\nGET /";
        let mut copied = Vec::new();
        let mut runs = PayloadRuns::default();
        let mut a = BodyDecoder::new(BodyFraming::Chunked, None).unwrap();
        let mut b = a.clone();
        let consumed = a.decode(input, &mut copied).unwrap();
        assert_eq!(b.decode(input, &mut runs).unwrap(), consumed);
        assert_eq!(&input[consumed..], b"GET /");
        let located: Vec<u8> = runs
            .runs()
            .iter()
            .flat_map(|r| input[r.clone()].to_vec())
            .collect();
        assert_eq!(located, copied);
        assert_eq!(located, b"hello world");
        assert_eq!(runs.runs().len(), 2);
        assert!(a.is_done() && b.is_done() && b.decoded_len() == 11);

        let mut length = BodyDecoder::new(BodyFraming::Length(10), None).unwrap();
        assert_eq!(length.verbatim_remaining(), Some(10));
        let mut runs = PayloadRuns::default();
        assert_eq!(length.decode(b"abcd", &mut runs).unwrap(), 4);
        assert_eq!(length.verbatim_remaining(), Some(6));
        assert_eq!(runs.runs(), &[0..4]);
        let mut runs = PayloadRuns::default();
        assert_eq!(length.decode(b"efghijkl", &mut runs).unwrap(), 6);
        assert_eq!(runs.runs(), &[0..6]);
        assert!(length.is_done() && length.verbatim_remaining().is_none());
        assert_eq!(
            BodyDecoder::new(BodyFraming::Chunked, None)
                .unwrap()
                .verbatim_remaining(),
            None
        );
    }

    #[test]
    fn length_body_stops_at_its_end() {
        let (out, consumed, done) = decode_all(BodyFraming::Length(3), b"abcGET").unwrap();
        assert_eq!((&out[..], consumed, done), (&b"abc"[..], 3, true));
    }

    #[test]
    fn chunked_body_with_extension_and_trailer() {
        let input = b"5;a=b\r\nhello\r\n1 ; x\r\n!\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (out, consumed, done) = decode_all(BodyFraming::Chunked, input).unwrap();
        assert_eq!(out, b"hello!");
        assert_eq!(consumed, input.len() - 4);
        assert!(done);
    }

    #[test]
    fn chunk_size_overflow_is_immediate() {
        // 17 significant digits: an error before any line end arrives.
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked, None).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            decoder.decode(b"1FFFFFFFFFFFFFFFF", &mut out),
            Err(HttpError::ChunkSizeOverflow)
        );
        // The error is sticky.
        assert_eq!(
            decoder.decode(b"\r\n", &mut out),
            Err(HttpError::ChunkSizeOverflow)
        );
        // 16 digits fit; leading zeros are not significant.
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked, None).unwrap();
        assert_eq!(decoder.decode(b"0000FFFFFFFFFFFFFFFF", &mut out), Ok(20));
    }

    #[test]
    fn size_line_is_bounded() {
        let mut line = b"1;".to_vec();
        line.resize(MAX_CHUNK_SIZE_LINE as usize, b'a');
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked, None).unwrap();
        let mut out = Vec::new();
        assert_eq!(decoder.decode(&line, &mut out), Ok(line.len()));
        assert_eq!(
            decoder.decode(b"a", &mut out),
            Err(HttpError::InvalidChunkSize)
        );
    }

    #[test]
    fn max_body_applies_to_both_framings() {
        assert_eq!(
            BodyDecoder::new(BodyFraming::Length(11), Some(10)).map(|_| ()),
            Err(HttpError::BodyTooLarge)
        );
        assert!(BodyDecoder::new(BodyFraming::Length(10), Some(10)).is_ok());
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked, Some(10)).unwrap();
        let mut out = Vec::new();
        assert_eq!(decoder.decode(b"6\r\nabcdef\r\n", &mut out), Ok(11));
        assert_eq!(decoder.decode(b"4\r\n", &mut out), Ok(3));
        assert_eq!(
            decoder.decode(b"abcd\r\n5\r\n", &mut out),
            Err(HttpError::BodyTooLarge)
        );
        assert_eq!(decoder.decoded_len(), 10);
    }

    #[test]
    fn no_body_is_done_at_once() {
        let mut decoder = BodyDecoder::new(BodyFraming::None, None).unwrap();
        assert!(decoder.is_done());
        assert_eq!(
            decoder.decode(b"GET / HTTP/1.1\r\n", &mut Vec::new()),
            Ok(0)
        );
        assert!(BodyDecoder::new(BodyFraming::Length(0), None)
            .unwrap()
            .is_done());
    }
}
