//! Connections spread over a worker's I/O threads by load (ARCHITECTURE.md §10, "Spread
//! over I/O threads"). Each I/O thread accepts on a `SO_REUSEPORT` socket of its own, and
//! the kernel hashes every new connection to one of them whatever its load: with a handful
//! of connections (a benchmark's `-c4`, a proxy's small keep-alive pool) all of them landed
//! on one thread in a third of the runs, and the other thread's core sat idle
//! (perf/runs/2026-12-05-vm-spread/). So a thread that accepts a connection while it holds
//! more than the least loaded thread of its worker hands it to that thread, which serves it
//! as if it had accepted it.
//!
//! The counts are connections owned, a hand-over counted for its receiver from the moment
//! it is handed (two quick accepts do not both go to the same thread on a stale count). A
//! receiving thread keeps taking hand-overs while any accept loop of the worker runs, so a
//! stop never strands one (`thread.rs`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

use super::stream::Accepted;
use crate::handoff::Endpoint;

/// An accepted connection on its way to another I/O thread.
pub(super) struct Handed {
    pub(super) stream: Accepted,
    pub(super) peer: Endpoint,
    pub(super) fixed_local: Option<SocketAddr>,
}

/// One thread's share: its count and its inbox of hand-overs.
struct Lane {
    /// Connections this thread owns, and those handed to it and not yet taken.
    load: AtomicUsize,
    /// Rare (only while the counts differ), so a lock is cheap enough.
    inbox: Mutex<VecDeque<Handed>>,
    waker: AtomicWaker,
}

/// What a worker's I/O threads share to spread connections.
pub(super) struct Spread {
    lanes: Vec<Lane>,
    /// `SPINDLE_SPREAD=0` turns hand-overs off, for measuring.
    enabled: bool,
    /// Accept loops running, all threads together: a hand-over can come while one runs.
    accept_loops: AtomicUsize,
}

impl Spread {
    /// `threads` I/O threads running `accept_loops` accept loops in all (counted from the
    /// start, so no receiver can see zero before every thread has begun).
    pub(super) fn new(threads: usize, accept_loops: usize) -> Spread {
        Spread {
            lanes: (0..threads)
                .map(|_| Lane {
                    load: AtomicUsize::new(0),
                    inbox: Mutex::new(VecDeque::new()),
                    waker: AtomicWaker::new(),
                })
                .collect(),
            accept_loops: AtomicUsize::new(accept_loops),
            enabled: std::env::var_os("SPINDLE_SPREAD").is_none_or(|v| v != "0"),
        }
    }

    /// Where a connection thread `from` just accepted goes: `None`, stay (it holds no more
    /// than the least loaded thread, give or take a sixteenth), or the least loaded thread,
    /// counted for it already.
    pub(super) fn place(&self, from: usize) -> Option<usize> {
        if !self.enabled {
            return None;
        }
        let mine = self.lanes[from].load.load(Ordering::Relaxed);
        let (to, least) = self
            .lanes
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != from)
            .map(|(i, lane)| (i, lane.load.load(Ordering::Relaxed)))
            .min_by_key(|&(_, load)| load)?;
        // A sixteenth of slack once the counts are large: with a connection per request the
        // counts swing by one or two all the time, and a thread within a few percent of
        // another costs nothing measurable (perf/runs/2026-12-05-vm-spread/).
        if mine <= least + least / 16 {
            return None;
        }
        self.lanes[to].load.fetch_add(1, Ordering::Relaxed);
        Some(to)
    }

    /// Gives `to` the connection [`Spread::place`] chose it for, and wakes it.
    pub(super) fn hand(&self, to: usize, handed: Handed) {
        let lane = &self.lanes[to];
        lane.inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(handed);
        lane.waker.wake();
    }

    /// Thread `idx` now owns one more connection (accepted and kept: a hand-over it
    /// receives was counted when handed).
    pub(super) fn opened(&self, idx: usize) {
        self.lanes[idx].load.fetch_add(1, Ordering::Relaxed);
    }

    /// Thread `idx` owns one connection fewer (closed, or refused after it was counted).
    pub(super) fn closed(&self, idx: usize) {
        self.lanes[idx].load.fetch_sub(1, Ordering::Relaxed);
    }

    /// Thread `idx`'s next hand-over; `Ready(None)` once no accept loop runs any more and
    /// the inbox is empty (nothing can come).
    pub(super) fn poll_take(&self, idx: usize, cx: &mut Context<'_>) -> Poll<Option<Handed>> {
        let lane = &self.lanes[idx];
        lane.waker.register(cx.waker());
        // Read the loops' count before the inbox: a loop that ends after handing its last
        // connection pushed it first, so an empty inbox after a zero count is final.
        let loops = self.accept_loops.load(Ordering::SeqCst);
        if let Some(handed) = lane
            .inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
        {
            return Poll::Ready(Some(handed));
        }
        if loops == 0 {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }

    /// An accept loop ended: every receiver looks again whether anything can still come.
    pub(super) fn accept_loop_ended(&self) {
        self.accept_loops.fetch_sub(1, Ordering::SeqCst);
        for lane in &self.lanes {
            lane.waker.wake();
        }
    }

    pub(super) fn threads(&self) -> usize {
        self.lanes.len()
    }

    /// Connections each thread owns now (tests).
    #[cfg(test)]
    pub(super) fn loads(&self) -> Vec<usize> {
        self.lanes
            .iter()
            .map(|lane| lane.load.load(Ordering::Relaxed))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_a_connection_while_it_holds_no_more_than_the_others() {
        let spread = Spread::new(2, 2);
        assert_eq!(spread.place(0), None);
        spread.opened(0);
        // One more than thread 1: the next goes there, counted at once.
        assert_eq!(spread.place(0), Some(1));
        assert_eq!(spread.loads(), vec![1, 1]);
        assert_eq!(spread.place(0), None);
    }

    #[test]
    fn the_least_loaded_thread_receives() {
        let spread = Spread::new(3, 3);
        for _ in 0..3 {
            spread.opened(0);
        }
        spread.opened(1);
        assert_eq!(spread.place(0), Some(2));
        assert_eq!(spread.place(0), Some(1));
        assert_eq!(spread.loads(), vec![3, 2, 1]);
        spread.closed(0);
        spread.closed(0);
        // Level with the least loaded: it keeps.
        assert_eq!(spread.place(0), None);
    }

    #[test]
    fn large_counts_keep_a_sixteenth_of_slack() {
        let spread = Spread::new(2, 2);
        for _ in 0..34 {
            spread.opened(0);
        }
        for _ in 0..32 {
            spread.opened(1);
        }
        assert_eq!(spread.place(0), None);
        spread.opened(0);
        assert_eq!(spread.place(0), Some(1));
    }

    #[test]
    fn one_thread_always_keeps() {
        let spread = Spread::new(1, 1);
        spread.opened(0);
        spread.opened(0);
        assert_eq!(spread.place(0), None);
    }
}
