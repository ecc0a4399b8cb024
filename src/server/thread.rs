//! One I/O thread's life: the dispatcher that drains its [`IoMailbox`] once per wake-up and
//! routes replies to connections (`ctx.rs`), the accept loops, and the stop: stop
//! accepting, let connections finish their exchanges, drop the request sender.
//!
//! Everything here runs on one monoio runtime, so the per-thread state is `Rc`/`RefCell`
//! and never locked. The only cross-thread traffic is the request queue and this thread's
//! mailbox.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use monoio::net::TcpListener;

use super::conn::Conn;
use super::ctx::{IoCtx, Stats};
use super::event::{race, Either, LocalEvent};
use super::Shared;
use crate::handoff::{IoMailbox, RequestSender};
use crate::http::date::DateCache;
use crate::{log_debug, log_warn};

/// Counts a connection as live for as long as it exists; the last one out wakes `io_main`
/// when the server is stopping.
pub(super) struct LiveGuard(Rc<IoCtx>);

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
    requests: RequestSender,
    listeners: Vec<std::net::TcpListener>,
) -> anyhow::Result<()> {
    let ctx = Rc::new(IoCtx {
        index: idx,
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
    let shares_listeners = ctx.shared.config.workers > 1;
    loop {
        if shares_listeners {
            leave_connections_to_idle_workers(&ctx).await;
        }
        let accepted = match race(listener.accept(), ctx.stop.wait()).await {
            Either::Left(accepted) => accepted,
            Either::Right(()) => break,
        };
        match accepted {
            Ok((stream, peer)) => serve_connection(&ctx, stream, peer, fixed_local, listener_addr),
            Err(err) => {
                // EMFILE and friends: log, back off briefly, keep accepting.
                log_warn!("accept failed: {err}");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // Stopping: the connections already waiting in the accept queue were sent before the
    // stop; serve them too (gunicorn#3397), then stop accepting (ARCHITECTURE.md §10).
    while let Ok(Ok((stream, peer))) = monoio::time::timeout(BACKLOG_POLL, listener.accept()).await
    {
        serve_connection(&ctx, stream, peer, fixed_local, listener_addr);
    }
}

/// How long a stopping accept loop waits for one more connection from the accept queue: a
/// queued connection is accepted at once, so this only bounds the last, empty, wait.
const BACKLOG_POLL: Duration = Duration::from_millis(1);

/// How long a worker whose Python threads are all busy holds off accepting, leaving new
/// connections to workers with a free thread; after it, it accepts anyway (every worker may
/// be busy, and it can grow). How often it looks meanwhile:
const BUSY_HOLD_OFF: Duration = Duration::from_millis(20);
const BUSY_LOOK_EVERY: Duration = Duration::from_millis(1);

/// With several workers on the same listening sockets, the kernel hands a connection to
/// whichever worker is waiting in `accept`, and a worker's I/O thread waits there however
/// busy its Python threads are. So while none of this worker's Python threads is free, it
/// waits before accepting, up to [`BUSY_HOLD_OFF`] (ARCHITECTURE.md §10).
async fn leave_connections_to_idle_workers(ctx: &IoCtx) {
    let since = std::time::Instant::now();
    while !ctx.python_has_idle_thread() && since.elapsed() < BUSY_HOLD_OFF && !ctx.stop.is_set() {
        monoio::time::sleep(BUSY_LOOK_EVERY).await;
    }
}

fn serve_connection(
    ctx: &Rc<IoCtx>,
    stream: monoio::net::TcpStream,
    peer: std::net::SocketAddr,
    fixed_local: Option<std::net::SocketAddr>,
    listener_addr: Option<std::net::SocketAddr>,
) {
    let local = match fixed_local {
        Some(addr) => addr,
        None => stream.local_addr().ok().or(listener_addr).unwrap_or(peer),
    };
    ctx.live_conns.set(ctx.live_conns.get() + 1);
    let guard = LiveGuard(ctx.clone());
    monoio::spawn(async move {
        let ctx = guard.0.clone();
        let (token, inbox) = ctx.register();
        let mut conn = Conn::new(ctx.clone(), stream, token, inbox, peer, local);
        conn.serve().await;
        ctx.unregister(token);
        drop(guard);
    });
}
