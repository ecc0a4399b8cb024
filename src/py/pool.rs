//! The pool of Python threads: its interpreters (own-GIL sub-interpreters, PEP 684, 3.12+,
//! or the main interpreter, with `--interpreters auto` probing the first and falling back
//! to the second when the application refuses to load in a sub-interpreter), the threads
//! each hosts ([`Host`]), and the grower that adds threads while requests wait.
//!
//! Interpreters buy parallel Python (one core each); threads buy waiting. With `--threads N`
//! the pool is fixed: N threads spread over the interpreters. Without it, each interpreter
//! starts with one thread and the grower adds one while requests wait in the queue, no
//! thread is idle, and the interpreter's GIL is free (no thread of it waits to re-take it):
//! an application that waits on a database gets the threads its waiting needs; a CPU-bound
//! one stops at about two per interpreter, where its GIL is busy. Idle threads beyond the
//! first leave after `--thread-idle-timeout` (30 s).
//!
//! The pool runs inside an already initialised CPython: [`Pool::start`] is called on the
//! main thread of the main interpreter, with its GIL held, and returns with it held; the
//! caller then releases the GIL for as long as the pool serves ([`Gil::allow_threads`]),
//! joins it with the GIL released ([`Pool::join`]) and releases what is left of it under
//! the GIL ([`Pool::release`]). Every sub-interpreter is ended by its owner thread before
//! `join` returns: one still alive when Python finalises aborts the process
//! (python/cpython#113127).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use crossbeam_channel::{Receiver, Sender};

use super::access::AccessLog;
use super::host::{Host, InterpState};
use super::interp::{prepare_sys_path, AppSource, Interp, ServerInfo};
use super::object::{Gil, Obj};
use super::thread::{StartError, SubInterp, ThreadCtx, STACK_SIZE};
use super::watchdog::Watchdog;
use crate::config::{Config, InterpreterChoice, Threads};
use crate::handoff::{request_queue, Capacity, Request, RequestSender};
use crate::{log_debug, log_info, log_warn};

/// The running Python threads.
pub struct Pool {
    hosts: Vec<Arc<Host>>,
    shared: Arc<Shared>,
    grower: Option<std::thread::JoinHandle<()>>,
    watchdog: Option<Watchdog>,
    /// Set by the watchdog while every Python thread the pool may have is stuck past
    /// `--timeout`.
    all_stuck: Arc<AtomicBool>,
    mode: String,
    /// The application runs on the main interpreter.
    on_main: bool,
}

/// What the pool, its grower and its threads share.
struct Shared {
    requests: Receiver<Request>,
    capacity: Arc<Capacity>,
    access_log: Option<Arc<AccessLog>>,
    idle_leave: Duration,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    stopping: AtomicBool,
}

impl Shared {
    fn ctx(&self, host: &Arc<Host>) -> ThreadCtx {
        ThreadCtx {
            requests: self.requests.clone(),
            capacity: self.capacity.clone(),
            host: host.clone(),
            access_log: self.access_log.clone(),
            idle_leave: self.idle_leave,
        }
    }

    fn keep(&self, handle: std::thread::JoinHandle<()>) {
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle);
    }
}

