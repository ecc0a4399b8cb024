//! The life of a Python thread: attach a thread state of its own, create (and at the end
//! destroy) its own-GIL sub-interpreter or join the main interpreter, then serve batches
//! of requests from the queue until it closes.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use pyo3_ffi as ffi;

use super::interp::Interp;
use super::interp::ServerInfo;
use super::object::{Attached, Gil};
use super::worker::Worker;
use crate::config::Config;
use crate::handoff::Request;

/// What a Python thread is told to run on.
pub(super) enum ThreadInterp {
    /// The main interpreter, whose state all Python threads share.
    Main(Arc<Interp>),
    /// A sub-interpreter with its own GIL, created by the thread itself.
    Sub(SubInterp),
}

/// What a thread needs to create its sub-interpreter and load the application in it.
#[cfg_attr(not(Py_3_12), allow(dead_code))]
pub(super) struct SubInterp {
    pub config: Arc<Config>,
    pub info: Arc<ServerInfo>,
    /// The main interpreter's sys.path, which the sub-interpreter takes.
    pub sys_path: Arc<Vec<String>>,
    /// Log import tracebacks (`--interpreters sub`); quiet while `auto` probes.
    pub report_import_errors: bool,
}

/// Why a Python thread could not start.
pub(super) struct StartError {
    pub message: String,
}

/// How soon an idle Python thread releases the shared bodies the I/O threads are done with.
const RELEASE_INTERVAL: Duration = Duration::from_millis(10);

/// The body of one Python thread: attach a thread state of its own, serve batches of
/// requests until the queue closes, then delete the thread state.
pub(super) fn python_thread(
    interp: ThreadInterp,
    requests: Receiver<Request>,
    ready: Sender<Result<(), StartError>>,
    access_log: bool,
) {
    // SAFETY: the main interpreter exists for the whole life of the Python threads (it is
    // finalised only after they are joined); a new thread state is made for this thread
    // and attached only here.
    let main_tstate = unsafe { ffi::PyThreadState_New(ffi::PyInterpreterState_Main()) };
    // SAFETY: `main_tstate` is fresh, belongs to this thread and is attached nowhere else.
    let attached = unsafe { Attached::restore(main_tstate) };
    match interp {
        ThreadInterp::Main(interp) => {
            // The main interpreter's state is shared: the main thread releases it at stop.
            drop(serve(attached.gil(), interp, &requests, ready, access_log));
        }
        ThreadInterp::Sub(spec) => {
            run_sub_interpreter(&spec, &requests, ready, access_log, main_tstate);
        }
    }
    std::mem::forget(attached);
    end_thread_state(main_tstate);
}

