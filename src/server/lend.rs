//! The socket a connection lends for a direct answer (ARCHITECTURE.md §4, "Direct answers"):
//! a second descriptor of it, so the socket outlives the connection's own descriptor while
//! a Python thread may still write (a closed and reused descriptor number could otherwise
//! take another connection's bytes). Made at a connection's first lend and kept while it
//! lives; the worker holds at most an eighth of `--worker-connections` of them, so they
//! never crowd out `accept` (the default limit is three quarters of the open-files limit,
//! and a lend past the cap simply does not happen).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::handoff::LentSocket;

use super::{sys, Shared};

pub(super) struct Lent {
    fd: OwnedFd,
    shared: Arc<Shared>,
}

impl Lent {
    /// A second descriptor of `socket`; `Ok(None)` when the worker holds its cap of them.
    pub(super) fn of(socket: &impl AsRawFd, shared: &Arc<Shared>) -> std::io::Result<Option<Lent>> {
        let cap = (shared.connection_limit / 8).max(1);
        if shared.lent_sockets.fetch_add(1, Ordering::Relaxed) >= cap {
            shared.lent_sockets.fetch_sub(1, Ordering::Relaxed);
            return Ok(None);
        }
        match sys::dup(socket) {
            Ok(fd) => Ok(Some(Lent {
                fd,
                shared: shared.clone(),
            })),
            Err(err) => {
                shared.lent_sockets.fetch_sub(1, Ordering::Relaxed);
                Err(err)
            }
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.shared.lent_sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LentSocket for Lent {
    fn write_now(&self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = sys::send_now(&self.fd, bytes)?;
        crate::metrics::sent(n);
        Ok(n)
    }
}

/// The socket as lent to a request run on its I/O thread itself (`--inline`,
/// ARCHITECTURE.md §4, "Inline"): the connection's own descriptor, no second one. It is
/// lent only for the length of one synchronous call made from the connection's own task,
/// and taken back (`Direct::recall`, which drops every copy the exchange holds) before the
/// task goes on, so the descriptor is open whenever it is written to.
pub(super) struct InlineSocket(std::os::fd::RawFd);

impl InlineSocket {
    pub(super) fn of(socket: &impl AsRawFd) -> InlineSocket {
        InlineSocket(socket.as_raw_fd())
    }
}

impl AsRawFd for InlineSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

impl LentSocket for InlineSocket {
    fn write_now(&self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = sys::send_now(self, bytes)?;
        crate::metrics::sent(n);
        Ok(n)
    }
}
