//! Listening sockets: bound once per process before any thread starts, one per I/O thread
//! and address (`SO_REUSEPORT`), with the checks that make a bad `--bind` one clear error.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Duration;

use anyhow::bail;

use crate::config::Config;

/// Binds one listening socket with SO_REUSEPORT, so every I/O thread can own one on the
/// same address and the kernel spreads connections between them.
fn bind_listener(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: one setsockopt per
    // listener instead of one per connection. Responses go out whole, so Nagle only delays.
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// The listeners of every I/O thread, and the addresses they are bound to.
pub struct Listeners {
    /// `per_thread[i]`: I/O thread i's listeners, one per `--bind` address.
    pub per_thread: Vec<Vec<std::net::TcpListener>>,
    /// The bound addresses (port 0 resolved), in `--bind` order.
    pub bound: Vec<SocketAddr>,
}

impl Listeners {
    /// The listeners a supervisor bound and left open in this process, as descriptors:
    /// `fds[i]` are I/O thread i's, one per address.
    pub fn inherited(fds: &[Vec<i32>]) -> anyhow::Result<Listeners> {
        for &fd in fds.iter().flatten() {
            close_on_exec(fd).map_err(|e| anyhow::anyhow!("inherited listener {fd}: {e}"))?;
        }
        let per_thread: Vec<Vec<std::net::TcpListener>> = fds
            .iter()
            .map(|thread| {
                thread
                    .iter()
                    // SAFETY: the supervisor passed these descriptors to this process as its
                    // listeners (`--internal-worker`); nothing else here owns them.
                    .map(|&fd| unsafe { std::net::TcpListener::from_raw_fd(fd) })
                    .collect()
            })
            .collect();
        let bound = match per_thread.first() {
            Some(first) => first
                .iter()
                .map(|l| l.local_addr())
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(Listeners { per_thread, bound })
    }

    /// Their descriptors, as [`Listeners::inherited`] takes them.
    pub fn fds(&self) -> Vec<Vec<i32>> {
        self.per_thread
            .iter()
            .map(|thread| thread.iter().map(|l| l.as_raw_fd()).collect())
            .collect()
    }
}

/// Marks an inherited descriptor close-on-exec again, so the processes the application
/// starts do not inherit it (a child holding the supervisor's socket pair would hide this
/// worker's death; one holding a listener would keep the port). Fails on a descriptor that
/// is not open.
pub fn close_on_exec(fd: i32) -> std::io::Result<()> {
    // SAFETY: fcntl on a plain integer descriptor touches no memory of ours.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Binds `io_threads` listeners per address. Port 0 is resolved by the first bind and the
/// rest reuse the port it got.
pub fn bind_all(config: &Config) -> anyhow::Result<Listeners> {
    for &addr in &config.binds {
        ensure_port_free(addr)?;
    }
    let mut per_thread: Vec<Vec<std::net::TcpListener>> =
        (0..config.io_threads).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for &addr in &config.binds {
        let first = bind_listener(addr, config.backlog).map_err(|e| bind_error(addr, e))?;
        let actual = first.local_addr()?;
        per_thread[0].push(first);
        for listeners in per_thread.iter_mut().skip(1) {
            listeners
                .push(bind_listener(actual, config.backlog).map_err(|e| bind_error(actual, e))?);
        }
        bound.push(actual);
    }
    Ok(Listeners { per_thread, bound })
}

fn bind_error(addr: SocketAddr, err: std::io::Error) -> anyhow::Error {
    if err.kind() == std::io::ErrorKind::AddrInUse {
        anyhow::anyhow!("cannot bind {addr}: the address is already in use (is another server running? pick another --bind)")
    } else {
        anyhow::Error::new(err).context(format!("cannot bind {addr}"))
    }
}

/// Refuses a port some other process already listens on. SO_REUSEPORT would otherwise let
/// us share it silently with, say, an old Spindle; a probe connect tells.
fn ensure_port_free(addr: SocketAddr) -> anyhow::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = if addr.ip().is_unspecified() {
        match addr {
            SocketAddr::V4(a) => SocketAddr::from(([127, 0, 0, 1], a.port())),
            SocketAddr::V6(a) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port())),
        }
    } else {
        addr
    };
    if std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok() {
        bail!("cannot bind {addr}: the address is already in use (is another server running? pick another --bind)");
    }
    Ok(())
}

/// An address as the log shows it (IPv6 in brackets).
pub fn display_addr(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}
