//! The body decoder (`http::BodyDecoder`), `Content-Length` and chunked, fed in pieces.
//!
//! Input: byte 0 chooses the framing, the body limit and whether to try the filler, bytes 1-2 a `Content-Length`
//! (small, so that bodies can end), bytes 3-5 three split points, the rest is what the
//! client sent after the head.
//!
//! Properties, beyond "no panic":
//! - whole equals split: fed in up to four pieces (the decoder resumes anywhere) it
//!   consumes the same bytes, decodes the same payload and ends (or fails) alike;
//! - it never consumes past the input, and never decodes more than it consumed; what it
//!   reports as decoded is what it appended; the limit holds;
//! - done is final (`Ok(0)` after), an error is sticky;
//! - locating the payload in the input (`PayloadRuns`) agrees with copying it out;
//! - chunked: the decoder agrees with a second, plain reading of the grammar that slices
//!   the whole input (complete with the same payload and end, a valid prefix, or invalid),
//!   away from the bounds on size lines and trailers;
//! - it never asks for more forever: when the input ran out mid-framing, `FILLER` more bytes
//!   of framing (one byte value repeated, chosen by the input) end in an error, the end of
//!   the message or payload: the size line, extensions and trailers are bounded, so memory
//!   and time spent on bytes that are not payload are too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spindle::http::{BodyDecoder, BodyFraming, HttpError, PayloadRuns};

/// More than the longest run of framing bytes the decoder accepts between two payload
/// bytes: a size line (4096 with extensions, then CRLF), then trailers (8192) and the
/// final CRLF, and the CRLF after the previous chunk's data.
const FILLER: usize = 4096 + 2 + 8192 + 2 + 2 + 16;

#[derive(Debug, PartialEq)]
struct Run {
    consumed: usize,
    out: Vec<u8>,
    done: bool,
    error: Option<HttpError>,
}

/// Feeds `pieces` in order, as reads would deliver them, stopping at the end of the message.
fn run(decoder: &mut BodyDecoder, pieces: &[&[u8]]) -> Run {
    let mut out = Vec::new();
    let mut consumed = 0;
    for piece in pieces {
        // Locating the payload (`PayloadRuns`, a streamed body's pieces) agrees with copying
        // it: the same bytes consumed, the same payload, the same error.
        let mut locator = decoder.clone();
        let mut runs = PayloadRuns::default();
        let located = locator.decode(piece, &mut runs);
        let before = out.len();
        let decoded = decoder.decode(piece, &mut out);
        assert_eq!(located, decoded, "locating and copying disagree");
        let gathered: Vec<u8> = runs
            .runs()
            .iter()
            .flat_map(|r| piece[r.clone()].to_vec())
            .collect();
        if decoded.is_ok() {
            assert_eq!(
                gathered,
                out[before..],
                "located payload differs from the copy"
            );
            assert_eq!(locator.decoded_len(), decoder.decoded_len());
            assert_eq!(locator.is_done(), decoder.is_done());
        }
        match decoded {
            Ok(n) => {
                assert!(n <= piece.len(), "consumed {n} of {}", piece.len());
                consumed += n;
                if n < piece.len() {
                    assert!(decoder.is_done(), "stopped short but not done");
                }
                if decoder.is_done() {
                    break;
                }
            }
            Err(error) => {
                // Sticky. How much of the failing piece was read is not reported, so
                // `consumed` is not compared: the payload before the error is.
                assert_eq!(decoder.decode(b"0\r\n\r\n", &mut Vec::new()), Err(error));
                return Run {
                    consumed: 0,
                    out,
                    done: false,
                    error: Some(error),
                };
            }
        }
    }
    Run {
        consumed,
        out,
        done: decoder.is_done(),
        error: None,
    }
}

