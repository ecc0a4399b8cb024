//! The supervisor: the process that binds the listeners once, never imports the application
//! (unless `--preload`), and keeps `--workers` worker processes serving on them.
//!
//! A worker is `python -m spindle <the same command line> --internal-worker SPEC`: a fresh
//! process of the same Python, which inherits the listening sockets and one end of a socket
//! pair (the other end is ours: the worker says there when it is ready, or when it wants to
//! be replaced), and imports the current code. The supervisor:
//!
//! - starts the first worker alone, then the others: a broken import fails once, with one
//!   traceback and one `error:` line, and the supervisor exits 1;
//! - replaces a worker that died (a signal, an abort, the OOM killer, an exit) at once, and
//!   says how it died; a worker that keeps dying right after it started is restarted after
//!   a pause that doubles up to [`BACKOFF_MAX`], and the supervisor stays up;
//! - replaces a worker that asks for it (`--max-requests`, every thread stuck past
//!   `--timeout`) or grows past `--max-worker-memory`: the new one starts, and only once it
//!   is ready is the old one told to retire (SIGUSR2: finish what it has, leave the
//!   accept queue to the others) and, after `--graceful-timeout`, killed: nothing is dropped;
//! - reloads on SIGHUP: a new generation of workers imports the current code; once all are
//!   ready, the old generation drains. If the new code does not import, the old workers
//!   keep serving and the log says why;
//! - on SIGTERM tells every worker to finish (each serves what it has and what waits in the
//!   accept queue), on SIGINT and SIGQUIT to stop at once; SIGTTIN and SIGTTOU add and
//!   remove a worker; SIGUSR1 is passed on.
//!
//! All workers accept on the same sockets (`run/listen.rs`: one per I/O thread and address,
//! shared by every worker): a new connection goes to a worker that calls `accept`, and a
//! worker whose Python threads are all inside the application holds back (see
//! `server::thread`), so a busy worker is not given new connections while another is idle.
//! Per-worker `SO_REUSEPORT` sockets would hash connections to a worker whatever its load
//! (PostHog/posthog#104208).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use crossbeam_channel::{Receiver, Sender};

use super::control::WorkerMessage;
use super::deploy::{self, Notifier};
use super::listen::{self, Listeners};
use super::signals::{OwnedSignals, Signal, SignalSet};
use crate::config::{Config, WorkerSpec};
use crate::metrics::{Hub, MetricsServer, RestartReason, SharedBlock};
use crate::py::object::Gil;
use crate::{log_error, log_info, log_warn};

/// How often the supervisor looks at its timers (respawn pauses, kill deadlines, memory).
const TICK: Duration = Duration::from_millis(100);
/// How often it reads its workers' memory for `--max-worker-memory`.
const MEMORY_EVERY: Duration = Duration::from_secs(1);
/// A worker that dies sooner than this after it started counts as crashing in a loop.
const QUICK_DEATH: Duration = Duration::from_secs(5);
/// The pause before restarting a worker that keeps dying, doubling from this...
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// ...up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long workers told to stop at once (SIGQUIT) get before they are killed.
const QUICK_STOP: Duration = Duration::from_secs(5);

/// The supervisor's exit after a worker failed to start: the worker printed the reason
/// (its traceback and `error:` line) already.
#[derive(Debug)]
pub struct WorkerFailed;

impl std::fmt::Display for WorkerFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a worker failed to start")
    }
}

impl std::error::Error for WorkerFailed {}

