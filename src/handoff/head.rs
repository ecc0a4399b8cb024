//! [`RequestHead`]: a request as any wire protocol delivers it to the application side.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::http::cgi::CgiHead;
use crate::http::forwarded::{self, ForwardedRules};
use crate::http::{HeaderSpan, ParsedHead, Span, Version};

/// The request line's parts, the header fields and the addresses of one request, as byte
/// ranges of one frozen buffer: nothing is copied between the socket and the environ
/// strings. Built by a wire protocol on the I/O thread (HTTP/1.1: `server::conn`, from a
/// `ParsedHead`), read by `py::environ`.
pub struct RequestHead {
    /// The bytes every span indexes (for HTTP/1.1, the head frozen out of the read buffer).
    pub bytes: Bytes,
    pub method: Span,
    /// The request target as sent, for logs.
    pub target: Span,
    /// The path, still percent-encoded; empty means `/`.
    pub path: Span,
    /// The query without its `?`; empty when there is none.
    pub query: Span,
    pub version: Version,
    /// HTTP header fields in the order received (repeated fields are separate entries).
    pub headers: Vec<HeaderSpan>,
    /// Environ variables a front end set itself (uwsgi, FastCGI and SCGI carry CGI
    /// variables such as `HTTPS` or `DOCUMENT_ROOT`); they are set verbatim after, and so
    /// over, what the fields above give. Empty for HTTP.
    pub vars: Vec<HeaderSpan>,
    /// The client: the connection's peer (after the PROXY protocol), or the address a
    /// trusted proxy's forwarding fields named (see [`RequestHead::apply_forwarded`]).
    /// REMOTE_ADDR and the access log's `%(h)s` show it.
    pub peer: Endpoint,
    pub local: Endpoint,
    /// The connection's own peer when forwarding fields replaced `peer` (the environ's
    /// `spindle.peer_addr`); `None` otherwise.
    pub forwarded_by: Option<Endpoint>,
    /// A trusted proxy said the request came over https (`wsgi.url_scheme`).
    pub https: bool,
    /// The host a trusted proxy said the client asked for (`--forwarded-host`): HTTP_HOST,
    /// SERVER_NAME and SERVER_PORT come from it.
    pub forwarded_host: Option<Span>,
}

/// One end of a connection: an IP address and port, or a UNIX socket, whose peers have no
/// address worth showing (a front end on the same machine: nginx passes the client's in
/// headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Ip(SocketAddr),
    Unix,
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Endpoint {
        Endpoint::Ip(addr)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Ip(addr) => addr.fmt(f),
            Endpoint::Unix => f.write_str("unix"),
        }
    }
}

impl RequestHead {
    /// An HTTP/1.1 request head: `bytes` is the buffer `parsed` was parsed from.
    pub fn from_http1(
        bytes: Bytes,
        parsed: ParsedHead,
        peer: impl Into<Endpoint>,
        local: impl Into<Endpoint>,
    ) -> RequestHead {
        RequestHead {
            bytes,
            method: parsed.method,
            target: parsed.target,
            path: parsed.path,
            query: parsed.query,
            version: parsed.version,
            headers: parsed.headers,
            vars: Vec::new(),
            peer: peer.into(),
            local: local.into(),
            forwarded_by: None,
            https: false,
            forwarded_host: None,
        }
    }

    /// Takes what a trusted proxy's forwarding fields say (the caller checked the peer is
    /// trusted): the client's address into `peer`, keeping the port when the field gave none
    /// (as werkzeug's ProxyFix leaves REMOTE_PORT), the scheme, and the host when asked.
    /// Costs one pass over the field names when the request has none of the fields.
    pub fn apply_forwarded(&mut self, rules: &ForwardedRules) {
        let said = forwarded::resolve(&self.bytes, &self.headers, rules);
        if let Some((ip, port)) = said.client {
            let port = port.unwrap_or(match self.peer {
                Endpoint::Ip(addr) => addr.port(),
                Endpoint::Unix => 0,
            });
            self.forwarded_by = Some(self.peer);
            self.peer = Endpoint::Ip(SocketAddr::new(ip, port));
        }
        self.https = said.https.unwrap_or(false);
        self.forwarded_host = said.host;
    }

    /// A uwsgi, SCGI or FastCGI request head: `bytes` is the variable block `cgi` was
    /// parsed from (with its `HTTP_*` names already turned into field names). `peer` is the
    /// client as the front end named it (`REMOTE_ADDR`), else the connection's.
    pub fn from_cgi(
        bytes: Bytes,
        cgi: CgiHead,
        peer: impl Into<Endpoint>,
        local: impl Into<Endpoint>,
    ) -> RequestHead {
        RequestHead {
            bytes,
            method: cgi.method,
            target: cgi.target,
            path: cgi.path,
            query: cgi.query,
            version: cgi.version,
            headers: cgi.headers,
            vars: cgi.vars,
            peer: peer.into(),
            local: local.into(),
            forwarded_by: None,
            https: cgi.https,
            forwarded_host: None,
        }
    }

    /// The bytes of `span`.
    #[inline]
    pub fn get(&self, span: Span) -> &[u8] {
        span.get(&self.bytes)
    }
}
