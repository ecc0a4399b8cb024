//! Prometheus metrics (`--metrics-bind`): counting on the hot path, gathering across worker
//! processes, and the `/metrics` endpoint. ARCHITECTURE.md §10, "Metrics".
//!
//! - **Counting** (the functions at the top of this file) runs on I/O and Python threads.
//!   It must cost nothing measurable: no lock, no allocation, no syscall. Each thread
//!   claims a shard of the process's [`SharedBlock`] once (a thread-local remembers it) and
//!   is its only writer. Without `--metrics-bind` no block is installed and each call is
//!   one load and one predictable branch.
//! - **Gathering** ([`Hub`]): the supervisor creates a block per worker it spawns and reads
//!   them all; when a worker exits, its counters are folded into the retired totals (so
//!   they never go backwards) and its block is unmapped.
//! - **Serving** (`endpoint.rs`): a plain thread answering `GET /metrics` from the hub, in
//!   the text format of `expose.rs`.
//!
//! This module never imports the server or Python: they call it.

mod endpoint;
mod expose;
mod shm;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use endpoint::MetricsServer;
pub use shm::SharedBlock;
use shm::{Counts, Shard, BUCKETS, SHARDS, SHED_REASONS};

// ---------------------------------------------------------------------------------------
// Counting: this process's block, and each thread's shard of it.

/// This process's block, once installed; never removed (threads keep `&'static` shards).
static LOCAL: OnceLock<Local> = OnceLock::new();

struct Local {
    block: Arc<SharedBlock>,
    /// Which shards a live thread owns (the last one, shared, is never claimed).
    claimed: [AtomicBool; SHARDS - 1],
}

/// Makes `block` the one this process counts in (a worker's inherited block, or a single
/// process's own). Once per process; a second call is ignored.
pub fn install(block: Arc<SharedBlock>) {
    let _ = LOCAL.set(Local {
        block,
        claimed: std::array::from_fn(|_| AtomicBool::new(false)),
    });
}

/// This process's block: the one installed, or a new one installed now (a single process;
/// `spindle.serve()` may run twice in one program, and counting goes on in the first).
pub fn own_block() -> std::io::Result<Arc<SharedBlock>> {
    if let Some(local) = LOCAL.get() {
        return Ok(local.block.clone());
    }
    install(Arc::new(SharedBlock::create()?));
    Ok(LOCAL.get().expect("installed just now").block.clone())
}

/// Publishes, once the application is loaded, whether this process runs it on
/// sub-interpreters (`spindle_worker_info`'s `interpreters` label).
pub fn publish_interpreters(sub: bool) {
    if let Some(local) = LOCAL.get() {
        local.block.set_interpreters(sub);
    }
}

/// A thread's shard: `exclusive` when the thread is its only writer.
#[derive(Clone, Copy)]
struct ShardRef {
    shard: &'static Shard,
    exclusive: bool,
}

