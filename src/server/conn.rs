//! The connection state machine: read a head, frame its body, hand the request (and the
//! pipelined requests buffered behind it) to Python, write the replies in request order,
//! then keep the connection for the next request or end it.
//!
//! The socket-level helpers (reads with deadlines, writes with the write timeout,
//! sendfile, lingering close) are in `socket.rs`; reading request bodies is in `body.rs`.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use crossbeam_channel::TrySendError;

use super::admission::note_shed;
use super::ctx::{ConnInbox, IoCtx};
use super::event::{race, Either};
use super::lend::{InlineSocket, Lent};
use super::stream::Stream;
use crate::handoff::{
    BodyChunk, BodyError, ConnToken, Endpoint, Exchange, LentSocket, Look, ReplyMsg, ReplyTo,
    Request, RequestBody, RequestHead, ResponseEncoder,
};
use crate::http::proxy::parse_proxy_header;
use crate::http::response::{self};
use crate::http::{
    parse_head, BodyDecoder, BodyFraming, ConnectionEnd, HttpError, ParsedHead, Persistence,
};
use crate::metrics::ShedReason;
use crate::{log_debug, log_warn};

/// At most this many pipelined requests of one connection are in flight at once.
const PIPELINE_BATCH: usize = 32;
/// Response data of at least this size is written from its own buffer, not copied into
/// the coalescing buffer.
const DIRECT_WRITE: usize = 16 * 1024;
/// The coalescing buffer is written out before it would grow past this.
const COALESCE_LIMIT: usize = 64 * 1024;
/// Initial read buffer per connection.
const READ_BUFFER: usize = 8 * 1024;
/// The largest read buffer a connection keeps between exchanges (see `Conn::exchange`).
const KEPT_BUFFER: usize = 64 * 1024;
/// A request still queued after this long has its connection watched (admission control,
/// ARCHITECTURE.md §4): the socket for a client that left, a timer for `--max-queue-wait`.
/// Before, the wait for its reply is the plain one, with the one timer it always had.
const QUEUE_LOOK: Duration = Duration::from_millis(20);
/// While a request is queued, bytes the client sends meanwhile (pipelined requests) are
/// buffered up to this much; beyond, the socket is no longer watched, never read unbounded.
const WATCH_BUFFER_LIMIT: usize = 64 * 1024;
/// While its socket is lent for a direct answer, how soon a connection first looks whether
/// the answer was written (ARCHITECTURE.md §4): the client's next request usually tells
/// first. Each look waits twice as long as the one before, up to [`DIRECT_LOOK_MAX`], so a
/// slow response costs a few wake-ups, not one every 5 ms; an idle client's keep-alive wait
/// begins at most a look late.
const DIRECT_LOOK: Duration = Duration::from_millis(5);
const DIRECT_LOOK_MAX: Duration = Duration::from_millis(320);

/// Why a read for more request bytes ended.
pub(super) enum ReadOutcome {
    Data,
    Eof,
    TimedOut,
    Stopped,
    Failed,
}

pub(super) struct Conn {
    pub(super) ctx: Rc<IoCtx>,
    pub(super) stream: Stream,
    /// Bytes read and not yet consumed: the next head, body bytes, pipelined requests.
    pub(super) buf: BytesMut,
    pub(super) token: ConnToken,
    pub(super) inbox: Rc<ConnInbox>,
    pub(super) peer: Endpoint,
    pub(super) local: Endpoint,
    pub(super) served: u64,
    /// Whether `peer` (after the PROXY protocol) is in `--forwarded-allow-ips`: decided
    /// once per connection, so a request from an untrusted peer costs nothing more.
    trust_forwarded: bool,
    /// The requests of the current exchange (see [`Conn::exchange`]); empty between them.
    batch: Vec<InFlight>,
    /// The socket as lent for direct answers: a second descriptor, made at the first lend.
    lent: Option<Arc<Lent>>,
    /// The socket as lent to a request run inline (`--inline`), made at the first.
    inline_socket: Option<Arc<InlineSocket>>,
    /// Requests of the current exchange to run inline, all in one call when its responses
    /// are about to be written (`Conn::finish`); kept between exchanges, like `batch`.
    inline_pending: Vec<Request>,
    /// Whether the first of them may write its response itself (`Conn::run_inline`).
    inline_lend: bool,
}

/// Cancels the exchange when the connection side stops before the response completed, so
/// the Python thread stops producing and calls `close()`.
struct CancelOnDrop {
    exchange: Arc<Exchange>,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        // A socket still lent is taken back first: nothing is written directly to a
        // connection that gave up on its request.
        let _ = self.exchange.direct().recall();
        if self.armed {
            // Still queued: no Python thread will run it now (its client left, or was
            // answered by the server itself).
            if self.exchange.shed() {
                note_shed(ShedReason::ClientGone);
            }
            self.exchange.cancel();
        }
    }
}

