//! The application called on an I/O thread itself (`--inline`, ARCHITECTURE.md §4,
//! "Inline"): the I/O side sees it only through these two traits, which `py/` implements,
//! so `server/` still knows nothing of Python.
//!
//! A request run inline is a request like any other: its replies go through its
//! [`ReplyTo`](super::ReplyTo) into the thread's own mailbox, which the I/O thread drains
//! right after the call ([`IoMailbox::hold`](super::IoMailbox::hold)), and its exchange
//! never makes the caller wait for room ([`Exchange::inline`](super::Exchange::inline)):
//! the caller is the thread that makes it.

use super::Request;

/// What the I/O threads get to call the application themselves.
pub trait InlineApp: Send + Sync {
    /// A runner for the calling I/O thread, number `index`, attached to one of the
    /// application's interpreters; `None` when it cannot join one (the server is stopping,
    /// or the thread state could not be made: said in the log), and the thread hands
    /// every request to the Python threads instead.
    fn join(&self, index: usize) -> Option<Box<dyn InlineRunner>>;
}

/// One I/O thread's way into the application. Every call takes its interpreter's GIL for
/// its length and gives it back; none may be made from inside another. Dropped on its I/O
/// thread once no connection is left (the responses still parked are ended then, their
/// `close()` called), it leaves its interpreter.
pub trait InlineRunner {
    /// Serves `requests` (their bodies complete; pipelined requests of one connection, in
    /// order), each until its response ended or parked, and leaves the vector empty: what
    /// they sent is in the thread's mailbox on return.
    fn run(&self, requests: &mut Vec<Request>);
    /// Resumes the parked responses whose clients made room (or left), and the requests
    /// held behind them; nothing when none was woken (a channel poll).
    fn resume(&self);
    /// Nothing parked, nothing held, no written body to give back: `resume` would do
    /// nothing (two loads, no atomic write: asked after every exchange).
    fn idle(&self) -> bool;
}
