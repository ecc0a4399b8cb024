//! Small single-threaded async tools for an I/O thread's tasks: a one-shot event many tasks
//! can wait for, and a race of two futures. Everything here lives on one monoio runtime, so
//! it uses `Cell`/`RefCell`, never locks.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::{Poll, Waker};

/// A one-shot, thread-local event that any number of tasks can wait for. Each waiting
/// future owns one slot for its waker and frees it when dropped, so the many waits that
/// lose a race (every idle read races the stop event) leave nothing behind.
#[derive(Default)]
pub(super) struct LocalEvent {
    set: Cell<bool>,
    waiters: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl LocalEvent {
    pub(super) fn trigger(&self) {
        if !self.set.replace(true) {
            let wakers: Vec<Waker> = self
                .waiters
                .borrow_mut()
                .iter_mut()
                .filter_map(Option::take)
                .collect();
            for waker in wakers {
                waker.wake();
            }
        }
    }

    pub(super) fn is_set(&self) -> bool {
        self.set.get()
    }

    pub(super) fn wait(&self) -> EventWait<'_> {
        EventWait {
            event: self,
            slot: None,
        }
    }
}

/// A wait for a [`LocalEvent`]; see there.
pub(super) struct EventWait<'a> {
    event: &'a LocalEvent,
    slot: Option<usize>,
}

impl Future for EventWait<'_> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let event = self.event;
        if event.set.get() {
            return Poll::Ready(());
        }
        let mut waiters = event.waiters.borrow_mut();
        match self.slot {
            Some(slot) => match &mut waiters[slot] {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                entry => *entry = Some(cx.waker().clone()),
            },
            None => {
                let slot = match event.free.borrow_mut().pop() {
                    Some(slot) => {
                        waiters[slot] = Some(cx.waker().clone());
                        slot
                    }
                    None => {
                        waiters.push(Some(cx.waker().clone()));
                        waiters.len() - 1
                    }
                };
                self.slot = Some(slot);
            }
        }
        Poll::Pending
    }
}

impl Drop for EventWait<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.event.waiters.borrow_mut()[slot] = None;
            self.event.free.borrow_mut().push(slot);
        }
    }
}

pub(super) enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Polls two futures and returns the first to finish (the other is dropped).
pub(super) async fn race<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if let Poll::Ready(out) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(out));
        }
        if let Poll::Ready(out) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(out));
        }
        Poll::Pending
    })
    .await
}
