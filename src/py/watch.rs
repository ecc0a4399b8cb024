//! A Python thread's [`ThreadWatch`]: when its current request began, for `--timeout`'s
//! watchdog (`watchdog.rs`). Its own module so that the hosts that own the watches and the
//! watchdog that reads them do not depend on each other.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use pyo3_ffi as ffi;

/// What one Python thread is doing, as the watchdog sees it.
pub(super) struct ThreadWatch {
    /// The thread's own thread state; used only by the watchdog, holding this thread's
    /// interpreter's GIL, while `busy_since` shows this thread is still in the request
    /// it read it for (see `watchdog::read_stack`).
    pub(super) tstate: usize,
    /// When the current request began, in µs after [`epoch`] plus one; 0: idle.
    pub(super) busy_since: AtomicU64,
    /// The `busy_since` the watchdog reported already.
    pub(super) reported: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub(super) fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64 + 1
}

impl ThreadWatch {
    /// The watch of the calling thread, whose attached thread state is `tstate`.
    pub(super) fn new(tstate: *mut ffi::PyThreadState) -> Arc<ThreadWatch> {
        Arc::new(ThreadWatch {
            tstate: tstate as usize,
            busy_since: AtomicU64::new(0),
            reported: AtomicU64::new(0),
        })
    }

    /// The thread takes a request (its interpreter's GIL held).
    #[inline]
    pub(super) fn busy(&self) {
        self.busy_since.store(now_us(), Ordering::Release);
    }

    /// The thread is done with its request (its interpreter's GIL held).
    #[inline]
    pub(super) fn idle(&self) {
        self.busy_since.store(0, Ordering::Release);
    }
}

thread_local! {
    /// The calling Python thread's watch, for the response path to report progress on.
    static CURRENT: RefCell<Option<Arc<ThreadWatch>>> = const { RefCell::new(None) };
}

impl ThreadWatch {
    /// Makes `watch` the calling thread's (see [`progress`], [`paused`]).
    pub(super) fn set_current(watch: &Arc<ThreadWatch>) {
        CURRENT.with(|current| *current.borrow_mut() = Some(watch.clone()));
    }
}

/// The application gave control back (it yielded a piece of its response): `--timeout`
/// counts from now, not from the start of the request (ARCHITECTURE.md §10).
#[inline]
pub(super) fn progress() {
    CURRENT.with(|current| {
        if let Some(watch) = &*current.borrow() {
            if watch.busy_since.load(Ordering::Relaxed) != 0 {
                watch.busy();
            }
        }
    });
}

/// Runs `wait` (for a slow client to make room in the response window) with the thread
/// counted as not in the application: that time is the client's, not the app's.
pub(super) fn paused<T>(wait: impl FnOnce() -> T) -> T {
    let watch = CURRENT.with(|current| current.borrow().clone());
    let was_busy = watch
        .as_ref()
        .is_some_and(|w| w.busy_since.load(Ordering::Relaxed) != 0);
    if let (Some(watch), true) = (&watch, was_busy) {
        watch.idle();
    }
    let result = wait();
    if let (Some(watch), true) = (&watch, was_busy) {
        watch.busy();
    }
    result
}
