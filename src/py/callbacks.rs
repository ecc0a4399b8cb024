//! The C functions an application calls: `start_response` (PEP 3333: validates the
//! status and headers, then hands them to the response encoder), `write`, the body reader
//! behind `wsgi.input`, and `_spindle.log`.
//!
//! They are `METH_FASTCALL` functions made once per Python thread with
//! `PyCFunction_NewEx`; their `self` is a capsule pointing to that thread's [`Callbacks`].
//! No pyo3 statics and no `PyGILState_*` are involved, so the same code serves the main
//! interpreter and sub-interpreters.

use std::time::Duration;

use pyo3_ffi as ffi;

use super::object::{
    guard, raise, runtime_error, type_error, value_error, Gil, MethodDef, Obj, PyErr, PyResult,
};
use super::response::{emit, Callbacks};
use crate::handoff::{BodyChunk, BodyError, ReplyMsg};
use crate::http::response::{self, HeadError, ResponseHead};

pub(super) const CAPSULE_NAME: &std::ffi::CStr = c"spindle.callbacks";

pub(super) static START_RESPONSE: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"start_response".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: start_response,
    },
    ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
    ml_doc: c"start_response(status, response_headers, exc_info=None) -> write (PEP 3333)".as_ptr(),
});
pub(super) static WRITE: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"write".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFast: write,
    },
    ml_flags: ffi::METH_FASTCALL,
    ml_doc: c"write(data: bytes) -> None: send body bytes now (PEP 3333)".as_ptr(),
});
pub(super) static READ_BODY: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"read_body".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFast: read_body,
    },
    ml_flags: ffi::METH_FASTCALL,
    ml_doc: c"read_body(token, buffer) -> int: copies the streamed request body's next bytes into buffer (0 at its end)".as_ptr(),
});

/// The `Callbacks` a capsule owns, for the duration of one call of a function object
/// holding that capsule.
///
/// # Safety
/// `slf` must be one of our capsules (CPython passes the `self` we gave PyCFunction_NewEx),
/// and the result must not outlive the call: the capsule frees the `Callbacks` when the
/// last function object holding it goes away.
pub(super) unsafe fn callbacks<'a>(slf: *mut ffi::PyObject) -> &'a Callbacks {
    // SAFETY: the capsule was made in `Worker::new` from a boxed `Callbacks` with
    // CAPSULE_NAME, and the function object being called holds the capsule.
    unsafe { &*(ffi::PyCapsule_GetPointer(slf, CAPSULE_NAME.as_ptr()) as *const Callbacks) }
}

