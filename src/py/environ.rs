//! Per-interpreter state ([`Interp`]) and the WSGI environ built from a request.
//!
//! Setup computes, the hot path reads: the constant part of environ is a dict built once
//! per interpreter and `dict.copy()`-ed per request (faster than setting each key), and
//! every key is interned once per interpreter. Values are made straight from the request
//! head's bytes (offsets into the frozen read buffer), decoded as latin-1 (PEP 3333).

use crate::http::response;
use std::ffi::CStr;

use anyhow::anyhow;
use pyo3_ffi as ffi;

use super::object::{Gil, Held, Obj, PyErr, PyResult};
use super::ServerInfo;
use crate::config::Config;
use crate::handoff::{RequestBody, RequestHead};
use crate::http::Version;

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
}

/// Everything Spindle keeps inside one interpreter. Every `Held` here belongs to that
/// interpreter and is used only by threads attached to it (the invariant that makes
/// sharing an `Interp` between its threads sound).
pub struct Interp {
    pub(crate) app: Held,
    pub(crate) base_environ: Held,
    pub(crate) keys: Keys,
    /// Common method and protocol strings, so most requests create no new str for them.
    methods: Vec<(&'static [u8], Held)>,
    /// `HTTP_*` keys of common request headers, by lowercase name: most requests build no
    /// key string at all. Indexed by name length in `header_keys_by_len`.
    header_keys: Vec<(&'static [u8], Held)>,
    header_keys_by_len: Vec<Vec<u8>>,
    http10: Held,
    http11: Held,
    // From `_spindle` (bootstrap.py).
    pub(crate) stream_input: Held,
    pub(crate) bytes_io: Held,
    pub(crate) empty_input: Held,
    pub(crate) file_wrapper: Held,
    pub(crate) file_source: Held,
    pub(crate) report_exception: Held,
    pub(crate) client_disconnected: Held,
    root_path: Vec<u8>,
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

impl Interp {
    /// Runs the bootstrap in the attached interpreter and imports the application.
    /// `report_import_errors`: log the traceback when the application fails to import (off
    /// while probing whether it can run in a sub-interpreter at all).
    pub(crate) fn new(
        gil: Gil<'_>,
        config: &Config,
        info: &ServerInfo,
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

        let app = {
            let load = module
                .getattr(c"load_app")
                .map_err(|e| anyhow!("bootstrap: {}", e.summary()))?;
            let spec = match &config.app {
                Some(spec) => gil.str(spec),
                None => Ok(gil.none()),
            }
            .map_err(|e| anyhow!("{}", e.summary()))?;
            match load.call(&[spec.borrow()]) {
                Ok(app) => app.hold(),
                Err(err) => {
                    let failure = ImportFailure {
                        app: config.app.clone().unwrap_or_else(|| "<demo>".into()),
                        summary: err.summary(),
                    };
                    if report_import_errors {
                        let context = format!("cannot import the application {}:", failure.app);
                        super::report(gil, Some(&report_exception), err, &context);
                    }
                    report_exception.release(gil);
                    return Err(failure.into());
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
            stream_input: get(c"stream_input")?,
            bytes_io: get(c"BytesIO")?,
            empty_input: get(c"EMPTY_INPUT")?,
            file_wrapper: get(c"FileWrapper")?,
            file_source: get(c"file_source")?,
            report_exception,
            client_disconnected: get(c"ClientDisconnected")?,
            root_path: config.root_path.as_bytes().to_vec(),
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
            stream_input,
            bytes_io,
            empty_input,
            file_wrapper,
            file_source,
            report_exception,
            client_disconnected,
            root_path: _,
        } = self;
        for held in [
            app,
            base_environ,
            http10,
            http11,
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
        ] {
            held.release(gil);
        }
        for (_, held) in methods.into_iter().chain(header_keys) {
            held.release(gil);
        }
    }

    /// The interned `HTTP_*` key of a common header (any case), if it is one.
    fn common_header_key(&self, name: &[u8]) -> Option<&Held> {
        // Few names share a length: compare only those, byte by byte (a `memcmp` call per
        // candidate in a binary search cost more than building the key).
        let bucket = self.header_keys_by_len.get(name.len())?;
        bucket
            .iter()
            .map(|&i| &self.header_keys[i as usize])
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
            .map(|(_, key)| key)
    }

    /// Builds the environ of one request (public for benches/wsgi.rs, through
    /// [`Runtime::with_main_interp`](super::Runtime::with_main_interp)). `stream_input`
    /// makes `wsgi.input` for a streamed body; it is not called for a complete one.
    pub fn environ<'py>(
        &self,
        gil: Gil<'py>,
        request: &RequestHead,
        body: &RequestBody,
        stream_input: impl FnOnce() -> PyResult<'py, Obj<'py>>,
    ) -> PyResult<'py, Obj<'py>> {
        let environ = self.base_environ.bind(gil).dict_copy()?;
        let keys = &self.keys;

        let head: &[u8] = &request.bytes;
        let method = request.method.get(head);
        let method_obj = match self.methods.iter().find(|(name, _)| *name == method) {
            Some((_, held)) => held.bind(gil),
            None => gil.str_latin1(method)?,
        };
        environ.dict_set(keys.request_method.borrow(gil), &method_obj)?;

        let protocol = match request.version {
            Version::Http11 => self.http11.bind(gil),
            Version::Http10 => self.http10.bind(gil),
        };
        environ.dict_set(keys.server_protocol.borrow(gil), &protocol)?;

        // PATH_INFO: percent-decoded bytes as latin-1 (PEP 3333), minus --root-path. The
        // prefix is matched on the raw path, whole segments only, so an encoded slash
        // (`/app%2Fx`) is not taken for the mount point.
        let mut raw_path = request.path.get(head);
        if raw_path.is_empty() {
            raw_path = b"/";
        }
        if !self.root_path.is_empty()
            && raw_path.starts_with(&self.root_path)
            && matches!(raw_path.get(self.root_path.len()), None | Some(b'/'))
        {
            raw_path = &raw_path[self.root_path.len()..];
        }
        let path = percent_decode(raw_path);
        environ.dict_set(keys.path_info.borrow(gil), &gil.str_latin1(&path)?)?;
        environ.dict_set(
            keys.query_string.borrow(gil),
            &gil.str_latin1(request.query.get(head))?,
        )?;

        // Addresses and ports, then any uncommon header's key, through one scratch buffer.
        let mut scratch = Vec::with_capacity(64);
        for (name_key, port_key, addr) in [
            (&keys.server_name, &keys.server_port, request.local),
            (&keys.remote_addr, &keys.remote_port, request.peer),
        ] {
            scratch.clear();
            push_ip(&mut scratch, addr.ip());
            environ.dict_set(name_key.borrow(gil), &gil.str_latin1(&scratch)?)?;
            scratch.clear();
            response::push_decimal(&mut scratch, addr.port().into());
            environ.dict_set(port_key.borrow(gil), &gil.str_latin1(&scratch)?)?;
        }

        for header in &request.headers {
            let name = header.name.get(head);
            let value = header.value.get(head);
            if name.contains(&b'_') {
                // nginx and gunicorn drop these: `X_Forwarded_For` must not pose as
                // `X-Forwarded-For` once both become HTTP_X_FORWARDED_FOR.
                continue;
            }
            let is_length = name.eq_ignore_ascii_case(b"content-length");
            let key_obj = if let Some(known) = self.common_header_key(name) {
                known.bind(gil)
            } else if name.eq_ignore_ascii_case(b"content-type") {
                keys.content_type.bind(gil)
            } else if is_length {
                keys.content_length.bind(gil)
            } else {
                scratch.clear();
                push_http_key(&mut scratch, name);
                gil.str_latin1(&scratch)?
            };
            let value_obj = gil.str_latin1(value)?;
            let before = environ.dict_len();
            let present = environ.dict_set_default(key_obj.borrow(), &value_obj)?;
            if environ.dict_len() == before && !is_length {
                // A repeated field: join the values with "," (RFC 9110 §5.3). A repeated
                // Content-Length was checked equal by the parser: keep the first.
                let mut joined = present.encode_latin1().unwrap_or_default();
                joined.push(b',');
                joined.extend_from_slice(value);
                environ.dict_set(key_obj.borrow(), &gil.str_latin1(&joined)?)?;
            }
        }

        // What a front end set itself (CGI variables over uwsgi, FastCGI, SCGI) goes in as
        // it came, over anything above.
        for var in &request.vars {
            environ.dict_set(
                gil.str_latin1(var.name.get(head))?.borrow(),
                &gil.str_latin1(var.value.get(head))?,
            )?;
        }

        let input = match body {
            RequestBody::Complete(bytes) if bytes.is_empty() => self.empty_input.bind(gil),
            RequestBody::Complete(bytes) => {
                let data = gil.bytes(bytes)?;
                self.bytes_io.bind(gil).call(&[data.borrow()])?
            }
            RequestBody::Stream => stream_input()?,
        };
        environ.dict_set(keys.wsgi_input.borrow(gil), &input)?;
        Ok(environ)
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
    dict.dict_set(
        gil.intern(c"log")?.borrow(),
        &super::callbacks::log_function(gil)?,
    )?;
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
        &gil.int(info.py_threads as i64)?,
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
    Ok(environ)
}

/// Decodes `%XX` escapes; a malformed escape stays as it is (as gunicorn and wsgiref do).
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
fn push_http_key(out: &mut Vec<u8>, name: &[u8]) {
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

/// An address as `SERVER_NAME`/`REMOTE_ADDR` show it; IPv4 without `fmt`.
fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                response::push_decimal(out, octet.into());
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

pub fn percent_decode(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if memchr::memchr(b'%', raw).is_none() {
        // Most paths: nothing to decode, nothing to allocate.
        return std::borrow::Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding() {
        assert_eq!(&*percent_decode(b"/caf%C3%A9"), b"/caf\xc3\xa9");
        assert_eq!(&*percent_decode(b"/a%2Fb"), b"/a/b");
        assert_eq!(&*percent_decode(b"/bad%zz%4"), b"/bad%zz%4");
        assert_eq!(&*percent_decode(b"%41"), b"A");
        assert!(matches!(
            percent_decode(b"/plain/path"),
            std::borrow::Cow::Borrowed(b"/plain/path")
        ));
    }
}