impl Pool {
    /// Loads the application and starts the Python threads, on sub-interpreters or the
    /// main one as `--interpreters` and the application allow, and returns the sender of
    /// the request queue they take requests from (bounded by `--queue-size`). The threads
    /// end once every clone of the sender is dropped and the queue is empty. `app`: an
    /// application object given by `spindle.serve()` instead of `config.app` (it lives in
    /// the main interpreter, so it runs there). `driver`: the I/O driver's name, for the
    /// demo page.
    pub fn start<'py>(
        gil: Gil<'py>,
        config: &Arc<Config>,
        driver: &'static str,
        app: Option<&Obj<'py>>,
        access_log: Option<Arc<AccessLog>>,
    ) -> anyhow::Result<(Pool, RequestSender)> {
        if let Some(dir) = &config.chdir {
            std::env::set_current_dir(dir).with_context(|| format!("--chdir {}", dir.display()))?;
        }
        let app_name = match (app, config.app.as_deref()) {
            (Some(obj), _) => obj.type_name(),
            (None, Some(spec)) => spec.to_string(),
            (None, None) => "<demo>".to_string(),
        };
        let try_sub = match config.interpreters {
            InterpreterChoice::Main => false,
            InterpreterChoice::Sub if app.is_some() => bail!(
                "an application object can only run on the main interpreter (it belongs to it): pass an import string such as 'myproject.wsgi:application' to run it in sub-interpreters"
            ),
            InterpreterChoice::Sub if !cfg!(Py_3_12) => bail!(
                "--interpreters sub needs Python 3.12 or newer (own-GIL sub-interpreters, PEP 684), and this is Python {}: use --interpreters main, or a newer Python",
                super::python_version()
            ),
            InterpreterChoice::Sub => true,
            InterpreterChoice::Auto => cfg!(Py_3_12) && app.is_none(),
        };
        let sys_path = Arc::new(
            prepare_sys_path(gil, config)
                .map_err(|e| anyhow!("cannot set sys.path: {}", e.summary()))?,
        );
        if try_sub {
            super::interp::prime_main_interpreter(gil);
            #[cfg(all(Py_3_12, not(Py_3_13)))]
            // CPython 3.12 can abort when a single-phase extension that failed in an
            // own-GIL sub-interpreter is imported later in the main one; importing the app
            // in the main interpreter first avoids it (ARCHITECTURE.md §7).
            super::interp::preimport_in_main(gil, config);
        }

        let capacity = Arc::new(Capacity::default());
        if config.worker.is_some() {
            // Busy workers hold back from the shared listeners (ARCHITECTURE.md §10).
            capacity.count_free_threads();
        }
        let (sender, receiver) = request_queue(config.queue_size, capacity.clone());
        // The worker's budget of response bytes in flight (ARCHITECTURE.md §4): one per
        // process, charged by these threads' responses.
        crate::handoff::ResponseBudget::worker().set_limit(config.max_response_buffer);
        let shared = Arc::new(Shared {
            requests: receiver,
            capacity,
            access_log,
            idle_leave: config.thread_idle_timeout,
            threads: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        });
        let mut pool = Pool {
            hosts: Vec::new(),
            shared,
            grower: None,
            watchdog: None,
            all_stuck: Arc::new(AtomicBool::new(false)),
            mode: String::new(),
            on_main: false,
        };
        let mut sub_refusal = None;
        if try_sub {
            match pool.start_sub(gil, config, driver, sys_path) {
                Ok(()) => {}
                Err(err)
                    if config.interpreters == InterpreterChoice::Sub || !pool.hosts.is_empty() =>
                {
                    // A refusal under `sub`, or an interpreter failing after the first.
                    gil.allow_threads(|| pool.abandon(sender));
                    bail!(
                        "the application cannot run in a sub-interpreter: {} (run it with --interpreters main)",
                        err.message
                    );
                }
                Err(err) => sub_refusal = Some(err.message),
            }
        }
        if pool.hosts.is_empty() {
            let source = match app {
                Some(obj) => AppSource::Object(obj),
                None => AppSource::Import(config.app.as_deref()),
            };
            if let Err(err) = pool.start_main(gil, config, driver, source) {
                gil.allow_threads(|| pool.abandon(sender));
                pool.release(gil);
                return Err(err);
            }
            if let Some(why) = sub_refusal {
                // Said only now: when the app does not import in the main interpreter
                // either, its own error is the one that matters.
                log_warn!("{app_name} cannot run in a sub-interpreter ({why}): running it on the main interpreter instead");
            }
        }
        if matches!(config.threads, Threads::Grow { .. }) {
            pool.start_grower()?;
        }
        if let Some(limit) = config.timeout {
            pool.watchdog = Some(Watchdog::start(
                pool.hosts.clone(),
                limit,
                pool.all_stuck.clone(),
            )?);
        }
        log_info!(
            "Python {} ({}), app {app_name}",
            super::python_version(),
            pool.mode
        );
        Ok((pool, sender))
    }

    /// Sub-interpreters, each created by its owner thread. The first alone decides whether
    /// the app loads in one at all (`Err` with no host kept: fall back to main); the others
    /// then start in parallel, and each gets its minimum of threads.
    fn start_sub(
        &mut self,
        gil: Gil<'_>,
        config: &Arc<Config>,
        driver: &'static str,
        sys_path: Arc<Vec<String>>,
    ) -> Result<(), StartError> {
        let n = config.sub_interpreters;
        let (min, max) = config.threads.per_interpreter(n, 0);
        let interpreters = if n == 1 {
            "1 sub-interpreter with its own GIL".to_string()
        } else {
            format!("{n} sub-interpreters, each with its own GIL")
        };
        self.mode = match config.threads {
            Threads::Fixed(total) if total == n => interpreters,
            Threads::Fixed(total) if total % n == 0 => {
                format!("{interpreters} and {} threads", total / n)
            }
            Threads::Fixed(total) => format!("{interpreters}, {total} threads in all"),
            Threads::Grow { .. } => {
                format!("{interpreters} and 1 thread, growing on demand to {max}")
            }
        };
        let info = Arc::new(ServerInfo {
            driver,
            mode: self.mode.clone(),
            io_threads: config.io_threads,
            threads: threads_description(config.threads),
            multithread: max > 1,
            multiprocess: n > 1 || other_processes_serve(config),
        });
        let spec = || SubInterp {
            config: config.clone(),
            info: info.clone(),
            sys_path: sys_path.clone(),
            report_import_errors: config.interpreters == InterpreterChoice::Sub,
        };
        // The owners create their interpreters from the main one, which needs its GIL:
        // released meanwhile.
        let first = Host::new(min, max);
        if let Err(err) = gil.allow_threads(|| self.spawn_owners(vec![(first.clone(), spec())])) {
            // The refusing owner ends its interpreter by itself: wait for it.
            gil.allow_threads(|| self.join_threads());
            return Err(err);
        }
        self.hosts.push(first);
        let rest: Vec<(Arc<Host>, SubInterp)> = (1..n)
            .map(|i| {
                let (min, max) = config.threads.per_interpreter(n, i);
                (Host::new(min, max), spec())
            })
            .collect();
        self.hosts.extend(rest.iter().map(|(host, _)| host.clone()));
        gil.allow_threads(|| {
            self.spawn_owners(rest)?;
            self.spawn_minimum()
        })
    }

    /// The main interpreter: its state made here, on the main thread, then its threads.
    fn start_main(
        &mut self,
        gil: Gil<'_>,
        config: &Arc<Config>,
        driver: &'static str,
        source: AppSource<'_, '_>,
    ) -> anyhow::Result<()> {
        let (min, max) = config.threads.per_interpreter(1, 0);
        self.mode = match config.threads {
            Threads::Fixed(1) => "main interpreter".to_string(),
            Threads::Fixed(n) => format!("main interpreter, {n} threads sharing its GIL"),
            Threads::Grow { max } => {
                format!("main interpreter, 1 thread growing on demand to {max}, sharing its GIL")
            }
        };
        let info = ServerInfo {
            driver,
            mode: self.mode.clone(),
            io_threads: config.io_threads,
            threads: threads_description(config.threads),
            multithread: max > 1,
            multiprocess: other_processes_serve(config),
        };
        let interp = Arc::new(Interp::new(gil, config, &info, source, true)?);
        let host = Host::new(min, max);
        host.set_ready(super::host::Admission {
            interp,
            // SAFETY: the main thread's state is attached (the caller's GIL).
            state: unsafe { InterpState::current() },
        });
        self.hosts.push(host);
        self.on_main = true;
        gil.allow_threads(|| self.spawn_minimum())
            .map_err(|e| anyhow!("a Python thread failed to start: {}", e.message))
    }

    /// Starts the owner of each host's sub-interpreter and waits until each is ready (or
    /// one failed).
    fn spawn_owners(&self, owners: Vec<(Arc<Host>, SubInterp)>) -> Result<(), StartError> {
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded::<Result<(), StartError>>();
        let count = owners.len();
        for (host, spec) in owners {
            host.first_thread();
            let ctx = self.shared.ctx(&host);
            let ready = ready_tx.clone();
            let spawned = std::thread::Builder::new()
                .name("spindle-py".into())
                .stack_size(STACK_SIZE)
                .spawn(move || super::thread::owner_thread(spec, ctx, ready));
            match spawned {
                Ok(handle) => self.shared.keep(handle),
                Err(e) => {
                    host.thread_left();
                    return Err(StartError {
                        message: format!("cannot start a Python thread: {e}"),
                    });
                }
            }
        }
        drop(ready_tx);
        wait_ready(&ready_rx, count)
    }

    /// Brings every host to its minimum of threads.
    fn spawn_minimum(&self) -> Result<(), StartError> {
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded::<Result<(), StartError>>();
        let mut count = 0;
        for host in &self.hosts {
            while host.threads() < host.min {
                spawn_member(&self.shared, host, Some(ready_tx.clone()))?;
                count += 1;
            }
        }
        drop(ready_tx);
        wait_ready(&ready_rx, count)
    }

    fn start_grower(&mut self) -> anyhow::Result<()> {
        let shared = self.shared.clone();
        let hosts = self.hosts.clone();
        let handle = std::thread::Builder::new()
            .name("spindle-grow".into())
            .spawn(move || grow(&shared, &hosts))
            .context("cannot start the Python pool's grower")?;
        self.shared.capacity.set_grower(handle.thread().clone());
        self.grower = Some(handle);
        Ok(())
    }

    /// Start-up failed after some threads started: close the queue and wait for them.
    fn abandon(&mut self, sender: RequestSender) {
        drop(sender);
        self.join();
    }

    /// True while every Python thread the pool may have is stuck in a request longer than
    /// `--timeout` (the watchdog's finding): only a new process brings capacity back.
    pub fn all_stuck(&self) -> Arc<AtomicBool> {
        self.all_stuck.clone()
    }

    /// How the application runs, for the log and the demo page.
    pub fn mode_description(&self) -> &str {
        &self.mode
    }

    /// The main interpreter's state, when the application runs there (benches drive
    /// [`Interp::environ`] with it, attached to the main interpreter). Drop it before
    /// [`Pool::release`].
    pub fn main_interp(&self) -> Option<Arc<Interp>> {
        if !self.on_main {
            return None;
        }
        self.hosts.first().and_then(|host| host.interp())
    }

    /// What the I/O threads join to call the application themselves (`--inline`).
    pub fn inline_app(&self) -> super::InlineHosts {
        super::InlineHosts {
            hosts: self.hosts.clone(),
            access_log: self.shared.access_log.clone(),
        }
    }

    /// Waits for the Python threads to end: they do once the request queue is closed and
    /// empty, each owner ending its sub-interpreter (which runs that interpreter's atexit
    /// handlers) after its other threads left. Call with the GIL released.
    pub fn join(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.stop();
        }
        if let Some(grower) = self.grower.take() {
            grower.thread().unpark();
            let _ = grower.join();
        }
        self.join_threads();
    }

    fn join_threads(&self) {
        loop {
            let handles = std::mem::take(
                &mut *self
                    .shared
                    .threads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            );
            if handles.is_empty() {
                return;
            }
            for handle in handles {
                let _ = handle.join();
            }
        }
    }

    /// Releases the main interpreter's state, once every thread has been joined.
    pub fn release(self, gil: Gil<'_>) {
        for host in &self.hosts {
            if let Some(interp) = host.close(0) {
                match Arc::try_unwrap(interp) {
                    Ok(interp) => interp.release(gil),
                    Err(_) => log_warn!("interpreter state still shared at exit; leaking it"),
                }
            }
        }
    }
}

