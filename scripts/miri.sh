#!/usr/bin/env bash
# Runs the unit tests that Miri can interpret: the pure-Rust code with `unsafe` in it or
# under it (ARCHITECTURE.md §4, "Miri"), where Miri checks every pointer use for undefined
# behaviour (dangling, out of bounds, misaligned, data races between its threads).
#   scripts/miri.sh                  the modules listed below
#   scripts/miri.sh http::head       only tests whose names contain these filters
# What runs and why (the rest cannot: see ARCHITECTURE.md §4):
#   server::gather   the iovecs handed to writev/io_uring, followed through their raw
#                    pointers after every partial write (the invariant of its unsafe impl);
#   log::            localtime_r into a zeroed libc::tm (Miri implements it), the sinks;
#   handoff::        the hand-off's own tests (no unsafe of ours; bytes, crossbeam);
#   http::           the protocol core (forbids unsafe, but httparse and memchr under it
#                    use raw pointers and SIMD fallbacks that Miri checks).
# Needs the nightly toolchain; installs its miri component when missing (rustup). Isolation
# is off (MIRIFLAGS) because the HTTP date and the encoder read the real clock.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "error: scripts/miri.sh needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo +nightly miri --version >/dev/null 2>&1; then
    rustup +nightly component add miri rust-src
fi
# The crate links CPython through pyo3-ffi; its build script needs an interpreter (no test
# run here calls into it).
if [ -z "${PYO3_PYTHON:-}" ]; then
    PYO3_PYTHON=$(scripts/find-python.sh)
    export PYO3_PYTHON
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/miri}"
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-disable-isolation}"

if [ $# -gt 0 ]; then
    filters=("$@")
else
    filters=(server::gather log:: handoff:: http::)
fi
cargo +nightly miri setup >/dev/null
# Skipped: a pure arithmetic loop over 146,097 days (no pointer in sight), minutes under Miri.
cargo +nightly miri test --lib -- "${filters[@]}" --skip days_round_trip_over_four_centuries
