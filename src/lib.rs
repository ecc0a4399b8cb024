//! Spindle: a WSGI (PEP 3333) server. Thread-per-core HTTP/1.1 I/O on monoio, a pool of
//! Python threads behind lock-free queues. See README.md, "Architecture", for the code map.

#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

pub mod config;
pub mod handoff;
pub mod http;
pub mod log;
pub mod py;
pub mod run;
pub mod server;

pub use config::Config;

/// Spindle's version, as `--version` and `SERVER_SOFTWARE` show it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