/// Runs the supervisor until it is told to stop and its workers are gone.
pub fn supervise(gil: Gil<'_>, config: Config, args: Vec<OsString>) -> anyhow::Result<()> {
    let signals = OwnedSignals::install().context("cannot install signal handlers")?;
    let config = Arc::new(config);
    // A driver the kernel refuses fails here, once, not in every worker.
    crate::server::choose_driver(config.driver, false)?;
    let listeners = listen::bind_all(&config)?;
    let metrics = match config.metrics_bind {
        Some(addr) => {
            let hub = Arc::new(Hub::supervisor());
            let server = MetricsServer::start(addr, hub.clone())?;
            log_info!("metrics on http://{}/metrics", server.addr());
            Some((server, hub))
        }
        None => None,
    };
    let deployment = deploy::settle(&config, &listeners)?;
    let python = sys_executable(gil)?;
    // Workers start where Spindle was started (`--preload` may `--chdir` this process, and
    // each worker applies `--chdir` itself).
    let cwd = std::env::current_dir().context("the current directory")?;
    let sys_path = crate::py::sys_path(gil)?.join("\n");
    if config.preload {
        crate::py::preload(gil, &config)?;
    }
    // Everything after the program name: the worker's `python -m spindle` gets the same.
    let args: Vec<OsString> = args.into_iter().skip(1).collect();
    let set = signals.set();
    let hub = metrics.as_ref().map(|(_, hub)| hub.clone());
    let result = gil.allow_threads(move || {
        let mut supervisor = Supervisor::new(
            config,
            Launch {
                python,
                cwd,
                sys_path,
                args,
            },
            listeners,
            set,
            deployment.notifier,
            hub,
        );
        supervisor.run()
    });
    drop(metrics);
    drop(signals);
    result
}

/// `sys.executable`: the Python whose `-m spindle` the workers run.
fn sys_executable(gil: Gil<'_>) -> anyhow::Result<PathBuf> {
    let path = gil
        .import(c"sys")
        .and_then(|sys| sys.getattr(c"executable"))
        .map_err(|e| anyhow!("sys.executable: {}", e.summary()))?;
    let text = path
        .as_str_utf8()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow!("sys.executable is empty: Spindle cannot start worker processes (run with --single-process)"))?;
    Ok(PathBuf::from(String::from_utf8_lossy(text).into_owned()))
}

/// How a worker is started: `python -m spindle ARGS` in `cwd`, with this sys.path.
struct Launch {
    /// `sys.executable`.
    python: PathBuf,
    cwd: PathBuf,
    /// The supervisor's sys.path, one entry per line: the program that called
    /// `spindle.run()` may have added to it, and its workers must find the same modules.
    sys_path: String,
    /// The command line after the program name.
    args: Vec<OsString>,
}

/// The variable that carries [`Launch::sys_path`] to a worker (it removes it at once).
pub const SYS_PATH_VAR: &str = "SPINDLE_WORKER_SYS_PATH";

/// What the supervisor hears about.
enum Event {
    Signal(Signal),
    /// `--reload`: a Python file under the application's directories changed.
    FileChanged(PathBuf),
    Message(u32, WorkerMessage),
    /// A worker ended; it stays a zombie (its pid ours) until the [`Reaper`] is dropped,
    /// after the worker is out of the table: a signal sent meanwhile cannot reach a process
    /// that took over the pid.
    Exited(u32, std::io::Result<ExitStatus>, Reaper),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Spawned; not ready yet.
    Starting,
    /// Serving.
    Ready,
    /// Told to stop (SIGTERM, SIGUSR2 or SIGQUIT); killed at `kill_at` if still alive.
    Stopping,
}

struct Worker {
    slot: u32,
    generation: u64,
    pid: u32,
    state: State,
    started: Instant,
    /// The worker this one replaces, stopped once this one is ready.
    replaces: Option<u32>,
    /// A replacement for this one is starting.
    being_replaced: bool,
    kill_at: Option<Instant>,
}

/// A reload in progress: the generation that is starting.
struct Reload {
    generation: u64,
}

struct Supervisor {
    config: Arc<Config>,
    launch: Launch,
    listeners: Listeners,
    signals: SignalSet,
    notifier: Notifier,
    events: Sender<Event>,
    inbox: Receiver<Event>,
    workers: Vec<Worker>,
    /// Workers wanted in the current generation.
    target: usize,
    generation: u64,
    reload: Option<Reload>,
    /// A reload was asked for while one was under way.
    reload_again: bool,
    /// Slots to start again (slot, generation), not before the instant given (a crashing
    /// worker's pause).
    respawn: Vec<(u32, u64, Instant)>,
    /// Consecutive quick deaths per slot.
    crashes: HashMap<u32, u32>,
    stopping: bool,
    memory_checked: Instant,
    /// `--metrics-bind`: every worker's counters, and ours.
    metrics: Option<Arc<Hub>>,
}