/// Creates this thread's own-GIL sub-interpreter (PEP 684), imports the application in it,
/// serves, and ends it. On return the thread's main-interpreter state is attached again.
#[cfg(Py_3_12)]
fn run_sub_interpreter(
    spec: &SubInterp,
    requests: &Receiver<Request>,
    ready: Sender<Result<(), StartError>>,
    access_log: bool,
    main_tstate: *mut ffi::PyThreadState,
) {
    // Isolated defaults (own GIL, own allocator, multi-phase extensions only), but allow
    // exec so `subprocess` works; fork and daemon threads stay refused.
    let interp_config = ffi::PyInterpreterConfig {
        allow_exec: 1,
        ..ffi::_PyInterpreterConfig_INIT
    };
    let mut sub_tstate: *mut ffi::PyThreadState = std::ptr::null_mut();
    // SAFETY: this thread holds the main interpreter's GIL (its thread state is attached),
    // as Py_NewInterpreterFromConfig requires; the config outlives the call.
    let status = unsafe { ffi::Py_NewInterpreterFromConfig(&mut sub_tstate, &interp_config) };
    // SAFETY: reading the status struct the call returned.
    if unsafe { ffi::PyStatus_Exception(status) } != 0 || sub_tstate.is_null() {
        let message = if status.err_msg.is_null() {
            "unknown error".to_string()
        } else {
            // SAFETY: err_msg is a static NUL-terminated C string when set.
            unsafe { std::ffi::CStr::from_ptr(status.err_msg) }
                .to_string_lossy()
                .into_owned()
        };
        // On failure CPython re-attached the main thread state.
        let _ = ready.send(Err(StartError {
            message: format!("cannot create a sub-interpreter: {message}"),
        }));
        return;
    }
    // Now `sub_tstate` is attached (holding the new interpreter's own GIL); the main one
    // was detached by the call.
    {
        // SAFETY: the sub-interpreter's thread state is attached to this thread until
        // Py_EndInterpreter below.
        let gil = unsafe { Gil::assume() };
        let setup = super::interp::set_sys_path(gil, &spec.sys_path)
            .map_err(|e| anyhow::anyhow!("cannot set sys.path: {}", e.summary()))
            .and_then(|()| {
                let app = super::interp::AppSource::Import(spec.config.app.as_deref());
                Interp::new(
                    gil,
                    &spec.config,
                    &spec.info,
                    app,
                    spec.report_import_errors,
                )
            });
        match setup {
            Err(err) => {
                let message = match err.downcast_ref::<super::ImportFailure>() {
                    Some(failure) => failure.summary.clone(),
                    None => format!("{err:#}"),
                };
                let _ = ready.send(Err(StartError { message }));
            }
            Ok(interp) => {
                let interp = serve(gil, Arc::new(interp), requests, ready, access_log);
                match Arc::try_unwrap(interp) {
                    Ok(interp) => interp.release(gil),
                    Err(_) => {
                        crate::log_warn!("sub-interpreter state still shared at exit; leaking it")
                    }
                }
            }
        }
    }
    // SAFETY: `sub_tstate` is the attached thread state of the interpreter we created on
    // this thread, and no other thread state of it exists; ending it leaves none attached,
    // so we attach the main one again for the caller.
    unsafe {
        ffi::Py_EndInterpreter(sub_tstate);
        ffi::PyEval_RestoreThread(main_tstate);
    }
}

#[cfg(not(Py_3_12))]
fn run_sub_interpreter(
    _spec: &SubInterp,
    _requests: &Receiver<Request>,
    ready: Sender<Result<(), StartError>>,
    _access_log: bool,
    _main_tstate: *mut ffi::PyThreadState,
) {
    let _ = ready.send(Err(StartError {
        message: "sub-interpreters need Python 3.12 or newer".into(),
    }));
}

/// Serves requests until the queue closes; returns the interpreter state to its owner.
fn serve(
    gil: Gil<'_>,
    interp: Arc<Interp>,
    requests: &Receiver<Request>,
    ready: Sender<Result<(), StartError>>,
    access_log: bool,
) -> Arc<Interp> {
    let worker = match Worker::new(gil, interp.clone(), access_log) {
        Ok(worker) => worker,
        Err(err) => {
            let _ = ready.send(Err(StartError {
                message: err.summary(),
            }));
            return interp;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    // Take every queued request before sleeping again: under load one wake-up serves many.
    loop {
        // While shared bodies are out, wake now and then to release them even when idle.
        let first = if worker.releases.has_outstanding() {
            match gil.allow_threads(|| requests.recv_timeout(RELEASE_INTERVAL)) {
                Ok(first) => first,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    worker.release_written(gil);
                    continue;
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match gil.allow_threads(|| requests.recv()) {
                Ok(first) => first,
                Err(_) => break,
            }
        };
        worker.handle(gil, first);
        while let Ok(next) = requests.try_recv() {
            worker.handle(gil, next);
        }
        worker.release_written(gil);
    }
    worker.release(gil);
    interp
}

fn end_thread_state(tstate: *mut ffi::PyThreadState) {
    // SAFETY: `tstate` is attached on this thread; Clear needs it attached, and
    // DeleteCurrent deletes it and releases the GIL.
    unsafe {
        ffi::PyThreadState_Clear(tstate);
        ffi::PyThreadState_DeleteCurrent();
    }
}
