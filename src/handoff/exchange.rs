//! [`Exchange`]: the per-request state both sides touch: cancellation, the response window
//! that bounds the bytes queued for one connection, and the channel a streamed request
//! body comes through.
//!
//! A response may take more only while its window has room and, unless it has nothing
//! queued at all, the worker's [`ResponseBudget`] has room too. That floor (a response with
//! nothing queued may always queue one piece) keeps every response moving when slow
//! readers hold the whole budget, and it is why nothing but the exchange's own release (or
//! its cancellation) has to wake a response that waits: it waits only while it has bytes
//! queued, and their release, once its client drained them, lets it go on.

use std::sync::Arc;

use super::budget::ResponseBudget;
use super::direct::Direct;
use super::sync::channel::{self, Receiver, Sender};
use super::sync::{AtomicBool, AtomicU8, Condvar, Mutex, Ordering};
/// A parked response's wake-up goes to its Python thread's own channel (`py/parked.rs`),
/// which waits on it beside the request queue with crossbeam's `Select`: crossbeam's in
/// every build (the loom models do not park).
type WakeSender = crossbeam_channel::Sender<()>;
use super::{BodyChunk, BodyError, ReplyMsg};

/// Per-request state that both sides touch.
pub struct Exchange {
    /// Set by the I/O thread when the client is gone (a write failed) or the server stops
    /// waiting; the Python thread stops iterating the response and calls `close()`.
    cancelled: AtomicBool,
    /// Bytes of a streamed response queued but not yet written, and who waits for room: a
    /// condvar the Python thread sleeps on (GIL released) in `write()`, or the wake channel
    /// of the Python thread that parked the response.
    in_flight: Mutex<Window>,
    window_open: Condvar,
    /// The worker's budget, charged and credited with the window.
    budget: &'static ResponseBudget,
    /// Streamed request body, I/O thread -> Python thread, one chunk per `ReadBody`; only
    /// made for streamed bodies (a channel costs ~100 ns per request; most have none).
    body: Option<(Sender<BodyChunk>, Receiver<BodyChunk>)>,
    /// Who owns the request while it is queued ([`ADMISSION_QUEUED`] until one side
    /// claims it): the Python thread that takes it ([`Exchange::start`]), or the I/O
    /// thread that sheds it ([`Exchange::shed`]). Exactly one compare-and-swap wins
    /// (ARCHITECTURE.md §4, "Admission control").
    admission: AtomicU8,
    /// Whether the response may be, or was, written by the Python thread itself.
    direct: Direct,
    /// Run on the I/O thread itself (`--inline`): nothing may wait for room.
    inline: bool,
}

const ADMISSION_QUEUED: u8 = 0;
const ADMISSION_STARTED: u8 = 1;
const ADMISSION_SHED: u8 = 2;

/// Most response bytes a Python thread may have queued for one connection before it waits
/// for the I/O thread to write them: bounds memory with slow clients.
pub const RESPONSE_WINDOW: usize = 1 << 20;

/// A response's queued bytes and who waits for room.
#[derive(Default)]
struct Window {
    bytes: usize,
    /// A Python thread sleeps on `window_open` (a `write()` call, which cannot park).
    blocked: bool,
    /// The wake channel of the Python thread that parked this response.
    parked: Option<WakeSender>,
}

/// What [`Exchange::room_or_park`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reserve {
    /// There is room: pull the next piece and [`Exchange::charge`] it.
    Reserved,
    /// No room: the waker is registered and gets a message when there is (or the exchange
    /// is cancelled).
    Parked,
    /// The client is gone.
    Cancelled,
}

impl Exchange {
    /// `streamed_body`: the request body will be pulled with `ReadBody`.
    pub fn new(streamed_body: bool) -> Arc<Exchange> {
        Exchange::with_budget(streamed_body, ResponseBudget::worker())
    }

    /// An exchange charged to `budget` instead of the worker's.
    pub fn with_budget(streamed_body: bool, budget: &'static ResponseBudget) -> Arc<Exchange> {
        Arc::new(Exchange {
            cancelled: AtomicBool::new(false),
            in_flight: Mutex::new(Window::default()),
            window_open: Condvar::new(),
            budget,
            body: streamed_body.then(|| channel::bounded(1)),
            admission: AtomicU8::new(ADMISSION_QUEUED),
            direct: Direct::default(),
            inline: false,
        })
    }

