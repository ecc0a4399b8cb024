//! The `/metrics` endpoint: one plain thread with a blocking `TcpListener`, apart from the
//! supervisor's event loop and from the workers, so it answers while workers start, die
//! and restart. One request per connection (`Connection: close`), the head read with a
//! bound on its size and on the time a silent client may take; `GET` (and `HEAD`)
//! `/metrics` answers, another path is 404, another method 405. A scrape every few
//! seconds needs nothing more.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::expose::CONTENT_TYPE;
use super::Hub;
use crate::log_debug;

/// The largest request head read; longer is 431.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client has for its whole request head, and for each write of the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// The running endpoint; stopped (and its thread joined) when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` (a bind failure is the caller's setup error) and serves `hub`.
    pub fn start(addr: SocketAddr, hub: Arc<Hub>) -> anyhow::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("--metrics-bind {addr}: cannot listen there"))?;
        let addr = listener
            .local_addr()
            .context("--metrics-bind: local address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("spindle-metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopped.load(Ordering::Acquire) {
                        break;
                    }
                    match conn {
                        Ok(stream) => {
                            if let Err(err) = answer(stream, &hub) {
                                log_debug!("metrics: a scrape failed: {err}");
                            }
                        }
                        Err(err) => {
                            // EMFILE and friends: do not spin.
                            log_debug!("metrics: accept failed: {err}");
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            })
            .context("cannot start the metrics thread")?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens (with the real port when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        if TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
        // Else the thread stays blocked in accept until the process exits: harmless.
    }
}

/// Reads one request head and answers it.
fn answer(mut stream: TcpStream, hub: &Hub) -> io::Result<()> {
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() > MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "",
                false,
            );
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return respond(&mut stream, "408 Request Timeout", "", false);
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return respond(&mut stream, "408 Request Timeout", "", false);
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = hub.render();
            respond(&mut stream, "200 OK", &body, method == "HEAD")
        }
        ("GET" | "HEAD", _) => respond(&mut stream, "404 Not Found", "", false),
        _ => respond(&mut stream, "405 Method Not Allowed", "", false),
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &str, head_only: bool) -> io::Result<()> {
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let allow = if status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(body);
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()
}
