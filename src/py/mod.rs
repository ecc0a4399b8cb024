//! Python: the embedded CPython, the per-interpreter state, and the pool of Python threads
//! that run the WSGI application. Python threads never touch sockets: they take requests
//! from the queue and push replies to the owning I/O thread's mailbox (`handoff`).
//!
//! The rule of this module: **no Python object crosses interpreters, and no Python object
//! is touched without an attached thread state of its interpreter.** The types enforce it
//! where they can: `object::Obj<'py>` cannot outlive the `Gil<'py>` proof of attachment;
//! `object::Held` (kept across attachments) lives only inside an [`Interp`], whose objects
//! all belong to one interpreter and are used only by threads attached to it. Today every
//! Python thread attaches to the main interpreter with a thread state of its own (explicit
//! `PyThreadState_New`/`PyEval_RestoreThread`, never `PyGILState_*`), which is exactly the
//! shape a sub-interpreter per thread needs.

mod environ;
pub mod object;
mod wsgi;

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use crossbeam_channel::Receiver;
use pyo3_ffi as ffi;

use crate::config::Config;
use crate::handoff::Request;
use crate::log_info;
use crate::server::Driver;
use object::{Attached, Gil, Held, PyErr};

pub use environ::Interp;

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
    interp: Arc<Interp>,
    threads: Vec<std::thread::JoinHandle<()>>,
    mode: String,
}

// SAFETY: `main_tstate` is only used by `stop`, which the thread that created the runtime
// (the main thread) calls after every Python thread has ended; it is never dereferenced
// anywhere else.
unsafe impl Send for Runtime {}

impl Runtime {
    /// Initialises CPython, imports the application and starts `config.py_threads` Python
    /// threads taking requests from `requests`.
    pub fn start(
        config: &Config,
        driver: Driver,
        requests: Receiver<Request>,
    ) -> anyhow::Result<Runtime> {
        if let Some(dir) = &config.chdir {
            std::env::set_current_dir(dir).with_context(|| format!("--chdir {}", dir.display()))?;
        }
        let program = program_name(config)?;
        initialize(&program)?;
        // SAFETY: Py_InitializeFromConfig left the main thread state attached to this thread.
        let gil = unsafe { Gil::assume() };
        let mode = if config.py_threads > 1 {
            format!(
                "main interpreter, {} threads sharing its GIL",
                config.py_threads
            )
        } else {
            "main interpreter".to_string()
        };
        let setup = (|| -> anyhow::Result<Interp> {
            prepare_sys_path(gil, config)
                .map_err(|e| anyhow!("cannot set sys.path: {}", e.summary()))?;
            let info = ServerInfo {
                driver: driver.name(),
                mode: &mode,
                io_threads: config.io_threads,
                py_threads: config.py_threads,
            };
            Interp::new(gil, config, &info)
        })();
        let interp = match setup {
            Ok(interp) => Arc::new(interp),
            Err(err) => {
                // SAFETY: still attached; finalising here lets atexit handlers run.
                unsafe { ffi::Py_FinalizeEx() };
                return Err(err);
            }
        };
        // SAFETY: the main thread state is attached; saving it releases the GIL so the
        // Python threads can take it. `stop` restores it.
        let main_tstate = unsafe { ffi::PyEval_SaveThread() };

        let mut threads = Vec::new();
        let (ready_tx, ready_rx) =
            crossbeam_channel::bounded::<Result<(), String>>(config.py_threads);
        for idx in 0..config.py_threads {
            let interp = interp.clone();
            let requests = requests.clone();
            let ready_tx = ready_tx.clone();
            let access_log = config.access_log;
            let handle = std::thread::Builder::new()
                .name(format!("spindle-py-{idx}"))
                .spawn(move || wsgi::python_thread(interp, requests, ready_tx, access_log))
                .context("cannot start a Python thread")?;
            threads.push(handle);
        }
        drop(ready_tx);
        for _ in 0..config.py_threads {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(msg)) => bail!("a Python thread failed to start: {msg}"),
                Err(_) => bail!("a Python thread died while starting"),
            }
        }
        log_info!(
            "Python {} ({}), app {}",
            runtime_version(),
            mode,
            config.app.as_deref().unwrap_or("<demo>")
        );
        Ok(Runtime {
            main_tstate,
            interp,
            threads,
            mode,
        })
    }

    pub fn mode_description(&self) -> &str {
        &self.mode
    }

    /// Waits for the Python threads (they end when the request queue closes), then
    /// finalises the interpreter, which runs the application's atexit handlers.
    pub fn stop(self) {
        for handle in self.threads {
            let _ = handle.join();
        }
        // SAFETY: every Python thread has ended and deleted its thread state; the main
        // thread state saved in `start` is restored on the thread that saved it.
        let attached = unsafe { Attached::restore(self.main_tstate) };
        match Arc::try_unwrap(self.interp) {
            Ok(interp) => interp.release(attached.gil()),
            Err(_) => crate::log_warn!("interpreter state still shared at exit; leaking it"),
        }
        std::mem::forget(attached);
        // SAFETY: the main thread state is attached and no other thread state exists.
        if unsafe { ffi::Py_FinalizeEx() } < 0 {
            crate::log_warn!("Python reported errors while finalising (flushing buffered output)");
        }
    }
}

/// What the demo page and the log show about the running server.
pub(crate) struct ServerInfo<'a> {
    pub driver: &'a str,
    pub mode: &'a str,
    pub io_threads: usize,
    pub py_threads: usize,
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
fn prepare_sys_path<'py>(gil: Gil<'py>, config: &Config) -> Result<(), PyErr<'py>> {
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
/// `_spindle.report_exception` (falls back to CPython's own printer).
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
    crate::log_error!("{context}: {}", err.summary());
    err.restore();
    // SAFETY: an exception is set (just restored); GIL held.
    unsafe { ffi::PyErr_PrintEx(0) };
}
