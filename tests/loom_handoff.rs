//! The hand-off under a model checker (ARCHITECTURE.md §4, "What the model checker proves"):
//! loom runs every interleaving of the threads below, up to a bound on preemptions, over the
//! real `IoMailbox`, `Exchange` and `ReleaseQueue`, whose atomics, locks and wakers are
//! loom's in this build (src/handoff/sync.rs). A wait that nothing would ever end is a
//! deadlock loom reports, and loom has no clock, so no timeout ends a wait here: every
//! "never hangs" below means "ends by a wake-up alone".
//!
//! Run by scripts/test.sh:
//!   LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!       cargo test --release --test loom_handoff
//! Without `--cfg loom` this file is empty. At `LOOM_MAX_PREEMPTIONS=3` all the models
//! together take about 10 s (20 s on a busy machine). The exchange and release-queue models
//! also pass with no bound at all (every interleaving, under a second); the mailbox models
//! need it: unbounded, neither finished in 3 minutes; at 4 preemptions they pass in 12 s and
//! 92 s (checked once, 2026-12-05). Two or three preemptions are what the races here need
//! (a push between the drain's flag and its look at the queue; a cancel between the window
//! check and the wait).

#![cfg(loom)]

use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Condvar, Mutex};
use loom::thread;

use spindle::handoff::{
    BodyChunk, BodyError, BodyPiece, ConnToken, Doorbell, Exchange, IoMailbox, LentSocket, Look,
    ReleaseQueue, Reply, ReplyMsg, ResponseBudget, RESPONSE_WINDOW,
};
use spindle::http::Persistence;

/// The I/O thread's waker in the models: counts the wake-ups it gets and ends the I/O
/// thread's sleep, which is what a runtime's waker does to its `epoll_wait`. (A loom
/// `Mutex` and `Condvar` rather than `thread::park`: loom 0.7 lets a late `unpark` end a
/// `join`, which trips its own assertion.)
struct CountingWaker {
    wakes: AtomicUsize,
    woken: Mutex<bool>,
    wake_up: Condvar,
}

impl CountingWaker {
    /// The I/O thread sleeps until a wake-up it has not consumed yet.
    fn sleep(&self) {
        let mut woken = self.woken.lock().unwrap();
        while !*woken {
            woken = self.wake_up.wait(woken).unwrap();
        }
        *woken = false;
    }
}

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        *self.woken.lock().unwrap() = true;
        self.wake_up.notify_one();
    }
}

fn counting_waker() -> (Arc<CountingWaker>, Waker) {
    let counter = Arc::new(CountingWaker {
        wakes: AtomicUsize::new(0),
        woken: Mutex::new(false),
        wake_up: Condvar::new(),
    });
    (counter.clone(), Waker::from(counter))
}

/// Reply number `n` (its `seq`), so the I/O side can tell which replies it routed.
fn reply(n: u32) -> Reply {
    Reply {
        conn: ConnToken {
            slot: 0,
            generation: 0,
        },
        seq: n,
        msg: ReplyMsg::Abort,
    }
}