/// `--preload`: imports the application once in this process's main interpreter (the
/// supervisor's), so a broken import fails once, before any worker starts, with its
/// traceback. Workers are fresh processes (started, not forked: ARCHITECTURE.md §10), so
/// they import it again; nothing is shared with them.
pub fn preload(gil: Gil<'_>, config: &Config) -> anyhow::Result<()> {
    if let Some(dir) = &config.chdir {
        std::env::set_current_dir(dir).with_context(|| format!("--chdir {}", dir.display()))?;
    }
    prepare_sys_path(gil, config).map_err(|e| anyhow!("cannot set sys.path: {}", e.summary()))?;
    let info = ServerInfo {
        driver: "none",
        mode: "preload".to_string(),
        io_threads: config.io_threads,
        threads: threads_description(config.threads),
        multithread: true,
        multiprocess: other_processes_serve(config),
    };
    let interp = Interp::new(
        gil,
        config,
        &info,
        AppSource::Import(config.app.as_deref()),
        true,
    )?;
    interp.release(gil);
    Ok(())
}

/// `wsgi.multiprocess`: may another process run the application at the same time as this
/// one? Under a supervisor always, whatever `--workers` says: a reload (SIGHUP) and a
/// recycle start the new worker before the old one stops, and SIGTTIN adds one at any
/// time (ARCHITECTURE.md §10). Only an unsupervised process (`--single-process`,
/// `serve()` with an application object) is alone.
fn other_processes_serve(config: &Config) -> bool {
    config.worker.is_some()
}

