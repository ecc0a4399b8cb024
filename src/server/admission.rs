//! Admission control (ARCHITECTURE.md §4, "Admission control"): what the I/O threads do
//! when more comes than the Python threads can serve. A queued request whose client left is
//! dropped before the application sees it, one that waited past `--max-queue-wait` is
//! answered 503 (both in `conn.rs`, which owns the wait), and a connection past
//! `--worker-connections` is refused with a 503 here. This file keeps the tallies of what
//! was shed, for the metrics and for one summary line a second in the log.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::ctx::IoCtx;
use super::event::{race, Either};
use super::stream::Stream;
use super::sys;
use crate::config::Config;
use crate::log_warn;
use crate::metrics::ShedReason;

/// A refused connection is read (and what it sent discarded) for at most this long and
/// this much after its 503, so our close does not turn into a reset that destroys the 503
/// before the client reads it (the lingering close, `socket.rs`), but briefly: it holds a
/// descriptor meanwhile.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);
const REFUSAL_LINGER_BYTES: usize = 16 * 1024;
/// At most this many refusals linger at once per I/O thread; beyond, a refused connection
/// is closed right after its 503 is written.
const REFUSALS_LINGERING: usize = 64;

/// The most client connections this process holds open: `--worker-connections`, or the
/// open-files limit less a reserve of a quarter (64 to 1024 descriptors) for listeners,
/// runtimes, logs, files being sent, lingering refusals and the application's own, so a
/// worker refuses cleanly before `accept(2)` could fail with EMFILE.
pub(super) fn connection_limit(config: &Config) -> usize {
    config
        .worker_connections
        .unwrap_or_else(|| connections_for_files(sys::open_files_limit().unwrap_or(1 << 20)))
}

fn connections_for_files(files: usize) -> usize {
    let reserve = (files / 4).clamp(64, 1024);
    files.saturating_sub(reserve).max(16)
}

/// Shed since the last summary line, by reason (process-wide; written only when shedding,
/// which is rare, so one shared atomic is fine).
static SINCE_SUMMARY: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Counts one request (or connection) shed, for `spindle_shed_total` and the log.
pub(super) fn note_shed(reason: ShedReason) {
    crate::metrics::shed(reason);
    SINCE_SUMMARY[reason as usize].fetch_add(1, Ordering::Relaxed);
}

/// I/O thread 0 writes what was shed, at most one line a second and only when something
/// was: "shed 123 requests in the last 1.0 s (queue wait 120, client gone 3, connections
/// 0); queue depth 512".
pub(super) async fn log_summaries(ctx: Rc<IoCtx>) {
    let mut last = Instant::now();
    loop {
        match race(monoio::time::sleep(Duration::from_secs(1)), ctx.stop.wait()).await {
            Either::Left(()) => {}
            Either::Right(()) => return,
        }
        let counts = SINCE_SUMMARY
            .each_ref()
            .map(|n| n.swap(0, Ordering::Relaxed));
        let total: u64 = counts.iter().sum();
        let now = Instant::now();
        if total > 0 {
            let depth = ctx
                .requests
                .borrow()
                .as_ref()
                .map_or(0, |requests| requests.queued());
            log_warn!(
                "shed {total} requests in the last {:.1} s (queue wait {}, client gone {}, connections {}); queue depth {depth}",
                now.duration_since(last).as_secs_f64(),
                counts[ShedReason::QueueWait as usize],
                counts[ShedReason::ClientGone as usize],
                counts[ShedReason::Connections as usize],
            );
        }
        last = now;
    }
}

/// Refuses a connection accepted past `--worker-connections`: a 503 with `Retry-After`
/// and `Connection: close`, written without reading the request, then a short lingering
/// close. Runs as its own task; it does not count as an open connection. A FastCGI front
/// end is only closed on: its answer would need the request id of a record not read yet,
/// and an HTTP status line there is a protocol error (nginx answers 502 either way). uwsgi
/// and SCGI front ends read the HTTP status line, as they do every response.
pub(super) fn refuse(ctx: &Rc<IoCtx>, mut stream: Stream) {
    note_shed(ShedReason::Connections);
    if ctx.shared.config.protocol == crate::config::Protocol::Fastcgi {
        drop(stream);
        return;
    }
    let out = ctx.error_response(503);
    if ctx.refusing.get() >= REFUSALS_LINGERING {
        // A fresh socket's send buffer takes these 200 bytes at once; if not, too bad.
        let _ = sys::send_now(&stream, &out);
        return;
    }
    ctx.refusing.set(ctx.refusing.get() + 1);
    let ctx = ctx.clone();
    monoio::spawn(async move {
        let written = monoio::time::timeout(REFUSAL_LINGER, stream.write(out)).await;
        if let Ok((Ok(_), _)) = written {
            sys::shutdown_write(&stream);
            let deadline = Instant::now() + REFUSAL_LINGER;
            let mut buf = vec![0u8; 4096];
            let mut drained = 0;
            while drained < REFUSAL_LINGER_BYTES {
                match monoio::time::timeout_at(deadline.into(), stream.read(buf)).await {
                    Ok((Ok(n), back)) if n > 0 => {
                        drained += n;
                        buf = back;
                    }
                    _ => break,
                }
            }
        }
        ctx.refusing.set(ctx.refusing.get() - 1);
    });
}

#[cfg(test)]
mod tests {
    use super::connections_for_files;

    #[test]
    fn connection_limit_leaves_a_reserve_of_descriptors() {
        assert_eq!(connections_for_files(1024), 768);
        assert_eq!(connections_for_files(20_000), 20_000 - 1024);
        assert_eq!(connections_for_files(100), 36);
        assert_eq!(connections_for_files(10), 16);
    }
}
