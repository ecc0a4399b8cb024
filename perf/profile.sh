#!/bin/bash
# Where the server's CPU goes on hello, by category, beside bjoern and nginx `return 200`:
# `perf record -g` of the server process (every thread) under wrk, at 1 and 64 keep-alive
# connections, server on core 0 and wrk on core 1 as in the lab; then
# perf/profile_categories.py sums each profile's samples into kernel scheduling, TCP/IP,
# epoll/io_uring, syscall entry, CPython, Spindle and monoio, libc, the peer's own code.
# Shares, not times: multiply by a lab run's CPU µs per request for the µs.
#
# Usage: perf/profile.sh            (needs perf, wrk, nginx, curl, and build/perf-venv-X.Y
#                                   with bjoern; SPINDLE_BIN: the spindle to profile)
# Writes RUN_DIR/profile.md (default perf/runs/<date>-<host>-profile/) and the perf data.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${RUN_DIR:-$ROOT/perf/runs/$(date +%F)-$(hostname)-profile}
SPINDLE=${SPINDLE_BIN:?set SPINDLE_BIN to the spindle command to profile}
PY=$(ls -d "$ROOT"/build/perf-venv-3.*/bin/python | tail -1)
mkdir -p "$OUT/data" "$OUT/nginx/tmp"
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# profile NAME CONNS CMD...: PORT in CMD is replaced by a free port.
profile() {
    local name=$1 c=$2 port pid i
    shift 2
    port=$(free_port)
    local cmd=("${@//PORT/$port}")
    [[ $name == nginx ]] && nginx_conf "$port"
    (cd "$ROOT/perf/apps" && exec taskset -c 0 "${cmd[@]}") >"$OUT/data/$name.log" 2>&1 &
    pid=$!
    for i in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
    taskset -c 1 wrk -t1 "-c$c" -d7s "http://127.0.0.1:$port/" >"$OUT/data/$name-c$c.wrk" &
    local load=$!
    sleep 1.5
    perf record -F 2999 -g -p "$pid" -o "$OUT/data/$name-c$c.data" -- sleep 4 >/dev/null 2>&1
    wait "$load" || echo "wrk failed for $name at $c connections" >&2
    kill -INT "$pid"
    wait "$pid" || true
}

nginx_conf() {
    cat >"$OUT/nginx/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
events { worker_connections 1024; }
http { access_log off; tcp_nodelay on; keepalive_requests 10000000;
  client_body_temp_path $OUT/nginx/tmp; proxy_temp_path $OUT/nginx/tmp; fastcgi_temp_path $OUT/nginx/tmp;
  uwsgi_temp_path $OUT/nginx/tmp; scgi_temp_path $OUT/nginx/tmp;
  server { listen 127.0.0.1:$1; default_type text/plain; location = / { return 200 "Hello, World!"; } } }
CONF
}

for c in 1 64; do
    profile spindle-epoll "$c" "$SPINDLE" --bind 127.0.0.1:PORT --single-process --io-threads 1 --py-threads 1 --driver epoll --pythonpath . lab:app
    profile spindle-uring "$c" "$SPINDLE" --bind 127.0.0.1:PORT --single-process --io-threads 1 --py-threads 1 --driver io-uring --pythonpath . lab:app
    profile bjoern "$c" "$PY" bjoern_run.py 127.0.0.1 PORT
    profile nginx "$c" nginx -p "$OUT/nginx/" -c "$OUT/nginx/nginx.conf" -e "$OUT/nginx/error.log"
done
python3 "$ROOT/perf/profile_categories.py" "$OUT" | tee "$OUT/profile.md"
