#!/usr/bin/env bash
# Runs every test Spindle has. Installs what it needs itself; fails loudly.
#   1. cargo test: unit tests, the HTTP corpus and the architecture checks (test binaries
#      embed the CPython scripts/find-python.sh picks);
#      then the hand-off's loom models (tests/loom_handoff.rs, built with --cfg loom);
#   2. for each CPython found (the newest 3.13, 3.12 and 3.11: scripts/find-python.sh --all):
#      build its wheel, install it into a fresh venv with tests/requirements.txt, and run
#      the integration suite (tests/integration: real processes, real clients) against
#      that venv's own `spindle` command, once per I/O driver and interpreter mode: every
#      combination on the newest Python, epoll with sub and main on the others (main only
#      on 3.11, which has no own-GIL sub-interpreters, and with io_uring too); and on the
#      newest Python the conformance files again with --inline (SPINDLE_INLINE=1), in
#      each interpreter mode;
#   3. the distribution's own python3 (Debian's /usr/bin/python3), when it is another
#      interpreter than those: a fresh venv, the wheel for its version, and the package,
#      command-line, Flask and socket tests (its Python is readable by `nobody`, so the
#      --user test runs there).
# Knobs:
#   SPINDLE_TEST_PYTHONS="python3.13 python3.11"   choose the interpreters (no system step)
#   SPINDLE_TEST_DRIVERS="io_uring epoll"          choose the drivers (every Python)
#   SPINDLE_TEST_MODES="sub main"                   choose the interpreter modes (3.12+)
#   PYTEST_ARGS="-k chunked"                       pass through to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${SPINDLE_TEST_PYTHONS:-}" ]; then
    read -r -a pythons <<<"$SPINDLE_TEST_PYTHONS"
    system_python=
