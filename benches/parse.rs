//! Benchmarks of the HTTP/1.1 core on realistic inputs: `parse_head` on a
//! minimal GET, a typical browser request and a 40-header request, and the
//! chunked `BodyDecoder` on a 64 KiB body sent in 4 KiB chunks. Inputs are built
//! before timing; throughput is reported in bytes of input. No I/O, no Python.
//!
//! Run with `cargo bench --bench parse`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spindle::http::{parse_head, BodyDecoder, BodyFraming, Limits};

mod common;

use common::{BROWSER_GET, MINIMAL_GET};

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
