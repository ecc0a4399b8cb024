#!/usr/bin/env bash
# cargo fmt (the crate and fuzz/) and clippy (warnings are errors), against the newest Python found.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/find-python.sh)
ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
export PYO3_PYTHON="$py" CARGO_TARGET_DIR="target/py$ver"
cargo fmt --all -- --check
# fuzz/ is a workspace of its own (nightly to build, but rustfmt needs no toolchain switch).
(cd fuzz && cargo fmt -- --check)
cargo clippy --all-targets --quiet -- -D warnings
"$py" -m py_compile python/spindle/*.py tests/integration/*.py
echo "lint clean"
