//! What crosses between I/O threads and Python threads, and nothing else: the request
//! queue, each I/O thread's reply mailbox, and the per-request [`Exchange`]. No Python
//! objects ever cross here, and no socket but one lent for a direct answer ([`Direct`],
//! behind the [`LentSocket`] trait that `server/` implements): requests carry frozen bytes
//! and offsets, replies carry bytes and files. (The [`ReleaseQueue`] is generic: py/ sends
//! the references of shared bodies back through it to the one thread that may release
//! them, never touching them elsewhere.) Every atomic, lock, channel and waker here comes from `sync.rs`, so the
//! loom model checker can run this module (tests/loom_handoff.rs, ARCHITECTURE.md §4).
//!
//! The hand-off speaks requests, not a wire protocol. A [`RequestHead`] is what any
//! protocol delivers (request line parts, header fields, CGI variables from a front end,
//! addresses), and a [`ResponseEncoder`] is chosen by the protocol that read the request and
//! turns the application's status, headers and body into that protocol's bytes. The Python
//! side uses only these two, so a second wire protocol touches `server/` and `http/` (or
//! its own module), never `py/`.
//!
//! Wake-ups are the cost that matters (ARCHITECTURE.md §4: a cross-thread wake
//! costs several µs, the same order as a whole hello-world request). So:
//! - Python threads block on the request queue only when it is empty, and drain every
//!   queued request before they sleep again; they yield once and then sleep, woken by the
//!   [`Doorbell`] the I/O side rings when it queues a request and a thread sleeps;
//! - an I/O thread is woken through its [`IoMailbox`] at most once per batch: the first
//!   reply pushed after the I/O thread began draining sets `notified` and wakes it; later
//!   pushes see the flag and only enqueue.

mod budget;
mod direct;
mod doorbell;
mod encoder;
mod exchange;
mod head;
mod inline;
mod mailbox;
mod piece;
mod queue;
mod release;
mod sync;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::http::Persistence;

pub use budget::ResponseBudget;
pub use direct::{Direct, LentSocket, Look};
pub use doorbell::Doorbell;
pub use encoder::ResponseEncoder;
pub use exchange::{Exchange, Reserve, RESPONSE_WINDOW};
pub use head::{Endpoint, RequestHead};
pub use inline::{InlineApp, InlineRunner};
pub use mailbox::IoMailbox;
pub use piece::BodyPiece;
pub use queue::{request_queue, Capacity, RequestSender};
pub use release::ReleaseQueue;

/// A request handed from an I/O thread to a Python thread.
pub struct Request {
    pub head: RequestHead,
    pub body: RequestBody,
    /// How the response goes on the wire, chosen by the protocol that read the request.
    pub encoder: ResponseEncoder,
    /// When the I/O thread began on the request (the access log's duration).
    pub started: Instant,
    /// When it entered the queue: set by [`RequestSender::try_send`]. How long requests
    /// wait there tells the pool whether more threads would help.
    pub queued: Instant,
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
    /// A piece of the body, never empty; `last`: nothing follows (the app need not ask
    /// again).
    Data { piece: BodyPiece, last: bool },
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
    /// Sends `msg` to the connection's I/O thread, or writes it to the client directly when
    /// the I/O thread lent the socket for it ([`Direct`]).
    pub fn send(&self, msg: ReplyMsg) {
        let Err(msg) = self.exchange.answer(msg) else {
            return;
        };
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
    /// Response bytes (head and/or body, already framed). `end`: the response is complete,
    /// and `persistence` says what the encoder knows of whether the connection persists.
    /// `counted`: the bytes count against the exchange's in-flight window and must be
    /// released once written.
    Data {
        bytes: Vec<u8>,
        end: bool,
        persistence: Persistence,
        counted: bool,
    },
    /// A whole response: `head` (framed for a body of `body.len()` bytes), then `body`
    /// written from the application's own `bytes` object, without a copy (the object is
    /// released by its Python thread once `body` is dropped). Never counted.
    Whole {
        head: Vec<u8>,
        body: Bytes,
        persistence: Persistence,
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
    /// The Python thread wrote to the client itself (a direct answer, [`Direct`]) after
    /// the I/O thread had stopped watching: the whole response (`persistence` as for an
    /// ending `Data`), or, with `None`, a part of it, whose rest follows as messages.
    Answered { persistence: Option<Persistence> },
}

pub struct Reply {
    pub conn: ConnToken,
    pub seq: u32,
    pub msg: ReplyMsg,
}
