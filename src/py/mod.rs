//! Python: the pool of Python threads that run the WSGI application inside the running
//! CPython, the per-interpreter state, and the bridge (environ, `start_response`, the
//! response). Python threads never touch sockets themselves: they take requests from the
//! queue and send replies through `handoff::ReplyTo`, which pushes them to the owning I/O
//! thread's mailbox or, when that thread lent the socket, writes them (ARCHITECTURE.md §4,
//! "Direct answers").
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
//! The same code serves both modes; ARCHITECTURE.md §6 has the C-API rules.
//!
//! | file | owns |
//! |---|---|
//! | `pool.rs` | the interpreters, the interpreter mode (sub, main, the fallback), the grower |
//! | `host.rs` | one interpreter and its threads: admitting, leaving, closing |
//! | `thread.rs` | one thread's life: owner of a sub-interpreter or member, the serve loop |
//! | `inline.rs` | `--inline`: an I/O thread joining an interpreter to call the application itself |
//! | `watchdog.rs` | `--timeout`: requests stuck in Python, their stacks, a process all stuck |
//! | `interp.rs` | one interpreter's state: bootstrap, the app, interned keys, base environ |
//! | `environ.rs` | the environ of one request |
//! | `worker.rs` | one request end to end: the app call, `close()`, failures, access log |
//! | `access.rs` | the access log's line for one request, in gunicorn's atoms or JSON |
//! | `response.rs` | iterating the result into encoded messages; the per-thread state the C functions reach |
//! | `callbacks.rs` | `start_response`, `write`, `wsgi.input`'s reader as C functions |
//! | `object.rs` | the safe layer over the C API |
//! | `bootstrap.py` | the Python-side helpers run once per interpreter |

pub mod access;
mod callbacks;
mod environ;
mod host;
mod inline;
mod interp;
pub mod object;
mod parked;
mod pool;
mod response;
mod thread;
mod watch;
mod watchdog;
mod worker;

use std::ffi::CStr;

use pyo3_ffi as ffi;

pub use inline::InlineHosts;
pub use interp::{ImportFailure, Interp};
pub use pool::{preload, Pool};

/// The main interpreter's sys.path, for a supervisor to hand to its workers.
pub fn sys_path(gil: object::Gil<'_>) -> anyhow::Result<Vec<String>> {
    interp::read_sys_path(gil).map_err(|e| anyhow::anyhow!("cannot read sys.path: {}", e.summary()))
}

/// Replaces the main interpreter's sys.path (a worker takes its supervisor's).
pub fn replace_sys_path(gil: object::Gil<'_>, paths: &[String]) -> anyhow::Result<()> {
    interp::set_sys_path(gil, paths)
        .map_err(|e| anyhow::anyhow!("cannot set sys.path: {}", e.summary()))
}

/// Sets `--env`'s variables in the main interpreter's `os.environ` (and so in the C
/// environment that sub-interpreters and workers start from).
pub fn set_environ(gil: object::Gil<'_>, pairs: &[(String, String)]) -> anyhow::Result<()> {
    interp::set_environ(gil, pairs)
        .map_err(|e| anyhow::anyhow!("cannot set the environment: {}", e.summary()))
}

/// The running Python's version, e.g. "3.13.0".
pub fn python_version() -> String {
    // SAFETY: Py_GetVersion returns a static NUL-terminated string and may be called
    // before the interpreter is initialised.
    let full = unsafe { CStr::from_ptr(ffi::Py_GetVersion()) }
        .to_string_lossy()
        .into_owned();
    full.split_whitespace().next().unwrap_or("").to_string()
}
