//! `spindle._native`, the extension module: how the `spindle` Python package (the
//! `spindle` command, `python -m spindle`, `spindle.run()`, `spindle.serve()`) reaches
//! [`run::run`](crate::run::run). Its function `run(argv, app)` is called on the main
//! thread of the main interpreter (and `settings()` lists the setting names for the
//! config-file reader, `spindle/_config.py`); the server then runs inside that Python process, in its
//! virtual environment, and returns the exit code.
//!
//! Single-phase initialisation, on purpose: CPython refuses such a module in an own-GIL
//! sub-interpreter, so no sub-interpreter ever loads Spindle's own code as a module (what
//! they see of Spindle are raw per-interpreter objects: `py/callbacks.rs`, `_spindle`).
//! PyO3's `#[pymodule]` is not used for the same reason as everywhere in `py/`
//! (ARCHITECTURE.md §6).

use std::cell::UnsafeCell;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3_ffi as ffi;

use crate::py::object::{guard, Gil, Obj};

/// One server per process: the signal mask, the listeners and the process's exit code
/// belong to one run at a time.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// CPython writes into a module definition (its `m_base`) when it creates the module, so
/// the definition lives in an `UnsafeCell`; it is only touched by CPython, under the GIL.
struct ModuleDef(UnsafeCell<ffi::PyModuleDef>);
// SAFETY: see the type's documentation: CPython accesses it with the GIL held.
unsafe impl Sync for ModuleDef {}

/// The module's functions, with the zeroed sentinel CPython looks for at the end.
struct Methods([ffi::PyMethodDef; 3]);
// SAFETY: immutable after construction: static C strings and function pointers.
unsafe impl Sync for Methods {}

static METHODS: Methods = Methods([
    ffi::PyMethodDef {
        ml_name: c"run".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunctionFast: run },
        ml_flags: ffi::METH_FASTCALL,
        ml_doc: c"run(argv: list[str], app=None) -> int\n\nRuns Spindle with the command line argv (without the program name) and returns the exit code. app: a WSGI application object to serve instead of an import string (it runs on the main interpreter). Call from the main thread; SIGINT, SIGTERM and SIGHUP belong to Spindle until it returns.".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"settings".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunction: settings },
        ml_flags: ffi::METH_NOARGS,
        ml_doc: c"settings() -> tuple[str, ...]\n\nThe long names of every command-line setting (gunicorn's that Spindle accepts too), for reading a config file.".as_ptr(),
    },
    ffi::PyMethodDef::zeroed(),
]);

static MODULE: ModuleDef = ModuleDef(UnsafeCell::new(ffi::PyModuleDef {
    m_base: ffi::PyModuleDef_HEAD_INIT,
    m_name: c"spindle._native".as_ptr(),
    m_doc: c"Spindle's Rust core. Use the spindle package: spindle.run(), spindle.serve()."
        .as_ptr(),
    // -1: no per-module state, and no support for sub-interpreters (see the module doc).
    m_size: -1,
    m_methods: METHODS.0.as_ptr().cast_mut(),
    m_slots: std::ptr::null_mut(),
    m_traverse: None,
    m_clear: None,
    m_free: None,
}));

/// The module's initialisation function, found by CPython's import machinery by name.
///
/// # Safety
/// Called by CPython with the GIL held, once per import.
#[no_mangle]
pub unsafe extern "C" fn PyInit__native() -> *mut ffi::PyObject {
    // SAFETY: the definition is static and only CPython touches it, with the GIL held (the
    // caller's contract).
    unsafe { ffi::PyModule_Create(MODULE.0.get()) }
}

