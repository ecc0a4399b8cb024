//! One I/O thread's life: accept loops, the reply dispatcher, and the connection state
//! machine (read head -> frame body -> hand off -> write the reply -> keep-alive).
//!
//! Everything here runs on one monoio runtime, so the per-thread state is `Rc`/`RefCell`
//! and never locked. The only cross-thread traffic is the request queue and this thread's
//! [`IoMailbox`], which the dispatcher drains once per wake-up and routes, by connection
//! slot, to the connection tasks.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use crossbeam_channel::{Sender, TrySendError};
use monoio::buf::{IoBuf, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::{TcpListener, TcpStream};

use super::gather::Gather;
use super::{sendfile, Shared};
use crate::handoff::{
    BodyChunk, BodyError, ConnToken, Exchange, IoMailbox, Reply, ReplyMsg, ReplyTo, Request,
    RequestBody,
};
use crate::http::date::DateCache;
use crate::http::response;
use crate::http::{parse_head, BodyDecoder, BodyFraming, HttpError, ParsedHead};
use crate::{log_debug, log_warn};

/// A body up to this size is read whole before the request is handed off, so the
/// application gets it as one `bytes` object without a round trip per read.
const PREBUFFER_BODY: usize = 64 * 1024;
/// Bytes read from the socket per body read when streaming a larger body.
const BODY_READ_SIZE: usize = 64 * 1024;
/// At most this many pipelined requests of one connection are in flight at once.
const PIPELINE_BATCH: usize = 32;
/// Response data of at least this size is written from its own buffer, not copied into
/// the coalescing buffer.
const DIRECT_WRITE: usize = 16 * 1024;
/// The coalescing buffer is written out before it would grow past this.
const COALESCE_LIMIT: usize = 64 * 1024;
/// Initial read buffer per connection.
const READ_BUFFER: usize = 8 * 1024;
/// How long a full request queue may hold a request back before the client gets 503.
const QUEUE_WAIT_LIMIT: Duration = Duration::from_secs(30);
/// Lingering close: after an error response, how long and how much we keep reading (and
/// discarding) so the client's unread bytes do not turn our FIN into a RST that destroys
/// the response before the client reads it.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// A one-shot, thread-local event that any number of tasks can wait for. Each waiting
/// future owns one slot for its waker and frees it when dropped, so the many waits that
/// lose a race (every idle read races the stop event) leave nothing behind.
#[derive(Default)]
struct LocalEvent {
    set: Cell<bool>,
    waiters: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl LocalEvent {
    fn trigger(&self) {
        if !self.set.replace(true) {
            let wakers: Vec<Waker> = self
                .waiters
                .borrow_mut()
                .iter_mut()
                .filter_map(Option::take)
                .collect();
            for waker in wakers {
                waker.wake();
            }
        }
    }

    fn is_set(&self) -> bool {
        self.set.get()
    }

    fn wait(&self) -> EventWait<'_> {
        EventWait {
            event: self,
            slot: None,
        }
    }
}

/// A wait for a [`LocalEvent`]; see there.
struct EventWait<'a> {
    event: &'a LocalEvent,
    slot: Option<usize>,
}

impl Future for EventWait<'_> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let event = self.event;
        if event.set.get() {
            return Poll::Ready(());
        }
        let mut waiters = event.waiters.borrow_mut();
        match self.slot {
            Some(slot) => match &mut waiters[slot] {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                entry => *entry = Some(cx.waker().clone()),
            },
            None => {
                let slot = match event.free.borrow_mut().pop() {
                    Some(slot) => {
                        waiters[slot] = Some(cx.waker().clone());
                        slot
                    }
                    None => {
                        waiters.push(Some(cx.waker().clone()));
                        waiters.len() - 1
                    }
                };
                self.slot = Some(slot);
            }
        }
        Poll::Pending
    }
}

impl Drop for EventWait<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.event.waiters.borrow_mut()[slot] = None;
            self.event.free.borrow_mut().push(slot);
        }
    }
}

/// The replies routed to one connection, in the order its Python thread sent them.
#[derive(Default)]
struct ConnInbox {
    msgs: RefCell<VecDeque<(u32, ReplyMsg)>>,
    waker: Cell<Option<Waker>>,
}

