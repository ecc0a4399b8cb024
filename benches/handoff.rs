//! The hand-off round trip without sockets or Python: an "I/O thread" (the bench thread)
//! queues requests, a responder thread (standing in for a Python thread with an empty app)
//! takes them and pushes a complete reply to the I/O thread's mailbox, and the I/O side
//! drains its mailbox. Measured per request, one at a time (every request pays both
//! wake-ups) and in batches of 64 (one wake-up serves many: ARCHITECTURE.md §4).
//!
//! Run with `cargo bench --bench handoff`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spindle::handoff::{
    request_queue, ConnToken, Exchange, IoMailbox, ReplyMsg, ReplyTo, Request, RequestBody,
    RequestHead, ResponseEncoder,
};
use spindle::http::{parse_head, Limits};

const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, World!";

fn request(mailbox: &Arc<IoMailbox>, seq: u32) -> Request {
    let head = Bytes::from_static(HEAD);
    let parsed = parse_head(&head, &Limits::default()).unwrap().unwrap();
    let addr: SocketAddr = "127.0.0.1:8000".parse().unwrap();
    Request {
        encoder: ResponseEncoder::for_http1(&parsed, true),
        head: RequestHead::from_http1(head, parsed, addr, addr),
        body: RequestBody::Complete(Bytes::new()),
        started: Instant::now(),
        queued: Instant::now(),
        reply: ReplyTo {
            mailbox: mailbox.clone(),
            conn: ConnToken {
                slot: 0,
                generation: 1,
            },
            seq,
            exchange: Exchange::new(false),
        },
    }
}

fn round_trip(c: &mut Criterion) {
    let mailbox = IoMailbox::new();
    let (tx, rx) = request_queue(1024, Default::default());
    // The responder: what a Python thread does around an empty app.
    let responder = std::thread::spawn(move || {
        while let Ok(req) = rx.recv() {
            req.reply.send(ReplyMsg::Data {
                bytes: RESPONSE.to_vec(),
                end: true,
                persistence: spindle::http::Persistence::new(true, true),
                counted: false,
            });
        }
    });
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);

    let mut group = c.benchmark_group("handoff");
    for batch in [1u64, 64] {
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(
            BenchmarkId::new("round_trip", batch),
            &batch,
            |b, &batch| {
                b.iter_batched(
                    || {
                        (0..batch)
                            .map(|i| request(&mailbox, i as u32))
                            .collect::<Vec<_>>()
                    },
                    |requests| {
                        for req in requests {
                            tx.try_send(req).map_err(drop).expect("the queue has room");
                        }
                        let mut replies = 0;
                        while replies < batch {
                            let (_, routed) = mailbox.poll_drain(&mut cx, drop);
                            replies += routed as u64;
                        }
                    },
                    criterion::BatchSize::SmallInput,
                );
            },
        );
    }
    group.finish();
    drop(tx);
    responder.join().unwrap();
}

/// What every request allocates for its exchange (cancellation, window, body channel).
fn exchange_new(c: &mut Criterion) {
    c.bench_function("handoff/exchange_new", |b| {
        b.iter(|| std::hint::black_box(Exchange::new(false)))
    });
    c.bench_function("handoff/exchange_new_streamed_body", |b| {
        b.iter(|| std::hint::black_box(Exchange::new(true)))
    });
}

criterion_group!(benches, round_trip, exchange_new);
criterion_main!(benches);