else
    mapfile -t pythons < <(scripts/find-python.sh --all)
    [ ${#pythons[@]} -gt 0 ] || { echo "error: no CPython >= 3.11 found" >&2; exit 1; }
    system_python=/usr/bin/python3
fi

# The socket-activation test runs Spindle under systemd-socket-activate (Debian's systemd
# package); install it when missing and this user can.
if ! command -v systemd-socket-activate >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd
    else
        echo "error: systemd-socket-activate is missing (apt-get install systemd)" >&2
        exit 1
    fi
fi

# tests/integration/test_nginx.py starts its own nginx processes (Debian's nginx package)
# in front of Spindle; install it when missing and this user can. Its package starts nginx
# as a system service where it can: stop that one, the tests never use it.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx
        if [ -s /run/nginx.pid ]; then
            invoke-rc.d nginx stop >/dev/null 2>&1 || kill "$(cat /run/nginx.pid)" || true
        fi
    else
        echo "error: nginx is missing (apt-get install nginx)" >&2
        exit 1
    fi
fi

failed=()
step() { echo; echo "=== $*"; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT

py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }

# fresh_venv PYTHON DIR WHEEL: DIR becomes a new venv of PYTHON with the wheel and the
# test requirements, nothing else.
fresh_venv() {
    rm -rf "$2"
    "$1" -m venv "$2"
    "$2/bin/python" -m pip install -q --disable-pip-version-check "$3" -r tests/requirements.txt
}

# suite PYTHON_VENV DRIVER MODE [PYTEST FILES...]; with INLINE=1 in its environment, every
# server runs --inline (SPINDLE_INLINE).
suite() {
    local venv=$1 driver=$2 mode=$3 inline=${INLINE:-0}
    shift 3
    local ver label
    ver=$(py_version "$venv/bin/python")
    label="$driver, --interpreters $mode"
    [ "$inline" = 1 ] && label="$label, --inline"
    step "integration suite: Python $ver ($(readlink -f "$venv/bin/python")), $label"
    # shellcheck disable=SC2086
    if ! env -u VIRTUAL_ENV SPINDLE_DRIVER="$driver" SPINDLE_INTERPRETERS="$mode" SPINDLE_INLINE="$inline" \
        "$venv/bin/python" -m pytest -q -p no:cacheprovider "${@:-tests/integration}" ${PYTEST_ARGS:-} 2>&1 | tee -a "$log"; then
        failed+=("integration (Python $ver, $label)")
    fi
}

# What --inline changes is who calls the application: the conformance files (WSGI, HTTP/1.1,
# proxies, slow readers, frameworks) run again with the I/O threads calling it
# (tests marked needs_pool skip there).
inline_files=(tests/integration/test_wsgi_environ.py tests/integration/test_wsgi_input.py
    tests/integration/test_wsgi_response.py tests/integration/test_wsgi_shared_body.py
    tests/integration/test_http_connection.py tests/integration/test_http_limits.py
    tests/integration/test_http_pipelining.py tests/integration/test_http_strictness.py
    tests/integration/test_slow_readers.py tests/integration/test_flask.py
    tests/integration/test_regressions.py tests/integration/test_proxy.py
    tests/integration/test_sockets.py tests/integration/test_nginx.py tests/integration/test_inline.py)

step "cargo test"
cargo_py=$(scripts/find-python.sh)
PYO3_PYTHON="$cargo_py" CARGO_TARGET_DIR="target/py$(py_version "$cargo_py")" \
    cargo test --quiet 2>&1 | tee -a "$log" || failed+=("cargo test")

# The hand-off under the model checker (tests/loom_handoff.rs, ARCHITECTURE.md §4): every
# interleaving of the mailbox, the exchange and the release queue, up to 3 preemptions per
# run (about 10-20 s for all the models; 137 s in all with a first build of its own target
# dir, since --cfg loom rebuilds every crate).
step "loom: the hand-off under the model checker"
PYO3_PYTHON="$cargo_py" CARGO_TARGET_DIR="target/loom" RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 \
    cargo test --release --quiet --test loom_handoff 2>&1 | tee -a "$log" || failed+=("loom")

declare -A wheels
first=1
for py in "${pythons[@]}"; do
    py=$(command -v "$py")
    ver=$(py_version "$py")
    step "wheel and venv (Python $ver, $py)"
    wheel=$(scripts/wheel.sh "$py")
    wheels[$ver]=$wheel
    venv="build/test-venv-$ver"
    fresh_venv "$py" "$venv" "$wheel"
    if [ -n "${SPINDLE_TEST_DRIVERS:-}" ]; then
        read -r -a drivers <<<"$SPINDLE_TEST_DRIVERS"
    elif [ "$first" = 1 ] || [ "$ver" = 3.11 ]; then
        drivers=(io_uring epoll)
    else
        drivers=(epoll)
    fi
    if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
        read -r -a modes <<<"${SPINDLE_TEST_MODES:-sub main}"
    else
        modes=(main)
    fi
    for driver in "${drivers[@]}"; do
        for mode in "${modes[@]}"; do
            suite "$venv" "$driver" "$mode"
        done
    done
    if [ "$first" = 1 ]; then
        for mode in "${modes[@]}"; do
            INLINE=1 suite "$venv" "${drivers[0]}" "$mode" "${inline_files[@]}"
        done
    fi
    first=0
done

if [ -n "$system_python" ] && [ -x "$system_python" ] && "$system_python" -m venv --help >/dev/null 2>&1; then
    real=$(readlink -f "$system_python")
    tested=0
    for py in "${pythons[@]}"; do
        [ "$(readlink -f "$(command -v "$py")")" = "$real" ] && tested=1
    done
    ver=$(py_version "$system_python")
    if [ "$tested" = 0 ] && [ -n "${wheels[$ver]:-}" ]; then
        step "the distribution's python3 ($system_python, $ver)"
        venv="build/test-venv-system-$ver"
        fresh_venv "$system_python" "$venv" "${wheels[$ver]}"
        suite "$venv" epoll main tests/integration/test_package.py tests/integration/test_cli.py \
            tests/integration/test_flask.py tests/integration/test_sockets.py
    fi
fi

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
echo "Python: ${pythons[*]}${system_python:+ (and $system_python)}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    echo "${n_passed} passed, $((n_failed > 0 ? n_failed : 1)) failed"
    exit 1
fi
echo "${n_passed} passed, ${n_failed} failed"
