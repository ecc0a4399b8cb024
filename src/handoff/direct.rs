//! [`Direct`]: a response the Python thread writes to the client itself, while the I/O
//! thread sleeps (ARCHITECTURE.md §4, "Direct answers").
//!
//! At one connection nothing batches, and every reply's wake-up of its I/O thread is a
//! round trip of its own: the reply's wake, the I/O thread's run to write it, its sleep
//! again. When the I/O thread has nothing else to wait for, it lends the connection's
//! socket to the request's exchange instead and watches the socket; the Python thread
//! writes the response's messages itself as it sends them, without waiting, and the I/O
//! thread learns of it when the client's next request arrives, or at its next look.
//!
//! One state per exchange, changed only by read-modify-writes, decides where each message
//! goes. Only the I/O side lends (`IDLE` to `LENT`) and takes the socket back (`recall`);
//! only the Python side writes (`LENT` or `HOLDING` to `WRITING_*`). Once any message went
//! by the mailbox (one that is not bytes, or what a full socket did not take), every later
//! one does too, so the bytes of a connection keep the order the I/O thread would have
//! written them in, and nothing is written directly after its response ended (a late
//! `write()` from `close()`). The I/O side's news ([`Look`]): `Answered` (the response is
//! out, told once), `Started` (some of it went out directly: no 504 may follow), `Nothing`,
//! or `Cut` (taken back while the Python thread was inside a write: its message saying how
//! that ended comes at once, and nothing is written before it). A response still being
//! written at a look (the first after 5 ms) is taken back, so a slow stream goes the usual
//! way and `--timeout` sees its progress. The models in tests/loom_handoff.rs check that
//! every byte reaches the socket once and in order, and the end is told exactly once.

use std::cell::Cell;
use std::sync::Arc;

use super::sync::{AtomicU8, Mutex, Ordering};
use super::ReplyMsg;
use crate::http::Persistence;

/// A connection's socket as the I/O side lends it: writes what the socket takes now and
/// never waits. `server/` implements it; the hand-off never sees the descriptor.
pub trait LentSocket: Send + Sync {
    fn write_now(&self, bytes: &[u8]) -> std::io::Result<usize>;
}

/// The largest message written directly: the Python thread writes with its GIL held, so a
/// larger piece (a large piece of a generator; a large `bytes` given whole never comes as
/// a copy to be written) goes by the mailbox, which ends direct writing for the response.
pub const DIRECT_LIMIT: usize = 64 * 1024;

/// Nothing lent yet.
const IDLE: u8 = 0;
/// The socket is lent, nothing written: the Python thread may write.
const LENT: u8 = 1;
/// The Python thread writes the response's first message.
const WRITING_FIRST: u8 = 2;
/// The Python thread writes a later message; earlier ones went out directly.
const WRITING_MORE: u8 = 3;
/// Some of the response went out directly, the rest is to come: the Python thread may
/// write its next message.
const HOLDING: u8 = 4;
/// The whole response went out directly; the I/O side has not taken the news yet.
const WRITTEN: u8 = 5;
/// Some went out directly and the rest goes by the mailbox; the I/O side was not told.
const PARTED: u8 = 6;
/// The I/O side took the socket back while the Python thread was writing: the writer
/// tells what came of it by a message.
const CUT_WRITING: u8 = 7;
/// Everything from now on goes by the mailbox, and the I/O side knows what went before:
/// it took the socket back, took the news of the end, or nothing was ever written
/// directly.
const DONE: u8 = 8;

