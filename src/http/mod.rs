//! HTTP/1.1 as pure functions over bytes: parse a request head in place, frame and decode
//! a body, encode responses; the PROXY protocol header before it and what a trusted proxy's
//! forwarding fields say. Nothing here does I/O or knows Python; every function returns
//! "need more" or "done", so it can be tested split at every byte and benched alone. The
//! gateway protocols nginx speaks to application servers (uwsgi, SCGI, FastCGI) are here
//! too, for the same reasons: `cgi.rs` reads their CGI variables into a request head.

pub mod body;
pub mod cgi;
pub mod date;
pub mod error;
pub mod fastcgi;
pub mod forwarded;
pub mod head;
pub mod persist;
pub mod proxy;
pub mod response;
pub mod scgi;
pub mod uwsgi;

pub use body::{BodyDecoder, BodyFraming, Payload, PayloadRuns};
pub use error::HttpError;
pub use forwarded::{ForwardedRules, TrustedAddrs};
pub use head::{parse_head, HeaderSpan, Limits, ParsedHead, Span, Version};
pub use persist::{ConnectionEnd, Persistence};
