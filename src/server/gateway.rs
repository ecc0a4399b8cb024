//! The connection loops of the protocols nginx speaks to application servers, for uwsgi
//! and SCGI (FastCGI's, which keeps connections, is `fastcgi.rs`): check the peer
//! (`--uwsgi-allow-ips`), read the variable block, hand the request off with its body
//! (`CONTENT_LENGTH` bytes, streamed to `wsgi.input`), write the response (an HTTP/1
//! status line and headers, which nginx's uwsgi and scgi modules read; the body delimited
//! by `Content-Length` or by the close), and close: one request per connection, as nginx
//! uses these protocols. Parsing is `http/uwsgi.rs`, `http/scgi.rs` and `http/cgi.rs`.
//!
//! Input that is not a request (bad syntax, too large, a peer not allowed) closes the
//! connection with one warning line: the front end answers its client itself (502).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use bytes::BytesMut;

use super::conn::{Conn, ReadOutcome};
use crate::config::Protocol;
use crate::handoff::{Endpoint, RequestHead, ResponseEncoder};
use crate::http::cgi::{header_names_in_place, CgiError, CgiHead};
use crate::http::{BodyDecoder, BodyFraming, ConnectionEnd, Limits};
use crate::{log_debug, log_warn};

/// A gateway protocol's head parser: `http::uwsgi::parse` or `http::scgi::parse`.
type ParseHead = fn(&[u8], &Limits) -> Result<Option<(CgiHead, usize)>, CgiError>;

/// Read size while the variable block is incomplete.
const READ_HEAD: usize = 8 * 1024;

impl Conn {
    /// Whether the peer may speak a gateway protocol to us (logs a refusal).
    pub(super) fn gateway_peer_allowed(&self, protocol: Protocol) -> bool {
        match self.peer {
            Endpoint::Unix => true,
            Endpoint::Ip(addr) => {
                let allowed = self.ctx.shared.config.gateway_allow.contains(addr.ip());
                if !allowed {
                    log_warn!(
                        "{addr}: refused a {} connection: the peer is not in --uwsgi-allow-ips",
                        protocol_name(protocol)
                    );
                }
                allowed
            }
        }
    }

    /// Serves one uwsgi or SCGI request, then the connection ends.
    pub(super) async fn serve_gateway(&mut self, protocol: Protocol) {
        if !self.gateway_peer_allowed(protocol) {
            return;
        }
        let parse: ParseHead = match protocol {
            Protocol::Scgi => crate::http::scgi::parse,
            _ => crate::http::uwsgi::parse,
        };
        let started = Instant::now();
        let (cgi, head_len) = match self.read_gateway_head(parse).await {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return,
            Err(err) => {
                log_warn!(
                    "{}: bad {} request, closing: {err}",
                    self.peer,
                    protocol_name(protocol)
                );
                return;
            }
        };
        let content_length = cgi.content_length;
        let encoder = ResponseEncoder::for_gateway(cgi.is_head);
        let block = self.buf.split_to(head_len);
        let head = self.cgi_request_head(block, cgi);
        let decoder = match BodyDecoder::new(
            BodyFraming::Length(content_length),
            self.ctx.shared.config.max_body,
        ) {
            Ok(decoder) => decoder,
            Err(err) => {
                log_debug!("{}: {err}", self.peer);
                self.fail(err.status()).await;
                return;
            }
        };
        let seq = self.served as u32;
        let request = self
            .start_request(
                head,
                decoder,
                Some(content_length),
                false,
                encoder,
                seq,
                started,
            )
            .await;
        match request {
            Ok(request) => {
                let mut batch = [request];
                if self.finish(&mut batch).await == ConnectionEnd::Linger {
                    self.linger().await;
                }
            }
            Err(Some(status)) => self.fail(status).await,
            Err(None) => {}
        }
    }

    /// Reads until `parse` has a whole variable block, within `--header-timeout` of the
    /// first byte (and the usual wait for it). `Ok(None)`: close quietly.
    pub(super) async fn read_gateway_head(
        &mut self,
        parse: ParseHead,
    ) -> Result<Option<(CgiHead, usize)>, CgiError> {
        let limits = self.ctx.shared.config.limits;
        let mut clock = self.head_clock();
        loop {
            if !self.buf.is_empty() {
                if let Some(parsed) = parse(&self.buf, &limits)? {
                    return Ok(Some(parsed));
                }
            }
            match self
                .read_more(clock.deadline, READ_HEAD, clock.waiting_first_byte)
                .await
            {
                ReadOutcome::Data => clock.data_arrived(),
                ReadOutcome::TimedOut if !clock.waiting_first_byte => {
                    log_warn!(
                        "{}: request variables not received within --header-timeout",
                        self.peer
                    );
                    return Ok(None);
                }
                ReadOutcome::Eof if !self.buf.is_empty() => return Err(CgiError::Truncated),
                _ => return Ok(None),
            }
        }
    }

    /// The request head of a gateway request whose variable block is `block`: `HTTP_*`
    /// names become field names, the client is `REMOTE_ADDR`:`REMOTE_PORT` when they are an
    /// address, and `HTTPS=on` (or `REQUEST_SCHEME=https`) makes `wsgi.url_scheme` https.
    pub(super) fn cgi_request_head(&self, mut block: BytesMut, cgi: CgiHead) -> RequestHead {
        header_names_in_place(&mut block, &cgi.headers);
        let peer = client_address(&block, &cgi).map_or(self.peer, Endpoint::Ip);
        RequestHead::from_cgi(block.freeze(), cgi, peer, self.local)
    }
}

/// `REMOTE_ADDR` and `REMOTE_PORT` as a socket address, when they are one.
fn client_address(block: &[u8], cgi: &CgiHead) -> Option<SocketAddr> {
    let addr = std::str::from_utf8(cgi.remote_addr?.get(block)).ok()?;
    let ip: IpAddr = addr.parse().ok()?;
    let port = cgi
        .remote_port
        .and_then(|p| std::str::from_utf8(p.get(block)).ok()?.parse::<u16>().ok())
        .unwrap_or(0);
    Some(SocketAddr::new(ip, port))
}

pub(super) fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Http => "HTTP",
        Protocol::Uwsgi => "uwsgi",
        Protocol::Fastcgi => "FastCGI",
        Protocol::Scgi => "SCGI",
    }
}
