#!/usr/bin/env bash
# Finds CPython interpreters (>= 3.11, not free-threaded) in the usual places: PATH,
# /usr/local/bin, /usr/bin, /opt/python*, uv's and pyenv's version folders.
#   scripts/find-python.sh          the newest one with a shared libpython: what `cargo test`
#                                   and `cargo bench` link (their binaries embed CPython)
#   scripts/find-python.sh --any    the newest one: what scripts/serve.sh installs Spindle into
#   scripts/find-python.sh --all    the newest of each minor version, newest first, one per line
# $SPINDLE_PYTHON, when set, is the answer to the first two. Exits 1 with one clear line when
# nothing usable is found.
set -euo pipefail
mode=${1:-shared}
case "$mode" in shared | --any | --all) ;; *) echo "usage: $0 [--any|--all]" >&2; exit 2 ;; esac

# Prints "3.X shared|static /its/sys.executable" for a usable CPython, nothing otherwise
# (a pyenv shim or a symlink resolves to the real interpreter).
describe() {
    "$1" - <<'PY' 2>/dev/null
import sys, sysconfig
if sys.implementation.name == "cpython" and sys.version_info >= (3, 11) \
        and not sysconfig.get_config_var("Py_GIL_DISABLED"):
    shared = "shared" if sysconfig.get_config_var("Py_ENABLE_SHARED") else "static"
    print("%d.%d %s %s" % (sys.version_info[0], sys.version_info[1], shared, sys.executable))
PY
}

if [ -n "${SPINDLE_PYTHON:-}" ] && [ "$mode" != --all ]; then
    py=$(command -v "$SPINDLE_PYTHON" || true)
    if [ -z "$py" ] || [ -z "$(describe "$py")" ]; then
        echo "error: SPINDLE_PYTHON=$SPINDLE_PYTHON is not a CPython >= 3.11" >&2
        exit 1
    fi
    echo "$py"
    exit 0
fi

seen=" "
found=()
for v in 3.14 3.13 3.12 3.11; do
    for cand in $(echo "$PATH" | tr ':' '\n' | sed "s|\$|/python$v|") \
        /usr/local/bin/python$v /usr/bin/python$v /opt/python*/bin/python$v \
        "$HOME"/.local/share/uv/python/cpython-$v.*/bin/python$v \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/$v.*/bin/python$v; do
        [ -x "$cand" ] || continue
        desc=$(describe "$cand") || true
        [ -n "$desc" ] || continue
        set -- $desc
        real=$(readlink -f "$3")
        case "$seen" in *" $real "*) continue ;; esac
        seen="$seen$real "
        found+=("$3 $1 $2")
    done
done

pick() { # $1: "shared" to require a shared libpython
    for line in "${found[@]}"; do
        set -- $line "$1"
        [ "$4" = shared ] && [ "$3" != shared ] && continue
        echo "$1"
        return 0
    done
    return 1
}

case "$mode" in
--all)
    versions=" "
    for line in "${found[@]}"; do
        set -- $line
        case "$versions" in *" $2 "*) continue ;; esac
        versions="$versions$2 "
        echo "$1"
    done
    ;;
--any) pick any || { echo "error: no CPython >= 3.11 found; set SPINDLE_PYTHON=/path/to/python3.X" >&2; exit 1; } ;;
shared) pick shared || { echo "error: no CPython >= 3.11 with a shared libpython found (cargo test and bench embed it); set SPINDLE_PYTHON=/path/to/python3.X" >&2; exit 1; } ;;
esac
