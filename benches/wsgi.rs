//! The WSGI bridge against the real embedded CPython, in-process and without sockets:
//! - `environ`: `Interp::environ` for a minimal GET and a typical browser request (12
//!   header lines), one environ dict per iteration, on the main interpreter;
//! - `wsgi_round_trip`: the hand-off through a real Python thread running an empty app
//!   (`benches/apps/empty.py`): queue a request, wait for its complete reply on the
//!   mailbox; one at a time and in batches of 64. Set beside `handoff/round_trip` (same
//!   spinning no-op waker on the I/O side), the difference is the Python side's cost;
//! - `wsgi_request`: one whole request: raw bytes, `parse_head`, the request, the Python
//!   thread running `perf/apps/hello.py`, the reply messages concatenated into the
//!   response bytes.
//!
//! One Python thread, on the main interpreter unless `SPINDLE_INTERPRETERS` says otherwise
//! (`SPINDLE_INTERPRETERS=sub` runs the Python-thread benchmarks in an own-GIL
//! sub-interpreter, Python 3.12+; `environ` then is skipped). Each app gets its own
//! `Pool` in the one embedded CPython, started before its benchmarks and stopped after them.
//!
//! Run with `cargo bench --bench wsgi`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

use spindle::handoff::{
    ConnToken, Exchange, IoMailbox, ReplyMsg, ReplyTo, Request, RequestBody, RequestHead,
    RequestSender, ResponseEncoder,
};
use spindle::http::{parse_head, Limits};
use spindle::py::object::{Attached, Gil};
use spindle::py::Pool;
use spindle::Config;

mod common;

use common::{BROWSER_GET, MINIMAL_GET};

const PEER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 54321));
const LOCAL: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8000));

/// CPython, initialised once in this process (the bench embeds it: the server itself runs
/// inside a Python that started it). The main thread's state is kept detached between
/// uses, so the Python thread of a main-interpreter pool can take the GIL.
struct Embedded {
    main: *mut pyo3_ffi::PyThreadState,
}

impl Embedded {
    fn get() -> &'static Embedded {
        static EMBEDDED: std::sync::OnceLock<EmbeddedPtr> = std::sync::OnceLock::new();
        &EMBEDDED
            .get_or_init(|| {
                // SAFETY: called once, before any other Python call in this process; the
                // initialising thread then holds the GIL, and saving its state releases it.
                let main = unsafe {
                    pyo3_ffi::Py_InitializeEx(0);
                    pyo3_ffi::PyEval_SaveThread()
                };
                EmbeddedPtr(Embedded { main })
            })
            .0
    }

    /// Runs `f` attached to the main interpreter. Benchmarks run on criterion's (main)
    /// thread, the one that initialised Python.
    fn with_gil<R>(&self, f: impl for<'py> FnOnce(Gil<'py>) -> R) -> R {
        // SAFETY: `main` is the initialising thread's state, detached since `get`; criterion
        // runs every benchmark on that thread.
        let attached = unsafe { Attached::restore(self.main) };
        f(attached.gil())
    }
}

struct EmbeddedPtr(Embedded);
// SAFETY: the pointer is only dereferenced by CPython, on the thread that made it (see
// `with_gil`); the wrapper only lets the OnceLock hold it.
unsafe impl Send for EmbeddedPtr {}
// SAFETY: as above.
unsafe impl Sync for EmbeddedPtr {}

/// A running Python side with one Python thread, and the I/O side's ends: the request
/// queue's sender and one mailbox.
struct Python {
    pool: Option<Pool>,
    requests: Option<RequestSender>,
    mailbox: Arc<IoMailbox>,
    /// "main" or "sub": what the benchmark ids say.
    mode: &'static str,
}

impl Python {
    /// Starts a pool with `app` (MODULE:NAME) found in `dir` (relative to the crate).
    fn start(app: &str, dir: &str) -> Python {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut args = vec![
            "spindle".to_string(),
            app.to_string(),
            "--pythonpath".into(),
            dir.to_string_lossy().into_owned(),
            "--py-threads".into(),
            "1".into(),
            "--io-threads".into(),
            "1".into(),
        ];
        if std::env::var_os("SPINDLE_INTERPRETERS").is_none() {
            args.extend(["--interpreters".into(), "main".into()]);
        }
        let config = Arc::new(Config::from_arg_list(args).expect("bench config"));
        spindle::log::set_level(config.log_level);
        // The driver only names itself on the demo page; no I/O thread runs here.
        let (pool, requests) = Embedded::get()
            .with_gil(|gil| Pool::start(gil, &config, "epoll", None, None))
            .expect("Python starts");
        let mode = match pool.main_interp() {
            Some(_) => "main",
            None => "sub",
        };
        Python {
            pool: Some(pool),
            requests: Some(requests),
            mailbox: IoMailbox::new(),
            mode,
        }
    }

    fn requests(&self) -> &RequestSender {
        self.requests.as_ref().expect("running")
    }

    /// Closes the queue (the Python thread ends) and releases the pool.
    fn stop(mut self) {
        drop(self.requests.take());
        let mut pool = self.pool.take().expect("running");
        pool.join();
        Embedded::get().with_gil(|gil| pool.release(gil));
    }

