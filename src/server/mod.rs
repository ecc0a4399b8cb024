//! The I/O threads: one monoio runtime per thread, pinned to a core, each with its own
//! SO_REUSEPORT listener per `--bind` address. I/O threads never touch Python: they hand
//! requests to `py` through `handoff`. This module knows neither Python nor the process's
//! life (signals, start-up order): `run` starts and stops it.

mod admission;
mod body;
mod conn;
mod ctx;
mod event;
mod fastcgi;
mod gateway;
mod gather;
mod lend;
mod socket;
mod spread;
mod stream;
mod sys;
mod thread;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _};

use crate::config::{Config, DriverChoice};
use crate::handoff::{InlineApp, IoMailbox, RequestSender};
use crate::log_debug;

pub use stream::{ListenAddr, Listener};

/// The I/O driver actually running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// Picks the driver: io_uring unless epoll is asked for, or io_uring is not available here
/// (an old kernel, `kernel.io_uring_disabled`, or a container's seccomp profile refuses
/// it): then `auto` takes epoll, saying so unless `quiet` (a worker, whose supervisor said
/// it), and `io-uring` is an error.
/// io_uring is the default since its rings take completions at the thread's next system
/// call (`COOP_TASKRUN`, [`RingFlags`]): it then led epoll in most scenarios of the lab
/// and was level in the rest (ARCHITECTURE.md §8). A thread whose own ring the kernel
/// refuses after this probe passed runs epoll under `auto` (`io_thread`).
pub fn choose_driver(choice: DriverChoice, quiet: bool) -> anyhow::Result<Driver> {
    match choice {
        DriverChoice::Epoll => Ok(Driver::Epoll),
        DriverChoice::IoUring => {
            if monoio::utils::detect_uring() {
                Ok(Driver::IoUring)
            } else {
                bail!("--driver io-uring: io_uring is not available here (kernel or seccomp refuses it); use --driver epoll")
            }
        }
        DriverChoice::Auto => {
            if monoio::utils::detect_uring() {
                return Ok(Driver::IoUring);
            }
            if !quiet {
                crate::log_info!(
                    "io_uring is not available here (kernel or seccomp refuses it): using epoll"
                );
            }
            Ok(Driver::Epoll)
        }
    }
}

/// What every I/O thread shares with the rest of the process.
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub stopping: AtomicBool,
    /// Whether a stopping accept loop first takes the connections already queued.
    pub drain_queue: AtomicBool,
    /// Requests handed to Python, one counter per I/O thread (each writes only its own).
    pub served: Vec<AtomicU64>,
    /// Client connections open in this process, all I/O threads together, and the most it
    /// holds (`--worker-connections`): past it, new ones are refused (`admission.rs`).
    pub open_conns: AtomicUsize,
    pub connection_limit: usize,
    /// Second descriptors held for direct answers (`lend.rs`), capped.
    pub lent_sockets: AtomicUsize,
    /// Connections per I/O thread, and the hand-overs that even them out (`spread.rs`).
    spread: spread::Spread,
    /// `--inline`: what each I/O thread joins to call the application itself.
    inline: Option<Arc<dyn InlineApp>>,
}

