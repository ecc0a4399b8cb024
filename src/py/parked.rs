//! A Python thread's parked responses (ARCHITECTURE.md §4, "Bounded everything"): the
//! iterators whose next piece found no room (their window full, or the worker's budget
//! spent), kept with their response state while the thread serves other requests, and the
//! thread's wake channel, which their exchanges signal once they may go on.
//!
//! A parked iterator belongs to this thread's interpreter and is only touched by this
//! thread, attached (ARCHITECTURE.md §6); its `Held` references are released by
//! `Worker::resume` when the response ends, never dropped implicitly.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::object::Held;
use super::response::Response;
use crate::handoff::{ReplyTo, Request, RequestHead};

/// One response waiting for room: everything `Worker::conclude` needs at its end.
pub(super) struct Parked {
    pub(super) head: RequestHead,
    pub(super) taken: Option<Instant>,
    pub(super) started: Instant,
    pub(super) environ: Held,
    /// The application's result: its `close()` is called at the end.
    pub(super) result: Held,
    /// The iterator over `result`, where the next piece comes from.
    pub(super) iter: Held,
    pub(super) response: Response,
    /// A HEAD response: it ends after its first piece.
    pub(super) is_head: bool,
}

/// The thread's parked responses and its wake channel.
pub(super) struct ParkedSet {
    /// Given to the exchanges of parked responses; one message means "look again"
    /// (capacity 1: wake-ups while one is pending cost nothing more).
    pub(super) wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    list: RefCell<Vec<Parked>>,
    /// Requests taken from the queue whose connection has a response parked here, held
    /// until it ends. Their responses could not go out before it anyway (a connection's
    /// responses are written in order), and run now, one that calls `write()` would wait
    /// with this thread for room that only this thread, resuming the parked one, can make.
    deferred: RefCell<VecDeque<Request>>,
}

fn same_connection(a: &ReplyTo, b: &ReplyTo) -> bool {
    a.conn == b.conn && Arc::ptr_eq(&a.mailbox, &b.mailbox)
}

impl ParkedSet {
    pub(super) fn new() -> ParkedSet {
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        ParkedSet {
            wake_tx,
            wake_rx,
            list: RefCell::new(Vec::new()),
            deferred: RefCell::new(VecDeque::new()),
        }
    }

    /// Whether a response of `reply`'s connection is parked here.
    pub(super) fn holds_connection(&self, reply: &ReplyTo) -> bool {
        self.list
            .borrow()
            .iter()
            .any(|p| same_connection(&p.response.reply, reply))
    }

    /// Holds `request` until its connection's parked response ends.
    pub(super) fn defer(&self, request: Request) {
        self.deferred.borrow_mut().push_back(request);
    }

    /// The first held request whose connection has no response parked any more, in the
    /// order they were taken (so a connection's requests keep their order).
    pub(super) fn next_deferred(&self) -> Option<Request> {
        let mut deferred = self.deferred.borrow_mut();
        let i = deferred
            .iter()
            .position(|r| !self.holds_connection(&r.reply))?;
        deferred.remove(i)
    }

    pub(super) fn park(&self, parked: Parked) {
        self.list.borrow_mut().push(parked);
    }

    /// Nothing parked and nothing held back.
    pub(super) fn is_empty(&self) -> bool {
        self.list.borrow().is_empty() && self.deferred.borrow().is_empty()
    }

    /// Cancels every parked response and wakes the set, so the next
    /// [`ParkedSet::take_woken`] takes them all to their end: for a set whose thread
    /// leaves once its connections are gone (`inline.rs`).
    pub(super) fn cancel_all(&self) {
        for parked in self.list.borrow().iter() {
            parked.response.reply.exchange.cancel();
        }
        let _ = self.wake_tx.try_send(());
    }

    /// What the thread waits on besides the request queue while it has parked responses.
    pub(super) fn wake_rx(&self) -> &Receiver<()> {
        &self.wake_rx
    }

    /// The parked responses that may go on, taken out of the list, in the order they
    /// parked; nothing (and no allocation) unless a wake-up came. Those that may not go on
    /// stay, their exchanges told to wake this thread again.
    pub(super) fn take_woken(&self) -> Vec<Parked> {
        if self.wake_rx.try_recv().is_err() {
            return Vec::new();
        }
        let mut list = self.list.borrow_mut();
        let (woken, waiting): (Vec<Parked>, Vec<Parked>) = list
            .drain(..)
            .partition(|p| p.response.reply.exchange.poll_resume(&self.wake_tx));
        *list = waiting;
        woken
    }
}
