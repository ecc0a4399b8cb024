//! [`IoMailbox`]: an I/O thread's inbox of replies, woken at most once per batch.

use std::sync::Arc;
use std::task::{Context, Poll};

use super::sync::{channel, AtomicBool, AtomicWaker, Ordering};
use super::Reply;

/// An I/O thread's inbox of replies, with a wake-up that fires at most once per batch.
pub struct IoMailbox {
    queue: channel::Sender<Reply>,
    inbox: channel::Receiver<Reply>,
    waker: AtomicWaker,
    /// True from the first push after a drain started until the next drain starts.
    notified: AtomicBool,
    /// Set once when the server stops; the I/O thread then stops accepting.
    stop: AtomicBool,
}

impl IoMailbox {
    pub fn new() -> Arc<IoMailbox> {
        let (queue, inbox) = channel::unbounded();
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

    /// I/O side, before it calls the application itself (`--inline`): replies pushed from
    /// now on wake nobody, since the caller drains them with [`IoMailbox::drain_here`] when
    /// the call returns.
    pub fn hold(&self) {
        self.notified.swap(true, Ordering::SeqCst);
    }

    /// I/O side, after an inline call: routes every queued reply now, on the calling
    /// task, and lets the next push wake the dispatcher again. As in
    /// [`IoMailbox::poll_drain`], the flag is cleared before the queue is looked at, so a
    /// Python thread's reply pushed meanwhile is routed here or wakes the dispatcher,
    /// whose waker stays registered.
    pub fn drain_here(&self, mut route: impl FnMut(Reply)) -> usize {
        self.notified.swap(false, Ordering::SeqCst);
        let mut routed = 0;
        while let Ok(reply) = self.inbox.try_recv() {
            route(reply);
            routed += 1;
        }
        routed
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

    /// Under the model checker only: how many wake-ups the mailbox asked its waker for
    /// (tests/loom_handoff.rs checks it is at most one per drain).
    #[cfg(loom)]
    pub fn wakes_asked(&self) -> usize {
        self.waker.wakes_asked()
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
