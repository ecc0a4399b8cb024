//! The synchronisation primitives of the hand-off, in one place, so that a model checker can
//! take their place: a normal build uses exactly the types it always did (std's atomics,
//! `Mutex` and `Condvar`, crossbeam's channel, the `atomic-waker` crate), re-exported here
//! at no cost (a `use` is no code: the crate's assembly before and after this module came
//! in, `--emit asm` without LTO, has every function of `IoMailbox` and `Exchange`
//! instruction for instruction the same; only the release queue, now generic, is inlined
//! where its owner calls it); a build with `--cfg loom` (tests/loom_handoff.rs, run by
//! scripts/test.sh) uses loom's atomics, `Mutex` and `Condvar`, which let loom run every
//! interleaving of the threads touching them, and two small stand-ins below for the crates
//! that loom cannot see into. Nothing else in the crate may import this module: it is how
//! the hand-off (`mailbox.rs`, `exchange.rs`, `release.rs`, `doorbell.rs`) spells its primitives.
//!
//! Why the stand-ins are faithful for what the models check (ARCHITECTURE.md §4): the
//! properties are about the protocol *around* the queue (the `notified` flag and the
//! wake-up of the mailbox, the cancelled flag and the window's condvar in the exchange), not
//! about the queue's own correctness, which is crossbeam's and atomic-waker's (both test
//! themselves, under loom among others). A channel whose every operation holds one loom
//! `Mutex` is a linearizable FIFO, which is what crossbeam's channel promises; it is
//! stronger than crossbeam only in its fences, and the mailbox does not rely on the
//! channel's fences (its flag is a SeqCst swap on both sides). A waker slot behind a loom
//! `Mutex` keeps the contract of `AtomicWaker`: a `wake` after a `register` wakes the
//! registered waker once; a `wake` with none registered is lost (so the mailbox must
//! register before it looks at the queue, which is what the model checks).

#[cfg(not(loom))]
pub(super) use atomic_waker::AtomicWaker;
#[cfg(not(loom))]
pub(super) use crossbeam_channel as channel;
#[cfg(not(loom))]
pub(super) use std::sync::atomic::{fence, AtomicBool, AtomicU8, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(super) use std::sync::{Condvar, Mutex};

#[cfg(loom)]
pub(super) use loom::sync::atomic::{fence, AtomicBool, AtomicU8, AtomicUsize, Ordering};
#[cfg(loom)]
pub(super) use loom::sync::{Condvar, Mutex};
#[cfg(loom)]
pub(super) use model::{channel, AtomicWaker};

#[cfg(loom)]
mod model {
    use std::task::Waker;

    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::sync::Mutex;

    /// `atomic_waker::AtomicWaker`'s contract over a loom `Mutex`: `register` replaces the
    /// waker, `wake` takes it and wakes it (outside the lock), `take` hands it out. Unlike
    /// `loom::future::AtomicWaker`, a `register` that meets a concurrent `wake` never adds a
    /// wake-up of its own, so the models can count the wake-ups the protocol asks for.
    pub(in crate::handoff) struct AtomicWaker {
        slot: Mutex<Option<Waker>>,
        /// How many times `wake` was called (the models' measure of "one per batch").
        asked: AtomicUsize,
    }

    impl AtomicWaker {
        pub(in crate::handoff) fn new() -> AtomicWaker {
            AtomicWaker {
                slot: Mutex::new(None),
                asked: AtomicUsize::new(0),
            }
        }

        pub(in crate::handoff) fn register(&self, waker: &Waker) {
            *self.slot.lock().unwrap() = Some(waker.clone());
        }

        pub(in crate::handoff) fn wake(&self) {
            self.asked.fetch_add(1, Ordering::SeqCst);
            if let Some(waker) = self.take() {
                waker.wake();
            }
        }

        pub(in crate::handoff) fn take(&self) -> Option<Waker> {
            self.slot.lock().unwrap().take()
        }

        pub(in crate::handoff) fn wakes_asked(&self) -> usize {
            self.asked.load(Ordering::SeqCst)
        }
    }

    /// The part of `crossbeam_channel` the hand-off uses, as a `VecDeque` behind a loom
    /// `Mutex` with a loom `Condvar` for the blocking receive.
    pub(in crate::handoff) mod channel {
        use std::collections::VecDeque;
        use std::sync::Arc;
        use std::time::Duration;

        use loom::sync::{Condvar, Mutex};

        struct Shared<T> {
            queue: Mutex<VecDeque<T>>,
            ready: Condvar,
            /// `None`: unbounded.
            cap: Option<usize>,
        }

        pub(in crate::handoff) struct Sender<T>(Arc<Shared<T>>);
        pub(in crate::handoff) struct Receiver<T>(Arc<Shared<T>>);

        #[derive(Debug)]
        pub(in crate::handoff) struct SendError<T>(pub T);
        #[derive(Debug)]
        pub(in crate::handoff) struct Full<T>(pub T);
        #[derive(Debug)]
        pub(in crate::handoff) struct Empty;

        /// As crossbeam's. `Disconnected` never happens here: the hand-off keeps both ends
        /// of each of its channels for as long as either is used (the mailbox and the
        /// exchange own both), so crossbeam never reports it either.
        #[allow(dead_code)]
        #[derive(Debug)]
        pub(in crate::handoff) enum RecvTimeoutError {
            Timeout,
            Disconnected,
        }

        fn with_cap<T>(cap: Option<usize>) -> (Sender<T>, Receiver<T>) {
            let shared = Arc::new(Shared {
                queue: Mutex::new(VecDeque::new()),
                ready: Condvar::new(),
                cap,
            });
            (Sender(shared.clone()), Receiver(shared))
        }

        pub(in crate::handoff) fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
            with_cap(None)
        }

        pub(in crate::handoff) fn bounded<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
            with_cap(Some(cap))
        }

        impl<T> Sender<T> {
            /// Only unbounded channels are sent to with `send` in the hand-off.
            pub(in crate::handoff) fn send(&self, value: T) -> Result<(), SendError<T>> {
                assert!(self.0.cap.is_none(), "send on a bounded model channel");
                self.0.queue.lock().unwrap().push_back(value);
                self.0.ready.notify_one();
                Ok(())
            }

            pub(in crate::handoff) fn try_send(&self, value: T) -> Result<(), Full<T>> {
                let mut queue = self.0.queue.lock().unwrap();
                if self.0.cap.is_some_and(|cap| queue.len() >= cap) {
                    return Err(Full(value));
                }
                queue.push_back(value);
                drop(queue);
                self.0.ready.notify_one();
                Ok(())
            }
        }

        impl<T> Receiver<T> {
            pub(in crate::handoff) fn try_recv(&self) -> Result<T, Empty> {
                self.0.queue.lock().unwrap().pop_front().ok_or(Empty)
            }

            /// Loom has no clock: the timeout never fires (loom's own `wait_timeout` waits
            /// for a notification). So a receive that only its timeout would end shows up
            /// as a deadlock, and the models prove that wake-ups alone end every wait.
            pub(in crate::handoff) fn recv_timeout(
                &self,
                _timeout: Duration,
            ) -> Result<T, RecvTimeoutError> {
                let mut queue = self.0.queue.lock().unwrap();
                loop {
                    if let Some(value) = queue.pop_front() {
                        return Ok(value);
                    }
                    queue = self.0.ready.wait(queue).unwrap();
                }
            }
        }
    }
}
