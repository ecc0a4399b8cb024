//! The process: one Spindle server from its command line to its exit code. This is the unit
//! a supervisor repeats per worker process; it sits above the parts it runs (`server/` for
//! the I/O threads, `py/` for the Python threads) and is the only module that knows the
//! order of start-up and shutdown:
//!
//! 1. parse the command line into a [`Config`];
//! 2. take SIGINT, SIGTERM and SIGHUP (before any thread exists, so every thread inherits
//!    the mask; `signals.rs` says who owns them and why);
//! 3. bind the listeners (a bad `--bind` fails before Python does any work);
//! 4. start the Python threads, importing the application: an import error ends the run
//!    here with its traceback and one `error:` line;
//! 5. start the I/O threads; log `listening on ...` (tests and scripts wait for it);
//! 6. wait for a signal with the GIL released; then stop accepting, let in-flight requests
//!    finish (bounded by `--graceful-timeout`), join the I/O threads, then the Python
//!    threads (each ends its own sub-interpreter), and return.
//!
//! It runs in an initialised CPython, on the main thread of the main interpreter with its
//! GIL held (the `spindle` command and `python -m spindle` reach it through
//! `spindle._native.run`), and returns with the GIL held.

mod listen;
mod signals;

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::config::{Command, Config};
use crate::handoff::IoMailbox;
use crate::py::object::{Gil, Obj};
use crate::py::Pool;
use crate::server::{choose_driver, IoThreads};
use crate::{log_error, log_info, log_warn};
use signals::{OwnedSignals, Signal, SignalSet};

pub use listen::display_addr;

/// Runs Spindle with the command line `args` (`args[0]` is the program name) and returns
/// the process's exit code: 0 after a clean stop, 1 for a setup failure (one `error:`
/// line), 2 for a bad command line. `app`: an application object given by
/// `spindle.serve()` in place of an import string.
pub fn run(gil: Gil<'_>, args: Vec<OsString>, app: Option<&Obj<'_>>) -> i32 {
    match Config::parse(args) {
        Command::Exit(code) => code,
        Command::Version => {
            println!("spindle {}", crate::VERSION);
            println!("Python {}", crate::py::python_version());
            0
        }
        Command::Serve(config) => match serve(gil, *config, app) {
            Ok(()) => 0,
            Err(err) => {
                eprintln!("error: {err:#}");
                1
            }
        },
    }
}

/// Serves until SIGINT or SIGTERM, then drains and returns.
pub fn serve(gil: Gil<'_>, config: Config, app: Option<&Obj<'_>>) -> anyhow::Result<()> {
    crate::log::set_level(config.log_level);
    let signals = OwnedSignals::block().context("cannot block SIGINT/SIGTERM/SIGHUP")?;
    let config = Arc::new(config);
    let driver = choose_driver(config.driver)?;
    let listeners = listen::bind_all(&config)?;
    let (mut pool, requests) = Pool::start(gil, &config, driver.name(), app)?;
    let mode = pool.mode_description().to_string();
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
        );
        let io = match io {
            Ok(io) => io,
            Err(err) => {
                // The queue's sender went with the failed start: the Python threads end.
                pool.join();
                return Err(err);
            }
        };
        for addr in &listeners.bound {
            log_info!(
                "listening on http://{} ({}, {} I/O threads, {})",
                display_addr(*addr),
                driver.name(),
                config.io_threads,
                mode
            );
        }
        let signal = wait_for_stop(set);
        log_info!(
            "{} received: finishing in-flight requests, then stopping",
            signal.name()
        );
        let watchdog = DrainWatchdog::start(set, config.graceful_timeout)?;
        io.stop();
        let io_result = io.join();
        // The I/O threads dropped the queue's senders: the Python threads finish what is
        // queued, end their interpreters and exit.
        pool.join();
        watchdog.cancel();
        io_result.map(|()| pool)
    })?;
    served.release(gil);
    drop(signals);
    log_info!("stopped");
    Ok(())
}

/// Waits for a signal that stops the server. SIGHUP asks for a reload, which a single
/// process without a supervisor cannot do without dropping its listeners: it says so and
/// keeps serving (the default action, dying, would lose every request in flight).
fn wait_for_stop(set: SignalSet) -> Signal {
    loop {
        match set.wait() {
            Signal::Hup => log_warn!(
                "SIGHUP received: reloading needs the supervisor; this process keeps serving"
            ),
            stop => return stop,
        }
    }
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
                    if set.wait_timeout(left.min(Self::TICK)) == Some(Signal::Int) {
                        log_error!("SIGINT received again: exiting without waiting for in-flight requests");
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
