//! Request bodies on the connection: read a small body whole before the hand-off, or
//! give a large (or `Expect: 100-continue`) body to the Python thread piece by piece as
//! its application reads `wsgi.input`.

use std::time::{Duration, Instant};

use bytes::Buf;

use super::conn::{Conn, ReadOutcome};
use crate::handoff::{BodyChunk, BodyError};
use crate::http::BodyDecoder;

/// A body up to this size is read whole before the request is handed off, so the
/// application gets it as one `bytes` object without a round trip per read.
pub(super) const PREBUFFER_BODY: usize = 64 * 1024;
/// Bytes read from the socket per body read when streaming a larger body. 256 KiB, not
/// 64: an application reading `wsgi.input` 64 KiB at a time then costs a quarter of a
/// round trip to the I/O thread per read instead of 1.4 (a 64 KiB buffer is topped up only
/// when half of it is free), which took a chunked upload from 574 to 1,354 MiB/s at 0.46x
/// the CPU per GiB (perf/upload.py; perf/README.md, "Large uploads"). The connection's buffer
/// goes back to its usual size after the exchange (`Conn::exchange`).
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
                bytes: std::mem::take(pending),
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
            if let Some(remaining) = decoder.verbatim_remaining() {
                return self
                    .read_verbatim(decoder, remaining, timeout, body_done)
                    .await;
            }
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
                        bytes: out,
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

    /// A piece of a `Content-Length` body with nothing of it buffered: read from the socket
    /// straight into the piece the Python thread gets, never past the body's end (so a
    /// pipelined request stays in the socket), with no decode copy. That copy was the
    /// largest cost of an upload (perf/README.md, "Large uploads").
    async fn read_verbatim(
        &mut self,
        decoder: &mut BodyDecoder,
        remaining: u64,
        timeout: Duration,
        body_done: &mut bool,
    ) -> BodyChunk {
        let want = usize::try_from(remaining).map_or(BODY_READ_SIZE, |r| r.min(BODY_READ_SIZE));
        let piece = Vec::with_capacity(want);
        match self.read_into(piece, Instant::now() + timeout, false).await {
            (ReadOutcome::Data, Some(piece)) => {
                decoder.payload_read(piece.len());
                *body_done = decoder.is_done();
                BodyChunk::Data {
                    bytes: piece,
                    last: *body_done,
                }
            }
            (ReadOutcome::TimedOut, _) => BodyChunk::Error(BodyError::TimedOut),
            _ => BodyChunk::Error(BodyError::Disconnected),
        }
    }
}
