#!/usr/bin/env bash
# The soak and abuse tests (tests/integration/test_soak.py) at a larger scale than the suite
# runs them: SPINDLE_SOAK_SCALE multiplies their crowds and durations (default here 10: 4,000
# slowloris connections, up to 30,000 idle ones (the descriptor limit allowing), a 30 s
# connection storm, 30,000 mutated requests); then the slow-reader and overload files at
# their own size (perf/slow_readers.py and perf/overload.py are their long versions). The output goes to
# stdout; record a run under perf/runs/ with the command that made it.
#   scripts/soak.sh [scale]        (needs the venv scripts/test.sh makes, or SPINDLE_VENV)
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-10}
venv=${SPINDLE_VENV:-build/test-venv-3.13}
[ -x "$venv/bin/spindle" ] || { echo "error: no spindle in $venv (run scripts/test.sh first, or set SPINDLE_VENV)" >&2; exit 1; }
files=(tests/integration/test_soak.py)
for f in tests/integration/test_slow_readers.py tests/integration/test_overload.py; do
    [ -f "$f" ] && files+=("$f")
done
ulimit -n "$(ulimit -Hn)"
echo "soak at scale $scale: ${files[*]} ($(date -u +%FT%TZ), $(git rev-parse --short HEAD))"
env -u VIRTUAL_ENV SPINDLE_SOAK_SCALE="$scale" "$venv/bin/python" -m pytest -v -s -p no:cacheprovider "${files[@]}"
