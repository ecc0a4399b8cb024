//! The pool of Python threads, and the interpreter mode they run in: own-GIL
//! sub-interpreters, one per thread (PEP 684, 3.12+), or the main interpreter shared by
//! all, with `--interpreters auto` probing the first and falling back to the second when the
//! application refuses to load in a sub-interpreter.
//!
//! The pool runs inside an already initialised CPython: [`Pool::start`] is called on the
//! main thread of the main interpreter, with its GIL held, and returns with it held; the
//! caller then releases the GIL for as long as the pool serves ([`Gil::allow_threads`]),
//! joins it with the GIL released ([`Pool::join`]) and releases what is left of it under
//! the GIL ([`Pool::release`]). Every sub-interpreter is ended by its own thread before
//! `join` returns: one still alive when Python finalises aborts the process
//! (python/cpython#113127).

use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use crossbeam_channel::{Receiver, Sender};

use super::interp::{prepare_sys_path, AppSource, Interp, ServerInfo};
use super::object::{Gil, Obj};
use super::thread::{StartError, SubInterp, ThreadInterp};
use crate::config::{Config, InterpreterChoice};
use crate::handoff::Request;
use crate::{log_info, log_warn};

/// The running Python threads.
pub struct Pool {
    /// The main interpreter's state, when the application runs there.
    main_interp: Option<Arc<Interp>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    mode: String,
}

