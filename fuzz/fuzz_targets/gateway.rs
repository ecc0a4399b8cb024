//! The parsers of the protocols nginx speaks to application servers: uwsgi
//! (`http::uwsgi::parse`), SCGI (`http::scgi::parse`) and FastCGI (`http::fastcgi`: records,
//! PARAMS, the STDIN body decoder), on arbitrary bytes. The first input byte chooses the
//! parser, the next two the split points.
//!
//! Properties, beyond "no panic":
//! - a head (uwsgi, SCGI) or record (FastCGI) is decided by the bytes it says it took: every
//!   prefix answers "need more" or exactly what the whole answers; an accepted one took no
//!   more than the input, and the same bytes alone give the same answer; every span of an
//!   accepted head lies inside what it took;
//! - a record takes exactly its header, content and padding;
//! - the STDIN decoder gives the same body and the same end fed whole or in three pieces,
//!   never outputs more than it consumed, and never consumes past the end of the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spindle::http::cgi::CgiHead;
use spindle::http::fastcgi::{parse_params, parse_record, StdinDecoder, HEADER};
use spindle::http::{scgi, uwsgi, Limits, Span};

fn spans_inside(head: &CgiHead, taken: usize) {
    let inside = |s: Span| {
        assert!(
            s.start <= s.end && s.end as usize <= taken,
            "{s:?} outside {taken}"
        )
    };
    for s in [head.method, head.target, head.path, head.query] {
        inside(s);
    }
    for h in head.headers.iter().chain(&head.vars) {
        inside(h.name);
        inside(h.value);
    }
    for s in head.remote_addr.iter().chain(&head.remote_port) {
        inside(*s);
    }
}

type HeadParser =
    fn(&[u8], &Limits) -> Result<Option<(CgiHead, usize)>, spindle::http::cgi::CgiError>;

fn check_head(parse: HeadParser, data: &[u8], splits: [usize; 2]) {
    let limits = Limits::default();
    let whole = parse(data, &limits);
    for split in splits {
        let cut = split % (data.len() + 1);
        let prefix = parse(&data[..cut], &limits);
        assert!(
            prefix == Ok(None) || prefix == whole,
            "prefix {cut} gave {prefix:?}, whole {whole:?}"
        );
    }
    if let Ok(Some((head, taken))) = &whole {
        assert!(*taken <= data.len(), "took {taken} of {}", data.len());
        assert_eq!(parse(&data[..*taken], &limits), whole);
        spans_inside(head, *taken);
    }
}

fn check_fastcgi(data: &[u8], splits: [usize; 2]) {
    let whole = parse_record(data);
    for split in splits {
        let cut = split % (data.len() + 1);
        let prefix = parse_record(&data[..cut]);
        assert!(
            prefix == Ok(None) || prefix == whole,
            "prefix {cut}: {prefix:?} vs {whole:?}"
        );
    }
    if let Ok(Some(record)) = &whole {
        assert!(record.len <= data.len());
        assert_eq!(record.content.start, HEADER);
        let padding = data[6] as usize;
        assert_eq!(record.len, HEADER + record.content.len() + padding);
        // PARAMS content: whatever it holds, the spans stay inside it.
        if let Ok(head) = parse_params(&data[record.content.clone()], &Limits::default()) {
            spans_inside(&head, record.content.len());
        }
    }
}

fn check_stdin(data: &[u8], splits: [usize; 2]) {
    let mut whole_out = Vec::new();
    let mut whole = StdinDecoder::new(1);
    let whole_result = whole.decode(data, &mut whole_out);
    if let Ok(n) = whole_result {
        assert!(n <= data.len());
        assert!(
            whole_out.len() <= n,
            "output {} from {n} bytes",
            whole_out.len()
        );
    }

    let mut cuts = [splits[0] % (data.len() + 1), splits[1] % (data.len() + 1)];
    cuts.sort_unstable();
    let mut pieces_out = Vec::new();
    let mut pieces = StdinDecoder::new(1);
    let mut at = 0;
    let mut failed = false;
    for end in [cuts[0], cuts[1], data.len()] {
        let start = at;
        if start > end {
            continue;
        }
        match pieces.decode(&data[start..end], &mut pieces_out) {
            Ok(n) => {
                at = start + n;
                if pieces.is_done() {
                    break;
                }
                if n < end - start {
                    break;
                }
            }
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    match whole_result {
        Ok(n) => {
            assert!(!failed, "whole decoded, pieces failed");
            assert_eq!(pieces_out, whole_out, "body differs");
            assert_eq!(pieces.is_done(), whole.is_done());
            if whole.is_done() {
                assert_eq!(at, n, "consumed differently up to the end");
            }
        }
        Err(_) => assert!(
            failed || !pieces.is_done(),
            "whole failed, pieces ended cleanly"
        ),
    }
}

fuzz_target!(|input: &[u8]| {
    let (which, splits, data) = match input {
        [w, a, b, rest @ ..] => (*w, [*a as usize, *b as usize], rest),
        _ => return,
    };
    match which % 4 {
        0 => check_head(uwsgi::parse, data, splits),
        1 => check_head(scgi::parse, data, splits),
        2 => check_fastcgi(data, splits),
        _ => check_stdin(data, splits),
    }
});
