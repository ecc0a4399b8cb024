//! Python: the embedded CPython, the per-interpreter state, and the pool of Python threads
//! that run the WSGI application. Python threads never touch sockets: they take requests
//! from the queue and push replies to the owning I/O thread's mailbox (`handoff`).
//!
//! The rule of this module: **no Python object crosses interpreters, and no Python object
//! is touched without an attached thread state of its interpreter.** The types enforce it
//! where they can: `object::Obj<'py>` cannot outlive the `Gil<'py>` proof of attachment;
//! `object::Held` (kept across attachments) lives only inside an [`Interp`], whose objects
//! all belong to one interpreter and are used only by threads attached to it: the one
//! thread that owns a sub-interpreter, or the threads sharing the main interpreter. What
//! crosses between Python threads and I/O threads is bytes and files, never objects.
//!
//! Each Python thread attaches with a thread state of its own (explicit `PyThreadState_New`,
//! `PyEval_RestoreThread`/`PyEval_SaveThread`, `Py_NewInterpreterFromConfig` with an own
//! GIL, `Py_EndInterpreter`), never `PyGILState_*`, which only knows the main interpreter.
//! The same code serves both modes; DESIGN.md §3 and §7 have the C-API rules.

mod callbacks;
mod environ;
pub mod object;
mod response;
mod thread;
mod worker;

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use crossbeam_channel::Receiver;
use pyo3_ffi as ffi;

use crate::config::{Config, InterpreterChoice};
use crate::handoff::Request;
use crate::server::Driver;
use crate::{log_info, log_warn};
use object::{Attached, Gil, Held, PyErr};

pub use environ::{ImportFailure, Interp};

/// The Python version Spindle embeds, e.g. "3.13.0".
pub fn runtime_version() -> String {
    // SAFETY: Py_GetVersion returns a static NUL-terminated string and may be called
    // before the interpreter is initialised.
    let full = unsafe { CStr::from_ptr(ffi::Py_GetVersion()) }
        .to_string_lossy()
        .into_owned();
    full.split_whitespace().next().unwrap_or("").to_string()
}

/// The running Python side: the main interpreter and the Python threads.
pub struct Runtime {
    main_tstate: *mut ffi::PyThreadState,
    /// The main interpreter's state, when the application runs there.
    main_interp: Option<Arc<Interp>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    mode: String,
}

// SAFETY: `main_tstate` is only used by `stop`, which the thread that created the runtime
// (the main thread) calls after every Python thread has ended; it is never dereferenced
// anywhere else.
unsafe impl Send for Runtime {}

/// What a Python thread is told to run on.
pub(crate) enum ThreadInterp {
    /// The main interpreter, whose state all Python threads share.
    Main(Arc<Interp>),
    /// A sub-interpreter with its own GIL, created by the thread itself.
    Sub {
        config: Arc<Config>,
        info: Arc<ServerInfo>,
        /// Log import tracebacks (`--interpreters sub`); quiet while `auto` probes.
        report_import_errors: bool,
    },
}

/// Why a Python thread could not start.
pub(crate) struct StartError {
    pub message: String,
}

