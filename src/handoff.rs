//! The only things I/O threads and Python threads share: the request queue, each I/O
//! thread's reply mailbox, and the per-request [`Exchange`]. No sockets and no Python
//! objects ever cross here: requests carry frozen bytes and offsets, replies carry bytes
//! and files.
//!
//! Wake-ups are the cost that matters (DESIGN.md §1: a cross-thread wake costs several µs,
//! the same order as a whole hello-world request). So:
//! - Python threads block on the request queue only when it is empty, and drain every
//!   queued request before they sleep again;
//! - an I/O thread is woken through its [`IoMailbox`] at most once per batch: the first
//!   reply pushed after the I/O thread began draining sets `notified` and wakes it; later
//!   pushes see the flag and only enqueue.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use crate::http::ParsedHead;

/// A request handed from an I/O thread to a Python thread.
pub struct Request {
    /// The request head, frozen out of the connection's read buffer without a copy.
    pub head: Bytes,
    /// Offsets into `head`.
    pub parsed: ParsedHead,
    pub body: RequestBody,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub started: Instant,
    pub reply: ReplyTo,
}

/// The request body as the Python thread sees it.
pub enum RequestBody {
    /// The whole body was already read (possibly empty).
    Complete(Bytes),
    /// The body is still on the socket; the Python thread pulls it chunk by chunk with
    /// [`ReplyMsg::ReadBody`] and receives it through [`Exchange::recv_body`]. The first pull
    /// also answers `Expect: 100-continue`.
    Stream,
}

/// One piece of body delivered to a Python thread that asked for it.
pub enum BodyChunk {
    /// A piece of the body; `last`: nothing follows (the app need not ask again).
    Data { bytes: Vec<u8>, last: bool },
    /// The body ended cleanly.
    End,
    /// The body did not arrive whole: the client closed early, or it broke the framing.
    Error(BodyError),
}

/// Why a streamed body could not be read whole. `wsgi.input` raises an `OSError` for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// The client closed the connection before the body ended.
    Disconnected,
    /// The body broke HTTP framing (bad chunk) or exceeded `--limit-request-body`.
    Invalid(crate::http::HttpError),
    /// The client sent nothing for longer than the read timeout.
    TimedOut,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Disconnected => {
                f.write_str("client disconnected before the request body ended")
            }
            BodyError::Invalid(e) => write!(f, "invalid request body: {e}"),
            BodyError::TimedOut => f.write_str("timed out reading the request body"),
        }
    }
}

/// Where a Python thread sends the response of one request.
pub struct ReplyTo {
    pub mailbox: Arc<IoMailbox>,
    /// The connection's slot in its I/O thread, and the slot's generation, so a late reply
    /// for a connection that is gone is dropped instead of reaching a new one.
    pub conn: ConnToken,
    /// The request's number on its connection, so a late reply for an earlier request
    /// (an app writing from `close()` or another thread after its response ended) is
    /// dropped instead of landing in the next response on the same connection.
    pub seq: u32,
    pub exchange: Arc<Exchange>,
}

