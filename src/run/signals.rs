//! The process's signals. Spindle owns SIGINT, SIGTERM and SIGHUP while it serves: they are
//! blocked in the calling thread before any other thread starts (every thread inherits the
//! mask, so none of them, and no Python code, ever sees these signals) and taken with
//! `sigwait` by the thread that runs the server, the Python main thread when started from
//! the `spindle` command. Python's own handlers (`KeyboardInterrupt` for SIGINT) do not run
//! meanwhile: CPython runs signal handlers only on the main thread, between bytecodes, and
//! that thread is waiting here with its GIL released. When the server returns, the mask the
//! caller had is put back.

use std::io;
use std::time::{Duration, Instant};

/// A signal Spindle acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Ctrl-C: stop gracefully; a second one stops at once.
    Int,
    /// Stop gracefully (what service managers and orchestrators send).
    Term,
    /// Reload (what deploy tools send).
    Hup,
}

impl Signal {
    fn from_raw(sig: libc::c_int) -> Option<Signal> {
        match sig {
            libc::SIGINT => Some(Signal::Int),
            libc::SIGTERM => Some(Signal::Term),
            libc::SIGHUP => Some(Signal::Hup),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
            Signal::Hup => "SIGHUP",
        }
    }
}

/// The signals blocked by [`OwnedSignals::block`], and the mask to put back.
pub struct OwnedSignals {
    set: libc::sigset_t,
    previous: libc::sigset_t,
    /// The mask is per thread: the value must be dropped on the thread that blocked.
    _not_send: std::marker::PhantomData<*const ()>,
}

/// A copy of the set, for threads that wait too (the drain watchdog).
#[derive(Clone, Copy)]
pub struct SignalSet {
    set: libc::sigset_t,
}

// SAFETY: a sigset_t is plain data (a bit array) with no pointers; waiting on a copy of it
// from another thread is what sigwait is for.
unsafe impl Send for SignalSet {}

impl OwnedSignals {
    /// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and so in every thread it
    /// starts from now on).
    pub fn block() -> io::Result<OwnedSignals> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises `set` before any other
        // use, and pthread_sigmask fills `previous`.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut previous: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` and `previous` are valid, exclusively borrowed sigset_t; the calls
        // only write them and the calling thread's signal mask.
        let rc = unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGHUP);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut previous)
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(OwnedSignals {
            set,
            previous,
            _not_send: std::marker::PhantomData,
        })
    }

    pub fn set(&self) -> SignalSet {
        SignalSet { set: self.set }
    }
}

impl Drop for OwnedSignals {
    /// Takes whatever of our signals is still pending (a second SIGTERM that came during the
    /// drain was for us, not for the program we return to), then puts the caller's mask back.
    fn drop(&mut self) {
        let set = self.set();
        while set.wait_timeout(Duration::ZERO).is_some() {}
        // SAFETY: `previous` was filled by pthread_sigmask in `block`, on this thread (the
        // value is not Send, so it is dropped on the thread that made it).
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut());
        }
    }
}

impl SignalSet {
    /// Waits for one of the signals.
    pub fn wait(&self) -> Signal {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `self.set` was initialised in `block`; `sig` is a valid out pointer.
            let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
            if rc == 0 {
                if let Some(signal) = Signal::from_raw(sig) {
                    return signal;
                }
            }
        }
    }

    /// Waits up to `timeout` for one of the signals; `None` when the time ran out.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Signal> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = libc::timespec {
                tv_sec: left.as_secs() as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            };
            // SAFETY: `self.set` was initialised in `block`; `ts` is a valid timespec; the
            // siginfo pointer may be NULL.
            let sig = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
            if let Some(signal) = Signal::from_raw(sig) {
                return Some(signal);
            }
            if left.is_zero() || Instant::now() >= deadline {
                return None;
            }
        }
    }
}