impl Runtime {
    /// Initialises CPython, imports the application and starts `config.py_threads` Python
    /// threads taking requests from `requests`, on sub-interpreters or the main one as
    /// `--interpreters` and the application allow.
    pub fn start(
        config: &Arc<Config>,
        driver: Driver,
        requests: Receiver<Request>,
    ) -> anyhow::Result<Runtime> {
        if let Some(dir) = &config.chdir {
            std::env::set_current_dir(dir).with_context(|| format!("--chdir {}", dir.display()))?;
        }
        let program = program_name(config)?;
        initialize(&program)?;
        let n = config.py_threads;
        let app_name = config.app.as_deref().unwrap_or("<demo>");
        let try_sub = match config.interpreters {
            InterpreterChoice::Main => false,
            InterpreterChoice::Auto => cfg!(Py_3_12),
            InterpreterChoice::Sub if cfg!(Py_3_12) => true,
            InterpreterChoice::Sub => {
                // SAFETY: still attached after initialisation; nothing else runs yet.
                unsafe { ffi::Py_FinalizeEx() };
                bail!(
                    "--interpreters sub needs Python 3.12 or newer (own-GIL sub-interpreters, PEP 684), and this Spindle embeds Python {}: use --interpreters main, or rebuild with SPINDLE_PYTHON=python3.13",
                    runtime_version()
                );
            }
        };
        {
            // SAFETY: Py_InitializeFromConfig left the main thread state attached here.
            let gil = unsafe { Gil::assume() };
            if let Err(err) = prepare_sys_path(gil, config) {
                let msg = err.summary();
                drop(err);
                // SAFETY: still attached; nothing else runs yet.
                unsafe { ffi::Py_FinalizeEx() };
                bail!("cannot set sys.path: {msg}");
            }
            if try_sub {
                prime_main_interpreter(gil);
            }
            #[cfg(all(Py_3_12, not(Py_3_13)))]
            if try_sub {
                // CPython 3.12 can abort when a single-phase extension that failed in an
                // own-GIL sub-interpreter is imported later in the main one; importing
                // the app in the main interpreter first avoids it (DESIGN.md §7).
                preimport_in_main(gil, config);
            }
        }
        // SAFETY: the main thread state is attached; saving it releases the GIL so the
        // Python threads can take it. `stop` restores it.
        let main_tstate = unsafe { ffi::PyEval_SaveThread() };
        let mut runtime = Runtime {
            main_tstate,
            main_interp: None,
            threads: Vec::new(),
            mode: String::new(),
        };
        let mut on_sub = false;
        let mut sub_refusal = None;

        if try_sub {
            let mode = if n == 1 {
                "1 sub-interpreter with its own GIL".to_string()
            } else {
                format!("{n} sub-interpreters, each with its own GIL")
            };
            let info = Arc::new(ServerInfo {
                driver: driver.name(),
                mode: mode.clone(),
                io_threads: config.io_threads,
                py_threads: n,
                multithread: false,
                multiprocess: n > 1,
            });
            let sub = || ThreadInterp::Sub {
                config: config.clone(),
                info: info.clone(),
                report_import_errors: config.interpreters == InterpreterChoice::Sub,
            };
            // The first interpreter alone decides whether the app runs in one at all; the
            // others then start in parallel.
            match runtime.spawn(config, &requests, 0..1, |_| sub()) {
                Ok(()) => {
                    runtime
                        .spawn(config, &requests, 1..n, |_| sub())
                        .map_err(|e| anyhow!("a sub-interpreter failed to start: {}", e.message))?;
                    runtime.mode = mode;
                    on_sub = true;
                }
                Err(err) if config.interpreters == InterpreterChoice::Sub => {
                    return Err(anyhow!(
                        "the application cannot run in a sub-interpreter: {} (run it with --interpreters main)",
                        err.message
                    ));
                }
                Err(err) => sub_refusal = Some(err.message),
            }
        }
        if !on_sub {
            let mode = if n > 1 {
                format!("main interpreter, {n} threads sharing its GIL")
            } else {
                "main interpreter".to_string()
            };
            let info = ServerInfo {
                driver: driver.name(),
                mode: mode.clone(),
                io_threads: config.io_threads,
                py_threads: n,
                multithread: n > 1,
                multiprocess: false,
            };
            let interp = {
                // SAFETY: the main thread state saved above is restored on the thread that
                // saved it; no Python thread runs yet.
                let attached = unsafe { Attached::restore(runtime.main_tstate) };
                let interp = Interp::new(attached.gil(), config, &info, true);
                drop(attached);
                interp?
            };
            let interp = Arc::new(interp);
            runtime.main_interp = Some(interp.clone());
            runtime
                .spawn(config, &requests, 0..n, |_| {
                    ThreadInterp::Main(interp.clone())
                })
                .map_err(|e| anyhow!("a Python thread failed to start: {}", e.message))?;
            if let Some(why) = sub_refusal {
                // Said only now: when the app does not import in the main interpreter
                // either, its own error is the one that matters.
                log_warn!("{app_name} cannot run in a sub-interpreter ({why}): running it on the main interpreter instead");
            }
            runtime.mode = mode;
        }
        log_info!(
            "Python {} ({}), app {app_name}",
            runtime_version(),
            runtime.mode
        );
        Ok(runtime)
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
                .spawn(move || thread::python_thread(interp, requests, ready_tx, access_log))
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

    pub fn mode_description(&self) -> &str {
        &self.mode
    }

    /// Runs `f` on the calling thread, attached to the main interpreter through a thread
    /// state of its own, with the application's interpreter state: how benchmarks and tests
    /// drive the bridge (e.g. [`Interp::environ`]) without going through the request queue.
    /// `None` when the application runs in sub-interpreters, whose state belongs to their
    /// own threads. The Python threads share the main interpreter's GIL meanwhile.
    pub fn with_main_interp<R>(
        &self,
        f: impl for<'py> FnOnce(Gil<'py>, &Interp) -> R,
    ) -> Option<R> {
        let interp = self.main_interp.as_ref()?;
        // SAFETY: the main interpreter lives until `stop`, which consumes `self`; a new
        // thread state is made for this thread and attached only here.
        let tstate = unsafe { ffi::PyThreadState_New(ffi::PyInterpreterState_Main()) };
        assert!(!tstate.is_null(), "PyThreadState_New failed");
        // SAFETY: `tstate` is fresh, belongs to this thread and is attached nowhere else.
        let attached = unsafe { Attached::restore(tstate) };
        let result = f(attached.gil(), interp);
        std::mem::forget(attached);
        // SAFETY: `tstate` is still attached on this thread (forgetting `attached` kept it
        // so); Clear needs it attached, and DeleteCurrent deletes it and releases the GIL.
        unsafe {
            ffi::PyThreadState_Clear(tstate);
            ffi::PyThreadState_DeleteCurrent();
        }
        Some(result)
    }

