//! One response as the Python thread produces it: the application's result iterated (a
//! list of `bytes` in one message, a large body shared without a copy, a file by sendfile,
//! anything else piece by piece), each piece framed by the response encoder and pushed to
//! the I/O thread, waiting for the window with the GIL released; and [`Callbacks`], the
//! thread's state the C functions of `callbacks.rs` reach through their capsule.

use std::cell::{Cell, RefCell};
use std::os::fd::FromRawFd;
use std::sync::Arc;

use crossbeam_channel::Sender;
use pyo3_ffi as ffi;

use super::interp::Interp;
use super::object::{
    raise, runtime_error, type_error, Borrowed, Gil, Obj, PyErr, PyResult, ReleaseQueue,
};
use crate::handoff::{BodyPiece, Exchange, ReplyMsg, ReplyTo, Reserve, ResponseEncoder};
use crate::http::date::DateCache;
use crate::http::response::{status_allows_body, Encoded, LengthMismatch, NotStarted};
use crate::http::Persistence;
use crate::log_warn;

/// A response body of one `bytes` object at least this large is written from the object's
/// own memory instead of being copied behind the head: below it, the copy is cheaper than
/// a second piece to write and a release to send back.
pub(super) const SHARE_BODY_MIN: usize = 16 * 1024;

/// The response of the request a Python thread is serving.
pub(super) struct Response {
    pub(super) reply: ReplyTo,
    /// Status, headers and framing: the bytes on the wire.
    pub(super) encoder: ResponseEncoder,
    /// The body is streamed and the app has not read it to the end (yet).
    pub(super) input_pending: bool,
    /// The I/O thread said the streamed body is complete: no more asking.
    pub(super) input_done: bool,
    /// What `wsgi.input` has not read of the last piece of the streamed body: reads copy
    /// from here into the caller's buffer, and ask for the next piece only when it is used
    /// up (`callbacks.rs`, `read_body`).
    pub(super) input_piece: BodyPiece,
    /// A `read_body` of this request is under way (it holds the piece, or waits for one): a
    /// second one, from a `__buffer__` or another thread, is refused rather than reading
    /// ahead of it.
    pub(super) input_busy: bool,
    /// The end of the response was sent: nothing more may go out for this request (an
    /// app writing from `close()` or from another thread gets an error, not another
    /// client's connection).
    pub(super) ended: bool,
    /// The token `wsgi.input` must present (guards against use after the request).
    pub(super) token: u64,
    /// The status and headers as the application gave them, kept for the access log
    /// when its format names a response header.
    pub(super) kept_head: Option<Vec<u8>>,
}

/// What went wrong building a response message (raised in Python as the given type).
pub(super) enum BuildError {
    NoStartResponse,
    Ended,
}

impl Response {
    pub(super) fn new(
        reply: ReplyTo,
        encoder: ResponseEncoder,
        streaming: bool,
        token: u64,
    ) -> Response {
        Response {
            reply,
            encoder,
            input_pending: streaming,
            input_done: false,
            input_piece: BodyPiece::default(),
            input_busy: false,
            ended: false,
            token,
            kept_head: None,
        }
    }

    /// Builds the next message: the head when not yet sent, then `parts` framed.
    /// `known_total`: the whole body's length when the app gave it all at once.
    pub(super) fn build(
        &mut self,
        parts: &[&[u8]],
        end: bool,
        known_total: Option<u64>,
        date: &mut DateCache,
    ) -> Result<ReplyMsg, BuildError> {
        self.before_build()?;
        let encoded = self
            .encoder
            .build(parts, end, known_total, date)
            .map_err(|NotStarted| BuildError::NoStartResponse)?;
        self.ended = end;
        log_mismatch(&encoded);
        Ok(ReplyMsg::Data {
            bytes: encoded.bytes,
            end,
            persistence: encoded.persistence,
            counted: !end,
        })
    }

    /// The head of the whole response, its body of `len` bytes to be written apart, and
    /// what decides the connection's persistence: the response ends here.
    pub(super) fn build_whole(
        &mut self,
        len: u64,
        date: &mut DateCache,
    ) -> Result<(Vec<u8>, Persistence), BuildError> {
        self.before_build()?;
        let encoded = self
            .encoder
            .build_whole(len, date)
            .map_err(|NotStarted| BuildError::NoStartResponse)?;
        self.ended = true;
        log_mismatch(&encoded);
        Ok((encoded.bytes, encoded.persistence))
    }

