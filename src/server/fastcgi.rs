//! The FastCGI responder's connection loop (`--protocol fastcgi`, nginx's `fastcgi_pass`):
//! read a request's BEGIN_REQUEST and PARAMS records, hand it off with its STDIN streamed
//! to `wsgi.input`, write the response in STDOUT records, END_REQUEST, then read the next
//! request when BEGIN_REQUEST asked to keep the connection (`fastcgi_keep_conn on`), else
//! close. Record syntax is `http/fastcgi.rs`; the peer check and the head are shared with
//! uwsgi and SCGI (`gateway.rs`).
//!
//! **One request at a time.** nginx never multiplexes a connection. A BEGIN_REQUEST for
//! another id while a request's PARAMS are read is answered at once with END_REQUEST
//! `FCGI_CANT_MPX_CONN` (its later records are skipped); once a request's body is being
//! read, any record but its STDIN ends the connection (`HttpError::InvalidRecord`), and
//! records that arrive while its response is written wait their turn. ABORT_REQUEST
//! before the hand-off ends the request with END_REQUEST; during the body it ends the
//! connection, which cancels the exchange (the application sees its client gone).
//! GET_VALUES is answered (`FCGI_MPXS_CONNS` 0); other management records get
//! UNKNOWN_TYPE.

use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};

use super::conn::{Conn, ReadOutcome};
use crate::config::Protocol;
use crate::handoff::ResponseEncoder;
use crate::http::cgi::CgiError;
use crate::http::fastcgi::{self as fcgi, Record};
use crate::http::{BodyDecoder, ConnectionEnd};
use crate::{log_debug, log_warn};

/// Read size while records of a request head are incomplete.
const READ_RECORDS: usize = 16 * 1024;
/// Most refused request ids remembered, to skip their records.
const REFUSED_IDS: usize = 16;
/// What GET_VALUES answers for FCGI_MAX_CONNS and FCGI_MAX_REQS.
const MAX_CONNS: u64 = 1024;

/// A request whose BEGIN_REQUEST and PARAMS were read.
struct Begun {
    id: u16,
    keep_conn: bool,
    params: BytesMut,
}

impl Conn {
    pub(super) async fn serve_fastcgi(&mut self) {
        if !self.gateway_peer_allowed(Protocol::Fastcgi) {
            return;
        }
        loop {
            let started = Instant::now();
            let begun = match self.read_fastcgi_request().await {
                Ok(Some(begun)) => begun,
                Ok(None) => return,
                Err(err) => {
                    log_warn!("{}: bad FastCGI request, closing: {err}", self.peer);
                    return;
                }
            };
            let config = &self.ctx.shared.config;
            let cgi = match fcgi::parse_params(&begun.params, &config.limits) {
                Ok(cgi) => cgi,
                Err(err) => {
                    log_warn!("{}: bad FastCGI request, closing: {err}", self.peer);
                    return;
                }
            };
            let decoder = BodyDecoder::fastcgi_stdin(begun.id, config.max_body);
            let is_head = cgi.is_head;
            let encoder = ResponseEncoder::for_fastcgi(
                begun.id,
                is_head,
                begun.keep_conn,
                self.ctx.server_allows_keep_alive(),
            );
            let head = self.cgi_request_head(begun.params, cgi);
            let seq = self.served as u32;
            let request = self
                .start_request(head, decoder, None, false, encoder, seq, started)
                .await;
            match request {
                Ok(request) => {
                    let mut batch = [request];
                    match self.finish(&mut batch).await {
                        ConnectionEnd::KeepAlive => {}
                        ConnectionEnd::Close => return,
                        ConnectionEnd::Linger => {
                            self.linger().await;
                            return;
                        }
                    }
                }
                Err(Some(status)) => {
                    self.fail_request(Some(begun.id), status).await;
                    return;
                }
                Err(None) => return,
            }
        }
    }

