#!/usr/bin/env bash
# perf/compare.sh: Spindle against gunicorn (gthread) on the hello app, keep-alive.
#
# Both servers serve perf/apps/hello.py one after the other in the same run,
# pinned to core 0; wrk is pinned to core 1. For each server: a warm-up, then
# one measured wrk run, and the server's CPU time (all threads, all processes)
# read from /proc around that run. Prints a summary and archives it, with the
# exact commands, versions, responses and raw wrk output, in
# perf/runs/<date>-<host>/compare-hello.md. See perf/README.md.
#
# Knobs (environment):
#   DURATION       measured wrk run, wrk syntax: 10s, 1m (default 10s)
#   WARMUP         warm-up wrk run before it (default 2s)
#   CONNECTIONS    wrk connections, one wrk thread (default 64)
#   SPINDLE_BIN    a `spindle` command (default: this checkout's wheel, installed
#                  into the venv)
#   SPINDLE_ARGS   extra Spindle flags, split on spaces, e.g. "--driver epoll"
#   SPINDLE_PYTHON the Python of the venv both run in (default: SPINDLE_BIN's, else
#                  the newest found)
#   PERF_VENV      venv holding gunicorn (default build/perf-venv-<X.Y>, shared
#                  with lab.sh)
#   RUN_DIR        where the report goes (default perf/runs/<date>-<host>)
set -euo pipefail

# shellcheck source=perf/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
SPINDLE_ARGS=${SPINDLE_ARGS:-}
RUN_DIR=${RUN_DIR:-$ROOT/perf/runs/$(date +%F)-$(hostname)}
APP_DIR=$ROOT/perf/apps

# ---------------------------------------------------------------- arguments

DURATION_S=$(duration_secs "$DURATION")
WARMUP_S=$(duration_secs "$WARMUP")
((DURATION_S > 0)) || die "DURATION must be at least 1s"
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer, got '$CONNECTIONS'"
read -r -a SPINDLE_EXTRA <<<"$SPINDLE_ARGS"

# ---------------------------------------------------------------- tools

need_cmd wrk
need_cmd curl
need_cmd taskset util-linux
need_cmd timeout coreutils
need_cores

# ---------------------------------------------------------------- spindle, python, gunicorn