/// `producers` Python threads push `each` replies while the I/O thread runs the dispatcher
/// loop (drain, then sleep until woken). No reply is stranded: the I/O thread routes every
/// reply exactly once, waking only through the mailbox (a reply left in the queue with no
/// wake-up to come would be a deadlock). At most one wake-up per batch: the wake-ups the
/// I/O thread gets are never more than its drains plus one (each drain re-arms one wake).
fn mailbox_model(producers: u32, each: u32) {
    loom::model(move || {
        let mailbox = IoMailbox::new();
        let total = (producers * each) as usize;
        let handles: Vec<_> = (0..producers)
            .map(|p| {
                let mailbox = mailbox.clone();
                thread::spawn(move || {
                    for i in 0..each {
                        mailbox.push(reply(p * each + i));
                    }
                })
            })
            .collect();

        let (counter, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let mut routed = Vec::new();
        let mut drains = 0;
        loop {
            let (_, n) = mailbox.poll_drain(&mut cx, |r| routed.push(r.seq));
            drains += 1;
            assert!(n <= total);
            if routed.len() == total {
                break;
            }
            counter.sleep();
        }
        for h in handles {
            h.join().unwrap();
        }
        // Nothing was routed twice, and nothing is left behind.
        routed.sort_unstable();
        assert_eq!(routed, (0..total as u32).collect::<Vec<_>>());
        let (_, late) = mailbox.poll_drain(&mut cx, |_| panic!("a reply routed twice"));
        assert_eq!(late, 0);
        drains += 1;
        // Every wake-up the mailbox asks for comes from the first push after a drain
        // cleared `notified` (or the first push of all): at most one per drain. (The waker
        // could not deliver more than one per registration anyway; what the flag saves is
        // asking, an atomic read-modify-write of the waker per reply.)
        let asked = mailbox.wakes_asked();
        assert!(
            asked <= drains,
            "{asked} wake-ups asked for {drains} drains: more than one per batch"
        );
        assert!(counter.wakes.load(Ordering::SeqCst) <= asked);
    });
}

#[test]
fn mailbox_two_producers_two_replies_each_none_stranded_one_wake_per_batch() {
    mailbox_model(2, 2);
}

#[test]
fn mailbox_three_producers_one_reply_each_none_stranded_one_wake_per_batch() {
    mailbox_model(3, 1);
}

/// `--inline` (ARCHITECTURE.md §4, "Inline"): the I/O thread holds its mailbox, calls the
/// application (which pushes its own reply) and routes what is there, while a Python
/// thread pushes replies of other requests. Every reply is routed exactly once, and none
/// is left in the queue without a wake-up to come: what `drain_here` did not see wakes the
/// dispatcher (a hold that kept its flag set would strand them).
#[test]
fn mailbox_inline_call_strands_no_python_thread_reply() {
    loom::model(|| {
        let mailbox = IoMailbox::new();
        let (counter, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        // The dispatcher ran once: its waker is registered, nothing was queued.
        assert_eq!(mailbox.poll_drain(&mut cx, |_| {}).1, 0);
        let python = {
            let mailbox = mailbox.clone();
            thread::spawn(move || {
                mailbox.push(reply(0));
                mailbox.push(reply(1));
            })
        };
        let mut routed = Vec::new();
        mailbox.hold();
        mailbox.push(reply(100)); // the inline call's own reply
        mailbox.drain_here(|r| routed.push(r.seq));
        assert!(
            routed.contains(&100),
            "the call's reply is routed when it returns"
        );
        while routed.len() < 3 {
            counter.sleep();
            let _ = mailbox.poll_drain(&mut cx, |r| routed.push(r.seq));
        }
        python.join().unwrap();
        routed.sort_unstable();
        assert_eq!(routed, vec![0, 1, 100]);
        assert_eq!(
            mailbox
                .poll_drain(&mut cx, |_| panic!("a reply routed twice"))
                .1,
            0
        );
    });
}

/// The stop request wakes a sleeping I/O thread even when replies race it.
#[test]
fn mailbox_stop_request_wakes_the_io_thread() {
    loom::model(|| {
        let mailbox = IoMailbox::new();
        let python = {
            let mailbox = mailbox.clone();
            thread::spawn(move || {
                mailbox.push(reply(0));
                mailbox.request_stop();
            })
        };
        let (counter, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let mut routed = 0;
        loop {
            routed += mailbox.poll_drain(&mut cx, |_| {}).1;
            if mailbox.stop_requested() {
                break;
            }
            counter.sleep();
        }
        python.join().unwrap();
        routed += mailbox.poll_drain(&mut cx, |_| {}).1;
        assert_eq!(routed, 1);
        mailbox.detach();
    });
}

/// An exchange whose window is full: the Python thread's next `reserve` must wait.
fn full_exchange(streamed_body: bool) -> Arc<Exchange> {
    let exchange = Exchange::new(streamed_body);
    assert!(exchange.try_reserve(RESPONSE_WINDOW));
    exchange
}

/// A Python thread blocked in `reserve` on a full window always returns when the exchange
/// is cancelled, and says so (false).
#[test]
fn exchange_cancel_ends_a_reserve_blocked_on_a_full_window() {
    loom::model(|| {
        let exchange = full_exchange(false);
        let io = {
            let exchange = exchange.clone();
            thread::spawn(move || exchange.cancel())
        };
        assert!(!exchange.reserve(10), "reserve went on after a cancel");
        io.join().unwrap();
    });
}

/// Writing the queued bytes makes room and wakes the waiting Python thread: no lost
/// wake-up between its check of the window and its wait.
#[test]
fn exchange_release_wakes_a_reserve_blocked_on_a_full_window() {
    loom::model(|| {
        let exchange = full_exchange(false);
        let io = {
            let exchange = exchange.clone();
            thread::spawn(move || exchange.release(RESPONSE_WINDOW))
        };
        assert!(exchange.reserve(10));
        io.join().unwrap();
    });
}

/// The fast path that keeps the GIL (`try_reserve`) and, when it finds the window full, the
/// slow one (`reserve`) race the I/O thread writing and the connection going away: the
/// Python thread always gets an answer, and the window's count ends right.
#[test]
fn exchange_try_reserve_then_reserve_racing_release_and_cancel() {
    loom::model(|| {
        let exchange = full_exchange(false);
        let writer = {
            let exchange = exchange.clone();
            thread::spawn(move || exchange.release(RESPONSE_WINDOW))
        };
        let closer = {
            let exchange = exchange.clone();
            thread::spawn(move || exchange.cancel())
        };
        // Either answer is right (the cancel races both calls); what matters is that one
        // comes: a `reserve` that never returned would be a deadlock.
        let _go_on = exchange.try_reserve(10) || exchange.reserve(10);
        writer.join().unwrap();
        closer.join().unwrap();
        // Whatever the order, the release was accounted once and made room: the window
        // holds only the 10 bytes reserved (counted even when the answer was "stop").
        assert!(exchange.is_cancelled());
        assert!(
            exchange.try_reserve(0),
            "the window stayed full after the release"
        );
    });
}

/// What `wsgi.input.read` does with the GIL released (py/callbacks.rs): wait for the piece
/// of body asked for, polling the cancelled flag between timeouts.
fn read_body(exchange: &Exchange) -> BodyChunk {
    loop {
        match exchange.recv_body(std::time::Duration::from_millis(100)) {
            Some(chunk) => break chunk,
            None if exchange.is_cancelled() => break BodyChunk::Error(BodyError::Disconnected),
            None => {}
        }
    }
}

/// The I/O thread answers a `ReadBody` while the connection goes away: the Python thread
/// gets the chunk or `Disconnected`, never waits for nothing.
#[test]
fn exchange_body_chunk_racing_cancel_is_received_or_disconnected() {
    loom::model(|| {
        let exchange = Exchange::new(true);
        let io = {
            let exchange = exchange.clone();
            thread::spawn(move || {
                exchange.send_body(BodyChunk::Data {
                    piece: BodyPiece::whole(b"abc".to_vec()),
                    last: false,
                })
            })
        };
        let closer = {
            let exchange = exchange.clone();
            thread::spawn(move || exchange.cancel())
        };
        match read_body(&exchange) {
            BodyChunk::Data { piece, .. } => assert_eq!(piece.len(), 3),
            BodyChunk::Error(BodyError::Disconnected) => {}
            _ => panic!("neither the chunk nor Disconnected"),
        }
        io.join().unwrap();
        closer.join().unwrap();
    });
}

/// The I/O thread answers the first `ReadBody`, then the client goes away (the connection
/// is dropped, so the second `ReadBody` is never answered). The Python thread's second
/// read must end by the cancel's wake-up, not by its 100 ms poll: when the cancel came
/// while the first chunk still sat in the one-slot channel, its `Disconnected` could not
/// be queued, and the second read used to wait for a timeout (found by this model).
#[test]
fn exchange_second_body_read_after_cancel_ends_without_a_timeout() {
    loom::model(|| {
        let exchange = Exchange::new(true);
        let io = {
            let exchange = exchange.clone();
            thread::spawn(move || {
                exchange.send_body(BodyChunk::Data {
                    piece: BodyPiece::whole(b"abc".to_vec()),
                    last: false,
                });
                exchange.cancel();
            })
        };
        assert!(matches!(read_body(&exchange), BodyChunk::Data { .. }));
        assert!(matches!(
            read_body(&exchange),
            BodyChunk::Error(BodyError::Disconnected)
        ));
        io.join().unwrap();
    });
}

/// Admission control (ARCHITECTURE.md §4): a Python thread taking the request (`start`) and
/// the I/O thread shedding it (`shed`: a 503 past `--max-queue-wait`, or its client gone)
/// race; exactly one wins, whatever the interleaving, and a request the connection
/// cancelled is never started.
#[test]
fn exchange_start_and_shed_have_exactly_one_winner() {
    loom::model(|| {
        let exchange = Exchange::new(false);
        let io = {
            let exchange = exchange.clone();
            thread::spawn(move || exchange.shed())
        };
        let started = exchange.start();
        let shed = io.join().unwrap();
        assert!(started != shed, "started: {started}, shed: {shed}");
        assert!(!exchange.is_queued());
    });
}

#[test]
fn exchange_cancelled_while_queued_is_never_started() {
    loom::model(|| {
        let exchange = Exchange::new(false);
        let io = {
            let exchange = exchange.clone();
            thread::spawn(move || exchange.cancel())
        };
        let started = exchange.start();
        io.join().unwrap();
        // Started before the cancel (the app then sees its client gone), or never.
        if !started {
            assert!(!exchange.start() && !exchange.shed());
        }
        assert!(!exchange.is_queued());
    });
}

/// A stand-in for `py::object::SharedBytes`: an object shared with an I/O thread, which on
/// drop goes back to its owner's release queue (the Python reference is only released by
/// the owner, under its GIL).
struct Shared {
    id: u32,
    releases: Arc<ReleaseQueue<u32>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.releases.push(self.id);
    }
}

/// Bodies dropped by I/O threads while the owning Python thread drains (as its loop does:
/// drain after each batch, and poll while anything is outstanding) are each released exactly
/// once, and none is left behind.
#[test]
fn release_queue_bodies_dropped_while_the_owner_drains_are_released_once() {
    loom::model(|| {
        let releases: Arc<ReleaseQueue<u32>> = Arc::default();
        let mut released = Vec::new();
        let mut io_threads = Vec::new();
        for id in 0..2 {
            releases.shared();
            let body = Shared {
                id,
                releases: releases.clone(),
            };
            io_threads.push(thread::spawn(move || drop(body)));
            // Between two responses the owner drains what came back so far.
            releases.drain(|id| released.push(id));
        }
        while releases.has_outstanding() {
            thread::yield_now();
            releases.drain(|id| released.push(id));
        }
        for h in io_threads {
            h.join().unwrap();
        }
        released.sort_unstable();
        assert_eq!(released, [0, 1]);
        // Nothing is left queued: a last drain with nothing outstanding finds nothing, even
        // with the lock taken.
        releases.shared();
        releases.drain(|id| panic!("body {id} released twice"));
    });
}

/// The request queue as the doorbell's models see it: a count of queued requests, pushed
/// with a Release increment and taken with an Acquire compare-and-swap (crossbeam's array
/// queue publishes a slot with a Release store and takes it after an Acquire load), and a
/// closed flag. Relaxed enough that loom explores the orderings the doorbell's fences are
/// there for.
#[derive(Default)]
struct ModelQueue {
    items: AtomicUsize,
    closed: loom::sync::atomic::AtomicBool,
}

impl ModelQueue {
    fn push(&self, bell: &Doorbell) {
        self.items.fetch_add(1, Ordering::Release);
        bell.ring();
    }

    fn close(&self, bell: &Doorbell) {
        self.closed.store(true, Ordering::Release);
        bell.ring_all();
    }

    /// `Some(true)`: took a request; `Some(false)`: closed and empty; `None`: empty.
    fn try_take(&self) -> Option<bool> {
        let mut n = self.items.load(Ordering::Acquire);
        while n > 0 {
            match self
                .items
                .compare_exchange(n, n - 1, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => return Some(true),
                Err(now) => n = now,
            }
        }
        self.closed.load(Ordering::Acquire).then_some(false)
    }
}

/// A Python thread takes `want` requests, sleeping on the doorbell whenever the queue is
/// empty, while the I/O side queues them: no request is stranded with a thread asleep
/// (that would be a wait loom reports as a deadlock), in any interleaving.
#[test]
fn doorbell_no_request_stranded_while_a_python_thread_sleeps() {
    loom::model(|| {
        let bell = Arc::new(Doorbell::default());
        let queue = Arc::new(ModelQueue::default());
        let io = {
            let (bell, queue) = (bell.clone(), queue.clone());
            thread::spawn(move || {
                queue.push(&bell);
                queue.push(&bell);
            })
        };
        for _ in 0..2 {
            assert_eq!(bell.wait(|| queue.try_take(), None), Some(true));
        }
        io.join().unwrap();
        assert_eq!(bell.sleepers(), 0);
    });
}

/// Two Python threads asleep, two requests: each wakes with one (one `notify_one` per
/// request is enough).
#[test]
fn doorbell_two_sleepers_two_requests_both_served() {
    loom::model(|| {
        let bell = Arc::new(Doorbell::default());
        let queue = Arc::new(ModelQueue::default());
        let python: Vec<_> = (0..2)
            .map(|_| {
                let (bell, queue) = (bell.clone(), queue.clone());
                thread::spawn(move || bell.wait(|| queue.try_take(), None))
            })
            .collect();
        queue.push(&bell);
        queue.push(&bell);
        for thread in python {
            assert_eq!(thread.join().unwrap(), Some(true));
        }
    });
}

/// The queue closes (the last I/O thread's sender goes) while a Python thread sleeps: it
/// wakes and sees it.
#[test]
fn doorbell_close_wakes_a_sleeping_python_thread() {
    loom::model(|| {
        let bell = Arc::new(Doorbell::default());
        let queue = Arc::new(ModelQueue::default());
        let io = {
            let (bell, queue) = (bell.clone(), queue.clone());
            thread::spawn(move || queue.close(&bell))
        };
        assert_eq!(bell.wait(|| queue.try_take(), None), Some(false));
        io.join().unwrap();
    });
}

/// A lent socket that takes at most `room` bytes in all, like a socket buffer that fills.
struct ModelSocket {
    taken: Mutex<Vec<u8>>,
    room: usize,
}

impl LentSocket for ModelSocket {
    fn write_now(&self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut taken = self.taken.lock().unwrap();
        let n = bytes.len().min(self.room - taken.len());
        if n == 0 {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        taken.extend_from_slice(&bytes[..n]);
        Ok(n)
    }
}

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n";
const BODY: &[u8] = b"body";

fn data(bytes: &[u8], end: bool, counted: bool) -> ReplyMsg {
    ReplyMsg::Data {
        bytes: bytes.to_vec(),
        end,
        persistence: Persistence::new(true, true),
        counted,
    }
}

/// Direct answers (ARCHITECTURE.md §4): the I/O thread lends the socket, looks once (as its
/// 5 ms look would), then takes it back (`recall`: the client's next bytes came, or the
/// wait moved on), while the Python thread sends the response's messages (`pieces`), then
/// a late message (a `write()` from `close()`). Whatever the interleaving: every byte of
/// the response reaches the client once and in order, what the socket took first and the
/// messages' bytes after; the end is known to the I/O side exactly once (its own news, an
/// `Answered` message, or the ending message itself); counted bytes written directly go
/// back to the window; the late message never reaches the socket. `room`: what the socket
/// takes (a full one sends the rest as a message).
fn direct_model(pieces: &'static [(&'static [u8], bool, bool)], room: usize) {
    loom::model(move || {
        // A budget of the model's own (loom's atomics live within one model run).
        let budget: &'static ResponseBudget = Box::leak(Box::new(ResponseBudget::new(1 << 20)));
        let exchange = Exchange::with_budget(false, budget);
        let socket = Arc::new(ModelSocket {
            taken: Mutex::new(Vec::new()),
            room,
        });
        let charged: usize = pieces.iter().filter(|p| p.2).map(|p| p.0.len()).sum();
        for piece in pieces.iter().filter(|p| p.2) {
            assert!(exchange.try_reserve(piece.0.len()));
        }
        let python = {
            let exchange = exchange.clone();
            thread::spawn(move || {
                let mut mailed = Vec::new();
                for &(bytes, end, counted) in pieces {
                    if let Err(msg) = exchange.answer(data(bytes, end, counted)) {
                        mailed.push(msg);
                    }
                }
                let late = exchange.answer(data(b"LATE", true, false));
                assert!(late.is_err(), "a late message was written to the socket");
                mailed
            })
        };
        let lent = socket.clone();
        let mut news = Vec::new();
        news.push(
            exchange
                .direct()
                .lend(Some(move || Some(lent as Arc<dyn LentSocket>))),
        );
        news.push(exchange.direct().look());
        news.push(exchange.direct().recall());
        let mailed = python.join().unwrap();
        // After a recall the I/O side only waits for messages: nothing more is told.
        let last = exchange.direct().recall();
        assert_eq!(
            last,
            Look::Nothing,
            "told after a recall: {news:?}, mailed {}",
            mailed.len()
        );
        let taken = socket.taken.lock().unwrap().clone();
        let mut delivered = taken.clone();
        let mut ends = news
            .iter()
            .filter(|n| matches!(n, Look::Answered(_)))
            .count();
        let mut counted_mailed = 0;
        for msg in &mailed {
            match msg {
                ReplyMsg::Data {
                    bytes,
                    end,
                    counted,
                    ..
                } => {
                    delivered.extend_from_slice(bytes);
                    ends += usize::from(*end);
                    if *counted {
                        counted_mailed += bytes.len();
                    }
                }
                ReplyMsg::Answered { persistence } => ends += usize::from(persistence.is_some()),
                _ => panic!("an unexpected message"),
            }
        }
        // A response part of which went out directly is known to have started (no 504 may
        // follow it): told by a look, by an `Answered` message, or by the bytes of the
        // first message that follows.
        let told = news
            .iter()
            .any(|n| matches!(n, Look::Started | Look::Answered(_)))
            || match mailed.first() {
                Some(ReplyMsg::Answered { .. }) => true,
                Some(ReplyMsg::Data { bytes, .. }) => !bytes.is_empty(),
                _ => false,
            };
        assert!(
            taken.is_empty() || told,
            "direct bytes went out untold: {news:?}"
        );
        let whole: Vec<u8> = pieces.iter().flat_map(|p| p.0.iter().copied()).collect();
        assert_eq!(
            delivered, whole,
            "the response did not arrive whole, once, in order"
        );
        assert_eq!(ends, 1, "the end known {ends} times: {news:?}");
        // What went out directly was given back to the window; the rest is the I/O
        // side's to give back once written.
        assert_eq!(budget.used(), counted_mailed, "{charged} bytes charged");
        exchange.release(counted_mailed);
        assert_eq!(budget.used(), 0);
    });
}

const WHOLE: &[(&[u8], bool, bool)] = &[(b"HTTP/1.1 200 OK\r\n\r\nbody", true, false)];
const PIECES: &[(&[u8], bool, bool)] =
    &[(HEAD, false, true), (BODY, false, true), (b"", true, false)];

#[test]
fn direct_answer_of_one_message_reaches_the_client_exactly_once() {
    direct_model(WHOLE, 64);
}

#[test]
fn direct_answer_of_one_message_the_socket_does_not_take_goes_on_as_a_message() {
    direct_model(WHOLE, 5);
}

#[test]
fn direct_answer_in_pieces_reaches_the_client_once_in_order() {
    direct_model(PIECES, 64);
}

#[test]
fn direct_answer_in_pieces_the_socket_fills_in_the_middle_of() {
    direct_model(PIECES, HEAD.len() + 2);
}

/// A message that is not bytes (a file, an abort) after a part went out directly goes by
/// the mailbox, and the I/O side is told the response started before it waits for it.
#[test]
fn direct_answer_followed_by_a_message_that_is_not_bytes_is_told_started() {
    loom::model(|| {
        let exchange = Exchange::new(false);
        let socket = Arc::new(ModelSocket {
            taken: Mutex::new(Vec::new()),
            room: 64,
        });
        let python = {
            let exchange = exchange.clone();
            thread::spawn(move || {
                let head = exchange.answer(data(HEAD, false, false)).err();
                let abort = exchange.answer(ReplyMsg::Abort).err();
                (head, abort)
            })
        };
        let lent = socket.clone();
        let mut news = vec![exchange
            .direct()
            .lend(Some(move || Some(lent as Arc<dyn LentSocket>)))];
        let (head, abort) = python.join().unwrap();
        assert!(matches!(abort, Some(ReplyMsg::Abort)));
        news.push(exchange.direct().recall());
        let taken = socket.taken.lock().unwrap().clone();
        match head {
            None => {
                assert_eq!(taken, HEAD);
                assert!(news.contains(&Look::Started), "untold: {news:?}");
            }
            Some(ReplyMsg::Data { bytes, .. }) => {
                assert!(taken.is_empty());
                assert_eq!(bytes, HEAD);
            }
            Some(_) => panic!("an unexpected message"),
        }
    });
}