/// The `ValueError` for a refused status or header. `field`: the header name, or the
/// status for [`HeadError::BadStatus`].
pub(super) fn head_error<'py>(
    gil: Gil<'py>,
    error: HeadError,
    field: &[u8],
    value: &[u8],
) -> PyErr<'py> {
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
pub(super) fn validate_start_response<'py>(
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
    // Borrowed, not copied, as the headers below (an ASCII str is read in place): the head's
    // buffer is start_response's one allocation. Copying each string cost about 1,700
    // instructions per hello request.
    let status_text = status
        .latin1()
        .ok_or_else(|| value_error(gil, "status must be latin-1 text"))?;
    let status_bytes = status_text.bytes();
    let mut head = ResponseHead::new(status_bytes)
        .map_err(|error| head_error(gil, error, status_bytes, b""))?;
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
    let mut push = |item: Obj<'py>| -> PyResult<'py, ()> {
        let Some((name, value)) = item.tuple_pair() else {
            return Err(type_error(
                gil,
                &format!(
                    "each header must be a (name, value) tuple, got {}",
                    item.type_name()
                ),
            ));
        };
        if !name.is_str() || !value.is_str() {
            return Err(type_error(gil, "header names and values must be str"));
        }
        let name_text = name.latin1();
        let name_bytes = name_text.as_ref().map_or(&b""[..], |text| text.bytes());
        let Some(value_text) = value.latin1() else {
            // A bad name is reported before a value that is not latin-1.
            if let Err(error) = response::check_header_name(name_bytes) {
                return Err(head_error(gil, error, name_bytes, b""));
            }
            return Err(value_error(gil, "header values must be latin-1 text"));
        };
        let value_bytes = value_text.bytes();
        head.push_header(name_bytes, value_bytes)
            .map_err(|error| head_error(gil, error, name_bytes, value_bytes))
    };
    // An exact list (nearly always) is read by index: its iterator cost about 330
    // instructions per request (callgrind). Nothing in `push` runs Python code, so the list
    // cannot change under the loop.
    // SAFETY: a type check on a live object.
    if unsafe { ffi::PyList_CheckExact(headers.as_ptr()) } != 0 {
        let mut index = 0;
        while let Some(item) = headers.exact_list_item(index) {
            push(item)?;
            index += 1;
        }
    } else {
        let items = headers.iter()?;
        while let Some(item) = items.next()? {
            push(item)?;
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
        if cb.keep_head.get() {
            // An access log format names a response header (`%({name}o)s`).
            resp.kept_head = Some(validated.as_bytes().to_vec());
        }
        resp.encoder.start(validated);
        drop(current);
        let write = cb.write.get();
        if write.is_null() {
            // Only once the thread stopped serving, and then no request is current.
            return Err(runtime_error(
                gil,
                "start_response() called outside of a request",
            ));
        }
        // SAFETY: `write` is set at thread start to a function object the worker keeps
        // alive, and cleared before the worker lets it go.
        Ok(unsafe { Obj::from_borrowed_unchecked(gil, write) })
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
        let (token, buffer) = unsafe {
            if ffi::PyVectorcall_NARGS(nargsf as usize) != 2 {
                return Err(type_error(gil, "read_body(token, buffer)"));
            }
            (
                Obj::from_borrowed_unchecked(gil, *args),
                Obj::from_borrowed_unchecked(gil, *args.add(1)),
            )
        };
        let token = token.as_i64()? as u64;
        let stale = || {
            runtime_error(
                gil,
                "wsgi.input read after its response ended (or from another request)",
            )
        };
        // The piece to copy from: what is left of the last one, taken out of the response so
        // that no borrow is held while the buffer is filled (a `__buffer__` may run Python),
        // or the next one from the I/O thread. After the response ended, what was read
        // already and the end are still there (a `close()` may drain the input); only asking
        // for more needs the response live.
        let asked = {
            let mut current = cb
                .current
                .try_borrow_mut()
                .map_err(|_| runtime_error(gil, "wsgi.input read re-entrantly"))?;
            match current.as_mut() {
                Some(resp) if resp.token == token && resp.input_busy => {
                    return Err(runtime_error(gil, "wsgi.input read re-entrantly"));
                }
                Some(resp) if resp.token == token => {
                    resp.input_busy = true;
                    if !resp.input_piece.is_empty() {
                        Ok(std::mem::take(&mut resp.input_piece))
                    } else if resp.input_done {
                        resp.input_busy = false;
                        return gil.int(0);
                    } else if resp.ended {
                        resp.input_busy = false;
                        return Err(stale());
                    } else {
                        resp.reply.send(ReplyMsg::ReadBody);
                        Err(resp.reply.exchange.clone())
                    }
                }
                _ => return Err(stale()),
            }
        };
        // From here on the read is under way; whatever way it ends, it ends the busy mark.
        let _reading = Reading { cb, token };
        let mark_done = || {
            if let Ok(mut current) = cb.current.try_borrow_mut() {
                if let Some(resp) = current.as_mut().filter(|r| r.token == token) {
                    resp.input_pending = false;
                    resp.input_done = true;
                }
            }
        };
        let mut piece = match asked {
            Ok(piece) => piece,
            Err(exchange) => {
                let chunk = gil.allow_threads(|| loop {
                    match exchange.recv_body(Duration::from_millis(100)) {
                        Some(chunk) => break chunk,
                        None if exchange.is_cancelled() => {
                            break BodyChunk::Error(BodyError::Disconnected)
                        }
                        None => {}
                    }
                });
                match chunk {
                    BodyChunk::Data { piece, last } => {
                        if last {
                            // Read to the end (e.g. read(CONTENT_LENGTH)): the connection
                            // stays reusable without another round trip.
                            mark_done();
                        }
                        piece
                    }
                    BodyChunk::End => {
                        mark_done();
                        return gil.int(0);
                    }
                    BodyChunk::Error(err) => {
                        return Err(raise(gil, cb.disconnected(gil), &err.to_string()))
                    }
                }
            }
        };
        // The piece's one copy on the Python side, into the reader's buffer.
        let copied = buffer.with_writable_bytes(|out| piece.read(out));
        if !piece.is_empty() {
            // What is left (all of it, if the buffer was refused) waits for the next read.
            // Only this thread's loop replaces the current request, and it is here: the
            // token check only guards against a caller on another thread.
            if let Ok(mut current) = cb.current.try_borrow_mut() {
                if let Some(resp) = current.as_mut().filter(|r| r.token == token) {
                    resp.input_piece = piece;
                }
            }
        }
        gil.int(copied? as i64)
    })
}

/// Ends a `read_body`'s busy mark on its request, however the read ends.
struct Reading<'a> {
    cb: &'a Callbacks,
    token: u64,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        if let Ok(mut current) = self.cb.current.try_borrow_mut() {
            if let Some(resp) = current.as_mut().filter(|r| r.token == self.token) {
                resp.input_busy = false;
            }
        }
    }
}