pick_python
VENV=${PERF_VENV:-$ROOT/build/perf-venv-$PY_MINOR}
ensure_venv "$VENV" gunicorn
install_spindle "$VENV"
((${#VENV_MISSING[@]} == 0)) || die "pip install gunicorn failed: $(cat "$WORK/pip-gunicorn.log")"
GUNICORN_VERSION=$("$VENV/bin/gunicorn" --version 2>&1 | head -n 1 || true)

# ---------------------------------------------------------------- one server

# The arguments as one line a shell would read back as the same words.
shell_words() {
    local line
    printf -v line '%q ' "$@"
    echo "${line% }"
}

# wrk's summary lines to numbers.
wrk_requests() { awk '/ requests in / { print $1 }' "$1"; }
wrk_rps() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
wrk_errors() {
    awk '/Socket errors:/ { gsub(",", ""); n += $4 + $6 + $8 + $10 }
         /Non-2xx or 3xx responses:/ { n += $NF }
         END { print n + 0 }' "$1"
}

# bench NAME COMMAND...: the command must contain 127.0.0.1:PORT, where PORT
# is replaced by a free port. Results land in $WORK/NAME.*.
bench() {
    local name=$1
    shift
    local port url requests
    port=$(free_port)
    url=http://127.0.0.1:$port/
    local -a cmd=("${@//127.0.0.1:PORT/127.0.0.1:$port}")
    local wrk_timeout=$((DURATION_S + 30)) warm_timeout=$((WARMUP_S + 30))
    local -a wrk_cmd=(taskset -c "$CLIENT_CORE" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$url")
    shell_words "${cmd[@]}" >"$WORK/$name.cmd"
    shell_words "${wrk_cmd[@]}" >"$WORK/$name.wrkcmd"

    log "$name: starting on port $port"
    start_server "$WORK/$name.log" "$ROOT" "${cmd[@]}"
    if ! wait_ready "$url" "$WORK/$name.log"; then
        tail -n 30 "$WORK/$name.log" >&2
        die "$name ${READY_ERROR%%; log:*} (its log is above)"
    fi

    curl -sS -i --max-time 5 "$url" >"$WORK/$name.response" || die "$name: could not fetch $url"
    [[ $(curl -sS --max-time 5 "$url") == "Hello, World!" ]] ||
        die "$name does not answer 'Hello, World!' on $url; got: $(head -c 200 "$WORK/$name.response")"

    log "$name: warm-up ${WARMUP}"
    timeout -k 5 "$warm_timeout" taskset -c "$CLIENT_CORE" wrk -t1 -c"$CONNECTIONS" -d"$WARMUP" "$url" \
        >"$WORK/$name.warmup" 2>&1 || die "$name: warm-up wrk failed: $(cat "$WORK/$name.warmup")"
    alive "$SERVER_PID" || die "$name died during the warm-up"

    log "$name: measuring ${DURATION}, ${CONNECTIONS} connections"
    measure "$WORK/$name.wrk" "$wrk_timeout" "${wrk_cmd[@]}" ||
        die "$name: wrk failed or overran ${wrk_timeout}s: $(cat "$WORK/$name.wrk")"
    alive "$SERVER_PID" || die "$name died during the measured run"

    stop_server

    requests=$(wrk_requests "$WORK/$name.wrk")
    [[ $requests =~ ^[0-9]+$ && $requests -gt 0 ]] || die "$name: no requests completed; wrk said: $(cat "$WORK/$name.wrk")"
    # One line: name rps requests errors cpu_us_per_req server_busy% wrk_busy%
    # other0% other1% (see measured_busy in lib.sh).
    printf '%s %s %d %d %s %s\n' "$name" "$(wrk_rps "$WORK/$name.wrk")" "$requests" "$(wrk_errors "$WORK/$name.wrk")" \
        "$(awk -v t="$M_TICKS" -v hz="$CLK_TCK" -v r="$requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / r }')" \
        "$(measured_busy)" >"$WORK/$name.result"
}

# ---------------------------------------------------------------- run

bench spindle taskset -c "$SERVER_CORE" "$SPINDLE_BIN" --bind 127.0.0.1:PORT --single-process --io-threads 1 --py-threads 1 \
    --pythonpath "$APP_DIR" "${SPINDLE_EXTRA[@]}" hello:app
bench gunicorn taskset -c "$SERVER_CORE" "$VENV/bin/gunicorn" -k gthread --threads 4 -w 1 -b 127.0.0.1:PORT \
    --chdir "$APP_DIR" hello:app

# ---------------------------------------------------------------- report

read -r _ S_RPS S_REQ S_ERR S_US S_BUSY S_WRK S_OTHER0 S_OTHER1 <"$WORK/spindle.result"
read -r _ G_RPS G_REQ G_ERR G_US G_BUSY G_WRK G_OTHER0 G_OTHER1 <"$WORK/gunicorn.result"
RATIO=$(awk -v s="$S_RPS" -v g="$G_RPS" 'BEGIN { printf "%.2f", s / g }')
CPU_RATIO=$(awk -v s="$S_US" -v g="$G_US" 'BEGIN { printf "%.2f", s / g }')

summary() {
    echo "| server | req/s | µs CPU/request | ratio | requests | errors | server core busy | wrk core busy | other load core 0 / 1 |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    printf '| spindle | %.0f | %s | %s | %s | %s | %s%% | %s%% | %s%% / %s%% |\n' \
        "$S_RPS" "$S_US" "$RATIO" "$S_REQ" "$S_ERR" "$S_BUSY" "$S_WRK" "$S_OTHER0" "$S_OTHER1"
    printf '| gunicorn gthread | %.0f | %s | 1.00 | %s | %s | %s%% | %s%% | %s%% / %s%% |\n' \
        "$G_RPS" "$G_US" "$G_REQ" "$G_ERR" "$G_BUSY" "$G_WRK" "$G_OTHER0" "$G_OTHER1"
    echo
    echo "spindle/gunicorn: ${RATIO}x the requests per second, ${CPU_RATIO}x the server CPU per request."
}

notes() {
    local name err busy other0 other1
    for name in spindle gunicorn; do
        read -r _ _ _ err _ _ busy other0 other1 <"$WORK/$name.result"
        ((err == 0)) || echo "- WARNING: $name had $err socket errors or non-2xx responses: its req/s is not comparable."
        ((busy < 90)) || echo "- WARNING: wrk's core was ${busy}% busy during the $name run: the client may be the limit there, not the server."
        ((other0 < 10 && other1 < 10)) ||
            echo "- WARNING: something else kept cores 0/1 ${other0}%/${other1}% busy during the $name run: the machine was not quiet; rerun."
    done
}

BINARY_CHANGED=$(spindle_changed_note)
[[ -z $BINARY_CHANGED ]] || warn "${BINARY_CHANGED#- WARNING: }"
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "none")
DIRTY=$(git -C "$ROOT" --no-optional-locks status --porcelain 2>/dev/null | wc -l || echo "?")

mkdir -p "$RUN_DIR"
OUT=$RUN_DIR/compare-hello.md
{
    echo "# Spindle vs gunicorn (gthread): hello, keep-alive, $CONNECTIONS connections"
    echo
    echo "- date: $(date -u '+%F %T UTC')"
    echo "- host: $(hostname), $(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r)"
    echo "- load average before: $LOADAVG_BEFORE"
    echo "- commit: $COMMIT ($DIRTY changed or untracked paths)"
    echo "- spindle: \`$SPINDLE_BIN\` (${SPINDLE_VERSION:-no --version}; $SPINDLE_FINGERPRINT)"
    echo "- gunicorn: $GUNICORN_VERSION on Python $PY_VERSION (\`$PY\`, from $PY_SOURCE)"
    echo "- wrk: $(wrk -v 2>&1 | head -n 1 || true)"
    echo "- method: server on core $SERVER_CORE, wrk on core $CLIENT_CORE; warm-up $WARMUP, then $DURATION measured; server CPU = utime+stime of its process tree from /proc, ${CLK_TCK} ticks/s, over the measured run"
    echo
    echo "## Summary"
    echo
    summary
    notes
    [[ -z $BINARY_CHANGED ]] || echo "$BINARY_CHANGED"
    for name in spindle gunicorn; do
        echo
        echo "## $name"
        echo
        echo '```'
        cat "$WORK/$name.cmd" "$WORK/$name.wrkcmd"
        echo '```'
        echo
        echo "Response:"
        echo
        echo '```'
        tr -d '\r' <"$WORK/$name.response"
        echo
        echo '```'
        echo
        echo "Server log (first 20 lines):"
        echo
        echo '```'
        head -n 20 "$WORK/$name.log"
        echo '```'
        echo
        echo "wrk:"
        echo
        echo '```'
        cat "$WORK/$name.wrk"
        echo '```'
    done
} >"$OUT"

echo
summary
notes
[[ -z $BINARY_CHANGED ]] || echo "$BINARY_CHANGED"
echo
echo "report: ${OUT#"$ROOT"/}"
