//! [`ReleaseQueue`]: objects that other threads are done with, on their way back to the one
//! thread allowed to release them. py/ keeps a queue of Python references per interpreter
//! thread (`py::object::SharedBytes`: a response body written from the application's own
//! `bytes` object, ARCHITECTURE.md §4); the I/O thread that wrote the body pushes the
//! reference here, the owning thread drains it under its GIL. Generic over what is queued,
//! so the queue knows no Python and the model checker can run it (tests/loom_handoff.rs).

use super::sync::{AtomicUsize, Mutex, Ordering};

/// Objects handed back to their owning thread. Any thread pushes; only the owner shares
/// ([`ReleaseQueue::shared`]) and drains.
pub struct ReleaseQueue<T> {
    queued: Mutex<Vec<T>>,
    /// Objects shared and not yet drained (queued or still in use). Only the owning thread
    /// changes or reads it, so `Relaxed` is enough: it orders nothing between threads, the
    /// `Mutex` on `queued` does.
    outstanding: AtomicUsize,
}

impl<T> Default for ReleaseQueue<T> {
    fn default() -> Self {
        ReleaseQueue {
            queued: Mutex::new(Vec::new()),
            outstanding: AtomicUsize::new(0),
        }
    }
}

impl<T> ReleaseQueue<T> {
    /// Owner: one more object is out with another thread and will come back by `push`.
    pub fn shared(&self) {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
    }

    /// Any thread: this object is done with; its owner releases it at its next `drain`.
    pub fn push(&self, obj: T) {
        self.queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(obj);
    }

    /// Owner: hands every queued object to `release`.
    pub fn drain(&self, release: impl FnMut(T)) {
        if !self.has_outstanding() {
            // The common case after a batch: no lock taken.
            return;
        }
        let objs = std::mem::take(&mut *self.queued.lock().unwrap_or_else(|e| e.into_inner()));
        self.outstanding.fetch_sub(objs.len(), Ordering::Relaxed);
        objs.into_iter().for_each(release);
    }

    /// Owner: whether some shared objects have not come back yet (drain again soon, even
    /// when idle).
    pub fn has_outstanding(&self) -> bool {
        self.outstanding.load(Ordering::Relaxed) > 0
    }
}
