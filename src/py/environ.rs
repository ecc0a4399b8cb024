//! The WSGI environ of one request, built from its [`RequestHead`].
//!
//! Setup computes, the hot path reads: the constant part of environ is a dict built once
//! per interpreter and `dict.copy()`-ed per request (faster than setting each key), and
//! every key is interned once per interpreter (`interp.rs`). Values are made straight from
//! the request head's bytes (offsets into the frozen read buffer), decoded as latin-1
//! (PEP 3333).

use crate::http::response;

use super::interp::{push_http_key, Interp};
use super::object::{Gil, Held, Obj, PyResult};
use crate::handoff::{Endpoint, RequestBody, RequestHead};
use crate::http::Version;

impl Interp {
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

    /// The `str`s of an address: `SERVER_NAME` and `SERVER_PORT` (`is_server`), or
    /// `REMOTE_ADDR` and `REMOTE_PORT`. The server's pair and the client's address are
    /// reused from the last request while they match (`interp::AddrStrs`); a client's port
    /// differs per connection and is always made.
    fn addr_strs<'py>(
        &self,
        gil: Gil<'py>,
        addr: std::net::SocketAddr,
        is_server: bool,
        scratch: &mut Vec<u8>,
    ) -> PyResult<'py, (Obj<'py>, Obj<'py>)> {
        let mut cache = self.addrs.lock().unwrap_or_else(|e| e.into_inner());
        if is_server {
            if let Some((known, name, port)) = &cache.local {
                if *known == addr {
                    return Ok((name.bind(gil), port.bind(gil)));
                }
            }
        } else if let Some((known, name)) = &cache.peer {
            if *known == addr.ip() {
                let name = name.bind(gil);
                drop(cache);
                scratch.clear();
                response::push_decimal(scratch, addr.port().into());
                return Ok((name, gil.str_latin1(scratch)?));
            }
        }
        scratch.clear();
        push_ip(scratch, addr.ip());
        let name_end = scratch.len();
        response::push_decimal(scratch, addr.port().into());
        let name = gil.str_latin1(&scratch[..name_end])?;
        let port = gil.str_latin1(&scratch[name_end..])?;
        if is_server {
            let old = cache
                .local
                .replace((addr, name.clone().hold(), port.clone().hold()));
            if let Some((_, name, port)) = old {
                name.release(gil);
                port.release(gil);
            }
        } else if let Some((_, old)) = cache.peer.replace((addr.ip(), name.clone().hold())) {
            old.release(gil);
        }
        Ok((name, port))
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
        // With `--forwarded-host`, a trusted proxy's host stands for the server's address.
        let mut scratch = Vec::with_capacity(64);
        let forwarded_host = request.forwarded_host.map(|span| span.get(head));
        for (name_key, port_key, end, is_server) in [
            (&keys.server_name, &keys.server_port, request.local, true),
            (&keys.remote_addr, &keys.remote_port, request.peer, false),
        ] {
            let (name, port): (&[u8], &[u8]) = match end {
                _ if is_server && forwarded_host.is_some() => split_host(forwarded_host),
                Endpoint::Ip(addr) => {
                    let (name, port) = self.addr_strs(gil, addr, is_server, &mut scratch)?;
                    environ.dict_set(name_key.borrow(gil), &name)?;
                    environ.dict_set(port_key.borrow(gil), &port)?;
                    continue;
                }
                // A UNIX socket has no server name or port: PEP 3333 requires them, so they
                // come from `Host` (as gunicorn does), else `localhost:80`.
                Endpoint::Unix if is_server => split_host(host_field(request)),
                // ...and its peers no address: REMOTE_ADDR is empty, REMOTE_PORT absent.
                Endpoint::Unix => {
                    environ.dict_set(name_key.borrow(gil), &gil.str_latin1(b"")?)?;
                    environ.dict_del(port_key.borrow(gil))?;
                    continue;
                }
            };
            environ.dict_set(name_key.borrow(gil), &gil.str_latin1(name)?)?;
            environ.dict_set(port_key.borrow(gil), &gil.str_latin1(port)?)?;
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

        // What a trusted proxy said (ARCHITECTURE.md §5, "Behind a proxy"): the I/O thread
        // decided it into the head; only requests it changed pay for a key here.
        if request.https {
            environ.dict_set(keys.url_scheme.borrow(gil), &self.https.bind(gil))?;
        }
        if let Some(host) = forwarded_host {
            let key = self.common_header_key(b"host").map(|k| k.bind(gil));
            let key = match key {
                Some(key) => key,
                None => gil.str("HTTP_HOST")?,
            };
            environ.dict_set(key.borrow(), &gil.str_latin1(host)?)?;
        }
        if let Some(by) = request.forwarded_by {
            // The connection's own peer, as REMOTE_ADDR would have shown it.
            scratch.clear();
            if let Endpoint::Ip(addr) = by {
                push_ip(&mut scratch, addr.ip());
            }
            environ.dict_set(
                gil.intern(c"spindle.peer_addr")?.borrow(),
                &gil.str_latin1(&scratch)?,
            )?;
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

/// The `Host` field's value, if the request has one.
fn host_field(request: &RequestHead) -> Option<&[u8]> {
    request
        .headers
        .iter()
        .find(|h| h.name.get(&request.bytes).eq_ignore_ascii_case(b"host"))
        .map(|h| h.value.get(&request.bytes))
}

/// `SERVER_NAME` and `SERVER_PORT` from a `Host` value (`name`, `name:port`, `[v6]:port`);
/// `localhost` and `80` for what is missing.
fn split_host(host: Option<&[u8]>) -> (&[u8], &[u8]) {
    let host = host.unwrap_or(b"").trim_ascii();
    let (name, port) = match host.iter().rposition(|&b| b == b':') {
        // A colon inside brackets belongs to an IPv6 address, not to a port.
        Some(i) if !host[i..].contains(&b']') => (&host[..i], &host[i + 1..]),
        _ => (host, &b""[..]),
    };
    let name = if name.is_empty() {
        &b"localhost"[..]
    } else {
        name
    };
    let port = if port.is_empty() { &b"80"[..] } else { port };
    (name, port)
}

/// An address as `SERVER_NAME`/`REMOTE_ADDR` show it; IPv4 without `fmt`.
pub(super) fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
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

/// Decodes `%XX` escapes; a malformed escape stays as it is (as gunicorn and wsgiref do).
/// Borrows the input when it has no `%`: most paths allocate nothing.
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
    use super::{percent_decode, split_host};

    #[test]
    fn server_name_and_port_from_host() {
        type Case<'a> = (Option<&'a [u8]>, &'a [u8], &'a [u8]);
        let cases: [Case; 6] = [
            (Some(b"example.com"), b"example.com", b"80"),
            (Some(b"example.com:8080"), b"example.com", b"8080"),
            (Some(b"[::1]:8000"), b"[::1]", b"8000"),
            (Some(b"[::1]"), b"[::1]", b"80"),
            (Some(b""), b"localhost", b"80"),
            (None, b"localhost", b"80"),
        ];
        for (host, name, port) in cases {
            assert_eq!(split_host(host), (name, port), "{host:?}");
        }
    }

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
