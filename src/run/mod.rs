//! The process: Spindle from its command line to its exit code. This is the only module
//! that knows the order of start-up and shutdown; it sits above the parts it runs
//! (`server/` for the I/O threads, `py/` for the Python threads). A process is one of:
//!
//! - a **supervisor** (the default: `supervise.rs`): binds the listeners once, never imports
//!   the application (unless `--preload`), and runs `--workers` worker processes, replacing
//!   one that dies, hangs or is recycled, and reloading them on SIGHUP;
//! - a **worker**, which the supervisor spawns (`python -m spindle ... --internal-worker`):
//!   it serves on the listeners it inherited and tells the supervisor when it is ready;
//! - a **single process** (`--single-process`, or an application object given to
//!   `spindle.serve()`): binds and serves itself.
//!
//! A worker or a single process ([`serve`]):
//!
//! 1. installs its signal handlers (`signals.rs` says who owns the signals and why);
//! 2. binds its listeners, or takes the ones it inherited (a bad `--bind` fails before
//!    Python does any work);
//! 3. starts the Python threads, importing the application: an import error ends the run
//!    here with its traceback and one `error:` line;
//! 4. starts the I/O threads; a single process logs `listening on ...` (tests and scripts
//!    wait for it), a worker tells its supervisor it is ready;
//! 5. waits for a signal with the GIL released, looking every second at what it must
//!    report (`--max-requests`); then stops accepting, lets every exchange finish (bounded
//!    by `--graceful-timeout`), joins the I/O threads, then the Python threads (each ends
//!    its own sub-interpreter), and returns.
//!
//! It runs in an initialised CPython, on the main thread of the main interpreter with its
//! GIL held (the `spindle` command and `python -m spindle` reach it through
//! `spindle._native.run`), and returns with the GIL held.

mod control;
mod deploy;
mod listen;
mod signals;
mod supervise;
mod watch;

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::config::{Command, Config, WorkerSpec};
use crate::handoff::IoMailbox;
use crate::metrics::MetricsServer;
use crate::py::access::AccessLog;
use crate::py::object::{Gil, Obj};
use crate::py::Pool;
use crate::server::{choose_driver, IoThreads};
use crate::{log_error, log_info, log_warn};
use control::{RecycleReason, SupervisorLink, WorkerMessage};
use listen::Listeners;
use signals::{OwnedSignals, Signal, SignalSet};

/// Runs Spindle with the command line `args` (`args[0]` is the program name) and returns
/// the process's exit code: 0 after a clean stop, 1 for a setup failure (one `error:`
/// line), 2 for a bad command line. `app`: an application object given by
/// `spindle.serve()` in place of an import string.
pub fn run(gil: Gil<'_>, args: Vec<OsString>, app: Option<&Obj<'_>>) -> i32 {
    match Config::parse(args.clone()) {
        Command::Exit(code) => code,
        Command::Version => {
            println!("spindle {}", crate::VERSION);
            println!("Python {}", crate::py::python_version());
            0
        }
        Command::Serve(config) => {
            if let Err(code) = prepare_process(gil, &config) {
                return code;
            }
            let result = match config.worker.clone() {
                Some(spec) => match SupervisorLink::from_fd(spec.control_fd) {
                    Ok(link) => serve(gil, *config, app, Role::Worker { spec, link }),
                    Err(err) => Err(anyhow::anyhow!(
                        "--internal-worker is for Spindle's supervisor only (descriptor {}: {err})",
                        spec.control_fd
                    )),
                },
                None if app.is_some() && config.workers > 1 => Err(anyhow::anyhow!(
                    "an application object lives in this process: --workers needs an import string such as 'myproject.wsgi:application'"
                )),
                None if config.single_process || app.is_some() => {
                    serve(gil, *config, app, Role::Single)
                }
                None => supervise::supervise(gil, *config, Config::flatten(args)),
            };
            match result {
                Ok(()) => 0,
                // The worker printed why (its traceback and `error:` line).
                Err(err) if err.is::<supervise::WorkerFailed>() => 1,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    1
                }
            }
        }
    }
}