/// The Python threads, for the demo page.
fn threads_description(threads: Threads) -> String {
    match threads {
        Threads::Fixed(n) => n.to_string(),
        Threads::Grow { max } => {
            format!("1 per interpreter to start with, up to {max} in all on demand")
        }
    }
}

/// Waits for `count` threads to report ready; the first failure wins.
fn wait_ready(ready: &Receiver<Result<(), StartError>>, count: usize) -> Result<(), StartError> {
    let mut first_error = None;
    for _ in 0..count {
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                first_error.get_or_insert(err);
            }
            Err(_) => {
                first_error.get_or_insert(StartError {
                    message: "a Python thread died while starting".into(),
                });
            }
        }
    }
    match first_error {
        None => Ok(()),
        // Threads that failed end by themselves; the others end when the queue closes.
        Some(err) => Err(err),
    }
}

/// Starts one member thread in `host`, if the host admits it.
fn spawn_member(
    shared: &Arc<Shared>,
    host: &Arc<Host>,
    ready: Option<Sender<Result<(), StartError>>>,
) -> Result<(), StartError> {
    let Some(admission) = host.admit() else {
        return Err(StartError {
            message: "the interpreter admits no more threads".into(),
        });
    };
    let ctx = shared.ctx(host);
    let spawned = std::thread::Builder::new()
        .name("spindle-py".into())
        .stack_size(STACK_SIZE)
        .spawn(move || super::thread::member_thread(admission, ctx, ready));
    match spawned {
        Ok(handle) => {
            shared.keep(handle);
            Ok(())
        }
        Err(e) => {
            host.thread_left();
            Err(StartError {
                message: format!("cannot start a Python thread: {e}"),
            })
        }
    }
}