/// One request handed to Python whose response is not written completely yet.
pub(super) struct InFlight {
    seq: u32,
    /// When its wait for a Python thread began (its head read, or its pre-read body):
    /// `--max-queue-wait` counts from here, the time a full queue held it back included.
    handed: Instant,
    /// Holds the exchange; cancels it if the connection gives up before its end.
    guard: CancelOnDrop,
    /// Whether the connection may carry the requests behind this one: what the request and
    /// the server allow, before the response adds what it knows.
    may_persist: bool,
    body_done: bool,
    decoder: BodyDecoder,
    /// Body bytes read ahead for a streamed body, not yet given to the app.
    pending: Vec<u8>,
    expect_continue: bool,
    /// Replies that came before an earlier request of the batch finished.
    early: VecDeque<ReplyMsg>,
    /// A FastCGI request's id: a body written apart (a whole `bytes`, a file) goes out in
    /// STDOUT records of it (`server/fastcgi.rs`).
    fastcgi: Option<u16>,
}

impl InFlight {
    /// Its response is complete: the exchange is done. `persistence` is what the response's
    /// encoder knew; this adds whether the request body was read to its end, and the one
    /// rule ([`Persistence::end`]) decides. `Some` says how the connection ends, `None` that
    /// it carries the next response.
    fn ended(&mut self, mut persistence: Persistence) -> Option<ConnectionEnd> {
        self.guard.armed = false;
        if !self.body_done {
            // The app did not read its body to the end: wake anyone still waiting for it;
            // the connection is out of sync.
            self.guard.exchange.cancel();
            persistence.body_unread();
        }
        match persistence.end() {
            ConnectionEnd::KeepAlive => None,
            end => Some(end),
        }
    }
}

impl Conn {
    pub(super) fn new(
        ctx: Rc<IoCtx>,
        stream: Stream,
        token: ConnToken,
        inbox: Rc<ConnInbox>,
        peer: Endpoint,
        local: Endpoint,
    ) -> Conn {
        Conn {
            ctx,
            stream,
            buf: BytesMut::new(),
            token,
            inbox,
            peer,
            local,
            served: 0,
            trust_forwarded: false,
            batch: Vec::new(),
            lent: None,
            inline_socket: None,
            inline_pending: Vec::new(),
            inline_lend: false,
        }
    }