impl ShardRef {
    #[inline]
    fn add(self, counter: impl FnOnce(&Shard) -> &AtomicU64, n: u64) {
        let counter = counter(self.shard);
        if self.exclusive {
            // The only writer: a plain load and store, no locked instruction. Readers may
            // see the old or the new value, both true at some moment.
            counter.store(
                counter.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        } else {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// The calling thread's claim on a shard, given back when the thread ends (Python threads
/// come and go with the pool's growth).
struct Claim(Cell<Option<(ShardRef, usize)>>);

impl Drop for Claim {
    fn drop(&mut self) {
        if let (Some((_, index)), Some(local)) = (self.0.get(), LOCAL.get()) {
            if index < SHARDS - 1 {
                // Release: the next owner sees this thread's last stores.
                local.claimed[index].store(false, Ordering::Release);
            }
        }
    }
}

thread_local! {
    static CLAIM: Claim = const { Claim(Cell::new(None)) };
}

impl Local {
    /// A free shard for the calling thread, or the shared last one.
    #[cold]
    fn claim(&'static self) -> (ShardRef, usize) {
        for (index, flag) in self.claimed.iter().enumerate() {
            if flag
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                let shard = ShardRef {
                    shard: self.block.shard(index),
                    exclusive: true,
                };
                return (shard, index);
            }
        }
        let shared = ShardRef {
            shard: self.block.shard(SHARDS - 1),
            exclusive: false,
        };
        (shared, SHARDS - 1)
    }
}

/// Runs `count` on the calling thread's shard; nothing without an installed block.
#[inline]
fn with_shard(count: impl FnOnce(ShardRef)) {
    let Some(local) = LOCAL.get() else {
        return;
    };
    // `try_with`: a thread being torn down has no thread-locals left; it counts nothing.
    let _ = CLAIM.try_with(|claim| {
        let shard = match claim.0.get() {
            Some((shard, _)) => shard,
            None => {
                let claimed = local.claim();
                claim.0.set(Some(claimed));
                claimed.0
            }
        };
        count(shard);
    });
}

/// Whether counting is on in this process.
#[inline]
pub fn enabled() -> bool {
    LOCAL.get().is_some()
}

/// An I/O thread accepted a connection.
#[inline]
pub fn connection_opened() {
    with_shard(|s| s.add(|s| &s.conns_opened, 1));
}

/// A connection's task ended.
#[inline]
pub fn connection_closed() {
    with_shard(|s| s.add(|s| &s.conns_closed, 1));
}

/// Bytes read from a client connection.
#[inline]
pub fn received(n: usize) {
    with_shard(|s| s.add(|s| &s.received, n as u64));
}

/// Bytes written to a client connection.
#[inline]
pub fn sent(n: usize) {
    with_shard(|s| s.add(|s| &s.sent, n as u64));
}

/// An I/O thread queued a request for the Python threads.
#[inline]
pub fn request_dispatched() {
    with_shard(|s| s.add(|s| &s.dispatched, 1));
}

/// A Python thread took a request from the queue: when, for [`request_done`] (`None`
/// without metrics, so no clock is read).
#[inline]
pub fn request_taken() -> Option<Instant> {
    if !enabled() {
        return None;
    }
    with_shard(|s| s.add(|s| &s.taken, 1));
    Some(Instant::now())
}

/// A Python thread took a request that was shed while queued and dropped it without
/// calling the application: it left the queue and is done (the gauges' parts).
#[inline]
pub fn request_skipped() {
    with_shard(|s| {
        s.add(|s| &s.taken, 1);
        s.add(|s| &s.done, 1);
    });
}

/// Why admission control shed a request: `spindle_shed_total`'s `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// It waited for a Python thread past `--max-queue-wait` and was answered 503.
    QueueWait,
    /// Its connection ended (the client left) before a Python thread took it.
    ClientGone,
    /// Its connection was refused past `--worker-connections`.
    Connections,
}

impl ShedReason {
    pub const ALL: [ShedReason; SHED_REASONS] = [
        ShedReason::QueueWait,
        ShedReason::ClientGone,
        ShedReason::Connections,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ShedReason::QueueWait => "queue_wait",
            ShedReason::ClientGone => "client_gone",
            ShedReason::Connections => "connections",
        }
    }
}

/// Admission control shed a request (or refused a connection).
#[inline]
pub fn shed(reason: ShedReason) {
    with_shard(|s| s.add(|s| &s.shed[reason as usize], 1));
}

/// A Python thread finished a request it took at `taken`: `started` is when its head was
/// parsed, `method` its method, `status` the status sent (none: the client went away
/// first, and the request counts only as done).
#[inline]
pub fn request_done(taken: Option<Instant>, started: Instant, method: &[u8], status: Option<u16>) {
    let Some(taken) = taken else {
        return;
    };
    let now = Instant::now();
    let busy = now.saturating_duration_since(taken);
    let duration = now.saturating_duration_since(started);
    with_shard(|s| {
        s.add(|s| &s.done, 1);
        s.add(|s| &s.busy_ns, nanos(busy));
        if let Some(class) = status.and_then(status_class) {
            s.add(|s| &s.requests[method_index(method)][class], 1);
            s.add(|s| &s.duration_buckets[bucket_index(duration)], 1);
            s.add(|s| &s.duration_ns, nanos(duration));
        }
    });
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `spindle_requests_total`'s `method` label, by index.
const METHOD_NAMES: [&str; shm::METHODS] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];

fn method_index(method: &[u8]) -> usize {
    match method {
        b"GET" => 0,
        b"HEAD" => 1,
        b"POST" => 2,
        b"PUT" => 3,
        b"DELETE" => 4,
        b"PATCH" => 5,
        b"OPTIONS" => 6,
        _ => 7,
    }
}

/// 1xx..5xx as 0..4; a status outside them (the encoder allows none) is not counted.
fn status_class(status: u16) -> Option<usize> {
    (100..600)
        .contains(&status)
        .then(|| usize::from(status / 100 - 1))
}

/// The histogram's upper bounds in seconds (`le`), the last bucket being `+Inf`.
const BUCKET_BOUNDS: [f64; BUCKETS - 1] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// The same bounds in nanoseconds, for the hot path.
const BUCKET_BOUNDS_NS: [u64; BUCKETS - 1] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The bucket a duration falls in: the first whose bound it does not exceed (`le`).
fn bucket_index(d: Duration) -> usize {
    let ns = nanos(d);
    BUCKET_BOUNDS_NS
        .iter()
        .position(|&bound| ns <= bound)
        .unwrap_or(BUCKETS - 1)
}

// ---------------------------------------------------------------------------------------
// Gathering: the supervisor's (or the single process's) view of every worker.

/// Why the supervisor replaced a worker: `spindle_worker_restarts_total`'s `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    /// It died, or exited, without being asked.
    Crash,
    /// Every Python thread stuck past `--timeout`.
    Timeout,
    /// `--max-requests`.
    MaxRequests,
    /// `--max-worker-memory`.
    Memory,
    /// A reload (SIGHUP, `--reload`) replaced its generation.
    Reload,
}

