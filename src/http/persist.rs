//! Whether a connection carries another request after the current response: every fact that
//! bears on it, recorded where it becomes known, and one function that decides.
//!
//! The facts come from four places: the request head (RFC 9112 §9.3: HTTP/1.1 persists
//! unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`), the server
//! (keep-alive enabled, not stopping), the response encoder (a body delimited by the close,
//! or one that ended short of its `Content-Length`) and whoever saw the request body (read
//! to its end or not). Each records its fact in a [`Persistence`]; only
//! [`Persistence::keep_alive`] and [`Persistence::end`] decide. The server's own error
//! responses (400, 408, 413, ...) are outside this: the request could not be framed, so the
//! connection always closes after them (RFC 9112 §9.6).

/// How a connection ends after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// It carries the next request.
    KeepAlive,
    /// It closes once the response is written.
    Close,
    /// It closes after draining what the client still sends: the client may still be sending
    /// a body we did not read, and closing with unread bytes would turn our FIN into a RST
    /// that can destroy the response before the client reads it (RFC 9112 §9.6).
    Linger,
}

/// The facts that decide whether a connection persists after one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Persistence {
    /// The request asked for (HTTP/1.1 default) or allowed a persistent connection.
    request_allows: bool,
    /// The server allows it: keep-alive is enabled and the server is not stopping.
    server_allows: bool,
    /// The response body is delimited by closing the connection (HTTP/1.0 without a length).
    close_delimited: bool,
    /// The response ended short of its `Content-Length`: the client would wait for the rest.
    broken: bool,
    /// The request body was not read to its end: the next bytes on the connection are not
    /// the next request.
    body_unread: bool,
}

impl Persistence {
    pub fn new(request_allows: bool, server_allows: bool) -> Persistence {
        Persistence {
            request_allows,
            server_allows,
            close_delimited: false,
            broken: false,
            body_unread: false,
        }
    }

    /// The response body ends with the connection.
    pub fn close_delimited(&mut self) {
        self.close_delimited = true;
    }

    /// The response could not be completed as announced.
    pub fn broken(&mut self) {
        self.broken = true;
    }

    /// The request body was not (or will not be) read to its end.
    pub fn body_unread(&mut self) {
        self.body_unread = true;
    }

    /// Whether the connection persists: what the response head announces (`Connection:
    /// close` when not) and whether the connection reads another request.
    pub fn keep_alive(self) -> bool {
        self.request_allows
            && self.server_allows
            && !self.close_delimited
            && !self.broken
            && !self.body_unread
    }

    /// How the connection ends after the response.
    pub fn end(self) -> ConnectionEnd {
        if self.keep_alive() {
            ConnectionEnd::KeepAlive
        } else if self.body_unread {
            ConnectionEnd::Linger
        } else {
            ConnectionEnd::Close
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fact_can_end_the_connection() {
        let open = Persistence::new(true, true);
        assert_eq!(open.end(), ConnectionEnd::KeepAlive);
        assert_eq!(Persistence::new(false, true).end(), ConnectionEnd::Close);
        assert_eq!(Persistence::new(true, false).end(), ConnectionEnd::Close);
        let mut p = open;
        p.close_delimited();
        assert_eq!(p.end(), ConnectionEnd::Close);
        let mut p = open;
        p.broken();
        assert_eq!(p.end(), ConnectionEnd::Close);
        let mut p = open;
        p.body_unread();
        assert!(!p.keep_alive());
        assert_eq!(p.end(), ConnectionEnd::Linger);
        // An unread body lingers even when the request did not ask to persist.
        let mut p = Persistence::new(false, true);
        p.body_unread();
        assert_eq!(p.end(), ConnectionEnd::Linger);
    }
}