impl Supervisor {
    fn new(
        config: Arc<Config>,
        launch: Launch,
        listeners: Listeners,
        signals: SignalSet,
        notifier: Notifier,
        metrics: Option<Arc<Hub>>,
    ) -> Supervisor {
        let (events, inbox) = crossbeam_channel::unbounded();
        let target = config.workers;
        Supervisor {
            config,
            launch,
            listeners,
            signals,
            notifier,
            events,
            inbox,
            workers: Vec::new(),
            target,
            generation: 0,
            reload: None,
            reload_again: false,
            respawn: Vec::new(),
            crashes: HashMap::new(),
            stopping: false,
            memory_checked: Instant::now(),
            metrics,
        }
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = if self.config.reload {
            let events = self.events.clone();
            let watched = self.watched_roots();
            log_info!(
                "--reload: watching the Python files under {}",
                watched
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let watcher = super::watch::start(watched, done.clone(), move |path| {
                let _ = events.send(Event::FileChanged(path));
            });
            Some(watcher.context("cannot start the --reload watcher")?)
        } else {
            None
        };
        let signal_thread = {
            let set = self.signals;
            let events = self.events.clone();
            let done = done.clone();
            std::thread::Builder::new()
                .name("spindle-signals".into())
                .spawn(move || {
                    while !done.load(std::sync::atomic::Ordering::Acquire) {
                        if let Some(signal) = set.wait_timeout(TICK) {
                            let _ = events.send(Event::Signal(signal));
                        }
                    }
                })
        };
        let signal_thread = match signal_thread {
            Ok(thread) => thread,
            Err(err) => {
                done.store(true, std::sync::atomic::Ordering::Release); // the watcher ends
                return Err(anyhow::Error::new(err).context("cannot start the signal thread"));
            }
        };
        let result = self.serve();
        done.store(true, std::sync::atomic::Ordering::Release);
        let _ = signal_thread.join();
        if let Some(watcher) = watcher {
            let _ = watcher.join();
        }
        result
    }

    /// What `--reload` watches: where the application is imported from (the working
    /// directory workers start in, or `--chdir`) and each `--pythonpath`.
    fn watched_roots(&self) -> Vec<PathBuf> {
        let base = match &self.config.chdir {
            Some(dir) => self.launch.cwd.join(dir),
            None => self.launch.cwd.clone(),
        };
        let mut roots = vec![base.clone()];
        for dir in &self.config.pythonpath {
            let dir = base.join(dir);
            if !roots.iter().any(|root| dir.starts_with(root)) {
                roots.push(dir);
            }
        }
        roots
    }

    fn serve(&mut self) -> anyhow::Result<()> {
        self.start_first_workers()?;
        for addr in &self.listeners.bound {
            log_info!(
                "listening on {} ({} worker{}, supervisor pid {})",
                listen::shown(addr, self.config.protocol),
                self.target,
                if self.target == 1 { "" } else { "s" },
                std::process::id()
            );
        }
        self.notifier.ready();
        loop {
            if self.stopping && self.workers.is_empty() {
                log_info!("stopped");
                return Ok(());
            }
            match self.inbox.recv_timeout(TICK) {
                Ok(event) => self.handle(event),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(anyhow!("the supervisor lost its own event channel"))
                }
            }
            self.timers();
        }
    }

    /// The first worker alone (a broken import fails once), then the others together.
    fn start_first_workers(&mut self) -> anyhow::Result<()> {
        self.spawn(1, None)?;
        self.wait_initial()?;
        for slot in 2..=self.target as u32 {
            self.spawn(slot, None)?;
        }
        self.wait_initial()
    }

