//! The request-head parser (`http::parse_head`) on arbitrary bytes.
//!
//! Input: byte 0 chooses the `Limits` (the defaults, or small ones that the fuzzer can
//! reach), bytes 1-3 choose three split points, the rest is what the client sent.
//!
//! Properties, beyond "no panic" (debug assertions are on, so the parser's own checks that
//! httparse agrees with its line scanner count too):
//! - split: the buffer as it grows read by read (cut at the chosen points) answers "need
//!   more" until it answers exactly what the whole buffer answers, head or error;
//! - an accepted head is exactly `head_len` bytes: one byte less needs more, and those
//!   bytes alone give the same head; its spans lie inside it, in order;
//! - an accepted head keeps the message rules in its fields: token names, no CTL in values
//!   (trimmed), one Host (required on 1.1), framing that agrees with the one kind of
//!   length field present (never both), keep-alive and `Expect` as the fields say;
//! - the limits hold for an accepted head (line lengths, header count, head size);
//! - re-serialised from its parts (method, target, version, one `name: value` line per
//!   header) an accepted head parses to an equivalent head: the same parts, framing,
//!   keep-alive, `Expect` and `HEAD`-ness.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spindle::http::{parse_head, BodyFraming, Limits, ParsedHead, Version};

fn limits_for(selector: u8) -> Limits {
    if selector < 128 {
        return Limits::default();
    }
    // Small limits, so that inputs of a few dozen bytes reach every threshold.
    let s = usize::from(selector & 0x7f);
    Limits {
        max_request_line: 8 + s % 32,
        max_headers: s % 5,
        max_field_size: 4 + (s / 4) % 32,
        max_head_size: 16 + s,
    }
}

/// The head as a client that sends each part once, plainly, would write it.
fn reserialise(buf: &[u8], head: &ParsedHead) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.head_len + 4 * head.headers.len());
    out.extend_from_slice(head.method.get(buf));
    out.push(b' ');
    out.extend_from_slice(head.target.get(buf));
    out.push(b' ');
    out.extend_from_slice(head.version.as_str().as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in &head.headers {
        out.extend_from_slice(h.name.get(buf));
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.get(buf));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Same parts, same decisions (spans differ: they index different buffers).
fn assert_equivalent(a_buf: &[u8], a: &ParsedHead, b_buf: &[u8], b: &ParsedHead) {
    assert_eq!(a.method.get(a_buf), b.method.get(b_buf), "method");
    assert_eq!(a.target.get(a_buf), b.target.get(b_buf), "target");
    assert_eq!(a.path.get(a_buf), b.path.get(b_buf), "path");
    assert_eq!(a.query.get(a_buf), b.query.get(b_buf), "query");
    assert_eq!(a.version, b.version, "version");
    assert_eq!(a.headers.len(), b.headers.len(), "header count");
    for (x, y) in a.headers.iter().zip(&b.headers) {
        assert_eq!(x.name.get(a_buf), y.name.get(b_buf), "header name");
        assert_eq!(x.value.get(a_buf), y.value.get(b_buf), "header value");
    }
    assert_eq!(a.framing, b.framing, "framing");
    assert_eq!(a.keep_alive, b.keep_alive, "keep_alive");
    assert_eq!(a.expect_continue, b.expect_continue, "expect_continue");
    assert_eq!(a.is_head, b.is_head, "is_head");
}

/// What an accepted head promises about its fields (ARCHITECTURE.md §5: what is refused
/// because it smuggles), read again from the fields themselves.
fn check_message_rules(buf: &[u8], head: &ParsedHead) {
    let fields = |name: &'static [u8]| {
        head.headers
            .iter()
            .filter(move |h| h.name.get(buf).eq_ignore_ascii_case(name))
            .map(|h| h.value.get(buf))
    };
    for h in &head.headers {
        let (name, value) = (h.name.get(buf), h.value.get(buf));
        assert!(
            !name.is_empty()
                && name
                    .iter()
                    .all(|&b| b.is_ascii_graphic() && !b"\"(),/:;<=>?@[\\]{}".contains(&b))
        );
        assert!(
            value
                .iter()
                .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)),
            "CTL in a value"
        );
        assert!(!value.starts_with(b" ") && !value.starts_with(b"\t"));
        assert!(!value.ends_with(b" ") && !value.ends_with(b"\t"));
    }
    let target = head.target.get(buf);
    assert!(
        target.iter().all(|&b| b.is_ascii_graphic() && b != b'#'),
        "target bytes"
    );
    assert_eq!(head.is_head, head.method.get(buf) == b"HEAD");

    let hosts = fields(b"host").count();
    assert!(hosts <= 1, "two Host fields");
    if head.version == Version::Http11 {
        assert_eq!(hosts, 1, "HTTP/1.1 without Host");
    }
    let te: Vec<&[u8]> = fields(b"transfer-encoding").collect();
    let cl: Vec<&[u8]> = fields(b"content-length").collect();
    match head.framing {
        BodyFraming::Chunked => {
            assert!(cl.is_empty(), "Content-Length with chunked");
            assert_eq!(head.version, Version::Http11);
            assert_eq!(te.len(), 1);
            assert!(te[0].eq_ignore_ascii_case(b"chunked"), "{:?}", te[0]);
        }
        BodyFraming::Length(n) => {
            assert!(te.is_empty() && !cl.is_empty());
            for value in cl {
                assert!(!value.is_empty() && value.iter().all(u8::is_ascii_digit));
                let text = std::str::from_utf8(value).unwrap();
                assert_eq!(text.parse::<u64>(), Ok(n), "Content-Length values differ");
            }
        }
        BodyFraming::None => assert!(te.is_empty() && cl.is_empty()),
    }

    let tokens: Vec<&[u8]> = fields(b"connection")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| t.trim_ascii())
        .collect();
    let has = |word: &[u8]| tokens.iter().any(|t| t.eq_ignore_ascii_case(word));
    let keep_alive = match head.version {
        Version::Http11 => !has(b"close"),
        Version::Http10 => has(b"keep-alive") && !has(b"close"),
    };
    assert_eq!(head.keep_alive, keep_alive, "keep-alive");
    let expect = fields(b"expect").any(|v| v.eq_ignore_ascii_case(b"100-continue"));
    assert_eq!(
        head.expect_continue,
        expect && head.version == Version::Http11
    );
}

