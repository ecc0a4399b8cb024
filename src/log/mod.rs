//! The logs. The **error log** (the server's own messages, what gunicorn calls the error
//! log) is this process's stderr: one line per event, written with a single `write` so
//! lines from different threads never interleave, as text in gunicorn's layout
//! (`[2026-12-04 22:38:57 +0000] [1234] [INFO] message`) or as JSON lines.
//! `--error-logfile FILE` makes FILE the process's stderr (so Python's own output to
//! `sys.stderr`, a traceback say, lands there too), and SIGUSR1 opens it anew after a
//! log rotation. The **access log** is written through a [`sink::LineSink`] in the
//! format of [`access::AccessFormat`]. Level and form are set once at start-up.

pub mod access;
pub mod sink;
pub mod time;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;

/// Minimum level of the server log. gunicorn's names are accepted too (`warning`,
/// `critical`), in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum LogLevel {
    #[value(alias = "critical")]
    Error,
    #[value(alias = "warning")]
    Warn,
    Info,
    Debug,
}

impl LogLevel {
    /// The level's name in a log line, as Python's logging (and so gunicorn) names it.
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "ERROR",
            LogLevel::Warn => "WARNING",
            LogLevel::Info => "INFO",
            LogLevel::Debug => "DEBUG",
        }
    }
}

/// How the error log's lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ErrorLogFormat {
    /// gunicorn's: `[time] [pid] [LEVEL] message`.
    Text,
    /// One JSON object per line: `time`, `pid`, `level`, `message`.
    Json,
}

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);
static JSON: AtomicBool = AtomicBool::new(false);

/// Where the error log goes, kept for [`reopen`].
struct ErrorFile {
    path: PathBuf,
    /// `--capture-output`: stdout goes there too.
    capture_output: bool,
}

static ERROR_FILE: Mutex<Option<ErrorFile>> = Mutex::new(None);

/// Sets the minimum level; called once at start-up (`run`).
pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Sets the form of the error log's lines; called once at start-up.
pub fn set_format(format: ErrorLogFormat) {
    JSON.store(format == ErrorLogFormat::Json, Ordering::Relaxed);
}

/// Makes `path` this process's stderr (and stdout too with `capture_output`), appending;
/// called once at start-up, before any thread writes. Without a path nothing changes.
pub fn redirect(path: Option<&Path>, capture_output: bool) -> std::io::Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    point_at(path, capture_output)?;
    *ERROR_FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(ErrorFile {
        path: path.to_owned(),
        capture_output,
    });
    Ok(())
}

/// SIGUSR1: opens the error log file anew (it was moved away by a log rotation). The old
/// descriptor 2 is replaced in one `dup2`, so no line is lost or goes to the old file.
pub fn reopen() -> std::io::Result<()> {
    let guard = ERROR_FILE.lock().unwrap_or_else(|e| e.into_inner());
    match &*guard {
        Some(file) => point_at(&file.path, file.capture_output),
        None => Ok(()),
    }
}

fn point_at(path: &Path, capture_output: bool) -> std::io::Result<()> {
    let file = sink::open_append(path)?;
    let targets: &[i32] = if capture_output { &[2, 1] } else { &[2] };
    for &target in targets {
        // SAFETY: `dup2` only replaces descriptor `target` (stderr or stdout, which this
        // process owns and every writer reaches by number) with a copy of `file`'s, which
        // is open for the call; no Rust object owns descriptors 1 and 2.
        if unsafe { libc::dup2(file.as_raw_fd(), target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// True when a message of `level` would be written (lets callers skip formatting).
#[inline]
pub fn enabled(level: LogLevel) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Writes one log line. Use the `log_*!` macros rather than calling this.
pub fn write(level: LogLevel, args: std::fmt::Arguments<'_>) {
    let now = time::LocalTime::now();
    let mut line = Vec::with_capacity(160);
    if JSON.load(Ordering::Relaxed) {
        let message = args.to_string();
        let _ = write!(
            line,
            "{{\"time\":\"{}\",\"pid\":{},\"level\":\"{}\",\"message\":",
            now.iso(),
            std::process::id(),
            level.name().to_ascii_lowercase()
        );
        push_json_str(&mut line, message.trim_end_matches('\n').as_bytes());
        line.extend_from_slice(b"}\n");
    } else {
        let _ = write!(
            line,
            "{} [{}] [{}] ",
            now.error_log(),
            std::process::id(),
            level.name()
        );
        let _ = line.write_fmt(args);
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
    }
    let _ = std::io::stderr().lock().write_all(&line);
}

/// Appends `text` as a JSON string (quoted, escaped); bytes that are not UTF-8 become
/// U+FFFD.
pub fn push_json_str(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'"');
    for c in String::from_utf8_lossy(text).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[macro_export]
macro_rules! log_at {
    ($level:expr, $($arg:tt)*) => {
        if $crate::log::enabled($level) {
            $crate::log::write($level, format_args!($($arg)*));
        }
    };
}
#[macro_export]
macro_rules! log_error { ($($arg:tt)*) => { $crate::log_at!($crate::log::LogLevel::Error, $($arg)*) }; }
#[macro_export]
macro_rules! log_warn { ($($arg:tt)*) => { $crate::log_at!($crate::log::LogLevel::Warn, $($arg)*) }; }
#[macro_export]
macro_rules! log_info { ($($arg:tt)*) => { $crate::log_at!($crate::log::LogLevel::Info, $($arg)*) }; }
#[macro_export]
macro_rules! log_debug { ($($arg:tt)*) => { $crate::log_at!($crate::log::LogLevel::Debug, $($arg)*) }; }

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut out = Vec::new();
        push_json_str(&mut out, b"a\"b\\c\nd\x01\xff");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001\u{fffd}\"".as_bytes());
    }
}
