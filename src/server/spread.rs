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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    /// The thread takes hand-overs (its receiver runs); never set for a thread whose
    /// runtime could not start, and cleared when the thread ends.
    receiving: AtomicBool,
    /// This thread's accept loops not yet ended (their share of `Spread::accept_loops`).
    loops: AtomicUsize,
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
    /// One lane per I/O thread, `loops[i]` the accept loops thread `i` runs (counted from
    /// the start, so no receiver can see zero before every thread has begun).
    pub(super) fn new(loops: &[usize]) -> Spread {
        Spread {
            lanes: loops
                .iter()
                .map(|&n| Lane {
                    load: AtomicUsize::new(0),
                    receiving: AtomicBool::new(false),
                    loops: AtomicUsize::new(n),
                    inbox: Mutex::new(VecDeque::new()),
                    waker: AtomicWaker::new(),
                })
                .collect(),
            accept_loops: AtomicUsize::new(loops.iter().sum()),
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
            .filter(|&(i, lane)| i != from && lane.receiving.load(Ordering::Acquire))
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

    /// Thread `idx` takes hand-overs from now on (its receiver is about to run).
    pub(super) fn receiving(&self, idx: usize) {
        self.lanes[idx].receiving.store(true, Ordering::Release);
    }

    /// An accept loop of thread `idx` ended: every receiver looks again whether anything
    /// can still come.
    pub(super) fn accept_loop_ended(&self, idx: usize) {
        self.lanes[idx].loops.fetch_sub(1, Ordering::SeqCst);
        self.accept_loops.fetch_sub(1, Ordering::SeqCst);
        self.wake_all();
    }

    /// Thread `idx` ended, normally or not (its runtime could not start, it panicked): it
    /// takes nothing more, the loops it had not ended count as ended, and what its inbox
    /// still holds is closed (only a thread that failed leaves any).
    pub(super) fn thread_ended(&self, idx: usize) {
        let lane = &self.lanes[idx];
        lane.receiving.store(false, Ordering::Release);
        let left = lane.loops.swap(0, Ordering::SeqCst);
        if left > 0 {
            self.accept_loops.fetch_sub(left, Ordering::SeqCst);
        }
        let stranded: Vec<Handed> = lane
            .inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        if !stranded.is_empty() {
            crate::log_warn!(
                "I/O thread {idx} ended with {} connection(s) handed to it unserved: closing them",
                stranded.len()
            );
        }
        self.wake_all();
    }

    fn wake_all(&self) {
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

    fn receiving(spread: Spread) -> Spread {
        for idx in 0..spread.threads() {
            spread.receiving(idx);
        }
        spread
    }

    #[test]
    fn a_thread_that_does_not_receive_is_never_chosen() {
        let spread = Spread::new(&[1, 1]);
        spread.receiving(0);
        spread.opened(0);
        spread.opened(0);
        // Thread 1 never started its receiver (its runtime failed): thread 0 keeps.
        assert_eq!(spread.place(0), None);
        spread.receiving(1);
        assert_eq!(spread.place(0), Some(1));
        spread.thread_ended(1);
        assert_eq!(spread.place(0), None);
    }

    #[test]
    fn receivers_stop_once_every_loop_ended_or_its_thread_did() {
        let spread = receiving(Spread::new(&[1, 2]));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(spread.poll_take(0, &mut cx).is_pending());
        spread.accept_loop_ended(0);
        spread.accept_loop_ended(1);
        assert!(spread.poll_take(0, &mut cx).is_pending());
        // Thread 1 ends with a loop it never ended (a panic): nothing more can come.
        spread.thread_ended(1);
        assert!(matches!(spread.poll_take(0, &mut cx), Poll::Ready(None)));
    }

    #[test]
    fn a_thread_keeps_a_connection_while_it_holds_no_more_than_the_others() {
        let spread = receiving(Spread::new(&[1, 1]));
        assert_eq!(spread.place(0), None);
        spread.opened(0);
        // One more than thread 1: the next goes there, counted at once.
        assert_eq!(spread.place(0), Some(1));
        assert_eq!(spread.loads(), vec![1, 1]);
        assert_eq!(spread.place(0), None);
    }

    #[test]
    fn the_least_loaded_thread_receives() {
        let spread = receiving(Spread::new(&[1, 1, 1]));
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
        let spread = receiving(Spread::new(&[1, 1]));
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
        let spread = receiving(Spread::new(&[1]));
        spread.opened(0);
        spread.opened(0);
        assert_eq!(spread.place(0), None);
    }
}