    /// Waits until every starting worker is ready; a worker that exits first (or a signal
    /// to stop) ends the start: the others are stopped and the supervisor exits 1.
    fn wait_initial(&mut self) -> anyhow::Result<()> {
        while self.workers.iter().any(|w| w.state == State::Starting) {
            match self.inbox.recv() {
                Ok(Event::Message(pid, WorkerMessage::Ready)) => {
                    if let Some(worker) = self.worker_mut(pid) {
                        worker.state = State::Ready;
                    }
                }
                Ok(Event::Message(..)) => {}
                Ok(Event::Exited(pid, status, _reaper)) => {
                    self.workers.retain(|w| w.pid != pid);
                    self.count(|hub| hub.exited(pid));
                    self.stop_all(Signal::Quit);
                    self.reap_all(QUICK_STOP);
                    if matches!(&status, Ok(s) if s.code() == Some(1)) {
                        // The worker said why (a traceback, one `error:` line): that is the
                        // supervisor's exit too, with nothing said after it.
                        return Err(WorkerFailed.into());
                    }
                    return Err(anyhow!(
                        "a worker (pid {pid}) {} while it started",
                        describe_exit(&status)
                    ));
                }
                Ok(Event::Signal(signal @ (Signal::Term | Signal::Int | Signal::Quit))) => {
                    log_info!("{} received while starting: stopping", signal.name());
                    self.stop_all(Signal::Quit);
                    self.reap_all(QUICK_STOP);
                    return Err(WorkerFailed.into());
                }
                Ok(Event::Signal(_) | Event::FileChanged(_)) => {}
                Err(_) => return Err(anyhow!("the supervisor lost its own event channel")),
            }
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Signal(signal) => self.on_signal(signal),
            Event::Message(pid, WorkerMessage::Ready) => self.on_ready(pid),
            Event::Message(pid, WorkerMessage::Recycle(reason)) => {
                self.replace(pid, reason.as_str())
            }
            Event::Exited(pid, status, reaper) => {
                self.count(|hub| hub.exited(pid));
                self.on_exit(pid, status);
                drop(reaper);
            }
            Event::FileChanged(path) if !self.stopping => {
                self.start_reload(&format!("--reload: {} changed", path.display()))
            }
            Event::FileChanged(_) => {}
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        match signal {
            Signal::Term if !self.stopping => {
                log_info!(
                    "SIGTERM received: workers finish in-flight requests and the connections waiting to be accepted, then stop"
                );
                self.stopping = true;
                self.respawn.clear();
                self.notifier.stopping();
                self.stop_all(Signal::Term);
            }
            Signal::Int | Signal::Quit => {
                log_info!("{} received: stopping now", signal.name());
                self.stopping = true;
                self.respawn.clear();
                self.notifier.stopping();
                self.stop_all(Signal::Quit);
            }
            Signal::Term => {}
            Signal::Hup if !self.stopping => self.start_reload("SIGHUP received"),
            Signal::Hup => {}
            Signal::Ttin if !self.stopping => {
                self.target += 1;
                log_info!("SIGTTIN received: one worker more ({})", self.target);
                let slot = self.free_slot();
                if let Err(err) = self.spawn(slot, None) {
                    log_error!("cannot start a worker: {err:#}");
                }
            }
            Signal::Ttou if !self.stopping => {
                if self.target <= 1 {
                    log_warn!("SIGTTOU received: one worker is the fewest; ignored");
                    return;
                }
                self.target -= 1;
                log_info!("SIGTTOU received: one worker less ({})", self.target);
                let newest = self
                    .workers
                    .iter()
                    .filter(|w| {
                        w.generation == self.generation
                            && w.state == State::Ready
                            && !w.being_replaced
                    })
                    .max_by_key(|w| w.slot)
                    .map(|w| w.pid);
                if let Some(pid) = newest {
                    self.stop_worker(pid, Signal::Usr2);
                }
            }
            Signal::Ttin | Signal::Ttou => {}
            Signal::Usr2 => log_warn!(
                "SIGUSR2 received: it retires one worker (send it to the worker); ignored"
            ),
            Signal::Usr1 => {
                if let Err(err) = crate::log::reopen() {
                    log_error!("SIGUSR1: cannot reopen --error-logfile: {err}");
                }
                log_info!(
                    "SIGUSR1 received: passing it on to the workers (they reopen their log files)"
                );
                for worker in &self.workers {
                    send_signal(worker.pid, Signal::Usr1);
                }
            }
        }
    }

    fn on_ready(&mut self, pid: u32) {
        let Some(worker) = self.worker_mut(pid) else {
            return;
        };
        if worker.state != State::Starting {
            return;
        }
        worker.state = State::Ready;
        // Once it serves, it replaces no one: if it dies later, it is restarted like any.
        let replaces = worker.replaces.take();
        let (slot, generation) = (worker.slot, worker.generation);
        if let Some(old) = replaces {
            log_info!("worker {slot} (pid {pid}) ready: the one it replaces (pid {old}) finishes and stops");
            self.stop_worker(old, Signal::Usr2);
        }
        if let Some(reload) = &self.reload {
            if generation == reload.generation {
                let all_ready = self
                    .workers
                    .iter()
                    .filter(|w| w.generation == reload.generation)
                    .all(|w| w.state == State::Ready);
                if all_ready {
                    let new = reload.generation;
                    self.reload = None;
                    self.generation = new;
                    let old: Vec<u32> = self
                        .workers
                        .iter()
                        .filter(|w| w.generation < new && w.state != State::Stopping)
                        .map(|w| w.pid)
                        .collect();
                    log_info!(
                        "reload: {} new worker(s) ready with the current code; the {} old one(s) finish and stop",
                        self.target,
                        old.len()
                    );
                    for pid in old {
                        self.count(|hub| hub.restarted(RestartReason::Reload));
                        self.stop_worker(pid, Signal::Usr2);
                    }
                    self.notifier.ready();
                    if std::mem::take(&mut self.reload_again) {
                        self.start_reload("a change during the last reload");
                    }
                }
            }
        }
    }

    /// Starts a replacement for worker `pid`; once ready, `pid` is told to stop.
    fn replace(&mut self, pid: u32, reason: &str) {
        if self.stopping {
            return;
        }
        let Some(worker) = self.worker_mut(pid) else {
            return;
        };
        if worker.state != State::Ready || worker.being_replaced {
            return;
        }
        worker.being_replaced = true;
        let slot = worker.slot;
        log_info!("worker {slot} (pid {pid}) to be replaced ({reason}): starting its replacement");
        match self.spawn(slot, Some(pid)) {
            Ok(()) => {
                if let Some(reason) = RestartReason::from_label(reason) {
                    self.count(|hub| hub.restarted(reason));
                }
            }
            Err(err) => {
                log_error!("cannot start a worker to replace pid {pid}: {err:#}");
                if let Some(worker) = self.worker_mut(pid) {
                    worker.being_replaced = false;
                }
            }
        }
    }

    /// Starts a new generation of workers; `cause` says why, in the log.
    fn start_reload(&mut self, cause: &str) {
        if self.reload.is_some() {
            // The generation starting may have imported the code before this change: one
            // more reload follows it.
            log_info!("{cause} while a reload is under way: another follows it");
            self.reload_again = true;
            return;
        }
        let generation = self.generation + 1;
        log_info!(
            "{cause}: reloading ({} new worker(s) import the current code; the old ones keep serving until they are ready)",
            self.target
        );
        self.reload = Some(Reload { generation });
        self.notifier.reloading();
        for slot in 1..=self.target as u32 {
            if let Err(err) = self.spawn_generation(slot, generation, None) {
                log_error!("reload: cannot start a worker: {err:#}");
                self.abandon_reload("a new worker could not be started");
                return;
            }
        }
    }

    /// Stops the workers of a failed reload; the old generation keeps serving.
    fn abandon_reload(&mut self, why: &str) {
        let Some(reload) = self.reload.take() else {
            return;
        };
        log_error!("reload failed ({why}): the old workers keep serving the old code");
        self.notifier.ready();
        if std::mem::take(&mut self.reload_again) {
            self.start_reload("a change during the failed reload");
        }
        let new: Vec<u32> = self
            .workers
            .iter()
            .filter(|w| w.generation == reload.generation)
            .map(|w| w.pid)
            .collect();
        for pid in new {
            self.stop_worker(pid, Signal::Quit);
        }
    }

    fn on_exit(&mut self, pid: u32, status: std::io::Result<ExitStatus>) {
        let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
            return;
        };
        let worker = self.workers.remove(index);
        if worker.state == State::Stopping {
            crate::log_debug!(
                "worker {} (pid {pid}) stopped: {}",
                worker.slot,
                describe_exit(&status)
            );
            return;
        }
        // Not asked to stop: killed by a signal, or exited on its own.
        self.count(|hub| hub.restarted(RestartReason::Crash));
        let lived = worker.started.elapsed();
        if let Some(reload) = &self.reload {
            if worker.generation == reload.generation {
                log_error!(
                    "reload: new worker {} (pid {pid}) {} before it was ready",
                    worker.slot,
                    describe_exit(&status)
                );
                self.abandon_reload("the new code does not start");
                return;
            }
        }
        if let Some(old) = worker.replaces {
            // A replacement died before it was ready (only then is `replaces` still set):
            // the worker it was to replace serves on, and may be replaced again.
            if let Some(old) = self.worker_mut(old) {
                old.being_replaced = false;
            }
        }
        log_error!(
            "worker {} (pid {pid}) {} after {:.1} s: starting a new one",
            worker.slot,
            describe_exit(&status),
            lived.as_secs_f64()
        );
        if self.stopping {
            return;
        }
        let crashes = self.crashes.entry(worker.slot).or_insert(0);
        if lived < QUICK_DEATH {
            *crashes += 1;
        } else {
            *crashes = 0;
        }
        let pause = if *crashes <= 1 {
            Duration::ZERO
        } else {
            (BACKOFF_MIN * 2u32.saturating_pow(*crashes - 2)).min(BACKOFF_MAX)
        };
        if !pause.is_zero() {
            log_warn!(
                "worker {} keeps dying right after it starts ({} times): the next one in {:.1} s",
                worker.slot,
                crashes,
                pause.as_secs_f64()
            );
        }
        // A replacement that died starting is not started again: the worker it was to
        // replace serves on. A worker that died while its replacement starts needs none.
        if worker.replaces.is_none() && !self.replacement_starting(pid) {
            self.respawn
                .push((worker.slot, worker.generation, Instant::now() + pause));
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        let due: Vec<(u32, u64)> = self
            .respawn
            .iter()
            .filter(|(_, _, at)| *at <= now)
            .map(|&(slot, generation, _)| (slot, generation))
            .collect();
        self.respawn.retain(|(_, _, at)| *at > now);
        for (slot, generation) in due {
            // A worker of a generation a reload has replaced since: the new one has its own.
            // One of a slot TTOU removed since: none.
            if generation < self.generation || slot as usize > self.target {
                continue;
            }
            if let Err(err) = self.spawn(slot, None) {
                log_error!("cannot start worker {slot}: {err:#}");
                self.respawn.push((slot, generation, now + BACKOFF_MAX));
            }
        }
        for worker in &mut self.workers {
            if worker.kill_at.is_some_and(|at| at <= now) {
                log_warn!(
                    "worker {} (pid {}) still running {:.0} s after it was told to stop: killing it",
                    worker.slot,
                    worker.pid,
                    self.config.graceful_timeout.as_secs_f64()
                );
                send_raw_signal(worker.pid, libc::SIGKILL);
                worker.kill_at = None;
            }
        }
        if let Some(limit) = self.config.max_worker_memory {
            if now.duration_since(self.memory_checked) >= MEMORY_EVERY {
                self.memory_checked = now;
                let over: Vec<(u32, u64)> = self
                    .workers
                    .iter()
                    .filter(|w| w.state == State::Ready && !w.being_replaced)
                    .filter_map(|w| {
                        resident_bytes(w.pid)
                            .filter(|&rss| rss > limit)
                            .map(|rss| (w.pid, rss))
                    })
                    .collect();
                for (pid, rss) in over {
                    log_info!(
                        "worker (pid {pid}) uses {} MiB, over --max-worker-memory {}",
                        rss >> 20,
                        limit >> 20
                    );
                    self.replace(pid, "memory");
                }
            }
        }
    }

    fn spawn(&mut self, slot: u32, replaces: Option<u32>) -> anyhow::Result<()> {
        self.spawn_generation(slot, self.generation, replaces)
    }

    /// Starts worker `slot` of `generation` (see the module documentation).
    fn spawn_generation(
        &mut self,
        slot: u32,
        generation: u64,
        replaces: Option<u32>,
    ) -> anyhow::Result<()> {
        let (ours, theirs) = UnixStream::pair().context("socketpair")?;
        let block = match &self.metrics {
            Some(_) => Some(SharedBlock::create().context("cannot make a metrics block")?),
            None => None,
        };
        use std::os::fd::AsRawFd;
        let spec = WorkerSpec {
            slot,
            generation,
            control_fd: theirs.as_raw_fd(),
            listener_fds: self.listeners.fds(),
            metrics_fd: block.as_ref().and_then(SharedBlock::fd),
        };
        let mut inherit: Vec<i32> = spec.listener_fds.iter().flatten().copied().collect();
        inherit.push(spec.control_fd);
        inherit.extend(spec.metrics_fd);
        let launch = &self.launch;
        let mut command = Command::new(&launch.python);
        command
            .arg("-m")
            .arg("spindle")
            .args(&launch.args)
            .arg("--internal-worker")
            .arg(spec.encode())
            .current_dir(&launch.cwd)
            .env(SYS_PATH_VAR, &launch.sys_path)
            .stdin(Stdio::null());
        let supervisor = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the child between fork and exec, and only makes
        // async-signal-safe calls (fcntl, prctl, getppid) and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                for &fd in &inherit {
                    // These descriptors survive the exec: the worker's listeners and its end
                    // of the socket pair (everything else keeps close-on-exec).
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // The worker goes when the supervisor goes, even if it is killed; and if
                // the supervisor died before that was set, the worker does not start.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::getppid() != supervisor {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot run {} -m spindle", launch.python.display()))?;
        drop(theirs);
        let pid = child.id();
        if let (Some(hub), Some(block)) = (&self.metrics, block) {
            hub.spawned(slot, pid, block);
        }
        let events = self.events.clone();
        // Two threads per worker: its messages, and its end. The end is not the socket's:
        // a process the application forked holds the socket open after the worker died.
        let messages = events.clone();
        std::thread::Builder::new()
            .name(format!("spindle-read-{pid}"))
            .spawn(move || {
                for line in BufReader::new(ours).lines() {
                    let Ok(line) = line else { break };
                    if let Some(message) = WorkerMessage::decode(&line) {
                        let _ = messages.send(Event::Message(pid, message));
                    }
                }
            })
            .context("cannot start a worker reader thread")?;
        std::thread::Builder::new()
            .name(format!("spindle-wait-{pid}"))
            .spawn(move || {
                let status = wait_without_reaping(pid);
                let _ = events.send(Event::Exited(pid, status, Reaper(child)));
            })
            .context("cannot start a worker watcher thread")?;
        crate::log_debug!("worker {slot} (pid {pid}, generation {generation}) starting");
        self.workers.push(Worker {
            slot,
            generation,
            pid,
            state: State::Starting,
            started: Instant::now(),
            replaces,
            being_replaced: false,
            kill_at: None,
        });
        Ok(())
    }

    /// Counts in the metrics hub, if there is one (`--metrics-bind`).
    fn count(&self, update: impl FnOnce(&Hub)) {
        if let Some(hub) = &self.metrics {
            update(hub);
        }
    }

    /// Whether a worker is starting to take `pid`'s place.
    fn replacement_starting(&self, pid: u32) -> bool {
        self.workers.iter().any(|w| w.replaces == Some(pid))
    }

    fn worker_mut(&mut self, pid: u32) -> Option<&mut Worker> {
        self.workers.iter_mut().find(|w| w.pid == pid)
    }

    fn free_slot(&self) -> u32 {
        (1..)
            .find(|slot| {
                !self
                    .workers
                    .iter()
                    .any(|w| w.slot == *slot && w.state != State::Stopping)
                    && !self.respawn.iter().any(|(s, _, _)| s == slot)
            })
            .unwrap_or(1)
    }

    /// Tells one worker to stop: SIGTERM (finish, serving the accept queue too, then
    /// stop), SIGUSR2 (retire: finish, leaving the queue to the others), both killed after
    /// `--graceful-timeout`; or SIGQUIT (now; killed after [`QUICK_STOP`]).
    fn stop_worker(&mut self, pid: u32, signal: Signal) {
        let grace = if signal == Signal::Quit {
            QUICK_STOP
        } else {
            self.config.graceful_timeout
        };
        if let Some(worker) = self.worker_mut(pid) {
            worker.state = State::Stopping;
            worker.kill_at = Some(Instant::now() + grace + Duration::from_secs(1));
            send_signal(pid, signal);
        }
    }

    fn stop_all(&mut self, signal: Signal) {
        let pids: Vec<u32> = self.workers.iter().map(|w| w.pid).collect();
        for pid in pids {
            self.stop_worker(pid, signal);
        }
    }

    /// Waits up to `limit` for every worker to exit, then kills what is left.
    fn reap_all(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.workers.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                for worker in &self.workers {
                    send_raw_signal(worker.pid, libc::SIGKILL);
                }
                break;
            }
            if let Ok(Event::Exited(pid, _, _reaper)) = self.inbox.recv_timeout(left) {
                self.workers.retain(|w| w.pid != pid);
            }
        }
    }
}

