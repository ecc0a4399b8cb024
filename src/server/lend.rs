//! The socket a connection lends for a direct answer (ARCHITECTURE.md §4, "Direct answers"):
//! a second descriptor of it, so the socket outlives the connection's own descriptor while
//! a Python thread may still write (a closed and reused descriptor number could otherwise
//! take another connection's bytes). Made once per connection, at its first lend.

use std::os::fd::OwnedFd;

use crate::handoff::LentSocket;

use super::sys;

pub(super) struct Lent(OwnedFd);

impl Lent {
    pub(super) fn of(socket: &impl std::os::fd::AsRawFd) -> std::io::Result<Lent> {
        sys::dup(socket).map(Lent)
    }
}

impl LentSocket for Lent {
    fn write_now(&self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = sys::send_now(&self.0, bytes)?;
        crate::metrics::sent(n);
        Ok(n)
    }
}
