//! [`Host`]: one interpreter and the Python threads it hosts. An own-GIL sub-interpreter
//! (or the main interpreter) runs as many threads as its application's waiting needs: they
//! share its GIL exactly as threads share the GIL of one process, so while one waits on a
//! database the others run (ARCHITECTURE.md §6, "Threads").
//!
//! The host counts its threads, lets the pool add one while it is open and under its
//! bound, lets an idle thread beyond the minimum leave, and lets the thread that owns a
//! sub-interpreter wait for every other thread of it to be gone before it ends the
//! interpreter: `Py_EndInterpreter` is a fatal error while another thread state of that
//! interpreter exists.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pyo3_ffi as ffi;

use super::interp::Interp;
use super::watch::ThreadWatch;

/// An interpreter's address, to make thread states for it on other threads.
#[derive(Clone, Copy)]
pub(super) struct InterpState(*mut ffi::PyInterpreterState);

// SAFETY: the pointer is only handed to `PyThreadState_New`, by a thread the host admitted
// while open (`Host::admit`); the interpreter is ended only after the host closed and every
// admitted thread left (`Host::close`), so it is alive whenever the pointer is used.
unsafe impl Send for InterpState {}
// SAFETY: as above; the value is never dereferenced in Rust.
unsafe impl Sync for InterpState {}

impl InterpState {
    /// The interpreter the calling thread is attached to.
    ///
    /// # Safety
    /// The calling thread must hold an attached thread state.
    pub(super) unsafe fn current() -> InterpState {
        // SAFETY: guaranteed by the caller.
        InterpState(unsafe { ffi::PyInterpreterState_Get() })
    }

    pub(super) fn as_ptr(self) -> *mut ffi::PyInterpreterState {
        self.0
    }
}

/// What a thread needs to join a host's interpreter.
#[derive(Clone)]
pub(super) struct Admission {
    pub interp: Arc<Interp>,
    pub state: InterpState,
}

/// One interpreter and its threads.
pub(super) struct Host {
    /// Threads the host keeps even when idle (the owner of a sub-interpreter among them).
    pub min: usize,
    /// Threads the host may have at most.
    pub max: usize,
    /// Threads of this interpreter that took work and wait to re-take its GIL: when some
    /// do, the GIL is the bottleneck and another thread would only wait too.
    gil_waiting: AtomicUsize,
    inner: Mutex<Inner>,
    changed: Condvar,
    /// The latest estimate of how busy the interpreter's GIL is, and when it was made.
    load: Mutex<LoadSample>,
}

/// CPU time of an interpreter's threads at one instant, and the share of one core they
/// used between the previous sample and this one.
struct LoadSample {
    at: Instant,
    cpu: Duration,
    busy: f64,
}

/// How long a GIL-load estimate stands before it is measured again.
const LOAD_WINDOW: Duration = Duration::from_millis(10);
/// A sample older than this is not about the present load.
const LOAD_STALE: Duration = Duration::from_millis(200);

/// A thread's CPU-time clock (and its [`ThreadWatch`]), registered with its host while the
/// thread lives.
pub(super) struct ThreadClock {
    id: u64,
    clock: libc::clockid_t,
}

struct Inner {
    /// Live threads, counting those admitted and still starting.
    threads: usize,
    /// Threads joined that are not the host's ([`Host::admit_guest`]): they count for
    /// neither its bound nor its minimum and take no work from the queue, but the
    /// interpreter must outlive them too.
    guests: usize,
    /// The owner is ending the interpreter: no thread joins any more.
    closing: bool,
    /// Set once the interpreter exists and the application is loaded in it.
    ready: Option<Admission>,
    /// The CPU-time clocks of the live threads, and the CPU time of those that left.
    clocks: Vec<(u64, libc::clockid_t)>,
    /// What the live threads are doing, for `--timeout`'s watchdog.
    watches: Vec<(u64, Arc<ThreadWatch>)>,
    next_clock: u64,
    left_cpu: Duration,
}