fuzz_target!(|input: &[u8]| {
    let (limits, splits, buf) = match input {
        [l, a, b, c, rest @ ..] => (limits_for(*l), [*a, *b, *c], rest),
        _ => return,
    };
    let whole = parse_head(buf, &limits);

    // Read by read: the cuts in increasing order, then the whole buffer.
    let mut cuts: Vec<usize> = splits
        .iter()
        .map(|&s| usize::from(s) * buf.len() / 255)
        .collect();
    cuts.sort_unstable();
    for &cut in &cuts {
        match parse_head(&buf[..cut], &limits) {
            Ok(None) => {}
            early => {
                assert_eq!(early, whole, "prefix of {cut} bytes decided differently");
                break;
            }
        }
    }

    let Ok(Some(head)) = whole else {
        return;
    };
    let len = head.head_len;
    assert!(
        len <= buf.len() && len <= limits.max_head_size,
        "head_len {len}"
    );
    assert_eq!(parse_head(&buf[..len], &limits), Ok(Some(head.clone())));
    assert_eq!(
        parse_head(&buf[..len - 1], &limits),
        Ok(None),
        "head ends early"
    );

    // Spans in order and inside the head.
    let request_line = head.method.start as usize..head.target.end as usize + 9;
    assert!(head.method.end < head.target.start && head.target.end as usize <= len);
    assert!(request_line.end - request_line.start <= limits.max_request_line);
    assert!(head.headers.len() <= limits.max_headers, "header count");
    let mut last_end = head.target.end;
    for h in &head.headers {
        assert!(
            h.name.start > last_end && !h.name.is_empty(),
            "header order"
        );
        assert!(h.name.end <= h.value.start && h.value.end as usize <= len);
        let line = (h.value.end - h.name.start) as usize;
        assert!(line <= limits.max_field_size, "header line of {line} bytes");
        last_end = h.value.end;
    }
    let path = head.path.get(buf);
    let query = head.query.get(buf);
    assert!(head.target.get(buf).ends_with(query));
    assert!(path.len() + query.len() <= head.target.len());

    check_message_rules(buf, &head);

    // Re-serialised, under limits that fit it (the plain form may be longer: `a:b` becomes
    // `a: b`).
    let plain = reserialise(buf, &head);
    let roomy = Limits {
        max_request_line: plain.len(),
        max_headers: head.headers.len(),
        max_field_size: plain.len(),
        max_head_size: plain.len(),
    };
    match parse_head(&plain, &roomy) {
        Ok(Some(again)) => {
            assert_eq!(again.head_len, plain.len());
            assert_equivalent(buf, &head, &plain, &again);
        }
        other => panic!(
            "re-serialised head {:?} gave {other:?}",
            String::from_utf8_lossy(&plain)
        ),
    }
});
