//! The request queue from every I/O thread to every Python thread, and [`Capacity`]: how
//! many Python threads wait for work, which lets a growing pool learn cheaply that requests
//! are waiting with no thread free to take them.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::Request;

/// The Python side's free capacity, as the I/O side sees it.
///
/// Python threads count themselves idle while they wait on the queue. When a request is
/// queued and none is idle, the I/O thread wakes the pool's grower, at most once until the
/// grower has looked: a load of one counter per request, and an `unpark` only when the pool
/// may need to grow (ARCHITECTURE.md §6).
#[derive(Default)]
pub struct Capacity {
    idle: AtomicUsize,
    /// Set by the I/O side when it asked the grower to look; cleared by the grower.
    asked: AtomicBool,
    /// How long (µs) the first request of the latest batch a Python thread took had waited
    /// in the queue.
    recent_wait_us: AtomicU64,
    /// The grower, when the pool may grow at all.
    grower: OnceLock<std::thread::Thread>,
}

impl Capacity {
    /// A Python thread starts waiting for a request.
    #[inline]
    pub fn thread_idle(&self) {
        self.idle.fetch_add(1, Ordering::AcqRel);
    }

    /// A Python thread stopped waiting (it has a request, or it is leaving).
    #[inline]
    pub fn thread_busy(&self) {
        self.idle.fetch_sub(1, Ordering::AcqRel);
    }

    /// A Python thread took a request that waited `waited` in the queue (the first of its
    /// batch: the one that waited longest).
    #[inline]
    pub fn record_wait(&self, waited: Duration) {
        self.recent_wait_us.store(
            waited.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    /// How long requests waited in the queue lately.
    pub fn recent_wait(&self) -> Duration {
        Duration::from_micros(self.recent_wait_us.load(Ordering::Relaxed))
    }

    /// Threads waiting for a request right now.
    #[inline]
    pub fn idle(&self) -> usize {
        self.idle.load(Ordering::Acquire)
    }

    /// The thread that grows the pool: woken when requests wait and no thread is idle.
    pub fn set_grower(&self, thread: std::thread::Thread) {
        let _ = self.grower.set(thread);
    }

    /// I/O side, after a request was queued.
    #[inline]
    fn request_queued(&self) {
        if self.idle.load(Ordering::Acquire) == 0 {
            if let Some(grower) = self.grower.get() {
                if !self.asked.swap(true, Ordering::AcqRel) {
                    grower.unpark();
                }
            }
        }
    }

    /// Grower side: whether the I/O side asked since the last `take_ask`.
    pub fn is_asked(&self) -> bool {
        self.asked.load(Ordering::Acquire)
    }

    /// Grower side: whether the I/O side asked since the last `take_ask`, clearing it.
    pub fn take_ask(&self) -> bool {
        self.asked.swap(false, Ordering::AcqRel)
    }
}

/// The I/O side's end of the request queue.
#[derive(Clone)]
pub struct RequestSender {
    tx: Sender<Request>,
    capacity: Arc<Capacity>,
}

impl RequestSender {
    /// Queues a request without blocking; a full queue hands it back (back-pressure).
    #[inline]
    // The error carries the request back to be retried; boxing it would cost an
    // allocation per request on the hot path.
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, mut request: Request) -> Result<(), TrySendError<Request>> {
        request.queued = Instant::now();
        self.tx.try_send(request)?;
        self.capacity.request_queued();
        Ok(())
    }
}

/// The queue from all I/O threads to all Python threads, bounded: when it is full, I/O
/// threads stop reading new requests (back-pressure) instead of buffering without limit.
pub fn request_queue(capacity: usize, free: Arc<Capacity>) -> (RequestSender, Receiver<Request>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    (RequestSender { tx, capacity: free }, rx)
}
