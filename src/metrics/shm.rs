//! The shared block: one worker's counters, in a `memfd` the supervisor creates and the
//! worker maps `MAP_SHARED`, so the supervisor reads them without asking the worker (and
//! still can after it died). This file owns the layout and every unsafe line of metrics
//! (memfd_create, ftruncate, mmap, munmap); it never decides what a counter means.
//!
//! The block is a [`Header`] and [`SHARDS`] cache-line-aligned [`Shard`]s of `AtomicU64`
//! counters. Each counting thread claims a shard of its own and is its only writer, so an
//! update is a relaxed load and a relaxed store (no lock prefix, no cache line shared with
//! another writer); the last shard is for threads that found none free, and they add with
//! `fetch_add`. Readers sum the shards ([`SharedBlock::counts`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// Shards per block: enough for the I/O threads and the Python threads a worker usually
/// runs; threads beyond share the last one.
pub const SHARDS: usize = 64;
/// `spindle_requests_total`'s methods: GET HEAD POST PUT DELETE PATCH OPTIONS other.
pub const METHODS: usize = 8;
/// Status classes 1xx to 5xx.
pub const CLASSES: usize = 5;
/// Histogram buckets, the last one `+Inf`.
pub const BUCKETS: usize = 14;
/// `spindle_shed_total`'s reasons: queue_wait, client_gone, connections.
pub const SHED_REASONS: usize = 3;

/// Marks a block as Spindle's, of this layout: a worker refuses a descriptor without it.
const MAGIC: u64 = 0x5350_494e_444c_4502; // "SPINDLE" and layout version 2 (shed counts)

/// One thread's counters. Zeroed memory is a valid `Shard` (all counters 0), which is what
/// a fresh memfd holds. Aligned to a cache line, and a whole number of them, so two
/// shards never share a line.
#[repr(C, align(64))]
#[derive(Default)]
pub struct Shard {
    /// Requests handed to a Python thread (I/O threads).
    pub dispatched: AtomicU64,
    /// Requests a Python thread began (Python threads).
    pub taken: AtomicU64,
    /// Requests a Python thread finished (Python threads).
    pub done: AtomicU64,
    pub conns_opened: AtomicU64,
    pub conns_closed: AtomicU64,
    /// Bytes read from and written to client connections.
    pub received: AtomicU64,
    pub sent: AtomicU64,
    /// Nanoseconds Python threads spent serving requests.
    pub busy_ns: AtomicU64,
    /// The request durations' sum, in nanoseconds, and their histogram (not cumulative:
    /// one bucket per request; the exposition accumulates).
    pub duration_ns: AtomicU64,
    pub duration_buckets: [AtomicU64; BUCKETS],
    /// Requests answered, by method and status class.
    pub requests: [[AtomicU64; CLASSES]; METHODS],
    /// Requests shed by admission control, by reason (`ShedReason` order).
    pub shed: [AtomicU64; SHED_REASONS],
}

/// What the worker publishes about itself.
#[repr(C, align(64))]
struct Header {
    magic: AtomicU64,
    /// 0: not yet known, 1: sub-interpreters, 2: the main interpreter.
    interpreters: AtomicU64,
}

#[repr(C)]
struct Layout {
    header: Header,
    shards: [Shard; SHARDS],
}

/// A shard's counters read at one moment, or several shards' (or workers') summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub dispatched: u64,
    pub taken: u64,
    pub done: u64,
    pub conns_opened: u64,
    pub conns_closed: u64,
    pub received: u64,
    pub sent: u64,
    pub busy_ns: u64,
    pub duration_ns: u64,
    pub duration_buckets: [u64; BUCKETS],
    pub requests: [[u64; CLASSES]; METHODS],
    pub shed: [u64; SHED_REASONS],
}

