//! One interpreter's Spindle state ([`Interp`]): the bootstrap module `_spindle` run in it,
//! the application imported (or given), interned keys and the base environ. Plus what is
//! done to an interpreter once: `sys.path`, priming the main interpreter, reporting
//! exceptions with their traceback.

use std::ffi::CStr;
use std::path::PathBuf;

use anyhow::anyhow;
use pyo3_ffi as ffi;

use super::object::{guard, new_function, type_error, Gil, Held, MethodDef, Obj, PyErr, PyResult};
use crate::config::Config;
use crate::log::LogLevel;

/// Interned environ keys.
pub(crate) struct Keys {
    pub request_method: Held,
    pub path_info: Held,
    pub query_string: Held,
    pub content_type: Held,
    pub content_length: Held,
    pub server_name: Held,
    pub server_port: Held,
    pub server_protocol: Held,
    pub remote_addr: Held,
    pub remote_port: Held,
    pub wsgi_input: Held,
    pub url_scheme: Held,
}

/// Everything Spindle keeps inside one interpreter. Every `Held` here belongs to that
/// interpreter and is used only by threads attached to it (the invariant that makes
/// sharing an `Interp` between its threads sound).
pub struct Interp {
    pub(crate) app: Held,
    pub(crate) base_environ: Held,
    pub(crate) keys: Keys,
    /// Common method and protocol strings, so most requests create no new str for them.
    pub(super) methods: Vec<(&'static [u8], Held)>,
    /// `HTTP_*` keys of common request headers, by lowercase name: most requests build no
    /// key string at all. Indexed by name length in `header_keys_by_len`.
    pub(super) header_keys: Vec<(&'static [u8], Held)>,
    pub(super) header_keys_by_len: Vec<Vec<u8>>,
    pub(super) http10: Held,
    pub(super) http11: Held,
    /// `wsgi.url_scheme` of a request a trusted proxy received over https.
    pub(super) https: Held,
    // From `_spindle` (bootstrap.py).
    pub(crate) stream_input: Held,
    pub(crate) bytes_io: Held,
    pub(crate) empty_input: Held,
    pub(crate) file_wrapper: Held,
    pub(crate) file_source: Held,
    pub(crate) report_exception: Held,
    pub(crate) client_disconnected: Held,
    pub(super) root_path: Vec<u8>,
    /// The address strings of recent requests, made once and reused while they match
    /// (`environ.rs`). Only threads holding this interpreter's GIL touch it, so the lock
    /// is never waited on; it is there because several threads share the `Interp`.
    pub(super) addrs: std::sync::Mutex<AddrStrs>,
}

/// `SERVER_NAME`/`SERVER_PORT` of the last server address seen, and `REMOTE_ADDR` of the
/// last client address. A listener's address is the same for every request, and so is
/// the client's behind a proxy or from one host: formatting them and making their `str`s
/// cost about 2,100 instructions per request (callgrind, hello: ARCHITECTURE.md §6,
/// "Costs"), a lookup here a few dozen.
#[derive(Default)]
pub(super) struct AddrStrs {
    pub(super) local: Option<(std::net::SocketAddr, Held, Held)>,
    pub(super) peer: Option<(std::net::IpAddr, Held)>,
}

impl AddrStrs {
    fn release(self, gil: Gil<'_>) {
        if let Some((_, name, port)) = self.local {
            name.release(gil);
            port.release(gil);
        }
        if let Some((_, addr)) = self.peer {
            addr.release(gil);
        }
    }
}

/// The application failed to import: `summary` is the exception in one line.
#[derive(Debug)]
pub struct ImportFailure {
    pub app: String,
    pub summary: String,
}

impl std::fmt::Display for ImportFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot import the application {}: {}",
            self.app, self.summary
        )
    }
}

impl std::error::Error for ImportFailure {}

