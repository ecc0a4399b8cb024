#!/usr/bin/env bash
# Serves an app with Spindle installed from this checkout, the way a user's venv runs it:
# builds the wheel (scripts/wheel.sh), installs it into a venv, runs that venv's `spindle`.
#   scripts/serve.sh                                   # the demo page on http://127.0.0.1:8000
#   scripts/serve.sh myproject.wsgi:application --bind 0.0.0.0:8000
#   SPINDLE_VENV=~/myproject/.venv scripts/serve.sh myproject.wsgi:application
# The venv is $SPINDLE_VENV (your app's, with its dependencies) when set, else
# build/serve-venv-3.X made with the newest CPython found (scripts/find-python.sh --any).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

if [ -n "${SPINDLE_VENV:-}" ]; then
    venv=$SPINDLE_VENV
    [ -x "$venv/bin/python" ] || { echo "error: SPINDLE_VENV=$venv has no bin/python" >&2; exit 1; }
    py=$venv/bin/python
else
    py=$("$root/scripts/find-python.sh" --any)
    venv=$root/build/serve-venv-$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv" >&2
fi
wheel=$("$root/scripts/wheel.sh" "$(readlink -f "$venv/bin/python")")
"$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel" >&2
exec "$venv/bin/spindle" "$@"