impl ConnInbox {
    fn push(&self, seq: u32, msg: ReplyMsg) {
        self.msgs.borrow_mut().push_back((seq, msg));
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// The next reply if one is here already.
    fn try_recv(&self) -> Option<(u32, ReplyMsg)> {
        self.msgs.borrow_mut().pop_front()
    }

    /// The next reply with its request number.
    async fn recv(&self) -> (u32, ReplyMsg) {
        poll_fn(|cx| match self.msgs.borrow_mut().pop_front() {
            Some(msg) => Poll::Ready(msg),
            None => {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

struct Slot {
    generation: u32,
    inbox: Option<Rc<ConnInbox>>,
}

/// This I/O thread's state, shared by its tasks.
struct IoCtx {
    shared: Arc<Shared>,
    /// This thread's sender of the request queue; taken out (dropped) when the thread
    /// stops, whatever tasks the runtime may still keep, so the Python threads can end.
    requests: RefCell<Option<Sender<Request>>>,
    mailbox: Arc<IoMailbox>,
    slots: RefCell<Vec<Slot>>,
    free_slots: RefCell<Vec<u32>>,
    date: RefCell<DateCache>,
    stop: LocalEvent,
    live_conns: Cell<usize>,
    all_closed: RefCell<Option<Waker>>,
    stats: Cell<Stats>,
}

/// Counters for the lab: how well replies batch per wake-up.
#[derive(Clone, Copy, Default)]
struct Stats {
    requests: u64,
    replies: u64,
    wakeups: u64,
}

impl IoCtx {
    fn register(&self) -> (ConnToken, Rc<ConnInbox>) {
        let inbox = Rc::new(ConnInbox::default());
        let mut slots = self.slots.borrow_mut();
        let slot = match self.free_slots.borrow_mut().pop() {
            Some(slot) => slot,
            None => {
                slots.push(Slot {
                    generation: 0,
                    inbox: None,
                });
                (slots.len() - 1) as u32
            }
        };
        let entry = &mut slots[slot as usize];
        entry.generation = entry.generation.wrapping_add(1);
        entry.inbox = Some(inbox.clone());
        (
            ConnToken {
                slot,
                generation: entry.generation,
            },
            inbox,
        )
    }

    fn unregister(&self, token: ConnToken) {
        let mut slots = self.slots.borrow_mut();
        if let Some(entry) = slots.get_mut(token.slot as usize) {
            if entry.generation == token.generation {
                entry.inbox = None;
                self.free_slots.borrow_mut().push(token.slot);
            }
        }
    }

    /// Hands one reply to its connection; a reply for a connection that is gone is dropped
    /// (its exchange was cancelled when the connection ended).
    fn route(&self, reply: Reply) {
        let inbox = {
            let slots = self.slots.borrow();
            match slots.get(reply.conn.slot as usize) {
                Some(Slot {
                    generation,
                    inbox: Some(inbox),
                }) if *generation == reply.conn.generation => inbox.clone(),
                _ => return,
            }
        };
        inbox.push(reply.seq, reply.msg);
    }

    fn error_response(&self, status: u16) -> Vec<u8> {
        let mut out = Vec::with_capacity(192);
        response::error_response(&mut out, status, self.date.borrow_mut().get());
        out
    }
}

/// Counts a connection as live for as long as it exists; the last one out wakes `io_main`
/// when the server is stopping.
struct LiveGuard(Rc<IoCtx>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let n = self.0.live_conns.get() - 1;
        self.0.live_conns.set(n);
        if n == 0 {
            if let Some(waker) = self.0.all_closed.borrow_mut().take() {
                waker.wake();
            }
        }
    }
}

pub(super) async fn io_main(
    idx: usize,
    shared: Arc<Shared>,
    mailbox: Arc<IoMailbox>,
    requests: Sender<Request>,
    listeners: Vec<std::net::TcpListener>,
) -> anyhow::Result<()> {
    let ctx = Rc::new(IoCtx {
        shared,
        requests: RefCell::new(Some(requests)),
        mailbox,
        slots: RefCell::new(Vec::new()),
        free_slots: RefCell::new(Vec::new()),
        date: RefCell::new(DateCache::new()),
        stop: LocalEvent::default(),
        live_conns: Cell::new(0),
        all_closed: RefCell::new(None),
        stats: Cell::new(Stats::default()),
    });

    let dispatcher_ctx = ctx.clone();
    monoio::spawn(async move {
        poll_fn(|cx| {
            let ctx = &dispatcher_ctx;
            let (pending, routed) = ctx.mailbox.poll_drain(cx, |reply| ctx.route(reply));
            let mut stats = ctx.stats.get();
            stats.wakeups += 1;
            stats.replies += routed as u64;
            ctx.stats.set(stats);
            if ctx.mailbox.stop_requested() {
                ctx.stop.trigger();
            }
            pending
        })
        .await
    });

    for listener in listeners {
        let listener = TcpListener::from_std(listener)?;
        monoio::spawn(accept_loop(ctx.clone(), listener));
    }

    ctx.stop.wait().await;
    // Stopping: accept loops have ended (they watch `stop`), idle connections close, and
    // connections with a request in flight finish it first.
    poll_fn(|cx| {
        if ctx.live_conns.get() == 0 {
            Poll::Ready(())
        } else {
            *ctx.all_closed.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    })
    .await;
    ctx.requests.borrow_mut().take();
    ctx.mailbox.detach();
    let stats = ctx.stats.get();
    log_debug!(
        "I/O thread {idx}: {} requests, {} replies in {} dispatcher wake-ups ({:.2} replies per wake-up)",
        stats.requests,
        stats.replies,
        stats.wakeups,
        stats.replies as f64 / stats.wakeups.max(1) as f64
    );
    Ok(())
}

async fn accept_loop(ctx: Rc<IoCtx>, listener: TcpListener) {
    // The local address of an accepted connection is the listener's, unless the listener
    // is bound to a wildcard address: then ask (one getsockname) per connection.
    let listener_addr = listener.local_addr().ok();
    let fixed_local = listener_addr.filter(|addr| !addr.ip().is_unspecified());
    loop {
        let accepted = match race(listener.accept(), ctx.stop.wait()).await {
            Either::Left(accepted) => accepted,
            Either::Right(()) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let local = match fixed_local {
                    Some(addr) => addr,
                    None => stream.local_addr().ok().or(listener_addr).unwrap_or(peer),
                };
                ctx.live_conns.set(ctx.live_conns.get() + 1);
                let guard = LiveGuard(ctx.clone());
                monoio::spawn(async move {
                    let ctx = guard.0.clone();
                    let (token, inbox) = ctx.register();
                    let mut conn = Conn {
                        ctx: ctx.clone(),
                        stream,
                        buf: BytesMut::new(),
                        token,
                        inbox,
                        peer,
                        local,
                        served: 0,
                        batch: Vec::new(),
                    };
                    conn.serve().await;
                    ctx.unregister(token);
                    drop(guard);
                });
            }
            Err(err) => {
                // EMFILE and friends: log, back off briefly, keep accepting.
                log_warn!("accept failed: {err}");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Why a read for more request bytes ended.
enum ReadOutcome {
    Data,
    Eof,
    TimedOut,
    Stopped,
    Failed,
}

/// What became of one exchange, for the keep-alive decision.
enum ExchangeEnd {
    KeepAlive,
    Close,
    /// Close after draining what the client still sends (it may not have read our reply).
    Linger,
}

struct Conn {
    ctx: Rc<IoCtx>,
    stream: TcpStream,
    /// Bytes read and not yet consumed: the next head, body bytes, pipelined requests.
    buf: BytesMut,
    token: ConnToken,
    inbox: Rc<ConnInbox>,
    peer: SocketAddr,
    local: SocketAddr,
    served: u64,
    /// The requests of the current exchange (see [`Conn::exchange`]); empty between them.
    batch: Vec<InFlight>,
}

/// Cancels the exchange when the connection side stops before the response completed, so
/// the Python thread stops producing and calls `close()`.
struct CancelOnDrop {
    exchange: Arc<Exchange>,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.exchange.cancel();
        }
    }
}

/// One request handed to Python whose response is not written completely yet.
struct InFlight {
    seq: u32,
    /// Holds the exchange; cancels it if the connection gives up before its end.
    guard: CancelOnDrop,
    keep_alive: bool,
    body_done: bool,
    decoder: BodyDecoder,
    /// Body bytes read ahead for a streamed body, not yet given to the app.
    pending: Vec<u8>,
    expect_continue: bool,
    /// Replies that came before an earlier request of the batch finished.
    early: VecDeque<ReplyMsg>,
}

impl InFlight {
    /// Its response is complete: the exchange is done, and `Some` says how the connection
    /// ends (`close`: the response said so), `None` that it may carry the next response.
    fn ended(&mut self, close: bool) -> Option<ExchangeEnd> {
        self.guard.armed = false;
        if !self.body_done {
            // The app did not read its body to the end: wake anyone still waiting for it,
            // and since the connection is out of sync, close it after draining a little.
            self.guard.exchange.cancel();
            return Some(ExchangeEnd::Linger);
        }
        (close || !self.keep_alive).then_some(ExchangeEnd::Close)
    }
}

impl Conn {
    async fn serve(&mut self) {
        loop {
            let head = match self.read_head().await {
                Ok(Some(head)) => head,
                Ok(None) => return,
                Err(err) => {
                    log_debug!("{}: bad request: {err}", self.peer);
                    self.fail(err.status()).await;
                    return;
                }
            };
            match self.exchange(head).await {
                ExchangeEnd::KeepAlive => {}
                ExchangeEnd::Close => return,
                ExchangeEnd::Linger => {
                    self.linger().await;
                    return;
                }
            }
        }
    }

    /// Writes all of `buf`, giving up when one write makes no progress for
    /// `--write-timeout` (nginx's send_timeout: between two writes, not for the whole
    /// response): a client that stops reading must not hold a connection, and the Python
    /// thread feeding it, for ever.
    async fn write<B: IoBuf + 'static>(&mut self, buf: B) -> std::io::Result<()> {
        self.write_buf(buf).await.0
    }

    /// [`Conn::write`], giving the buffer back (not after a timeout: the abandoned write
    /// took it).
    async fn write_buf<B: IoBuf + 'static>(&mut self, buf: B) -> (std::io::Result<()>, Option<B>) {
        let timeout = self.ctx.shared.config.write_timeout;
        let len = buf.bytes_init();
        let mut buf = buf;
        let mut written = 0;
        while written < len {
            match monoio::time::timeout(timeout, self.stream.write(buf.slice(written..len))).await {
                Ok((Ok(0), slice)) => {
                    return (
                        Err(std::io::ErrorKind::WriteZero.into()),
                        Some(slice.into_inner()),
                    )
                }
                Ok((Ok(n), slice)) => {
                    written += n;
                    buf = slice.into_inner();
                }
                Ok((Err(err), slice)) => return (Err(err), Some(slice.into_inner())),
                Err(_) => {
                    return (
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the client read nothing for --write-timeout",
                        )),
                        None,
                    );
                }
            }
        }
        (Ok(()), Some(buf))
    }

    /// Writes every buffer of `bufs` with as few `writev` calls as the socket allows, under
    /// the same per-write timeout as [`Conn::write`].
    async fn write_gather(&mut self, bufs: Vec<Bytes>) -> std::io::Result<()> {
        let timeout = self.ctx.shared.config.write_timeout;
        let mut gather = Gather::new(bufs);
        while gather.remaining() > 0 {
            match monoio::time::timeout(timeout, self.stream.writev(gather)).await {
                Ok((Ok(0), _)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok((Ok(n), rest)) => gather = rest.advance(n),
                Ok((Err(err), _)) => return Err(err),
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client read nothing for --write-timeout",
                    ))
                }
            }
        }
        Ok(())
    }

    /// Writes a server error response and closes with a lingering drain.
    async fn fail(&mut self, status: u16) {
        let out = self.ctx.error_response(status);
        if self.write(out).await.is_ok() {
            self.linger().await;
        }
    }

    /// Half-closes and discards what the client still sends, bounded in time and bytes.
    async fn linger(&mut self) {
        sendfile::shutdown_write(&self.stream);
        let deadline = Instant::now() + LINGER_TIME;
        let mut drained = 0;
        self.buf.clear();
        while drained < LINGER_BYTES {
            self.buf.clear();
            match self.read_more(deadline, 16 * 1024, false).await {
                ReadOutcome::Data => drained += self.buf.len(),
                _ => return,
            }
        }
    }

    /// Reads until a whole head is buffered. `Ok(None)`: the connection should close quietly
    /// (client closed, keep-alive idle timeout, server stopping).
    async fn read_head(&mut self) -> Result<Option<ParsedHead>, HttpError> {
        let config = &self.ctx.shared.config;
        let limits = config.limits;
        let header_timeout = config.header_timeout;
        let mut waiting_first_byte = self.buf.is_empty();
        let mut deadline = if waiting_first_byte && self.served > 0 {
            Instant::now() + config.keep_alive.unwrap_or(header_timeout)
        } else {
            Instant::now() + header_timeout
        };
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse_head(&self.buf, &limits)? {
                    return Ok(Some(head));
                }
            }
            if waiting_first_byte && self.ctx.stop.is_set() {
                return Ok(None);
            }
            match self
                .read_more(deadline, READ_BUFFER, waiting_first_byte)
                .await
            {
                ReadOutcome::Data => {
                    if waiting_first_byte {
                        waiting_first_byte = false;
                        deadline = Instant::now() + header_timeout;
                    }
                }
                ReadOutcome::TimedOut if !waiting_first_byte => {
                    log_debug!(
                        "{}: request head not received within --header-timeout",
                        self.peer
                    );
                    let out = self.ctx.error_response(408);
                    let _ = self.write(out).await;
                    return Ok(None);
                }
                ReadOutcome::Eof
                | ReadOutcome::TimedOut
                | ReadOutcome::Stopped
                | ReadOutcome::Failed => {
                    return Ok(None);
                }
            }
        }
    }

    /// Reads more bytes into `buf`, until `deadline`; when `interruptible`, a server stop
    /// also ends the wait (only while no request is half-read).
    async fn read_more(
        &mut self,
        deadline: Instant,
        want: usize,
        interruptible: bool,
    ) -> ReadOutcome {
        if self.buf.capacity() - self.buf.len() < want / 2 {
            self.buf.reserve(want);
        }
        // Read into the spare capacity only: monoio's `IoBufMut` for `BytesMut` writes from
        // the start of the buffer (and sets its length to the bytes read), which would
        // overwrite a partial head or pipelined bytes already buffered.
        let buf = std::mem::take(&mut self.buf);
        let (start, end) = (buf.len(), buf.capacity());
        let read = monoio::time::timeout_at(
            deadline.into(),
            self.stream.read(SliceMut::new(buf, start, end)),
        );
        let result = if interruptible {
            match race(read, self.ctx.stop.wait()).await {
                Either::Left(result) => result,
                Either::Right(()) => return ReadOutcome::Stopped,
            }
        } else {
            read.await
        };
        match result {
            Err(_elapsed) => ReadOutcome::TimedOut,
            Ok((Ok(0), buf)) => {
                self.buf = buf.into_inner();
                ReadOutcome::Eof
            }
            Ok((Ok(_), buf)) => {
                self.buf = buf.into_inner();
                ReadOutcome::Data
            }
            Ok((Err(err), buf)) => {
                self.buf = buf.into_inner();
                log_debug!("{}: read failed: {err}", self.peer);
                ReadOutcome::Failed
            }
        }
    }

    /// Starts the exchange for `head`: frames its body (whole when small and already here,
    /// or quickly here; streamed otherwise) and hands the request to Python. `Err`: the
    /// connection ends here, with the error response to send (if any) once the responses
    /// before this request are out: `start` itself writes nothing, to keep them in order.
    async fn start(&mut self, mut head: ParsedHead, seq: u32) -> Result<InFlight, Option<u16>> {
        let started = Instant::now();
        let config = &self.ctx.shared.config;
        let mut decoder = match BodyDecoder::new(head.framing, config.max_body) {
            Ok(decoder) => decoder,
            Err(err) => return Err(Some(err.status())),
        };
        let head_bytes: Bytes = self.buf.split_to(head.head_len).freeze();
        let expect_continue = head.expect_continue;

        // `Expect: 100-continue` bodies are never pre-read: the client waits for our 100
        // before sending, which goes out when the app first reads.
        let mut pending = Vec::new();
        let mut body_done = false;
        let body = match head.framing {
            BodyFraming::None => {
                body_done = true;
                RequestBody::Complete(Bytes::new())
            }
            BodyFraming::Length(n) if self.buf.len() as u64 >= n => {
                body_done = true;
                RequestBody::Complete(self.buf.split_to(n as usize).freeze())
            }
            _ if expect_continue => RequestBody::Stream,
            _ => match self.prebuffer(&mut decoder, &mut pending).await {
                Ok(true) => {
                    body_done = true;
                    RequestBody::Complete(Bytes::from(std::mem::take(&mut pending)))
                }
                Ok(false) => RequestBody::Stream,
                Err(status) => return Err(status),
            },
        };

        let config = &self.ctx.shared.config;
        let stopping = self.ctx.shared.stopping.load(Ordering::Relaxed);
        head.keep_alive = head.keep_alive && config.keep_alive.is_some() && !stopping;
        let keep_alive = head.keep_alive;
        let exchange = Exchange::new(matches!(body, RequestBody::Stream));
        let guard = CancelOnDrop {
            exchange: exchange.clone(),
            armed: true,
        };
        let request = Request {
            head: head_bytes,
            parsed: head,
            body,
            peer: self.peer,
            local: self.local,
            started,
            reply: ReplyTo {
                mailbox: self.ctx.mailbox.clone(),
                conn: self.token,
                seq,
                exchange,
            },
        };
        self.hand_off(request).await.map_err(Some)?;
        Ok(InFlight {
            seq,
            guard,
            keep_alive,
            body_done,
            decoder,
            pending,
            expect_continue,
            early: VecDeque::new(),
        })
    }

    /// Serves the request `head` and the pipelined requests already buffered behind it:
    /// all of them go to Python at once (up to [`PIPELINE_BATCH`]), and their responses are
    /// written in request order, coalesced into as few writes as the timing allows.
    async fn exchange(&mut self, head: ParsedHead) -> ExchangeEnd {
        // The connection's batch vector, kept between exchanges: no allocation per request.
        let mut batch = std::mem::take(&mut self.batch);
        let end = self.exchange_batch(head, &mut batch).await;
        // Dropping what is left cancels any exchange the connection gave up on.
        batch.clear();
        self.batch = batch;
        end
    }

    async fn exchange_batch(&mut self, head: ParsedHead, batch: &mut Vec<InFlight>) -> ExchangeEnd {
        // Unique per request on this connection: `served` counts finished exchanges.
        let first_seq = self.served as u32;
        let first = match self.start(head, first_seq).await {
            Ok(first) => first,
            Err(status) => return self.answer_error(status).await,
        };
        batch.push(first);
        // Only requests whose body is already complete in the buffer join the batch: a
        // streamed body needs this connection's reads for itself.
        while batch.len() < PIPELINE_BATCH {
            let last = &batch[batch.len() - 1];
            if !last.keep_alive || !last.body_done || self.buf.is_empty() {
                break;
            }
            let head = match parse_head(&self.buf, &self.ctx.shared.config.limits) {
                Ok(Some(head)) => head,
                // Incomplete or invalid: the next `read_head` deals with it, after the
                // responses before it went out.
                _ => break,
            };
            let body_here = match head.framing {
                BodyFraming::None => true,
                BodyFraming::Length(n) => (self.buf.len() - head.head_len) as u64 >= n,
                BodyFraming::Chunked => false,
            };
            if !body_here || head.expect_continue {
                break;
            }
            let seq = first_seq.wrapping_add(batch.len() as u32);
            match self.start(head, seq).await {
                Ok(next) => batch.push(next),
                Err(status) => {
                    // Answer what was already handed off, then this one's error.
                    return match self.finish(batch).await {
                        ExchangeEnd::KeepAlive => self.answer_error(status).await,
                        other => other,
                    };
                }
            }
        }
        self.finish(batch).await
    }

    /// Ends the connection after a request that could not be handed off: with its error
    /// response (and a lingering close) when there is one, quietly otherwise.
    async fn answer_error(&mut self, status: Option<u16>) -> ExchangeEnd {
        if let Some(status) = status {
            self.fail(status).await;
        }
        ExchangeEnd::Close
    }

    /// Writes the responses of `batch` in order. Each ends the connection when it must
    /// (`Connection: close`, an unread body, an error); otherwise `KeepAlive` after all.
    async fn finish(&mut self, batch: &mut [InFlight]) -> ExchangeEnd {
        let mut out = Vec::new();
        let mut to_release: Vec<(usize, usize)> = Vec::new();
        let mut end = self.finish_inner(batch, &mut out, &mut to_release).await;
        if self.flush(&mut out, batch, &mut to_release).await.is_err() {
            end = ExchangeEnd::Close;
        }
        self.served += batch.len() as u64;
        end
    }

    async fn finish_inner(
        &mut self,
        batch: &mut [InFlight],
        out: &mut Vec<u8>,
        to_release: &mut Vec<(usize, usize)>,
    ) -> ExchangeEnd {
        let first_seq = batch[0].seq;
        for idx in 0..batch.len() {
            let mut response_started = false;
            let mut continue_sent = false;
            loop {
                let msg = match batch[idx].early.pop_front() {
                    Some(msg) => msg,
                    None => {
                        let (seq, msg) = match self.inbox.try_recv() {
                            Some(next) => next,
                            None => {
                                // Nothing more to coalesce now: write what we have before
                                // waiting (the Python thread may wait for that window).
                                if self.flush(out, batch, to_release).await.is_err() {
                                    return ExchangeEnd::Close;
                                }
                                self.inbox.recv().await
                            }
                        };
                        let offset = seq.wrapping_sub(first_seq) as usize;
                        if offset == idx {
                            msg
                        } else {
                            // A reply for a later request of the batch waits its turn; one
                            // for an earlier request (late, after its end) is dropped.
                            if offset > idx && offset < batch.len() {
                                batch[offset].early.push_back(msg);
                            }
                            continue;
                        }
                    }
                };
                match msg {
                    ReplyMsg::Data {
                        bytes,
                        end,
                        close,
                        counted,
                    } => {
                        response_started |= !bytes.is_empty();
                        let n = bytes.len();
                        if n >= DIRECT_WRITE || out.len() + n > COALESCE_LIMIT {
                            if self.flush(out, batch, to_release).await.is_err() {
                                return ExchangeEnd::Close;
                            }
                            if let Err(err) = self.write(bytes).await {
                                log_debug!(
                                    "{}: client gone while writing the response: {err}",
                                    self.peer
                                );
                                return ExchangeEnd::Close;
                            }
                            if counted {
                                batch[idx].guard.exchange.release(n);
                            }
                        } else {
                            if out.is_empty() {
                                // Most often the only response to write: keep its buffer.
                                *out = bytes;
                            } else {
                                out.extend_from_slice(&bytes);
                            }
                            if counted {
                                to_release.push((idx, n));
                            }
                        }
                        if end {
                            if let Some(stop) = batch[idx].ended(close) {
                                if self.flush(out, batch, to_release).await.is_err() {
                                    return ExchangeEnd::Close;
                                }
                                return stop;
                            }
                            break;
                        }
                    }
                    ReplyMsg::Whole { head, body, close } => {
                        // Whatever is coalesced, this head and the body: one writev.
                        let pending = Bytes::from(std::mem::take(out));
                        let result = self
                            .write_gather(vec![pending, Bytes::from(head), body])
                            .await;
                        for (idx, n) in to_release.drain(..) {
                            batch[idx].guard.exchange.release(n);
                        }
                        if let Err(err) = result {
                            log_debug!(
                                "{}: client gone while writing the response: {err}",
                                self.peer
                            );
                            return ExchangeEnd::Close;
                        }
                        if let Some(stop) = batch[idx].ended(close) {
                            return stop;
                        }
                        break;
                    }
                    ReplyMsg::File { file, offset, len } => {
                        response_started = true;
                        if self.flush(out, batch, to_release).await.is_err() {
                            return ExchangeEnd::Close;
                        }
                        if let Err(err) = self.send_file(&file, offset, len).await {
                            log_debug!("{}: sendfile failed: {err}", self.peer);
                            return ExchangeEnd::Close;
                        }
                    }
                    ReplyMsg::ReadBody => {
                        // What the app sent of its response goes out before we wait for the
                        // client's body (it may wait for our response first).
                        if self.flush(out, batch, to_release).await.is_err() {
                            return ExchangeEnd::Close;
                        }
                        let current = &mut batch[idx];
                        // Only a streamed body asks, and a streamed request is always the
                        // only one of its batch: nothing else is waiting to be written.
                        if current.expect_continue && !continue_sent && !response_started {
                            continue_sent = true;
                            if self.write(response::CONTINUE).await.is_err() {
                                return ExchangeEnd::Close;
                            }
                        }
                        let chunk = self
                            .next_body_chunk(
                                &mut current.decoder,
                                &mut current.pending,
                                &mut current.body_done,
                            )
                            .await;
                        let exchange = current.guard.exchange.clone();
                        if let BodyChunk::Error(err) = &chunk {
                            log_debug!("{}: {err}", self.peer);
                            let err = *err;
                            exchange.send_body(chunk);
                            // The body cannot be trusted: answer it ourselves if nothing
                            // was sent yet, and drop whatever the app still produces.
                            if let BodyError::Invalid(http) = err {
                                if !response_started {
                                    self.fail(http.status()).await;
                                }
                            }
                            return ExchangeEnd::Close;
                        }
                        exchange.send_body(chunk);
                    }
                    ReplyMsg::Abort => {
                        // Complete responses before this one still go out.
                        let _ = self.flush(out, batch, to_release).await;
                        return ExchangeEnd::Close;
                    }
                }
            }
        }
        ExchangeEnd::KeepAlive
    }

    /// Writes the coalesced responses in `out`, then gives their counted bytes back to the
    /// exchanges' windows.
    async fn flush(
        &mut self,
        out: &mut Vec<u8>,
        batch: &[InFlight],
        to_release: &mut Vec<(usize, usize)>,
    ) -> std::io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(out);
        let (result, buf) = self.write_buf(buf).await;
        if let Err(err) = &result {
            log_debug!(
                "{}: client gone while writing the response: {err}",
                self.peer
            );
        }
        if let Some(mut buf) = buf {
            buf.clear();
            *out = buf;
        }
        for (idx, n) in to_release.drain(..) {
            batch[idx].guard.exchange.release(n);
        }
        result
    }

    /// Queues the request for a Python thread. A full queue holds the connection back
    /// (back-pressure) for a while; `Err(503)`: it stayed full, or the server is stopping.
    async fn hand_off(&mut self, request: Request) -> Result<(), u16> {
        let mut request = request;
        let mut waited = Duration::ZERO;
        let mut backoff = Duration::from_micros(200);
        loop {
            let sent = match self.ctx.requests.borrow().as_ref() {
                Some(requests) => requests.try_send(request),
                None => Err(TrySendError::Disconnected(request)),
            };
            match sent {
                Ok(()) => {
                    let mut stats = self.ctx.stats.get();
                    stats.requests += 1;
                    self.ctx.stats.set(stats);
                    return Ok(());
                }
                Err(TrySendError::Full(back)) => {
                    if waited >= QUEUE_WAIT_LIMIT {
                        log_warn!("request queue full for {QUEUE_WAIT_LIMIT:?}: answering 503");
                        return Err(503);
                    }
                    request = back;
                    monoio::time::sleep(backoff).await;
                    waited += backoff;
                    backoff = (backoff * 2).min(Duration::from_millis(20));
                }
                Err(TrySendError::Disconnected(_)) => return Err(503),
            }
        }
    }

    /// Reads a body of up to [`PREBUFFER_BODY`] whole. `Ok(true)`: complete in `pending`;
    /// `Ok(false)`: larger, stream it (the part read stays in `pending`); `Err(Some)`:
    /// invalid or too slow (the status to answer); `Err(None)`: the client went away.
    async fn prebuffer(
        &mut self,
        decoder: &mut BodyDecoder,
        pending: &mut Vec<u8>,
    ) -> Result<bool, Option<u16>> {
        let timeout = self.ctx.shared.config.header_timeout;
        loop {
            if !self.buf.is_empty() {
                let consumed = decoder
                    .decode(&self.buf, pending)
                    .map_err(|e| Some(e.status()))?;
                self.buf.advance(consumed);
            }
            if decoder.is_done() {
                return Ok(true);
            }
            if pending.len() >= PREBUFFER_BODY {
                return Ok(false);
            }
            match self
                .read_more(Instant::now() + timeout, BODY_READ_SIZE, false)
                .await
            {
                ReadOutcome::Data => {}
                ReadOutcome::TimedOut => return Err(Some(408)),
                _ => return Err(None),
            }
        }
    }

    /// The next piece of a streamed body for the Python thread.
    async fn next_body_chunk(
        &mut self,
        decoder: &mut BodyDecoder,
        pending: &mut Vec<u8>,
        body_done: &mut bool,
    ) -> BodyChunk {
        if !pending.is_empty() {
            return BodyChunk::Data {
                bytes: std::mem::take(pending),
                last: decoder.is_done(),
            };
        }
        if *body_done || decoder.is_done() {
            *body_done = true;
            return BodyChunk::End;
        }
        let timeout = self
            .ctx
            .shared
            .config
            .header_timeout
            .max(Duration::from_secs(30));
        let mut out = Vec::new();
        loop {
            if !self.buf.is_empty() {
                match decoder.decode(&self.buf, &mut out) {
                    Ok(consumed) => self.buf.advance(consumed),
                    Err(err) => return BodyChunk::Error(BodyError::Invalid(err)),
                }
                if decoder.is_done() {
                    *body_done = true;
                }
                if !out.is_empty() {
                    return BodyChunk::Data {
                        bytes: out,
                        last: *body_done,
                    };
                }
                if *body_done {
                    return BodyChunk::End;
                }
            }
            match self
                .read_more(Instant::now() + timeout, BODY_READ_SIZE, false)
                .await
            {
                ReadOutcome::Data => {}
                ReadOutcome::TimedOut => return BodyChunk::Error(BodyError::TimedOut),
                _ => return BodyChunk::Error(BodyError::Disconnected),
            }
        }
    }

    /// Sends `len` bytes of `file` from `offset` with sendfile, waiting for the socket to
    /// drain whenever it is full.
    async fn send_file(
        &mut self,
        file: &std::fs::File,
        mut offset: u64,
        len: u64,
    ) -> std::io::Result<()> {
        let end = offset + len;
        let flags = sendfile::set_nonblocking(&self.stream, true)?;
        let mut result = Ok(());
        while offset < end {
            let remaining = end - offset;
            match sendfile::send(&self.stream, file, &mut offset, remaining) {
                Ok(0) => {
                    result = Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "file shorter than announced",
                    ));
                    break;
                }
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    let timeout = self.ctx.shared.config.write_timeout;
                    match monoio::time::timeout(timeout, self.stream.writable(false)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => {
                            result = Err(err);
                            break;
                        }
                        Err(_) => {
                            result = Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "the client read nothing for --write-timeout",
                            ));
                            break;
                        }
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
        }
        use std::os::fd::AsRawFd;
        sendfile::restore_flags(self.stream.as_raw_fd(), flags)?;
        result
    }
}

enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Polls two futures and returns the first to finish (the other is dropped).
async fn race<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if let Poll::Ready(out) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(out));
        }
        if let Poll::Ready(out) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(out));
        }
        Poll::Pending
    })
    .await
}