/// What every process does first, before a socket is bound or an application imported:
/// the logs (`--error-logfile`, its form and level), `--umask`, `--name`, `--env`, and one
/// warning line per setting Spindle does without. A log file that cannot be opened is a
/// bad setting: one `error:` line, exit code 2.
fn prepare_process(gil: Gil<'_>, config: &Config) -> Result<(), i32> {
    crate::log::set_level(config.log_level);
    crate::log::set_format(config.error_log_format);
    if let Err(err) = crate::log::redirect(config.error_log.as_deref(), config.capture_output) {
        let path = config
            .error_log
            .as_deref()
            .unwrap_or(std::path::Path::new("-"));
        eprintln!("error: --error-logfile {}: {err}", path.display());
        return Err(2);
    }
    if let Some(access) = &config.access_log {
        if access.target != "-" {
            if let Err(err) = crate::log::sink::open_append(std::path::Path::new(&access.target)) {
                eprintln!("error: --access-logfile {}: {err}", access.target);
                return Err(2);
            }
        }
    }
    deploy::process_settings(config);
    if let Err(err) = crate::py::set_environ(gil, &config.env) {
        eprintln!("error: --env: {err:#}");
        return Err(2);
    }
    if config.worker.is_none() {
        for warning in &config.warnings {
            log_warn!("{warning}");
        }
    }
    Ok(())
}

/// What kind of serving process this is.
enum Role {
    /// No supervisor: it binds, serves and answers every signal itself.
    Single,
    /// A supervisor's worker: inherited listeners, and a link to report on.
    Worker {
        spec: WorkerSpec,
        link: SupervisorLink,
    },
}

/// How a serving process stops.
enum Stop {
    /// Finish every exchange in progress and the connections waiting to be accepted.
    Graceful(Signal),
    /// Now, without waiting for anything.
    Now(Signal),
    /// A worker being replaced: finish every exchange in progress, and leave the accept
    /// queue to the workers that stay.
    Retire,
}

/// Serves until told to stop (see [`Role`]), then drains and returns.
fn serve(gil: Gil<'_>, config: Config, app: Option<&Obj<'_>>, role: Role) -> anyhow::Result<()> {
    let signals = OwnedSignals::install().context("cannot install signal handlers")?;
    let config = Arc::new(config);
    // A worker's supervisor already said why `auto` took epoll.
    let driver = choose_driver(config.driver, matches!(role, Role::Worker { .. }))?;
    let _metrics = start_metrics(&config, &role)?;
    let mut deployment = None;
    let listeners = match &role {
        Role::Single => {
            let listeners = listen::bind_all(&config)?;
            deployment = Some(deploy::settle(&config, &listeners)?);
            listeners
        }
        Role::Worker { spec, .. } => {
            if let Some(paths) = std::env::var_os(supervise::SYS_PATH_VAR) {
                // Not for the processes the application starts. Only this thread runs yet,
                // so nothing reads the environment meanwhile.
                std::env::remove_var(supervise::SYS_PATH_VAR);
                let paths: Vec<String> = paths
                    .to_string_lossy()
                    .lines()
                    .map(str::to_string)
                    .collect();
                crate::py::replace_sys_path(gil, &paths)?;
            }
            Listeners::inherited(&spec.listener_fds)?
        }
    };
    let access_log = match &config.access_log {
        Some(access) => Some(
            AccessLog::open(access)
                .with_context(|| format!("--access-logfile {}", access.target))?,
        ),
        None => None,
    };
    let (mut pool, requests) = Pool::start(gil, &config, driver.name(), app, access_log.clone())?;
    let mode = pool.mode_description().to_string();
    crate::metrics::publish_interpreters(pool.main_interp().is_none());
    let all_stuck = pool.all_stuck();
    let inline = config
        .inline
        .then(|| Arc::new(pool.inline_app()) as Arc<dyn crate::handoff::InlineApp>);
    let set = signals.set();

    let served = gil.allow_threads(move || -> anyhow::Result<Pool> {
        let mailboxes: Vec<Arc<IoMailbox>> =
            (0..config.io_threads).map(|_| IoMailbox::new()).collect();
        let io = IoThreads::start(
            config.clone(),
            driver,
            listeners.per_thread,
            mailboxes,
            requests,
            inline,
            signals::block_in_this_thread,
        );
        let io = match io {
            Ok(io) => io,
            Err(err) => {
                // The queue's sender went with the failed start: the Python threads end.
                pool.join();
                return Err(err);
            }
        };
        match &role {
            Role::Single => {
                for addr in &listeners.bound {
                    log_info!(
                        "listening on {} ({}, {} I/O threads, {})",
                        listen::shown(addr, config.protocol),
                        driver.name(),
                        config.io_threads,
                        mode
                    );
                }
                if let Some(deployment) = &deployment {
                    deployment.notifier.ready();
                }
            }
            Role::Worker { spec, link } => {
                log_info!(
                    "worker {} (pid {}) ready: {}, {} I/O threads, {}",
                    spec.slot,
                    std::process::id(),
                    driver.name(),
                    config.io_threads,
                    mode
                );
                if let Err(err) = link.send(&WorkerMessage::Ready) {
                    log_error!("cannot tell the supervisor this worker is ready: {err}");
                }
            }
        }
        let stop = wait_for_stop(set, &role, &config, &io, &all_stuck, access_log.as_deref());
        if let Some(deployment) = &deployment {
            deployment.notifier.stopping();
        }
        match stop {
            Stop::Now(signal) => {
                log_info!("{} received: stopping now", signal.name());
                if let Some(access_log) = &access_log {
                    access_log.flush();
                }
                drop(deployment); // the --pid file goes with us
                std::process::exit(0);
            }
            Stop::Graceful(signal) => log_info!(
                "{} received: finishing in-flight requests, then stopping",
                signal.name()
            ),
            Stop::Retire => log_info!(
                "SIGUSR2 received: retiring (finishing in-flight requests; the connections waiting to be accepted are left to the other workers)"
            ),
        };
        let watchdog = DrainWatchdog::start(set, config.graceful_timeout)?;
        io.stop(!matches!(stop, Stop::Retire));
        let io_result = io.join();
        // The I/O threads dropped the queue's senders: the Python threads finish what is
        // queued, end their interpreters and exit.
        pool.join();
        if let Some(access_log) = &access_log {
            access_log.close();
        }
        watchdog.cancel();
        io_result.map(|()| pool)
    })?;
    served.release(gil);
    drop(signals);
    log_info!("stopped");
    Ok(())
}

