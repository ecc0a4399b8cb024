#!/usr/bin/env bash
# Builds Spindle (release) against the CPython chosen by scripts/find-python.sh, in a target
# folder of its own per Python version (target/py3.X), and prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/find-python.sh)
ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
export PYO3_PYTHON="$py"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/py$ver}"
cargo build --release --locked -q "$@" >&2 || cargo build --release "$@" >&2
echo "$CARGO_TARGET_DIR/release/spindle"
