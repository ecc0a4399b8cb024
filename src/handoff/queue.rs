//! The request queue from every I/O thread to every Python thread, and [`Capacity`]: how
//! many Python threads wait for work, which lets a growing pool learn cheaply that requests
//! are waiting with no thread free to take them.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};

use super::{Doorbell, Request};

/// The Python side's free capacity, as the I/O side sees it.
///
/// Python threads count themselves idle while they wait on the queue. When a request is
/// queued and none is idle, the I/O thread wakes the pool's grower, at most once until the
/// grower has looked: a load of one counter per request, and an `unpark` only when the pool
/// may need to grow (ARCHITECTURE.md §6).
#[derive(Default)]
pub struct Capacity {
    idle: AtomicUsize,
    /// Threads not inside an application call: waiting for a request, or between two (a
    /// thread whose response is out is about to take the next one). Counted only when
    /// `counts_free` (other workers share the listeners: `server::thread` asks).
    free: AtomicUsize,
    counts_free: AtomicBool,
    /// Set by the I/O side when it asked the grower to look; cleared by the grower.
    asked: AtomicBool,
    /// How long (µs) the request a Python thread took last had waited in the queue.
    recent_wait_us: AtomicU64,
    /// When (µs after `epoch`) a Python thread last took a request.
    last_take_us: AtomicU64,
    epoch: OnceLock<Instant>,
    /// The grower, when the pool may grow at all.
    grower: OnceLock<std::thread::Thread>,
    /// Where idle Python threads sleep (`wait_for_request`).
    doorbell: Doorbell,
}

impl Capacity {
    /// A Python thread joins the pool (free), or leaves it.
    pub fn thread_joins(&self) {
        self.free.fetch_add(1, Ordering::AcqRel);
    }

    pub fn thread_leaves(&self) {
        self.free.fetch_sub(1, Ordering::AcqRel);
    }

    /// Counts the threads inside application calls from now on (set before any thread
    /// starts): two atomic operations per request, paid only where they are read.
    pub fn count_free_threads(&self) {
        self.counts_free.store(true, Ordering::Relaxed);
    }

    /// A Python thread calls the application for a request, and comes back from it.
    #[inline]
    pub fn app_enters(&self) {
        if self.counts_free.load(Ordering::Relaxed) {
            self.free.fetch_sub(1, Ordering::AcqRel);
        }
    }

