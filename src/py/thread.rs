//! The life of a Python thread. Every thread attaches with a thread state of its own and
//! serves batches of requests from the queue until it closes. Two kinds:
//!
//! - the **owner** of a sub-interpreter creates it (`Py_NewInterpreterFromConfig`, own GIL,
//!   PEP 684), loads the application in it, serves, and at the end waits for the other
//!   threads of its interpreter to leave before it ends the interpreter;
//! - a **member** joins an interpreter that exists (a sub-interpreter, or the main one) with
//!   `PyThreadState_New`, serves, and leaves: when the queue closes, or when it has been idle
//!   for `--thread-idle-timeout` and its host keeps enough threads without it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use pyo3_ffi as ffi;

use super::access::AccessLog;
#[cfg(Py_3_12)]
use super::host::InterpState;
use super::host::{Admission, Host};
use super::interp::{Interp, ServerInfo};
use super::object::{Attached, Gil};
use super::watch::ThreadWatch;
use super::worker::Worker;
use crate::config::Config;
use crate::handoff::{Capacity, Request};

/// How soon an idle Python thread releases the shared bodies the I/O threads are done with.
const RELEASE_INTERVAL: Duration = Duration::from_millis(10);

/// The C stack of a Python thread: what `pthread_create` gives by default on Linux, which
/// CPython's recursion limits assume (Rust's default of 2 MiB is not enough for a deep
/// template render). Address space only; pages are touched as used.
pub(super) const STACK_SIZE: usize = 8 << 20;

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

/// What every Python thread works with.
#[derive(Clone)]
pub(super) struct ThreadCtx {
    pub requests: Receiver<Request>,
    pub capacity: Arc<Capacity>,
    pub host: Arc<Host>,
    pub access_log: Option<Arc<AccessLog>>,
    /// A member idle this long leaves, when its host keeps enough threads without it
    /// (`--thread-idle-timeout`; Granian's blocking threads idle out after 30 s as well).
    pub idle_leave: Duration,
}

/// The owner of a sub-interpreter: see the module documentation. The host counted it
/// already (`Host::first_thread`).
pub(super) fn owner_thread(spec: SubInterp, ctx: ThreadCtx, ready: Sender<Result<(), StartError>>) {
    // SAFETY: the main interpreter exists for the whole life of the Python threads (the
    // pool joins them before returning to the caller); a new thread state is made for this
    // thread and attached only here.
    let main_tstate = unsafe { ffi::PyThreadState_New(ffi::PyInterpreterState_Main()) };
    // SAFETY: `main_tstate` is fresh, belongs to this thread and is attached nowhere else.
    let attached = unsafe { Attached::restore(main_tstate) };
    run_sub_interpreter(&spec, &ctx, ready, main_tstate);
    std::mem::forget(attached);
    end_thread_state(main_tstate);
    ctx.host.thread_left();
}

/// Creates this thread's own-GIL sub-interpreter (PEP 684), loads the application in it,
/// serves, waits for the interpreter's other threads, and ends it. On return the thread's
/// main-interpreter state is attached again.
#[cfg(Py_3_12)]
fn run_sub_interpreter(
    spec: &SubInterp,
    ctx: &ThreadCtx,
    ready: Sender<Result<(), StartError>>,
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
                let interp = Arc::new(interp);
                // SAFETY: the sub-interpreter's thread state is attached here.
                let state = unsafe { InterpState::current() };
                ctx.host.set_ready(Admission {
                    interp: interp.clone(),
                    state,
                });
                serve(gil, interp, ctx, Some(ready), false);
                // Every other thread of this interpreter leaves (the queue is closed), with
                // this thread's GIL released so they can finish; then its state is ours.
                let interp = gil.allow_threads(|| ctx.host.close(1));
                match interp.map(Arc::try_unwrap) {
                    Some(Ok(interp)) => interp.release(gil),
                    _ => crate::log_warn!("sub-interpreter state still shared at exit; leaking it"),
                }
            }
        }
    }
    // SAFETY: `sub_tstate` is the attached thread state of the interpreter we created on
    // this thread, and every other thread state of it was deleted (`Host::close` waited for
    // them); ending it leaves none attached, so we attach the main one again for the caller.
    unsafe {
        ffi::Py_EndInterpreter(sub_tstate);
        ffi::PyEval_RestoreThread(main_tstate);
    }
}

