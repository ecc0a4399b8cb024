//! A piece of a streamed request body on its way to `wsgi.input`: the bytes of one socket
//! read, kept where they arrived, and the runs of payload among them (a chunked body's size
//! lines and a FastCGI body's record headers stay between the runs). The Python thread
//! copies the runs into the reader's buffer (`py/callbacks.rs`, `read_body`): after the
//! kernel's copy out of the socket, that is the only copy a body byte takes, except the
//! bytes that came before the body was streamed (with the head, or while the request
//! waited), which the connection's buffer decodes into a piece of their own
//! (ARCHITECTURE.md §5).

use std::ops::Range;

/// See the module documentation. The default piece is empty.
#[derive(Debug, Default)]
pub struct BodyPiece {
    bytes: Vec<u8>,
    /// Payload ranges of `bytes`, in order, none empty. `runs[next..]` are unread, and
    /// `runs[next].start` moves up as reads take from it.
    runs: Vec<Range<usize>>,
    next: usize,
}

impl BodyPiece {
    /// A piece that is all payload.
    pub fn whole(bytes: Vec<u8>) -> BodyPiece {
        let mut runs = Vec::new();
        if !bytes.is_empty() {
            runs.push(0..bytes.len());
        }
        BodyPiece {
            bytes,
            runs,
            next: 0,
        }
    }

    /// A piece whose payload is `runs` of `bytes` (in order, within `bytes`; as
    /// `http::PayloadRuns` records them).
    pub fn framed(bytes: Vec<u8>, mut runs: Vec<Range<usize>>) -> BodyPiece {
        runs.retain(|run| !run.is_empty());
        assert!(
            runs.windows(2).all(|w| w[0].end <= w[1].start)
                && runs.last().is_none_or(|run| run.end <= bytes.len()),
            "payload runs out of order or past the piece"
        );
        BodyPiece {
            bytes,
            runs,
            next: 0,
        }
    }

    /// Payload bytes not read yet.
    pub fn len(&self) -> usize {
        self.runs[self.next..].iter().map(|run| run.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.next == self.runs.len()
    }

    /// Copies the next payload bytes into `out`, as many as fit; returns how many.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let mut n = 0;
        while n < out.len() && self.next < self.runs.len() {
            let run = &mut self.runs[self.next];
            let take = run.len().min(out.len() - n);
            copy_in_blocks(
                &mut out[n..n + take],
                &self.bytes[run.start..run.start + take],
            );
            run.start += take;
            n += take;
            if run.start == run.end {
                self.next += 1;
            }
        }
        n
    }
}

/// A copy in blocks small enough that glibc copies each with vector loads and stores, never
/// `rep movsb` (used above `glibc.cpu.x86_rep_movsb_threshold`, 2,112 bytes on these
/// machines). On AMD EPYC `rep movsb` runs at a tenth of its speed when the destination lies
/// a few bytes past the source modulo 4 KiB, so one large copy cost 1x or 4x the kernel's
/// copy of the same bytes depending on where two allocations happened to fall: Content-Length
/// uploads ran at 1,400-4,200 MiB/s with one binary (perf/README.md, "Large uploads").
fn copy_in_blocks(out: &mut [u8], from: &[u8]) {
    const BLOCK: usize = 2048;
    for (to, from) in out.chunks_mut(BLOCK).zip(from.chunks(BLOCK)) {
        to.copy_from_slice(from);
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    fn read_all(piece: &mut BodyPiece, step: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0; step];
        loop {
            let n = piece.read(&mut buf);
            if n == 0 {
                return got;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn runs_read_out_in_any_steps_skip_the_framing() {
        let bytes = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec();
        for step in 1..=12 {
            let mut piece = BodyPiece::framed(bytes.clone(), vec![3..8, 10..10, 13..19]);
            assert_eq!(piece.len(), 11);
            assert_eq!(read_all(&mut piece, step), b"hello world", "step {step}");
            assert!(piece.is_empty());
            assert_eq!(piece.len(), 0);
        }
    }

    #[test]
    fn whole_and_empty_pieces() {
        let mut piece = BodyPiece::whole(b"abc".to_vec());
        assert_eq!(read_all(&mut piece, 2), b"abc");
        assert!(BodyPiece::whole(Vec::new()).is_empty());
        assert!(BodyPiece::default().is_empty());
        assert_eq!(BodyPiece::default().read(&mut [0; 4]), 0);
    }

    #[test]
    #[should_panic(expected = "past the piece")]
    fn runs_past_the_bytes_are_refused() {
        BodyPiece::framed(b"abc".to_vec(), vec![1..4]);
    }
}
