//! The Python thread and the WSGI protocol proper (PEP 3333): call the application,
//! implement `start_response`, `write()` and streamed `wsgi.input`, iterate the result,
//! frame the response, and call `close()` exactly once on every path.
//!
//! `start_response`, `write` and the body reader are C functions (`METH_FASTCALL`) made
//! once per Python thread with `PyCFunction_NewEx`; their `self` is a capsule pointing to
//! that thread's [`Callbacks`]. No pyo3 statics and no `PyGILState_*` are involved, so the
//! same code serves the main interpreter and sub-interpreters.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use pyo3_ffi as ffi;

use super::environ::Interp;
use super::object::{Attached, Borrowed, Gil, Held, Obj, PyErr, PyResult, ReleaseQueue};
use super::{ServerInfo, StartError, ThreadInterp};
use crate::config::LogLevel;
use crate::handoff::{BodyChunk, BodyError, ReplyMsg, ReplyTo, Request, RequestBody};
use crate::http::date::DateCache;
use crate::http::response::{
    self, status_allows_body, HeadError, LengthMismatch, NotStarted, ResponseEncoder, ResponseHead,
};
use crate::http::Version;
use crate::{log_debug, log_warn};

const CAPSULE_NAME: &std::ffi::CStr = c"spindle.callbacks";

/// A response body of one `bytes` object at least this large is written from the object's
/// own memory instead of being copied behind the head: below it, the copy is cheaper than
/// a second piece to write and a release to send back.
const SHARE_BODY_MIN: usize = 16 * 1024;
/// How soon an idle Python thread releases the shared bodies the I/O threads are done with.
const RELEASE_INTERVAL: Duration = Duration::from_millis(10);

/// The response of the request a Python thread is serving.
struct Response {
    reply: ReplyTo,
    /// Status, headers and framing: the bytes on the wire.
    encoder: ResponseEncoder,
    /// The body is streamed and the app has not read it to the end (yet).
    input_pending: bool,
    /// The I/O thread said the streamed body is complete: no more asking.
    input_done: bool,
    /// The end of the response was sent: nothing more may go out for this request (an
    /// app writing from `close()` or from another thread gets an error, not another
    /// client's connection).
    ended: bool,
    /// The token `wsgi.input` must present (guards against use after the request).
    token: u64,
}

/// What went wrong building a response message (raised in Python as the given type).
enum BuildError {
    NoStartResponse,
    Ended,
}

impl Response {
    fn new(
        reply: ReplyTo,
        parsed: &crate::http::ParsedHead,
        streaming: bool,
        token: u64,
    ) -> Response {
        Response {
            reply,
            encoder: ResponseEncoder::new(
                parsed.version == Version::Http11,
                parsed.is_head,
                parsed.keep_alive,
            ),
            input_pending: streaming,
            input_done: false,
            ended: false,
            token,
        }
    }

    /// Builds the next message: the head when not yet sent, then `parts` framed.
    /// `known_total`: the whole body's length when the app gave it all at once.
    fn build(
        &mut self,
        parts: &[&[u8]],
        end: bool,
        known_total: Option<u64>,
        date: &mut DateCache,
    ) -> Result<ReplyMsg, BuildError> {
        if self.ended {
            return Err(BuildError::Ended);
        }
        if self.input_pending && !self.encoder.headers_sent() {
            // The app answers without reading the whole body: the connection cannot be
            // reused (the I/O thread closes it), so the head says so.
            self.encoder.close_after();
        }
        let encoded = self
            .encoder
            .build(parts, end, known_total, date)
            .map_err(|NotStarted| BuildError::NoStartResponse)?;
        self.ended = end;
        match encoded.mismatch {
            None => {}
            Some(LengthMismatch::Excess { declared }) => log_warn!(
                "the application sent more than its Content-Length ({declared}); the excess is dropped"
            ),
            Some(LengthMismatch::Short { sent, declared }) => log_warn!(
                "the application sent {sent} of its Content-Length {declared}; closing the connection"
            ),
        }
        Ok(ReplyMsg::Data {
            bytes: encoded.bytes,
            end,
            close: encoded.close,
            counted: !end,
        })
    }
}

/// Per-Python-thread state reached from the C callbacks through their capsule. Leaked on
/// purpose: an application may keep `start_response` beyond its thread's life, and the
/// capsule must never dangle. Only touched with the interpreter's GIL held, and no borrow
/// is ever held across a call into Python or a GIL release.
struct Callbacks {
    current: RefCell<Option<Response>>,
    next_token: Cell<u64>,
    date: RefCell<DateCache>,
    /// `write`, returned by `start_response` (set once at thread start).
    write: Cell<*mut ffi::PyObject>,
    /// `_spindle.ClientDisconnected` of this thread's interpreter.
    client_disconnected: Cell<*mut ffi::PyObject>,
}

