//! [`LineSink`]: where the access log's lines go (a file, or stdout), written without a
//! syscall per line. Each thread that logs appends to a buffer of its own
//! ([`LineWriter`]); the buffer is written out when it passes [`FLUSH_AT`] bytes, by a
//! flusher thread every [`FLUSH_EVERY`], and at the end ([`LineSink::close`]). A buffer's
//! mutex is taken by its thread for each line and by the flusher once a tick, so it is
//! never waited on in practice.
//!
//! Several worker processes write to the same file or pipe: each `write` carries whole
//! lines, and to a pipe at most `PIPE_BUF` bytes, which the kernel writes without
//! interleaving another process's (a file opened `O_APPEND` takes each `write` whole).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// A thread's buffer is written out once it holds this much.
pub const FLUSH_AT: usize = 64 * 1024;
/// Lines wait at most about this long in a buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// The most one `write` to a pipe may carry and still not interleave (POSIX: >= 512;
/// Linux: 4096).
const PIPE_BUF: usize = 4096;

/// Opens `path` for appending, creating it (mode 0644 less the umask).
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

enum Target {
    Stdout,
    File(File),
}

type Buffer = Arc<Mutex<Vec<u8>>>;

pub struct LineSink {
    /// `None`: stdout.
    path: Option<PathBuf>,
    target: Mutex<Target>,
    /// Cut writes at `PIPE_BUF` (stdout is not known to be a regular file).
    pipe: bool,
    buffers: Mutex<Vec<Buffer>>,
    stop: Mutex<bool>,
    tick: Condvar,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl LineSink {
    /// `-` is stdout; anything else a file opened for appending.
    pub fn open(target: &str) -> io::Result<Arc<LineSink>> {
        let (path, target, pipe) = if target == "-" {
            let regular = std::fs::metadata("/dev/stdout")
                .map(|m| m.file_type().is_file())
                .unwrap_or(false);
            (None, Target::Stdout, !regular)
        } else {
            let file = open_append(Path::new(target))?;
            let fifo = file.metadata()?.file_type().is_fifo();
            (Some(PathBuf::from(target)), Target::File(file), fifo)
        };
        Ok(Arc::new(LineSink {
            path,
            target: Mutex::new(target),
            pipe,
            buffers: Mutex::new(Vec::new()),
            stop: Mutex::new(false),
            tick: Condvar::new(),
            flusher: Mutex::new(None),
        }))
    }

    /// Starts the thread that writes out every buffer each [`FLUSH_EVERY`].
    pub fn start_flusher(self: &Arc<Self>) {
        let sink = Arc::clone(self);
        let handle = std::thread::Builder::new()
            .name("spindle-log".into())
            .spawn(move || {
                let mut spare = Vec::new();
                let mut stop = sink.stop.lock().unwrap_or_else(|e| e.into_inner());
                while !*stop {
                    stop = sink
                        .tick
                        .wait_timeout(stop, FLUSH_EVERY)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    drop(stop);
                    sink.flush_with(&mut spare);
                    stop = sink.stop.lock().unwrap_or_else(|e| e.into_inner());
                }
            });
        if let Ok(handle) = handle {
            *self.flusher.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        }
    }

    /// A buffer for one thread's lines.
    pub fn writer(self: &Arc<Self>) -> LineWriter {
        let buffer: Buffer = Arc::new(Mutex::new(Vec::with_capacity(FLUSH_AT)));
        self.buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&buffer));
        LineWriter {
            buffer,
            sink: Arc::clone(self),
        }
    }

    /// Writes out every buffer; forgets those whose thread is gone.
    pub fn flush(&self) {
        self.flush_with(&mut Vec::new());
    }

    fn flush_with(&self, spare: &mut Vec<u8>) {
        let buffers: Vec<Buffer> = {
            let mut list = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
            let all = list.clone();
            // A buffer only this list holds belongs to a thread that ended: this is its
            // last flush.
            list.retain(|b| Arc::strong_count(b) > 2);
            all
        };
        for buffer in buffers {
            {
                let mut lines = buffer.lock().unwrap_or_else(|e| e.into_inner());
                if lines.is_empty() {
                    continue;
                }
                std::mem::swap(&mut *lines, spare);
            }
            self.write_lines(spare);
            spare.clear();
        }
    }

    /// SIGUSR1: a file is opened anew (a log rotation moved it away); lines already
    /// buffered go to the new one.
    pub fn reopen(&self) -> io::Result<()> {
        if let Some(path) = &self.path {
            let file = open_append(path)?;
            *self.target.lock().unwrap_or_else(|e| e.into_inner()) = Target::File(file);
        }
        Ok(())
    }

    /// Stops the flusher and writes out what is left.
    pub fn close(&self) {
        *self.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.tick.notify_all();
        if let Some(handle) = self
            .flusher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = handle.join();
        }
        self.flush();
    }

    fn write_lines(&self, lines: &[u8]) {
        let mut target = self.target.lock().unwrap_or_else(|e| e.into_inner());
        let mut rest = lines;
        while !rest.is_empty() {
            let mut n = rest.len();
            if self.pipe && n > PIPE_BUF {
                // Whole lines up to PIPE_BUF (one longer line goes alone).
                n = match memchr::memrchr(b'\n', &rest[..PIPE_BUF]) {
                    Some(end) => end + 1,
                    None => memchr::memchr(b'\n', rest).map_or(rest.len(), |end| end + 1),
                };
            }
            let result = match &mut *target {
                Target::Stdout => io::stdout().lock().write_all(&rest[..n]),
                Target::File(file) => file.write_all(&rest[..n]),
            };
            if let Err(err) = result {
                crate::log_error!("access log: {err}; {} bytes of lines lost", rest.len());
                return;
            }
            rest = &rest[n..];
        }
    }
}

/// One thread's access to a [`LineSink`].
pub struct LineWriter {
    buffer: Buffer,
    sink: Arc<LineSink>,
}

impl LineWriter {
    /// Appends what `f` writes (whole lines, each ending in `\n`).
    pub fn append(&self, f: impl FnOnce(&mut Vec<u8>)) {
        let mut lines = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut lines);
        if lines.len() >= FLUSH_AT {
            let full = std::mem::replace(&mut *lines, Vec::with_capacity(FLUSH_AT));
            drop(lines);
            self.sink.write_lines(&full);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_file_at_flush_and_after_a_reopen() {
        let dir = std::env::temp_dir().join(format!("spindle-sink-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let sink = LineSink::open(path.to_str().unwrap()).unwrap();
        let writer = sink.writer();
        writer.append(|b| b.extend_from_slice(b"one\n"));
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        sink.flush();
        assert_eq!(std::fs::read(&path).unwrap(), b"one\n");
        let moved = dir.join("access.log.1");
        std::fs::rename(&path, &moved).unwrap();
        writer.append(|b| b.extend_from_slice(b"two\n"));
        sink.reopen().unwrap();
        drop(writer);
        sink.close();
        assert_eq!(std::fs::read(&path).unwrap(), b"two\n");
        assert_eq!(std::fs::read(&moved).unwrap(), b"one\n");
        // The writer is gone and flushed: its buffer is forgotten.
        assert!(sink.buffers.lock().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