const BOOTSTRAP: &str = include_str!("bootstrap.py");
/// Where an interpreter's application comes from.
pub(crate) enum AppSource<'a, 'py> {
    /// Imported from `--app` (`MODULE:NAME` or a factory call), or the demo page.
    Import(Option<&'a str>),
    /// An application object handed to `spindle.serve()`: it belongs to the main
    /// interpreter, so it can only run there.
    Object(&'a Obj<'py>),
}

impl Interp {
    /// Runs the bootstrap in the attached interpreter and imports the application.
    /// `report_import_errors`: log the traceback when the application fails to import (off
    /// while probing whether it can run in a sub-interpreter at all).
    pub(crate) fn new<'py>(
        gil: Gil<'py>,
        config: &Config,
        info: &ServerInfo,
        app: AppSource<'_, 'py>,
        report_import_errors: bool,
    ) -> anyhow::Result<Interp> {
        let module = load_bootstrap(gil, info)
            .map_err(|e| anyhow!("Spindle's bootstrap failed: {}", e.summary()))?;
        let get = |name: &CStr| {
            module
                .getattr(name)
                .map(Obj::hold)
                .map_err(|e| anyhow!("bootstrap: {}", e.summary()))
        };
        let report_exception = get(c"report_exception")?;

        let app = match app {
            AppSource::Object(app) => app.clone().hold(),
            AppSource::Import(spec) => {
                let load = module
                    .getattr(c"load_app")
                    .map_err(|e| anyhow!("bootstrap: {}", e.summary()))?;
                let spec_obj = match spec {
                    Some(spec) => gil.str(spec),
                    None => Ok(gil.none()),
                }
                .map_err(|e| anyhow!("{}", e.summary()))?;
                match load.call(&[spec_obj.borrow()]) {
                    Ok(app) => app.hold(),
                    Err(err) => {
                        let failure = ImportFailure {
                            app: spec.unwrap_or("<demo>").to_string(),
                            summary: err.summary(),
                        };
                        if report_import_errors {
                            let context = format!("cannot import the application {}:", failure.app);
                            report(gil, Some(&report_exception), err, &context);
                        }
                        report_exception.release(gil);
                        return Err(failure.into());
                    }
                }
            }
        };

        let py =
            |r: PyResult<'_, Obj<'_>>| r.map(Obj::hold).map_err(|e| anyhow!("{}", e.summary()));
        let keys = Keys {
            request_method: py(gil.intern(c"REQUEST_METHOD"))?,
            path_info: py(gil.intern(c"PATH_INFO"))?,
            query_string: py(gil.intern(c"QUERY_STRING"))?,
            content_type: py(gil.intern(c"CONTENT_TYPE"))?,
            content_length: py(gil.intern(c"CONTENT_LENGTH"))?,
            server_name: py(gil.intern(c"SERVER_NAME"))?,
            server_port: py(gil.intern(c"SERVER_PORT"))?,
            server_protocol: py(gil.intern(c"SERVER_PROTOCOL"))?,
            remote_addr: py(gil.intern(c"REMOTE_ADDR"))?,
            remote_port: py(gil.intern(c"REMOTE_PORT"))?,
            wsgi_input: py(gil.intern(c"wsgi.input"))?,
            url_scheme: py(gil.intern(c"wsgi.url_scheme"))?,
        };
        let base = build_base_environ(gil, config, info, &module)
            .map_err(|e| anyhow!("environ: {}", e.summary()))?;
        let mut methods = Vec::new();
        for (name, c) in [
            (&b"GET"[..], c"GET"),
            (b"POST", c"POST"),
            (b"HEAD", c"HEAD"),
            (b"PUT", c"PUT"),
            (b"DELETE", c"DELETE"),
            (b"PATCH", c"PATCH"),
            (b"OPTIONS", c"OPTIONS"),
        ] {
            methods.push((name, py(gil.intern(c))?));
        }
        let mut header_keys = Vec::with_capacity(COMMON_HEADERS.len());
        for &name in COMMON_HEADERS {
            let key = std::ffi::CString::new(http_key(name)).expect("no NUL in header names");
            header_keys.push((name, py(gil.intern(&key))?));
        }
        let mut header_keys_by_len =
            vec![Vec::new(); 1 + COMMON_HEADERS.iter().map(|n| n.len()).max().unwrap_or(0)];
        for (i, (name, _)) in header_keys.iter().enumerate() {
            header_keys_by_len[name.len()].push(i as u8);
        }
        Ok(Interp {
            app,
            base_environ: base.hold(),
            keys,
            methods,
            header_keys,
            header_keys_by_len,
            http10: py(gil.intern(c"HTTP/1.0"))?,
            http11: py(gil.intern(c"HTTP/1.1"))?,
            https: py(gil.intern(c"https"))?,
            stream_input: get(c"stream_input")?,
            bytes_io: get(c"BytesIO")?,
            empty_input: get(c"EMPTY_INPUT")?,
            file_wrapper: get(c"FileWrapper")?,
            file_source: get(c"file_source")?,
            report_exception,
            client_disconnected: get(c"ClientDisconnected")?,
            root_path: config.root_path.as_bytes().to_vec(),
            addrs: Default::default(),
        })
    }