/// Counting for `--metrics-bind`: a worker counts in the block its supervisor made (and
/// serves nothing: the supervisor does); a single process makes its own and serves it.
fn start_metrics(config: &Config, role: &Role) -> anyhow::Result<Option<MetricsServer>> {
    use crate::metrics::{self, Hub, SharedBlock};
    match role {
        Role::Worker { spec, .. } => {
            if let Some(fd) = spec.metrics_fd {
                let block = SharedBlock::inherit(fd)
                    .with_context(|| format!("the metrics block (descriptor {fd})"))?;
                metrics::install(Arc::new(block));
            }
            Ok(None)
        }
        Role::Single => {
            let Some(addr) = config.metrics_bind else {
                return Ok(None);
            };
            let block = metrics::own_block().context("cannot make the metrics block")?;
            let server = MetricsServer::start(addr, Arc::new(Hub::single(block)))?;
            log_info!("metrics on http://{}/metrics", server.addr());
            Ok(Some(server))
        }
    }
}

/// How often a serving process looks at what it must report while it waits for signals.
const TICK: Duration = Duration::from_secs(1);

/// SIGUSR1: the log files anew (a log rotation moved them away).
fn reopen_logs(access_log: Option<&AccessLog>) {
    if let Err(err) = crate::log::reopen() {
        log_error!("SIGUSR1: cannot reopen --error-logfile: {err}");
    }
    if let Some(access_log) = access_log {
        if let Err(err) = access_log.reopen() {
            log_error!("SIGUSR1: cannot reopen --access-logfile: {err}");
        }
    }
    log_info!("SIGUSR1 received: log files reopened");
}