impl Callbacks {
    /// `_spindle.ClientDisconnected` of this thread's interpreter.
    fn disconnected<'py>(&self, gil: Gil<'py>) -> Borrowed<'static, 'py> {
        let class = self.client_disconnected.get();
        if class.is_null() {
            // The thread stopped serving (its `Interp` may be gone): a builtin will do.
            // SAFETY: a builtin exception type.
            return unsafe { gil.builtin(ffi::PyExc_ConnectionResetError) };
        }
        // SAFETY: set at thread start from the `Interp`, which keeps the class alive until
        // `Worker::release` clears this pointer; the caller is attached to that interpreter.
        unsafe { Borrowed::from_ptr(gil, class) }
    }
}

/// A `PyMethodDef` CPython may read from any thread: its pointers are static C strings and
/// function pointers, never written after construction.
struct MethodDef(ffi::PyMethodDef);
// SAFETY: see the type's documentation: immutable data with 'static pointers.
unsafe impl Sync for MethodDef {}

static START_RESPONSE: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"start_response".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: start_response,
    },
    ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
    ml_doc: c"start_response(status, response_headers, exc_info=None) -> write (PEP 3333)".as_ptr(),
});
static WRITE: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"write".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFast: write,
    },
    ml_flags: ffi::METH_FASTCALL,
    ml_doc: c"write(data: bytes) -> None: send body bytes now (PEP 3333)".as_ptr(),
});
static READ_BODY: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"read_body".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFast: read_body,
    },
    ml_flags: ffi::METH_FASTCALL,
    ml_doc: c"read_body(token) -> bytes: the next piece of a streamed request body".as_ptr(),
});
static LOG: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"log".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFast: log,
    },
    ml_flags: ffi::METH_FASTCALL,
    ml_doc: c"log(level, text): one line in Spindle's log".as_ptr(),
});

fn new_function<'py>(
    gil: Gil<'py>,
    def: &'static MethodDef,
    slf: *mut ffi::PyObject,
) -> PyResult<'py, Obj<'py>> {
    // SAFETY: `def` is 'static and never written (CPython only reads it); `slf` is a live
    // object or NULL; GIL held.
    unsafe {
        Obj::from_owned(
            gil,
            ffi::PyCFunction_NewEx(
                std::ptr::from_ref(&def.0).cast_mut(),
                slf,
                std::ptr::null_mut(),
            ),
        )
    }
}

/// `_spindle.log`, made per interpreter.
pub(crate) fn log_function<'py>(gil: Gil<'py>) -> PyResult<'py, Obj<'py>> {
    new_function(gil, &LOG, std::ptr::null_mut())
}

/// Runs `f` as a C callback body: a Rust panic must never unwind into CPython.
fn guard<'py>(gil: Gil<'py>, f: impl FnOnce() -> PyResult<'py, Obj<'py>>) -> *mut ffi::PyObject {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(obj)) => obj.into_ptr(),
        Ok(Err(err)) => {
            err.restore();
            std::ptr::null_mut()
        }
        Err(_) => {
            // SAFETY: SystemError is a builtin type.
            let system_error = unsafe { gil.builtin(ffi::PyExc_SystemError) };
            gil.raise(
                system_error,
                "internal error in Spindle (a bug: please report it)",
            );
            std::ptr::null_mut()
        }
    }
}

/// # Safety
/// `slf` must be one of our capsules (CPython passes the `self` we gave PyCFunction_NewEx).
unsafe fn callbacks(slf: *mut ffi::PyObject) -> &'static Callbacks {
    // SAFETY: the capsule was made from a leaked `Callbacks` with CAPSULE_NAME.
    unsafe { &*(ffi::PyCapsule_GetPointer(slf, CAPSULE_NAME.as_ptr()) as *const Callbacks) }
}

/// Raises `ty(message)` and returns it as a `PyErr`.
fn raise<'py>(gil: Gil<'py>, ty: Borrowed<'_, 'py>, message: &str) -> PyErr<'py> {
    gil.raise(ty, message);
    PyErr::fetch(gil)
}

fn type_error<'py>(gil: Gil<'py>, message: &str) -> PyErr<'py> {
    // SAFETY: a builtin exception type.
    raise(gil, unsafe { gil.builtin(ffi::PyExc_TypeError) }, message)
}

fn value_error<'py>(gil: Gil<'py>, message: &str) -> PyErr<'py> {
    // SAFETY: a builtin exception type.
    raise(gil, unsafe { gil.builtin(ffi::PyExc_ValueError) }, message)
}