/// The running I/O threads.
pub struct IoThreads {
    shared: Arc<Shared>,
    mailboxes: Vec<Arc<IoMailbox>>,
    handles: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl IoThreads {
    /// Starts one I/O thread per entry of `listeners` (each pinned to a core, in order),
    /// handing requests to `requests` and taking replies through `mailboxes` (one each).
    /// Each thread first calls `thread_init` (the process's owner blocks its signals there).
    /// `inline`: each thread joins it to run requests whose body is complete itself.
    pub fn start(
        config: Arc<Config>,
        driver: Driver,
        listeners: Vec<Vec<Listener>>,
        mailboxes: Vec<Arc<IoMailbox>>,
        requests: RequestSender,
        inline: Option<Arc<dyn InlineApp>>,
        thread_init: fn(),
    ) -> anyhow::Result<IoThreads> {
        let connection_limit = admission::connection_limit(&config);
        let shared = Arc::new(Shared {
            config,
            stopping: AtomicBool::new(false),
            drain_queue: AtomicBool::new(true),
            served: (0..listeners.len()).map(|_| AtomicU64::new(0)).collect(),
            open_conns: AtomicUsize::new(0),
            connection_limit,
            lent_sockets: AtomicUsize::new(0),
            spread: spread::Spread::new(&listeners.iter().map(Vec::len).collect::<Vec<_>>()),
            inline,
        });
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let threads = listeners.len();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut handles = Vec::new();
        for (idx, thread_listeners) in listeners.into_iter().enumerate() {
            let thread_shared = shared.clone();
            let mailbox = mailboxes[idx].clone();
            let requests = requests.clone();
            let ready = ready_tx.clone();
            let core = (!cores.is_empty()).then(|| cores[idx % cores.len()]);
            let handle = std::thread::Builder::new()
                .name(format!("spindle-io-{idx}"))
                .spawn(move || {
                    thread_init();
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    io_thread(
                        idx,
                        driver,
                        thread_shared,
                        mailbox,
                        requests,
                        thread_listeners,
                        ready,
                    )
                });
            match handle {
                Ok(handle) => handles.push(handle),
                Err(err) => {
                    // The threads that never started take nothing and accept nothing.
                    for never in idx..threads {
                        shared.spread.thread_ended(never);
                    }
                    IoThreads {
                        shared,
                        mailboxes,
                        handles,
                    }
                    .abandon();
                    return Err(err).context("cannot start an I/O thread");
                }
            }
        }
        drop(ready_tx);
        let io = IoThreads {
            shared,
            mailboxes,
            handles,
        };
        // Every thread says whether its runtime started, so one that cannot (a ring the
        // kernel refuses under `--driver io-uring`) fails the start with its reason, not
        // a server that says it is ready and serves nothing.
        let mut failed = None;
        for _ in 0..threads {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    failed.get_or_insert(reason);
                }
                Err(_) => {
                    failed.get_or_insert_with(|| "an I/O thread ended as it started".to_string());
                    break;
                }
            }
        }
        if let Some(reason) = failed {
            io.abandon();
            bail!("{reason}");
        }
        Ok(io)
    }

    /// A start that failed: the threads that did start stop (their request senders go,
    /// so the Python threads end) and are joined quietly, the failure being the one error
    /// the start reports.
    fn abandon(self) {
        self.stop(false);
        for handle in self.handles {
            let _ = handle.join();
        }
    }

    /// Requests handed to Python so far, by every I/O thread.
    pub fn requests_served(&self) -> u64 {
        self.shared
            .served
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// Stops accepting, after taking what waits in the accept queue when `drain_queue`
    /// (false: a retiring worker leaves it to the others); connections finish the exchange
    /// they are in (idle ones close), and each thread drops its request sender when its
    /// last connection is gone.
    pub fn stop(&self, drain_queue: bool) {
        self.shared.drain_queue.store(drain_queue, Ordering::SeqCst);
        self.shared.stopping.store(true, Ordering::SeqCst);
        for mailbox in &self.mailboxes {
            mailbox.request_stop();
        }
    }

    /// Waits for every I/O thread to end. `Err`: one of them failed.
    pub fn join(self) -> anyhow::Result<()> {
        let mut failed = false;
        for handle in self.handles {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    crate::log_error!("I/O thread failed: {e:#}");
                    failed = true;
                }
                Err(_) => failed = true,
            }
        }
        if failed {
            bail!("an I/O thread failed");
        }
        Ok(())
    }
}

/// Puts the calling I/O thread under `SCHED_BATCH`: the same share of CPU as before, but
/// a wake-up (a reply, a readable socket) no longer preempts the thread that is running.
///
/// I/O and Python threads share cores. Under the default policy, the I/O thread woken by a
/// Python thread's first reply preempted it at once, so a batch of requests went back and
/// forth one reply at a time. Now the Python thread finishes its batch and the I/O thread
/// writes all of it: on one core, hello at 64 connections went from 74k to 98k req/s
/// and from 13.3 to 10.1 us of CPU per request (see the commit that added this).
/// Unprivileged; on failure the thread keeps the default policy.
fn yield_to_python_on_wakeup() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc != 0 {
        log_debug!(
            "SCHED_BATCH refused for an I/O thread ({}): keeping the default policy",
            std::io::Error::last_os_error()
        );
    }
}

/// How an I/O thread's ring is set up. `COOP_TASKRUN` is the default: without it, a
/// completion that arrives while the I/O thread runs (a client's bytes delivered by the
/// load's core, an accept) interrupts it, an inter-processor interrupt per batch, which
/// under a hypervisor is a VM exit; with it, completions wait for the thread's next system
/// call, and monoio 0.2.4 enters the kernel before every look at its completion queue
/// (`submit` or `submit_and_wait`, then `tick`), so none is left behind. Measured
/// (ARCHITECTURE.md §8, perf/runs/2026-12-05-vm-driver/ab-flags.md), against a plain ring:
/// hello at 64 connections 1.16x the requests at 0.86x the CPU per request, a connection
/// per request 1.11x at 0.76x. `SPINDLE_URING_FLAGS` chooses another for measuring:
/// `plain` (or `0`), `defer` (or `1`: `SINGLE_ISSUER|DEFER_TASKRUN`), `coop-single`
/// (`COOP_TASKRUN|SINGLE_ISSUER`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RingFlags {
    Plain,
    Coop,
    CoopSingle,
    Defer,
}

