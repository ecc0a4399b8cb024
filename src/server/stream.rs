//! What a connection arrives on and travels over: TCP, or a UNIX socket (nginx's
//! `proxy_pass http://unix:/run/app.sock`, systemd socket units). The two are the same to
//! the connection state machine, so both are one type here, and nothing above this module
//! asks which it is except for the addresses ([`Endpoint`]).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::PathBuf;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::BufResult;

use crate::handoff::Endpoint;

/// A listening socket, as the process was given it or bound it.
#[derive(Debug)]
pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix(StdUnixListener),
}

/// Where a listener listens, as the log shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(SocketAddr::V4(a)) => write!(f, "http://{a}"),
            ListenAddr::Tcp(SocketAddr::V6(a)) => write!(f, "http://[{}]:{}", a.ip(), a.port()),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Listener {
    /// A listening socket handed over as a descriptor (`fd://N`, systemd's `LISTEN_FDS`):
    /// a stream socket of the IP families or a UNIX one, already listening. Anything else
    /// is refused with the reason.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Listener> {
        let socket = socket2::Socket::from(fd);
        let refuse = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_string());
        if socket.r#type()? != socket2::Type::STREAM {
            return Err(refuse("not a stream socket"));
        }
        if !socket.is_listener()? {
            return Err(refuse("not listening"));
        }
        let domain = socket.domain()?;
        if domain == socket2::Domain::IPV4 || domain == socket2::Domain::IPV6 {
            Ok(Listener::Tcp(socket.into()))
        } else if domain == socket2::Domain::UNIX {
            Ok(Listener::Unix(socket.into()))
        } else {
            Err(refuse("not an IP or UNIX socket"))
        }
    }

    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        Ok(match self {
            Listener::Tcp(l) => ListenAddr::Tcp(l.local_addr()?),
            Listener::Unix(l) => ListenAddr::Unix(
                l.local_addr()?
                    .as_pathname()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("(unnamed)")),
            ),
        })
    }

    pub fn try_clone(&self) -> io::Result<Listener> {
        Ok(match self {
            Listener::Tcp(l) => Listener::Tcp(l.try_clone()?),
            Listener::Unix(l) => Listener::Unix(l.try_clone()?),
        })
    }

    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(nonblocking),
            Listener::Unix(l) => l.set_nonblocking(nonblocking),
        }
    }

    /// One connection from the queue (`WouldBlock` when it is empty: the listener is
    /// non-blocking), with its peer; the socket close-on-exec, and non-blocking when asked
    /// (epoll wants it, io_uring does not), in the one `accept4` call.
    pub(super) fn accept(&self, nonblocking: bool) -> io::Result<(Accepted, Endpoint)> {
        let flags = libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
        let (socket, peer) = socket2::SockRef::from(self).accept4(flags)?;
        Ok(match self {
            Listener::Tcp(_) => {
                let peer = peer.as_socket().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "a TCP peer without an address")
                })?;
                (Accepted::Tcp(socket.into()), Endpoint::Ip(peer))
            }
            Listener::Unix(_) => (Accepted::Unix(socket.into()), Endpoint::Unix),
        })
    }

    /// A handle to wait on this listener's readiness from a monoio runtime (it shares the
    /// socket, through a duplicated descriptor).
    pub(super) fn readiness(&self) -> io::Result<Readiness> {
        Ok(match self.try_clone()? {
            Listener::Tcp(l) => Readiness::Tcp(monoio::net::TcpListener::from_std(l)?),
            Listener::Unix(l) => Readiness::Unix(monoio::net::UnixListener::from_std(l)?),
        })
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l) => l.as_fd(),
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
        }
    }
}

/// See [`Listener::readiness`].
pub(super) enum Readiness {
    Tcp(monoio::net::TcpListener),
    Unix(monoio::net::UnixListener),
}

impl Readiness {
    /// Until a connection waits in the queue (it may be gone by the time we accept).
    pub(super) async fn readable(&self) -> io::Result<()> {
        match self {
            Readiness::Tcp(l) => l.readable(false).await,
            Readiness::Unix(l) => l.readable(false).await,
        }
    }
}

/// An accepted connection, before it joins a runtime.
pub(super) enum Accepted {
    Tcp(std::net::TcpStream),
    Unix(StdUnixStream),
}

impl Accepted {
    /// The local end: for TCP, `fixed` when the listener's own address says it (it is not a
    /// wildcard), else one `getsockname`.
    pub(super) fn local(&self, fixed: Option<SocketAddr>, peer: Endpoint) -> Endpoint {
        match self {
            Accepted::Tcp(stream) => match fixed.or_else(|| stream.local_addr().ok()) {
                Some(addr) => Endpoint::Ip(addr),
                None => peer,
            },
            Accepted::Unix(_) => Endpoint::Unix,
        }
    }

    /// Joins the calling thread's runtime (accepted non-blocking for epoll, blocking for
    /// io_uring, which waits for the socket itself where a non-blocking one would hand
    /// EAGAIN back to us).
    pub(super) fn into_stream(self) -> io::Result<Stream> {
        Ok(match self {
            Accepted::Tcp(s) => Stream::Tcp(monoio::net::TcpStream::from_std(s)?),
            Accepted::Unix(s) => Stream::Unix(monoio::net::UnixStream::from_std(s)?),
        })
    }
}

/// A connection's socket on this thread's runtime.
pub(super) enum Stream {
    Tcp(monoio::net::TcpStream),
    Unix(monoio::net::UnixStream),
}

impl Stream {
    #[inline]
    pub(super) async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Tcp(s) => s.read(buf).await,
            Stream::Unix(s) => s.read(buf).await,
        }
    }

    #[inline]
    pub(super) async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Tcp(s) => s.write(buf).await,
            Stream::Unix(s) => s.write(buf).await,
        }
    }

    #[inline]
    pub(super) async fn writev<T: IoVecBuf>(&mut self, bufs: T) -> BufResult<usize, T> {
        match self {
            Stream::Tcp(s) => s.writev(bufs).await,
            Stream::Unix(s) => s.writev(bufs).await,
        }
    }

    /// Until the socket has bytes (or an EOF, or an error) to read; checked with `poll(2)`
    /// on the epoll driver (not `relaxed`), so it is never a stale readiness. Dropping the
    /// wait loses nothing: no bytes are taken (admission control, `conn.rs`).
    pub(super) async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable(false).await,
            Stream::Unix(s) => s.readable(false).await,
        }
    }

    /// Until the socket can take more bytes (see `socket.rs`'s sendfile).
    pub(super) async fn writable(&self, relaxed: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.writable(relaxed).await,
            Stream::Unix(s) => s.writable(relaxed).await,
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}
