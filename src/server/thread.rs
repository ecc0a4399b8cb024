//! One I/O thread's life: its shared state ([`IoCtx`]), the dispatcher that routes
//! replies from its [`IoMailbox`] to connections by slot, the accept loops, and the stop:
//! stop accepting, let connections finish their exchanges, drop the request sender.
//!
//! Everything here runs on one monoio runtime, so the per-thread state is `Rc`/`RefCell`
//! and never locked. The only cross-thread traffic is the request queue and this thread's
//! mailbox, which the dispatcher drains once per wake-up.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use crossbeam_channel::Sender;
use monoio::net::TcpListener;

use super::conn::Conn;
use super::event::{race, Either, LocalEvent};
use super::Shared;
use crate::handoff::{ConnToken, IoMailbox, Reply, ReplyMsg, Request};
use crate::http::date::DateCache;
use crate::http::response;
use crate::{log_debug, log_warn};

/// The replies routed to one connection, in the order its Python thread sent them.
#[derive(Default)]
pub(super) struct ConnInbox {
    pub(super) msgs: RefCell<VecDeque<(u32, ReplyMsg)>>,
    pub(super) waker: Cell<Option<Waker>>,
}

impl ConnInbox {
    pub(super) fn push(&self, seq: u32, msg: ReplyMsg) {
        self.msgs.borrow_mut().push_back((seq, msg));
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// The next reply if one is here already.
    pub(super) fn try_recv(&self) -> Option<(u32, ReplyMsg)> {
        self.msgs.borrow_mut().pop_front()
    }

    /// The next reply with its request number.
    pub(super) async fn recv(&self) -> (u32, ReplyMsg) {
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

pub(super) struct Slot {
    generation: u32,
    inbox: Option<Rc<ConnInbox>>,
}

/// This I/O thread's state, shared by its tasks.
pub(super) struct IoCtx {
    pub(super) shared: Arc<Shared>,
    /// This thread's sender of the request queue; taken out (dropped) when the thread
    /// stops, whatever tasks the runtime may still keep, so the Python threads can end.
    pub(super) requests: RefCell<Option<Sender<Request>>>,
    pub(super) mailbox: Arc<IoMailbox>,
    pub(super) slots: RefCell<Vec<Slot>>,
    pub(super) free_slots: RefCell<Vec<u32>>,
    pub(super) date: RefCell<DateCache>,
    pub(super) stop: LocalEvent,
    pub(super) live_conns: Cell<usize>,
    pub(super) all_closed: RefCell<Option<Waker>>,
    pub(super) stats: Cell<Stats>,
}

/// Counters for the lab: how well replies batch per wake-up.
#[derive(Clone, Copy, Default)]
pub(super) struct Stats {
    pub(super) requests: u64,
    pub(super) replies: u64,
    pub(super) wakeups: u64,
}

impl IoCtx {
    pub(super) fn register(&self) -> (ConnToken, Rc<ConnInbox>) {
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

    pub(super) fn unregister(&self, token: ConnToken) {
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
    pub(super) fn route(&self, reply: Reply) {
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

    /// Whether a new exchange may keep its connection: keep-alive enabled and the server
    /// not stopping (one fact of [`Persistence`](crate::http::Persistence)).
    pub(super) fn server_allows_keep_alive(&self) -> bool {
        self.shared.config.keep_alive.is_some()
            && !self
                .shared
                .stopping
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn error_response(&self, status: u16) -> Vec<u8> {
        let mut out = Vec::with_capacity(192);
        response::error_response(&mut out, status, self.date.borrow_mut().get());
        out
    }
}

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
                    let mut conn = Conn::new(ctx.clone(), stream, token, inbox, peer, local);
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
