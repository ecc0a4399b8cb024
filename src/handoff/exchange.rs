//! [`Exchange`]: the per-request state both sides touch: cancellation, the response window
//! that bounds the bytes queued for one connection, and the channel a streamed request
//! body comes through.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crossbeam_channel::{Receiver, Sender};

use super::{BodyChunk, BodyError};

/// Per-request state that both sides touch.
pub struct Exchange {
    /// Set by the I/O thread when the client is gone (a write failed) or the server stops
    /// waiting; the Python thread stops iterating the response and calls `close()`.
    cancelled: AtomicBool,
    /// Bytes of a streamed response queued but not yet written, with a condvar the Python
    /// thread sleeps on (GIL released) while the window is full.
    in_flight: Mutex<usize>,
    window_open: Condvar,
    /// Streamed request body, I/O thread -> Python thread, one chunk per `ReadBody`; only
    /// made for streamed bodies (a channel costs ~100 ns per request; most have none).
    body: Option<(Sender<BodyChunk>, Receiver<BodyChunk>)>,
    /// Who owns the request while it is queued ([`ADMISSION_QUEUED`] until one side
    /// claims it): the Python thread that takes it ([`Exchange::start`]), or the I/O
    /// thread that sheds it ([`Exchange::shed`]). Exactly one compare-and-swap wins
    /// (ARCHITECTURE.md §4, "Admission control").
    admission: AtomicU8,
}

const ADMISSION_QUEUED: u8 = 0;
const ADMISSION_STARTED: u8 = 1;
const ADMISSION_SHED: u8 = 2;

/// Most response bytes a Python thread may have queued for one connection before it waits
/// for the I/O thread to write them: bounds memory with slow clients.
pub const RESPONSE_WINDOW: usize = 1 << 20;

impl Exchange {
    /// `streamed_body`: the request body will be pulled with `ReadBody`.
    pub fn new(streamed_body: bool) -> Arc<Exchange> {
        Arc::new(Exchange {
            cancelled: AtomicBool::new(false),
            in_flight: Mutex::new(0),
            window_open: Condvar::new(),
            body: streamed_body.then(|| crossbeam_channel::bounded(1)),
            admission: AtomicU8::new(ADMISSION_QUEUED),
        })
    }

    /// Python side, on taking the request from the queue: claims it for the application.
    /// `false`: the I/O thread shed it first (answered it, or its client is gone), or the
    /// connection gave up on it (cancelled) while it was queued; the application must not
    /// see it.
    #[inline]
    pub fn start(&self) -> bool {
        if self.is_cancelled() {
            // The connection dropped it: claim it as shed so the two sides agree.
            let _ = self.shed();
            return false;
        }
        self.admission
            .compare_exchange(
                ADMISSION_QUEUED,
                ADMISSION_STARTED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// I/O side: claims a request that no Python thread has started, to answer it itself
    /// (503) or drop it (its client is gone). `false`: a Python thread started it first,
    /// and its reply comes as usual.
    #[inline]
    pub fn shed(&self) -> bool {
        self.admission
            .compare_exchange(
                ADMISSION_QUEUED,
                ADMISSION_SHED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Whether the request still waits for a Python thread (neither started nor shed).
    #[inline]
    pub fn is_queued(&self) -> bool {
        self.admission.load(Ordering::Acquire) == ADMISSION_QUEUED
    }

    /// I/O side: hands the Python thread the piece of body it asked for.
    pub fn send_body(&self, chunk: BodyChunk) {
        if let Some((tx, _)) = &self.body {
            let _ = tx.try_send(chunk);
        }
    }

    /// Python side (GIL released): waits up to `timeout` for the piece of body asked for;
    /// `None` when none came in time. Without a streamed body there is nothing to wait for.
    pub fn recv_body(&self, timeout: std::time::Duration) -> Option<BodyChunk> {
        match &self.body {
            Some((_, rx)) => match rx.recv_timeout(timeout) {
                Ok(chunk) => Some(chunk),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    Some(BodyChunk::Error(BodyError::Disconnected))
                }
            },
            None => Some(BodyChunk::Error(BodyError::Disconnected)),
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Marks the exchange dead and wakes a Python thread waiting for window or body.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        let _guard = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        self.window_open.notify_all();
        drop(_guard);
        self.send_body(BodyChunk::Error(BodyError::Disconnected));
    }

    /// Python side: account for `n` bytes about to be queued; blocks (the caller has
    /// released its GIL) while the window is full. Returns false when cancelled.
    pub fn reserve(&self, n: usize) -> bool {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        while *in_flight >= RESPONSE_WINDOW && !self.is_cancelled() {
            in_flight = self
                .window_open
                .wait(in_flight)
                .unwrap_or_else(|e| e.into_inner());
        }
        *in_flight += n;
        !self.is_cancelled()
    }

    /// Accounts for `n` bytes only if the window has room now (one lock, never blocks), so
    /// the caller can keep its GIL; `false`: call `reserve` with the GIL released.
    pub fn try_reserve(&self, n: usize) -> bool {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if *in_flight >= RESPONSE_WINDOW {
            return false;
        }
        *in_flight += n;
        true
    }

    /// I/O side: `n` counted bytes were written.
    pub fn release(&self, n: usize) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let was_full = *in_flight >= RESPONSE_WINDOW;
        *in_flight = in_flight.saturating_sub(n);
        if was_full && *in_flight < RESPONSE_WINDOW {
            self.window_open.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn started_request_cannot_be_shed() {
        let exchange = Exchange::new(false);
        assert!(exchange.is_queued());
        assert!(exchange.start());
        assert!(!exchange.shed());
        assert!(!exchange.is_queued());
    }

    #[test]
    fn shed_request_is_never_started() {
        let exchange = Exchange::new(false);
        assert!(exchange.shed());
        assert!(!exchange.start());
        assert!(!exchange.shed());
    }

    #[test]
    fn cancelled_queued_request_is_never_started() {
        let exchange = Exchange::new(false);
        exchange.cancel();
        assert!(!exchange.start());
        assert!(!exchange.is_queued());
    }

    #[test]
    fn start_and_shed_race_has_one_winner() {
        for _ in 0..2000 {
            let exchange = Exchange::new(false);
            let other = exchange.clone();
            let py = std::thread::spawn(move || other.start());
            let io = exchange.shed();
            let py = py.join().unwrap();
            assert!(py != io, "python started: {py}, I/O shed: {io}");
        }
    }
}