fn runtime_error<'py>(gil: Gil<'py>, message: &str) -> PyErr<'py> {
    // SAFETY: a builtin exception type.
    raise(
        gil,
        unsafe { gil.builtin(ffi::PyExc_RuntimeError) },
        message,
    )
}

/// The `ValueError` for a refused status or header. `field`: the header name, or the
/// status for [`HeadError::BadStatus`].
fn head_error<'py>(gil: Gil<'py>, error: HeadError, field: &[u8], value: &[u8]) -> PyErr<'py> {
    let name = String::from_utf8_lossy(field);
    let message = match error {
        HeadError::BadStatus => format!("status must look like '200 OK', got {name:?}"),
        HeadError::BadName => format!("invalid header name {name:?}"),
        HeadError::HopByHop => {
            format!("hop-by-hop header {name:?} is not allowed from a WSGI application (PEP 3333)")
        }
        HeadError::ControlChar => {
            format!("header {name:?} has a control character (CR, LF or NUL) in its value")
        }
        HeadError::ConflictingContentLength => "two different Content-Length headers".to_owned(),
        HeadError::BadContentLength => format!(
            "invalid Content-Length {:?}",
            std::str::from_utf8(value).unwrap_or("").trim()
        ),
    };
    value_error(gil, &message)
}

/// Checks `start_response`'s arguments' Python types and encodings; the bytes are validated
/// by [`ResponseHead`].
fn validate_start_response<'py>(
    gil: Gil<'py>,
    status: &Obj<'py>,
    headers: &Obj<'py>,
) -> PyResult<'py, ResponseHead> {
    if !status.is_str() {
        return Err(type_error(
            gil,
            &format!("status must be a str, not {}", status.type_name()),
        ));
    }
    let status_bytes = status
        .encode_latin1()
        .ok_or_else(|| value_error(gil, "status must be latin-1 text"))?;
    let mut head = ResponseHead::new(&status_bytes)
        .map_err(|error| head_error(gil, error, &status_bytes, b""))?;
    // SAFETY: a type check on a live object.
    if unsafe { ffi::PyList_Check(headers.as_ptr()) } == 0 {
        return Err(type_error(
            gil,
            &format!(
                "response_headers must be a list, not {}",
                headers.type_name()
            ),
        ));
    }
    let items = headers.iter()?;
    while let Some(item) = items.next()? {
        let pair = item
            .sequence_items()
            .filter(|p| p.len() == 2 && item.sequence_items().is_some());
        // SAFETY: a type check on a live object.
        let is_tuple = unsafe { ffi::PyTuple_Check(item.as_ptr()) } != 0;
        let Some(pair) = pair.filter(|_| is_tuple) else {
            return Err(type_error(
                gil,
                &format!(
                    "each header must be a (name, value) tuple, got {}",
                    item.type_name()
                ),
            ));
        };
        let (name, value) = (&pair[0], &pair[1]);
        if !name.is_str() || !value.is_str() {
            return Err(type_error(gil, "header names and values must be str"));
        }
        let name_bytes = name.encode_latin1().unwrap_or_default();
        let Some(value_bytes) = value.encode_latin1() else {
            // A bad name is reported before a value that is not latin-1.
            if let Err(error) = response::check_header_name(&name_bytes) {
                return Err(head_error(gil, error, &name_bytes, b""));
            }
            return Err(value_error(gil, "header values must be latin-1 text"));
        };
        if let Err(error) = head.push_header(&name_bytes, &value_bytes) {
            return Err(head_error(gil, error, &name_bytes, &value_bytes));
        }
    }
    Ok(head)
}

