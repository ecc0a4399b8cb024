#!/usr/bin/env bash
# Fuzzes the pure HTTP core (src/http/) with cargo-fuzz: the targets in fuzz/fuzz_targets/
# check properties (whole equals split, round trips, limits, no header injection), not only
# that nothing panics. Needs the nightly toolchain; installs cargo-fuzz when missing.
#   scripts/fuzz.sh                  every target, FUZZ_SECONDS each (default 20)
#   scripts/fuzz.sh head body        only these targets
# Knobs:
#   FUZZ_SECONDS=600                 time per target
#   FUZZ_SANITIZER=address           libFuzzer sanitizer (default none: src/http/ forbids
#                                    unsafe code, and ASan would halve the executions)
#   FUZZ_ARGS="-max_len=4096"        more libFuzzer flags
# Seeds come from tests/corpus/ and fuzz/seed.py into fuzz/corpus/<target>/ (git-ignored,
# grown by each run). A crash fails the script loudly: its input is in
# fuzz/artifacts/<target>/, and `cargo +nightly fuzz run <target> <file>` replays it. Turn it
# into a regression case (tests/corpus/ or a unit test beside the parser) before fixing.
# The last line per target is a summary: executions, seconds, corpus files.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "error: scripts/fuzz.sh needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi
# The spindle crate links CPython through pyo3-ffi; its build script needs an interpreter
# (the fuzz binaries use no Python symbol, so libpython is not linked into them).
if [ -z "${PYO3_PYTHON:-}" ]; then
    PYO3_PYTHON=$(scripts/find-python.sh)
    export PYO3_PYTHON
fi

seconds=${FUZZ_SECONDS:-20}
sanitizer=${FUZZ_SANITIZER:-none}
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=(head body response_head proxy forwarded gateway)
fi
read -r -a extra <<<"${FUZZ_ARGS:-}"

python3 fuzz/seed.py >/dev/null
cd fuzz
cargo +nightly fuzz build --sanitizer "$sanitizer"

failed=()
for target in "${targets[@]}"; do
    log=$(mktemp)
    echo "== fuzz $target for ${seconds}s"
    start=$(date +%s)
    if cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 "${extra[@]}" >"$log" 2>&1; then
        status=ok
    else
        status=CRASH
        failed+=("$target")
        grep -E -A8 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | head -40 >&2
        grep -E 'Test unit written to' "$log" >&2 || true
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    files=$(find "corpus/$target" -type f | wc -l)
    echo "$target: $status, $execs executions in $(($(date +%s) - start)) s, corpus $files files"
    rm -f "$log"
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "error: fuzzing found crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz clean"
