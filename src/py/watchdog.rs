//! `--timeout`, the Python side: a watchdog thread that finds requests whose Python code
//! has run longer than the limit, logs where each is stuck (its Python stack), and tells the
//! process when every Python thread it may have is stuck, so its supervisor can replace it.
//! The I/O side answers the stuck request's client itself (`server::conn`, 504), whatever
//! the Python thread does; ARCHITECTURE.md §10 says what the timeout means.
//!
//! Each Python thread has a [`ThreadWatch`]: when its current request began (two relaxed
//! stores per request). Reading a stuck thread's stack needs its interpreter's GIL: the
//! watchdog joins that interpreter with a thread state of its own for the moment it takes
//! (a thread waiting in `time.sleep` or on a socket has released the GIL), from a helper
//! thread it waits for at most [`STACK_WAIT`], in case the stuck code holds the GIL in C.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use pyo3_ffi as ffi;

use super::host::Host;
use super::object::{Attached, Gil, Obj};
use super::watch::{now_us, ThreadWatch};
use crate::{log_error, log_warn};

/// How long the watchdog waits to read a stuck thread's stack before it logs without it.
const STACK_WAIT: Duration = Duration::from_secs(1);

/// The running watchdog.
pub(super) struct Watchdog {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: std::thread::JoinHandle<()>,
}

impl Watchdog {
    /// Watches the threads of `hosts` for requests running longer than `limit`; sets
    /// `all_stuck` while every thread the hosts may have is stuck so.
    pub(super) fn start(
        hosts: Vec<Arc<Host>>,
        limit: Duration,
        all_stuck: Arc<AtomicBool>,
    ) -> anyhow::Result<Watchdog> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopped = stop.clone();
        // Often enough that a stuck request is reported soon after the limit.
        let tick = (limit / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let handle = std::thread::Builder::new()
            .name("spindle-watchdog".into())
            .spawn(move || {
                let (lock, cvar) = &*stopped;
                let mut done = lock.lock().unwrap_or_else(|e| e.into_inner());
                while !*done {
                    done = cvar
                        .wait_timeout(done, tick)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    if !*done {
                        look(&hosts, limit, &all_stuck);
                    }
                }
            })
            .context("cannot start the --timeout watchdog")?;
        Ok(Watchdog { stop, handle })
    }

    pub(super) fn stop(self) {
        let (lock, cvar) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cvar.notify_all();
        let _ = self.handle.join();
    }
}

/// One look at every thread.
fn look(hosts: &[Arc<Host>], limit: Duration, all_stuck: &AtomicBool) {
    let now = now_us();
    let limit_us = limit.as_micros() as u64;
    let mut stuck = 0;
    let mut could_have = 0;
    for (index, host) in hosts.iter().enumerate() {
        could_have += host.max;
        for watch in host.watches() {
            let since = watch.busy_since.load(Ordering::Acquire);
            if since == 0 || now.saturating_sub(since) < limit_us {
                continue;
            }
            stuck += 1;
            if watch.reported.swap(since, Ordering::AcqRel) != since {
                let ran = Duration::from_micros(now - since);
                report(host, &watch, since, ran, index, limit);
            }
        }
    }
    let every = stuck > 0 && stuck >= could_have;
    if every && !all_stuck.swap(true, Ordering::AcqRel) {
        log_error!(
            "every Python thread this process may have ({stuck}) is stuck in a request longer than --timeout {} s",
            limit.as_secs_f64()
        );
    } else if !every {
        all_stuck.store(false, Ordering::Release);
    }
}

fn report(
    host: &Arc<Host>,
    watch: &Arc<ThreadWatch>,
    since: u64,
    ran: Duration,
    index: usize,
    limit: Duration,
) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let (visit, watched) = (host.clone(), watch.clone());
    let spawned = std::thread::Builder::new()
        .name("spindle-stack".into())
        .spawn(move || {
            let _ = tx.send(read_stack(&visit, &watched, since));
        });
    let stack = match spawned {
        Ok(_) => rx.recv_timeout(STACK_WAIT).unwrap_or_else(|_| {
            Err(format!(
                "not read: its interpreter's GIL stayed held for {} s (code in C that does not release it)",
                STACK_WAIT.as_secs_f64()
            ))
        }),
        Err(err) => Err(format!("not read: cannot start a thread ({err})")),
    };
    match stack {
        Ok(stack) => log_error!(
            "a request has been in the application {:.1} s without giving control back (interpreter {index}), longer than --timeout {} s; its client gets a 504 (or, mid-response, a closed connection). Where it is (most recent call last):\n{}",
            ran.as_secs_f64(),
            limit.as_secs_f64(),
            stack.trim_end()
        ),
        Err(why) => log_warn!(
            "a request has been in the application {:.1} s without giving control back (interpreter {index}), longer than --timeout {} s; its client gets a 504 (or, mid-response, a closed connection). Its Python stack: {why}",
            ran.as_secs_f64(),
            limit.as_secs_f64()
        ),
    }
}

/// The Python stack of the thread behind `watch`, if it is still in the request that began
/// at `since`. Runs on a thread of its own, which joins the interpreter for the moment.
fn read_stack(host: &Host, watch: &ThreadWatch, since: u64) -> Result<String, String> {
    let admission = host
        .admit_guest()
        .ok_or_else(|| "not read: its interpreter is closing".to_string())?;
    // SAFETY: the host admitted this thread while open, so the interpreter lives until
    // `guest_left` below; the thread state is new, this thread's, attached only here.
    let tstate = unsafe { ffi::PyThreadState_New(admission.state.as_ptr()) };
    // SAFETY: as above.
    let attached = unsafe { Attached::restore(tstate) };
    let stack = stack_of(attached.gil(), watch, since);
    drop(admission);
    std::mem::forget(attached);
    super::thread::end_thread_state(tstate);
    host.guest_left();
    stack
}

fn stack_of(gil: Gil<'_>, watch: &ThreadWatch, since: u64) -> Result<String, String> {
    // The watched thread changes `busy_since` only with this interpreter's GIL, which we
    // hold: while it still shows `since`, the thread is inside that request, so its thread
    // state exists (a thread deletes its state only after its last request, GIL held too).
    if watch.busy_since.load(Ordering::Acquire) != since {
        return Err("not read: the request ended meanwhile".into());
    }
    // SAFETY: the thread state is alive (above) and belongs to the interpreter whose GIL
    // this thread holds; PyThreadState_GetFrame returns a new reference or NULL.
    let frame = unsafe { ffi::PyThreadState_GetFrame(watch.tstate as *mut ffi::PyThreadState) };
    if frame.is_null() {
        return Err("none: the thread runs no Python code (it waits in C)".into());
    }
    // SAFETY: `frame` is a new reference, owned from here.
    let frame = unsafe { Obj::from_owned(gil, frame.cast()) }.map_err(|e| e.summary())?;
    let text = (|| {
        let lines = gil
            .import(c"traceback")?
            .getattr(c"format_stack")?
            .call(&[frame.borrow()])?;
        gil.str("")?.getattr(c"join")?.call(&[lines.borrow()])
    })()
    .map_err(|e| format!("not read: {}", e.summary()))?;
    Ok(text.to_string_lossy())
}