impl Host {
    pub(super) fn new(min: usize, max: usize) -> Arc<Host> {
        Arc::new(Host {
            min: min.max(1),
            max: max.max(min).max(1),
            gil_waiting: AtomicUsize::new(0),
            inner: Mutex::new(Inner {
                threads: 0,
                guests: 0,
                closing: false,
                ready: None,
                clocks: Vec::new(),
                watches: Vec::new(),
                next_clock: 0,
                left_cpu: Duration::ZERO,
            }),
            changed: Condvar::new(),
            load: Mutex::new(LoadSample {
                at: Instant::now(),
                cpu: Duration::ZERO,
                busy: 0.0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first thread of the host counts itself (the owner of a sub-interpreter, before
    /// it creates it).
    pub(super) fn first_thread(&self) {
        self.lock().threads += 1;
    }

    /// The interpreter exists and the application is loaded: other threads may join.
    pub(super) fn set_ready(&self, admission: Admission) {
        self.lock().ready = Some(admission);
        self.changed.notify_all();
    }

    /// Admits one more thread if the host is ready, open and under its bound; the caller
    /// must start it, and the thread must call [`Host::thread_left`] when it ends.
    pub(super) fn admit(&self) -> Option<Admission> {
        let mut inner = self.lock();
        if inner.closing || inner.threads >= self.max {
            return None;
        }
        let admission = inner.ready.clone()?;
        inner.threads += 1;
        Some(admission)
    }

    /// Admits a thread that is not one of the host's, not once closing: an I/O thread for
    /// as long as it serves (`--inline`), or the watchdog for the moment it reads a stuck
    /// thread's stack. It must call [`Host::guest_left`] when it leaves. Counted apart from
    /// the host's own threads (its bound, its minimum and the grower leave guests out):
    /// counted with them, an I/O thread let the pool's only thread leave as idle and then
    /// kept the grower from adding one (review found it).
    pub(super) fn admit_guest(&self) -> Option<Admission> {
        let mut inner = self.lock();
        if inner.closing {
            return None;
        }
        let admission = inner.ready.clone()?;
        inner.guests += 1;
        Some(admission)
    }

    /// A guest admitted with [`Host::admit_guest`] left.
    pub(super) fn guest_left(&self) {
        let mut inner = self.lock();
        inner.guests -= 1;
        drop(inner);
        self.changed.notify_all();
    }

    /// The watches of the live threads.
    pub(super) fn watches(&self) -> Vec<Arc<ThreadWatch>> {
        self.lock().watches.iter().map(|(_, w)| w.clone()).collect()
    }

    /// An idle thread asks to leave: granted while the host keeps its minimum.
    pub(super) fn may_leave(&self) -> bool {
        let mut inner = self.lock();
        if inner.threads > self.min && !inner.closing {
            inner.threads -= 1;
            self.changed.notify_all();
            true
        } else {
            false
        }
    }

    /// A thread admitted with [`Host::admit`] (or counted by `first_thread`) ended, without
    /// having been granted [`Host::may_leave`].
    pub(super) fn thread_left(&self) {
        let mut inner = self.lock();
        inner.threads -= 1;
        drop(inner);
        self.changed.notify_all();
    }

    /// Closes the host: no thread joins from now on. Waits until `remaining` threads are
    /// left (1: the owner calling this; 0: the pool, after the threads ended) and every
    /// guest left, then hands
    /// back the interpreter's state so it can be released under its GIL.
    pub(super) fn close(&self, remaining: usize) -> Option<Arc<Interp>> {
        let mut inner = self.lock();
        inner.closing = true;
        while inner.threads > remaining || inner.guests > 0 {
            inner = self.changed.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
        inner.ready.take().map(|admission| admission.interp)
    }

    /// The interpreter's state while the host is open.
    pub(super) fn interp(&self) -> Option<Arc<Interp>> {
        self.lock()
            .ready
            .as_ref()
            .map(|admission| admission.interp.clone())
    }

    pub(super) fn threads(&self) -> usize {
        self.lock().threads
    }

    /// Whether another thread could help: open, ready, under its bound, and its GIL not
    /// the bottleneck. A pure-Python thread runs only while it holds the GIL, so the CPU
    /// time of an interpreter's threads is GIL time: the GIL has room while they used less
    /// than [`GIL_SATURATED`] of a core lately, and the threads are waiting (on a database,
    /// on a client) rather than computing while each used less than [`THREAD_COMPUTES`] of
    /// one. A CPU-bound interpreter fails the second at its first thread (its one thread
    /// uses a core, or what its core has left); one that waits passes both until it is
    /// near saturation or at its bound. And no thread of it may be waiting to re-take the
    /// GIL after taking work right now. `Some(busy)`, the share of a core measured, when it
    /// can use another thread.
    pub(super) fn can_use_another_thread(&self) -> Option<f64> {
        if self.gil_waiting.load(Ordering::Acquire) > 0 {
            return None;
        }
        let threads = {
            let inner = self.lock();
            if inner.closing || inner.ready.is_none() || inner.threads >= self.max {
                return None;
            }
            inner.threads.max(1)
        };
        let busy = self.gil_busy();
        let per_thread = busy / threads as f64;
        (busy < GIL_SATURATED && per_thread < THREAD_COMPUTES).then_some(busy)
    }

    /// For the debug log: threads, GIL waiters, the latest load estimate.
    pub(super) fn describe_load(&self) -> String {
        let busy = self.load.lock().unwrap_or_else(|e| e.into_inner()).busy;
        format!(
            "{} threads, {} waiting for the GIL, {:.0}% busy",
            self.threads(),
            self.gil_waiting.load(Ordering::Acquire),
            busy * 100.0
        )
    }

    /// Starts a new load window now (demand began after a quiet time): until it is over,
    /// the interpreter counts as busy.
    pub(super) fn restart_load_window(&self) {
        let cpu = self.cpu_time();
        let mut load = self.load.lock().unwrap_or_else(|e| e.into_inner());
        load.at = Instant::now();
        load.cpu = cpu;
        load.busy = 1.0;
    }

    /// The share of one core the interpreter's threads used over the last
    /// [`LOAD_WINDOW`] or more (the previous estimate while the window runs). A sample
    /// older than [`LOAD_STALE`] spans idle time (the server just started, or was quiet):
    /// it starts a new window and counts as busy until that window is over.
    fn gil_busy(&self) -> f64 {
        let mut load = self.load.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(load.at);
        if elapsed >= LOAD_STALE {
            load.at = now;
            load.cpu = self.cpu_time();
            load.busy = 1.0;
        } else if elapsed >= LOAD_WINDOW {
            let cpu = self.cpu_time();
            load.busy = cpu.saturating_sub(load.cpu).as_secs_f64() / elapsed.as_secs_f64();
            load.at = now;
            load.cpu = cpu;
        }
        load.busy
    }

    /// CPU time of every thread this host ever had.
    fn cpu_time(&self) -> Duration {
        let inner = self.lock();
        inner.left_cpu
            + inner
                .clocks
                .iter()
                .map(|&(_, clock)| clock_time(clock))
                .sum::<Duration>()
    }

    /// The calling thread registers its CPU-time clock and its watch (once it is one of
    /// the host's).
    pub(super) fn register_thread_clock(&self, watch: Arc<ThreadWatch>) -> ThreadClock {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: pthread_self is the calling thread, alive for the call; `clock` is a valid
        // out pointer.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
        let mut inner = self.lock();
        let id = inner.next_clock;
        inner.next_clock += 1;
        if rc == 0 {
            inner.clocks.push((id, clock));
        }
        inner.watches.push((id, watch));
        ThreadClock { id, clock }
    }

    /// The calling thread is leaving: its clock goes (under the lock, so the grower never
    /// reads the clock of a thread that is gone) and its CPU time is kept.
    pub(super) fn unregister_thread_clock(&self, clock: ThreadClock) {
        let mut inner = self.lock();
        inner.clocks.retain(|&(id, _)| id != clock.id);
        inner.watches.retain(|(id, _)| *id != clock.id);
        inner.left_cpu += clock_time(clock.clock);
    }

    /// A thread of this interpreter took work and is about to re-take the GIL.
    #[inline]
    pub(super) fn gil_wait_begins(&self) {
        self.gil_waiting.fetch_add(1, Ordering::AcqRel);
    }

    /// It holds the GIL again.
    #[inline]
    pub(super) fn gil_wait_ends(&self) {
        self.gil_waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Above this share of one core used by an interpreter's threads, its GIL has no room for
/// another thread.
const GIL_SATURATED: f64 = 0.85;

/// A thread that used more than this share of a core while requests waited was computing,
/// not waiting: another thread would only take turns with it on the GIL. A CPU-bound
/// interpreter's one thread uses 0.6-1.0 of a core (0.6-0.8 measured on 2 cores shared with
/// I/O threads and the load generator); the threads of an application that waits 5 ms per
/// request used under 0.01 each at 30k req/s.
const THREAD_COMPUTES: f64 = 0.25;

/// The time on a CPU-time clock (zero when it cannot be read).
fn clock_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out pointer; a clock id of a thread that left makes the call
    // fail (EINVAL), which reads as zero, never as memory unsafety.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
