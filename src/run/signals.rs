//! The process's signals, while Spindle serves. A handler (`sigaction`) writes each signal's
//! number to a pipe, and the thread that runs the server reads it: the classic self-pipe,
//! chosen over blocking the signals in every thread (`sigwait`, `signalfd`) because a
//! blocked mask is inherited: every process the application spawned from one of our
//! threads would start with SIGTERM blocked, deaf to its own supervisor.
//!
//! Only the I/O threads block these signals (a signal landing there would interrupt
//! `epoll_wait` or `io_uring_enter` for nothing); any other thread may run the handler,
//! which only writes one byte. CPython runs Python-level handlers only on the main thread
//! of the main interpreter, between bytecodes: while Spindle serves, that thread waits here
//! with its GIL released, so Python's own handlers (KeyboardInterrupt) do not run; the
//! handlers the caller had are put back when the server returns.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// A signal Spindle acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Ctrl-C: stop; gracefully in a single process the first time, at once the second.
    Int,
    /// Stop gracefully (what service managers and orchestrators send).
    Term,
    /// Stop at once.
    Quit,
    /// Reload: new workers with the current code, then the old ones drain.
    Hup,
    /// One worker more.
    Ttin,
    /// One worker less.
    Ttou,
    /// Reopen log files.
    Usr1,
    /// To a worker: retire. Finish what it has, like SIGTERM, but leave the accept queue
    /// to the workers that stay (ARCHITECTURE.md §10).
    Usr2,
}

impl Signal {
    const ALL: [Signal; 8] = [
        Signal::Int,
        Signal::Term,
        Signal::Quit,
        Signal::Hup,
        Signal::Ttin,
        Signal::Ttou,
        Signal::Usr1,
        Signal::Usr2,
    ];

    fn raw(self) -> libc::c_int {
        match self {
            Signal::Int => libc::SIGINT,
            Signal::Term => libc::SIGTERM,
            Signal::Quit => libc::SIGQUIT,
            Signal::Hup => libc::SIGHUP,
            Signal::Ttin => libc::SIGTTIN,
            Signal::Ttou => libc::SIGTTOU,
            Signal::Usr1 => libc::SIGUSR1,
            Signal::Usr2 => libc::SIGUSR2,
        }
    }

    fn from_raw(sig: libc::c_int) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.raw() == sig)
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
            Signal::Quit => "SIGQUIT",
            Signal::Hup => "SIGHUP",
            Signal::Ttin => "SIGTTIN",
            Signal::Ttou => "SIGTTOU",
            Signal::Usr1 => "SIGUSR1",
            Signal::Usr2 => "SIGUSR2",
        }
    }

    /// The number `kill(2)` takes.
    pub fn number(self) -> i32 {
        self.raw()
    }
}

/// The write end of the pipe, for the handler (a signal handler can reach only statics).
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    // Async-signal-safe: an atomic load, write(2), and errno saved around it.
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: errno is thread-local; reading and restoring it is what a handler must do
        // so the interrupted code sees its own errno.
        let saved = unsafe { *libc::__errno_location() };
        let byte = sig as u8;
        // SAFETY: writing one byte from a live local to a pipe we own; a full pipe (a storm
        // of signals) drops the byte, which is harmless.
        unsafe {
            libc::write(fd, std::ptr::from_ref(&byte).cast(), 1);
            *libc::__errno_location() = saved;
        }
    }
}

/// The handlers installed for [`Signal::ALL`], the pipe they write to, and the handlers
/// to put back. One at a time per process.
pub struct OwnedSignals {
    read: OwnedFd,
    /// Kept open for the handler (`PIPE_WRITE`) until the handlers are put back.
    _write: OwnedFd,
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

/// A handle to wait for signals from any thread.
#[derive(Clone, Copy)]
pub struct SignalSet {
    read: libc::c_int,
}

impl OwnedSignals {
    /// Installs Spindle's handlers for SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGTTIN, SIGTTOU,
    /// SIGUSR1 and SIGUSR2.
    pub fn install() -> io::Result<OwnedSignals> {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid out array of two ints.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 just made these descriptors, and nothing else owns them.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        if PIPE_WRITE
            .compare_exchange(-1, write.as_raw_fd(), Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(io::Error::other(
                "Spindle's signal handlers are installed already",
            ));
        }
        let mut owned = OwnedSignals {
            read,
            _write: write,
            previous: Vec::new(),
        };
        for signal in Signal::ALL {
            // SAFETY: sigaction is plain data, filled before use; the handler only does
            // async-signal-safe work (see `on_signal`).
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                let mut previous: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal.raw(), &action, &mut previous) != 0 {
                    return Err(io::Error::last_os_error());
                }
                owned.previous.push((signal.raw(), previous));
            }
        }
        Ok(owned)
    }

    pub fn set(&self) -> SignalSet {
        SignalSet {
            read: self.read.as_raw_fd(),
        }
    }
}

impl Drop for OwnedSignals {
    /// Puts the caller's handlers back; a signal that came after the server stopped and was
    /// not read is dropped with the pipe (it was for the server that is gone).
    fn drop(&mut self) {
        for (sig, previous) in &self.previous {
            // SAFETY: `previous` was filled by sigaction for this signal in `install`.
            unsafe {
                libc::sigaction(*sig, previous, std::ptr::null_mut());
            }
        }
        PIPE_WRITE.store(-1, Ordering::Release);
    }
}

impl SignalSet {
    /// Waits up to `timeout` for a signal; `None` when the time ran out.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Signal> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(signal) = self.take() {
                return Some(signal);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: self.read,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd for the call.
            unsafe { libc::poll(&mut pfd, 1, ms) };
        }
    }

    /// A signal already delivered, if any.
    fn take(&self) -> Option<Signal> {
        loop {
            let mut byte = 0u8;
            // SAFETY: reading one byte into a live local from our non-blocking pipe.
            let n = unsafe { libc::read(self.read, std::ptr::from_mut(&mut byte).cast(), 1) };
            if n != 1 {
                return None;
            }
            if let Some(signal) = Signal::from_raw(byte.into()) {
                return Some(signal);
            }
        }
    }
}

/// Blocks Spindle's signals in the calling thread (an I/O thread: see the module
/// documentation).
pub fn block_in_this_thread() {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; the call only
    // changes the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in Signal::ALL {
            libc::sigaddset(&mut set, signal.raw());
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
