//! One I/O thread's life: the dispatcher that drains its [`IoMailbox`] once per wake-up and
//! routes replies to connections (`ctx.rs`), the accept loops, and the stop: stop
//! accepting, let connections finish their exchanges, drop the request sender.
//!
//! Everything here runs on one monoio runtime, so the per-thread state is `Rc`/`RefCell`
//! and never locked. The only cross-thread traffic is the request queue and this thread's
//! mailbox.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use super::conn::Conn;
use super::ctx::{IoCtx, Stats};
use super::event::{race, Either, LocalEvent};
use super::spread::Handed;
use super::stream::{Accepted, ListenAddr, Listener};
use super::{sys, Driver, Shared};
use crate::config::Protocol;
use crate::handoff::{Endpoint, IoMailbox, RequestSender};
use crate::http::date::DateCache;
use crate::{log_debug, log_error, log_warn};

/// Counts a connection as live for as long as it exists; the last one out wakes `io_main`
/// when the server is stopping.
pub(super) struct LiveGuard(Rc<IoCtx>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        crate::metrics::connection_closed();
        self.0
            .shared
            .open_conns
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.0.shared.spread.closed(self.0.index);
        self.0.live_conns.set(self.0.live_conns.get() - 1);
        self.0.wake_if_all_closed();
    }
}

/// Held by a running accept loop, and by the task that takes connections other threads
/// hand over: see `IoCtx::accepting`. An accept loop's (`spread`) also ends its count in
/// the worker's [`Spread`](super::spread::Spread), which receivers watch.
struct AcceptGuard {
    ctx: Rc<IoCtx>,
    spread: bool,
}

impl AcceptGuard {
    fn new(ctx: &Rc<IoCtx>, spread: bool) -> AcceptGuard {
        ctx.accepting.set(ctx.accepting.get() + 1);
        AcceptGuard {
            ctx: ctx.clone(),
            spread,
        }
    }
}

impl Drop for AcceptGuard {
    fn drop(&mut self) {
        if self.spread {
            self.ctx.shared.spread.accept_loop_ended(self.ctx.index);
        }
        self.ctx.accepting.set(self.ctx.accepting.get() - 1);
        self.ctx.wake_if_all_closed();
    }
}

impl IoCtx {
    fn all_closed_now(&self) -> bool {
        self.live_conns.get() == 0 && self.accepting.get() == 0
    }

    fn wake_if_all_closed(&self) {
        if self.all_closed_now() {
            if let Some(waker) = self.all_closed.borrow_mut().take() {
                waker.wake();
            }
        }
    }
}

pub(super) async fn io_main(
    idx: usize,
    driver: Driver,
    shared: Arc<Shared>,
    mailbox: Arc<IoMailbox>,
    requests: RequestSender,
    listeners: Vec<Listener>,
) -> anyhow::Result<()> {
    let ctx = Rc::new(IoCtx {
        index: idx,
        driver,
        shared,
        requests: RefCell::new(Some(requests)),
        mailbox,
        slots: RefCell::new(Vec::new()),
        free_slots: RefCell::new(Vec::new()),
        date: RefCell::new(DateCache::new()),
        stop: LocalEvent::default(),
        stopped_at: Cell::new(None),
        live_conns: Cell::new(0),
        accepting: Cell::new(0),
        refusing: Cell::new(0),
        all_closed: RefCell::new(None),
        stats: Cell::new(Stats::default()),
        awaiting_replies: Cell::new(0),
        inline: RefCell::new(None),
    });
    if let Some(app) = &ctx.shared.inline {
        *ctx.inline.borrow_mut() = app.join(idx);
    }

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
                if !ctx.stop.is_set() {
                    ctx.stopped_at.set(Some(std::time::Instant::now()));
                }
                ctx.stop.trigger();
            }
            pending
        })
        .await
    });

    if idx == 0 {
        monoio::spawn(super::admission::log_summaries(ctx.clone()));
    }

    if ctx.shared.spread.threads() > 1 {
        let guard = AcceptGuard::new(&ctx, false);
        ctx.shared.spread.receiving(idx);
        monoio::spawn(async move {
            let ctx = guard.ctx.clone();
            while let Some(handed) = poll_fn(|cx| ctx.shared.spread.poll_take(ctx.index, cx)).await
            {
                serve_here(&ctx, handed.stream, handed.peer, handed.fixed_local, true);
            }
            drop(guard);
        });
    }
    for listener in listeners {
        let guard = AcceptGuard::new(&ctx, true);
        monoio::spawn(async move {
            let ctx = guard.ctx.clone();
            if let Err(err) = accept_loop(ctx.clone(), listener).await {
                // Only the set-up of a listener or of an accepted socket fails here, which
                // no retry would mend: this I/O thread stops accepting on it and says so.
                log_error!(
                    "I/O thread {}: a listener stopped accepting: {err:#}",
                    ctx.index
                );
            }
            drop(guard);
        });
    }

    ctx.stop.wait().await;
    // Stopping: accept loops take what waits in their queues and end (they watch `stop`),
    // idle connections close, and connections with a request in flight finish it first.
    // Both are waited for: this task may run before an accept loop has seen the stop, and
    // a thread that ended with no connection left dropped its queued ones unanswered (a
    // reset for each; it took a loaded machine to see it).
    poll_fn(|cx| {
        if ctx.all_closed_now() {
            Poll::Ready(())
        } else {
            *ctx.all_closed.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    })
    .await;
    // No connection is left: the responses still parked inline end (their `close()`
    // called) and the thread leaves its interpreter, before the queue closes.
    drop(ctx.inline.borrow_mut().take());
    ctx.requests.borrow_mut().take();
    ctx.mailbox.detach();
    let stats = ctx.stats.get();
    log_debug!(
        "I/O thread {idx}: {} requests, {} run inline, {} answered directly, {} replies in {} dispatcher wake-ups ({:.2} replies per wake-up), {} connections handed to other I/O threads",
        stats.requests,
        stats.inline,
        stats.direct,
        stats.replies,
        stats.wakeups,
        stats.replies as f64 / stats.wakeups.max(1) as f64,
        stats.handed
    );
    Ok(())
}