impl RingFlags {
    fn from_env() -> RingFlags {
        match std::env::var("SPINDLE_URING_FLAGS").as_deref() {
            Ok("plain" | "0") => RingFlags::Plain,
            Ok("coop-single") => RingFlags::CoopSingle,
            Ok("defer" | "1") => RingFlags::Defer,
            _ => RingFlags::Coop,
        }
    }

    fn apply(self, ring: &mut io_uring::Builder) {
        match self {
            RingFlags::Plain => {}
            RingFlags::Coop => {
                ring.setup_coop_taskrun();
            }
            RingFlags::CoopSingle => {
                ring.setup_coop_taskrun().setup_single_issuer();
            }
            RingFlags::Defer => {
                ring.setup_single_issuer().setup_defer_taskrun();
            }
        }
    }
}

/// An io_uring runtime for I/O thread `idx`, its ring set up as [`RingFlags`] says. A
/// kernel that refuses the flags (`COOP_TASKRUN` is 5.19's) gets a plain ring.
/// `SINGLE_ISSUER|DEFER_TASKRUN` was measured and left out (ARCHITECTURE.md §8): with
/// `DEFER_TASKRUN` monoio 0.2.4 reaps no completion when it wakes for another thread's
/// waker (it submits without waiting), so a steady stream of replies can hold socket
/// completions back.
fn uring_runtime(
    idx: usize,
) -> anyhow::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    let build = |flags: RingFlags| {
        let mut ring = io_uring::IoUring::builder();
        flags.apply(&mut ring);
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(1024)
            .uring_builder(ring)
            .enable_timer()
            .build()
    };
    let wanted = RingFlags::from_env();
    if wanted != RingFlags::Plain {
        match build(wanted) {
            Ok(rt) => return Ok(rt),
            Err(err) if idx == 0 => {
                log_debug!("io_uring refused the ring flags {wanted:?} ({err}): using a plain ring")
            }
            Err(_) => {}
        }
    }
    build(RingFlags::Plain).context("cannot create the io_uring runtime")
}

fn io_thread(
    idx: usize,
    driver: Driver,
    shared: Arc<Shared>,
    mailbox: Arc<IoMailbox>,
    requests: RequestSender,
    listeners: Vec<Listener>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> anyhow::Result<()> {
    yield_to_python_on_wakeup();
    // However this thread ends (its runtime cannot start, it panics, or it stops), the
    // other threads must stop handing it connections and stop waiting for its accept
    // loops (`spread.rs`).
    struct Ended<'a>(&'a Shared, usize);
    impl Drop for Ended<'_> {
        fn drop(&mut self) {
            self.0.spread.thread_ended(self.1);
        }
    }
    let _ended = Ended(&shared, idx);
    if driver == Driver::IoUring {
        match uring_runtime(idx) {
            Ok(mut rt) => {
                let _ = ready.send(Ok(()));
                let main =
                    thread::io_main(idx, driver, shared.clone(), mailbox, requests, listeners);
                return rt.block_on(main);
            }
            // `--driver auto`: a kernel that allowed the probe's small ring may still refuse
            // this one (before 5.12 ring memory counts against RLIMIT_MEMLOCK, per user,
            // so later threads and workers can fail where the first did not).
            Err(err) if shared.config.driver == DriverChoice::Auto => {
                crate::log_warn!(
                    "I/O thread {idx}: cannot set up io_uring ({err:#}): it runs on epoll"
                )
            }
            Err(err) => {
                let _ = ready.send(Err(format!("I/O thread {idx}: {err:#}")));
                return Err(err);
            }
        }
    }
    let built = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .context("cannot create the epoll runtime");
    let mut rt = match built {
        Ok(rt) => rt,
        Err(err) => {
            let _ = ready.send(Err(format!("I/O thread {idx}: {err:#}")));
            return Err(err);
        }
    };
    let _ = ready.send(Ok(()));
    let main = thread::io_main(
        idx,
        Driver::Epoll,
        shared.clone(),
        mailbox,
        requests,
        listeners,
    );
    rt.block_on(main)
}
