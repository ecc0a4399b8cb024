//! The few raw system calls the I/O threads make, behind safe functions: `sendfile(2)`
//! from a regular file to a non-blocking socket (the bytes of `wsgi.file_wrapper`
//! responses go from the page cache to the socket without passing through user space or
//! Python), the socket flags it needs, a half-close, a look at a listener's queue, a read
//! and a write that never wait (admission control, direct answers), a second descriptor
//! of a socket (lent for a direct answer), and the open-files limit.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// Sends up to `len` bytes of `file` starting at `*offset` to `socket`, advancing `*offset`.
/// Returns the bytes sent; `WouldBlock` when the socket buffer is full.
pub fn send(socket: &impl AsRawFd, file: &File, offset: &mut u64, len: u64) -> io::Result<u64> {
    let mut off = *offset as libc::off_t;
    let count = len.min(1 << 30) as usize;
    // SAFETY: both descriptors are open for the duration of the call (borrowed), and `off`
    // is a valid, exclusively borrowed off_t that the kernel updates.
    let n = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut off, count) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    *offset = off as u64;
    Ok(n as u64)
}

/// Sets or clears O_NONBLOCK on `fd`, returning the previous flags so the caller can put
/// them back. `sendfile` needs a non-blocking socket to never stall the I/O thread; the
/// io_uring driver otherwise expects the socket as it made it.
pub fn set_nonblocking(fd: &impl AsRawFd, nonblocking: bool) -> io::Result<libc::c_int> {
    let fd = fd.as_raw_fd();
    // SAFETY: F_GETFL on a descriptor the caller keeps open has no memory effects.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = if nonblocking {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    restore_flags(fd, new)?;
    Ok(flags)
}

/// Puts back flags returned by [`set_nonblocking`].
pub fn restore_flags(fd: libc::c_int, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: F_SETFL on a descriptor the caller keeps open has no memory effects.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Half-closes the write side (`shutdown(SHUT_WR)`): the client sees EOF after our last
/// response while we can still drain what it sends (lingering close).
pub fn shutdown_write(fd: &impl AsRawFd) {
    // SAFETY: shutdown on a descriptor the caller keeps open has no memory effects.
    unsafe {
        libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR);
    }
}

/// Whether a connection waits in `listener`'s accept queue right now (a `poll(2)` that
/// does not wait). Errors count as "no".
pub fn has_queued_connection(listener: &impl AsRawFd) -> bool {
    let mut pollfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pollfd` is a valid, exclusively borrowed array of one entry for the call,
    // and the descriptor stays open (borrowed); a zero timeout never blocks.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
    ready == 1 && pollfd.revents & libc::POLLIN != 0
}

/// Reads what the socket holds now into `buf` without waiting (`MSG_DONTWAIT`, whether the
/// descriptor is blocking, as under io_uring, or not): `Ok(0)` is the peer's EOF,
/// `WouldBlock` that nothing is there.
pub fn recv_now(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call,
    // and the descriptor is kept open by the caller.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The soft limit on open files (`RLIMIT_NOFILE`); `None` when it cannot be read or is
/// unlimited.
pub fn open_files_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY)
        .then(|| usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}

/// Writes what the socket takes now of `buf` without waiting (`MSG_DONTWAIT`).
pub fn send_now(fd: &impl AsRawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call,
    // and the descriptor is kept open by the caller.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A second descriptor of `fd`'s socket, close-on-exec (std's `try_clone_to_owned`,
/// `F_DUPFD_CLOEXEC`): the socket stays open while either is, so a Python thread writing
/// through this one never writes to a descriptor number the I/O thread closed and reused
/// (`server/lend.rs`).
pub fn dup(fd: &impl AsRawFd) -> io::Result<OwnedFd> {
    // SAFETY: the caller keeps `fd` open for the duration of the call, which is all the
    // borrow lives.
    unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) }.try_clone_to_owned()
}