#[cfg(not(Py_3_12))]
fn run_sub_interpreter(
    _spec: &SubInterp,
    _ctx: &ThreadCtx,
    ready: Sender<Result<(), StartError>>,
    _main_tstate: *mut ffi::PyThreadState,
) {
    let _ = ready.send(Err(StartError {
        message: "sub-interpreters need Python 3.12 or newer".into(),
    }));
}

/// A member thread: joins the interpreter of `admission` (which its host admitted it to),
/// serves, and leaves.
pub(super) fn member_thread(
    admission: Admission,
    ctx: ThreadCtx,
    ready: Option<Sender<Result<(), StartError>>>,
) {
    // SAFETY: the host admitted this thread while open, so the interpreter lives until this
    // thread leaves (`Host::close` waits for it); a new thread state is made for this thread
    // and attached only here.
    let tstate = unsafe { ffi::PyThreadState_New(admission.state.as_ptr()) };
    // SAFETY: `tstate` is fresh, belongs to this thread and is attached nowhere else.
    let attached = unsafe { Attached::restore(tstate) };
    let granted_leave = serve(attached.gil(), admission.interp, &ctx, ready, true);
    std::mem::forget(attached);
    end_thread_state(tstate);
    if !granted_leave {
        ctx.host.thread_left();
    }
}

/// Serves requests until the queue closes or, for a member (`may_leave`), until it has
/// been idle long enough and its host lets it go (then returns true: the host already
/// counted it out).
fn serve(
    gil: Gil<'_>,
    interp: Arc<Interp>,
    ctx: &ThreadCtx,
    ready: Option<Sender<Result<(), StartError>>>,
    may_leave: bool,
) -> bool {
    let worker = match Worker::new(gil, interp, ctx.access_log.as_ref()) {
        Ok(worker) => worker,
        Err(err) => {
            if let Some(ready) = ready {
                let _ = ready.send(Err(StartError {
                    message: err.summary(),
                }));
            }
            return false;
        }
    };
    if let Some(ready) = ready {
        let _ = ready.send(Ok(()));
    }
    // SAFETY: this thread's state is attached (the caller's `gil`).
    let watch = ThreadWatch::new(unsafe { ffi::PyThreadState_Get() });
    ThreadWatch::set_current(&watch);
    let clock = ctx.host.register_thread_clock(watch.clone());
    ctx.capacity.thread_joins();
    let mut idle_since = Instant::now();
    let mut left = false;
    // The queue closed: serve the parked responses to their end (or their clients'), then
    // stop.
    let mut closed = false;
    // Take every queued request before sleeping again: under load one wake-up serves many.
    loop {
        resume_parked(gil, &worker, ctx, &watch);
        if closed {
            if worker.parked.is_empty() {
                break;
            }
            let wake = worker.parked.wake_rx();
            gil.allow_threads(|| {
                // Waits without taking the wake-up: `resume_parked` takes it.
                let mut select = crossbeam_channel::Select::new();
                select.recv(wake);
                let _ = select.ready_timeout(RELEASE_INTERVAL);
            });
            worker.release_written(gil);
            continue;
        }
        // While shared bodies are out, wake now and then to release them even when idle.
        let wait = if worker.releases.has_outstanding() {
            Some(RELEASE_INTERVAL)
        } else if may_leave {
            Some(ctx.idle_leave.saturating_sub(idle_since.elapsed()))
        } else {
            None
        };
        // With parked responses, their wake-up ends the wait too (as a timeout).
        let wake = (!worker.parked.is_empty()).then(|| worker.parked.wake_rx());
        let got = gil.allow_threads(|| {
            ctx.capacity.thread_idle();
            let got = match wake {
                Some(wake) => next_request_or_wake(&ctx.requests, wake, wait),
                None => ctx.capacity.wait_for_request(&ctx.requests, wait),
            };
            ctx.capacity.thread_busy(|| !ctx.requests.is_empty());
            if got.is_ok() {
                ctx.host.gil_wait_begins();
            }
            got
        });
        match got {
            Ok(first) => {
                ctx.host.gil_wait_ends();
                take(gil, &worker, ctx, &watch, first);
                loop {
                    // Parked responses that may go on take turns with new requests; they
                    // go first, so a request is not off the queue, unstarted, while they
                    // run (another thread could have served it).
                    resume_parked(gil, &worker, ctx, &watch);
                    let Ok(next) = ctx.requests.try_recv() else {
                        break;
                    };
                    // A batch can last as long as requests keep coming: every request says
                    // how long it waited (one clock read, ~20 ns).
                    take(gil, &worker, ctx, &watch, next);
                }
                worker.release_written(gil);
                idle_since = Instant::now();
            }
            Err(RecvTimeoutError::Timeout) => {
                worker.release_written(gil);
                if may_leave
                    && worker.parked.is_empty()
                    && idle_since.elapsed() >= ctx.idle_leave
                    && ctx.host.may_leave()
                {
                    crate::log_debug!(
                        "Python pool: a thread left after {:?} idle ({} in its interpreter)",
                        ctx.idle_leave,
                        ctx.host.threads()
                    );
                    left = true;
                    break;
                }
            }
            Err(RecvTimeoutError::Disconnected) => closed = true,
        }
    }
    worker.release(gil);
    ctx.capacity.thread_leaves();
    ctx.host.unregister_thread_clock(clock);
    left
}

