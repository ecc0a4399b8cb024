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
//! - the limits hold for an accepted head (line lengths, header count, head size);
//! - re-serialised from its parts (method, target, version, one `name: value` line per
//!   header) an accepted head parses to an equivalent head: the same parts, framing,
//!   keep-alive, `Expect` and `HEAD`-ness.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spindle::http::{parse_head, Limits, ParsedHead};

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