async fn accept_loop(ctx: Rc<IoCtx>, listener: Listener) -> anyhow::Result<()> {
    // The local address of an accepted TCP connection is the listener's, unless the
    // listener is bound to a wildcard address: then ask (one getsockname) per connection.
    let fixed_local = match listener.local_addr()? {
        ListenAddr::Tcp(addr) if !addr.ip().is_unspecified() => Some(addr),
        _ => None,
    };
    // Any supervised worker may share its listeners: with the workers `-w` starts, with
    // those SIGTTIN adds, with its own replacement while that starts.
    let shares_listeners = ctx.shared.config.worker.is_some();
    // Readiness, then `accept(2)` on the (non-blocking) socket, rather than monoio's accept
    // op: a readiness wait can be dropped at any moment without losing anything, while an
    // io_uring accept that completes as it is cancelled (the stop, a time-out) takes a
    // connection out of the queue and drops it unanswered (ARCHITECTURE.md §10).
    listener.set_nonblocking(true)?;
    let nonblocking = ctx.driver == Driver::Epoll;
    let mut ready = None;
    loop {
        let waiting = match &ready {
            Some(ready) => ready,
            None => match listener.readiness() {
                Ok(fresh) => ready.insert(fresh),
                Err(err) => {
                    // A descriptor for the wait could not be made (EMFILE): try again soon.
                    log_warn!("cannot wait on a listener: {err}");
                    monoio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        match race(waiting.readable(), ctx.stop.wait()).await {
            Either::Left(Ok(())) => {}
            Either::Left(Err(err)) => {
                log_warn!("waiting on a listener failed: {err}");
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Either::Right(()) => break,
        }
        if shares_listeners && worker_busy(&ctx) {
            // The looks at the queue must not be woken by arrivals, or each would find the
            // connection that woke it, which an idle worker is about to take: stop watching
            // the listener meanwhile (with epoll it stays registered, and every arrival
            // wakes this thread; a look then due ran right then, every time).
            ready = None;
            if !leave_connections_to_idle_workers(&ctx, &listener).await {
                continue;
            }
        }
        // Take what is queued, but only one connection at a time while every Python thread
        // is busy and other workers share the queue.
        loop {
            match listener.accept(nonblocking) {
                Ok((stream, peer)) => {
                    serve_connection(&ctx, stream, peer, fixed_local);
                    if shares_listeners && worker_busy(&ctx) {
                        break;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if is_transient(&err) => {}
                Err(err) => {
                    // EMFILE and friends: log, back off briefly, keep accepting.
                    log_warn!("accept failed: {err}");
                    monoio::time::sleep(Duration::from_millis(10)).await;
                    break;
                }
            }
        }
    }
    // Stopping: the connections already waiting in the accept queue were sent before the
    // stop; serve them too (gunicorn#3397), then stop accepting (ARCHITECTURE.md §10). A
    // retiring worker leaves them to the workers that stay.
    if !ctx
        .shared
        .drain_queue
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        return Ok(());
    }
    loop {
        match listener.accept(nonblocking) {
            Ok((stream, peer)) => serve_connection(&ctx, stream, peer, fixed_local),
            Err(err) if is_transient(&err) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// Accept errors that concern one connection (it was reset while queued) or none (a
/// signal), not the listener.
fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
    ) || err.raw_os_error() == Some(libc::EPROTO)
}

/// How long a connection must have waited in the queue before a busy worker takes it
/// (every worker may be busy, and this one can grow); how often it looks meanwhile:
const BUSY_HOLD_OFF: Duration = Duration::from_millis(20);
const BUSY_LOOK_EVERY: Duration = Duration::from_millis(1);

/// With several workers on the same listening sockets, a new connection wakes every worker
/// waiting on them, and the first to call `accept` takes it, however busy its Python threads
/// are. So a busy worker, one whose Python threads are all inside application calls, lets the
/// others go first: it takes a connection
/// only once the queue has held one at every look for [`BUSY_HOLD_OFF`], which a worker
/// that is not busy never lets happen. Returns whether to accept now (false: the queue
/// emptied, someone else took it). ARCHITECTURE.md §10.
async fn leave_connections_to_idle_workers(ctx: &IoCtx, listener: &Listener) -> bool {
    let since = std::time::Instant::now();
    loop {
        if !worker_busy(ctx) || ctx.stop.is_set() {
            return true;
        }
        if !sys::has_queued_connection(listener) {
            return false;
        }
        if since.elapsed() >= BUSY_HOLD_OFF {
            return true;
        }
        monoio::time::sleep(BUSY_LOOK_EVERY).await;
    }
}

/// Whether this worker should let other workers sharing its listeners take new
/// connections first: every Python thread is inside an application call, or it holds all
/// the connections it may (`--worker-connections`; what it accepts then is refused).
fn worker_busy(ctx: &IoCtx) -> bool {
    ctx.python_threads_held() || ctx.at_connection_limit()
}

/// Starts serving an accepted connection here, or hands it to a less loaded I/O thread of
/// this worker (`spread.rs`); not while stopping, when every thread serves what it takes.
fn serve_connection(
    ctx: &Rc<IoCtx>,
    stream: Accepted,
    peer: Endpoint,
    fixed_local: Option<std::net::SocketAddr>,
) {
    if !ctx.stop.is_set() {
        if let Some(to) = ctx.shared.spread.place(ctx.index) {
            let mut stats = ctx.stats.get();
            stats.handed += 1;
            ctx.stats.set(stats);
            let handed = Handed {
                stream,
                peer,
                fixed_local,
            };
            ctx.shared.spread.hand(to, handed);
            return;
        }
    }
    serve_here(ctx, stream, peer, fixed_local, false);
}

/// Serves a connection on this thread; one that cannot be set up (no memory for its
/// registration) is closed with a warning. `counted`: the spread already counts it here
/// (it was handed over).
fn serve_here(
    ctx: &Rc<IoCtx>,
    stream: Accepted,
    peer: Endpoint,
    fixed_local: Option<std::net::SocketAddr>,
    counted: bool,
) {
    let spread = &ctx.shared.spread;
    if !counted {
        spread.opened(ctx.index);
    }
    let local = stream.local(fixed_local, peer);
    let stream = match stream.into_stream() {
        Ok(stream) => stream,
        Err(err) => {
            spread.closed(ctx.index);
            log_warn!("cannot serve a connection from {peer}: {err}");
            return;
        }
    };
    let open = ctx
        .shared
        .open_conns
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if open >= ctx.shared.connection_limit {
        ctx.shared
            .open_conns
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        spread.closed(ctx.index);
        super::admission::refuse(ctx, stream);
        return;
    }
    ctx.live_conns.set(ctx.live_conns.get() + 1);
    crate::metrics::connection_opened();
    let guard = LiveGuard(ctx.clone());
    monoio::spawn(async move {
        let ctx = guard.0.clone();
        let (token, inbox) = ctx.register();
        let mut conn = Conn::new(ctx.clone(), stream, token, inbox, peer, local);
        match ctx.shared.config.protocol {
            Protocol::Http => conn.serve().await,
            Protocol::Fastcgi => conn.serve_fastcgi().await,
            gateway => conn.serve_gateway(gateway).await,
        }
        // Every exchange of the connection is cancelled once it is gone: a response of it
        // parked inline ends now, its `close()` called, whatever the protocol (`--inline`).
        drop(conn);
        ctx.resume_inline();
        ctx.unregister(token);
        drop(guard);
    });
}
