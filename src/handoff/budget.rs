//! [`ResponseBudget`]: the bytes of streamed responses a worker has queued for all its
//! connections together and not yet written (ARCHITECTURE.md §4, "Bounded everything").
//! Each response's window bounds one connection; the budget bounds their sum, so that N
//! clients that read nothing cost a bounded amount of memory, not N windows.
//!
//! One atomic counter per worker process, charged by a Python thread when it queues a
//! counted piece ([`super::Exchange::try_reserve`] and friends) and credited by the I/O
//! thread once the piece is written. It never blocks and never wakes anyone itself: a
//! response that may not take more is parked (or, for `write()`, waits) on its own
//! exchange, and its own release wakes it (see `exchange.rs` for why that is enough).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// After the budget's use went this high, its next return to zero hands the freed memory
/// back to the system (see [`ResponseBudget::credit`]).
const TRIM_MARK: usize = 16 << 20;

/// The bytes of responses in flight in this worker, against a limit.
pub struct ResponseBudget {
    used: AtomicUsize,
    limit: AtomicUsize,
    /// `used` reached [`TRIM_MARK`] since the last trim.
    trim_due: AtomicBool,
}

/// Unlimited until the Python pool starts and sets `--max-response-buffer`.
static WORKER_BUDGET: ResponseBudget = ResponseBudget::new(usize::MAX);

impl ResponseBudget {
    pub const fn new(limit: usize) -> ResponseBudget {
        ResponseBudget {
            used: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            trim_due: AtomicBool::new(false),
        }
    }

    /// The worker's budget, shared by every exchange of the process (a worker is a process).
    pub fn worker() -> &'static ResponseBudget {
        &WORKER_BUDGET
    }

    /// Set once at start-up, from `--max-response-buffer`.
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes.max(1), Ordering::Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes charged and not yet credited.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether a piece may still be charged. As with a window, the last piece may go past
    /// the limit (by its own size): pieces are the application's and are never split.
    #[inline]
    pub fn has_room(&self) -> bool {
        self.used.load(Ordering::Relaxed) < self.limit.load(Ordering::Relaxed)
    }

    /// `n` bytes are queued. Relaxed: the counter orders nothing; a reader that sees a
    /// stale value lets one more piece through or parks a response that its own release
    /// wakes again.
    #[inline]
    pub fn charge(&self, n: usize) {
        let now = self.used.fetch_add(n, Ordering::Relaxed) + n;
        if now >= TRIM_MARK && !self.trim_due.load(Ordering::Relaxed) {
            self.trim_due.store(true, Ordering::Relaxed);
        }
    }

    /// `n` charged bytes were written (or dropped). When this empties a budget that went
    /// past [`TRIM_MARK`], the memory the pieces used goes back to the system: glibc
    /// returns memory only from the top of a heap, and the pieces of many interleaved
    /// responses (allocated on Python threads, freed on I/O threads) leave holes below live
    /// chunks that stay resident; `malloc_trim` releases the free pages inside every arena
    /// too (300 slow readers gone: +285 MiB kept without it, +2 MiB with it,
    /// perf/runs/2026-12-05-vm-slow-readers).
    #[inline]
    pub fn credit(&self, n: usize) {
        let before = self.used.fetch_sub(n, Ordering::Relaxed);
        debug_assert!(before >= n, "response budget credited more than charged");
        if before == n
            && self.trim_due.load(Ordering::Relaxed)
            && self.trim_due.swap(false, Ordering::Relaxed)
        {
            trim_heap();
        }
    }
}

/// Gives free heap memory back to the system (glibc's `malloc_trim`, over every arena).
/// It walks every arena under its lock, so it runs only once per return to zero after a
/// peak, never per piece.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own allocator state, under its locks; it is
    // safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_and_credits_balance() {
        let budget = ResponseBudget::new(100);
        assert!(budget.has_room());
        budget.charge(60);
        assert!(budget.has_room());
        budget.charge(60);
        assert!(!budget.has_room(), "over the limit by the last piece");
        assert_eq!(budget.used(), 120);
        budget.credit(60);
        assert!(budget.has_room());
        budget.credit(60);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_return_to_zero_after_the_mark_trims_once() {
        let budget = ResponseBudget::new(usize::MAX);
        budget.charge(TRIM_MARK);
        assert!(budget.trim_due.load(Ordering::Relaxed));
        budget.credit(TRIM_MARK);
        assert!(!budget.trim_due.load(Ordering::Relaxed), "trimmed");
        budget.charge(10);
        budget.credit(10);
        assert!(!budget.trim_due.load(Ordering::Relaxed));
    }
}
