//! One Python thread's objects ([`Worker`]) and one request served end to end: environ,
//! the application call, the result, `close()` exactly once, the 500 or abort when the
//! application fails, and the access log line.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::sync::Arc;

use pyo3_ffi as ffi;

use super::access::{AccessLog, Entry, ThreadLog};
use super::callbacks::{CAPSULE_NAME, READ_BODY, START_RESPONSE, WRITE};
use super::interp::Interp;
use super::object::new_function;
use super::object::{Gil, Held, Obj, PyErr, PyResult, ReleaseQueue};
use super::parked::{Parked, ParkedSet};
use super::response::Callbacks;
use super::response::{close_result, pump, Pumped, Response, ResultSink, Sent};
use crate::handoff::{Exchange, ReplyMsg, Request, RequestBody, RequestHead};
use crate::http::date::DateCache;
use crate::log_debug;

/// A request at its end, for [`Worker::conclude`].
pub(super) struct Concluding<'a, 'py> {
    pub(super) head: &'a RequestHead,
    pub(super) taken: Option<std::time::Instant>,
    pub(super) started: std::time::Instant,
    pub(super) exchange: &'a Exchange,
    pub(super) environ: Option<Obj<'py>>,
    /// The application's result, closed here; `None` when the call failed.
    pub(super) result: Option<Obj<'py>>,
}

/// How serving one request ended.
pub(super) enum Outcome<'py> {
    Done,
    /// The client went away; the result was closed.
    Cancelled,
    Failed(PyErr<'py>),
}

/// One Python thread's own objects.
pub(super) struct Worker {
    pub(super) interp: Arc<Interp>,
    /// Owned by the capsule the three function objects below share: alive as long as
    /// they are, and so at least as long as this `Worker` (see [`Worker::cb`]).
    cb: std::ptr::NonNull<Callbacks>,
    pub(super) start_response: Held,
    pub(super) write: Held,
    pub(super) read_body: Held,
    pub(super) access_log: Option<ThreadLog>,
    /// `bytes` objects whose data the I/O threads wrote without a copy, to release here.
    pub(super) releases: Arc<ReleaseQueue>,
    /// Responses waiting for room, and the thread's wake channel.
    pub(super) parked: ParkedSet,
}