/// `run(argv, app=None)`.
unsafe extern "C" fn run(
    _module: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls us with the GIL held.
    let gil = unsafe { Gil::assume() };
    guard(gil, || {
        if !(1..=2).contains(&nargs) {
            return Err(error(gil, ffi_type_error(), "run(argv, app=None)"));
        }
        // SAFETY: CPython passes `nargs` borrowed arguments, live for the call.
        let (argv, app) = unsafe {
            let all = std::slice::from_raw_parts(args, nargs as usize);
            (
                Obj::from_borrowed_unchecked(gil, all[0]),
                all.get(1)
                    .map(|&ptr| Obj::from_borrowed_unchecked(gil, ptr)),
            )
        };
        let app = app.filter(|obj| !obj.is_none());
        let mut command_line = vec![OsString::from("spindle")];
        let items = argv
            .sequence_items()
            .ok_or_else(|| error(gil, ffi_type_error(), "argv must be a list of str"))?;
        for item in &items {
            command_line.push(fs_encode(gil, item)?);
        }
        check_main_thread(gil)?;
        if RUNNING.swap(true, Ordering::SeqCst) {
            return Err(error(
                gil,
                ffi_runtime_error(),
                "a Spindle server is already running in this process",
            ));
        }
        let code = crate::run::run(gil, command_line, app.as_ref());
        RUNNING.store(false, Ordering::SeqCst);
        gil.int(code.into())
    })
}

/// `settings()`.
unsafe extern "C" fn settings(
    _module: *mut ffi::PyObject,
    _args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls us with the GIL held.
    let gil = unsafe { Gil::assume() };
    guard(gil, || {
        let names = crate::config::setting_names()
            .iter()
            .map(|name| gil.str(name))
            .collect::<Result<Vec<_>, _>>()?;
        gil.tuple(&names.iter().collect::<Vec<_>>())
    })
}

/// A command-line argument as the OS has it: `os.fsencode(arg)`.
fn fs_encode<'py>(
    gil: Gil<'py>,
    arg: &Obj<'py>,
) -> Result<OsString, crate::py::object::PyErr<'py>> {
    if !arg.is_str() {
        return Err(error(
            gil,
            ffi_type_error(),
            &format!("argv items must be str, not {}", arg.type_name()),
        ));
    }
    // SAFETY: `arg` is a live str; the result is a new bytes reference or NULL with an
    // exception set.
    let encoded = unsafe { Obj::from_owned(gil, ffi::PyUnicode_EncodeFSDefault(arg.as_ptr()))? };
    let bytes = encoded.as_bytes().unwrap_or_default();
    Ok(OsString::from_vec(bytes.to_vec()))
}

/// Spindle takes the process's signals and waits for them on the calling thread, and
/// CPython delivers signals to Python code only on the main thread of the main interpreter:
/// anywhere else, SIGINT and SIGTERM would not stop the server.
fn check_main_thread(gil: Gil<'_>) -> Result<(), crate::py::object::PyErr<'_>> {
    // SAFETY: plain syscalls without arguments.
    let main_thread = unsafe { libc::gettid() == libc::getpid() };
    // SAFETY: GIL held; both return the (static) interpreter states.
    let main_interp = unsafe { ffi::PyInterpreterState_Get() == ffi::PyInterpreterState_Main() };
    if main_thread && main_interp {
        Ok(())
    } else {
        Err(error(
            gil,
            ffi_runtime_error(),
            "spindle.run() and spindle.serve() must be called from the main thread of the main interpreter",
        ))
    }
}

fn ffi_type_error() -> *mut ffi::PyObject {
    // SAFETY: reading the address of a builtin exception type.
    unsafe { ffi::PyExc_TypeError }
}

fn ffi_runtime_error() -> *mut ffi::PyObject {
    // SAFETY: reading the address of a builtin exception type.
    unsafe { ffi::PyExc_RuntimeError }
}

/// Raises `ty(message)` and returns it.
fn error<'py>(
    gil: Gil<'py>,
    ty: *mut ffi::PyObject,
    message: &str,
) -> crate::py::object::PyErr<'py> {
    // SAFETY: `ty` is one of CPython's builtin exception types (immortal).
    let ty = unsafe { gil.builtin(ty) };
    gil.raise(ty, message);
    crate::py::object::PyErr::fetch(gil)
}