impl Counts {
    /// Adds `shard`'s counters. Requests finish after they were taken and dispatched, so
    /// those are read last: a gauge made of differences does not go below zero.
    fn add_shard(&mut self, shard: &Shard) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        self.done += get(&shard.done);
        self.conns_closed += get(&shard.conns_closed);
        self.taken += get(&shard.taken);
        self.dispatched += get(&shard.dispatched);
        self.conns_opened += get(&shard.conns_opened);
        self.received += get(&shard.received);
        self.sent += get(&shard.sent);
        self.busy_ns += get(&shard.busy_ns);
        self.duration_ns += get(&shard.duration_ns);
        for (sum, c) in self
            .duration_buckets
            .iter_mut()
            .zip(&shard.duration_buckets)
        {
            *sum += get(c);
        }
        for (sums, row) in self.requests.iter_mut().zip(&shard.requests) {
            for (sum, c) in sums.iter_mut().zip(row) {
                *sum += get(c);
            }
        }
        for (sum, c) in self.shed.iter_mut().zip(&shard.shed) {
            *sum += get(c);
        }
    }

    /// Adds the counters of `other` that only grow (not the parts of the gauges): what a
    /// worker that exited leaves to the totals.
    pub fn fold_counters(&mut self, other: &Counts) {
        self.conns_opened += other.conns_opened;
        self.received += other.received;
        self.sent += other.sent;
        self.busy_ns += other.busy_ns;
        self.duration_ns += other.duration_ns;
        for (sum, n) in self
            .duration_buckets
            .iter_mut()
            .zip(&other.duration_buckets)
        {
            *sum += n;
        }
        for (sums, row) in self.requests.iter_mut().zip(&other.requests) {
            for (sum, n) in sums.iter_mut().zip(row) {
                *sum += n;
            }
        }
        for (sum, n) in self.shed.iter_mut().zip(&other.shed) {
            *sum += n;
        }
    }

    /// Adds everything of `other`, gauges' parts too: live workers summed.
    pub fn add(&mut self, other: &Counts) {
        self.fold_counters(other);
        self.dispatched += other.dispatched;
        self.taken += other.taken;
        self.done += other.done;
        self.conns_closed += other.conns_closed;
    }
}

/// One worker's block, mapped in this process. Unmapped when dropped.
pub struct SharedBlock {
    /// Invariant: points to a `MAP_SHARED` mapping of `len` bytes, at least
    /// `size_of::<Layout>()`, alive until `drop`, only ever accessed through atomics.
    layout: NonNull<Layout>,
    len: usize,
    /// The memfd, kept until the worker it is for has inherited it.
    fd: Option<OwnedFd>,
}

// SAFETY: the mapping is only read and written through `AtomicU64`s, which may be shared
// between threads (and processes: the kernel gives both the same physical pages); the
// pointer stays valid until `drop`, which needs the block owned.
unsafe impl Send for SharedBlock {}
// SAFETY: as for `Send`: `&SharedBlock` only hands out `&AtomicU64`s.
unsafe impl Sync for SharedBlock {}

impl SharedBlock {
    /// The mapping's length: the layout rounded up to whole pages.
    fn map_len() -> usize {
        std::mem::size_of::<Layout>().next_multiple_of(4096)
    }

    /// Creates a zeroed block in a new memfd (close-on-exec: the spawn clears that for the
    /// one worker it is for), marked as Spindle's.
    pub fn create() -> io::Result<SharedBlock> {
        // SAFETY: the name is a NUL-terminated C string; the call touches no other memory.
        let raw = unsafe { libc::memfd_create(c"spindle-metrics".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = Self::map_len();
        // SAFETY: ftruncate on our own descriptor; a new memfd grows with zeroed pages.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut block = Self::map(&fd, len)?;
        block.header().magic.store(MAGIC, Ordering::Release);
        block.fd = Some(fd);
        Ok(block)
    }

    /// Maps the block a supervisor made, inherited as descriptor `raw`, and closes the
    /// descriptor. Refuses one that is not a block of this layout.
    pub fn inherit(raw: RawFd) -> io::Result<SharedBlock> {
        let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_string());
        // SAFETY: fcntl(F_GETFD) only asks whether the descriptor is open.
        if raw < 0 || unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
            return Err(invalid("not an open descriptor"));
        }
        // SAFETY: the descriptor is open, and the supervisor made it for this process alone
        // (`--internal-worker` is its flag): we take it over, and nothing else closes it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut stat = std::mem::MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: `stat` is a valid, exclusively borrowed buffer for fstat to fill in.
        if unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstat succeeded, so it filled the structure in (and zeroed is valid too).
        let stat = unsafe { stat.assume_init() };
        let len = Self::map_len();
        if (stat.st_mode & libc::S_IFMT) != libc::S_IFREG || (stat.st_size as u64) < len as u64 {
            return Err(invalid("not a metrics block"));
        }
        let block = Self::map(&fd, len)?;
        if block.header().magic.load(Ordering::Acquire) != MAGIC {
            return Err(invalid("not a metrics block of this Spindle"));
        }
        Ok(block)
    }

