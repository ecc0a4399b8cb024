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
mod stream;
mod sys;
mod thread;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _};

use crate::config::{Config, DriverChoice};
use crate::handoff::{IoMailbox, RequestSender};
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

/// Picks the driver: epoll unless io_uring is asked for (and then only if the kernel, or a
/// container's seccomp profile, allows it).
pub fn choose_driver(choice: DriverChoice) -> anyhow::Result<Driver> {
    match choice {
        DriverChoice::Epoll => Ok(Driver::Epoll),
        DriverChoice::IoUring => {
            if monoio::utils::detect_uring() {
                Ok(Driver::IoUring)
            } else {
                bail!("--driver io-uring: io_uring is not available here (kernel or seccomp refuses it); use --driver epoll")
            }
        }
        DriverChoice::Auto => Ok(Driver::Epoll),
    }
}

/// What every I/O thread shares with the rest of the process.
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub driver: Driver,
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
    pub fn start(
        config: Arc<Config>,
        driver: Driver,
        listeners: Vec<Vec<Listener>>,
        mailboxes: Vec<Arc<IoMailbox>>,
        requests: RequestSender,
        thread_init: fn(),
    ) -> anyhow::Result<IoThreads> {
        let connection_limit = admission::connection_limit(&config);
        let shared = Arc::new(Shared {
            config,
            driver,
            stopping: AtomicBool::new(false),
            drain_queue: AtomicBool::new(true),
            served: (0..listeners.len()).map(|_| AtomicU64::new(0)).collect(),
            open_conns: AtomicUsize::new(0),
            connection_limit,
            lent_sockets: AtomicUsize::new(0),
        });
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut handles = Vec::new();
        for (idx, thread_listeners) in listeners.into_iter().enumerate() {
            let shared = shared.clone();
            let mailbox = mailboxes[idx].clone();
            let requests = requests.clone();
            let core = (!cores.is_empty()).then(|| cores[idx % cores.len()]);
            let handle = std::thread::Builder::new()
                .name(format!("spindle-io-{idx}"))
                .spawn(move || {
                    thread_init();
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    io_thread(idx, driver, shared, mailbox, requests, thread_listeners)
                })
                .context("cannot start an I/O thread")?;
            handles.push(handle);
        }
        Ok(IoThreads {
            shared,
            mailboxes,
            handles,
        })
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

/// An io_uring runtime for I/O thread `idx`: a plain ring, or with
/// `SPINDLE_URING_FLAGS=1` one set up `SINGLE_ISSUER|DEFER_TASKRUN` (only this thread
/// submits; completions reaped when it asks). Measured (ARCHITECTURE.md §8) the flags won
/// hello at 64 connections and lost at 256, and with `DEFER_TASKRUN` monoio 0.2.4 reaps no
/// completion when it wakes for another thread's waker (it submits without waiting), so a
/// steady stream of replies can hold socket completions back: they stay a lever for
/// measurements, not the default. A kernel that refuses them (before 6.1) gets a plain ring.
fn uring_runtime(
    idx: usize,
) -> anyhow::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    let build = |flags: bool| {
        let mut ring = io_uring::IoUring::builder();
        if flags {
            ring.setup_single_issuer().setup_defer_taskrun();
        }
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(1024)
            .uring_builder(ring)
            .enable_timer()
            .build()
    };
    let wanted = std::env::var_os("SPINDLE_URING_FLAGS").is_some_and(|v| v == "1");
    if wanted {
        match build(true) {
            Ok(rt) => return Ok(rt),
            Err(err) if idx == 0 => log_debug!(
                "io_uring refused SINGLE_ISSUER|DEFER_TASKRUN ({err}): using a plain ring"
            ),
            Err(_) => {}
        }
    }
    build(false).context("cannot create the io_uring runtime")
}

fn io_thread(
    idx: usize,
    driver: Driver,
    shared: Arc<Shared>,
    mailbox: Arc<IoMailbox>,
    requests: RequestSender,
    listeners: Vec<Listener>,
) -> anyhow::Result<()> {
    yield_to_python_on_wakeup();
    match driver {
        Driver::IoUring => {
            let mut rt = uring_runtime(idx)?;
            rt.block_on(thread::io_main(idx, shared, mailbox, requests, listeners))
        }
        Driver::Epoll => {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .context("cannot create the epoll runtime")?;
            rt.block_on(thread::io_main(idx, shared, mailbox, requests, listeners))
        }
    }
}