impl RestartReason {
    const ALL: [RestartReason; 5] = [
        RestartReason::Crash,
        RestartReason::Timeout,
        RestartReason::MaxRequests,
        RestartReason::Memory,
        RestartReason::Reload,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Crash => "crash",
            RestartReason::Timeout => "timeout",
            RestartReason::MaxRequests => "max-requests",
            RestartReason::Memory => "memory",
            RestartReason::Reload => "reload",
        }
    }

    /// The reason the supervisor gives a replacement in its log ("max-requests",
    /// "timeout", "memory").
    pub fn from_label(label: &str) -> Option<RestartReason> {
        Self::ALL.into_iter().find(|r| r.as_str() == label)
    }
}

/// One live worker, as the hub sees it.
struct LiveWorker {
    slot: u32,
    pid: u32,
    block: Arc<SharedBlock>,
}

#[derive(Default)]
struct HubState {
    live: Vec<LiveWorker>,
    /// The counters of workers that exited, so totals never go backwards.
    retired: Counts,
    spawns: u64,
    restarts: [u64; RestartReason::ALL.len()],
}

/// Every worker's block and the supervisor's own counters. The supervisor's loop updates
/// it (a few times per worker's life) and the endpoint thread reads it; the lock is held
/// for a copy of the list, never while the blocks are summed or the text is written.
pub struct Hub {
    /// `false` for a single process: no supervisor counters.
    supervised: bool,
    state: Mutex<HubState>,
}

impl Hub {
    /// A supervisor's hub: workers come with [`Hub::spawned`].
    pub fn supervisor() -> Hub {
        Hub {
            supervised: true,
            state: Mutex::default(),
        }
    }