unsafe extern "C" fn start_response(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls us with the GIL held and `slf` our capsule.
    let gil = unsafe { Gil::assume() };
    // SAFETY: as above.
    let cb = unsafe { callbacks(slf) };
    guard(gil, || {
        // SAFETY: CPython passes `nargs` positional arguments followed by one value per
        // keyword name, all borrowed for the duration of the call.
        let (status, headers, exc_info) = unsafe {
            let nargs = ffi::PyVectorcall_NARGS(nargsf as usize) as usize;
            let nkw = if kwnames.is_null() {
                0
            } else {
                ffi::PyTuple_Size(kwnames) as usize
            };
            let all = std::slice::from_raw_parts(args, nargs + nkw);
            let mut exc_info = None;
            for i in 0..nkw {
                let name = Obj::from_borrowed_unchecked(
                    gil,
                    ffi::PyTuple_GetItem(kwnames, i as ffi::Py_ssize_t),
                );
                if name.as_str_utf8() == Some(b"exc_info") {
                    exc_info = Some(Obj::from_borrowed_unchecked(gil, all[nargs + i]));
                } else {
                    return Err(type_error(
                        gil,
                        "start_response() got an unexpected keyword argument",
                    ));
                }
            }
            if !(2..=3).contains(&nargs) || (nargs == 3 && exc_info.is_some()) {
                return Err(type_error(
                    gil,
                    "start_response() takes status, response_headers and an optional exc_info",
                ));
            }
            if nargs == 3 {
                exc_info = Some(Obj::from_borrowed_unchecked(gil, all[2]));
            }
            (
                Obj::from_borrowed_unchecked(gil, all[0]),
                Obj::from_borrowed_unchecked(gil, all[1]),
                exc_info,
            )
        };
        let exc_info = exc_info.filter(|e| !e.is_none());

        // Validate first (this may run Python code), then apply under a short borrow.
        let headers_sent = match cb.current.try_borrow() {
            Ok(current) => match current.as_ref() {
                Some(resp) if resp.ended => {
                    return Err(runtime_error(
                        gil,
                        "start_response() called after the response ended",
                    ))
                }
                Some(resp) => (resp.encoder.headers_sent(), resp.encoder.status().is_some()),
                None => {
                    return Err(runtime_error(
                        gil,
                        "start_response() called outside of a request",
                    ))
                }
            },
            Err(_) => return Err(runtime_error(gil, "start_response() called re-entrantly")),
        };
        match (&exc_info, headers_sent) {
            (Some(exc_info), (true, _)) => {
                // PEP 3333: with exc_info after the headers went out, re-raise it.
                let value = exc_info
                    .sequence_items()
                    .filter(|t| t.len() == 3)
                    .map(|t| t[1].clone())
                    .filter(|value| value.is_exception_instance());
                return Err(match value {
                    Some(value) => PyErr::from_instance(value),
                    None => type_error(
                        gil,
                        "exc_info must be a (type, value, traceback) tuple of a raised exception",
                    ),
                });
            }
            (None, (_, true)) => {
                // SAFETY: a builtin exception type.
                return Err(raise(
                    gil,
                    unsafe { gil.builtin(ffi::PyExc_AssertionError) },
                    "start_response() called a second time without exc_info (PEP 3333)",
                ));
            }
            _ => {}
        }
        let validated = validate_start_response(gil, &status, &headers)?;
        let Ok(mut current) = cb.current.try_borrow_mut() else {
            return Err(runtime_error(gil, "start_response() called re-entrantly"));
        };
        let Some(resp) = current.as_mut() else {
            return Err(runtime_error(
                gil,
                "start_response() called outside of a request",
            ));
        };
        resp.encoder.start(validated);
        drop(current);
        // SAFETY: `write` was set at thread start to a function object we keep alive.
        Ok(unsafe { Obj::from_borrowed_unchecked(gil, cb.write.get()) })
    })
}

unsafe extern "C" fn write(
    slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls us with the GIL held and `slf` our capsule.
    let gil = unsafe { Gil::assume() };
    // SAFETY: as above.
    let cb = unsafe { callbacks(slf) };
    guard(gil, || {
        // SAFETY: CPython passes `nargs` borrowed positional arguments.
        let data = unsafe {
            if ffi::PyVectorcall_NARGS(nargsf as usize) != 1 {
                return Err(type_error(gil, "write() takes exactly one bytes argument"));
            }
            Obj::from_borrowed_unchecked(gil, *args)
        };
        let Some(bytes) = data.as_bytes() else {
            return Err(type_error(
                gil,
                &format!("write() takes bytes, not {}", data.type_name()),
            ));
        };
        match emit(gil, cb, &[bytes], false, None) {
            Ok(true) => Ok(gil.none()),
            Ok(false) => Err(raise(gil, cb.disconnected(gil), "the client disconnected")),
            Err(err) => Err(err),
        }
    })
}