    /// The exchange of a request whose body is complete, run on its I/O thread itself
    /// (`--inline`, ARCHITECTURE.md §4, "Inline"). The window still bounds what an iterated
    /// response pulls (it parks, and its I/O thread resumes it once it wrote), but
    /// `write()` never waits for room: the thread it would wait for is the one inside the
    /// call, so a `write()` application's bytes queue whole, as the application made them.
    pub fn inline() -> Arc<Exchange> {
        let mut exchange = Exchange::with_budget(false, ResponseBudget::worker());
        Arc::get_mut(&mut exchange)
            .expect("a new exchange has one owner")
            .inline = true;
        exchange
    }

    /// Whether it runs on its I/O thread ([`Exchange::inline`]).
    #[inline]
    pub fn is_inline(&self) -> bool {
        self.inline
    }

    /// The response's direct answer (ARCHITECTURE.md §4, "Direct answers").
    #[inline]
    pub fn direct(&self) -> &Direct {
        &self.direct
    }

    /// Python side: writes `msg` to the client directly if the socket is lent for it
    /// ([`Direct::answer`]); counted bytes written so go back to the window at once.
    /// `Err`: the message (or what the socket did not take) for the mailbox.
    #[inline]
    pub fn answer(&self, msg: ReplyMsg) -> Result<(), ReplyMsg> {
        self.direct.answer(msg, |n| self.release(n))
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

    /// Whether a response with `queued` bytes in its window may queue another piece.
    #[inline]
    fn has_room(&self, queued: usize) -> bool {
        queued < RESPONSE_WINDOW && (queued == 0 || self.budget.has_room())
    }

    #[inline]
    fn take(&self, window: &mut Window, n: usize) {
        window.bytes += n;
        self.budget.charge(n);
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

    /// Marks the exchange dead and wakes a Python thread waiting for window or body, or
    /// the one that parked the response (it then calls `close()`).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        let mut window = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        self.window_open.notify_all();
        let parked = window.parked.take();
        drop(window);
        if let Some(wake) = parked {
            let _ = wake.try_send(());
        }
        self.send_body(BodyChunk::Error(BodyError::Disconnected));
    }

    /// Python side: account for `n` bytes about to be queued; blocks (the caller has
    /// released its GIL) while the window, or the worker's budget, has no room. Returns
    /// false when cancelled. For `write()`, which cannot park: the application's stack is
    /// live under it.
    pub fn reserve(&self, n: usize) -> bool {
        let mut window = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        while !self.inline && !self.has_room(window.bytes) && !self.is_cancelled() {
            window.blocked = true;
            window = self
                .window_open
                .wait(window)
                .unwrap_or_else(|e| e.into_inner());
        }
        window.blocked = false;
        self.take(&mut window, n);
        !self.is_cancelled()
    }

    /// Accounts for `n` bytes only if there is room now (one lock, never blocks), so
    /// the caller can keep its GIL; `false`: call `reserve` with the GIL released, or park.
    pub fn try_reserve(&self, n: usize) -> bool {
        let mut window = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if !self.inline && !self.has_room(window.bytes) {
            return false;
        }
        self.take(&mut window, n);
        true
    }

    /// Python side, never blocks: whether the response may queue another piece now. If
    /// not, `wake` is registered and gets a message once it may (or the exchange is
    /// cancelled): checked and registered under one lock, so no wake-up is lost. Asked
    /// *before* the next piece is pulled from the application, which is then counted with
    /// [`Exchange::charge`]: nothing is pulled for a response that may not take more.
    pub fn room_or_park(&self, wake: &WakeSender) -> Reserve {
        let mut window = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_cancelled() {
            return Reserve::Cancelled;
        }
        if !self.has_room(window.bytes) {
            window.parked = Some(wake.clone());
            return Reserve::Parked;
        }
        window.parked = None;
        Reserve::Reserved
    }

    /// Python side: counts `n` bytes pulled after [`Exchange::room_or_park`] said there was
    /// room. Taken even if the budget filled meanwhile (other threads' pieces): the overshoot
    /// is a piece per Python thread at most.
    pub fn charge(&self, n: usize) {
        if n == 0 {
            // Nothing counted (a bodiless piece): no lock, no touch of the budget.
            return;
        }
        let mut window = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        self.take(&mut window, n);
    }

    /// Whether a parked response would get room now, or must end (cancelled): worth
    /// resuming. If not, `wake` is registered (again: the wake-up that led here may have
    /// found room that another response's piece took since).
    pub fn poll_resume(&self, wake: &WakeSender) -> bool {
        let mut window = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_cancelled() || self.has_room(window.bytes) {
            return true;
        }
        window.parked = Some(wake.clone());
        false
    }

    /// I/O side: `n` counted bytes were written (or dropped); wakes whoever waits for room
    /// once there is.
    pub fn release(&self, n: usize) {
        let mut window = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let n = n.min(window.bytes);
        window.bytes -= n;
        self.budget.credit(n);
        if (window.blocked || window.parked.is_some()) && self.has_room(window.bytes) {
            if window.blocked {
                self.window_open.notify_all();
            }
            if let Some(wake) = window.parked.take() {
                let _ = wake.try_send(());
            }
        }
    }
}

impl Drop for Exchange {
    /// Bytes queued for a connection that closed before writing them were never released:
    /// give them back to the budget.
    fn drop(&mut self) {
        let window = self.in_flight.get_mut().unwrap_or_else(|e| e.into_inner());
        if window.bytes > 0 {
            self.budget.credit(window.bytes);
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

    fn budget(limit: usize) -> &'static ResponseBudget {
        Box::leak(Box::new(ResponseBudget::new(limit)))
    }

    #[test]
    fn a_full_window_parks_and_its_release_wakes() {
        let exchange = Exchange::with_budget(false, budget(usize::MAX));
        let (tx, rx) = crossbeam_channel::bounded(1);
        assert_eq!(exchange.room_or_park(&tx), Reserve::Reserved);
        exchange.charge(RESPONSE_WINDOW);
        assert_eq!(exchange.room_or_park(&tx), Reserve::Parked);
        assert!(!exchange.poll_resume(&tx));
        assert!(rx.try_recv().is_err());
        exchange.release(1);
        assert!(rx.try_recv().is_ok(), "woken once the window has room");
        assert!(exchange.poll_resume(&tx));
        assert_eq!(exchange.room_or_park(&tx), Reserve::Reserved);
    }

    #[test]
    fn an_exhausted_budget_parks_all_but_empty_windows() {
        let budget = budget(100);
        let slow = Exchange::with_budget(false, budget);
        let other = Exchange::with_budget(false, budget);
        let (tx, rx) = crossbeam_channel::bounded(1);
        assert_eq!(slow.room_or_park(&tx), Reserve::Reserved);
        slow.charge(150);
        assert_eq!(slow.room_or_park(&tx), Reserve::Parked);
        // A response with nothing queued always gets one piece: no starvation.
        assert_eq!(other.room_or_park(&tx), Reserve::Reserved);
        other.charge(10);
        assert_eq!(other.room_or_park(&tx), Reserve::Parked);
        assert_eq!(budget.used(), 160);
        other.release(10);
        assert!(rx.try_recv().is_ok(), "its own release wakes it");
        slow.release(150);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn cancel_wakes_a_parked_response() {
        let exchange = Exchange::with_budget(false, budget(usize::MAX));
        let (tx, rx) = crossbeam_channel::bounded(1);
        exchange.charge(RESPONSE_WINDOW);
        assert_eq!(exchange.room_or_park(&tx), Reserve::Parked);
        exchange.cancel();
        assert!(rx.try_recv().is_ok());
        assert!(exchange.poll_resume(&tx));
        assert_eq!(exchange.room_or_park(&tx), Reserve::Cancelled);
    }

    #[test]
    fn a_response_woken_whose_room_was_taken_is_told_again() {
        let budget = budget(100);
        let parked = Exchange::with_budget(false, budget);
        let other = Exchange::with_budget(false, budget);
        let (tx, rx) = crossbeam_channel::bounded(1);
        parked.charge(60);
        other.charge(60);
        assert_eq!(parked.room_or_park(&tx), Reserve::Parked);
        other.release(60);
        // The budget has room, but nothing woke `parked` (its own window did not move);
        // its own release does, and a re-check that finds the room gone registers again.
        parked.release(10);
        assert!(rx.try_recv().is_ok());
        other.charge(60);
        assert!(!parked.poll_resume(&tx), "the budget filled again");
        parked.release(50);
        assert!(rx.try_recv().is_ok(), "registered again, woken again");
    }

    #[test]
    fn bytes_never_written_go_back_to_the_budget() {
        let budget = budget(usize::MAX);
        let exchange = Exchange::with_budget(false, budget);
        assert!(exchange.try_reserve(1000));
        exchange.release(400);
        drop(exchange);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_blocked_writer_wakes_when_its_window_drains() {
        let budget = budget(100);
        let exchange = Exchange::with_budget(false, budget);
        assert!(exchange.try_reserve(200));
        let writer = {
            let exchange = exchange.clone();
            std::thread::spawn(move || exchange.reserve(5))
        };
        // Blocked until the release (budget exhausted, its own window not empty).
        while !exchange.in_flight.lock().unwrap().blocked {
            std::thread::yield_now();
        }
        exchange.release(200);
        assert!(writer.join().unwrap());
        assert_eq!(budget.used(), 5);
    }
}
