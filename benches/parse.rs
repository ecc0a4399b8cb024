//! Benchmarks of the HTTP/1.1 core on realistic inputs: `parse_head` on a
//! minimal GET, a typical browser request and a 40-header request, and the
//! chunked `BodyDecoder` on a 64 KiB body sent in 4 KiB chunks. Inputs are built
//! before timing; throughput is reported in bytes of input. No I/O, no Python.
//!
//! Run with `cargo bench --bench parse`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spindle::http::{parse_head, BodyDecoder, BodyFraming, Limits};

const MINIMAL_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";

const BROWSER_GET: &[u8] = b"GET /articles/2024/http-parsing?ref=home&utm_source=feed HTTP/1.1\r\n\
Host: www.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.9,fr;q=0.8\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Connection: keep-alive\r\n\
Upgrade-Insecure-Requests: 1\r\n\
Sec-Fetch-Dest: document\r\n\
Sec-Fetch-Mode: navigate\r\n\
Sec-Fetch-Site: none\r\n\
Cookie: session=4f2a9c1e7b; theme=dark; _ga=GA1.2.1234567890.1700000000\r\n\r\n";

/// A request with 40 header lines, like one that went through a few proxies
/// and tracing layers.
fn forty_headers() -> Vec<u8> {
    let mut buf =
        b"POST /api/v2/orders?expand=items HTTP/1.1\r\nHost: api.example.com\r\n".to_vec();
    buf.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: 0\r\n");
    for i in 0..37 {
        buf.extend_from_slice(
            format!("X-Trace-Header-{i:02}: value-{i}-0123456789abcdef0123456789\r\n").as_bytes(),
        );
    }
    buf.extend_from_slice(b"\r\n");
    buf
}

/// 64 KiB of payload as 16 chunks of 4 KiB, then the last chunk.
fn chunked_64k() -> Vec<u8> {
    let mut buf = Vec::new();
    for chunk in 0..16u8 {
        buf.extend_from_slice(b"1000\r\n");
        buf.extend((0..4096u32).map(|i| (i as u8) ^ chunk));
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"0\r\n\r\n");
    buf
}

fn bench_parse_head(c: &mut Criterion) {
    let limits = Limits::default();
    let forty = forty_headers();
    let mut group = c.benchmark_group("parse_head");
    for (name, request) in [
        ("minimal_get", MINIMAL_GET),
        ("browser_get", BROWSER_GET),
        ("forty_headers", forty.as_slice()),
    ] {
        assert!(parse_head(request, &limits).unwrap().is_some(), "{name}");
        group.throughput(Throughput::Bytes(request.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| parse_head(black_box(request), &limits));
        });
    }
    group.finish();
}

fn bench_chunked(c: &mut Criterion) {
    let input = chunked_64k();
    let mut out = Vec::with_capacity(64 * 1024);
    let mut group = c.benchmark_group("body");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("chunked_64k_in_4k_chunks", |b| {
        b.iter(|| {
            out.clear();
            let mut decoder = BodyDecoder::new(BodyFraming::Chunked, None).unwrap();
            let consumed = decoder.decode(black_box(&input), &mut out).unwrap();
            debug_assert!(decoder.is_done() && consumed == input.len());
            consumed
        });
    });
    group.finish();
}

criterion_group!(benches, bench_parse_head, bench_chunked);
criterion_main!(benches);