    pub(super) async fn serve(&mut self) {
        let config = &self.ctx.shared.config;
        if config.proxy_protocol && !self.read_proxy_header().await {
            return;
        }
        let config = &self.ctx.shared.config;
        self.trust_forwarded = match self.peer {
            Endpoint::Ip(addr) => config.forwarded_allow.contains(addr.ip()),
            // A UNIX socket's peer is a front end on this machine (gunicorn trusts it too).
            Endpoint::Unix => true,
        };
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
            let end = self.exchange(head).await;
            // A response parked inline that the exchange's end cancelled ends now, its
            // `close()` called (`--inline`; nothing to do otherwise).
            self.ctx.resume_inline();
            match end {
                ConnectionEnd::KeepAlive => {}
                ConnectionEnd::Close => return,
                ConnectionEnd::Linger => {
                    self.linger().await;
                    return;
                }
            }
        }
    }

    /// `--proxy-protocol`: reads the PROXY header the connection must start with, within
    /// `--header-timeout`, and makes the client it names the connection's peer. Bytes after
    /// the header stay in the buffer: they are the first request. `false`: close the
    /// connection unanswered (the peer is not allowed to send one, or sent none, a malformed
    /// one or not all of it in time), since the peer is not speaking HTTP yet.
    async fn read_proxy_header(&mut self) -> bool {
        let config = &self.ctx.shared.config;
        if let Endpoint::Ip(addr) = self.peer {
            if !config.proxy_allow.contains(addr.ip()) {
                log_warn!(
                    "{}: closed: a PROXY protocol peer not in --proxy-allow-from",
                    self.peer
                );
                return false;
            }
        }
        let deadline = Instant::now() + config.header_timeout;
        loop {
            match parse_proxy_header(&self.buf) {
                Ok(Some(header)) => {
                    self.buf.advance(header.len);
                    if let Some(source) = header.source {
                        self.peer = Endpoint::Ip(source);
                    }
                    return true;
                }
                Ok(None) => {}
                Err(err) => {
                    log_debug!("{}: {err}: closing the connection", self.peer);
                    return false;
                }
            }
            let first_byte = self.buf.is_empty();
            match self.read_more(deadline, READ_BUFFER, first_byte).await {
                ReadOutcome::Data => {}
                ReadOutcome::TimedOut => {
                    log_debug!(
                        "{}: no whole PROXY header within --header-timeout: closing the connection",
                        self.peer
                    );
                    return false;
                }
                ReadOutcome::Eof | ReadOutcome::Stopped | ReadOutcome::Failed => return false,
            }
        }
    }

    /// Reads until a whole head is buffered. `Ok(None)`: the connection should close quietly
    /// (client closed, keep-alive idle timeout, server stopping and no request came within
    /// `STOP_GRACE`).
    async fn read_head(&mut self) -> Result<Option<ParsedHead>, HttpError> {
        let limits = self.ctx.shared.config.limits;
        let mut clock = self.head_clock();
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse_head(&self.buf, &limits)? {
                    return Ok(Some(head));
                }
            }
            match self
                .read_more(clock.deadline, READ_BUFFER, clock.waiting_first_byte)
                .await
            {
                ReadOutcome::Data => clock.data_arrived(),
                ReadOutcome::TimedOut if !clock.waiting_first_byte => {
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

    /// Starts the exchange for `head`: frames its body (whole when small and already here,
    /// or quickly here; streamed otherwise) and hands the request to Python. `Err`: the
    /// connection ends here, with the error response to send (if any) once the responses
    /// before this request are out: `start` itself writes nothing, to keep them in order.
    async fn start(&mut self, head: ParsedHead, seq: u32) -> Result<InFlight, Option<u16>> {
        let started = Instant::now();
        let decoder = match BodyDecoder::new(head.framing, self.ctx.shared.config.max_body) {
            Ok(decoder) => decoder,
            Err(err) => return Err(Some(err.status())),
        };
        let head_bytes: Bytes = self.buf.split_to(head.head_len).freeze();
        let raw_len = match head.framing {
            BodyFraming::None => Some(0),
            BodyFraming::Length(n) => Some(n),
            BodyFraming::Chunked => None,
        };
        let expect_continue = head.expect_continue;
        let encoder = ResponseEncoder::for_http1(&head, self.ctx.server_allows_keep_alive());
        let mut head = RequestHead::from_http1(head_bytes, head, self.peer, self.local);
        if self.trust_forwarded {
            // HTTP listeners only: a gateway protocol's front end names the client itself
            // (REMOTE_ADDR), ARCHITECTURE.md §5.
            head.apply_forwarded(&self.ctx.shared.config.forwarded);
        }
        self.start_request(
            head,
            decoder,
            raw_len,
            expect_continue,
            encoder,
            seq,
            started,
        )
        .await
    }

    /// Starts the exchange of a request of any wire protocol, its head already taken out
    /// of the buffer: `decoder` reads its body from the connection, `raw_len` says that the
    /// body is exactly that many bytes as they are (so one already buffered is taken as
    /// it is), `expect_continue` that it is not pre-read.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn start_request(
        &mut self,
        head: RequestHead,
        mut decoder: BodyDecoder,
        raw_len: Option<u64>,
        expect_continue: bool,
        encoder: ResponseEncoder,
        seq: u32,
        started: Instant,
    ) -> Result<InFlight, Option<u16>> {
        // `Expect: 100-continue` bodies are never pre-read: the client waits for our 100
        // before sending, which goes out when the app first reads.
        let mut pending = Vec::new();
        let mut body_done = false;
        // When the wait for a Python thread begins: after a body read from the socket, else
        // when the head was read (no clock read of its own on the common path).
        let mut handed = started;
        let body = match raw_len {
            Some(0) => {
                body_done = true;
                RequestBody::Complete(Bytes::new())
            }
            Some(n) if self.buf.len() as u64 >= n => {
                body_done = true;
                RequestBody::Complete(self.buf.split_to(n as usize).freeze())
            }
            _ if expect_continue => RequestBody::Stream,
            _ => match self.prebuffer(&mut decoder, &mut pending).await {
                Ok(true) => {
                    handed = Instant::now();
                    body_done = true;
                    RequestBody::Complete(Bytes::from(std::mem::take(&mut pending)))
                }
                Ok(false) => {
                    handed = Instant::now();
                    RequestBody::Stream
                }
                Err(status) => return Err(status),
            },
        };

        let may_persist = encoder.may_persist();
        let fastcgi = encoder.fastcgi_request_id();
        // `--inline`: a request whose body is all here runs on this thread; one whose body
        // is still on the socket needs this thread to read it, so a Python thread runs it.
        let inline = body_done && self.ctx.runs_inline();
        let exchange = if inline {
            Exchange::inline()
        } else {
            Exchange::new(matches!(body, RequestBody::Stream))
        };
        let guard = CancelOnDrop {
            exchange: exchange.clone(),
            armed: true,
        };
        let request = Request {
            head,
            body,
            encoder,
            started,
            queued: started,
            reply: ReplyTo {
                mailbox: self.ctx.mailbox.clone(),
                conn: self.token,
                seq,
                exchange,
            },
        };
        if inline {
            self.queue_inline(request, fastcgi.is_none());
        } else if let Err(status) = self.hand_off(request, handed).await {
            // Never queued: nothing to shed or cancel.
            let mut guard = guard;
            guard.armed = false;
            return Err(status);
        }
        Ok(InFlight {
            seq,
            handed,
            guard,
            may_persist,
            body_done,
            decoder,
            pending,
            expect_continue,
            early: VecDeque::new(),
            fastcgi,
        })
    }

    /// Serves the request `head` and the pipelined requests already buffered behind it:
    /// all of them go to Python at once (up to [`PIPELINE_BATCH`]), and their responses are
    /// written in request order, coalesced into as few writes as the timing allows.
    async fn exchange(&mut self, head: ParsedHead) -> ConnectionEnd {
        // The connection's batch vector, kept between exchanges: no allocation per request.
        let mut batch = std::mem::take(&mut self.batch);
        let end = self.exchange_batch(head, &mut batch).await;
        // Dropping what is left cancels any exchange the connection gave up on.
        batch.clear();
        self.batch = batch;
        // A streamed body read through the buffer may have grown it (to 256 KiB): an idle
        // keep-alive connection goes back to a small one, so memory per connection stays
        // what it was however large its past uploads.
        if self.buf.capacity() > KEPT_BUFFER && self.buf.len() <= READ_BUFFER {
            self.buf = BytesMut::from(&self.buf[..]);
        }
        end
    }

    async fn exchange_batch(
        &mut self,
        head: ParsedHead,
        batch: &mut Vec<InFlight>,
    ) -> ConnectionEnd {
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
            if !last.may_persist || !last.body_done || self.buf.is_empty() {
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
                        ConnectionEnd::KeepAlive => self.answer_error(status).await,
                        other => other,
                    };
                }
            }
        }
        self.finish(batch).await
    }

    /// Ends the connection after a request that could not be handed off: with its error
    /// response (and a lingering close) when there is one, quietly otherwise.
    async fn answer_error(&mut self, status: Option<u16>) -> ConnectionEnd {
        if let Some(status) = status {
            self.fail(status).await;
        }
        ConnectionEnd::Close
    }

    /// Writes the responses of `batch` in order. Each ends the connection when it must
    /// (`Connection: close`, an unread body, an error); otherwise `KeepAlive` after all.
    pub(super) async fn finish(&mut self, batch: &mut [InFlight]) -> ConnectionEnd {
        self.run_inline();
        let mut out = Vec::new();
        let mut to_release: Vec<(usize, usize)> = Vec::new();
        let mut end = self.finish_inner(batch, &mut out, &mut to_release).await;
        if self.flush(&mut out, batch, &mut to_release).await.is_err() {
            end = ConnectionEnd::Close;
        }
        self.served += batch.len() as u64;
        end
    }

    async fn finish_inner(
        &mut self,
        batch: &mut [InFlight],
        out: &mut Vec<u8>,
        to_release: &mut Vec<(usize, usize)>,
    ) -> ConnectionEnd {
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
                                    return ConnectionEnd::Close;
                                }
                                match self.wait_reply(&batch[idx], response_started).await {
                                    Ok(next) => next,
                                    Err(end) => return end,
                                }
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
                        persistence,
                        counted,
                    } => {
                        response_started |= !bytes.is_empty();
                        let n = bytes.len();
                        if n >= DIRECT_WRITE || out.len() + n > COALESCE_LIMIT {
                            if self.flush(out, batch, to_release).await.is_err() {
                                return ConnectionEnd::Close;
                            }
                            if let Err(err) = self.write(bytes).await {
                                log_debug!(
                                    "{}: client gone while writing the response: {err}",
                                    self.peer
                                );
                                return ConnectionEnd::Close;
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
                            if let Some(stop) = batch[idx].ended(persistence) {
                                if self.flush(out, batch, to_release).await.is_err() {
                                    return ConnectionEnd::Close;
                                }
                                return stop;
                            }
                            break;
                        }
                    }
                    ReplyMsg::Whole {
                        head,
                        body,
                        persistence,
                    } => {
                        // Whatever is coalesced, this head and the body: one writev.
                        let pending = Bytes::from(std::mem::take(out));
                        let result = match batch[idx].fastcgi {
                            None => {
                                self.write_gather(vec![pending, Bytes::from(head), body])
                                    .await
                            }
                            Some(id) => self.write_whole_records(pending, head, body, id).await,
                        };
                        for (idx, n) in to_release.drain(..) {
                            batch[idx].guard.exchange.release(n);
                        }
                        if let Err(err) = result {
                            log_debug!(
                                "{}: client gone while writing the response: {err}",
                                self.peer
                            );
                            return ConnectionEnd::Close;
                        }
                        if let Some(stop) = batch[idx].ended(persistence) {
                            return stop;
                        }
                        break;
                    }
                    ReplyMsg::File { file, offset, len } => {
                        response_started = true;
                        if self.flush(out, batch, to_release).await.is_err() {
                            return ConnectionEnd::Close;
                        }
                        let sent = match batch[idx].fastcgi {
                            None => self.send_file(&file, offset, len).await,
                            Some(id) => self.send_file_records(&file, offset, len, id).await,
                        };
                        if let Err(err) = sent {
                            log_debug!("{}: sendfile failed: {err}", self.peer);
                            return ConnectionEnd::Close;
                        }
                    }
                    ReplyMsg::ReadBody => {
                        // What the app sent of its response goes out before we wait for the
                        // client's body (it may wait for our response first).
                        if self.flush(out, batch, to_release).await.is_err() {
                            return ConnectionEnd::Close;
                        }
                        let current = &mut batch[idx];
                        // Only a streamed body asks, and a streamed request is always the
                        // only one of its batch: nothing else is waiting to be written.
                        if current.expect_continue && !continue_sent && !response_started {
                            continue_sent = true;
                            if self.write(response::CONTINUE).await.is_err() {
                                return ConnectionEnd::Close;
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
                                    let fastcgi = batch[idx].fastcgi;
                                    self.fail_request(fastcgi, http.status()).await;
                                }
                            }
                            return ConnectionEnd::Close;
                        }
                        exchange.send_body(chunk);
                    }
                    ReplyMsg::Answered { persistence } => {
                        // The Python thread wrote it, or a part of it, itself; nothing was
                        // coalesced before it (the lend waits for an empty `out`).
                        response_started = true;
                        let Some(persistence) = persistence else {
                            continue;
                        };
                        let mut stats = self.ctx.stats.get();
                        stats.direct += 1;
                        self.ctx.stats.set(stats);
                        if let Some(stop) = batch[idx].ended(persistence) {
                            if self.flush(out, batch, to_release).await.is_err() {
                                return ConnectionEnd::Close;
                            }
                            return stop;
                        }
                        break;
                    }
                    ReplyMsg::Abort => {
                        // Complete responses before this one still go out.
                        let _ = self.flush(out, batch, to_release).await;
                        return ConnectionEnd::Close;
                    }
                }
            }
        }
        ConnectionEnd::KeepAlive
    }

    /// Waits for the next reply to this connection. `Err`: the connection ends instead:
    /// `--timeout` passed without a reply, or admission control shed the request `current`
    /// while it was still queued (its client left, or it waited past `--max-queue-wait`).
    async fn wait_reply(
        &mut self,
        current: &InFlight,
        response_started: bool,
    ) -> Result<(u32, ReplyMsg), ConnectionEnd> {
        let timeout = self.ctx.shared.config.timeout;
        let exchange = &current.guard.exchange;
        if exchange.is_inline() {
            // Parked for room, which this connection's writes just made: it goes on now.
            self.ctx.resume_inline();
            if let Some(next) = self.inbox.try_recv() {
                return Ok(next);
            }
        }
        let _awaiting = Awaiting::enter(&self.ctx);
        // The one timer the wait always had (--timeout's), cut to QUEUE_LOOK while the
        // request is queued: most replies come before either ends, at no extra cost.
        let first = match timeout {
            Some(limit) if !exchange.is_queued() => Some(limit),
            Some(limit) => Some(limit.min(QUEUE_LOOK)),
            None if !exchange.is_queued() => None,
            None => Some(QUEUE_LOOK),
        };
        let first = match self.lend(current, response_started) {
            Look::Nothing => {
                let Some(first) = first else {
                    return Ok(self.inbox.recv().await);
                };
                if let Ok(next) = monoio::time::timeout(first, self.inbox.recv()).await {
                    return Ok(next);
                }
                first
            }
            // Boxed: the watch's futures (a readiness op and a timer) would otherwise
            // grow every wait's state, which is moved on every request (measured: +1,400
            // instructions per request with nothing lent, most of it memcpy).
            Look::Watch => match Box::pin(self.watch_direct(current, first)).await {
                Ok(next) => return Ok(next),
                Err(first) => first,
            },
            news => return Ok(told(current, news)),
        };
        // Only on this slow path: when the wait began, to the timer's precision (no clock
        // read for the replies that come first).
        let began = Instant::now()
            .checked_sub(first)
            .unwrap_or_else(Instant::now);
        if exchange.is_queued() {
            let timeout_at = timeout.map(|limit| began + limit);
            match self.watch_queued(current, timeout_at).await? {
                Watched::Reply(next) => return Ok(next),
                Watched::Started => {}
                Watched::TimedOut => {
                    let limit = timeout.unwrap_or_default();
                    return Err(self
                        .application_timed_out(limit, response_started, current.fastcgi)
                        .await);
                }
            }
        }
        // A Python thread has it: the rest of --timeout, counted from the wait's start.
        let Some(limit) = timeout else {
            return Ok(self.inbox.recv().await);
        };
        let deadline = began + limit;
        match monoio::time::timeout_at(deadline.into(), self.inbox.recv()).await {
            Ok(next) => Ok(next),
            Err(_elapsed) => Err(self
                .application_timed_out(limit, response_started, current.fastcgi)
                .await),
        }
    }

    /// Whether to lend the socket for `current`'s response to be written by its Python
    /// thread (ARCHITECTURE.md §4, "Direct answers"): only when this thread waits for no
    /// other reply (it would wake for those anyway, and write this one in the same run),
    /// nothing of the response went out yet, the request's body is all read and its
    /// connection already carried a request (the second descriptor is made once per
    /// connection: not worth it for one request). A socket lent before is still reported.
    fn lend(&mut self, current: &InFlight, response_started: bool) -> Look {
        let fresh = !response_started
            && self.ctx.awaiting_replies.get() == 1
            && self.served > 0
            && current.body_done
            && !current.expect_continue
            && current.fastcgi.is_none()
            && !current.guard.exchange.is_inline()
            && direct_answers();
        let lent = &mut self.lent;
        let stream = &self.stream;
        let peer = &self.peer;
        let shared = &self.ctx.shared;
        current.guard.exchange.direct().lend(fresh.then_some(|| {
            if lent.is_none() {
                match Lent::of(stream, shared) {
                    Ok(Some(socket)) => *lent = Some(Arc::new(socket)),
                    Ok(None) => return None,
                    Err(err) => {
                        log_debug!("{peer}: no second descriptor for a direct answer: {err}");
                        return None;
                    }
                }
            }
            lent.clone().map(|socket| socket as Arc<dyn LentSocket>)
        }))
    }

    /// The next reply to `current`'s connection while its socket is lent: the socket and a
    /// periodic look are watched as well, for a response written directly. `first`: the
    /// wait's first timer (`None`: none); once it passed the socket is taken back, and
    /// `Err(first)` says the wait goes on the usual way.
    async fn watch_direct(
        &mut self,
        current: &InFlight,
        first: Option<Duration>,
    ) -> Result<(u32, ReplyMsg), Duration> {
        let Some(first) = first else {
            return Ok(self.watch_lent(current).await);
        };
        if let Ok(next) = monoio::time::timeout(first, self.watch_lent(current)).await {
            return Ok(next);
        }
        match current.guard.exchange.direct().recall() {
            Look::Nothing => Err(first),
            // The writer never waits: its message is on its way, and nothing (a 504) may
            // be written before it.
            Look::Cut => Ok(self.inbox.recv().await),
            news => Ok(told(current, news)),
        }
    }

    async fn watch_lent(&mut self, current: &InFlight) -> (u32, ReplyMsg) {
        let answer = current.guard.exchange.direct();
        let mut period = DIRECT_LOOK;
        loop {
            let woke = {
                let reply = self.inbox.recv();
                let readable = async {
                    // An error of the wait itself reads as "look at the socket".
                    let _ = self.stream.readable().await;
                };
                let look = monoio::time::sleep(period);
                race(reply, race(readable, look)).await
            };
            match woke {
                // This request's reply came the usual way, or a later one's: it is still
                // lent for this one.
                Either::Left(next) => return next,
                Either::Right(Either::Left(())) => {
                    // The client's next request, most often (or its EOF, or an error, which
                    // the next read meets again): the answer was written, or it comes as a
                    // message now.
                    let _ = self.take_readable();
                    return match answer.recall() {
                        Look::Nothing | Look::Cut => self.inbox.recv().await,
                        news => told(current, news),
                    };
                }
                Either::Right(Either::Right(())) => match answer.look() {
                    Look::Watch => period = (period * 2).min(DIRECT_LOOK_MAX),
                    Look::Started => {
                        log_debug!(
                            "{}: a response written directly is taken back at a look; it goes on by the mailbox",
                            self.peer
                        );
                        return told(current, Look::Started);
                    }
                    news => return told(current, news),
                },
            }
        }
    }

    /// Admission control for the queued request `current` (ARCHITECTURE.md §4): waits for
    /// a reply while watching the socket and `--max-queue-wait`. A client that left (EOF or
    /// an error on its socket; a half-close looks the same, and nginx too takes it for an
    /// abort) or a wait past the limit makes this thread claim the request ([`Exchange::shed`]);
    /// if a Python thread claimed it first, the reply comes as usual (`Started`).
    /// `--timeout` (`timeout_at`) still holds while it waits: past it, the request is taken
    /// out of the queue (uncounted: it is answered 504, not shed) and `TimedOut` says so.
    /// `Err`: the connection ends here.
    async fn watch_queued(
        &mut self,
        current: &InFlight,
        timeout_at: Option<Instant>,
    ) -> Result<Watched, ConnectionEnd> {
        let exchange = current.guard.exchange.clone();
        let queue_deadline = self
            .ctx
            .shared
            .config
            .max_queue_wait
            .map(|limit| current.handed + limit);
        // The first of the two limits; which one it is, is decided when it passes.
        let deadline = match (queue_deadline, timeout_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // A reply, bytes (or the end) on the socket, or the limit: whichever comes first.
        enum Woke {
            Reply((u32, ReplyMsg)),
            Readable,
            Limit,
        }
        let mut watching = true;
        let mut stopped_watching_logged = false;
        loop {
            if !exchange.is_queued() {
                return Ok(Watched::Started);
            }
            if watching && self.buf.len() >= WATCH_BUFFER_LIMIT {
                // Never read unbounded: stop watching (the buffer is the client's next
                // requests; the queue limit still holds).
                watching = false;
                if !stopped_watching_logged {
                    stopped_watching_logged = true;
                    log_debug!(
                        "{}: read buffer full while queued: socket no longer watched",
                        self.peer
                    );
                }
            }
            let woke = {
                let reply = self.inbox.recv();
                let limit = async {
                    match deadline {
                        Some(at) => monoio::time::sleep_until(at.into()).await,
                        None => std::future::pending::<()>().await,
                    }
                };
                let readable = async {
                    if watching {
                        // An error of the wait itself reads as "look at the socket".
                        let _ = self.stream.readable().await;
                    } else {
                        std::future::pending::<()>().await
                    }
                };
                match race(reply, race(readable, limit)).await {
                    Either::Left(next) => Woke::Reply(next),
                    Either::Right(Either::Left(())) => Woke::Readable,
                    Either::Right(Either::Right(())) => Woke::Limit,
                }
            };
            match woke {
                Woke::Reply(next) => return Ok(Watched::Reply(next)),
                Woke::Limit if queue_deadline.is_none_or(|at| Instant::now() < at) => {
                    // --timeout came first: a 504, and the app never runs the request.
                    if !exchange.shed() {
                        return Ok(Watched::Started);
                    }
                    return Ok(Watched::TimedOut);
                }
                Woke::Limit => {
                    if !exchange.shed() {
                        return Ok(Watched::Started);
                    }
                    note_shed(ShedReason::QueueWait);
                    log_debug!(
                        "{}: no Python thread within --max-queue-wait: answering 503",
                        self.peer
                    );
                    self.fail_request(current.fastcgi, 503).await;
                    return Err(ConnectionEnd::Close);
                }
                Woke::Readable => match self.take_readable() {
                    Ok(()) => {}
                    Err(gone) => {
                        if exchange.shed() {
                            note_shed(ShedReason::ClientGone);
                            log_debug!(
                                "{}: client gone while its request was queued ({gone}): dropped",
                                self.peer
                            );
                            return Err(ConnectionEnd::Close);
                        }
                        return Ok(Watched::Started);
                    }
                },
            }
        }
    }
}

