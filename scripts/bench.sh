#!/usr/bin/env bash
# Runs the criterion suites and compares them with a saved baseline.
#   scripts/bench.sh                 compare with the baseline "main" (saved on first run)
#   scripts/bench.sh --save NAME     save this run as baseline NAME
#   scripts/bench.sh --against NAME  compare with baseline NAME
# Criterion prints the change per benchmark; reports land in target/py3.X/criterion/.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/find-python.sh)
ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
export PYO3_PYTHON="$py" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/py$ver}"
baseline=main
mode=compare
case "${1:-}" in
    --save) mode=save; baseline=${2:?baseline name}; shift 2 ;;
    --against) baseline=${2:?baseline name}; shift 2 ;;
esac
if [ "$mode" = save ] || [ ! -d "$CARGO_TARGET_DIR/criterion" ] || ! ls "$CARGO_TARGET_DIR"/criterion/*/*/"$baseline" >/dev/null 2>&1; then
    echo "saving baseline '$baseline'"
    cargo bench --benches "$@" -- --save-baseline "$baseline"
else
    # Lenient: a suite or benchmark added since the baseline was saved runs without
    # a comparison instead of failing the run.
    cargo bench --benches "$@" -- --baseline-lenient "$baseline"
fi
