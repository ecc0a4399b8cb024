#!/usr/bin/env bash
# Runs every test Spindle has:
#   1. unit tests and the HTTP corpus (cargo test), against the newest Python found;
#   2. the integration suite (tests/integration, real binary, real clients) for each
#      I/O driver (io_uring, epoll), each interpreter mode (own-GIL sub-interpreters and
#      the main interpreter; 3.11 has only main) and each Python: the newest >= 3.12
#      found, and 3.11.
# Installs what it needs itself (one venv per Python under build/). Fails loudly.
#   SPINDLE_TEST_PYTHONS="python3.13 python3.11"   choose the interpreters
#   SPINDLE_TEST_DRIVERS="io_uring epoll"          choose the drivers
#   SPINDLE_TEST_MODES="sub main"                   choose the interpreter modes
#   PYTEST_ARGS="-k chunked"                       pass through to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

newest=$(scripts/find-python.sh)
if [ -n "${SPINDLE_TEST_PYTHONS:-}" ]; then
    read -r -a pythons <<<"$SPINDLE_TEST_PYTHONS"
else
    pythons=("$newest")
    # 3.11 must keep building and passing; take it from the usual places when present.
    for cand in python3.11 /usr/bin/python3.11 /usr/local/bin/python3.11 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.11.*/bin/python3.11; do
        if p=$(command -v "$cand" 2>/dev/null) && [ "$(SPINDLE_PYTHON=$p scripts/find-python.sh 2>/dev/null)" = "$p" ]; then
            [ "$p" != "$newest" ] && pythons+=("$p")
            break
        fi
    done
fi
read -r -a drivers <<<"${SPINDLE_TEST_DRIVERS:-io_uring epoll}"

failed=()
step() { echo; echo "=== $*"; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT

first=1
for py in "${pythons[@]}"; do
    py=$(command -v "$py")
    ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    export PYO3_PYTHON="$py" CARGO_TARGET_DIR="target/py$ver"
    if [ "$first" = 1 ]; then
        step "cargo test (Python $ver)"
        cargo test --quiet 2>&1 | tee -a "$log" || failed+=("cargo test (Python $ver)")
        first=0
    fi
    step "build (Python $ver)"
    SPINDLE_PYTHON="$py" scripts/build.sh >/dev/null
    bin="$CARGO_TARGET_DIR/release/spindle"

    venv="build/venv-$ver"
    if [ ! -x "$venv/bin/python" ] || ! cmp -s tests/requirements.txt "$venv/.requirements"; then
        step "venv $venv"
        rm -rf "$venv"
        "$py" -m venv "$venv"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -r tests/requirements.txt
        cp tests/requirements.txt "$venv/.requirements"
    fi
    if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
        read -r -a modes <<<"${SPINDLE_TEST_MODES:-sub main}"
    else
        modes=(main)
    fi
    for driver in "${drivers[@]}"; do
        for mode in "${modes[@]}"; do
            step "integration suite: Python $ver, $driver, --interpreters $mode"
            # shellcheck disable=SC2086
            if ! SPINDLE_BIN="$bin" SPINDLE_DRIVER="$driver" SPINDLE_INTERPRETERS="$mode" \
                "$venv/bin/python" -m pytest tests/integration -q -p no:cacheprovider ${PYTEST_ARGS:-} 2>&1 | tee -a "$log"; then
                failed+=("integration (Python $ver, $driver, $mode)")
            fi
        done
    done
done

# One closing line over every run: cargo's "test result: ... N passed; M failed" lines and
# pytest's "N passed, M failed" summaries, added up.
read -r n_passed n_failed < <(python3 - "$log" <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
passed = failed = 0
for m in re.finditer(r"test result: \w+\. (\d+) passed; (\d+) failed", text):
    passed += int(m.group(1)); failed += int(m.group(2))
for line in text.splitlines():
    if re.search(r"\d+ (passed|failed|error)", line) and " in " in line and "test result" not in line:
        passed += sum(int(x) for x in re.findall(r"(\d+) passed", line))
        failed += sum(int(x) for x in re.findall(r"(\d+) (?:failed|errors?)", line))
print(passed, failed)
PY
)
echo
echo "Python: ${pythons[*]}; drivers: ${drivers[*]}; interpreter modes: sub (3.12+) and main"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    echo "${n_passed} passed, $((n_failed > 0 ? n_failed : 1)) failed"
    exit 1
fi
echo "${n_passed} passed, ${n_failed} failed"