/// Whether sockets are lent for direct answers: yes, unless `SPINDLE_DIRECT_ANSWERS=0`
/// (read once), the switch for measuring them against the mailbox alone (perf/ab.py).
fn direct_answers() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SPINDLE_DIRECT_ANSWERS").is_none_or(|v| v != "0"))
}

/// What the I/O side learned of a direct answer, as the reply it stands for: the end of
/// the response, or that a part of it went out (`Started`).
fn told(current: &InFlight, news: Look) -> (u32, ReplyMsg) {
    debug_assert!(matches!(news, Look::Answered(_) | Look::Started));
    let persistence = match news {
        Look::Answered(persistence) => Some(persistence),
        _ => None,
    };
    (current.seq, ReplyMsg::Answered { persistence })
}

/// Counts a connection waiting for a reply in [`IoCtx::awaiting_replies`] while it lives.
struct Awaiting(Rc<IoCtx>);

impl Awaiting {
    fn enter(ctx: &Rc<IoCtx>) -> Awaiting {
        ctx.awaiting_replies.set(ctx.awaiting_replies.get() + 1);
        Awaiting(ctx.clone())
    }
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        self.0
            .awaiting_replies
            .set(self.0.awaiting_replies.get() - 1);
    }
}

/// How [`Conn::watch_queued`] ended without ending the connection.
enum Watched {
    /// A reply came (for this request or a later one of the batch).
    Reply((u32, ReplyMsg)),
    /// A Python thread started the request: wait for its reply as usual.
    Started,
    /// `--timeout` passed while it was still queued; it is out of the queue.
    TimedOut,
}