/// The grower: parked until the I/O side reports a request queued with no thread idle.
/// Then, while requests wait in the queue, wait long ([`GROW_AFTER_WAIT`]), and no thread
/// is idle, it adds threads one at a time, each to the interpreter with the fewest
/// threads among those that can use one ([`Host::can_use_another_thread`]: open, under its
/// bound, its GIL not the bottleneck). When none can, it looks again after a pause that
/// doubles up to [`GROW_BACKOFF_MAX`], so a pool at its bound or a CPU-bound one costs a
/// few wake-ups a second, not a spinning thread; a fast application whose requests wait
/// little is looked at again every [`GROW_RECHECK`].
fn grow(shared: &Arc<Shared>, hosts: &[Arc<Host>]) {
    let mut pause = Duration::ZERO;
    loop {
        if pause.is_zero() {
            // The flag is what counts, not the park token: other blocking calls on this
            // thread (crossbeam's channel waits park too) may consume a token, never the flag.
            while !shared.capacity.is_asked() && !shared.stopping.load(Ordering::Acquire) {
                std::thread::park();
            }
        } else {
            // Sleep the whole pause: unparks meanwhile (requests keep coming) do not count.
            let until = Instant::now() + pause;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() || shared.stopping.load(Ordering::Acquire) {
                    break;
                }
                std::thread::park_timeout(left);
            }
        }
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        shared.capacity.take_ask();
        let demand = || shared.capacity.idle() == 0 && !shared.requests.is_empty();
        if pause.is_zero() {
            // Demand after a quiet time: measure each GIL's load over the demand itself.
            for host in hosts {
                host.restart_load_window();
            }
        }
        let mut grew = false;
        let mut blocked = false;
        let waiting = || {
            shared.capacity.recent_wait() >= GROW_AFTER_WAIT
                || shared.capacity.since_last_take() >= GROW_AFTER_WAIT
        };
        while demand() && waiting() {
            if shared.stopping.load(Ordering::Acquire) {
                return;
            }
            let candidate = hosts
                .iter()
                .filter_map(|host| Some((host, host.can_use_another_thread()?)))
                .min_by_key(|(host, _)| host.threads());
            let Some((host, busy)) = candidate else {
                log_debug!(
                    "Python pool: no interpreter can use another thread now ({})",
                    hosts
                        .iter()
                        .map(|h| h.describe_load())
                        .collect::<Vec<_>>()
                        .join("; ")
                );
                blocked = true;
                break;
            };
            let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
            if let Err(err) = spawn_member(shared, host, Some(ready_tx)) {
                log_debug!("Python pool: cannot grow: {}", err.message);
                blocked = true;
                break;
            }
            // One at a time: the new thread takes work (or idles) before the next.
            match ready_rx.recv_timeout(Duration::from_millis(500)) {
                Ok(Ok(())) => {
                    grew = true;
                    log_debug!(
                        "Python pool: one more thread ({} in its interpreter; its threads used {:.0}% of a core lately, requests waited {:?})",
                        host.threads(),
                        busy * 100.0,
                        shared.capacity.recent_wait()
                    );
                }
                Ok(Err(err)) => {
                    log_warn!("a Python thread failed to start: {}", err.message);
                    blocked = true;
                    break;
                }
                Err(_) => {}
            }
        }
        pause = if blocked {
            if grew {
                GROW_BACKOFF_MIN
            } else {
                (pause * 2).clamp(GROW_BACKOFF_MIN, GROW_BACKOFF_MAX)
            }
        } else if !shared.requests.is_empty() {
            // Requests queued, but they do not wait long, or a thread is about to take one
            // (idle for an instant between two): look again soon, rather than at every
            // request, and without waiting for a request that may never come (requests
            // already queued do not ask again).
            GROW_RECHECK
        } else {
            Duration::ZERO
        };
    }
}

/// Requests must have waited this long in the queue (the last one taken did, or none was
/// taken for this long) before a thread is added: a fast application's batches come and go
/// in microseconds with every thread busy, and more threads would only share its GIL; an
/// application that waits leaves requests queued for its whole wait.
const GROW_AFTER_WAIT: Duration = Duration::from_millis(2);
const GROW_BACKOFF_MIN: Duration = Duration::from_millis(1);
/// How soon the grower looks again while requests are queued but wait little.
const GROW_RECHECK: Duration = Duration::from_millis(5);
const GROW_BACKOFF_MAX: Duration = Duration::from_millis(50);