/// Waits for a signal that stops the server, looking every [`TICK`] at what it reports.
///
/// A single process: SIGTERM and SIGINT stop it gracefully (a second SIGINT stops it at
/// once, see [`DrainWatchdog`]), SIGQUIT at once. SIGHUP asks for a reload, which a single
/// process cannot do without dropping its listeners: it says so and keeps serving (dying,
/// the default action, lost 53 of 83 requests in flight when it was tried).
///
/// A worker follows its supervisor (gunicorn's signals): SIGTERM gracefully, SIGINT and
/// SIGQUIT at once; the others are the supervisor's to act on.
fn wait_for_stop(
    set: SignalSet,
    role: &Role,
    config: &Config,
    io: &IoThreads,
    all_stuck: &AtomicBool,
    access_log: Option<&AccessLog>,
) -> Stop {
    let max_requests = config
        .max_requests
        .map(|n| n + jitter(config.max_requests_jitter));
    let mut recycle_asked = false;
    loop {
        let Some(signal) = set.wait_timeout(TICK) else {
            let Role::Worker { link, .. } = role else {
                continue;
            };
            if recycle_asked {
                continue;
            }
            let reason = if all_stuck.load(Ordering::Acquire) {
                RecycleReason::Timeout
            } else if max_requests.is_some_and(|limit| io.requests_served() >= limit) {
                log_info!(
                    "worker served {} requests (--max-requests): asking to be replaced",
                    io.requests_served()
                );
                RecycleReason::MaxRequests
            } else {
                continue;
            };
            recycle_asked = true;
            if let Err(err) = link.send(&WorkerMessage::Recycle(reason)) {
                log_error!("cannot ask the supervisor to replace this worker: {err}");
            }
            continue;
        };
        match (role, signal) {
            (_, Signal::Term) => return Stop::Graceful(signal),
            (Role::Single, Signal::Int) => return Stop::Graceful(signal),
            (Role::Worker { .. }, Signal::Int) | (_, Signal::Quit) => return Stop::Now(signal),
            (Role::Single, Signal::Hup) => log_warn!(
                "SIGHUP received: reloading needs the supervisor (this process runs with --single-process); it keeps serving"
            ),
            (Role::Worker { .. }, Signal::Usr2) => return Stop::Retire,
            (Role::Single, Signal::Usr2) => {
                log_warn!("SIGUSR2 received: it retires a supervisor's worker; ignored")
            }
            (_, Signal::Usr1) => reopen_logs(access_log),
            (Role::Single, Signal::Ttin | Signal::Ttou) => log_warn!(
                "{} received: adding or removing workers needs the supervisor; ignored",
                signal.name()
            ),
            (Role::Worker { .. }, Signal::Hup | Signal::Ttin | Signal::Ttou) => {}
        }
    }
}

/// A random share of `--max-requests-jitter`, drawn once per worker so workers that started
/// together do not all restart together.
fn jitter(max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let seed = u64::from(std::process::id())
        ^ Instant::now().elapsed().as_nanos() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    // splitmix64: one step is enough to spread a seed this small.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) % (max + 1)
}

/// Bounds the drain: an application stuck in a request must not keep the server alive for
/// ever. A second SIGINT (Ctrl-C again) means "now"; a repeated SIGTERM (service managers
/// resend it) changes nothing. Either way the process exits with 1. Cancelled when the
/// drain completes: the program that called Spindle goes on without it.
struct DrainWatchdog {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl DrainWatchdog {
    /// How often the watchdog looks whether the drain completed.
    const TICK: Duration = Duration::from_millis(50);

    fn start(set: SignalSet, grace: Duration) -> anyhow::Result<DrainWatchdog> {
        let deadline = Instant::now() + grace;
        let done = Arc::new(AtomicBool::new(false));
        let seen = done.clone();
        let thread = std::thread::Builder::new()
            .name("spindle-drain".into())
            .spawn(move || {
                while !seen.load(Ordering::Acquire) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        log_error!(
                            "in-flight requests still running after --graceful-timeout {}s: exiting",
                            grace.as_secs_f64()
                        );
                        std::process::exit(1);
                    }
                    // A second SIGINT (Ctrl-C again), or SIGQUIT (the supervisor's "now"),
                    // ends the wait.
                    if let Some(signal @ (Signal::Int | Signal::Quit)) =
                        set.wait_timeout(left.min(Self::TICK))
                    {
                        log_error!(
                            "{} received while finishing: exiting without waiting for in-flight requests",
                            signal.name()
                        );
                        std::process::exit(1);
                    }
                }
            })
            .context("cannot start the drain watchdog")?;
        Ok(DrainWatchdog { done, thread })
    }

    fn cancel(self) {
        self.done.store(true, Ordering::Release);
        let _ = self.thread.join();
    }
}