impl Conn {
    /// Takes what the socket holds now into the read buffer (bounded by
    /// [`WATCH_BUFFER_LIMIT`]). `Err`: the client closed its side or the connection broke.
    fn take_readable(&mut self) -> Result<(), &'static str> {
        let room = WATCH_BUFFER_LIMIT.saturating_sub(self.buf.len());
        if room == 0 {
            return Ok(());
        }
        self.buf.reserve(room.min(READ_BUFFER));
        let start = self.buf.len();
        let spare = self.buf.spare_capacity_mut();
        // At most a head's worth per look: zeroing a large spare capacity (left by an
        // upload) would cost more than the read.
        let take = spare.len().min(room).min(READ_BUFFER);
        // Zero the spare bytes we read into (cheap next to the syscall; no unsafe here).
        self.buf.resize(start + take, 0);
        match super::sys::recv_now(&self.stream, &mut self.buf[start..]) {
            Ok(0) => {
                self.buf.truncate(start);
                Err("end of stream")
            }
            Ok(n) => {
                crate::metrics::received(n);
                self.buf.truncate(start + n);
                Ok(())
            }
            Err(err) => {
                self.buf.truncate(start);
                match err.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(()),
                    _ => Err("connection reset"),
                }
            }
        }
    }

    /// `--timeout`: the application gave this connection nothing for `limit` (no response
    /// yet, or no next piece of it). The client is answered 504 when nothing of the response
    /// was sent, or the connection is closed in the middle of it (the response is visibly
    /// cut short); dropping the batch cancels the exchange, so the Python thread drops what
    /// it still produces and calls `close()` when it comes back (ARCHITECTURE.md §10). The
    /// Python side logs the stuck thread's stack.
    async fn application_timed_out(
        &mut self,
        limit: Duration,
        response_started: bool,
        fastcgi: Option<u16>,
    ) -> ConnectionEnd {
        log_warn!(
            "{}: the application sent nothing for --timeout {} s: {}",
            self.peer,
            limit.as_secs_f64(),
            if response_started {
                "closing the connection in the middle of its response"
            } else {
                "answering 504"
            }
        );
        if !response_started {
            self.fail_request(fastcgi, 504).await;
        }
        ConnectionEnd::Close
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

    /// Counts a request handed to Python: queued, or kept to run on this thread (`inline`).
    fn count_handed(&self, inline: bool) {
        crate::metrics::request_dispatched();
        let mut stats = self.ctx.stats.get();
        stats.requests += 1;
        stats.inline += u64::from(inline);
        self.ctx.stats.set(stats);
        self.ctx.shared.served[self.ctx.index].store(stats.requests, Ordering::Relaxed);
    }

    /// Keeps a request to run on this thread (`--inline`, ARCHITECTURE.md §4, "Inline")
    /// with the others of its exchange, in one call when their responses are about to be
    /// written (pipelined requests: one taking of the GIL for all of them). The first may
    /// write its response to the socket itself when it is the first of its exchange
    /// (nothing of the connection is left to write before it) and `may_write` (not
    /// FastCGI, whose records the I/O thread writes).
    fn queue_inline(&mut self, request: Request, may_write: bool) {
        self.count_handed(true);
        if self.inline_pending.is_empty() {
            self.inline_lend =
                may_write && request.reply.seq == self.served as u32 && direct_answers();
        }
        self.inline_pending.push(request);
    }

    /// Runs the requests kept by `queue_inline`: what they replied is in the connection's
    /// inbox on return, or their responses parked for room. The first writes its
    /// response's bytes to the socket itself, as it makes them, through the direct-answer
    /// state (§4, "Direct answers"): a hello response goes out in one `send` from inside
    /// the call, and a stream's first piece before the next is asked for.
    fn run_inline(&mut self) {
        let Some(first) = self.inline_pending.first() else {
            return;
        };
        let seq = first.reply.seq;
        let exchange = first.reply.exchange.clone();
        // One request, and no other connection on this thread: pipelined requests are
        // written together, in one write after the call, and with other connections the
        // ring sends their responses with this one in one system call, where a direct
        // `send` is one more per response (perf/runs/2026-12-06-vm-inline: with io_uring
        // at 64 connections, lending whenever no other connection was in an exchange
        // made 1.06x pool's req/s, never lending 1.18x; at one connection lending takes
        // 0.92x the CPU of not lending).
        let lend = std::mem::take(&mut self.inline_lend)
            && self.inline_pending.len() == 1
            && self.ctx.live_conns.get() == 1;
        if lend {
            let stream = &self.stream;
            let socket = self
                .inline_socket
                .get_or_insert_with(|| Arc::new(InlineSocket::of(stream)))
                .clone();
            exchange
                .direct()
                .lend(Some(|| Some(socket as Arc<dyn LentSocket>)));
        }
        let pending = &mut self.inline_pending;
        self.ctx.call_inline(|runner| runner.run(pending));
        if lend {
            // Taken back before anything else: what went out directly is news placed
            // before the replies the call sent by the mailbox (written after it).
            match exchange.direct().recall() {
                Look::Answered(persistence) => self.inbox.push_front(
                    seq,
                    ReplyMsg::Answered {
                        persistence: Some(persistence),
                    },
                ),
                Look::Started => {
                    self.inbox
                        .push_front(seq, ReplyMsg::Answered { persistence: None });
                }
                // `Nothing`: nothing went out directly. `Cut`: the call returned while a
                // thread it gave `write` to was inside a write; that writer's message, on
                // its way, tells what went out. (`Watch` is never the answer to a recall.)
                _ => {}
            }
        }
    }

    /// Queues the request for a Python thread. A full queue holds the connection back
    /// (back-pressure) for up to `--max-queue-wait` from `since`; `Err(503)`: it stayed
    /// full (the request is shed), or the server is stopping; `Err(None)`: the client left
    /// meanwhile (the socket is watched as for a queued request).
    async fn hand_off(&mut self, request: Request, since: Instant) -> Result<(), Option<u16>> {
        let mut request = request;
        let limit = self.ctx.shared.config.max_queue_wait;
        let mut backoff = Duration::from_micros(200);
        loop {
            let sent = match self.ctx.requests.borrow().as_ref() {
                Some(requests) => requests.try_send(request),
                None => Err(TrySendError::Disconnected(request)),
            };
            match sent {
                Ok(()) => {
                    self.count_handed(false);
                    return Ok(());
                }
                Err(TrySendError::Full(back)) => {
                    if limit.is_some_and(|limit| since.elapsed() >= limit) {
                        // Shed: the queue stayed full for --max-queue-wait.
                        log_debug!(
                            "{}: request queue full past --max-queue-wait: answering 503",
                            self.peer
                        );
                        note_shed(ShedReason::QueueWait);
                        return Err(Some(503));
                    }
                    request = back;
                    // Held back, the request is watched as a queued one is: a client that
                    // leaves meanwhile is not answered, nor its request queued later.
                    if self.buf.len() < WATCH_BUFFER_LIMIT {
                        let sleep = monoio::time::sleep(backoff);
                        if let Either::Right(_) = race(sleep, self.stream.readable()).await {
                            if let Err(gone) = self.take_readable() {
                                note_shed(ShedReason::ClientGone);
                                log_debug!(
                                    "{}: client gone while its request was held back by a full queue ({gone}): dropped",
                                    self.peer
                                );
                                return Err(None);
                            }
                            continue;
                        }
                    } else {
                        monoio::time::sleep(backoff).await;
                    }
                    backoff = (backoff * 2).min(Duration::from_millis(20));
                }
                Err(TrySendError::Disconnected(_)) => return Err(Some(503)),
            }
        }
    }
}
