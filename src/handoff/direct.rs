//! [`Direct`]: a response the Python thread writes to the client itself, while the I/O
//! thread sleeps (ARCHITECTURE.md §4, "Direct answers").
//!
//! At one connection nothing batches, and every reply's wake-up of its I/O thread is a
//! round trip of its own: the reply's wake, the I/O thread's run to write it, its sleep
//! again. When the I/O thread has nothing else to wait for, it lends the connection's
//! socket to the request's exchange instead and watches the socket; the Python thread
//! that finishes the response in one message writes it without waiting, and the I/O
//! thread learns of it when the client's next request arrives, or at its next look.
//!
//! Exactly one side decides each response: a compare-and-swap on one state. Only the I/O
//! side lends (`IDLE` to `LENT`), only the Python side writes (`LENT` to `WRITING`), and
//! every message the Python side sends any other way first makes the state `TAKEN`, so no
//! byte is written directly after one went through the mailbox (a late `write()` from
//! `close()` included): the order of a connection's bytes stays what the I/O thread would
//! have written. The model in tests/loom_handoff.rs checks that each response is either
//! written directly and taken by the I/O side once, or arrives as a message, never both
//! and never neither.

use std::sync::Arc;

use super::sync::{AtomicU8, Mutex, Ordering};
use super::ReplyMsg;
use crate::http::Persistence;

/// A connection's socket as the I/O side lends it: writes what the socket takes now and
/// never waits. `server/` implements it; the hand-off never sees the descriptor.
pub trait LentSocket: Send + Sync {
    fn write_now(&self, bytes: &[u8]) -> std::io::Result<usize>;
}

/// Nothing lent yet.
const IDLE: u8 = 0;
/// The socket is lent and the I/O side watches it: the Python thread may write.
const LENT: u8 = 1;
/// The Python thread is writing.
const WRITING: u8 = 2;
/// The response was written whole; the I/O side has not taken the news yet.
const WRITTEN: u8 = 3;
/// The I/O side took the news of a direct answer.
const TAKEN_BY_IO: u8 = 4;
/// The I/O side stopped watching: whatever happens now comes as a message.
const RECALLED: u8 = 5;
/// The Python side sent a message, so nothing more is written directly.
const TAKEN: u8 = 6;

/// The direct-answer state of one exchange.
pub struct Direct {
    state: AtomicU8,
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    socket: Option<Arc<dyn LentSocket>>,
    persistence: Option<Persistence>,
}

/// What [`Direct::lend`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lend {
    /// The socket is lent (now or before): watch it.
    Watching,
    /// The Python thread already wrote the whole response.
    Answered(Persistence),
    /// The reply comes as a message.
    No,
}

impl Default for Direct {
    fn default() -> Direct {
        Direct {
            state: AtomicU8::new(IDLE),
            slot: Mutex::new(Slot::default()),
        }
    }
}

impl Direct {
    /// I/O side, about to wait for the response: lends the socket `socket` gives (`None`:
    /// not this time) unless the Python side has sent something, and says whether to watch
    /// it, or that the response was already written directly (taking the news).
    pub fn lend(&self, socket: Option<impl FnOnce() -> Option<Arc<dyn LentSocket>>>) -> Lend {
        match self.state.load(Ordering::Acquire) {
            IDLE => {
                let Some(socket) = socket.and_then(|socket| socket()) else {
                    return Lend::No;
                };
                self.with_slot(|slot| slot.socket = Some(socket));
                match self
                    .state
                    .compare_exchange(IDLE, LENT, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => Lend::Watching,
                    Err(_) => {
                        // The Python side sent a message first.
                        self.with_slot(|slot| slot.socket = None);
                        Lend::No
                    }
                }
            }
            LENT | WRITING => Lend::Watching,
            WRITTEN => Lend::Answered(self.take_news()),
            _ => Lend::No,
        }
    }

    /// I/O side, at a look while watching: whether the response was written directly
    /// (taking the news), without changing anything otherwise.
    pub fn answered(&self) -> Option<Persistence> {
        (self.state.load(Ordering::Acquire) == WRITTEN).then(|| self.take_news())
    }

    /// I/O side: stops watching (bytes arrived, or the wait moves on). `Some`: the response
    /// was written directly; `None`: it comes, or came, as a message (one that was being
    /// written directly now comes as [`ReplyMsg::Answered`]).
    pub fn recall(&self) -> Option<Persistence> {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let next = match state {
                LENT | WRITING => RECALLED,
                WRITTEN => return Some(self.take_news()),
                _ => return None,
            };
            match self
                .state
                .compare_exchange(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if state == LENT {
                        // Never used: give the descriptor back now.
                        self.with_slot(|slot| slot.socket = None);
                    }
                    return None;
                }
                Err(now) => state = now,
            }
        }
    }

    fn take_news(&self) -> Persistence {
        // Only the I/O side leaves WRITTEN.
        self.state.store(TAKEN_BY_IO, Ordering::Release);
        self.with_slot(|slot| slot.persistence.take())
            .expect("a direct answer records its persistence before it is WRITTEN")
    }

    /// Python side, for every message of the response: writes it to the client itself
    /// when the socket is lent and `msg` is the whole response (its only message, complete,
    /// not counted in the window); otherwise, or for what the socket did not take, gives
    /// the message back for the mailbox.
    pub fn answer(&self, msg: ReplyMsg) -> Result<(), ReplyMsg> {
        let state = self.state.load(Ordering::Acquire);
        if state >= WRITING {
            return Err(msg);
        }
        let whole = matches!(
            msg,
            ReplyMsg::Data {
                end: true,
                counted: false,
                ..
            }
        );
        if !whole
            || state != LENT
            || self
                .state
                .compare_exchange(LENT, WRITING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            self.no_more();
            return Err(msg);
        }
        let ReplyMsg::Data {
            mut bytes,
            end,
            persistence,
            counted,
        } = msg
        else {
            unreachable!("checked above");
        };
        let socket = self.with_slot(|slot| slot.socket.take());
        let mut written = 0;
        if let Some(socket) = socket {
            while written < bytes.len() {
                match socket.write_now(&bytes[written..]) {
                    Ok(0) => break,
                    Ok(n) => written += n,
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    // Full, or broken: the I/O thread writes the rest, or meets the error
                    // itself and ends the connection as for any write.
                    Err(_) => break,
                }
            }
        }
        if written < bytes.len() {
            self.state.store(TAKEN, Ordering::Release);
            bytes.drain(..written);
            return Err(ReplyMsg::Data {
                bytes,
                end,
                persistence,
                counted,
            });
        }
        self.with_slot(|slot| slot.persistence = Some(persistence));
        match self
            .state
            .compare_exchange(WRITING, WRITTEN, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(()),
            Err(_) => {
                // Recalled while writing: the I/O side waits for a message now.
                self.with_slot(|slot| slot.persistence = None);
                self.state.store(TAKEN, Ordering::Release);
                Err(ReplyMsg::Answered { persistence })
            }
        }
    }

    /// Python side: nothing more is written directly for this exchange.
    fn no_more(&self) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                matches!(state, IDLE | LENT).then_some(TAKEN)
            });
    }

    fn with_slot<R>(&self, f: impl FnOnce(&mut Slot) -> R) -> R {
        f(&mut self.slot.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
