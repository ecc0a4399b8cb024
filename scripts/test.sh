#!/usr/bin/env bash
# Runs every test Spindle has:
#   1. unit tests and the HTTP corpus (cargo test), against the newest Python found;
#   2. the integration suite (tests/integration, real binary, real clients) for each
#      I/O driver (io_uring, epoll) and each Python: the newest >= 3.12 found and 3.11.
# Installs what it needs itself (one venv per Python under build/). Fails loudly.
#   SPINDLE_TEST_PYTHONS="python3.13 python3.11"   choose the interpreters
#   SPINDLE_TEST_DRIVERS="io_uring epoll"          choose the drivers
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

first=1
for py in "${pythons[@]}"; do
    py=$(command -v "$py")
    ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    export PYO3_PYTHON="$py" CARGO_TARGET_DIR="target/py$ver"
    if [ "$first" = 1 ]; then
        step "cargo test (Python $ver)"
        cargo test --quiet || failed+=("cargo test (Python $ver)")
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
    for driver in "${drivers[@]}"; do
        step "integration suite: Python $ver, $driver"
        # shellcheck disable=SC2086
        if ! SPINDLE_BIN="$bin" SPINDLE_DRIVER="$driver" "$venv/bin/python" -m pytest tests/integration -q -p no:cacheprovider ${PYTEST_ARGS:-}; then
            failed+=("integration (Python $ver, $driver)")
        fi
    done
done

echo
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all test runs passed (Python: ${pythons[*]}; drivers: ${drivers[*]})"