    fn map(fd: &OwnedFd, len: usize) -> io::Result<SharedBlock> {
        // SAFETY: a fresh shared mapping of a descriptor we hold, `len` bytes long (the
        // file is at least that long: made so, or checked); no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // mmap returns page-aligned memory, which satisfies `Layout`'s 64-byte alignment.
        let layout = NonNull::new(ptr.cast::<Layout>()).ok_or_else(io::Error::last_os_error)?;
        Ok(SharedBlock {
            layout,
            len,
            fd: None,
        })
    }

    /// The memfd, for the worker to inherit; `None` once closed.
    pub fn fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Closes the memfd (the worker has its own copy now); the mapping stays.
    pub fn close_fd(&mut self) {
        self.fd = None;
    }

    fn layout(&self) -> &Layout {
        // SAFETY: the invariant on `layout`: a live mapping of a valid `Layout` (zeroed
        // memory is one, and it is only changed through atomics).
        unsafe { self.layout.as_ref() }
    }

    fn header(&self) -> &Header {
        &self.layout().header
    }

    pub fn shard(&self, index: usize) -> &Shard {
        &self.layout().shards[index]
    }

    /// Every shard summed.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for shard in &self.layout().shards {
            counts.add_shard(shard);
        }
        counts
    }

    /// Publishes how the worker runs its application: `true` on sub-interpreters.
    pub fn set_interpreters(&self, sub: bool) {
        let mode = if sub { 1 } else { 2 };
        self.header().interpreters.store(mode, Ordering::Release);
    }

    /// What the worker published: `Some(true)` sub-interpreters, `Some(false)` the main
    /// interpreter, `None` not yet (its application is still loading).
    pub fn interpreters(&self) -> Option<bool> {
        match self.header().interpreters.load(Ordering::Acquire) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }
}

impl Drop for SharedBlock {
    fn drop(&mut self) {
        // SAFETY: our own mapping of `len` bytes; nothing borrows it, since every borrow is
        // tied to `&self` and we are being dropped.
        unsafe {
            libc::munmap(self.layout.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_whole_cache_lines() {
        assert_eq!(std::mem::size_of::<Shard>() % 64, 0);
        assert_eq!(std::mem::align_of::<Shard>(), 64);
    }

    #[test]
    fn a_block_another_mapping_writes_is_read_summed_over_its_shards() {
        let mut block = SharedBlock::create().expect("memfd");
        // The worker's side: a second mapping of the same memfd, as after the exec.
        let dup = {
            let fd = block.fd().expect("fd");
            // SAFETY: dup of a descriptor we own; the new one is owned by `inherit`.
            unsafe { libc::dup(fd) }
        };
        block.close_fd();
        let worker = SharedBlock::inherit(dup).expect("the block maps");
        worker.shard(0).dispatched.store(3, Ordering::Relaxed);
        worker.shard(7).dispatched.store(4, Ordering::Relaxed);
        worker.shard(SHARDS - 1).requests[2][1].fetch_add(5, Ordering::Relaxed);
        worker.shard(9).duration_buckets[13].store(2, Ordering::Relaxed);
        worker.set_interpreters(true);
        let counts = block.counts();
        assert_eq!(counts.dispatched, 7);
        assert_eq!(counts.requests[2][1], 5);
        assert_eq!(counts.duration_buckets[13], 2);
        assert_eq!(block.interpreters(), Some(true));
        drop(worker);
        // The supervisor's mapping outlives the worker's.
        assert_eq!(block.counts().dispatched, 7);
    }

    #[test]
    fn folding_keeps_counters_and_drops_gauges() {
        let mut retired = Counts::default();
        let gone = Counts {
            dispatched: 10,
            taken: 9,
            done: 8,
            conns_opened: 4,
            conns_closed: 3,
            received: 100,
            sent: 200,
            requests: {
                let mut r = [[0; CLASSES]; METHODS];
                r[0][1] = 8;
                r
            },
            ..Counts::default()
        };
        retired.fold_counters(&gone);
        retired.fold_counters(&gone);
        assert_eq!(retired.requests[0][1], 16);
        assert_eq!(
            (retired.conns_opened, retired.received, retired.sent),
            (8, 200, 400)
        );
        assert_eq!(
            (
                retired.dispatched,
                retired.taken,
                retired.done,
                retired.conns_closed
            ),
            (0, 0, 0, 0)
        );
    }

    #[test]
    fn a_descriptor_that_is_not_a_block_is_refused() {
        let file = std::fs::File::open("/dev/null").expect("/dev/null");
        let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
        assert!(SharedBlock::inherit(fd).is_err());
        assert!(SharedBlock::inherit(-1).is_err());
    }
}
