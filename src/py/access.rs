//! The access log's line for one request, written by the Python thread that served it
//! (it has everything a format may name: the request head, the status and headers the
//! application gave, the body bytes, the environ) into its own buffer of the log's
//! [`LineSink`](crate::log::sink::LineSink).

use std::cell::RefCell;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use super::environ::{percent_decode, push_ip};
use super::object::{Gil, Obj};
use crate::config::AccessLogConfig;
use crate::handoff::{Endpoint, RequestHead};
use crate::http::response::push_decimal;
use crate::log::access::{AccessFormat, Atom, Piece};
use crate::log::push_json_str;
use crate::log::sink::{LineSink, LineWriter};
use crate::log::time::LocalTime;

/// The process's access log.
pub struct AccessLog {
    format: AccessFormat,
    sink: Arc<LineSink>,
}

impl AccessLog {
    /// Opens the file (or stdout) and starts the flusher.
    pub fn open(config: &AccessLogConfig) -> io::Result<Arc<AccessLog>> {
        let sink = LineSink::open(&config.target)?;
        sink.start_flusher();
        Ok(Arc::new(AccessLog {
            format: config.format.clone(),
            sink,
        }))
    }

    /// SIGUSR1: the file anew, after a rotation moved it.
    pub fn reopen(&self) -> io::Result<()> {
        self.sink.reopen()
    }

    /// Writes out what every thread has buffered (before an exit).
    pub fn flush(&self) {
        self.sink.flush();
    }

    /// Stops the flusher and writes out the rest; after the Python threads ended.
    pub fn close(&self) {
        self.sink.close();
    }

    /// Whether `start_response` must keep the headers for this format.
    pub(super) fn needs_response_headers(&self) -> bool {
        self.format.needs_response_headers()
    }

    pub(super) fn for_thread(self: &Arc<Self>) -> ThreadLog {
        ThreadLog {
            log: Arc::clone(self),
            out: self.sink.writer(),
            clock: RefCell::new(Clock::default()),
        }
    }
}

/// The time of the current second, formatted once per second.
#[derive(Default)]
struct Clock {
    second: u64,
    clf: String,
}

/// What one request's line is made of.
pub(super) struct Entry<'a, 'py> {
    pub head: &'a RequestHead,
    pub status: u16,
    pub body_bytes: u64,
    pub elapsed: Duration,
    /// `ResponseHead::as_bytes()` kept by `start_response`, when the format needs it.
    pub response_head: Option<&'a [u8]>,
    pub environ: Option<&'a Obj<'py>>,
    pub gil: Gil<'py>,
}

/// One Python thread's writer.
pub(super) struct ThreadLog {
    log: Arc<AccessLog>,
    out: LineWriter,
    clock: RefCell<Clock>,
}

impl ThreadLog {
    pub(super) fn write(&self, entry: &Entry<'_, '_>) {
        self.out.append(|line| match &self.log.format {
            AccessFormat::Atoms(pieces) => {
                for piece in pieces {
                    match piece {
                        Piece::Literal(text) => line.extend_from_slice(text.as_bytes()),
                        Piece::Atom(atom) => self.atom(line, atom, entry),
                    }
                }
                line.push(b'\n');
            }
            AccessFormat::Json => json(line, entry),
        });
    }

    fn atom(&self, out: &mut Vec<u8>, atom: &Atom, e: &Entry<'_, '_>) {
        let head = e.head;
        let micros = e.elapsed.as_micros() as u64;
        match atom {
            Atom::RemoteAddr => match head.peer {
                Endpoint::Ip(addr) => push_ip(out, addr.ip()),
                Endpoint::Unix => out.push(b'-'),
            },
            Atom::Ident => out.push(b'-'),
            Atom::User => escaped(out, user(head).as_deref().unwrap_or(b"-")),
            Atom::Time => {
                let mut clock = self.clock.borrow_mut();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                if clock.second != now || clock.clf.is_empty() {
                    clock.second = now;
                    clock.clf = LocalTime::at(now as i64, 0).clf();
                }
                out.extend_from_slice(clock.clf.as_bytes());
            }
            Atom::RequestLine => {
                escaped(out, head.get(head.method));
                out.push(b' ');
                escaped(out, head.get(head.target));
                out.push(b' ');
                out.extend_from_slice(head.version.as_str().as_bytes());
            }
            Atom::Method => escaped(out, head.get(head.method)),
            Atom::Path => escaped(out, &path(head)),
            Atom::Query => escaped(out, head.get(head.query)),
            Atom::Protocol => out.extend_from_slice(head.version.as_str().as_bytes()),
            Atom::Status => push_decimal(out, e.status.into()),
            Atom::Bytes | Atom::BytesClf => push_decimal(out, e.body_bytes),
            Atom::Referer => escaped(out, request_header(head, b"referer").unwrap_or(b"-")),
            Atom::UserAgent => escaped(out, request_header(head, b"user-agent").unwrap_or(b"-")),
            Atom::Seconds => push_decimal(out, micros / 1_000_000),
            Atom::Millis => push_decimal(out, micros / 1_000),
            Atom::Micros => push_decimal(out, micros),
            Atom::DecimalSeconds => {
                let _ = write!(out, "{}.{:06}", micros / 1_000_000, micros % 1_000_000);
            }
            Atom::Pid => {
                let _ = write!(out, "<{}>", std::process::id());
            }
            Atom::RequestHeader(name) => {
                escaped(out, request_header(head, name.as_bytes()).unwrap_or(b"-"))
            }
            Atom::ResponseHeader(name) => escaped(
                out,
                e.response_head
                    .and_then(|h| response_header(h, name.as_bytes()))
                    .unwrap_or(b"-"),
            ),
            Atom::Environ(name) => {
                match e.environ.and_then(|env| environ_value(e.gil, env, name)) {
                    Some(value) => escaped(out, value.as_bytes()),
                    None => out.push(b'-'),
                }
            }
            Atom::Unknown => out.push(b'-'),
        }
    }
}