impl Pool {
    /// Imports the application and starts `config.py_threads` Python threads, on
    /// sub-interpreters or the main one as `--interpreters` and the application allow, and
    /// returns the sender of the request queue they take requests from (bounded by
    /// `--queue-size`). The threads end once every clone of the sender is dropped and the
    /// queue is empty. `app`: an application object given by `spindle.serve()` instead of
    /// `config.app` (it lives in the main interpreter, so it runs there). `driver`: the I/O
    /// driver's name, for the demo page.
    pub fn start<'py>(
        gil: Gil<'py>,
        config: &Arc<Config>,
        driver: &'static str,
        app: Option<&Obj<'py>>,
    ) -> anyhow::Result<(Pool, Sender<Request>)> {
        if let Some(dir) = &config.chdir {
            std::env::set_current_dir(dir).with_context(|| format!("--chdir {}", dir.display()))?;
        }
        let n = config.py_threads;
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

        let (sender, receiver) = crate::handoff::request_queue(config.queue_size);
        let mut pool = Pool {
            main_interp: None,
            threads: Vec::new(),
            mode: String::new(),
        };
        let mut sub_refusal = None;
        if try_sub {
            let mode = if n == 1 {
                "1 sub-interpreter with its own GIL".to_string()
            } else {
                format!("{n} sub-interpreters, each with its own GIL")
            };
            let info = Arc::new(ServerInfo {
                driver,
                mode: mode.clone(),
                io_threads: config.io_threads,
                py_threads: n,
                multithread: false,
                multiprocess: n > 1,
            });
            let sub = || {
                ThreadInterp::Sub(SubInterp {
                    config: config.clone(),
                    info: info.clone(),
                    sys_path: sys_path.clone(),
                    report_import_errors: config.interpreters == InterpreterChoice::Sub,
                })
            };
            // The threads create their interpreters from the main one, which needs its GIL:
            // released meanwhile. The first interpreter alone decides whether the app runs
            // in one at all; the others then start in parallel.
            match gil.allow_threads(|| pool.spawn(config, &receiver, 0..1, |_| sub())) {
                Ok(()) => {
                    let rest = gil.allow_threads(|| pool.spawn(config, &receiver, 1..n, |_| sub()));
                    if let Err(err) = rest {
                        gil.allow_threads(|| pool.abandon(sender));
                        bail!("a sub-interpreter failed to start: {}", err.message);
                    }
                    pool.mode = mode;
                }
                Err(err) if config.interpreters == InterpreterChoice::Sub => {
                    gil.allow_threads(|| pool.abandon(sender));
                    bail!(
                        "the application cannot run in a sub-interpreter: {} (run it with --interpreters main)",
                        err.message
                    );
                }
                Err(err) => {
                    // The refusing thread ends its interpreter by itself: wait for it.
                    gil.allow_threads(|| pool.join());
                    sub_refusal = Some(err.message);
                }
            }
        }
        if pool.mode.is_empty() {
            let mode = if n > 1 {
                format!("main interpreter, {n} threads sharing its GIL")
            } else {
                "main interpreter".to_string()
            };
            let info = ServerInfo {
                driver,
                mode: mode.clone(),
                io_threads: config.io_threads,
                py_threads: n,
                multithread: n > 1,
                multiprocess: false,
            };
            let source = match app {
                Some(obj) => AppSource::Object(obj),
                None => AppSource::Import(config.app.as_deref()),
            };
            let interp = Arc::new(Interp::new(gil, config, &info, source, true)?);
            pool.main_interp = Some(interp.clone());
            // The threads attach to the main interpreter: its GIL is released while they
            // start.
            let started = gil.allow_threads(|| {
                pool.spawn(config, &receiver, 0..n, |_| {
                    ThreadInterp::Main(interp.clone())
                })
            });
            if let Err(err) = started {
                gil.allow_threads(|| pool.abandon(sender));
                pool.release(gil);
                bail!("a Python thread failed to start: {}", err.message);
            }
            if let Some(why) = sub_refusal {
                // Said only now: when the app does not import in the main interpreter
                // either, its own error is the one that matters.
                log_warn!("{app_name} cannot run in a sub-interpreter ({why}): running it on the main interpreter instead");
            }
            pool.mode = mode;
        }
        log_info!(
            "Python {} ({}), app {app_name}",
            super::python_version(),
            pool.mode
        );
        Ok((pool, sender))
    }

    /// Start-up failed after some threads started: close the queue and wait for them.
    fn abandon(&mut self, sender: Sender<Request>) {
        drop(sender);
        self.join();
    }

    /// Starts Python threads `indices` and waits until each is ready (or one failed).
    fn spawn(
        &mut self,
        config: &Config,
        requests: &Receiver<Request>,
        indices: std::ops::Range<usize>,
        interp: impl Fn(usize) -> ThreadInterp,
    ) -> Result<(), StartError> {
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded::<Result<(), StartError>>();
        let count = indices.len();
        for idx in indices {
            let interp = interp(idx);
            let requests = requests.clone();
            let ready_tx = ready_tx.clone();
            let access_log = config.access_log;
            let handle = std::thread::Builder::new()
                .name(format!("spindle-py-{idx}"))
                .spawn(move || super::thread::python_thread(interp, requests, ready_tx, access_log))
                .map_err(|e| StartError {
                    message: format!("cannot start a Python thread: {e}"),
                })?;
            self.threads.push(handle);
        }
        drop(ready_tx);
        let mut first_error = None;
        for _ in 0..count {
            match ready_rx.recv() {
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

    /// How the application runs, for the log and the demo page.
    pub fn mode_description(&self) -> &str {
        &self.mode
    }

    /// The main interpreter's state, when the application runs there (benches drive
    /// [`Interp::environ`] with it, attached to the main interpreter).
    pub fn main_interp(&self) -> Option<&Interp> {
        self.main_interp.as_deref()
    }

    /// Waits for the Python threads to end: they do once the request queue is closed and
    /// empty, each ending its own sub-interpreter (which runs that interpreter's atexit
    /// handlers). Call with the GIL released.
    pub fn join(&mut self) {
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }

    /// Releases the main interpreter's state, once every thread has been joined.
    pub fn release(self, gil: Gil<'_>) {
        if let Some(interp) = self.main_interp {
            match Arc::try_unwrap(interp) {
                Ok(interp) => interp.release(gil),
                Err(_) => log_warn!("interpreter state still shared at exit; leaking it"),
            }
        }
    }
}
