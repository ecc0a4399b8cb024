#!/usr/bin/env bash
# Prints the CPython that Spindle should embed: $SPINDLE_PYTHON when set, else the newest
# CPython >= 3.12 with a shared libpython found in the usual places, else python3 (>= 3.11).
# Exits 1 with one clear line when nothing usable is found.
set -euo pipefail

usable() { # $1: interpreter; prints "major.minor" when it can be embedded
    "$1" - <<'PY' 2>/dev/null
import sys, sysconfig
ok = sys.implementation.name == "cpython" and sys.version_info >= (3, 11)
ok = ok and not sysconfig.get_config_var("Py_GIL_DISABLED")
ok = ok and (sysconfig.get_config_var("Py_ENABLE_SHARED") or sysconfig.get_config_var("LDLIBRARY"))
if ok:
    print("%d.%d" % sys.version_info[:2])
PY
}

if [ -n "${SPINDLE_PYTHON:-}" ]; then
    py=$(command -v "$SPINDLE_PYTHON" || true)
    if [ -z "$py" ] || [ -z "$(usable "$py")" ]; then
        echo "error: SPINDLE_PYTHON=$SPINDLE_PYTHON is not a CPython >= 3.11 with libpython" >&2
        exit 1
    fi
    echo "$py"
    exit 0
fi

candidates=()
for v in 3.14 3.13 3.12; do
    for dir in $(echo "${PATH}" | tr ':' ' ') /usr/local/bin /usr/bin /opt/python/bin; do
        [ -x "$dir/python$v" ] && candidates+=("$dir/python$v")
    done
    for dir in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".* /opt/python"$v"*; do
        [ -x "$dir/bin/python$v" ] && candidates+=("$dir/bin/python$v")
    done
done
for py in "${candidates[@]}"; do
    if [ -n "$(usable "$py")" ]; then
        echo "$py"
        exit 0
    fi
done
if py=$(command -v python3) && [ -n "$(usable "$py")" ]; then
    echo "$py"
    exit 0
fi
echo "error: no CPython >= 3.11 with a shared libpython found; set SPINDLE_PYTHON=/path/to/python3.x" >&2
exit 1