    /// Releases every reference; call while attached to this interpreter.
    pub(crate) fn release(self, gil: Gil<'_>) {
        let Interp {
            app,
            base_environ,
            keys,
            methods,
            header_keys,
            header_keys_by_len: _,
            http10,
            http11,
            https,
            stream_input,
            bytes_io,
            empty_input,
            file_wrapper,
            file_source,
            report_exception,
            client_disconnected,
            root_path: _,
            addrs,
        } = self;
        addrs
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .release(gil);
        for held in [
            app,
            base_environ,
            http10,
            http11,
            https,
            stream_input,
            bytes_io,
            empty_input,
            file_wrapper,
            file_source,
            report_exception,
            client_disconnected,
        ] {
            held.release(gil);
        }
        let Keys {
            request_method,
            path_info,
            query_string,
            content_type,
            content_length,
            server_name,
            server_port,
            server_protocol,
            remote_addr,
            remote_port,
            wsgi_input,
            url_scheme,
        } = keys;
        for held in [
            request_method,
            path_info,
            query_string,
            content_type,
            content_length,
            server_name,
            server_port,
            server_protocol,
            remote_addr,
            remote_port,
            wsgi_input,
            url_scheme,
        ] {
            held.release(gil);
        }
        for (_, held) in methods.into_iter().chain(header_keys) {
            held.release(gil);
        }
    }
}

fn load_bootstrap<'py>(gil: Gil<'py>, info: &ServerInfo) -> PyResult<'py, Obj<'py>> {
    // SAFETY: GIL held; PyImport_AddModule returns a borrowed module registered in this
    // interpreter's sys.modules, which we take our own reference to at once.
    let module = unsafe {
        let ptr = ffi::PyImport_AddModule(c"_spindle".as_ptr());
        if ptr.is_null() {
            return Err(PyErr::fetch(gil));
        }
        Obj::from_borrowed_unchecked(gil, ptr)
    };
    let dict = module.getattr(c"__dict__")?;
    let builtins = gil.import(c"builtins")?;
    dict.dict_set(gil.intern(c"__builtins__")?.borrow(), &builtins)?;
    dict.dict_set(gil.intern(c"log")?.borrow(), &log_function(gil)?)?;
    let server_info = gil.new_dict()?;
    server_info.dict_set(gil.intern(c"version")?.borrow(), &gil.str(crate::VERSION)?)?;
    server_info.dict_set(gil.intern(c"driver")?.borrow(), &gil.str(info.driver)?)?;
    server_info.dict_set(gil.intern(c"mode")?.borrow(), &gil.str(&info.mode)?)?;
    server_info.dict_set(
        gil.intern(c"io_threads")?.borrow(),
        &gil.int(info.io_threads as i64)?,
    )?;
    server_info.dict_set(
        gil.intern(c"py_threads")?.borrow(),
        &gil.str(&info.threads)?,
    )?;
    dict.dict_set(gil.intern(c"SERVER_INFO")?.borrow(), &server_info)?;

    let source = std::ffi::CString::new(BOOTSTRAP).expect("bootstrap.py has no NUL");
    // SAFETY: GIL held; NUL-terminated source and file name; the code object is owned and
    // evaluated with the module's own dict as globals and locals.
    unsafe {
        let code = Obj::from_owned(
            gil,
            ffi::Py_CompileString(
                source.as_ptr(),
                c"<spindle bootstrap>".as_ptr(),
                ffi::Py_file_input,
            ),
        )?;
        Obj::from_owned(
            gil,
            ffi::PyEval_EvalCode(code.as_ptr(), dict.as_ptr(), dict.as_ptr()),
        )?;
    }
    Ok(module)
}

