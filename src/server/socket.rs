//! The connection's socket: reads until a deadline, writes under `--write-timeout`,
//! gathered writes, sendfile, and the lingering close after an error response.

use std::pin::pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::buf::{IoBuf, IoBufMut, SliceMut};

use super::conn::{Conn, ReadOutcome};
use super::event::{race, Either};
use super::gather::Gather;
use super::sys;
use crate::log_debug;

/// Lingering close: after an error response, how long and how much we keep reading (and
/// discarding) so the client's unread bytes do not turn our FIN into a RST that destroys
/// the response before the client reads it.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;
/// When the server stops, how long an idle keep-alive connection still waits for a request
/// that may be on its way (sent before the stop, not read yet): it is served, with
/// `Connection: close`, instead of being lost with the connection (ARCHITECTURE.md §10).
pub(super) const STOP_GRACE: std::time::Duration = std::time::Duration::from_millis(100);
/// The same for a connection that has not sent its first request yet: it was just
/// accepted, so its request is certainly on its way (a client connects to send one), and on
/// a loaded machine it can take longer than [`STOP_GRACE`] to arrive. A reload under load
/// lost such requests (an EOF for a request sent on a new connection).
pub(super) const FIRST_REQUEST_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// During a stop, resolves a moment before the drain's deadline (`--graceful-timeout`):
/// a write that a client has not let through by then is abandoned and its connection
/// closed, so its exchange is cancelled and the Python thread closes the response (a
/// parked iterator too) before the process exits (ARCHITECTURE.md §4). Never resolves
/// while the server serves.
async fn stop_cut(ctx: &super::ctx::IoCtx) {
    ctx.stop.wait().await;
    let grace = ctx.shared.config.graceful_timeout;
    let cut = grace.saturating_sub(STOP_CUT_MARGIN).max(grace / 2);
    let at = ctx.stopped_at.get().unwrap_or_else(Instant::now) + cut;
    monoio::time::sleep(at.saturating_duration_since(Instant::now())).await;
}

/// How long before the drain's deadline a stuck write is abandoned: time for the Python
/// threads to call `close()` and the process to exit on its own.
const STOP_CUT_MARGIN: Duration = Duration::from_millis(500);

fn stop_cut_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the client read too little to finish before --graceful-timeout",
    )
}