/// Serves one request taken from the queue, unless admission control got to it first: the
/// I/O thread shed it (answered 503, or its client is gone) or its connection gave up on
/// it while it waited. Then the application never sees it (ARCHITECTURE.md §4, "Admission
/// control"); one compare-and-swap decides.
#[inline]
fn take(gil: Gil<'_>, worker: &Worker, ctx: &ThreadCtx, watch: &ThreadWatch, request: Request) {
    ctx.capacity.record_take(request.queued);
    if worker.parked.holds_connection(&request.reply) {
        // Behind a response parked on this thread: run when that one ends (`ParkedSet`).
        worker.parked.defer(request);
        return;
    }
    run(gil, worker, ctx, watch, request);
}

/// Starts and serves a request taken (or held back) by this thread.
fn run(gil: Gil<'_>, worker: &Worker, ctx: &ThreadCtx, watch: &ThreadWatch, request: Request) {
    if !request.reply.exchange.start() {
        crate::metrics::request_skipped();
        return;
    }
    watch.busy();
    ctx.capacity.app_enters();
    worker.handle(gil, request);
    ctx.capacity.app_leaves();
    watch.idle();
}

/// Resumes this thread's parked responses that were woken (ARCHITECTURE.md §4): each is
/// the application's time again while it runs (`--timeout`'s watch, the pool's counts),
/// and not while it is parked.
fn resume_parked(gil: Gil<'_>, worker: &Worker, ctx: &ThreadCtx, watch: &ThreadWatch) {
    if worker.parked.is_empty() {
        return;
    }
    worker.resume_woken(gil, |resume| {
        watch.busy();
        ctx.capacity.app_enters();
        resume();
        ctx.capacity.app_leaves();
        watch.idle();
    });
    // Requests held behind a response that has now ended.
    while let Some(request) = worker.parked.next_deferred() {
        run(gil, worker, ctx, watch, request);
    }
}

/// Waits for a request or a parked response's wake-up, whichever comes first; a wake-up
/// returns as a timeout (not consumed: `resume_parked` takes it).
fn next_request_or_wake(
    requests: &Receiver<Request>,
    wake: &Receiver<()>,
    wait: Option<Duration>,
) -> Result<Request, RecvTimeoutError> {
    let mut select = crossbeam_channel::Select::new();
    let queue = select.recv(requests);
    select.recv(wake);
    let ready = match wait {
        Some(wait) => select
            .ready_timeout(wait)
            .map_err(|_| RecvTimeoutError::Timeout)?,
        None => select.ready(),
    };
    if ready != queue {
        return Err(RecvTimeoutError::Timeout);
    }
    match requests.try_recv() {
        Ok(request) => Ok(request),
        Err(crossbeam_channel::TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
        // Another thread took it first.
        Err(crossbeam_channel::TryRecvError::Empty) => Err(RecvTimeoutError::Timeout),
    }
}

pub(super) fn end_thread_state(tstate: *mut ffi::PyThreadState) {
    // SAFETY: `tstate` is attached on this thread; Clear needs it attached, and
    // DeleteCurrent deletes it and releases the GIL.
    unsafe {
        ffi::PyThreadState_Clear(tstate);
        ffi::PyThreadState_DeleteCurrent();
    }
}