    #[inline]
    pub fn app_leaves(&self) {
        if self.counts_free.load(Ordering::Relaxed) {
            self.free.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Whether every Python thread is inside an application call.
    #[inline]
    pub fn all_in_app(&self) -> bool {
        self.free.load(Ordering::Acquire) == 0
    }

    /// A Python thread starts waiting for a request.
    #[inline]
    pub fn thread_idle(&self) {
        self.idle.fetch_add(1, Ordering::AcqRel);
    }

    /// A Python thread stopped waiting (it has a request, or it is leaving). When it was
    /// the last idle one and `more_queued` says requests wait behind it, it asks the grower:
    /// requests queued while it was still idle did not ask (the I/O side asks only when it
    /// queues a request with no thread idle).
    #[inline]
    pub fn thread_busy(&self, more_queued: impl FnOnce() -> bool) {
        if self.idle.fetch_sub(1, Ordering::AcqRel) == 1 && more_queued() {
            self.ask_grower();
        }
    }

    /// A Python thread took a request that was queued at `queued` (two stores, no
    /// read-modify-write: the cost of one clock read per request).
    #[inline]
    pub fn record_take(&self, queued: Instant) {
        let now = Instant::now();
        let waited = now.saturating_duration_since(queued);
        self.recent_wait_us.store(micros(waited), Ordering::Relaxed);
        self.last_take_us.store(
            micros(now.saturating_duration_since(self.epoch())),
            Ordering::Relaxed,
        );
    }

    /// How long the request taken last had waited in the queue.
    pub fn recent_wait(&self) -> Duration {
        Duration::from_micros(self.recent_wait_us.load(Ordering::Relaxed))
    }

    /// How long ago a Python thread last took a request: while every thread is held by a
    /// long request, requests wait without anyone taking them, and the wait of the last
    /// one taken says nothing about them.
    pub fn since_last_take(&self) -> Duration {
        let last = Duration::from_micros(self.last_take_us.load(Ordering::Relaxed));
        self.epoch().elapsed().saturating_sub(last)
    }

    fn epoch(&self) -> Instant {
        *self.epoch.get_or_init(Instant::now)
    }

    /// Threads waiting for a request right now.
    #[inline]
    pub fn idle(&self) -> usize {
        self.idle.load(Ordering::Acquire)
    }

    /// A Python thread takes the next request from `requests`, sleeping until one comes
    /// (woken by the I/O side's [`RequestSender::try_send`], not by crossbeam's spinning
    /// and yielding `recv`), the queue closes, or `timeout` passes.
    pub fn wait_for_request(
        &self,
        requests: &Receiver<Request>,
        timeout: Option<Duration>,
    ) -> Result<Request, RecvTimeoutError> {
        let took = self.doorbell.wait(
            || match requests.try_recv() {
                Ok(request) => Some(Ok(request)),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => Some(Err(RecvTimeoutError::Disconnected)),
            },
            timeout,
        );
        took.unwrap_or(Err(RecvTimeoutError::Timeout))
    }

    /// The thread that grows the pool: woken when requests wait and no thread is idle.
    pub fn set_grower(&self, thread: std::thread::Thread) {
        let _ = self.grower.set(thread);
    }

    /// I/O side, after a request was queued.
    #[inline]
    fn request_queued(&self) {
        if self.idle.load(Ordering::Acquire) == 0 {
            self.ask_grower();
        }
    }

    /// Wakes the grower, unless it was asked already and has not looked yet.
    #[inline]
    fn ask_grower(&self) {
        if let Some(grower) = self.grower.get() {
            if !self.asked.swap(true, Ordering::AcqRel) {
                grower.unpark();
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
pub struct RequestSender {
    /// Always `Some` but in `drop`, which lets it go before it wakes the sleepers.
    tx: Option<Sender<Request>>,
    capacity: Arc<Capacity>,
}

impl Clone for RequestSender {
    fn clone(&self) -> RequestSender {
        RequestSender {
            tx: self.tx.clone(),
            capacity: self.capacity.clone(),
        }
    }
}

impl Drop for RequestSender {
    fn drop(&mut self) {
        // The last sender gone closes the queue: sleeping Python threads must wake to see
        // it, and only after this sender is gone can they.
        drop(self.tx.take());
        self.capacity.doorbell.ring_all();
    }
}

impl RequestSender {
    /// Queues a request without blocking; a full queue hands it back (back-pressure).
    #[inline]
    // The error carries the request back to be retried; boxing it would cost an
    // allocation per request on the hot path.
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, mut request: Request) -> Result<(), TrySendError<Request>> {
        request.queued = Instant::now();
        self.tx().try_send(request)?;
        self.capacity.doorbell.ring();
        self.capacity.request_queued();
        Ok(())
    }

    #[inline]
    fn tx(&self) -> &Sender<Request> {
        self.tx
            .as_ref()
            .expect("a RequestSender has its sender until it is dropped")
    }

    /// Requests in the queue now (shed ones not yet taken out by a Python thread count).
    pub fn queued(&self) -> usize {
        self.tx().len()
    }

    /// Whether every Python thread is inside an application call: a thread between two
    /// requests (its response out, `close()` done, not yet waiting) counts as free.
    #[inline]
    pub fn all_threads_held(&self) -> bool {
        self.capacity.all_in_app()
    }
}

/// The queue from all I/O threads to all Python threads, bounded: when it is full, I/O
/// threads stop reading new requests (back-pressure) instead of buffering without limit.
pub fn request_queue(capacity: usize, free: Arc<Capacity>) -> (RequestSender, Receiver<Request>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    (
        RequestSender {
            tx: Some(tx),
            capacity: free,
        },
        rx,
    )
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}