    fn before_build(&mut self) -> Result<(), BuildError> {
        if self.ended {
            return Err(BuildError::Ended);
        }
        if self.input_pending && !self.encoder.headers_sent() {
            // The app answers without reading the whole body: the connection cannot carry
            // another request (the I/O thread closes it), so the head says so.
            self.encoder.request_body_unread();
        }
        Ok(())
    }
}

fn log_mismatch(encoded: &Encoded) {
    match encoded.mismatch {
        None => {}
        Some(LengthMismatch::Excess { declared }) => log_warn!(
            "the application sent more than its Content-Length ({declared}); the excess is dropped"
        ),
        Some(LengthMismatch::Short { sent, declared }) => log_warn!(
            "the application sent {sent} of its Content-Length {declared}; closing the connection"
        ),
    }
}

/// Sends body bytes (and the head first, if not yet sent). Blocks, with the GIL released,
/// while the exchange's window (or the worker's budget) has no room: `write()` and the
/// head of a file cannot park, since the application's stack is live under them (an
/// iterated response parks instead: [`pump`]). `Ok(false)`: the client is gone.
pub(super) fn emit<'py>(
    gil: Gil<'py>,
    cb: &Callbacks,
    parts: &[&[u8]],
    end: bool,
    known_total: Option<u64>,
) -> PyResult<'py, bool> {
    super::watch::progress();
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
            Err(err) => return Err(build_error(gil, err)),
        };
        let len = counted_len(&msg);
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
    let len = counted_len(&msg);
    if !super::watch::paused(|| gil.allow_threads(|| exchange.reserve(len))) {
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

/// Per-Python-thread state reached from the C callbacks through their capsule. Leaked on
/// purpose: an application may keep `start_response` beyond its thread's life, and the
/// capsule must never dangle. Only touched with the interpreter's GIL held, and no borrow
/// is ever held across a call into Python or a GIL release.
pub(super) struct Callbacks {
    pub(super) current: RefCell<Option<Response>>,
    pub(super) next_token: Cell<u64>,
    pub(super) date: RefCell<DateCache>,
    /// `write`, returned by `start_response` (set once at thread start).
    pub(super) write: Cell<*mut ffi::PyObject>,
    /// `_spindle.ClientDisconnected` of this thread's interpreter.
    pub(super) client_disconnected: Cell<*mut ffi::PyObject>,
    /// `start_response` keeps a copy of the headers for the access log.
    pub(super) keep_head: Cell<bool>,
}

impl Callbacks {
    /// `_spindle.ClientDisconnected` of this thread's interpreter.
    pub(super) fn disconnected<'py>(&self, gil: Gil<'py>) -> Borrowed<'static, 'py> {
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

/// What sending an application's result needs of its thread: the response state, the
/// interpreter (its `FileWrapper` type), and where shared bodies come back to be released.
pub(super) struct ResultSink<'a> {
    pub cb: &'a Callbacks,
    pub interp: &'a Interp,
    pub releases: &'a Arc<ReleaseQueue>,
    /// The thread's wake channel, which a parked response's exchange is given.
    pub wake: &'a Sender<()>,
}

/// What became of an application's result.
pub(super) enum Sent<'py> {
    /// The response ended: `true` sent whole, `false` the client went away first.
    Ended(bool),
    /// The iterator waits for room (ARCHITECTURE.md §4) before its next piece is pulled;
    /// `is_head`: a HEAD response, which stops after its head.
    Parked { iter: Obj<'py>, is_head: bool },
}

/// What pulling pieces of a response came to.
pub(super) enum Pumped {
    /// The response ended: `true` sent whole, `false` the client went away first.
    Ended(bool),
    /// No room for another piece: nothing more was pulled; the exchange will wake the
    /// thread.
    Parked,
}

/// Pulls pieces of the response from `iter` and sends them, until it ends or there is no
/// room for another (the window full, or the worker's budget spent): room is checked
/// *before* a piece is pulled, so a parked response holds no piece of its own, and the
/// thread does not wait with it. It also gives the thread back, parked, when another
/// response parked on this thread was woken (`wake` holds a wake-up): a response whose
/// generator is slower than its client never runs out of room, and would otherwise keep
/// the thread from the woken ones until it ends, long enough for `--timeout` to cut them.
pub(super) fn pump<'py>(
    gil: Gil<'py>,
    cb: &Callbacks,
    iter: &Obj<'py>,
    exchange: &Exchange,
    is_head: bool,
    wake: &Sender<()>,
) -> PyResult<'py, Pumped> {
    let mut sent_here = false;
    loop {
        if sent_here && wake.is_full() {
            // Its turn is over: resumed after the woken ones, in the order they parked.
            return Ok(Pumped::Parked);
        }
        match exchange.room_or_park(wake) {
            Reserve::Reserved => {}
            Reserve::Parked => return Ok(Pumped::Parked),
            Reserve::Cancelled => return Ok(Pumped::Ended(false)),
        }
        let Some(chunk) = iter.next()? else { break };
        if exchange.is_cancelled() {
            return Ok(Pumped::Ended(false));
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
        if !emit_piece(gil, cb, bytes)? {
            return Ok(Pumped::Ended(false));
        }
        sent_here = true;
        if is_head {
            // The head is out and no body may follow: stop pulling.
            break;
        }
    }
    let nothing_sent = cb
        .current
        .borrow()
        .as_ref()
        .is_some_and(|r| !r.encoder.headers_sent());
    emit(gil, cb, &[], true, nothing_sent.then_some(0)).map(Pumped::Ended)
}