fn build_base_environ<'py>(
    gil: Gil<'py>,
    config: &Config,
    info: &ServerInfo,
    module: &Obj<'py>,
) -> PyResult<'py, Obj<'py>> {
    let environ = gil.new_dict()?;
    let set = |key: &CStr, value: Obj<'py>| -> PyResult<'py, ()> {
        environ.dict_set(gil.intern(key)?.borrow(), &value)
    };
    let one = gil.int(1)?;
    let zero = gil.int(0)?;
    set(c"wsgi.version", gil.tuple(&[&one, &zero])?)?;
    set(c"wsgi.url_scheme", gil.str("http")?)?;
    set(c"wsgi.errors", module.getattr(c"ERRORS")?)?;
    set(c"wsgi.multithread", gil.bool(info.multithread))?;
    set(c"wsgi.multiprocess", gil.bool(info.multiprocess))?;
    set(c"wsgi.run_once", gil.bool(false))?;
    set(c"wsgi.input_terminated", gil.bool(true))?;
    set(c"wsgi.file_wrapper", module.getattr(c"FileWrapper")?)?;
    set(
        c"SERVER_SOFTWARE",
        gil.str(&format!("Spindle/{}", crate::VERSION))?,
    )?;
    set(c"SCRIPT_NAME", gil.str(&config.root_path)?)?;
    // The keys every request sets (`environ.rs`), here with `None` so that each request's
    // copy of this dict already has their slots: setting them replaces a value instead of
    // inserting, and the copy is not resized as it fills (576 instructions of a hello
    // request; perf/README.md, "Hello's instructions"). A request over a UNIX socket
    // deletes REMOTE_PORT.
    for key in [
        c"REQUEST_METHOD",
        c"SERVER_PROTOCOL",
        c"PATH_INFO",
        c"QUERY_STRING",
        c"SERVER_NAME",
        c"SERVER_PORT",
        c"REMOTE_ADDR",
        c"REMOTE_PORT",
        c"wsgi.input",
    ] {
        set(key, gil.none())?;
    }
    Ok(environ)
}

/// Request headers common enough to keep their `HTTP_*` key interned (lowercase).
const COMMON_HEADERS: &[&[u8]] = &[
    b"accept",
    b"accept-charset",
    b"accept-encoding",
    b"accept-language",
    b"authorization",
    b"cache-control",
    b"connection",
    b"cookie",
    b"dnt",
    b"expect",
    b"forwarded",
    b"host",
    b"if-match",
    b"if-modified-since",
    b"if-none-match",
    b"if-range",
    b"if-unmodified-since",
    b"origin",
    b"pragma",
    b"priority",
    b"range",
    b"referer",
    b"sec-ch-ua",
    b"sec-ch-ua-mobile",
    b"sec-ch-ua-platform",
    b"sec-fetch-dest",
    b"sec-fetch-mode",
    b"sec-fetch-site",
    b"sec-fetch-user",
    b"te",
    b"traceparent",
    b"tracestate",
    b"transfer-encoding",
    b"upgrade",
    b"upgrade-insecure-requests",
    b"user-agent",
    b"via",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-forwarded-proto",
    b"x-real-ip",
    b"x-request-id",
    b"x-requested-with",
];

/// `HTTP_` + the name uppercased, `-` as `_` (PEP 3333, CGI).
pub(super) fn push_http_key(out: &mut Vec<u8>, name: &[u8]) {
    out.extend_from_slice(b"HTTP_");
    out.extend(name.iter().map(|&b| {
        if b == b'-' {
            b'_'
        } else {
            b.to_ascii_uppercase()
        }
    }));
}

fn http_key(name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + name.len());
    push_http_key(&mut key, name);
    key
}

/// Puts the working directory and each `--pythonpath` in front of the main interpreter's
/// sys.path, as `python -m` and gunicorn do, so `spindle module:app` finds modules next to
/// where it runs; returns the whole sys.path, for the sub-interpreters.
pub(crate) fn prepare_sys_path<'py>(gil: Gil<'py>, config: &Config) -> PyResult<'py, Vec<String>> {
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
    read_sys_path(gil)
}

