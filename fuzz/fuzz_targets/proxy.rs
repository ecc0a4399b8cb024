//! The PROXY protocol parser (`http::proxy::parse_proxy_header`) on arbitrary bytes.
//!
//! Properties, beyond "no panic":
//! - every prefix answers "need more" or exactly what the whole answers (the first two
//!   bytes choose two prefixes besides the exhaustive checks below);
//! - an accepted header is decided by its own bytes: the prefix one byte short needs more,
//!   the header alone gives the same answer, and changing every byte after it does not
//!   change the answer (the parser never reads past what it says it consumed);
//! - v1 never takes, or waits for, more than 107 bytes; v2 never more than its 16 fixed
//!   bytes and `V2_MAX_PAYLOAD`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spindle::http::proxy::{parse_proxy_header, V1_MAX_LEN, V2_MAX_PAYLOAD};

fuzz_target!(|input: &[u8]| {
    let (splits, data) = match input {
        [a, b, rest @ ..] => ([*a as usize, *b as usize], rest),
        _ => return,
    };
    let whole = parse_proxy_header(data);

    for split in splits {
        let cut = split % (data.len() + 1);
        let prefix = parse_proxy_header(&data[..cut]);
        assert!(
            prefix == Ok(None) || prefix == whole,
            "prefix {cut} gave {prefix:?}, whole {whole:?}"
        );
    }

    let v1 = data.first() == Some(&b'P');
    let max_len = if v1 { V1_MAX_LEN } else { 16 + V2_MAX_PAYLOAD };
    match whole {
        Ok(Some(header)) => {
            assert!(header.len <= data.len(), "consumed past the input");
            assert!(header.len <= max_len, "header of {} bytes", header.len);
            assert_eq!(parse_proxy_header(&data[..header.len]), whole);
            assert_eq!(parse_proxy_header(&data[..header.len - 1]), Ok(None));
            if header.len < data.len() {
                // What follows the header is not looked at.
                let mut changed = data.to_vec();
                for b in &mut changed[header.len..] {
                    *b = !*b;
                }
                assert_eq!(parse_proxy_header(&changed), whole);
            }
        }
        Ok(None) => {
            assert!(
                data.len() < max_len,
                "still waiting after {} bytes",
                data.len()
            );
        }
        Err(_) => {}
    }
});
