//! Start-up and shutdown, and the I/O threads: one monoio runtime per thread, pinned to a
//! core, each with its own SO_REUSEPORT listener per `--bind` address. I/O threads never
//! touch Python: they hand requests to `py` through `handoff`.

mod body;
mod conn;
mod event;
mod gather;
mod sendfile;
mod signals;
mod socket;
mod thread;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use crossbeam_channel::Sender;

use crate::config::{Config, DriverChoice};
use crate::handoff::{IoMailbox, Request};
use crate::{log_debug, log_info};

/// The I/O driver actually running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// Picks the driver: epoll unless io_uring is asked for (and then only if the kernel, or a
/// container's seccomp profile, allows it).
pub fn choose_driver(choice: DriverChoice) -> anyhow::Result<Driver> {
    match choice {
        DriverChoice::Epoll => Ok(Driver::Epoll),
        DriverChoice::IoUring => {
            if monoio::utils::detect_uring() {
                Ok(Driver::IoUring)
            } else {
                bail!("--driver io-uring: io_uring is not available here (kernel or seccomp refuses it); use --driver epoll")
            }
        }
        DriverChoice::Auto => Ok(Driver::Epoll),
    }
}

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

/// Binds `io_threads` listeners per address. Port 0 is resolved by the first bind and the
/// rest reuse the port it got.
fn bind_all(config: &Config) -> anyhow::Result<(Vec<Vec<std::net::TcpListener>>, Vec<SocketAddr>)> {
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
    Ok((per_thread, bound))
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

/// What every I/O thread shares with the rest of the process.
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub stopping: AtomicBool,
}

/// Runs the server until SIGINT/SIGTERM, then drains and returns.
pub fn run(config: Config) -> anyhow::Result<()> {
    crate::log::set_level(config.log_level);
    // Block the stop signals before any thread exists, so every thread inherits the mask
    // and only the signal thread ever sees them.
    let signals = signals::StopSignals::block()?;
    let config = Arc::new(config);
    let driver = choose_driver(config.driver)?;

    for &addr in &config.binds {
        ensure_port_free(addr)?;
    }
    let (listeners, bound) = bind_all(&config)?;

    let mailboxes: Vec<Arc<IoMailbox>> = (0..config.io_threads).map(|_| IoMailbox::new()).collect();
    let (req_tx, req_rx) = crate::handoff::request_queue(config.queue_size);
    let python = crate::py::Runtime::start(&config, driver, req_rx)?;

    let shared = Arc::new(Shared {
        config: config.clone(),
        stopping: AtomicBool::new(false),
    });
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut io_handles = Vec::new();
    for (idx, thread_listeners) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let mailbox = mailboxes[idx].clone();
        let requests = req_tx.clone();
        let core = (!cores.is_empty()).then(|| cores[idx % cores.len()]);
        let handle = std::thread::Builder::new()
            .name(format!("spindle-io-{idx}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                io_thread(idx, driver, shared, mailbox, requests, thread_listeners)
            })
            .context("cannot start an I/O thread")?;
        io_handles.push(handle);
    }
    // Only the I/O threads may hold senders: when they end, the queue closes and the
    // Python threads finish.
    drop(req_tx);

    for addr in &bound {
        log_info!(
            "listening on http://{} ({}, {} I/O threads, {} Python threads, {})",
            display_addr(*addr),
            driver.name(),
            config.io_threads,
            config.py_threads,
            python.mode_description()
        );
    }

    let signal = signals.wait();
    log_info!("{signal} received: finishing in-flight requests, then stopping");
    shared.stopping.store(true, Ordering::SeqCst);
    // A bounded drain: an application stuck in a request must not keep the server alive
    // for ever. A second Ctrl-C (SIGINT) means "now"; a repeated SIGTERM (service managers
    // resend it) changes nothing.
    let grace = config.graceful_timeout;
    let deadline = std::time::Instant::now() + grace;
    std::thread::Builder::new()
        .name("spindle-drain".into())
        .spawn(move || {
            loop {
                match signals.wait_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                    Some("SIGINT") => {
                        crate::log_error!("SIGINT received again: exiting without waiting for in-flight requests");
                        break;
                    }
                    Some(_) => continue,
                    None => {
                        crate::log_error!("in-flight requests still running after --graceful-timeout {}s: exiting", grace.as_secs_f64());
                        break;
                    }
                }
            }
            std::process::exit(1);
        })
        .context("cannot start the drain watchdog")?;
    for mailbox in &mailboxes {
        mailbox.request_stop();
    }
    let mut failed = false;
    for handle in io_handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                crate::log_error!("I/O thread failed: {e:#}");
                failed = true;
            }
            Err(_) => failed = true,
        }
    }
    python.stop();
    log_info!("stopped");
    if failed {
        bail!("an I/O thread failed");
    }
    Ok(())
}

fn display_addr(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// Puts the calling I/O thread under `SCHED_BATCH`: the same share of CPU as before, but
/// a wake-up (a reply, a readable socket) no longer preempts the thread that is running.
///
/// I/O and Python threads share cores. Under the default policy, the I/O thread woken by a
/// Python thread's first reply preempted it at once, so a batch of requests went back and
/// forth one reply at a time. Now the Python thread finishes its batch and the I/O thread
/// writes all of it: on one core, hello at 64 connections went from 74k to 98k req/s
/// and from 13.3 to 10.1 us of CPU per request (see the commit that added this).
/// Unprivileged; on failure the thread keeps the default policy.
fn yield_to_python_on_wakeup() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc != 0 {
        log_debug!(
            "SCHED_BATCH refused for an I/O thread ({}): keeping the default policy",
            std::io::Error::last_os_error()
        );
    }
}

fn io_thread(
    idx: usize,
    driver: Driver,
    shared: Arc<Shared>,
    mailbox: Arc<IoMailbox>,
    requests: Sender<Request>,
    listeners: Vec<std::net::TcpListener>,
) -> anyhow::Result<()> {
    yield_to_python_on_wakeup();
    match driver {
        Driver::IoUring => {
            let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(1024)
                .enable_timer()
                .build()
                .context("cannot create the io_uring runtime")?;
            rt.block_on(thread::io_main(idx, shared, mailbox, requests, listeners))
        }
        Driver::Epoll => {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .context("cannot create the epoll runtime")?;
            rt.block_on(thread::io_main(idx, shared, mailbox, requests, listeners))
        }
    }
}