/// The attached interpreter's sys.path (entries that are not text are left out).
pub(crate) fn read_sys_path<'py>(gil: Gil<'py>) -> PyResult<'py, Vec<String>> {
    let path = gil.import(c"sys")?.getattr(c"path")?;
    let mut snapshot = Vec::new();
    let entries = path.iter()?;
    while let Some(entry) = entries.next()? {
        if let Some(text) = entry.as_str_utf8() {
            snapshot.push(String::from_utf8_lossy(text).into_owned());
        }
    }
    Ok(snapshot)
}

/// Gives a new sub-interpreter the main interpreter's sys.path (and a worker process its
/// supervisor's): what the program that started Spindle put there (its own directory,
/// `sys.path.insert` calls, .pth files) holds for them too, so an app that imports in one
/// imports in all.
pub(crate) fn set_sys_path<'py>(gil: Gil<'py>, paths: &[String]) -> PyResult<'py, ()> {
    let sys = gil.import(c"sys")?;
    let list = sys.getattr(c"path")?;
    let clear = list.getattr(c"clear")?;
    clear.call(&[])?;
    let append = list.getattr(c"append")?;
    for entry in paths {
        append.call(&[gil.str(entry)?.borrow()])?;
    }
    Ok(())
}

/// `os.environ[key] = value` for each pair, in the main interpreter: Python's mapping and
/// the C environment (which sub-interpreters and child processes read) both change.
pub(crate) fn set_environ<'py>(gil: Gil<'py>, pairs: &[(String, String)]) -> PyResult<'py, ()> {
    let environ = gil.import(c"os")?.getattr(c"environ")?;
    let set = environ.getattr(c"__setitem__")?;
    for (key, value) in pairs {
        set.call(&[gil.str(key)?.borrow(), gil.str(value)?.borrow()])?;
    }
    Ok(())
}

/// Reports a Python exception into the log with its traceback, through the interpreter's
/// `_spindle.report_exception` (falls back to one log line).
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
    // No PyErr_Print here: for a SystemExit it would exit the process (fatal from a
    // sub-interpreter's thread). One line is what we can say safely.
    crate::log_error!("{context}: {}", err.summary());
}
/// Imports, in the main interpreter, stdlib extensions whose static types own data that
/// sub-interpreters would otherwise create: the first importer allocates it. On CPython
/// 3.13.0, when a sub-interpreter imports the C `datetime` first, ending a second one
/// frees a tuple from the first one's allocator ("double free"/SIGSEGV at stop, seen here
/// in most stops with two interpreters and Flask). Imported by the main interpreter first,
/// that data lives as long as the process.
pub(super) fn prime_main_interpreter(gil: Gil<'_>) {
    for module in [c"_datetime"] {
        if let Err(err) = gil.import(module) {
            crate::log_debug!(
                "priming {:?} in the main interpreter: {}",
                module,
                err.summary()
            );
        }
    }
}

/// On 3.12 only: import the application's module in the main interpreter (see caller).
#[cfg(all(Py_3_12, not(Py_3_13)))]
pub(super) fn preimport_in_main(gil: Gil<'_>, config: &Config) {
    if let Some(module) = config
        .app
        .as_deref()
        .and_then(|spec| spec.split(':').next())
    {
        if let Ok(name) = std::ffi::CString::new(module) {
            if let Err(err) = gil.import(&name) {
                crate::log_warn!(
                    "importing {module} in the main interpreter failed: {}",
                    err.summary()
                );
            }
        }
    }
}

/// What an interpreter is told about the server it runs in: the demo page shows it, and
/// `wsgi.multithread`/`wsgi.multiprocess` must tell the application the truth.
pub(crate) struct ServerInfo {
    pub driver: &'static str,
    pub mode: String,
    pub io_threads: usize,
    /// The Python threads, in words ("1 per interpreter, growing to 128 each").
    pub threads: String,
    /// Other threads may call the same application object at the same time.
    pub multithread: bool,
    /// Other interpreters run their own copy of the application at the same time (module
    /// state is per interpreter, as per process).
    pub multiprocess: bool,
}

static LOG: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"log".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFast: log,
    },
    ml_flags: ffi::METH_FASTCALL,
    ml_doc: c"log(level, text): one line in Spindle's log".as_ptr(),
});

/// `_spindle.log`, made per interpreter.
fn log_function<'py>(gil: Gil<'py>) -> PyResult<'py, Obj<'py>> {
    new_function(gil, &LOG, None)
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