impl Worker {
    pub(super) fn new<'py>(
        gil: Gil<'py>,
        interp: Arc<Interp>,
        access_log: Option<&Arc<AccessLog>>,
    ) -> PyResult<'py, Worker> {
        let cb = Box::into_raw(Box::new(Callbacks {
            current: RefCell::new(None),
            next_token: Cell::new(1),
            date: RefCell::new(DateCache::new()),
            write: Cell::new(std::ptr::null_mut()),
            client_disconnected: Cell::new(interp.client_disconnected.ptr(gil)),
            keep_head: Cell::new(access_log.is_some_and(|log| log.needs_response_headers())),
        }));
        // SAFETY: the capsule takes ownership of the boxed `Callbacks` and frees it in its
        // destructor, when the last function object holding it is gone (an application may
        // keep `start_response` beyond this thread's life: the capsule must never dangle,
        // and it does not, since it owns what it points to). GIL held.
        let capsule = unsafe {
            let capsule = ffi::PyCapsule_New(
                cb.cast::<c_void>(),
                CAPSULE_NAME.as_ptr(),
                Some(free_callbacks),
            );
            if capsule.is_null() {
                drop(Box::from_raw(cb));
            }
            Obj::from_owned(gil, capsule)?
        };
        let cb = std::ptr::NonNull::new(cb).expect("Box::into_raw is never null");
        let start_response = new_function(gil, &START_RESPONSE, Some(&capsule))?.hold();
        let write = new_function(gil, &WRITE, Some(&capsule))?.hold();
        let read_body = new_function(gil, &READ_BODY, Some(&capsule))?.hold();
        // SAFETY: `cb` is alive: the capsule, held by the function objects, owns it.
        unsafe { cb.as_ref() }.write.set(write.ptr(gil));
        Ok(Worker {
            interp,
            cb,
            start_response,
            write,
            read_body,
            access_log: access_log.map(AccessLog::for_thread),
            releases: Arc::default(),
            parked: ParkedSet::new(),
        })
    }

    /// This thread's callback state.
    pub(super) fn cb(&self) -> &Callbacks {
        // SAFETY: the capsule owning it is held by `start_response`, `write` and
        // `read_body`, which this worker holds until `release` consumes it.
        unsafe { self.cb.as_ref() }
    }

    /// Releases the `bytes` objects the I/O threads are done writing.
    pub(super) fn release_written(&self, gil: Gil<'_>) {
        self.releases.drain(|obj| obj.release(gil));
    }

    pub(super) fn release(self, gil: Gil<'_>) {
        // The thread serves until its parked responses end (`thread::serve`).
        debug_assert!(self.parked.is_empty(), "a thread left parked responses");
        // Bodies still being written when the server stops are left to the interpreter's
        // end: only the ones already written come back here.
        self.releases.drain(|obj| obj.release(gil));
        let cb = self.cb();
        cb.client_disconnected.set(std::ptr::null_mut());
        // A `start_response` kept by the application may outlive `write`; it checks for
        // this before handing `write` out.
        cb.write.set(std::ptr::null_mut());
        self.start_response.release(gil);
        self.write.release(gil);
        self.read_body.release(gil);
    }

    pub(super) fn handle<'py>(&self, gil: Gil<'py>, request: Request) {
        let Request {
            head,
            body,
            encoder,
            started,
            queued: _,
            reply,
        } = request;
        let taken = crate::metrics::request_taken();
        let token = self.cb().next_token.get();
        self.cb().next_token.set(token + 1);
        let streaming = matches!(body, RequestBody::Stream);
        let exchange = reply.exchange.clone();
        *self.cb().current.borrow_mut() = Some(Response::new(reply, encoder, streaming, token));

        let stream_input = || {
            let token = gil.int(token as i64)?;
            self.interp
                .stream_input
                .bind(gil)
                .call(&[self.read_body.borrow(gil), token.borrow()])
        };
        let (environ, result, outcome) = match self.interp.environ(gil, &head, &body, stream_input)
        {
            Err(err) => (None, None, Outcome::Failed(err)),
            Ok(environ) => match self
                .interp
                .app
                .bind(gil)
                .call(&[environ.borrow(), self.start_response.borrow(gil)])
            {
                Err(err) => (Some(environ), None, Outcome::Failed(err)),
                Ok(result) => {
                    let sink = ResultSink {
                        cb: self.cb(),
                        interp: &self.interp,
                        releases: &self.releases,
                        wake: &self.parked.wake_tx,
                    };
                    let outcome = match sink.send(gil, &result, &exchange) {
                        Ok(Sent::Ended(true)) => Outcome::Done,
                        Ok(Sent::Ended(false)) => Outcome::Cancelled,
                        Ok(Sent::Parked { iter, is_head }) => {
                            let response = self.cb().current.borrow_mut().take();
                            let Some(response) = response else {
                                unreachable!("a parked response has its state")
                            };
                            self.parked.park(Parked {
                                head,
                                taken,
                                started,
                                environ: environ.hold(),
                                result: result.hold(),
                                iter: iter.hold(),
                                response,
                                is_head,
                            });
                            return;
                        }
                        Err(err) => Outcome::Failed(err),
                    };
                    (Some(environ), Some(result), outcome)
                }
            },
        };
        self.conclude(
            gil,
            Concluding {
                head: &head,
                taken,
                started,
                exchange: &exchange,
                environ,
                result,
            },
            outcome,
        );
    }

    /// Ends a request: the result's `close()` exactly once on every path (PEP 3333), the
    /// 500 or abort when the application failed, the metrics and the access log line.
    pub(super) fn conclude<'py>(
        &self,
        gil: Gil<'py>,
        req: Concluding<'_, 'py>,
        outcome: Outcome<'py>,
    ) {
        let Concluding {
            head,
            taken,
            started,
            exchange,
            environ,
            result,
        } = req;
        let peer = head.peer;
        let outcome = match result.as_ref().map(close_result) {
            None | Some(Ok(())) => outcome,
            Some(Err(err)) => match outcome {
                Outcome::Done => Outcome::Failed(err),
                other => {
                    self.report(gil, err, "exception in the response's close()");
                    other
                }
            },
        };
        drop(result);

        let request_line = || {
            format!(
                "{} {}",
                String::from_utf8_lossy(head.get(head.method)),
                String::from_utf8_lossy(head.get(head.target))
            )
        };
        let resp = match outcome {
            Outcome::Done => self.cb().current.borrow_mut().take(),
            Outcome::Cancelled => {
                log_debug!("{peer}: client gone during {}", request_line());
                self.cb().current.borrow_mut().take()
            }
            Outcome::Failed(err) if exchange.is_cancelled() => {
                // Most likely the app tripping over the client going away (a
                // ClientDisconnected from wsgi.input or write()): not an app error.
                log_debug!(
                    "{peer}: client gone during {}: {}",
                    request_line(),
                    err.summary()
                );
                self.cb().current.borrow_mut().take()
            }
            Outcome::Failed(err) => {
                self.report(
                    gil,
                    err,
                    &format!("exception in the application ({})", request_line()),
                );
                let mut resp = self.cb().current.borrow_mut().take();
                if let Some(resp) = &mut resp {
                    if resp.ended {
                        // The response went out whole (the failure came from close()):
                        // nothing more to send, and the connection may carry on.
                    } else if resp.encoder.headers_sent() {
                        // Too late for a 500: the client must not take a cut-short body
                        // for a whole one, so the connection closes.
                        resp.reply.send(ReplyMsg::Abort);
                    } else {
                        let out = resp.encoder.error(500, &mut self.cb().date.borrow_mut());
                        resp.reply.send(ReplyMsg::Data {
                            bytes: out.bytes,
                            end: true,
                            persistence: out.persistence,
                            counted: false,
                        });
                    }
                }
                resp
            }
        };
        let status = resp.as_ref().and_then(|r| r.encoder.status());
        crate::metrics::request_done(taken, started, head.get(head.method), status);
        if let (Some(log), Some(resp)) = (&self.access_log, &resp) {
            log.write(&Entry {
                head,
                status: resp.encoder.status().unwrap_or(0),
                body_bytes: resp.encoder.body_bytes(),
                elapsed: started.elapsed(),
                response_head: resp.kept_head.as_deref(),
                environ: environ.as_ref(),
                gil,
            });
        }
    }

    /// Resumes the parked responses that may go on (room in their window and the budget,
    /// or a client gone), each until it must wait again or ends; `around` runs each resume
    /// (the thread's watch and counts: a resume is the app's time, parked time is not).
    /// Cheap when nothing woke: one channel poll.
    pub(super) fn resume_woken(&self, gil: Gil<'_>, mut around: impl FnMut(&mut dyn FnMut())) {
        for parked in self.parked.take_woken() {
            let mut parked = Some(parked);
            around(&mut || self.resume(gil, parked.take()));
        }
    }

    fn resume(&self, gil: Gil<'_>, parked: Option<Parked>) {
        let Some(mut parked) = parked else { return };
        let exchange = parked.response.reply.exchange.clone();
        *self.cb().current.borrow_mut() = Some(parked.response);
        let iter = parked.iter.bind(gil);
        let pumped = pump(
            gil,
            self.cb(),
            &iter,
            &exchange,
            parked.is_head,
            &self.parked.wake_tx,
        );
        drop(iter);
        let outcome = match pumped {
            Ok(Pumped::Parked) => {
                let response = self.cb().current.borrow_mut().take();
                parked.response = response.expect("a parked response has its state");
                self.parked.park(parked);
                return;
            }
            Ok(Pumped::Ended(true)) => Outcome::Done,
            Ok(Pumped::Ended(false)) => Outcome::Cancelled,
            Err(err) => Outcome::Failed(err),
        };
        parked.iter.release(gil);
        let environ = parked.environ.bind(gil);
        parked.environ.release(gil);
        let result = parked.result.bind(gil);
        parked.result.release(gil);
        self.conclude(
            gil,
            Concluding {
                head: &parked.head,
                taken: parked.taken,
                started: parked.started,
                exchange: &exchange,
                environ: Some(environ),
                result: Some(result),
            },
            outcome,
        );
    }

    pub(super) fn report<'py>(&self, gil: Gil<'py>, err: PyErr<'py>, context: &str) {
        super::interp::report(gil, Some(&self.interp.report_exception), err, context);
    }
}

/// The capsule's destructor: frees the `Callbacks` it owns. CPython calls it when the
/// capsule is deallocated, with the GIL of its interpreter held.
unsafe extern "C" fn free_callbacks(capsule: *mut ffi::PyObject) {
    // SAFETY: `capsule` is one of ours (made in `Worker::new` with this destructor), whose
    // pointer came from `Box::into_raw`; it is freed once, here.
    unsafe {
        let ptr = ffi::PyCapsule_GetPointer(capsule, CAPSULE_NAME.as_ptr());
        if !ptr.is_null() {
            drop(Box::from_raw(ptr.cast::<Callbacks>()));
        } else {
            ffi::PyErr_Clear();
        }
    }
}