    /// Reads records until a request's BEGIN_REQUEST and whole PARAMS stream are here,
    /// answering management records and refusing a second request on the way.
    async fn read_fastcgi_request(&mut self) -> Result<Option<Begun>, CgiError> {
        let max_params = self.ctx.shared.config.limits.max_head_size;
        let mut clock = self.head_clock();
        let mut begun: Option<Begun> = None;
        let mut refused: Vec<u16> = Vec::new();
        let mut answers = Vec::new();
        loop {
            while let Some(Record {
                kind,
                request_id: id,
                content,
                len,
            }) = fcgi::parse_record(&self.buf)?
            {
                let body = &self.buf[content];
                let current = begun.as_ref().map(|b| b.id);
                match kind {
                    fcgi::GET_VALUES if id == 0 => {
                        answers.extend(fcgi::get_values_result(body, MAX_CONNS)?);
                    }
                    _ if id == 0 => answers.extend(fcgi::unknown_type(kind)),
                    fcgi::BEGIN_REQUEST => {
                        let (role, keep_conn) = fcgi::parse_begin(body)?;
                        if current.is_some() || role != fcgi::ROLE_RESPONDER {
                            let status = if role != fcgi::ROLE_RESPONDER {
                                fcgi::UNKNOWN_ROLE
                            } else {
                                fcgi::CANT_MPX_CONN
                            };
                            fcgi::push_end_request(&mut answers, id, status);
                            if refused.len() == REFUSED_IDS {
                                refused.remove(0);
                            }
                            refused.push(id);
                        } else {
                            begun = Some(Begun {
                                id,
                                keep_conn,
                                params: BytesMut::new(),
                            });
                        }
                    }
                    _ if refused.contains(&id) && current != Some(id) => {}
                    fcgi::ABORT_REQUEST if current == Some(id) => {
                        fcgi::push_end_request(&mut answers, id, fcgi::REQUEST_COMPLETE);
                        begun = None;
                    }
                    // An abort that crossed its request's END_REQUEST: the request is
                    // inactive, and records of inactive requests are ignored (FastCGI 1.0
                    // §3.3).
                    fcgi::ABORT_REQUEST if current.is_none() => {}
                    fcgi::PARAMS if current == Some(id) => {
                        let params = &mut begun.as_mut().expect("current").params;
                        if body.is_empty() {
                            self.buf.advance(len);
                            self.write_answers(&mut answers).await?;
                            return Ok(begun);
                        }
                        if params.len() + body.len() > max_params {
                            return Err(CgiError::TooLarge);
                        }
                        params.extend_from_slice(body);
                    }
                    _ => return Err(CgiError::Malformed),
                }
                self.buf.advance(len);
            }
            self.write_answers(&mut answers).await?;
            match self
                .read_more(
                    clock.deadline,
                    READ_RECORDS,
                    clock.waiting_first_byte && begun.is_none(),
                )
                .await
            {
                ReadOutcome::Data => clock.data_arrived(),
                ReadOutcome::TimedOut if !clock.waiting_first_byte => {
                    log_warn!(
                        "{}: FastCGI request not received within --header-timeout",
                        self.peer
                    );
                    return Ok(None);
                }
                ReadOutcome::Eof if !self.buf.is_empty() || begun.is_some() => {
                    return Err(CgiError::Truncated)
                }
                _ => return Ok(None),
            }
        }
    }

    /// The server's own error response to a request of this connection (the application's
    /// failed before its head went out), then the lingering close: HTTP/1 bytes, or for a
    /// FastCGI request the same CGI response in its STDOUT records and END_REQUEST.
    pub(super) async fn fail_request(&mut self, fastcgi: Option<u16>, status: u16) {
        let Some(id) = fastcgi else {
            return self.fail(status).await;
        };
        let mut encoder = ResponseEncoder::for_fastcgi(id, false, false, false);
        let out = encoder.error(status, &mut self.ctx.date.borrow_mut());
        if self.write(out.bytes).await.is_ok() {
            self.linger().await;
        }
    }

    /// Writes the answers to management records (and refusals) gathered so far.
    async fn write_answers(&mut self, answers: &mut Vec<u8>) -> Result<(), CgiError> {
        if answers.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(answers);
        if let Err(err) = self.write(out).await {
            log_debug!("{}: client gone: {err}", self.peer);
            // Reported as the end of the connection by the next read.
        }
        Ok(())
    }

    /// A whole response whose body is written apart (the application's own `bytes`): the
    /// head (already in records), the body in STDOUT records around slices of it (no copy),
    /// then the end of the response.
    pub(super) async fn write_whole_records(
        &mut self,
        pending: Bytes,
        head: Vec<u8>,
        body: Bytes,
        id: u16,
    ) -> std::io::Result<()> {
        // writev takes at most IOV_MAX (1024) buffers: a few hundred per call.
        const PIECES_PER_WRITE: usize = 256;
        let mut bufs = vec![pending, Bytes::from(head)];
        let mut at = 0;
        while at < body.len() {
            let n = (body.len() - at).min(fcgi::MAX_CONTENT);
            bufs.push(Bytes::copy_from_slice(&fcgi::header(fcgi::STDOUT, id, n)));
            bufs.push(body.slice(at..at + n));
            at += n;
            if bufs.len() >= 2 * PIECES_PER_WRITE {
                self.write_gather(std::mem::take(&mut bufs)).await?;
            }
        }
        let mut end = Vec::with_capacity(24);
        fcgi::push_end_of_response(&mut end, id);
        bufs.push(Bytes::from(end));
        self.write_gather(bufs).await
    }

    /// A file's `len` bytes from `offset` in STDOUT records: each record's header, then its
    /// content with sendfile.
    pub(super) async fn send_file_records(
        &mut self,
        file: &std::fs::File,
        mut offset: u64,
        len: u64,
        id: u16,
    ) -> std::io::Result<()> {
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(fcgi::MAX_CONTENT as u64);
            self.write(fcgi::header(fcgi::STDOUT, id, n as usize).to_vec())
                .await?;
            self.send_file(file, offset, n).await?;
            offset += n;
        }
        Ok(())
    }
}
