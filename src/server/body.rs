//! Request bodies on the connection: read a small body whole before the hand-off, or
//! give a large (or `Expect: 100-continue`) body to the Python thread piece by piece as
//! its application reads `wsgi.input`.

use std::time::{Duration, Instant};

use bytes::Buf;

use super::conn::{Conn, ReadOutcome};
use crate::handoff::{BodyChunk, BodyError, BodyPiece};
use crate::http::{BodyDecoder, PayloadRuns};

/// A body up to this size is read whole before the request is handed off, so the
/// application gets it as one `bytes` object without a round trip per read.
pub(super) const PREBUFFER_BODY: usize = 64 * 1024;
/// Most bytes one read of a streamed body takes, into the piece handed to the Python
/// thread (`read_piece`), or into the connection's buffer when that still holds some of the
/// body. 256 KiB, not 64: an application reading `wsgi.input` 64 KiB at a time then costs a
/// quarter of a round trip to the I/O thread per read instead of 1.4, which took a chunked
/// upload from 574 to 1,354 MiB/s at 0.46x the CPU per GiB; 1 MiB did no better
/// (perf/upload.py; perf/README.md, "Large uploads"). A connection's buffer grown by the
/// second path goes back to its usual size after the exchange (`Conn::exchange`).
pub(super) const BODY_READ_SIZE: usize = 256 * 1024;

impl Conn {
    /// Reads a body of up to [`PREBUFFER_BODY`] whole. `Ok(true)`: complete in `pending`;
    /// `Ok(false)`: larger, stream it (the part read stays in `pending`); `Err(Some)`:
    /// invalid or too slow (the status to answer); `Err(None)`: the client went away.
    pub(super) async fn prebuffer(
        &mut self,
        decoder: &mut BodyDecoder,
        pending: &mut Vec<u8>,
    ) -> Result<bool, Option<u16>> {
        let timeout = self.ctx.shared.config.header_timeout;
        loop {
            if !self.buf.is_empty() {
                let consumed = decoder
                    .decode(&self.buf, pending)
                    .map_err(|e| Some(e.status()))?;
                self.buf.advance(consumed);
            }
            if decoder.is_done() {
                return Ok(true);
            }
            if pending.len() >= PREBUFFER_BODY {
                return Ok(false);
            }
            // A small body is read in small pieces: no connection grows a large buffer
            // for a body that may be a few bytes.
            match self
                .read_more(Instant::now() + timeout, PREBUFFER_BODY, false)
                .await
            {
                ReadOutcome::Data => {}
                ReadOutcome::TimedOut => return Err(Some(408)),
                _ => return Err(None),
            }
        }
    }

    /// The next piece of a streamed body for the Python thread.
    pub(super) async fn next_body_chunk(
        &mut self,
        decoder: &mut BodyDecoder,
        pending: &mut Vec<u8>,
        body_done: &mut bool,
    ) -> BodyChunk {
        if !pending.is_empty() {
            return BodyChunk::Data {
                piece: BodyPiece::whole(std::mem::take(pending)),
                last: decoder.is_done(),
            };
        }
        if *body_done || decoder.is_done() {
            *body_done = true;
            return BodyChunk::End;
        }
        let timeout = self
            .ctx
            .shared
            .config
            .header_timeout
            .max(Duration::from_secs(30));
        if self.buf.is_empty() {
            return self.read_piece(decoder, timeout, body_done).await;
        }
        let mut out = Vec::new();
        loop {
            if !self.buf.is_empty() {
                match decoder.decode(&self.buf, &mut out) {
                    Ok(consumed) => self.buf.advance(consumed),
                    Err(err) => return BodyChunk::Error(BodyError::Invalid(err)),
                }
                if decoder.is_done() {
                    *body_done = true;
                }
                if !out.is_empty() {
                    return BodyChunk::Data {
                        piece: BodyPiece::whole(out),
                        last: *body_done,
                    };
                }
                if *body_done {
                    return BodyChunk::End;
                }
            }
            match self
                .read_more(Instant::now() + timeout, BODY_READ_SIZE, false)
                .await
            {
                ReadOutcome::Data => {}
                ReadOutcome::TimedOut => return BodyChunk::Error(BodyError::TimedOut),
                _ => return BodyChunk::Error(BodyError::Disconnected),
            }
        }
    }

    /// The next piece of a streamed body when nothing of it is buffered: one socket read
    /// into the buffer the Python thread gets, the payload located where it lies (chunk
    /// data between its size lines) instead of decoded into a copy, which was the largest
    /// cost of an upload (perf/README.md, "Large uploads"). A `Content-Length` read stops
    /// at the body's end; a framed body's read may pass it, and what follows the end (a
    /// pipelined request) goes back to the connection's buffer.
    async fn read_piece(
        &mut self,
        decoder: &mut BodyDecoder,
        timeout: Duration,
        body_done: &mut bool,
    ) -> BodyChunk {
        let want = decoder
            .verbatim_remaining()
            .map_or(BODY_READ_SIZE, |r| r.min(BODY_READ_SIZE as u64) as usize);
        let mut piece = Vec::with_capacity(want);
        loop {
            piece = match self.read_into(piece, Instant::now() + timeout, false).await {
                (ReadOutcome::Data, Some(piece)) => piece,
                (ReadOutcome::TimedOut, _) => return BodyChunk::Error(BodyError::TimedOut),
                _ => return BodyChunk::Error(BodyError::Disconnected),
            };
            let mut runs = PayloadRuns::default();
            let consumed = match decoder.decode(&piece, &mut runs) {
                Ok(consumed) => consumed,
                Err(err) => return BodyChunk::Error(BodyError::Invalid(err)),
            };
            if consumed < piece.len() {
                // The message ended inside this read; the rest is the next request's.
                self.buf.extend_from_slice(&piece[consumed..]);
            }
            *body_done = decoder.is_done();
            if !runs.is_empty() {
                return BodyChunk::Data {
                    piece: BodyPiece::framed(piece, runs.into_runs()),
                    last: *body_done,
                };
            }
            if *body_done {
                return BodyChunk::End;
            }
            // Only framing came (a size line, a record header): read again.
            piece.clear();
        }
    }
}