fn send_signal(pid: u32, signal: Signal) {
    send_raw_signal(pid, signal.number());
}

fn send_raw_signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours. The pid is a
    // worker still in the table, which is not reaped before it leaves the table (see
    // `Event::Exited`), so it cannot name another process.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// Reaps a worker when dropped.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.wait();
    }
}

/// Waits for worker `pid` to end, leaving it a zombie (`WNOWAIT`): how it ended.
fn wait_without_reaping(pid: u32) -> std::io::Result<ExitStatus> {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, exclusively borrowed siginfo_t for the call; the pid
        // is our child, not reaped (only the Reaper reaps it).
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // SAFETY: waitid succeeded with WEXITED, so `info` holds a SIGCHLD siginfo, whose
        // si_status is the exit code or the signal's number.
        let status = unsafe { info.si_status() };
        // The wait status `ExitStatus` is made from: the code in the second byte, or the
        // signal in the low seven bits (with 0x80 for a core dump).
        let raw = match info.si_code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            libc::CLD_DUMPED => (status & 0x7f) | 0x80,
            _ => status & 0x7f,
        };
        return Ok(ExitStatus::from_raw(raw));
    }
}

/// How a worker ended, in words: "exited with status 1", "was killed by SIGKILL (the OOM
/// killer sends it too)", "was killed by SIGSEGV (segmentation fault, core dumped)".
fn describe_exit(status: &std::io::Result<ExitStatus>) -> String {
    let status = match status {
        Ok(status) => status,
        Err(err) => return format!("ended (its status could not be read: {err})"),
    };
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    let Some(signal) = status.signal() else {
        return "ended".into();
    };
    let name = match signal {
        libc::SIGKILL => "SIGKILL (the kernel's OOM killer sends it too)",
        libc::SIGSEGV => "SIGSEGV (segmentation fault)",
        libc::SIGABRT => "SIGABRT (abort: a failed assertion or a fatal Python error)",
        libc::SIGBUS => "SIGBUS (bus error)",
        libc::SIGFPE => "SIGFPE (arithmetic error)",
        libc::SIGILL => "SIGILL (illegal instruction)",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGHUP => "SIGHUP",
        _ => "",
    };
    let name = if name.is_empty() {
        format!("signal {signal}")
    } else {
        name.to_string()
    };
    let core = if status.core_dumped() {
        ", core dumped"
    } else {
        ""
    };
    format!("was killed by {name}{core}")
}

/// The resident memory of a process, from /proc.
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