    /// A single process's hub: the one worker is this process, counting in `block`.
    pub fn single(block: Arc<SharedBlock>) -> Hub {
        let hub = Hub {
            supervised: false,
            state: Mutex::default(),
        };
        hub.lock().live.push(LiveWorker {
            slot: 1,
            pid: std::process::id(),
            block,
        });
        hub
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        // A panic elsewhere while it was held leaves plain numbers behind: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Worker `pid` of `slot` was spawned with `block` (whose descriptor it inherited).
    pub fn spawned(&self, slot: u32, pid: u32, mut block: SharedBlock) {
        block.close_fd();
        let mut state = self.lock();
        state.spawns += 1;
        state.live.push(LiveWorker {
            slot,
            pid,
            block: Arc::new(block),
        });
    }

    /// Worker `pid` exited: its final counters join the retired totals, and its block is
    /// unmapped (once a scrape in progress is done with it).
    pub fn exited(&self, pid: u32) {
        let mut state = self.lock();
        if let Some(index) = state.live.iter().position(|w| w.pid == pid) {
            let worker = state.live.remove(index);
            let last = worker.block.counts();
            state.retired.fold_counters(&last);
        }
    }

    /// The supervisor replaced (or is replacing) a worker, for `reason`.
    pub fn restarted(&self, reason: RestartReason) {
        let index = RestartReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is in ALL");
        self.lock().restarts[index] += 1;
    }

    /// The exposition, in Prometheus' text format.
    pub fn render(&self) -> String {
        let (workers, mut counters, spawns, restarts) = {
            let state = self.lock();
            let workers: Vec<(u32, u32, Arc<SharedBlock>)> = state
                .live
                .iter()
                .map(|w| (w.slot, w.pid, w.block.clone()))
                .collect();
            (workers, state.retired, state.spawns, state.restarts)
        };
        let mut live = Counts::default();
        let mut info = Vec::new();
        for (slot, pid, block) in &workers {
            live.add(&block.counts());
            if let Some(sub) = block.interpreters() {
                info.push(expose::WorkerInfo {
                    slot: *slot,
                    pid: *pid,
                    sub,
                });
            }
        }
        counters.fold_counters(&live);
        let supervisor = self.supervised.then(|| expose::SupervisorCounts {
            spawns,
            restarts: std::array::from_fn(|i| (RestartReason::ALL[i].as_str(), restarts[i])),
        });
        expose::render(&expose::Snapshot {
            counters,
            live,
            workers: workers.len() as u64,
            info,
            supervisor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fall_in_the_first_bucket_they_do_not_exceed() {
        assert_eq!(bucket_index(Duration::from_micros(10)), 0);
        assert_eq!(bucket_index(Duration::from_millis(1)), 0);
        assert_eq!(bucket_index(Duration::from_micros(1001)), 1);
        assert_eq!(bucket_index(Duration::from_secs(10)), BUCKETS - 2);
        assert_eq!(bucket_index(Duration::from_secs(11)), BUCKETS - 1);
        for (ns, s) in BUCKET_BOUNDS_NS.iter().zip(BUCKET_BOUNDS) {
            assert_eq!(*ns as f64 / 1e9, s);
        }
    }

    #[test]
    fn methods_and_status_classes() {
        assert_eq!(METHOD_NAMES[method_index(b"PATCH")], "PATCH");
        assert_eq!(METHOD_NAMES[method_index(b"PROPFIND")], "other");
        assert_eq!(status_class(101), Some(0));
        assert_eq!(status_class(599), Some(4));
        assert_eq!(status_class(99), None);
        assert_eq!(status_class(600), None);
    }

    #[test]
    fn the_hub_folds_an_exited_worker_so_counters_never_go_backwards() {
        let hub = Hub::supervisor();
        for (slot, pid) in [(1, 100), (2, 200)] {
            let block = SharedBlock::create().expect("memfd");
            block.shard(3).requests[0][1].store(5, Ordering::Relaxed);
            block.shard(3).dispatched.store(6, Ordering::Relaxed);
            block.shard(3).conns_opened.store(2, Ordering::Relaxed);
            block.set_interpreters(slot == 1);
            hub.spawned(slot, pid, block);
        }
        let before = hub.render();
        assert!(
            before.contains("spindle_requests_total{method=\"GET\",status=\"2xx\"} 10\n"),
            "{before}"
        );
        assert!(
            before.contains("spindle_requests_in_flight 12\n"),
            "{before}"
        );
        assert!(before.contains("spindle_workers 2\n"), "{before}");
        assert!(
            before.contains("spindle_worker_info{slot=\"1\",pid=\"100\",interpreters=\"sub\"} 1\n"),
            "{before}"
        );
        hub.exited(100);
        hub.restarted(RestartReason::Crash);
        let after = hub.render();
        assert!(
            after.contains("spindle_requests_total{method=\"GET\",status=\"2xx\"} 10\n"),
            "{after}"
        );
        assert!(after.contains("spindle_connections_total 4\n"), "{after}");
        // A dead worker's requests are not in flight any more.
        assert!(after.contains("spindle_requests_in_flight 6\n"), "{after}");
        assert!(after.contains("spindle_workers 1\n"), "{after}");
        assert!(!after.contains("pid=\"100\""), "{after}");
        assert!(
            after.contains("spindle_worker_restarts_total{reason=\"crash\"} 1\n"),
            "{after}"
        );
        assert!(after.contains("spindle_worker_spawns_total 2\n"), "{after}");
    }

    #[test]
    fn threads_count_in_their_own_shards_and_the_sums_add_up() {
        // The process-wide block: only this test installs one in the test binary.
        let block = Arc::new(SharedBlock::create().expect("memfd"));
        install(block.clone());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..1000 {
                        request_dispatched();
                        let taken = request_taken();
                        request_done(taken, Instant::now(), b"POST", Some(201));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("counting thread");
        }
        let counts = block.counts();
        assert_eq!(counts.dispatched, 8000);
        assert_eq!(counts.done, 8000);
        assert_eq!(counts.requests[2][1], 8000);
        assert_eq!(counts.duration_buckets.iter().sum::<u64>(), 8000);
        // Every thread gave its shard back when it ended.
        let local = LOCAL.get().expect("installed");
        assert!(local.claimed.iter().all(|c| !c.load(Ordering::Acquire)));
    }
}