    /// Waits for the Python threads (they end when the request queue closes, each ending
    /// its own sub-interpreter, which runs that interpreter's atexit handlers), then
    /// finalises the main interpreter.
    pub fn stop(self) {
        for handle in self.threads {
            let _ = handle.join();
        }
        // SAFETY: every Python thread has ended and deleted its thread states; the main
        // thread state saved in `start` is restored on the thread that saved it.
        let attached = unsafe { Attached::restore(self.main_tstate) };
        if let Some(interp) = self.main_interp {
            match Arc::try_unwrap(interp) {
                Ok(interp) => interp.release(attached.gil()),
                Err(_) => crate::log_warn!("interpreter state still shared at exit; leaking it"),
            }
        }
        std::mem::forget(attached);
        // SAFETY: the main thread state is attached and no other thread state exists.
        if unsafe { ffi::Py_FinalizeEx() } < 0 {
            crate::log_warn!("Python reported errors while finalising (flushing buffered output)");
        }
    }
}

/// Imports, in the main interpreter, stdlib extensions whose static types own data that
/// sub-interpreters would otherwise create: the first importer allocates it. On CPython
/// 3.13.0, when a sub-interpreter imports the C `datetime` first, ending a second one
/// frees a tuple from the first one's allocator ("double free"/SIGSEGV at stop, seen here
/// in most stops with two interpreters and Flask). Imported by the main interpreter first,
/// that data lives as long as the process.
fn prime_main_interpreter(gil: Gil<'_>) {
    for module in [c"_datetime"] {
        if let Err(err) = gil.import(module) {
            crate::log_debug!(
                "priming {:?} in the main interpreter: {}",
                module,
                err.summary()
            );
        }
    }
}

/// On 3.12 only: import the application's module in the main interpreter (see caller).
#[cfg(all(Py_3_12, not(Py_3_13)))]
fn preimport_in_main(gil: Gil<'_>, config: &Config) {
    if let Some(module) = config
        .app
        .as_deref()
        .and_then(|spec| spec.split(':').next())
    {
        if let Ok(name) = CString::new(module) {
            if let Err(err) = gil.import(&name) {
                log_warn!(
                    "importing {module} in the main interpreter failed: {}",
                    err.summary()
                );
            }
        }
    }
}

/// What an interpreter is told about the server it runs in: the demo page shows it, and
/// `wsgi.multithread`/`wsgi.multiprocess` must tell the application the truth.
pub(crate) struct ServerInfo {
    pub driver: &'static str,
    pub mode: String,
    pub io_threads: usize,
    pub py_threads: usize,
    /// Other threads may call the same application object at the same time.
    pub multithread: bool,
    /// Other interpreters run their own copy of the application at the same time (module
    /// state is per interpreter, as per process).
    pub multiprocess: bool,
}

