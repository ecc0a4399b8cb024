//! The hand-off round trip without sockets or Python: an "I/O thread" (the bench thread)
//! queues requests, a responder thread (standing in for a Python thread with an empty app)
//! takes them and pushes a complete reply to the I/O thread's mailbox, and the I/O side
//! drains its mailbox. Measured per request, one at a time (every request pays both
//! wake-ups) and in batches of 64 (one wake-up serves many: ARCHITECTURE.md §4).
//!
//! `handoff/answer`: one request at a time with the response reaching a real TCP socket's
//! far end, the two ways a reply goes: by the mailbox (the I/O side drains it and writes),
//! and directly (the I/O side lent the socket and the responder writes it itself; the I/O
//! side looks once the client has the bytes). ARCHITECTURE.md §4, "Direct answers".
//!
//! Run with `cargo bench --bench handoff`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spindle::handoff::{
    request_queue, ConnToken, Exchange, IoMailbox, LentSocket, Look, ReplyMsg, ReplyTo, Request,
    RequestBody, RequestHead, RequestSender, ResponseEncoder,
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

/// The responder: what a Python thread does around an empty app (its `ReplyTo::send`
/// writes directly when the socket is lent). Ends when the sender is dropped.
fn responder() -> (RequestSender, std::thread::JoinHandle<()>) {
    let (tx, rx) = request_queue(1024, Default::default());
    let thread = std::thread::spawn(move || {
        while let Ok(req) = rx.recv() {
            req.reply.send(ReplyMsg::Data {
                bytes: RESPONSE.to_vec(),
                end: true,
                persistence: spindle::http::Persistence::new(true, true),
                counted: false,
            });
        }
    });
    (tx, thread)
}

fn round_trip(c: &mut Criterion) {
    let mailbox = IoMailbox::new();
    let (tx, responder) = responder();
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

/// The server's end of a loopback connection, lent as the server lends it: a write that
/// never waits.
struct Lent(TcpStream);

impl LentSocket for Lent {
    fn write_now(&self, bytes: &[u8]) -> std::io::Result<usize> {
        (&self.0).write(bytes)
    }
}

fn answer(c: &mut Criterion) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    for s in [&client, &server] {
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(true).unwrap();
    }
    let lent: Arc<dyn LentSocket> = Arc::new(Lent(server.try_clone().unwrap()));
    let mut server = server;
    let mailbox = IoMailbox::new();
    let (tx, responder) = responder();
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut buf = [0u8; 256];
    // Spins until the client end holds the whole response, as a busy I/O thread would.
    let mut receive = |client: &mut TcpStream| {
        let mut got = 0;
        while got < RESPONSE.len() {
            match client.read(&mut buf[got..]) {
                Ok(0) => panic!("the connection closed"),
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) => panic!("read: {e}"),
            }
        }
        assert_eq!(&buf[..got], RESPONSE);
    };

    let mut group = c.benchmark_group("handoff/answer");
    group.throughput(Throughput::Elements(1));
    group.bench_function("mailbox", |b| {
        b.iter_batched(
            || request(&mailbox, 0),
            |req| {
                tx.try_send(req).map_err(drop).expect("the queue has room");
                let mut bytes = Vec::new();
                while bytes.is_empty() {
                    let _ = mailbox.poll_drain(&mut cx, |reply| {
                        if let ReplyMsg::Data { bytes: b, .. } = reply.msg {
                            bytes = b;
                        }
                    });
                }
                server.write_all(&bytes).unwrap();
                receive(&mut client);
            },
            criterion::BatchSize::SmallInput,
        );
    });
    group.bench_function("direct", |b| {
        b.iter_batched(
            || request(&mailbox, 0),
            |req| {
                let exchange = req.reply.exchange.clone();
                let socket = lent.clone();
                assert_eq!(
                    exchange.direct().lend(Some(move || Some(socket))),
                    Look::Watch
                );
                tx.try_send(req).map_err(drop).expect("the queue has room");
                receive(&mut client);
                // As the server learns it (the client's next request): the end, or, when
                // the writer had not yet settled, its message saying so.
                match exchange.direct().recall() {
                    Look::Answered(_) => {}
                    Look::Cut => {
                        let mut told = false;
                        while !told {
                            let _ = mailbox.poll_drain(&mut cx, |reply| {
                                told |= matches!(reply.msg, ReplyMsg::Answered { .. });
                            });
                        }
                    }
                    other => panic!("not answered directly: {other:?}"),
                }
            },
            criterion::BatchSize::SmallInput,
        );
    });
    group.finish();
    drop(tx);
    responder.join().unwrap();
}

criterion_group!(benches, round_trip, exchange_new, answer);
criterion_main!(benches);
