//! How an idle Python thread sleeps until the request queue has something for it, without
//! the spinning and yielding of crossbeam's blocking `recv` (ARCHITECTURE.md §4).
//!
//! crossbeam's `recv` first spins (about 127 `pause`s) and then calls `sched_yield` four
//! times before it sleeps. Where the I/O thread and the Python thread share a core (the
//! lab's one-core runs; any machine with more threads than cores), that is CPU taken from
//! the thread that has the work, and the first yield is a context switch of its own: at one
//! connection a request cost 4 context switches where bjoern and nginx pay 1, and perf put
//! 9% of the server's CPU in the spin and the yields (perf/README.md, "One connection").
//! Here a Python thread that finds the queue empty yields once (where the I/O thread shares
//! its core, that lets it queue the next requests: sleeping at once cost a quarter of
//! hello-c64, perf/runs/2026-12-05-vm-doorbell/), looks again, and goes to sleep; the I/O side,
//! after it queued a request, wakes one sleeper if there is any: a load of one counter per
//! request while Python threads are busy.
//!
//! The protocol: a sleeper counts itself in `sleepers` under the lock, looks at the queue
//! again, and only then waits on the condvar (which lets the lock go atomically). A sender
//! queues, then reads `sleepers` (a SeqCst fence on each side between its write and its
//! read, so at least one of them sees the other's write), and when it is not zero takes the
//! lock and notifies. So either the sleeper finds the request when it looks again, or the
//! sender sees it counted and notifies after the sleeper is waiting (it holds the lock
//! until then). tests/loom_handoff.rs checks this in every interleaving.

use std::time::{Duration, Instant};

use super::sync::{fence, AtomicUsize, Condvar, Mutex, Ordering};

#[derive(Default)]
pub struct Doorbell {
    /// Threads inside `wait` that have found nothing yet (counted under `lock`).
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Doorbell {
    /// Waits until `ready` returns something (called under the lock: it must not block or
    /// take this doorbell), or `timeout` has passed (`None`).
    pub fn wait<T>(
        &self,
        mut ready: impl FnMut() -> Option<T>,
        timeout: Option<Duration>,
    ) -> Option<T> {
        if let Some(found) = ready() {
            return Some(found);
        }
        // One yield first: where the I/O thread shares this core and has work (it was just
        // woken for the replies this thread sent), it runs now and queues what it reads, and
        // this thread takes it without a sleep and a wake-up. Not when this thread wrote its
        // last response to the client itself (`direct.rs`): its I/O thread was not woken.
        if !super::direct::ended_directly() {
            std::thread::yield_now();
            if let Some(found) = ready() {
                return Some(found);
            }
        }
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let found = loop {
            if let Some(found) = ready() {
                break Some(found);
            }
            guard = match deadline {
                None => self.wake.wait(guard).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break None;
                    }
                    match self.wake.wait_timeout(guard, deadline - now) {
                        Ok((guard, _)) => guard,
                        Err(e) => e.into_inner().0,
                    }
                }
            };
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        drop(guard);
        found
    }

    /// After something was queued: wakes one sleeping thread, if any.
    #[inline]
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) != 0 {
            self.ring_slow(false);
        }
    }

    /// Wakes every sleeping thread (the queue closed: each must see it).
    pub fn ring_all(&self) {
        self.ring_slow(true);
    }

    #[cold]
    fn ring_slow(&self, all: bool) {
        // Taking the lock waits for a thread between counting itself and waiting to be
        // waiting: then the notification reaches it.
        drop(self.lock.lock().unwrap_or_else(|e| e.into_inner()));
        if all {
            self.wake.notify_all();
        } else {
            self.wake.notify_one();
        }
    }

    /// Threads asleep (or about to be) in `wait`: for the models.
    pub fn sleepers(&self) -> usize {
        self.sleepers.load(Ordering::SeqCst)
    }
}
