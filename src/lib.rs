//! Spindle: a WSGI (PEP 3333) server. Thread-per-core HTTP/1.1 I/O on monoio, a pool of
//! Python threads behind lock-free queues, all inside the Python process that starts it.
//! ARCHITECTURE.md explains the whole; README.md has the code map.
//!
//! From the top: `ext` (the `spindle._native` extension module) calls `run` (one process,
//! start to exit), which starts `py` (the Python threads) and `server` (the I/O threads);
//! they meet only in `handoff`; `http` is the protocol, pure; `config` and `log` serve all;
//! `metrics` counts for both and serves `/metrics`.

#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod config;
mod ext;
pub mod handoff;
pub mod http;
pub mod log;
pub mod metrics;
pub mod py;
pub mod run;
pub mod server;

pub use config::Config;

/// Spindle's version, as `--version` and `SERVER_SOFTWARE` show it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