/// Sends body bytes (and the head first, if not yet sent). Blocks, with the GIL released,
/// while the exchange's window is full. `Ok(false)`: the client is gone.
fn emit<'py>(
    gil: Gil<'py>,
    cb: &Callbacks,
    parts: &[&[u8]],
    end: bool,
    known_total: Option<u64>,
) -> PyResult<'py, bool> {
    let (msg, exchange) = {
        let Ok(mut current) = cb.current.try_borrow_mut() else {
            return Err(runtime_error(gil, "response written re-entrantly"));
        };
        let Some(resp) = current.as_mut() else {
            return Err(runtime_error(gil, "write() called outside of a request"));
        };
        if resp.reply.exchange.is_cancelled() {
            return Ok(false);
        }
        let msg = match resp.build(parts, end, known_total, &mut cb.date.borrow_mut()) {
            Ok(msg) => msg,
            Err(BuildError::NoStartResponse) => {
                // SAFETY: a builtin exception type.
                return Err(raise(
                    gil,
                    unsafe { gil.builtin(ffi::PyExc_AssertionError) },
                    "the application produced body data before calling start_response()",
                ));
            }
            Err(BuildError::Ended) => {
                return Err(runtime_error(
                    gil,
                    "write() called after the response ended",
                ));
            }
        };
        let len = match &msg {
            ReplyMsg::Data {
                bytes,
                counted: true,
                ..
            } => bytes.len(),
            _ => 0,
        };
        // Only counted bytes wait for the window, and only ever with the GIL released
        // (below): the end of a response never waits.
        if len == 0 {
            resp.reply.send(msg);
            return Ok(true);
        }
        if resp.reply.exchange.try_reserve(len) {
            resp.reply.send(msg);
            return Ok(true);
        }
        (msg, resp.reply.exchange.clone())
    };
    let len = match &msg {
        ReplyMsg::Data { bytes, .. } => bytes.len(),
        _ => 0,
    };
    if !gil.allow_threads(|| exchange.reserve(len)) {
        return Ok(false);
    }
    match cb
        .current
        .try_borrow()
        .ok()
        .as_ref()
        .and_then(|c| c.as_ref())
    {
        Some(resp) => resp.reply.send(msg),
        None => return Err(runtime_error(gil, "the request ended while writing")),
    }
    Ok(true)
}

unsafe extern "C" fn read_body(
    slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls us with the GIL held and `slf` our capsule.
    let gil = unsafe { Gil::assume() };
    // SAFETY: as above.
    let cb = unsafe { callbacks(slf) };
    guard(gil, || {
        // SAFETY: CPython passes `nargs` borrowed positional arguments.
        let token = unsafe {
            if ffi::PyVectorcall_NARGS(nargsf as usize) != 1 {
                return Err(type_error(gil, "read_body(token)"));
            }
            Obj::from_borrowed_unchecked(gil, *args)
        }
        .as_i64()?;
        let exchange = {
            let current = cb
                .current
                .try_borrow()
                .map_err(|_| runtime_error(gil, "wsgi.input read re-entrantly"))?;
            match current.as_ref() {
                Some(resp) if resp.token == token as u64 && !resp.ended => {
                    if resp.input_done {
                        return gil.bytes(b"");
                    }
                    resp.reply.send(ReplyMsg::ReadBody);
                    resp.reply.exchange.clone()
                }
                _ => {
                    return Err(runtime_error(
                        gil,
                        "wsgi.input read after its response ended (or from another request)",
                    ))
                }
            }
        };
        let chunk = gil.allow_threads(|| loop {
            match exchange.recv_body(Duration::from_millis(100)) {
                Some(chunk) => break chunk,
                None if exchange.is_cancelled() => break BodyChunk::Error(BodyError::Disconnected),
                None => {}
            }
        });
        let mark_done = || {
            if let Ok(mut current) = cb.current.try_borrow_mut() {
                if let Some(resp) = current.as_mut() {
                    resp.input_pending = false;
                    resp.input_done = true;
                }
            }
        };
        match chunk {
            BodyChunk::Data { bytes, last } => {
                if last {
                    // Read to the end (e.g. read(CONTENT_LENGTH)): the connection stays
                    // reusable without another round trip.
                    mark_done();
                }
                gil.bytes(&bytes)
            }
            BodyChunk::End => {
                mark_done();
                gil.bytes(b"")
            }
            BodyChunk::Error(err) => Err(raise(gil, cb.disconnected(gil), &err.to_string())),
        }
    })
}

unsafe extern "C" fn log(
    _slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls us with the GIL held.
    let gil = unsafe { Gil::assume() };
    guard(gil, || {
        // SAFETY: CPython passes `nargs` borrowed positional arguments.
        let (level, text) = unsafe {
            if ffi::PyVectorcall_NARGS(nargsf as usize) != 2 {
                return Err(type_error(gil, "log(level, text)"));
            }
            let all = std::slice::from_raw_parts(args, 2);
            (
                Obj::from_borrowed_unchecked(gil, all[0]),
                Obj::from_borrowed_unchecked(gil, all[1]),
            )
        };
        let level = match level.as_i64()? {
            0 => LogLevel::Error,
            1 => LogLevel::Warn,
            2 => LogLevel::Info,
            _ => LogLevel::Debug,
        };
        let text = text
            .as_str_utf8()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        crate::log_at!(level, "{text}");
        Ok(gil.none())
    })
}

/// How serving one request ended.
enum Outcome<'py> {
    Done,
    /// The client went away; the result was closed.
    Cancelled,
    Failed(PyErr<'py>),
}

