//! Listening sockets: bound (or taken over) once, before any thread starts, by the
//! supervisor or the single process, with the checks that make a bad `--bind` one clear
//! error; a worker inherits them. TCP addresses get one socket per I/O thread
//! (`SO_REUSEPORT`); UNIX sockets, `fd://N` and systemd's sockets are one socket that every
//! I/O thread shares (ARCHITECTURE.md §10).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::config::{Bind, Config};
use crate::server::{ListenAddr, Listener};

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
    pub per_thread: Vec<Vec<Listener>>,
    /// Where they listen (port 0 resolved), in `--bind` order.
    pub bound: Vec<ListenAddr>,
    /// The UNIX socket files made here, removed when this goes.
    files: SocketFiles,
}

impl Listeners {
    /// The listeners a supervisor bound and left open in this process, as descriptors:
    /// `fds[i]` are I/O thread i's, one per address.
    pub fn inherited(fds: &[Vec<i32>]) -> anyhow::Result<Listeners> {
        let per_thread = fds
            .iter()
            .map(|thread| thread.iter().map(|&fd| adopt(fd)).collect())
            .collect::<anyhow::Result<Vec<Vec<Listener>>>>()?;
        Listeners::new(per_thread, SocketFiles(Vec::new()))
    }

    fn new(per_thread: Vec<Vec<Listener>>, files: SocketFiles) -> anyhow::Result<Listeners> {
        let bound = match per_thread.first() {
            Some(first) => first
                .iter()
                .map(|l| l.local_addr())
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(Listeners {
            per_thread,
            bound,
            files,
        })
    }

    /// The UNIX socket files this process made.
    pub fn unix_paths(&self) -> &[PathBuf] {
        &self.files.0
    }

    /// Their descriptors, as [`Listeners::inherited`] takes them.
    pub fn fds(&self) -> Vec<Vec<i32>> {
        self.per_thread
            .iter()
            .map(|thread| thread.iter().map(|l| l.as_raw_fd()).collect())
            .collect()
    }
}

/// Takes a listening socket this process was handed as descriptor `fd` (`--bind fd://N`,
/// systemd's `LISTEN_FDS`, a supervisor's), marking it close-on-exec.
fn adopt(fd: i32) -> anyhow::Result<Listener> {
    close_on_exec(fd).map_err(|e| anyhow::anyhow!("descriptor {fd}: {e}"))?;
    // SAFETY: `fd` is open (close_on_exec succeeded) and was handed to this process to
    // listen on; nothing else here owns it, so the OwnedFd is its only owner.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    Listener::from_fd(owned)
        .map_err(|e| anyhow::anyhow!("descriptor {fd}: {e}: not a listening socket to serve on"))
}

/// UNIX socket files this process made; removed on drop, so a restart binds again.
struct SocketFiles(Vec<PathBuf>);

impl Drop for SocketFiles {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The sockets systemd passed (socket activation: `LISTEN_PID` is this process and
/// `LISTEN_FDS` says how many, from descriptor 3 on), or `None` when it passed none. The
/// variables are removed so the application's own children do not take them for theirs.
fn systemd_listeners() -> anyhow::Result<Option<Vec<Listener>>> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    if !for_us || count <= 0 {
        return Ok(None);
    }
    // Only the main thread runs yet: nothing reads the environment meanwhile.
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    const SD_LISTEN_FDS_START: i32 = 3;
    (SD_LISTEN_FDS_START..SD_LISTEN_FDS_START + count)
        .map(adopt)
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Some)
}

/// Binds (or takes) every listener: per `--bind` TCP address one socket per I/O thread
/// (`SO_REUSEPORT`; port 0 is resolved by the first and the rest reuse its port); a UNIX
/// socket or an inherited descriptor is one socket, which every I/O thread shares. Under
/// systemd socket activation, systemd's sockets replace `--bind`.
pub fn bind_all(config: &Config) -> anyhow::Result<Listeners> {
    let mut per_thread: Vec<Vec<Listener>> = (0..config.io_threads).map(|_| Vec::new()).collect();
    let mut files = SocketFiles(Vec::new());
    let share = |listener: Listener, per_thread: &mut Vec<Vec<Listener>>| -> anyhow::Result<()> {
        for listeners in per_thread.iter_mut().skip(1) {
            listeners.push(listener.try_clone()?);
        }
        per_thread[0].push(listener);
        Ok(())
    };
    if let Some(sockets) = systemd_listeners()? {
        if config.binds != [Bind::Tcp(SocketAddr::from(([127, 0, 0, 1], 8000)))] {
            crate::log_warn!(
                "systemd passed {} socket(s): --bind is ignored",
                sockets.len()
            );
        }
        for listener in sockets {
            share(listener, &mut per_thread)?;
        }
        return Listeners::new(per_thread, files);
    }
    for bind in &config.binds {
        match bind {
            Bind::Tcp(addr) => {
                let addr = *addr;
                ensure_port_free(addr)?;
                let first = bind_listener(addr, config.backlog).map_err(|e| bind_error(addr, e))?;
                let actual = first.local_addr()?;
                per_thread[0].push(Listener::Tcp(first));
                for listeners in per_thread.iter_mut().skip(1) {
                    let next =
                        bind_listener(actual, config.backlog).map_err(|e| bind_error(actual, e))?;
                    listeners.push(Listener::Tcp(next));
                }
            }
            Bind::Unix(path) => {
                let listener = bind_unix(path, config.backlog, config.unix_socket_mode)
                    .with_context(|| format!("cannot bind unix:{}", path.display()))?;
                files.0.push(path.clone());
                share(Listener::Unix(listener), &mut per_thread)?;
            }
            Bind::Fd(fd) => {
                let listener = adopt(*fd).with_context(|| format!("--bind fd://{fd}"))?;
                share(listener, &mut per_thread)?;
            }
        }
    }
    Listeners::new(per_thread, files)
}

/// Binds a UNIX socket at `path`. A socket file left by a server that is gone (nothing
/// accepts on it) is replaced; one a live server listens on, or any other file, is refused.
fn bind_unix(path: &Path, backlog: u32, mode: Option<u32>) -> anyhow::Result<UnixListener> {
    use socket2::{Domain, SockAddr, Socket, Type};
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    bail!("the socket is in use (is another server running? pick another --bind)")
                }
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path).context("cannot remove the stale socket file")?;
                }
                Err(err) => return Err(anyhow::Error::new(err).context("the socket file exists")),
            }
        }
        Ok(_) => bail!("the path exists and is not a socket"),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err.into()),
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::unix(path)?)?;
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .context("cannot set --unix-socket-mode")?;
    }
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
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

/// A listener as the `listening on` line shows it: `http://127.0.0.1:8000`, or with the
/// scheme of the protocol it speaks (`uwsgi://127.0.0.1:8001`), or `unix:PATH`.
pub fn shown(addr: &ListenAddr, protocol: crate::config::Protocol) -> String {
    let text = addr.to_string();
    match text.strip_prefix("http://") {
        Some(rest) => format!("{}://{rest}", protocol.scheme()),
        None => text,
    }
}
