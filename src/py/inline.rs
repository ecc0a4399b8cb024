//! `--inline`: the I/O threads call the application themselves (ARCHITECTURE.md §4,
//! "Inline"). Each I/O thread joins one of the application's interpreters as a guest of
//! its [`Host`] (I/O thread k the k-th interpreter, round the list), with a thread state and
//! a [`Worker`] of its own, exactly as a member Python thread does; it takes the GIL for
//! each call and gives it back after, so the interpreter's own threads (which serve the
//! requests whose bodies are still on the socket) run between its calls.

use std::sync::Arc;

use pyo3_ffi as ffi;

use super::access::AccessLog;
use super::host::Host;
use super::object::{Attached, Gil};
use super::thread::end_thread_state;
use super::worker::Worker;
use crate::handoff::{InlineApp, InlineRunner, Request};

/// The interpreters an I/O thread may join.
pub struct InlineHosts {
    pub(super) hosts: Vec<Arc<Host>>,
    pub(super) access_log: Option<Arc<AccessLog>>,
}

impl InlineApp for InlineHosts {
    fn join(&self, index: usize) -> Option<Box<dyn InlineRunner>> {
        let host = self.hosts[index % self.hosts.len()].clone();
        // A guest: not one of the host's threads (its bound, its minimum and the grower
        // leave it out), but the interpreter is not ended before it left (`Host::close`).
        let admission = host.admit_guest()?;
        // SAFETY: the host admitted this thread while open, so the interpreter lives until
        // `guest_left` below; the thread state is made for this thread and attached only by
        // it.
        let tstate = unsafe { ffi::PyThreadState_New(admission.state.as_ptr()) };
        if tstate.is_null() {
            host.guest_left();
            crate::log_error!("I/O thread {index}: cannot make a Python thread state: requests go to the Python threads");
            return None;
        }
        // SAFETY: `tstate` is fresh, belongs to this thread and is attached nowhere else.
        let attached = unsafe { Attached::restore(tstate) };
        let made = Worker::new(attached.gil(), admission.interp, self.access_log.as_ref())
            .map_err(|err| err.summary());
        match made {
            Ok(worker) => {
                drop(attached);
                Some(Box::new(Runner {
                    host,
                    tstate,
                    worker: Some(worker),
                }))
            }
            Err(err) => {
                crate::log_error!(
                    "I/O thread {index}: cannot run the application inline ({err}): requests go to the Python threads"
                );
                std::mem::forget(attached);
                end_thread_state(tstate);
                host.guest_left();
                None
            }
        }
    }
}

/// One I/O thread's thread state in its interpreter, and its own Python objects.
struct Runner {
    host: Arc<Host>,
    tstate: *mut ffi::PyThreadState,
    /// Taken only by `drop`, which releases it under the GIL.
    worker: Option<Worker>,
}

impl Runner {
    fn attach(&self) -> Attached<'_> {
        // SAFETY: `tstate` was made for this thread (a runner never leaves its I/O thread:
        // it is not `Send`) and is detached between calls, none made from inside another.
        unsafe { Attached::restore(self.tstate) }
    }

    fn worker(&self) -> &Worker {
        self.worker
            .as_ref()
            .expect("a runner keeps its worker until dropped")
    }
}

impl InlineRunner for Runner {
    fn run(&self, requests: &mut Vec<Request>) {
        let attached = self.attach();
        let gil = attached.gil();
        let worker = self.worker();
        worker.release_written(gil);
        for request in requests.drain(..) {
            if worker.parked.holds_connection(&request.reply) {
                // A pipelined request behind its connection's parked response: it runs
                // when that one ended, as on a Python thread (`ParkedSet::defer`).
                worker.parked.defer(request);
            } else {
                serve(gil, worker, request);
            }
        }
    }

    fn resume(&self) {
        if self.idle() {
            return;
        }
        let worker = self.worker();
        let attached = self.attach();
        let gil = attached.gil();
        worker.release_written(gil);
        resume(gil, worker);
    }

    fn idle(&self) -> bool {
        let worker = self.worker();
        worker.parked.is_empty() && !worker.releases.has_outstanding()
    }
}

fn serve(gil: Gil<'_>, worker: &Worker, request: Request) {
    if !request.reply.exchange.start() {
        // Its connection gave up on it before it ran (a response parked before it ended
        // the connection).
        crate::metrics::request_skipped();
        return;
    }
    worker.handle(gil, request);
}

fn resume(gil: Gil<'_>, worker: &Worker) {
    worker.resume_woken(gil, |resume| resume());
    while let Some(request) = worker.parked.next_deferred() {
        serve(gil, worker, request);
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let Some(worker) = self.worker.take() else {
            return;
        };
        // SAFETY: as in `attach`.
        let attached = unsafe { Attached::restore(self.tstate) };
        let gil = attached.gil();
        // Dropped once its thread holds no connection: each parked response's client is
        // gone, so it ends now, its `close()` called (and the requests held behind it are
        // skipped: their connections gave up on them too).
        worker.parked.cancel_all();
        resume(gil, &worker);
        worker.release(gil);
        std::mem::forget(attached);
        end_thread_state(self.tstate);
        self.host.guest_left();
    }
}