fn counted_len(msg: &ReplyMsg) -> usize {
    match msg {
        ReplyMsg::Data {
            bytes,
            counted: true,
            ..
        } => bytes.len(),
        _ => 0,
    }
}

/// [`emit`] of one body piece of an iterated response, pulled after its exchange said
/// there was room: counted without a wait. `Ok(false)`: the client is gone.
fn emit_piece<'py>(gil: Gil<'py>, cb: &Callbacks, bytes: &[u8]) -> PyResult<'py, bool> {
    super::watch::progress();
    let Ok(mut current) = cb.current.try_borrow_mut() else {
        return Err(runtime_error(gil, "response written re-entrantly"));
    };
    let Some(resp) = current.as_mut() else {
        return Err(runtime_error(gil, "the request ended while writing"));
    };
    if resp.reply.exchange.is_cancelled() {
        return Ok(false);
    }
    let msg = match resp.build(&[bytes], false, None, &mut cb.date.borrow_mut()) {
        Ok(msg) => msg,
        Err(err) => return Err(build_error(gil, err)),
    };
    resp.reply.exchange.charge(counted_len(&msg));
    resp.reply.send(msg);
    Ok(true)
}

fn build_error(gil: Gil<'_>, err: BuildError) -> PyErr<'_> {
    match err {
        // SAFETY: a builtin exception type.
        BuildError::NoStartResponse => raise(
            gil,
            unsafe { gil.builtin(ffi::PyExc_AssertionError) },
            "the application produced body data before calling start_response()",
        ),
        BuildError::Ended => runtime_error(gil, "write() called after the response ended"),
    }
}

impl ResultSink<'_> {
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
        let Some(shared) = body.share_bytes(self.releases) else {
            return Ok(None);
        };
        let Ok((head, persistence)) = resp.build_whole(n, &mut self.cb.date.borrow_mut()) else {
            return Ok(None);
        };
        resp.reply.send(ReplyMsg::Whole {
            head,
            body: bytes::Bytes::from_owner(shared),
            persistence,
        });
        Ok(Some(true))
    }

    /// Sends the application's result, or as much of it as there is room for: an iterator
    /// whose next piece finds its window full (or the worker's budget spent) is parked.
    pub(super) fn send<'py>(
        &self,
        gil: Gil<'py>,
        result: &Obj<'py>,
        exchange: &Exchange,
    ) -> PyResult<'py, Sent<'py>> {
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
                        return Ok(Sent::Ended(sent));
                    }
                }
            }
            let total = parts.iter().map(|p| p.len() as u64).sum();
            return emit(gil, self.cb, &parts, true, Some(total)).map(Sent::Ended);
        }

        if result.is_exact_instance(self.interp.file_wrapper.ptr(gil)) {
            let source = self.interp.file_source.bind(gil).call(&[result.borrow()])?;
            if !source.is_none() {
                return self.send_file(gil, &source).map(Sent::Ended);
            }
        }

        let iter = result.iter()?;
        let is_head = self
            .cb
            .current
            .borrow()
            .as_ref()
            .is_some_and(|r| r.encoder.is_head());
        Ok(
            match pump(gil, self.cb, &iter, exchange, is_head, self.wake)? {
                Pumped::Ended(sent) => Sent::Ended(sent),
                Pumped::Parked => Sent::Parked { iter, is_head },
            },
        )
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

/// Calls `result.close()` if it has one. The usual `[body]` is a list, which has none: it
/// is not looked up (`hasattr` made a `str` of the name and looked it up twice: 1,455
/// instructions of hello's 26,700, callgrind).
pub(super) fn close_result<'py>(result: &Obj<'py>) -> PyResult<'py, ()> {
    if result.is_exact_list_or_tuple() {
        return Ok(());
    }
    if let Some(close) = result.getattr_optional(c"close")? {
        close.call(&[])?;
    }
    Ok(())
}