/// What a whole chunked body is, by a second reading of RFC 9112 §7.1 that slices the
/// complete input instead of stepping through states.
#[derive(Debug, PartialEq)]
enum Reference {
    /// The message ends after this many bytes, with this payload.
    Complete(usize, Vec<u8>),
    /// A prefix of a valid message.
    Incomplete,
    /// Not a prefix of any valid message (or over the body limit).
    Invalid,
    /// A size line or the trailers come near the decoder's bounds, whose exact edges this
    /// reading does not model.
    NearALimit,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_field_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

fn reference_chunked(data: &[u8], max_body: Option<u64>) -> Reference {
    use Reference::{Complete, Incomplete, Invalid, NearALimit};
    let len = data.len();
    let mut i = 0;
    let mut payload = Vec::new();
    // `CRLF` at `i`, or why not.
    let crlf = |i: usize| -> Option<Reference> {
        match (data.get(i), data.get(i + 1)) {
            (None, _) | (Some(b'\r'), None) => Some(Incomplete),
            (Some(b'\r'), Some(b'\n')) => None,
            _ => Some(Invalid),
        }
    };
    loop {
        // chunk-size [ BWS ";" chunk-ext ] CRLF
        let line_start = i;
        let (mut size, mut significant) = (0u64, 0);
        while i < len && data[i].is_ascii_hexdigit() {
            let digit = u64::from((data[i] as char).to_digit(16).unwrap());
            significant += usize::from(size != 0 || digit != 0);
            if significant > 16 {
                return Invalid;
            }
            size = size << 4 | digit;
            i += 1;
        }
        if i - line_start > 4000 {
            return NearALimit;
        }
        if i == len {
            return Incomplete;
        }
        if i == line_start {
            return Invalid;
        }
        let blank_start = i;
        while i < len && matches!(data[i], b' ' | b'\t') {
            i += 1;
        }
        if i - line_start > 4000 {
            return NearALimit;
        }
        if i < len && data[i] == b';' {
            while i < len && is_field_value_byte(data[i]) {
                i += 1;
            }
        } else if i > blank_start && i < len {
            return Invalid;
        }
        if i - line_start > 4000 {
            return NearALimit;
        }
        if let Some(r) = crlf(i) {
            return r;
        }
        i += 2;
        if size == 0 {
            break;
        }
        if max_body.is_some_and(|limit| size > limit.saturating_sub(payload.len() as u64)) {
            return Invalid;
        }
        if ((len - i) as u64) < size {
            return Incomplete;
        }
        payload.extend_from_slice(&data[i..i + size as usize]);
        i += size as usize;
        if let Some(r) = crlf(i) {
            return r;
        }
        i += 2;
    }
    // *( field-line CRLF ) CRLF
    let trailer_start = i;
    loop {
        if i - trailer_start > 8000 {
            return NearALimit;
        }
        match data.get(i) {
            None => return Incomplete,
            Some(b'\r') => {
                return match crlf(i) {
                    Some(r) => r,
                    None => Complete(i + 2, payload),
                }
            }
            Some(_) => {}
        }
        let name_start = i;
        while i < len && is_tchar(data[i]) {
            i += 1;
        }
        if i - trailer_start > 8000 {
            return NearALimit;
        }
        if i == len {
            return Incomplete;
        }
        if i == name_start || data[i] != b':' {
            return Invalid;
        }
        while i + 1 < len && is_field_value_byte(data[i + 1]) {
            i += 1;
        }
        i += 1;
        if i - trailer_start > 8000 {
            return NearALimit;
        }
        if let Some(r) = crlf(i) {
            return r;
        }
        i += 2;
    }
}

fuzz_target!(|input: &[u8]| {
    let (mode, length, splits, data) = match input {
        [m, l0, l1, a, b, c, rest @ ..] => (
            *m,
            u64::from(u16::from_le_bytes([*l0, *l1])),
            [*a, *b, *c],
            rest,
        ),
        _ => return,
    };
    // The chunked decoder does not use the length except for its limit: its low byte is
    // also the filler.
    let filler_byte = length as u8;
    let framing = if mode & 1 == 0 {
        BodyFraming::Chunked
    } else {
        BodyFraming::Length(length)
    };
    let max_body = (mode & 2 != 0).then_some(length / 2);

    let Ok(mut whole_decoder) = BodyDecoder::new(framing, max_body) else {
        assert!(matches!(framing, BodyFraming::Length(n) if Some(n) > max_body));
        return;
    };
    let mut split_decoder = whole_decoder.clone();
    let whole = run(&mut whole_decoder, &[data]);

    let mut cuts: Vec<usize> = splits
        .iter()
        .map(|&s| usize::from(s) * data.len() / 255)
        .collect();
    cuts.sort_unstable();
    let pieces = [
        &data[..cuts[0]],
        &data[cuts[0]..cuts[1]],
        &data[cuts[1]..cuts[2]],
        &data[cuts[2]..],
    ];
    let split = run(&mut split_decoder, &pieces);
    assert_eq!(whole, split, "whole and split disagree");

    assert!(whole.consumed <= data.len());
    assert!(whole.out.len() <= data.len(), "decoded more than the input");
    if whole.error.is_none() {
        assert!(
            whole.out.len() <= whole.consumed,
            "decoded more than consumed"
        );
    }
    assert_eq!(whole_decoder.decoded_len(), whole.out.len() as u64);
    if let Some(limit) = max_body {
        assert!(whole.out.len() as u64 <= limit, "over the body limit");
    }
    if let (BodyFraming::Length(n), None) = (framing, whole.error) {
        // A Content-Length body is its bytes, no more.
        assert_eq!(whole.out, data[..whole.consumed]);
        assert_eq!(whole.done, whole.consumed as u64 == n);
    }
    if framing == BodyFraming::Chunked {
        let expected = reference_chunked(data, max_body);
        let got = match (&whole.error, whole.done) {
            (Some(_), _) => Reference::Invalid,
            (None, true) => Reference::Complete(whole.consumed, whole.out.clone()),
            (None, false) => Reference::Incomplete,
        };
        if expected != Reference::NearALimit {
            assert_eq!(got, expected, "the decoder and the reference disagree");
        }
    }
    if whole.done {
        assert_eq!(
            whole_decoder.decode(b"GET / HTTP/1.1\r\n", &mut Vec::new()),
            Ok(0)
        );
        return;
    }
    if whole.error.is_some() || whole.consumed < data.len() {
        return;
    }

    // Input exhausted, still waiting: framing bytes cannot keep it waiting forever.
    if framing == BodyFraming::Chunked && mode & 0x80 != 0 {
        let filler = vec![filler_byte; FILLER];
        let mut out = Vec::new();
        match whole_decoder.decode(&filler, &mut out) {
            Err(_) => {}
            Ok(_) if whole_decoder.is_done() => {}
            Ok(n) => {
                assert_eq!(n, FILLER);
                assert!(
                    !out.is_empty(),
                    "{FILLER} bytes of {filler_byte:#04x} consumed as framing, still waiting"
                );
            }
        }
    }
});