impl ReplyTo {
    pub fn send(&self, msg: ReplyMsg) {
        self.mailbox.push(Reply {
            conn: self.conn,
            seq: self.seq,
            msg,
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnToken {
    pub slot: u32,
    pub generation: u32,
}

/// A message from a Python thread to the I/O thread that owns the connection.
pub enum ReplyMsg {
    /// Response bytes (head and/or body, already framed). `end`: the response is complete.
    /// `close`: close the connection after writing. `counted`: the bytes count against
    /// the exchange's in-flight window and must be released once written.
    Data {
        bytes: Vec<u8>,
        end: bool,
        close: bool,
        counted: bool,
    },
    /// A whole response: `head` (framed for a body of `body.len()` bytes), then `body`
    /// written from the application's own `bytes` object, without a copy (the object is
    /// released by its Python thread once `body` is dropped). Never counted.
    Whole {
        head: Vec<u8>,
        body: Bytes,
        close: bool,
    },
    /// Send `len` bytes of `file` from `offset` (sendfile/splice, never through Python).
    File {
        file: std::fs::File,
        offset: u64,
        len: u64,
    },
    /// Send the next piece of the request body through `Exchange::send_body` (and answer
    /// `Expect: 100-continue` first if it is still unanswered).
    ReadBody,
    /// Something failed after the head was sent: close the connection without more bytes.
    Abort,
}

pub struct Reply {
    pub conn: ConnToken,
    pub seq: u32,
    pub msg: ReplyMsg,
}

/// Per-request state that both sides touch.
pub struct Exchange {
    /// Set by the I/O thread when the client is gone (a write failed) or the server stops
    /// waiting; the Python thread stops iterating the response and calls `close()`.
    cancelled: AtomicBool,
    /// Bytes of a streamed response queued but not yet written, with a condvar the Python
    /// thread sleeps on (GIL released) while the window is full.
    in_flight: Mutex<usize>,
    window_open: Condvar,
    /// Streamed request body, I/O thread -> Python thread, one chunk per `ReadBody`; only
    /// made for streamed bodies (a channel costs ~100 ns per request; most have none).
    body: Option<(Sender<BodyChunk>, Receiver<BodyChunk>)>,
}

/// Most response bytes a Python thread may have queued for one connection before it waits
/// for the I/O thread to write them: bounds memory with slow clients.
pub const RESPONSE_WINDOW: usize = 1 << 20;

impl Exchange {
    /// `streamed_body`: the request body will be pulled with `ReadBody`.
    pub fn new(streamed_body: bool) -> Arc<Exchange> {
        Arc::new(Exchange {
            cancelled: AtomicBool::new(false),
            in_flight: Mutex::new(0),
            window_open: Condvar::new(),
            body: streamed_body.then(|| crossbeam_channel::bounded(1)),
        })
    }

    /// I/O side: hands the Python thread the piece of body it asked for.
    pub fn send_body(&self, chunk: BodyChunk) {
        if let Some((tx, _)) = &self.body {
            let _ = tx.try_send(chunk);
        }
    }

    /// Python side (GIL released): waits up to `timeout` for the piece of body asked for;
    /// `None` when none came in time. Without a streamed body there is nothing to wait for.
    pub fn recv_body(&self, timeout: std::time::Duration) -> Option<BodyChunk> {
        match &self.body {
            Some((_, rx)) => match rx.recv_timeout(timeout) {
                Ok(chunk) => Some(chunk),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    Some(BodyChunk::Error(BodyError::Disconnected))
                }
            },
            None => Some(BodyChunk::Error(BodyError::Disconnected)),
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Marks the exchange dead and wakes a Python thread waiting for window or body.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        let _guard = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        self.window_open.notify_all();
        drop(_guard);
        self.send_body(BodyChunk::Error(BodyError::Disconnected));
    }

    /// Python side: account for `n` bytes about to be queued; blocks (the caller has
    /// released its GIL) while the window is full. Returns false when cancelled.
    pub fn reserve(&self, n: usize) -> bool {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        while *in_flight >= RESPONSE_WINDOW && !self.is_cancelled() {
            in_flight = self
                .window_open
                .wait(in_flight)
                .unwrap_or_else(|e| e.into_inner());
        }
        *in_flight += n;
        !self.is_cancelled()
    }

    /// Accounts for `n` bytes only if the window has room now (one lock, never blocks), so
    /// the caller can keep its GIL; `false`: call `reserve` with the GIL released.
    pub fn try_reserve(&self, n: usize) -> bool {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if *in_flight >= RESPONSE_WINDOW {
            return false;
        }
        *in_flight += n;
        true
    }

    /// I/O side: `n` counted bytes were written.
    pub fn release(&self, n: usize) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let was_full = *in_flight >= RESPONSE_WINDOW;
        *in_flight = in_flight.saturating_sub(n);
        if was_full && *in_flight < RESPONSE_WINDOW {
            self.window_open.notify_all();
        }
    }
}

/// An I/O thread's inbox of replies, with a wake-up that fires at most once per batch.
pub struct IoMailbox {
    queue: crossbeam_channel::Sender<Reply>,
    inbox: crossbeam_channel::Receiver<Reply>,
    waker: AtomicWaker,
    /// True from the first push after a drain started until the next drain starts.
    notified: AtomicBool,
    /// Set once when the server stops; the I/O thread then stops accepting.
    stop: AtomicBool,
}

impl IoMailbox {
    pub fn new() -> Arc<IoMailbox> {
        let (queue, inbox) = crossbeam_channel::unbounded();
        Arc::new(IoMailbox {
            queue,
            inbox,
            waker: AtomicWaker::new(),
            notified: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        })
    }

    /// Python side: enqueue a reply; wake the I/O thread only if nobody did since it last
    /// started draining.
    pub fn push(&self, reply: Reply) {
        // The receiver lives as long as `self`, so sending cannot fail.
        let _ = self.queue.send(reply);
        if !self.notified.swap(true, Ordering::SeqCst) {
            self.waker.wake();
        }
    }

    /// Asks the I/O thread to stop accepting and finish its exchanges.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Drops the registered waker (the I/O thread's runtime is ending).
    pub fn detach(&self) {
        drop(self.waker.take());
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// I/O side: hands every queued reply to `route`, then returns `Pending` with the
    /// waker registered. Never returns `Ready`: the dispatcher task runs for the thread's
    /// life. Returns how many replies it routed.
    pub fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        mut route: impl FnMut(Reply),
    ) -> (Poll<()>, usize) {
        self.waker.register(cx.waker());
        // Clear the flag before draining: a push that lands after the drain looked at the
        // queue sees `false` and wakes us again, so no reply can be stranded.
        // SeqCst swap: a full barrier between clearing the flag and looking at the queue,
        // pairing with the producer's push-then-swap, without relying on the channel's
        // own fences.
        self.notified.swap(false, Ordering::SeqCst);
        let mut routed = 0;
        while let Ok(reply) = self.inbox.try_recv() {
            route(reply);
            routed += 1;
        }
        (Poll::Pending, routed)
    }
}

/// The queue from all I/O threads to all Python threads. Bounded: when it is full, I/O
/// threads stop reading new requests (back-pressure) instead of buffering without limit.
pub fn request_queue(capacity: usize) -> (Sender<Request>, Receiver<Request>) {
    crossbeam_channel::bounded(capacity)
}
