//! Benchmarks of response encoding, the Python-free half of `start_response` and of
//! sending a WSGI response: `ResponseHead` (status and header validation) and
//! `Http1Encoder` (framing headers, `Date`, `Connection`, body framing). Three cases:
//! a hello response (2 headers, 13-byte body given whole), a typical framework response
//! (8 headers, 2 KiB body given whole) and a streamed response (no length, so chunked on
//! HTTP/1.1: 16 messages of one 4 KiB part, the first carrying the head, then the end).
//! Each iteration does all of it, from status and header byte slices to encoded messages,
//! allocations included, as a Python thread does per request; inputs are built before
//! timing. Throughput is reported in bytes of encoded output. No I/O, no Python.
//!
//! Run with `cargo bench --bench response`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spindle::http::date::DateCache;
use spindle::http::response::{Http1Encoder, ResponseHead};
use spindle::http::Persistence;

/// One response to a keep-alive HTTP/1.1 GET.
struct Case<'a> {
    name: &'static str,
    status: &'a [u8],
    headers: Vec<(&'a [u8], &'a [u8])>,
    /// The parts of each message; the last message ends the response.
    messages: Vec<Vec<&'a [u8]>>,
    /// The body's length, passed with the last message (the whole body given at once).
    known_total: Option<u64>,
}

/// Encodes `case`: the head from its status and headers, then one message per entry of
/// `messages`. Returns the number of bytes encoded.
fn encode(case: &Case<'_>, date: &mut DateCache) -> usize {
    let mut head = ResponseHead::new(case.status).unwrap();
    for &(name, value) in &case.headers {
        head.push_header(name, value).unwrap();
    }
    let mut encoder = Http1Encoder::new(true, false, Persistence::new(true, true));
    encoder.start(head);
    let mut encoded = 0;
    for (i, parts) in case.messages.iter().enumerate() {
        let end = i + 1 == case.messages.len();
        let known_total = case.known_total.filter(|_| end);
        let message = encoder.build(parts, end, known_total, date).unwrap();
        encoded += black_box(message.bytes).len();
    }
    encoded
}

fn bench_response(c: &mut Criterion) {
    // What a Flask or Django view typically sends: a rendered page with a session
    // cookie, a CSRF cookie and the usual security and caching headers.
    let page: Vec<u8> = (0..2048u32).map(|i| b'a' + (i % 26) as u8).collect();
    let page_length = page.len().to_string();
    // A generator yielding 16 pieces of 4 KiB, without a length.
    let pieces: Vec<Vec<u8>> = (0..16u8)
        .map(|n| (0..4096u32).map(|i| b'a' + ((i as u8) ^ n) % 26).collect())
        .collect();

    let cases = [
        // `return [b"Hello, world!"]` with its length declared.
        Case {
            name: "hello",
            status: b"200 OK",
            headers: vec![
                (b"Content-Type", b"text/plain; charset=utf-8"),
                (b"Content-Length", b"13"),
            ],
            messages: vec![vec![b"Hello, world!"]],
            known_total: Some(13),
        },
        Case {
            name: "framework_8_headers_2k",
            status: b"200 OK",
            headers: vec![
                (b"Content-Type", b"text/html; charset=utf-8"),
                (b"Content-Length", page_length.as_bytes()),
                (
                    b"Set-Cookie",
                    b"session=eyJ1c2VyX2lkIjo0MiwiY3NyZiI6ImFiYzEyMyJ9.Zk3xQw.h9d8s7f6g5; HttpOnly; Path=/; SameSite=Lax; Secure",
                ),
                (
                    b"Set-Cookie",
                    b"csrftoken=Xq2b9LrT4mWz7Pk1Vn8Hc3Jd6Fs0Ga5Y; expires=Sat, 20 Nov 2027 16:00:00 GMT; Max-Age=31449600; Path=/; SameSite=Lax",
                ),
                (b"Cache-Control", b"private, no-cache, max-age=0, must-revalidate"),
                (b"Vary", b"Cookie, Accept-Encoding"),
                (b"X-Frame-Options", b"DENY"),
                (b"X-Request-Id", b"7f3e2a1c-9b8d-4e6f-a5c4-3b2a1908f7e6"),
            ],
            messages: vec![vec![&page]],
            known_total: Some(page.len() as u64),
        },
        Case {
            name: "chunked_16x4k",
            status: b"200 OK",
            headers: vec![(b"Content-Type", b"text/csv; charset=utf-8")],
            messages: pieces
                .iter()
                .map(|piece| vec![piece.as_slice()])
                .chain([vec![]])
                .collect(),
            known_total: None,
        },
    ];

    let mut date = DateCache::new();
    let mut group = c.benchmark_group("response");
    for case in &cases {
        let encoded = encode(case, &mut date);
        group.throughput(Throughput::Bytes(encoded as u64));
        group.bench_function(case.name, |b| {
            b.iter(|| encode(black_box(case), &mut date));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_response);
criterion_main!(benches);
