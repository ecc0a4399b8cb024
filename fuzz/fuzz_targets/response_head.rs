//! The application's status and headers (`http::response::ResponseHead`) on arbitrary
//! bytes, as `start_response` would hand them over.
//!
//! Input: byte 0 is the status length, then the status, then records of a name length
//! byte, a value length byte, the name and the value.
//!
//! Properties, beyond "no panic": an accepted status has a three-digit code and no control
//! bytes; a refused header leaves the head as it was; an accepted header adds exactly one
//! line, `name: value\r\n`, with no CR, LF or NUL in name or value; so the whole head is one
//! status line and one line per accepted header, and holds no CR or LF outside line ends
//! and no NUL at all. The head then goes through the HTTP/1.1 encoder, whose output must
//! still be those lines plus its own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spindle::http::date::DateCache;
use spindle::http::response::{parse_status, Http1Encoder, ResponseHead};
use spindle::http::Persistence;

/// Takes `n` bytes (fewer if the input ends).
fn take<'a>(input: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(input.len());
    let (head, rest) = input.split_at(n);
    *input = rest;
    head
}

/// The lines of `bytes` split at CRLF, checking that no CR or LF occurs anywhere else.
fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    assert!(bytes.ends_with(b"\r\n"), "head does not end in CRLF");
    let lines: Vec<&[u8]> = bytes[..bytes.len() - 1].split(|&b| b == b'\n').collect();
    lines
        .iter()
        .map(|line| {
            let line = line
                .strip_suffix(b"\r")
                .unwrap_or_else(|| panic!("bare LF: {line:?}"));
            assert!(!line.contains(&b'\r'), "bare CR in {line:?}");
            line
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    let Some(&status_len) = input.first() else {
        return;
    };
    input = &input[1..];
    let status = take(&mut input, usize::from(status_len));
    let Ok(mut head) = ResponseHead::new(status) else {
        assert_eq!(parse_status(status), None);
        return;
    };
    let code = parse_status(status).expect("accepted status parses");
    assert!((100..1000).contains(&code) && head.status() == code);
    assert!(!status.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0));

    let mut accepted: Vec<(&[u8], &[u8])> = Vec::new();
    while input.len() >= 2 {
        let (name_len, value_len) = (usize::from(input[0]), usize::from(input[1]));
        input = &input[2..];
        let name = take(&mut input, name_len);
        let value = take(&mut input, value_len);
        let before = head.as_bytes().len();
        match head.push_header(name, value) {
            Ok(()) => {
                let line = &head.as_bytes()[before..];
                let expected = [name, b": ", value, b"\r\n"].concat();
                assert_eq!(line, &expected[..], "the added line");
                for part in [name, value] {
                    assert!(
                        !part.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0),
                        "accepted {part:?}"
                    );
                }
                assert!(!name.is_empty() && !name.contains(&b':'));
                accepted.push((name, value));
            }
            Err(_) => assert_eq!(head.as_bytes().len(), before, "a refused header left bytes"),
        }
    }

    let bytes = head.as_bytes();
    assert!(!bytes.contains(&0), "NUL in the head");
    let got = lines(bytes);
    assert_eq!(got.len(), 1 + accepted.len());
    assert_eq!(got[0], status);

    // Through the encoder: its head holds the same lines, each still one line.
    let mut encoder = Http1Encoder::new(true, false, Persistence::new(true, true));
    encoder.start(head);
    let mut date = DateCache::new();
    let encoded = encoder
        .build(&[], true, Some(0), &mut date)
        .expect("started");
    let end = encoded
        .bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the head ends")
        + 2;
    let out = lines(&encoded.bytes[..end]);
    assert!(
        !encoded.bytes[..end].contains(&0),
        "NUL in the encoded head"
    );
    for (name, value) in &accepted {
        let line = [*name, b": ", *value].concat();
        assert!(out.contains(&&line[..]), "lost {line:?}");
    }
});
