#!/usr/bin/env bash
# Builds Spindle if needed and serves MODULE:APP (the bundled demo app when none is named).
#   scripts/serve.sh                       # demo page on http://127.0.0.1:8000
#   scripts/serve.sh --bind 0.0.0.0:8080 myproject.wsgi:application
set -euo pipefail
bin=$("$(dirname "$0")/build.sh")
exec "$bin" "$@"