    fn request(&self, head: Bytes, seq: u32) -> Request {
        let parsed = parse_head(&head, &Limits::default())
            .expect("valid request")
            .expect("complete head");
        Request {
            encoder: ResponseEncoder::for_http1(&parsed, true),
            head: RequestHead::from_http1(head, parsed, PEER, LOCAL),
            body: RequestBody::Complete(Bytes::new()),
            started: Instant::now(),
            queued: Instant::now(),
            reply: ReplyTo {
                mailbox: self.mailbox.clone(),
                conn: ConnToken {
                    slot: 0,
                    generation: 1,
                },
                seq,
                exchange: Exchange::new(false),
            },
        }
    }

    /// Drains the mailbox (spinning, like an I/O thread that never sleeps) until `n`
    /// responses have ended, handing the bytes of each reply to `sink`.
    fn wait_for_responses(&self, n: usize, mut sink: impl FnMut(Vec<u8>)) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut ended = 0;
        while ended < n {
            let _ = self.mailbox.poll_drain(&mut cx, |reply| match reply.msg {
                ReplyMsg::Data { bytes, end, .. } => {
                    sink(bytes);
                    ended += usize::from(end);
                }
                _ => panic!("the app's response should be plain data"),
            });
        }
    }

    /// One whole request: parse `raw`, hand it over, collect the response into `out`.
    fn serve(&self, raw: &'static [u8], out: &mut Vec<u8>) {
        out.clear();
        let request = self.request(Bytes::from_static(raw), 0);
        self.requests()
            .try_send(request)
            .map_err(drop)
            .expect("the queue has room");
        self.wait_for_responses(1, |bytes| out.extend_from_slice(&bytes));
    }
}

fn environ_and_round_trip(c: &mut Criterion) {
    let python = Python::start("empty:app", "benches/apps");
    bench_environ(c, &python);
    bench_round_trip(c, &python);
    python.stop();
}

fn bench_environ(c: &mut Criterion, python: &Python) {
    let mut group = c.benchmark_group("environ");
    group.throughput(Throughput::Elements(1));
    for (name, raw) in [("minimal_get", MINIMAL_GET), ("browser_get", BROWSER_GET)] {
        let head = Bytes::from_static(raw);
        let parsed = parse_head(&head, &Limits::default()).unwrap().unwrap();
        let head = RequestHead::from_http1(head, parsed, PEER, LOCAL);
        let body = RequestBody::Complete(Bytes::new());
        let Some(interp) = python.pool.as_ref().and_then(Pool::main_interp) else {
            eprintln!("environ/{name}: skipped (the app runs in a sub-interpreter)");
            continue;
        };
        // Attached to the main interpreter, as its Python thread would be (which waits).
        Embedded::get().with_gil(|gil| {
            let environ = || {
                interp
                    .environ(gil, &head, &body, || {
                        unreachable!("a complete body needs no stream")
                    })
                    .map_err(|err| err.summary())
                    .expect("environ")
            };
            let first = environ();
            let host = gil.str("HTTP_HOST").map_err(|err| err.summary()).unwrap();
            assert!(first.dict_get(host.borrow()).is_some(), "{name}: HTTP_HOST");
            drop((host, first));
            group.bench_function(name, |b| {
                b.iter(|| drop(std::hint::black_box(environ())));
            });
        });
    }
    group.finish();
}

fn bench_round_trip(c: &mut Criterion, python: &Python) {
    python.serve(MINIMAL_GET, &mut Vec::new());
    let mut first = Vec::new();
    python.serve(MINIMAL_GET, &mut first);
    assert!(
        first.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "empty app answers"
    );

    let mut group = c.benchmark_group("wsgi_round_trip");
    for batch in [1u32, 64] {
        group.throughput(Throughput::Elements(batch.into()));
        group.bench_with_input(BenchmarkId::new(python.mode, batch), &batch, |b, &batch| {
            b.iter_batched(
                || {
                    (0..batch)
                        .map(|seq| python.request(Bytes::from_static(MINIMAL_GET), seq))
                        .collect::<Vec<_>>()
                },
                |requests| {
                    for request in requests {
                        python
                            .requests()
                            .try_send(request)
                            .map_err(drop)
                            .expect("the queue has room");
                    }
                    python.wait_for_responses(batch as usize, drop);
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn whole_request(c: &mut Criterion) {
    let python = Python::start("hello:app", "perf/apps");
    let mut out = Vec::with_capacity(256);
    python.serve(MINIMAL_GET, &mut out);
    assert!(
        out.starts_with(b"HTTP/1.1 200 OK") && out.ends_with(b"Hello, World!"),
        "hello answers: {}",
        String::from_utf8_lossy(&out)
    );

    let mut group = c.benchmark_group("wsgi_request");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("hello", python.mode), |b| {
        b.iter(|| python.serve(std::hint::black_box(MINIMAL_GET), &mut out));
    });
    group.finish();
    python.stop();
}

criterion_group!(benches, environ_and_round_trip, whole_request);
criterion_main!(benches);