/// One Python thread's own objects.
struct Worker {
    interp: Arc<Interp>,
    cb: &'static Callbacks,
    start_response: Held,
    write: Held,
    read_body: Held,
    access_log: bool,
    /// `bytes` objects whose data the I/O threads wrote without a copy, to release here.
    releases: Arc<ReleaseQueue>,
}

impl Worker {
    fn new(gil: Gil<'_>, interp: Arc<Interp>, access_log: bool) -> PyResult<'_, Worker> {
        let cb: &'static Callbacks = Box::leak(Box::new(Callbacks {
            current: RefCell::new(None),
            next_token: Cell::new(1),
            date: RefCell::new(DateCache::new()),
            write: Cell::new(std::ptr::null_mut()),
            client_disconnected: Cell::new(interp.client_disconnected.ptr(gil)),
        }));
        // SAFETY: the capsule points to a leaked (never freed) `Callbacks`; GIL held.
        let capsule = unsafe {
            Obj::from_owned(
                gil,
                ffi::PyCapsule_New(
                    std::ptr::from_ref(cb).cast_mut().cast::<c_void>(),
                    CAPSULE_NAME.as_ptr(),
                    None,
                ),
            )?
        };
        let start_response = new_function(gil, &START_RESPONSE, capsule.as_ptr())?.hold();
        let write = new_function(gil, &WRITE, capsule.as_ptr())?.hold();
        let read_body = new_function(gil, &READ_BODY, capsule.as_ptr())?.hold();
        cb.write.set(write.ptr(gil));
        Ok(Worker {
            interp,
            cb,
            start_response,
            write,
            read_body,
            access_log,
            releases: Arc::default(),
        })
    }

    /// Releases the `bytes` objects the I/O threads are done writing.
    fn release_written(&self, gil: Gil<'_>) {
        self.releases.drain(gil);
    }

    fn release(self, gil: Gil<'_>) {
        // Bodies still being written when the server stops are left to the interpreter's
        // end: only the ones already written come back here.
        self.releases.drain(gil);
        self.cb.client_disconnected.set(std::ptr::null_mut());
        self.start_response.release(gil);
        self.write.release(gil);
        self.read_body.release(gil);
    }

    fn handle<'py>(&self, gil: Gil<'py>, request: Request) {
        let Request {
            head,
            parsed,
            body,
            peer,
            local,
            started,
            reply,
        } = request;
        let token = self.cb.next_token.get();
        self.cb.next_token.set(token + 1);
        let streaming = matches!(body, RequestBody::Stream);
        let exchange = reply.exchange.clone();
        *self.cb.current.borrow_mut() = Some(Response::new(reply, &parsed, streaming, token));

        let stream_input = || {
            let token = gil.int(token as i64)?;
            self.interp
                .stream_input
                .bind(gil)
                .call(&[self.read_body.borrow(gil), token.borrow()])
        };
        let outcome =
            match self
                .interp
                .environ(gil, &head, &parsed, &body, peer, local, stream_input)
            {
                Err(err) => Outcome::Failed(err),
                Ok(environ) => {
                    let app = self.interp.app.bind(gil);
                    match app.call(&[environ.borrow(), self.start_response.borrow(gil)]) {
                        Err(err) => Outcome::Failed(err),
                        Ok(result) => {
                            let outcome = self.drain(gil, &result, &exchange);
                            // close() exactly once, on every path (PEP 3333).
                            match (close_result(&result), outcome) {
                                (Err(err), Outcome::Done) => Outcome::Failed(err),
                                (Err(err), other) => {
                                    self.report(gil, err, "exception in the response's close()");
                                    other
                                }
                                (Ok(()), other) => other,
                            }
                        }
                    }
                }
            };

        let request_line = || {
            format!(
                "{} {}",
                String::from_utf8_lossy(parsed.method.get(&head)),
                String::from_utf8_lossy(parsed.target.get(&head))
            )
        };
        // The server answered with its own 500 (what the access log shows).
        let mut sent_500 = false;
        let resp = match outcome {
            Outcome::Done => self.cb.current.borrow_mut().take(),
            Outcome::Cancelled => {
                log_debug!("{peer}: client gone during {}", request_line());
                self.cb.current.borrow_mut().take()
            }
            Outcome::Failed(err) if exchange.is_cancelled() => {
                // Most likely the app tripping over the client going away (a
                // ClientDisconnected from wsgi.input or write()): not an app error.
                log_debug!(
                    "{peer}: client gone during {}: {}",
                    request_line(),
                    err.summary()
                );
                self.cb.current.borrow_mut().take()
            }
            Outcome::Failed(err) => {
                self.report(
                    gil,
                    err,
                    &format!("exception in the application ({})", request_line()),
                );
                let resp = self.cb.current.borrow_mut().take();
                if let Some(resp) = &resp {
                    if resp.ended {
                        // The response went out whole (the failure came from close()):
                        // nothing more to send, and the connection may carry on.
                    } else if resp.encoder.headers_sent() {
                        // Too late for a 500: the client must not take a cut-short body
                        // for a whole one, so the connection closes.
                        resp.reply.send(ReplyMsg::Abort);
                    } else {
                        let mut out = Vec::new();
                        response::error_response(&mut out, 500, self.cb.date.borrow_mut().get());
                        resp.reply.send(ReplyMsg::Data {
                            bytes: out,
                            end: true,
                            close: true,
                            counted: false,
                        });
                        sent_500 = true;
                    }
                }
                resp
            }
        };
        if self.access_log {
            if let Some(resp) = resp {
                let version = if resp.encoder.http11() { "1.1" } else { "1.0" };
                let status = if sent_500 {
                    Some(500)
                } else {
                    resp.encoder.status()
                };
                crate::log_at!(
                    LogLevel::Info,
                    "{peer} \"{} HTTP/{version}\" {} {} {:.3}ms",
                    request_line(),
                    status.unwrap_or(0),
                    resp.encoder.body_bytes(),
                    started.elapsed().as_secs_f64() * 1e3
                );
            }
        }
    }

    fn report<'py>(&self, gil: Gil<'py>, err: PyErr<'py>, context: &str) {
        super::report(gil, Some(&self.interp.report_exception), err, context);
    }

    /// Sends the application's result.
    fn drain<'py>(
        &self,
        gil: Gil<'py>,
        result: &Obj<'py>,
        exchange: &crate::handoff::Exchange,
    ) -> Outcome<'py> {
        match self.drain_inner(gil, result, exchange) {
            Ok(true) => Outcome::Done,
            Ok(false) => Outcome::Cancelled,
            Err(err) => Outcome::Failed(err),
        }
    }

    /// The whole response at once, its body written from `body`'s own memory (see
    /// [`ReplyMsg::Whole`]). `Ok(None)`: not possible for this response (a HEAD, a status
    /// without body, a Content-Length that differs, headers already sent); copy instead.
    fn emit_shared<'py>(&self, body: &Obj<'py>) -> PyResult<'py, Option<bool>> {
        let Ok(mut current) = self.cb.current.try_borrow_mut() else {
            return Ok(None);
        };
        let Some(resp) = current.as_mut() else {
            return Ok(None);
        };
        let Some(n) = body.as_bytes().map(|b| b.len() as u64) else {
            return Ok(None);
        };
        let encoder = &resp.encoder;
        let fits = !resp.ended
            && !encoder.headers_sent()
            && !encoder.is_head()
            && encoder.status().is_some_and(status_allows_body)
            && encoder
                .content_length()
                .is_none_or(|declared| declared == n);
        if !fits {
            return Ok(None);
        }
        if resp.reply.exchange.is_cancelled() {
            return Ok(Some(false));
        }
        let Some(shared) = body.share_bytes(&self.releases) else {
            return Ok(None);
        };
        let mut date = self.cb.date.borrow_mut();
        // The head, framed for `n` bytes; the body is counted as sent, and the end adds
        // nothing (Content-Length framing) but settles `close`.
        let head = match resp.build(&[], false, Some(n), &mut date) {
            Ok(ReplyMsg::Data { bytes, .. }) => bytes,
            _ => return Ok(None),
        };
        resp.encoder.count_body_bytes(n);
        let close = match resp.build(&[], true, None, &mut date) {
            Ok(ReplyMsg::Data { close, .. }) => close,
            _ => true,
        };
        resp.reply.send(ReplyMsg::Whole {
            head,
            body: bytes::Bytes::from_owner(shared),
            close,
        });
        Ok(Some(true))
    }

    fn drain_inner<'py>(
        &self,
        gil: Gil<'py>,
        result: &Obj<'py>,
        exchange: &crate::handoff::Exchange,
    ) -> PyResult<'py, bool> {
        // Fast path: a list or tuple of bytes (`return [body]`): one message, head and body
        // together, with a Content-Length the app did not have to compute.
        if let Some(items) = result.sequence_items() {
            let mut parts = Vec::with_capacity(items.len());
            for item in &items {
                match item.as_bytes() {
                    Some(bytes) => parts.push(bytes),
                    None => {
                        return Err(type_error(
                            gil,
                            &format!(
                                "the response iterable must yield bytes, not {}",
                                item.type_name()
                            ),
                        ))
                    }
                }
            }
            if let [only] = items.as_slice() {
                if parts[0].len() >= SHARE_BODY_MIN {
                    if let Some(sent) = self.emit_shared(only)? {
                        return Ok(sent);
                    }
                }
            }
            let total = parts.iter().map(|p| p.len() as u64).sum();
            return emit(gil, self.cb, &parts, true, Some(total));
        }

        if result.is_exact_instance(self.interp.file_wrapper.ptr(gil)) {
            let source = self.interp.file_source.bind(gil).call(&[result.borrow()])?;
            if !source.is_none() {
                return self.send_file(gil, &source);
            }
        }

        let iter = result.iter()?;
        let is_head = self
            .cb
            .current
            .borrow()
            .as_ref()
            .is_some_and(|r| r.encoder.is_head());
        while let Some(chunk) = iter.next()? {
            if exchange.is_cancelled() {
                return Ok(false);
            }
            let Some(bytes) = chunk.as_bytes() else {
                return Err(type_error(
                    gil,
                    &format!(
                        "the response iterable must yield bytes, not {}",
                        chunk.type_name()
                    ),
                ));
            };
            if bytes.is_empty() {
                continue;
            }
            if !emit(gil, self.cb, &[bytes], false, None)? {
                return Ok(false);
            }
            if is_head {
                // The head is out and no body may follow: stop pulling.
                break;
            }
        }
        let nothing_sent = self
            .cb
            .current
            .borrow()
            .as_ref()
            .is_some_and(|r| !r.encoder.headers_sent());
        emit(gil, self.cb, &[], true, nothing_sent.then_some(0))
    }

    /// `wsgi.file_wrapper` over a regular file: the head, then the file by sendfile on the
    /// I/O thread, from a duplicate of its descriptor.
    fn send_file<'py>(&self, gil: Gil<'py>, source: &Obj<'py>) -> PyResult<'py, bool> {
        let items = source
            .sequence_items()
            .filter(|s| s.len() == 3)
            .ok_or_else(|| type_error(gil, "file_source"))?;
        let fd = items[0].as_i64()? as i32;
        let offset = items[1].as_i64()?.max(0) as u64;
        let mut len = items[2].as_i64()?.max(0) as u64;
        let (app_length, bodyless) = {
            let current = self.cb.current.borrow();
            let resp = current
                .as_ref()
                .ok_or_else(|| runtime_error(gil, "no request"))?;
            (
                resp.encoder.content_length(),
                resp.encoder.is_head()
                    || resp
                        .encoder
                        .status()
                        .is_some_and(|s| !status_allows_body(s)),
            )
        };
        if let Some(n) = app_length {
            len = len.min(n);
        }
        // The head (with the length), then the file, then the end marker.
        if !emit(gil, self.cb, &[], false, Some(len))? {
            return Ok(false);
        }
        if !bodyless && len > 0 {
            // SAFETY: dup of a descriptor the file object owns and keeps open during this
            // call; the duplicate is ours alone and closed when the `File` drops.
            let dup = unsafe { libc::dup(fd) };
            if dup < 0 {
                let err = std::io::Error::last_os_error();
                // SAFETY: a builtin exception type.
                return Err(raise(
                    gil,
                    unsafe { gil.builtin(ffi::PyExc_OSError) },
                    &format!("dup: {err}"),
                ));
            }
            // SAFETY: `dup` is a fresh descriptor nobody else owns.
            let file = unsafe { std::fs::File::from_raw_fd(dup) };
            let mut current = self.cb.current.borrow_mut();
            if let Some(resp) = current.as_mut() {
                resp.encoder.count_body_bytes(len);
                resp.reply.send(ReplyMsg::File { file, offset, len });
            }
        }
        emit(gil, self.cb, &[], true, None)
    }
}

/// Calls `result.close()` if it has one.
fn close_result<'py>(result: &Obj<'py>) -> PyResult<'py, ()> {
    if result.hasattr(c"close") {
        result.call_method0(c"close")?;
    }
    Ok(())
}

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
        ThreadInterp::Sub {
            config,
            info,
            report_import_errors,
        } => {
            run_sub_interpreter(
                &config,
                &info,
                report_import_errors,
                &requests,
                ready,
                access_log,
                main_tstate,
            );
        }
    }
    std::mem::forget(attached);
    end_thread_state(main_tstate);
}

/// Creates this thread's own-GIL sub-interpreter (PEP 684), imports the application in it,
/// serves, and ends it. On return the thread's main-interpreter state is attached again.
#[cfg(Py_3_12)]
fn run_sub_interpreter(
    config: &crate::config::Config,
    info: &ServerInfo,
    report_import_errors: bool,
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
        let setup = super::prepare_sys_path(gil, config)
            .map_err(|e| anyhow::anyhow!("cannot set sys.path: {}", e.summary()))
            .and_then(|()| Interp::new(gil, config, info, report_import_errors));
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
    _config: &crate::config::Config,
    _info: &ServerInfo,
    _report_import_errors: bool,
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