/// One JSON object per line, with the fields of gunicorn's atoms under plain names.
fn json(out: &mut Vec<u8>, e: &Entry<'_, '_>) {
    let head = e.head;
    let _ = write!(
        out,
        "{{\"time\":\"{}\",\"remote_addr\":",
        LocalTime::now().iso()
    );
    match head.peer {
        Endpoint::Ip(addr) => {
            // An address has nothing to escape.
            out.push(b'"');
            push_ip(out, addr.ip());
            out.push(b'"');
        }
        Endpoint::Unix => out.extend_from_slice(b"null"),
    }
    let fields: [(&str, Option<&[u8]>); 4] = [
        ("method", Some(head.get(head.method))),
        ("target", Some(head.get(head.target))),
        ("path", Some(&path(head))),
        ("query", Some(head.get(head.query))),
    ];
    for (name, value) in fields {
        let _ = write!(out, ",\"{name}\":");
        match value {
            Some(value) => push_json_str(out, value),
            None => out.extend_from_slice(b"null"),
        }
    }
    let _ = write!(
        out,
        ",\"protocol\":\"{}\",\"status\":{},\"bytes\":{},\"duration_us\":{}",
        head.version.as_str(),
        e.status,
        e.body_bytes,
        e.elapsed.as_micros()
    );
    let user = user(head);
    let optional: [(&str, Option<&[u8]>); 3] = [
        ("referer", request_header(head, b"referer")),
        ("user_agent", request_header(head, b"user-agent")),
        ("user", user.as_deref()),
    ];
    for (name, value) in optional {
        let _ = write!(out, ",\"{name}\":");
        match value {
            Some(value) => push_json_str(out, value),
            None => out.extend_from_slice(b"null"),
        }
    }
    let _ = writeln!(out, ",\"pid\":{}}}", std::process::id());
}

/// Bytes as gunicorn's log shows them, but safe to read: `"` becomes `\"` (as gunicorn
/// escapes it), and control bytes `\xHH`, so no request can forge a line.
fn escaped(out: &mut Vec<u8>, value: &[u8]) {
    let needs = |b: u8| b == b'"' || b < 0x20 || b == 0x7f;
    let mut rest = value;
    // Most values have nothing to escape: copied in runs, not byte by byte.
    while let Some(at) = rest.iter().position(|&b| needs(b)) {
        out.extend_from_slice(&rest[..at]);
        match rest[at] {
            b'"' => out.extend_from_slice(b"\\\""),
            b => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

fn path(head: &RequestHead) -> std::borrow::Cow<'_, [u8]> {
    let raw = head.get(head.path);
    if raw.is_empty() {
        std::borrow::Cow::Borrowed(b"/")
    } else {
        percent_decode(raw)
    }
}

/// The last value of a request header (gunicorn keeps the last of repeated ones).
fn request_header<'h>(head: &'h RequestHead, name: &[u8]) -> Option<&'h [u8]> {
    head.headers
        .iter()
        .rev()
        .find(|h| head.get(h.name).eq_ignore_ascii_case(name))
        .map(|h| head.get(h.value))
}

/// The last value of `name` in `200 OK\r\nname: value\r\n...`.
fn response_header<'h>(head: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    head.split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = memchr::memchr(b':', line)?;
            line[..colon]
                .eq_ignore_ascii_case(name)
                .then(|| line[colon + 1..].trim_ascii())
        })
        .last()
}

/// The user name of `Authorization: Basic ...`.
fn user(head: &RequestHead) -> Option<Vec<u8>> {
    let auth = request_header(head, b"authorization")?;
    let (scheme, rest) = auth.split_at(auth.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = base64_decode(rest.trim_ascii())?;
    let end = memchr::memchr(b':', &decoded).unwrap_or(decoded.len());
    std::str::from_utf8(&decoded[..end]).ok()?;
    Some(decoded[..end].to_vec())
}

fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let text = text
        .strip_suffix(b"==")
        .or_else(|| text.strip_suffix(b"="))
        .unwrap_or(text);
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in text {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// An environ value by name, whatever its case (gunicorn lower-cases the names).
fn environ_value(gil: Gil<'_>, environ: &Obj<'_>, name: &str) -> Option<String> {
    for key in [name.to_ascii_uppercase(), name.to_owned()] {
        let key = gil.str(&key).ok()?;
        if let Some(value) = environ.dict_get(key.borrow()) {
            return Some(match value.as_str_utf8() {
                Some(text) => String::from_utf8_lossy(text).into_owned(),
                None => value.to_string_lossy(),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_user_and_response_headers() {
        assert_eq!(base64_decode(b"YWxpY2U6c2VjcmV0").unwrap(), b"alice:secret");
        assert_eq!(base64_decode(b"YQ==").unwrap(), b"a");
        assert!(base64_decode(b"a*b").is_none());
        let head = b"200 OK\r\nContent-Type: text/plain\r\nX-Id: 1\r\nx-id: 2\r\n";
        assert_eq!(response_header(head, b"x-id"), Some(&b"2"[..]));
        assert_eq!(
            response_header(head, b"content-type"),
            Some(&b"text/plain"[..])
        );
        assert_eq!(response_header(head, b"ok"), None);
        let mut out = Vec::new();
        escaped(&mut out, b"a\"b\nc");
        assert_eq!(out, b"a\\\"b\\x0ac");
    }
}