impl Conn {
    /// Writes all of `buf`, giving up when one write makes no progress for
    /// `--write-timeout` (nginx's send_timeout: between two writes, not for the whole
    /// response): a client that stops reading must not hold a connection, and the Python
    /// thread feeding it, for ever.
    pub(super) async fn write<B: IoBuf + 'static>(&mut self, buf: B) -> std::io::Result<()> {
        self.write_buf(buf).await.0
    }

    /// [`Conn::write`], giving the buffer back (not after a timeout: the abandoned write
    /// took it).
    pub(super) async fn write_buf<B: IoBuf + 'static>(
        &mut self,
        buf: B,
    ) -> (std::io::Result<()>, Option<B>) {
        let timeout = self.ctx.shared.config.write_timeout;
        let len = buf.bytes_init();
        let mut buf = buf;
        let mut written = 0;
        while written < len {
            // Both pinned where they are: `race` then moves two pointers, not the futures
            // (moving them cost ~700 instructions per write in memcpy, measured with
            // callgrind on hello).
            let write = pin!(monoio::time::timeout(
                timeout,
                self.stream.write(buf.slice(written..len))
            ));
            let cut = pin!(stop_cut(&self.ctx));
            let Either::Left(result) = race(write, cut).await else {
                return (Err(stop_cut_error()), None);
            };
            match result {
                Ok((Ok(0), slice)) => {
                    return (
                        Err(std::io::ErrorKind::WriteZero.into()),
                        Some(slice.into_inner()),
                    )
                }
                Ok((Ok(n), slice)) => {
                    crate::metrics::sent(n);
                    written += n;
                    buf = slice.into_inner();
                }
                Ok((Err(err), slice)) => return (Err(err), Some(slice.into_inner())),
                Err(_) => {
                    return (
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the client read nothing for --write-timeout",
                        )),
                        None,
                    );
                }
            }
        }
        (Ok(()), Some(buf))
    }

    /// Writes every buffer of `bufs` with as few `writev` calls as the socket allows, under
    /// the same per-write timeout as [`Conn::write`].
    pub(super) async fn write_gather(&mut self, bufs: Vec<Bytes>) -> std::io::Result<()> {
        let timeout = self.ctx.shared.config.write_timeout;
        let mut gather = Gather::new(bufs);
        while gather.remaining() > 0 {
            let write = pin!(monoio::time::timeout(timeout, self.stream.writev(gather)));
            let cut = pin!(stop_cut(&self.ctx));
            let Either::Left(result) = race(write, cut).await else {
                return Err(stop_cut_error());
            };
            match result {
                Ok((Ok(0), _)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok((Ok(n), rest)) => {
                    crate::metrics::sent(n);
                    gather = rest.advance(n)
                }
                Ok((Err(err), _)) => return Err(err),
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client read nothing for --write-timeout",
                    ))
                }
            }
        }
        Ok(())
    }

    /// Writes a server error response and closes with a lingering drain.
    pub(super) async fn fail(&mut self, status: u16) {
        let out = self.ctx.error_response(status);
        if self.write(out).await.is_ok() {
            self.linger().await;
        }
    }

    /// Half-closes and discards what the client still sends, bounded in time and bytes.
    pub(super) async fn linger(&mut self) {
        sys::shutdown_write(&self.stream);
        let deadline = Instant::now() + LINGER_TIME;
        let mut drained = 0;
        self.buf.clear();
        while drained < LINGER_BYTES {
            self.buf.clear();
            match self.read_more(deadline, 16 * 1024, false).await {
                ReadOutcome::Data => drained += self.buf.len(),
                _ => return,
            }
        }
    }

    /// Reads more bytes into `buf`, until `deadline`; when `interruptible`, a server stop
    /// also ends the wait (only while no request is half-read).
    pub(super) async fn read_more(
        &mut self,
        deadline: Instant,
        want: usize,
        interruptible: bool,
    ) -> ReadOutcome {
        if self.buf.capacity() - self.buf.len() < want / 2 {
            self.buf.reserve(want);
        }
        // Read into the spare capacity only: monoio's `IoBufMut` for `BytesMut` writes from
        // the start of the buffer (and sets its length to the bytes read), which would
        // overwrite a partial head or pipelined bytes already buffered.
        let buf = std::mem::take(&mut self.buf);
        let (start, end) = (buf.len(), buf.capacity());
        let (outcome, buf) = self
            .read_into(SliceMut::new(buf, start, end), deadline, interruptible)
            .await;
        if let Some(buf) = buf {
            self.buf = buf.into_inner();
        }
        outcome
    }

    /// One read into `buf` (from its start up to its capacity; monoio sets its length), until
    /// `deadline`, interruptible by a stop as [`Conn::read_more`] says. The buffer comes back
    /// unless the wait timed out or was stopped (the abandoned read took it).
    pub(super) async fn read_into<B: IoBufMut + 'static>(
        &mut self,
        buf: B,
        deadline: Instant,
        interruptible: bool,
    ) -> (ReadOutcome, Option<B>) {
        let read = monoio::time::timeout_at(deadline.into(), self.stream.read(buf));
        let result = if interruptible {
            let mut read = std::pin::pin!(read);
            match race(read.as_mut(), self.ctx.stop.wait()).await {
                Either::Left(result) => result,
                Either::Right(()) => {
                    let grace = if self.served == 0 {
                        FIRST_REQUEST_GRACE
                    } else {
                        STOP_GRACE
                    };
                    match monoio::time::timeout(grace, read).await {
                        Ok(result) => result,
                        Err(_elapsed) => return (ReadOutcome::Stopped, None),
                    }
                }
            }
        } else {
            read.await
        };
        match result {
            Err(_elapsed) => (ReadOutcome::TimedOut, None),
            Ok((Ok(0), buf)) => (ReadOutcome::Eof, Some(buf)),
            Ok((Ok(n), buf)) => {
                crate::metrics::received(n);
                (ReadOutcome::Data, Some(buf))
            }
            Ok((Err(err), buf)) => {
                log_debug!("{}: read failed: {err}", self.peer);
                (ReadOutcome::Failed, Some(buf))
            }
        }
    }

    /// Sends `len` bytes of `file` from `offset` with sendfile, waiting for the socket to
    /// drain whenever it is full.
    pub(super) async fn send_file(
        &mut self,
        file: &std::fs::File,
        mut offset: u64,
        len: u64,
    ) -> std::io::Result<()> {
        let end = offset + len;
        let flags = sys::set_nonblocking(&self.stream, true)?;
        let mut result = Ok(());
        while offset < end {
            let remaining = end - offset;
            match sys::send(&self.stream, file, &mut offset, remaining) {
                Ok(0) => {
                    result = Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "file shorter than announced",
                    ));
                    break;
                }
                Ok(n) => crate::metrics::sent(n as usize),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    let timeout = self.ctx.shared.config.write_timeout;
                    match monoio::time::timeout(timeout, self.stream.writable(false)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => {
                            result = Err(err);
                            break;
                        }
                        Err(_) => {
                            result = Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "the client read nothing for --write-timeout",
                            ));
                            break;
                        }
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
        }
        use std::os::fd::AsRawFd;
        sys::restore_flags(self.stream.as_raw_fd(), flags)?;
        result
    }
}

/// The deadline of a request head, the same for every protocol: a connection waiting for
/// its next request's first byte gets the keep-alive timeout (after a request; the header
/// timeout before the first), and once a byte came the whole head must come within
/// `--header-timeout`.
pub(super) struct HeadClock {
    /// No byte of the head is here yet: the wait may end quietly (idle, stopping).
    pub(super) waiting_first_byte: bool,
    pub(super) deadline: Instant,
    header_timeout: Duration,
}

impl HeadClock {
    /// Bytes arrived: from the first one, the head has `--header-timeout`.
    pub(super) fn data_arrived(&mut self) {
        if self.waiting_first_byte {
            self.waiting_first_byte = false;
            self.deadline = Instant::now() + self.header_timeout;
        }
    }
}

impl Conn {
    /// The clock for the next request head on this connection.
    pub(super) fn head_clock(&self) -> HeadClock {
        let config = &self.ctx.shared.config;
        let header_timeout = config.header_timeout;
        let waiting_first_byte = self.buf.is_empty();
        let wait = if waiting_first_byte && self.served > 0 {
            config.keep_alive.unwrap_or(header_timeout)
        } else {
            header_timeout
        };
        HeadClock {
            waiting_first_byte,
            deadline: Instant::now() + wait,
            header_timeout,
        }
    }
}
