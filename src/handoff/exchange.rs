//! [`Exchange`]: the per-request state both sides touch: cancellation, the response window
//! that bounds the bytes queued for one connection, and the channel a streamed request
//! body comes through.

use std::sync::Arc;

use super::sync::channel::{self, Receiver, Sender};
use super::sync::{AtomicBool, Condvar, Mutex, Ordering};
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
}

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
            body: streamed_body.then(|| channel::bounded(1)),
        })
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
            // After a cancel no answer may come: the I/O thread drops the `ReadBody` of a
            // connection that is gone, and the `Disconnected` that `cancel` queues is lost
            // when the one slot still held an unread chunk. Without this check the read
            // after that chunk waited for its timeout (tests/loom_handoff.rs,
            // exchange_second_body_read_after_cancel_ends_without_a_timeout). A cancel
            // after the check either queues its `Disconnected` or finds a chunk in the slot,
            // which this read takes: either ends the wait below. (The caller's poll of
            // `is_cancelled` between timeouts stays as the backstop.)
            Some((_, rx)) if self.is_cancelled() => Some(
                rx.try_recv()
                    .unwrap_or(BodyChunk::Error(BodyError::Disconnected)),
            ),
            Some((_, rx)) => match rx.recv_timeout(timeout) {
                Ok(chunk) => Some(chunk),
                Err(channel::RecvTimeoutError::Timeout) => None,
                Err(channel::RecvTimeoutError::Disconnected) => {
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
