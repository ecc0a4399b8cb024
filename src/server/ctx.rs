//! One I/O thread's shared state ([`IoCtx`]): its connections' slots and inboxes, where the
//! dispatcher routes each reply by slot and generation, the stop event, the `Date` cache
//! and the counters. Everything here lives on one monoio runtime: `Rc`/`RefCell`, no locks.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use super::event::LocalEvent;
use super::Shared;
use crate::handoff::{ConnToken, InlineRunner, IoMailbox, Reply, ReplyMsg, RequestSender};
use crate::http::date::DateCache;
use crate::http::response;

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

    /// Puts news of a response before the replies already here (`--inline`: that part of
    /// it went out directly, before what it sent by the mailbox).
    pub(super) fn push_front(&self, seq: u32, msg: ReplyMsg) {
        self.msgs.borrow_mut().push_front((seq, msg));
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
    /// This I/O thread's number.
    pub(super) index: usize,
    /// The driver this thread runs (under `--driver auto` a thread whose io_uring ring
    /// could not be set up runs epoll).
    pub(super) driver: super::Driver,
    pub(super) shared: Arc<Shared>,
    /// This thread's sender of the request queue; taken out (dropped) when the thread
    /// stops, whatever tasks the runtime may still keep, so the Python threads can end.
    pub(super) requests: RefCell<Option<RequestSender>>,
    pub(super) mailbox: Arc<IoMailbox>,
    pub(super) slots: RefCell<Vec<Slot>>,
    pub(super) free_slots: RefCell<Vec<u32>>,
    pub(super) date: RefCell<DateCache>,
    pub(super) stop: LocalEvent,
    /// When `stop` was triggered: slow clients' writes are cut before the drain's deadline.
    pub(super) stopped_at: Cell<Option<std::time::Instant>>,
    pub(super) live_conns: Cell<usize>,
    /// Accept loops still running, and the task taking connections other threads hand
    /// over (`spread.rs`): at a stop each loop first takes what waits in its accept queue,
    /// the taker what may still be handed, and the thread must not end before (`thread.rs`).
    pub(super) accepting: Cell<usize>,
    /// Connections refused past `--worker-connections` whose 503 is still lingering.
    pub(super) refusing: Cell<usize>,
    /// The stopping thread's wait for `live_conns` and `accepting` to reach zero.
    pub(super) all_closed: RefCell<Option<Waker>>,
    pub(super) stats: Cell<Stats>,
    /// Connections of this thread waiting for a reply now: a connection lends its socket
    /// for a direct answer only when it is the one (`conn.rs`, ARCHITECTURE.md §4).
    pub(super) awaiting_replies: Cell<usize>,
    /// `--inline`: this thread's way into the application; `None` hands every request to
    /// the Python threads. Taken out (its interpreter left) once no connection is left.
    pub(super) inline: RefCell<Option<Box<dyn InlineRunner>>>,
}

/// Counters for the lab: how well replies batch per wake-up.
#[derive(Clone, Copy, Default)]
pub(super) struct Stats {
    pub(super) requests: u64,
    pub(super) replies: u64,
    pub(super) wakeups: u64,
    /// Responses their Python thread wrote itself (direct answers, ARCHITECTURE.md §4).
    pub(super) direct: u64,
    /// Requests this thread ran itself (`--inline`, ARCHITECTURE.md §4).
    pub(super) inline: u64,
    /// Connections accepted here and handed to a less loaded I/O thread (`spread.rs`).
    pub(super) handed: u64,
}

impl IoCtx {
    /// Whether this thread runs requests itself (`--inline`).
    pub(super) fn runs_inline(&self) -> bool {
        self.inline.borrow().is_some()
    }

    /// Calls the application on this thread (`--inline`, ARCHITECTURE.md §4, "Inline"),
    /// then routes what it replied at once: the replies are in the connections' inboxes
    /// when this returns, and nothing woke the dispatcher for them.
    pub(super) fn call_inline(&self, call: impl FnOnce(&dyn InlineRunner)) {
        let runner = self.inline.borrow();
        let Some(runner) = runner.as_deref() else {
            return;
        };
        self.mailbox.hold();
        call(runner);
        self.mailbox.drain_here(|reply| self.route(reply));
    }

    /// Resumes the inline responses parked for room whose clients made it (or left).
    pub(super) fn resume_inline(&self) {
        if self
            .inline
            .borrow()
            .as_deref()
            .is_none_or(|runner| runner.idle())
        {
            return;
        }
        self.call_inline(|runner| runner.resume());
    }

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

    /// Whether this process holds all the connections it may (`--worker-connections`).
    pub(super) fn at_connection_limit(&self) -> bool {
        self.shared
            .open_conns
            .load(std::sync::atomic::Ordering::Relaxed)
            >= self.shared.connection_limit
    }

    /// Whether every Python thread is inside an application call (false once stopped).
    pub(super) fn python_threads_held(&self) -> bool {
        self.requests
            .borrow()
            .as_ref()
            .is_some_and(|requests| requests.all_threads_held())
    }

    pub(super) fn error_response(&self, status: u16) -> Vec<u8> {
        let mut out = Vec::with_capacity(192);
        response::error_response(&mut out, status, self.date.borrow_mut().get());
        out
    }
}