/// The `sys.executable` Spindle presents: the venv's python when one is used (so
/// CPython's own start-up finds `pyvenv.cfg` and puts the venv's site-packages on
/// sys.path, as it does for `venv/bin/python`), else the python Spindle was built with.
fn program_name(config: &Config) -> anyhow::Result<Option<PathBuf>> {
    let Some(venv) = &config.venv else {
        let built = env!("SPINDLE_BUILD_PYTHON");
        return Ok((!built.is_empty() && Path::new(built).exists()).then(|| PathBuf::from(built)));
    };
    let venv =
        std::fs::canonicalize(venv).map_err(|e| anyhow!("--venv {}: {e}", venv.display()))?;
    if !venv.join("pyvenv.cfg").is_file() {
        bail!(
            "--venv {}: not a virtual environment (no pyvenv.cfg)",
            venv.display()
        );
    }
    let version = runtime_version();
    let mut parts = version.split('.');
    let major_minor = format!(
        "python{}.{}",
        parts.next().unwrap_or("3"),
        parts.next().unwrap_or("")
    );
    if !venv.join("lib").join(&major_minor).is_dir() {
        bail!(
            "--venv {}: this virtual environment is not for Python {} (no lib/{}); make one with that Python, or build Spindle with SPINDLE_PYTHON set to the venv's Python",
            venv.display(),
            version,
            major_minor
        );
    }
    let python = venv.join("bin").join("python");
    if !python.exists() {
        bail!("--venv {}: no bin/python in it", venv.display());
    }
    Ok(Some(python))
}

fn initialize(program: &Option<PathBuf>) -> anyhow::Result<()> {
    // SAFETY: PyConfig is a plain C struct initialised by PyConfig_InitPythonConfig before
    // any use; strings we set are copied by CPython; the config is cleared after use. This
    // runs once, on the main thread, before any other Python call.
    unsafe {
        let mut config: ffi::PyConfig = std::mem::zeroed();
        ffi::PyConfig_InitPythonConfig(&mut config);
        // Spindle owns SIGINT/SIGTERM; Python must not install handlers of its own.
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        let argv0 = CString::new("spindle").expect("static string");
        let mut argv = [argv0.as_ptr()];
        let mut status = ffi::PyConfig_SetBytesArgv(&mut config, 1, argv.as_mut_ptr());
        if ffi::PyStatus_Exception(status) == 0 {
            if let Some(program) = program {
                let program = CString::new(program.as_os_str().as_encoded_bytes())?;
                status = ffi::PyConfig_SetBytesString(
                    &mut config,
                    &mut config.program_name,
                    program.as_ptr(),
                );
            }
        }
        if ffi::PyStatus_Exception(status) == 0 {
            status = ffi::Py_InitializeFromConfig(&config);
        }
        ffi::PyConfig_Clear(&mut config);
        if ffi::PyStatus_Exception(status) != 0 {
            let msg = if status.err_msg.is_null() {
                "unknown error".to_string()
            } else {
                CStr::from_ptr(status.err_msg)
                    .to_string_lossy()
                    .into_owned()
            };
            bail!("cannot initialise Python {}: {msg}", runtime_version());
        }
    }
    Ok(())
}

/// Puts the working directory and each `--pythonpath` in front of sys.path, as `python -m`
/// and gunicorn do, so `spindle module:app` finds modules next to where it runs.
pub(crate) fn prepare_sys_path<'py>(gil: Gil<'py>, config: &Config) -> Result<(), PyErr<'py>> {
    let sys = gil.import(c"sys")?;
    let path = sys.getattr(c"path")?;
    let insert = path.getattr(c"insert")?;
    let zero = gil.int(0)?;
    let mut dirs: Vec<PathBuf> = config
        .pythonpath
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    dirs.push(std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")));
    for dir in dirs.iter().rev() {
        let text = gil.str(&dir.to_string_lossy())?;
        insert.call(&[zero.borrow(), text.borrow()])?;
    }
    Ok(())
}

/// Reports a Python exception into the log with its traceback, through the interpreter's
/// `_spindle.report_exception` (falls back to one log line).
pub(crate) fn report<'py>(gil: Gil<'py>, reporter: Option<&Held>, err: PyErr<'py>, context: &str) {
    if let Some(reporter) = reporter {
        let reporter = reporter.bind(gil);
        if let Ok(ctx) = gil.str(context) {
            if reporter
                .call(&[err.instance().borrow(), ctx.borrow()])
                .is_ok()
            {
                return;
            }
        }
    }
    // No PyErr_Print here: for a SystemExit it would exit the process (fatal from a
    // sub-interpreter's thread). One line is what we can say safely.
    crate::log_error!("{context}: {}", err.summary());
}
