#!/usr/bin/env bash
# Builds Spindle's wheel for one CPython (default: scripts/find-python.sh's) and prints its
# path: maturin, release profile, a cargo target folder per Python version
# (target/wheel-py3.X) so switching versions does not rebuild everything.
#   scripts/wheel.sh [/path/to/python3.X]
# maturin comes from a tools venv at build/tools (made on first use, version pinned below).
set -euo pipefail
cd "$(dirname "$0")/.."
MATURIN_VERSION=1.16.0

py=${1:-$(scripts/find-python.sh --any)}
py=$(command -v "$py") || { echo "error: no Python at ${1:-}" >&2; exit 1; }
ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

tools=build/tools
if ! "$tools/bin/maturin" --version 2>/dev/null | grep -q " $MATURIN_VERSION\$"; then
    echo "making $tools with maturin $MATURIN_VERSION" >&2
    rm -rf "$tools"
    "$py" -m venv "$tools" >&2
    "$tools/bin/python" -m pip install -q --disable-pip-version-check "maturin==$MATURIN_VERSION" >&2
fi

out=build/wheels/py$ver
rm -rf "$out"
CARGO_TARGET_DIR="target/wheel-py$ver" "$tools/bin/maturin" build --release --locked \
    --interpreter "$py" --out "$out" >&2
wheel=$(ls "$out"/spindle-*.whl)
echo "$wheel"
