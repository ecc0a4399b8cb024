//! The forwarding-field resolution (`http::forwarded::resolve`) over arbitrary header lists.
//!
//! Input: byte 0 chooses the rules (hops 1-4, `--forwarded-host`, gunicorn's scheme fields
//! or one of our own), the rest is header lines split at LF, each `name:value`. A line
//! whose first byte is below 8 takes one of the forwarding field names instead of that
//! byte, so the fuzzer need not spell them.
//!
//! Properties, beyond "no panic":
//! - the client is `None` (the real peer stands) or an address written in an
//!   `X-Forwarded-For` or `Forwarded` value;
//! - with `X-Forwarded-For` present, it is exactly its hops-th entry from the right (all
//!   its lines are one comma list), parsed as a node: a second, plain implementation;
//! - a host is a span inside an `X-Forwarded-Host` or `Forwarded` value, and only with
//!   `--forwarded-host`; a scheme only with a scheme field or `Forwarded`;
//! - `TrustedAddrs::parse` over the same bytes never panics, and what it accepts holds
//!   the addresses it lists.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spindle::http::forwarded::{parse_node, resolve, ForwardedRules, TrustedAddrs};
use spindle::http::{HeaderSpan, Span};

const NAMES: [&[u8]; 8] = [
    b"X-Forwarded-For",
    b"Forwarded",
    b"X-Forwarded-Proto",
    b"X-Forwarded-Host",
    b"X-Forwarded-Protocol",
    b"X-Forwarded-Ssl",
    b"X-Scheme",
    b"x-forwarded-for",
];

fn span(start: usize, end: usize) -> Span {
    Span {
        start: start as u32,
        end: end as u32,
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, lines)) = input.split_first() else {
        return;
    };
    let rules = ForwardedRules {
        hops: 1 + usize::from(selector & 3),
        host: selector & 4 != 0,
        scheme_headers: if selector & 8 == 0 {
            ForwardedRules::default().scheme_headers
        } else {
            vec![("X-Scheme".to_owned(), "https".to_owned())]
        },
    };

    // The head: each line as `name:value`, trimmed like the head parser trims values.
    let mut bytes = Vec::new();
    let mut headers = Vec::new();
    for line in lines.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        let name = match name {
            [b, ..] if *b < 8 => NAMES[usize::from(*b)],
            _ => name,
        };
        let n0 = bytes.len();
        bytes.extend_from_slice(name);
        let n1 = bytes.len();
        bytes.extend_from_slice(b": ");
        let v0 = bytes.len();
        bytes.extend_from_slice(value);
        let v1 = bytes.len();
        bytes.extend_from_slice(b"\r\n");
        headers.push(HeaderSpan {
            name: span(n0, n1),
            value: span(v0, v1),
        });
    }
    let named = |h: &HeaderSpan, name: &[u8]| h.name.get(&bytes).eq_ignore_ascii_case(name);

    let out = resolve(&bytes, &headers, &rules);

    if let Some(client) = out.client {
        // Written somewhere: some piece of an address-carrying value, between delimiters.
        let written = headers
            .iter()
            .filter(|h| named(h, b"x-forwarded-for") || named(h, b"forwarded"))
            .flat_map(|h| h.value.get(&bytes).split(|&b| b",;=\" \t".contains(&b)))
            .any(|piece| parse_node(piece) == Some(client));
        assert!(written, "client {client:?} is in no field");
    }
    if headers.iter().any(|h| named(h, b"x-forwarded-for")) {
        let list: Vec<&[u8]> = headers
            .iter()
            .filter(|h| named(h, b"x-forwarded-for"))
            .flat_map(|h| h.value.get(&bytes).split(|&b| b == b','))
            .collect();
        let expected = list
            .len()
            .checked_sub(rules.hops)
            .and_then(|i| parse_node(trim(list[i])));
        assert_eq!(out.client, expected, "X-Forwarded-For entry");
    }
    if let Some(host) = out.host {
        assert!(rules.host, "a host without --forwarded-host");
        assert!(!host.is_empty());
        let inside = headers.iter().any(|h| {
            (named(h, b"x-forwarded-host") || named(h, b"forwarded"))
                && h.value.start <= host.start
                && host.end <= h.value.end
        });
        assert!(inside, "host span outside the fields");
    }
    if out.https.is_some() {
        assert!(headers.iter().any(|h| named(h, b"forwarded")
            || rules
                .scheme_headers
                .iter()
                .any(|(n, _)| named(h, n.as_bytes()))));
    }

    // The trusted-address lists of the settings, over the same bytes.
    if let Ok(text) = std::str::from_utf8(lines) {
        if let Ok(trusted) = TrustedAddrs::parse(text) {
            for entry in text.split(',').map(str::trim) {
                if let Ok(ip) = entry.parse::<std::net::IpAddr>() {
                    assert!(trusted.contains(ip), "{entry} listed but not trusted");
                }
            }
        }
    }
});