thread_local! {
    /// Set on a Python thread when it wrote the end of a response directly: its I/O thread
    /// was not woken for it, so the thread's next wait need not yield to it first.
    static ENDED_DIRECTLY: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread's last response ended with a direct write since it last asked.
pub(super) fn ended_directly() -> bool {
    ENDED_DIRECTLY.with(|ended| ended.replace(false))
}

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

/// What the I/O side learns when it looks.
#[derive(Debug, PartialEq, Eq)]
pub enum Look {
    /// The socket is lent and the response is not done: go on watching.
    Watch,
    /// The whole response went out directly (told once).
    Answered(Persistence),
    /// Some of the response went out directly; the rest comes by the mailbox.
    Started,
    /// Nothing went out directly; the reply comes by the mailbox.
    Nothing,
    /// Taken back while the Python thread was writing: its message (the end, a part, or
    /// the rest) comes by the mailbox at once, and nothing may be written before it.
    Cut,
}

/// Who asks [`Direct::tell`], and so what it may change.
#[derive(Clone, Copy)]
enum Asking {
    Lend,
    Look,
    Recall,
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
    /// not this time) unless the Python side sent something already, and says what to do.
    pub fn lend(&self, socket: Option<impl FnOnce() -> Option<Arc<dyn LentSocket>>>) -> Look {
        if self.state.load(Ordering::Acquire) != IDLE {
            return self.tell(Asking::Lend);
        }
        let Some(socket) = socket.and_then(|socket| socket()) else {
            return Look::Nothing;
        };
        self.with_slot(|slot| slot.socket = Some(socket));
        if self.swap_from(IDLE, LENT) {
            Look::Watch
        } else {
            // The Python side sent a message first.
            self.with_slot(|slot| slot.socket = None);
            Look::Nothing
        }
    }

    /// I/O side, at a look while watching: the end if it went out directly; a response
    /// still being written directly is taken back (`Started`), so its rest comes by the
    /// mailbox under the usual `--timeout`.
    pub fn look(&self) -> Look {
        self.tell(Asking::Look)
    }

    /// I/O side: stops watching (bytes arrived, or the wait moves on); from now on every
    /// message comes by the mailbox. Never `Watch`; `Cut`: the Python thread was writing,
    /// and its message saying how that ended is on its way (wait for it before anything
    /// else is written).
    pub fn recall(&self) -> Look {
        self.tell(Asking::Recall)
    }

    /// What the I/O side is told, asking as `asking`: each piece of news once (the end,
    /// `WRITTEN`; a part, `PARTED` or a `HOLDING` taken back), and a recall takes the socket
    /// back in every state. A lost compare-and-swap (the Python thread moved meanwhile)
    /// asks again from the new state.
    fn tell(&self, asking: Asking) -> Look {
        loop {
            let state = self.state.load(Ordering::Acquire);
            let (next, news) = match (state, asking) {
                (WRITTEN, _) => {
                    // Only the I/O side leaves WRITTEN.
                    self.settle(DONE);
                    let persistence = self.with_slot(|slot| slot.persistence.take());
                    return Look::Answered(
                        persistence.expect("a direct answer records its persistence first"),
                    );
                }
                (PARTED, _) => (DONE, Look::Started),
                (HOLDING, Asking::Lend) => return Look::Watch,
                (HOLDING, _) => (DONE, Look::Started),
                (LENT, Asking::Recall) => (DONE, Look::Nothing),
                (WRITING_FIRST | WRITING_MORE, Asking::Recall) => (CUT_WRITING, Look::Cut),
                (LENT | WRITING_FIRST | WRITING_MORE, _) => return Look::Watch,
                (CUT_WRITING, Asking::Recall) => return Look::Cut,
                // While watching, a message that went by the mailbox comes to the inbox.
                (_, Asking::Look) => return Look::Watch,
                _ => return Look::Nothing,
            };
            if self.swap_from(state, next) {
                if matches!(state, LENT | HOLDING) {
                    // Give the descriptor back now.
                    self.with_slot(|slot| slot.socket = None);
                }
                return news;
            }
        }
    }

    /// Python side, for every message of the response: writes it to the client itself
    /// while the socket is lent and the message is bytes, up to [`DIRECT_LIMIT`]
    /// (`release`: the counted bytes it wrote, given back to the window at once);
    /// otherwise, or for what the socket did not take, gives the message back for the
    /// mailbox.
    pub fn answer(&self, msg: ReplyMsg, release: impl FnOnce(usize)) -> Result<(), ReplyMsg> {
        let sent = self.route(msg, release);
        if sent.is_err() {
            ENDED_DIRECTLY.with(|ended| ended.set(false));
        }
        sent
    }

    fn route(&self, msg: ReplyMsg, release: impl FnOnce(usize)) -> Result<(), ReplyMsg> {
        loop {
            let state = self.state.load(Ordering::Acquire);
            let bytes = matches!(&msg, ReplyMsg::Data { bytes, .. } if bytes.len() <= DIRECT_LIMIT);
            let next = match state {
                LENT if bytes => WRITING_FIRST,
                HOLDING if bytes => WRITING_MORE,
                // No direct writing from now on: nothing went out directly, or the I/O
                // side learns that some did (`PARTED`).
                IDLE | LENT => DONE,
                HOLDING => PARTED,
                _ => return Err(msg),
            };
            if !self.swap_from(state, next) {
                continue;
            }
            if next == DONE || next == PARTED {
                if state != IDLE {
                    // Give the descriptor back (nothing was lent from IDLE: no lock then,
                    // which is every response the I/O thread does not lend for).
                    self.with_slot(|slot| slot.socket = None);
                }
                return Err(msg);
            }
            return self.write(msg, next, release);
        }
    }

    /// Writes `msg` (a `Data`) while the state is `writing`.
    fn write(
        &self,
        msg: ReplyMsg,
        writing: u8,
        release: impl FnOnce(usize),
    ) -> Result<(), ReplyMsg> {
        let ReplyMsg::Data {
            mut bytes,
            end,
            persistence,
            counted,
        } = msg
        else {
            unreachable!("only bytes are written directly");
        };
        let socket = self.with_slot(|slot| slot.socket.clone());
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
        if counted && written > 0 {
            release(written);
        }
        let started = written > 0 || writing == WRITING_MORE;
        if written < bytes.len() {
            // The rest goes by the mailbox, and so does everything after it.
            self.with_slot(|slot| slot.socket = None);
            // Told `PARTED` at its next look; unless it took the socket back meanwhile
            // (`Cut`): it waits for this message, whose bytes tell it.
            let _ = self
                .state
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                    Some(if started && state != CUT_WRITING {
                        PARTED
                    } else {
                        DONE
                    })
                });
            bytes.drain(..written);
            return Err(ReplyMsg::Data {
                bytes,
                end,
                persistence,
                counted,
            });
        }
        if end {
            self.with_slot(|slot| {
                slot.socket = None;
                slot.persistence = Some(persistence);
            });
            if self.swap_from(writing, WRITTEN) {
                ENDED_DIRECTLY.with(|ended| ended.set(true));
                return Ok(());
            }
            // Taken back while writing: the I/O side waits for a message.
            self.with_slot(|slot| slot.persistence = None);
            self.settle(DONE);
            return Err(ReplyMsg::Answered {
                persistence: Some(persistence),
            });
        }
        if self.swap_from(writing, HOLDING) {
            return Ok(());
        }
        // Taken back while writing a part: the rest comes by the mailbox, and the I/O side
        // must know that this much went out (no 504 after it).
        self.with_slot(|slot| slot.socket = None);
        self.settle(DONE);
        Err(ReplyMsg::Answered { persistence: None })
    }

    /// Sets the state whatever it is now (an exchange, not a plain store: it is ordered
    /// after any compare-and-swap of the other side that it follows).
    fn settle(&self, to: u8) {
        self.state.swap(to, Ordering::AcqRel);
    }

    fn swap_from(&self, from: u8, to: u8) -> bool {
        self.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn with_slot<R>(&self, f: impl FnOnce(&mut Slot) -> R) -> R {
        f(&mut self.slot.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
