#!/usr/bin/env bash
# perf/lab.sh: Spindle and its peers side by side, same apps, same run.
#
# Servers (SERVERS): Spindle on io_uring, on io_uring with --inline (the app on
# the I/O thread) and on epoll (one I/O thread, one Python thread), gunicorn sync and gthread, uWSGI, Granian, bjoern, waitress
# (each one process/worker), and nginx `return 200` / a static file, no Python,
# as the ceiling. Python servers all serve perf/apps/lab.py on one Python, from
# one venv at build/perf-venv-<X.Y>, Spindle installed there from its wheel.
#
# Scenarios (SCENARIOS): hello keep-alive at 1, 64 and 256 connections; hello
# with `Connection: close`; hello pipelined 16 deep; a 64 KiB response; a 4 KiB
# POST; the same POST chunked. See `scenario_def` below.
#
# For every scenario, for every server: start it pinned to core SERVER_CORE,
# poll until it answers, check it answers this scenario correctly (else "n/a"
# with the reason), warm up, then one measured wrk run pinned to CLIENT_CORE,
# with the server tree's CPU time (/proc) and peak RSS (VmHWM, reset before the
# run) around it; stop it. Every wait and every wrk run is bounded; all traffic
# goes to 127.0.0.1; only processes this script started are stopped, by PID.
#
# Output: perf/runs/<date>-<host>/lab.md (summary, commands, versions),
# lab.csv, lab-rps.png, lab-cpu.png, raw/ (wrk output, server logs, responses),
# and perf/runs/LATEST.md pointing at it. See perf/README.md.
#
# Knobs (environment):
#   SERVERS        subset and order of servers (default: all, see ALL_SERVERS)
#   SCENARIOS      subset and order of scenarios (default: all, see ALL_SCENARIOS)
#   DURATION       measured wrk run per server and scenario, wrk syntax (default 5s)
#   WARMUP         unmeasured wrk run before it (default 1s)
#   WRK_TIMEOUT    wrk's per-request timeout, counted as an error (default 2s)
#   NOISE_RETRY_PCT  rerun a server x scenario once when something else kept
#                  either core this busy (%) during it (default 15; 101: never)
#   SPINDLE_BIN    a `spindle` command to measure (default: this checkout's wheel,
#                  built and installed into the venv)
#   SPINDLE_ARGS   extra flags for both Spindle servers, split on spaces
#   SPINDLE_PYTHON the Python of the venv (default: SPINDLE_BIN's, else the newest found)
#   PERF_VENV      the venv (default build/perf-venv-<X.Y>)
#   RUN_DIR        where the report goes (default perf/runs/<date>-<host>)
set -euo pipefail

# shellcheck source=perf/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ALL_SERVERS="spindle-uring spindle-inline spindle-epoll gunicorn-sync gunicorn-gthread uwsgi granian bjoern waitress nginx"
# Not in the default run: what observing costs. spindle-epoll with an access log (gunicorn's
# format, to a file), with Prometheus metrics, with both; gunicorn gthread with its access log.
EXTRA_SERVERS="spindle-accesslog spindle-metrics spindle-observed gunicorn-gthread-accesslog"
ALL_SCENARIOS="hello-c1 hello-c64 hello-c256 close-c64 pipeline16-c64 64k-c64 post4k-c64 chunked4k-c64"
SERVERS=${SERVERS:-$ALL_SERVERS}
SCENARIOS=${SCENARIOS:-$ALL_SCENARIOS}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
WRK_TIMEOUT=${WRK_TIMEOUT:-2s}
NOISE_RETRY_PCT=${NOISE_RETRY_PCT:-15}
SPINDLE_ARGS=${SPINDLE_ARGS:-}
RUN_DIR=${RUN_DIR:-$ROOT/perf/runs/$(date +%F)-$(hostname)}
APP_DIR=$PERF_DIR/apps
LUA_DIR=$PERF_DIR/lua
RAW=$RUN_DIR/raw
CSV=$RUN_DIR/lab.csv
T_START=$EPOCHSECONDS

# ---------------------------------------------------------------- arguments

DURATION_S=$(duration_secs "$DURATION")
WARMUP_S=$(duration_secs "$WARMUP")
((DURATION_S > 0)) || die "DURATION must be at least 1s"
duration_secs "$WRK_TIMEOUT" >/dev/null
read -r -a SPINDLE_EXTRA <<<"$SPINDLE_ARGS"
read -r -a SERVER_LIST <<<"$SERVERS"
read -r -a SCENARIO_LIST <<<"$SCENARIOS"
for s in "${SERVER_LIST[@]}"; do
    [[ " $ALL_SERVERS $EXTRA_SERVERS " == *" $s "* ]] || die "unknown server '$s'; known: $ALL_SERVERS $EXTRA_SERVERS"
done
for s in "${SCENARIO_LIST[@]}"; do
    [[ " $ALL_SCENARIOS " == *" $s "* ]] || die "unknown scenario '$s'; known: $ALL_SCENARIOS"
done
((${#SERVER_LIST[@]} && ${#SCENARIO_LIST[@]})) || die "SERVERS and SCENARIOS must not be empty"
wants() { [[ " ${SERVER_LIST[*]} " == *" $1 "* ]]; }
wants_prefix() { [[ " ${SERVER_LIST[*]}" == *" $1"* ]]; }

# ---------------------------------------------------------------- tools

need_cmd wrk
need_cmd curl
need_cmd taskset util-linux
need_cmd timeout coreutils
need_cores
if wants nginx; then need_cmd nginx nginx-light nginx; fi
if wants bjoern; then need_pkg libev-dev; fi

pick_python
VENV=${PERF_VENV:-$ROOT/build/perf-venv-$PY_MINOR}
DISTS=(matplotlib)
if wants_prefix gunicorn; then DISTS+=(gunicorn); fi
if wants uwsgi; then DISTS+=(uwsgi); fi
if wants granian; then DISTS+=(granian); fi
if wants bjoern; then DISTS+=(bjoern); fi
if wants waitress; then DISTS+=(waitress); fi
ensure_venv "$VENV" "${DISTS[@]}"
install_spindle "$VENV"
missing() { [[ " ${VENV_MISSING[*]} " == *" $1 "* ]]; }

# ---------------------------------------------------------------- servers

# server_def NAME PORT: SV_CMD (the command, pinned), SV_DIR (its working
# directory), SV_STOP (the signal that stops it), SV_NA (why it cannot run at
# all, empty if it can).
server_def() {
    local name=$1 port=$2 pin=(taskset -c "$SERVER_CORE")
    SV_DIR=$APP_DIR SV_STOP=TERM SV_NA=
    case $name in
    spindle-uring | spindle-epoll | spindle-inline)
        local driver=io-uring inline=()
        [[ $name == spindle-epoll ]] && driver=epoll
        [[ $name == spindle-inline ]] && inline=(--inline)
        SV_CMD=("${pin[@]}" "$SPINDLE_BIN" --bind "127.0.0.1:$port" --single-process --io-threads 1 --py-threads 1
            --driver "$driver" "${inline[@]}" --pythonpath "$APP_DIR" "${SPINDLE_EXTRA[@]}" lab:app)
        ;;
    spindle-accesslog | spindle-metrics | spindle-observed)
        local observe=()
        [[ $name != spindle-metrics ]] && observe+=(--access-logfile "$WORK/access-$port.log")
        # (the report prints the command with PORT for the port)
        local metrics_port="${port}+1000"
        [[ $port =~ ^[0-9]+$ ]] && metrics_port=$((port + 1000))
        [[ $name != spindle-accesslog ]] && observe+=(--metrics-bind "127.0.0.1:$metrics_port")
        SV_CMD=("${pin[@]}" "$SPINDLE_BIN" --bind "127.0.0.1:$port" --single-process --io-threads 1 --py-threads 1
            --driver epoll --pythonpath "$APP_DIR" "${observe[@]}" "${SPINDLE_EXTRA[@]}" lab:app)
        ;;
    gunicorn-gthread-accesslog)
        SV_CMD=("${pin[@]}" "$VENV/bin/gunicorn" -k gthread -w 1 --threads 4 -b "127.0.0.1:$port"
            --access-logfile "$WORK/access-$port.log" lab:app)
        if missing gunicorn; then SV_NA="not installed: pip install gunicorn failed"; fi
        ;;
    gunicorn-sync)
        SV_CMD=("${pin[@]}" "$VENV/bin/gunicorn" -w 1 -b "127.0.0.1:$port" lab:app)
        if missing gunicorn; then SV_NA="not installed: pip install gunicorn failed"; fi
        ;;
    gunicorn-gthread)
        SV_CMD=("${pin[@]}" "$VENV/bin/gunicorn" -k gthread -w 1 --threads 4 -b "127.0.0.1:$port" lab:app)
        if missing gunicorn; then SV_NA="not installed: pip install gunicorn failed"; fi
        ;;
    uwsgi)
        # One process, no master, HTTP/1.1 keep-alive on its native http
        # socket (no router process in front), no request log, the same
        # accept backlog as the others.
        SV_CMD=("${pin[@]}" "$VENV/bin/uwsgi" --http11-socket "127.0.0.1:$port" --wsgi-file lab.py --callable app
            --processes 1 --single-interpreter --disable-logging --listen 1024 --buffer-size 32768)
        SV_STOP=INT # without a master, SIGTERM means "reload"; SIGINT means exit
        if missing uwsgi; then SV_NA="not installed: pip install uwsgi failed"; fi
        ;;
    granian)
        SV_CMD=("${pin[@]}" "$VENV/bin/granian" --interface wsgi --workers 1 --http 1 --no-ws
            --host 127.0.0.1 --port "$port" lab:app)
        if missing granian; then SV_NA="not installed: pip install granian failed"; fi
        ;;
    bjoern)
        SV_CMD=("${pin[@]}" "$VENV/bin/python" bjoern_run.py 127.0.0.1 "$port")
        if missing bjoern; then SV_NA="not installed: pip install bjoern failed (it needs libev-dev)"; fi
        ;;
    waitress)
        SV_CMD=("${pin[@]}" "$VENV/bin/waitress-serve" --threads=4 "--listen=127.0.0.1:$port" lab:app)
        if missing waitress; then SV_NA="not installed: pip install waitress failed"; fi
        ;;
    nginx)
        nginx_conf "$port"
        SV_CMD=("${pin[@]}" nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log")
        ;;
    esac
}

# nginx, one worker, no Python: `return 200` for hello, a static file for 64k.
nginx_conf() {
    local n=$WORK/nginx
    mkdir -p "$n/html" "$n/tmp"
    [[ -f $n/html/64k ]] || head -c 65536 /dev/zero | tr '\0' x >"$n/html/64k"
    cat >"$n/nginx.conf" <<EOF
# Generated by perf/lab.sh. One worker (the master only supervises), no logs
# per request, keep-alive without a request cap, as the Python servers have.
daemon off;
master_process on;
worker_processes 1;
user root;
pid $n/nginx.pid;
error_log $n/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 65;
    client_body_temp_path $n/tmp/body;
    proxy_temp_path $n/tmp/proxy;
    fastcgi_temp_path $n/tmp/fastcgi;
    uwsgi_temp_path $n/tmp/uwsgi;
    scgi_temp_path $n/tmp/scgi;
    server {
        listen 127.0.0.1:$1 backlog=1024;
        root $n/html;
        default_type text/plain;
        location = / { return 200 "Hello, World!"; }
        location = /64k { default_type application/octet-stream; }
    }
}
EOF
}

# Why a server cannot do a scenario, known before trying (empty: try it).
static_na() {
    case $1:$2 in
    nginx:post4k-c64 | nginx:chunked4k-c64) echo "no Python behind nginx here: nothing reads the body and answers its length" ;;
    esac
}

# A hint appended to a failed check, for failures understood.
check_hint() {
    case $1:$2 in
    uwsgi:chunked4k-c64) echo " (uWSGI does not de-chunk request bodies into wsgi.input; only its own uwsgi.chunked_read() API sees them)" ;;
    uwsgi:close*) echo " (its HTTP/1.1 socket ignores Connection: close, so wrk would keep one connection; RFC 9112 §9.6 says close)" ;;
    gunicorn-sync:pipeline*) echo " (the sync worker closes the connection after each response: no keep-alive, so no pipelining)" ;;
    bjoern:pipeline* | uwsgi:pipeline*) echo " (it answers the first request of a pipelined batch and never the rest)" ;;
    esac
}

# ---------------------------------------------------------------- scenarios

# scenario_def NAME: SC_CONN (connections), SC_PATH, SC_WRK (extra wrk
# arguments), SC_CHECK (what check_scenario verifies), SC_DESC.
scenario_def() {
    SC_WRK=() SC_PATH=/ SC_CHECK=hello
    case $1 in
    hello-c1) SC_CONN=1 SC_DESC="hello (13 bytes), keep-alive, 1 connection" ;;
    hello-c64) SC_CONN=64 SC_DESC="hello (13 bytes), keep-alive, 64 connections" ;;
    hello-c256) SC_CONN=256 SC_DESC="hello (13 bytes), keep-alive, 256 connections" ;;
    close-c64)
        SC_CONN=64 SC_WRK=(-H "Connection: close") SC_CHECK=close
        SC_DESC="hello with \`Connection: close\`: a new TCP connection per request, 64 at a time"
        ;;
    pipeline16-c64)
        SC_CONN=64 SC_WRK=(-s "$LUA_DIR/pipeline.lua" -- 16) SC_CHECK=pipeline
        SC_DESC="hello pipelined: 16 requests per write, 64 connections"
        ;;
    64k-c64) SC_CONN=64 SC_PATH=/64k SC_CHECK=64k SC_DESC="64 KiB response, keep-alive, 64 connections" ;;
    post4k-c64)
        SC_CONN=64 SC_PATH=/post SC_WRK=(-s "$LUA_DIR/post.lua") SC_CHECK=post
        SC_DESC="POST 4 KiB with Content-Length, read whole, answered with its length; 64 connections"
        ;;
    chunked4k-c64)
        SC_CONN=64 SC_PATH=/post SC_WRK=(-s "$LUA_DIR/chunked.lua") SC_CHECK=chunked
        SC_DESC="POST 4 KiB with Transfer-Encoding: chunked (4 chunks of 1 KiB), answered with its length; 64 connections"
        ;;
    esac
}

head -c 4096 /dev/zero | tr '\0' x >"$WORK/body4k"

# check_scenario KIND BASE_URL: verifies the server answers what the scenario
# measures. Returns 1 with CHECK_ERROR set when not.
check_scenario() {
    local kind=$1 base=$2 got want
    CHECK_ERROR=
    case $kind in
    hello) got=$(curl -sS --max-time 5 -w '\n%{http_code}' "$base/" 2>&1) want=$'Hello, World!\n200' ;;
    close) got=$(timeout -k 2 8 "$PY" "$PERF_DIR/lab_check.py" close "${base#http://}" 2>&1) want="closed" ;;
    64k) got=$(curl -sS --max-time 5 -o "$WORK/64k.out" -w '%{http_code} %{size_download}' "$base/64k" 2>&1) want="200 65536" ;;
    post)
        got=$(curl -sS --max-time 5 --data-binary @"$WORK/body4k" -H 'Content-Type: application/octet-stream' \
            -w '\n%{http_code}' "$base/post" 2>&1) want=$'4096\n200'
        ;;
    chunked)
        got=$(curl -sS --max-time 5 --data-binary @"$WORK/body4k" -H 'Content-Type: application/octet-stream' \
            -H 'Transfer-Encoding: chunked' -w '\n%{http_code}' "$base/post" 2>&1) want=$'4096\n200'
        ;;
    pipeline)
        got=$(timeout -k 2 8 "$PY" "$PERF_DIR/lab_check.py" pipeline "${base#http://}" 16 2>&1) want="16 responses"
        ;;
    esac
    [[ $got == "$want" ]] && return 0
    if [[ $kind == pipeline || $kind == close ]]; then
        CHECK_ERROR="$kind: $(printf '%s' "$got" | tr '\n' ' ' | head -c 200)"
    else
        CHECK_ERROR="expected '${want//$'\n'/ status }', got '$(printf '%s' "${got//$'\n'/ status }" | head -c 200)'"
    fi
    return 1
}

# ---------------------------------------------------------------- one run

# The ss sampler running beside wrk (a child of this shell), stopped by PID
# if the script exits mid-run.
SAMPLER_PID=
lib_cleanup_hook() {
    if [[ -n $SAMPLER_PID ]]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi
}

csv_quote() { local v=${1//\"/\"\"}; printf '"%s"' "${v//$'\n'/ }"; }

# record SCENARIO SERVER STATUS REASON [numbers...]: one CSV row.
record() {
    local scenario=$1 server=$2 status=$3 reason=$4
    shift 4
    local rest=
    (($#)) && rest=$(IFS=,; echo "$*")
    [[ -n $rest ]] || rest=",,,,,,,,,,,,,,,,,,,"
    echo "$scenario,$server,$status,$(csv_quote "$reason"),$rest,$ATTEMPT" >>"$CSV"
    case $status in
    ok) ;;
    *) log "$server / $scenario: $status: $reason" ;;
    esac
}
CSV_HEADER="scenario,server,status,reason,rps,requests,p50_ms,p99_ms,max_ms,socket_errors,timeouts,non2xx,errors,cpu_us_per_req,server_busy_pct,wrk_busy_pct,other0_pct,other1_pct,irq0_pct,irq1_pct,peak_rss_mib,conns_open,conns_starved,served_all,attempts"

# run_one SCENARIO SERVER [ATTEMPT]: one measured run, recorded as a CSV row.
# A run that something else on the machine disturbed (busy time on either core
# that is neither the measured processes, nor wrk, nor interrupts, of
# NOISE_RETRY_PCT or more) is run once more, and the second attempt is kept
# (the first's wrk output stays in raw/ as .try1.wrk).
ATTEMPT=1
run_one() {
    local scenario=$1 server=$2 port base key reason status=0 requests
    ATTEMPT=${3:-1}
    key="$server--$scenario"
    scenario_def "$scenario"
    reason=$(static_na "$server" "$scenario")
    if [[ -n $reason ]]; then
        record "$scenario" "$server" n/a "$reason"
        return 0
    fi
    port=$(free_port)
    base=http://127.0.0.1:$port
    server_def "$server" "$port"
    if [[ -n $SV_NA ]]; then
        record "$scenario" "$server" n/a "$SV_NA"
        return 0
    fi
    local -a wrk_base=(taskset -c "$CLIENT_CORE" wrk -t1 -c"$SC_CONN" --timeout "$WRK_TIMEOUT")
    local -a warm_cmd=("${wrk_base[@]}" -d"$WARMUP" "$base$SC_PATH" "${SC_WRK[@]}")
    local -a wrk_cmd=("${wrk_base[@]}" -d"$DURATION" --latency "$base$SC_PATH" "${SC_WRK[@]}")

    log "$scenario: $server on port $port"
    SERVER_STOP_SIGNAL=$SV_STOP
    start_server "$WORK/server.log" "$SV_DIR" "${SV_CMD[@]}"
    if ! wait_ready "$base/" "$WORK/server.log"; then
        keep_log "$key"
        stop_server
        record "$scenario" "$server" failed "did not start: $READY_ERROR"
        return 0
    fi
    [[ -f $RAW/$server.response ]] || curl -sS -i --max-time 5 "$base/" 2>&1 | tr -d '\r' >"$RAW/$server.response" || true
    if ! check_scenario "$SC_CHECK" "$base"; then
        keep_log "$key"
        stop_server
        record "$scenario" "$server" n/a "check failed: $CHECK_ERROR$(check_hint "$server" "$scenario")"
        return 0
    fi

    timeout -k 5 $((WARMUP_S + 30)) "${warm_cmd[@]}" >"$WORK/warmup" 2>&1 || status=$?
    if ((status)) || ! alive "$SERVER_PID"; then
        cp "$WORK/warmup" "$RAW/$key.warmup"
        keep_log "$key"
        stop_server
        record "$scenario" "$server" failed "warm-up: wrk status $status$(alive "${SERVER_PID:-0}" || echo ", server gone"): $(tail -n 2 "$WORK/warmup" | tr '\n' ' ')"
        return 0
    fi

    # Beside wrk, two snapshots of its connections (ss), 1 s in and 1 s
    # before the end: a connection open at both that received nothing in
    # between was starved, which wrk itself does not report.
    rm -f "$WORK/conns.1" "$WORK/conns.2"
    if ((DURATION_S >= 3)); then
        conn_sampler "$port" 1 $((DURATION_S - 2)) "$WORK/conns" &
        SAMPLER_PID=$!
    fi
    measure "$RAW/$key.wrk" $((DURATION_S + 30)) "${wrk_cmd[@]}" || status=$?
    if [[ -n $SAMPLER_PID ]]; then wait "$SAMPLER_PID" 2>/dev/null || true; fi
    SAMPLER_PID=
    local died=
    alive "$SERVER_PID" || died=1
    keep_log "$key"
    stop_server
    {
        echo "# $(shell_words "${wrk_cmd[@]}")"
        echo "# server: $(shell_words "${SV_CMD[@]}")"
    } >>"$RAW/$key.wrk"

    requests=$(wrk_requests "$RAW/$key.wrk")
    if ((status)) || [[ ! $requests =~ ^[0-9]+$ ]] || ((requests == 0)); then
        record "$scenario" "$server" failed "wrk status $status, ${requests:-no} requests${died:+, server died}: $(head -c 300 "$RAW/$key.wrk" | tr '\n' ' ')"
        return 0
    fi
    local rps p50 p99 max sock tmo non2 errs cpu busy wrkb o0 o1 i0 i1 rss open='' stuck='' served=''
    rps=$(wrk_rps "$RAW/$key.wrk")
    p50=$(wrk_latency_ms "$RAW/$key.wrk" 50)
    p99=$(wrk_latency_ms "$RAW/$key.wrk" 99)
    max=$(wrk_latency_ms "$RAW/$key.wrk" max)
    if [[ $scenario == pipeline* ]]; then
        # wrk records one latency per pipelined batch and its percentiles
        # come out as 0 or garbage: not reported.
        p50='' p99=''
    fi
    sock=$(wrk_socket_errors "$RAW/$key.wrk")
    tmo=$(wrk_timeouts "$RAW/$key.wrk")
    non2=$(wrk_non2xx "$RAW/$key.wrk")
    errs=$((sock + non2))
    cpu=$(awk -v t="$M_TICKS" -v hz="$CLK_TCK" -v r="$requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / r }')
    read -r busy wrkb o0 o1 <<<"$(measured_busy)"
    read -r i0 i1 <<<"$(measured_irq)"
    # "other" here: busy time of the core that is neither the measured
    # process tree nor interrupts/softirq (the loopback traffic itself).
    o0=$((o0 > i0 ? o0 - i0 : 0)) o1=$((o1 > i1 ? o1 - i1 : 0))
    rss=$(awk -v k="$M_PEAK_RSS_KIB" 'BEGIN { printf "%.1f", k / 1024 }')
    # Every connection served: none starved between the two snapshots, no
    # socket error, no 4xx/5xx, and the slowest response within wrk's timeout.
    if [[ -e $WORK/conns.2 && -e $WORK/conns.1 ]]; then
        read -r open stuck <<<"$(conn_progress "$WORK/conns.1" "$WORK/conns.2")"
    fi
    if [[ -n $stuck ]]; then
        served=no
        if ((stuck == 0 && errs == 0)) && awk -v m="$max" -v t="$(duration_secs "$WRK_TIMEOUT")" 'BEGIN { exit !(m < t * 1000) }'; then
            served=yes
        fi
    fi
    if [[ -n $stuck ]] && ((stuck > 0)); then # the evidence: "port/cookie bytes_received" at each snapshot
        cp "$WORK/conns.1" "$RAW/$key.conns1"
        cp "$WORK/conns.2" "$RAW/$key.conns2"
    fi
    if ((ATTEMPT == 1 && (o0 >= NOISE_RETRY_PCT || o1 >= NOISE_RETRY_PCT))); then
        log "$scenario: $server: cores $SERVER_CORE/$CLIENT_CORE were $o0%/$o1% busy with something else: once more in 5 s"
        mv "$RAW/$key.wrk" "$RAW/$key.try1.wrk"
        sleep 5
        run_one "$scenario" "$server" 2
        return 0
    fi
    record "$scenario" "$server" "$([[ -n $died ]] && echo died || echo ok)" "${died:+server died during the measured run}" \
        "$rps" "$requests" "$p50" "$p99" "$max" "$sock" "$tmo" "$non2" "$errs" "$cpu" "$busy" "$wrkb" "$o0" "$o1" \
        "$i0" "$i1" "$rss" "$open" "$stuck" "$served"
    log "$scenario: $server: $rps req/s, p99 ${p99:-?} ms, $errs errors, $cpu µs CPU/req, peak RSS $rss MiB${stuck:+, $stuck of $open connections starved}"
}

# conn_sampler PORT FIRST_S THEN_S PREFIX: PREFIX.1 after FIRST_S, PREFIX.2
# THEN_S later (see conn_snapshot).
conn_sampler() {
    sleep "$2"
    conn_snapshot "$1" >"$4.1"
    sleep "$3"
    conn_snapshot "$1" >"$4.2"
}

# The server log of a run, its first 200 lines, into raw/ (empty ones are not kept).
keep_log() {
    [[ -s $WORK/server.log ]] || return 0
    head -n 200 "$WORK/server.log" >"$RAW/$1.log"
}

# ---------------------------------------------------------------- run

# How busy the two cores were just before: a build or a test suite beside the
# lab moves req/s by more than most changes being measured.
read -r b0 b1 <<<"$(core_busy_ticks)"
sleep 2
read -r a0 a1 <<<"$(core_busy_ticks)"
IDLE_CHECK=$(awk -v a="$((a0 - b0))" -v b="$((a1 - b1))" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f%% / %.0f%%", 100 * a / hz / 2, 100 * b / hz / 2 }')
if (((a0 - b0) * 100 / (2 * CLK_TCK) >= 10 || (a1 - b1) * 100 / (2 * CLK_TCK) >= 10)); then
    warn "cores $SERVER_CORE/$CLIENT_CORE were $IDLE_CHECK busy before the start: the machine is not quiet, figures will be noisy"
fi

mkdir -p "$RUN_DIR"
rm -rf "$RAW"
mkdir -p "$RAW"
echo "$CSV_HEADER" >"$CSV"

log "$(echo "${SERVER_LIST[@]}" | wc -w) servers x ${#SCENARIO_LIST[@]} scenarios, ${WARMUP} + ${DURATION} each; results in ${RUN_DIR#"$ROOT"/}"
for scenario in "${SCENARIO_LIST[@]}"; do
    for server in "${SERVER_LIST[@]}"; do
        run_one "$scenario" "$server"
    done
done
ELAPSED=$((EPOCHSECONDS - T_START))
LOADAVG_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report

version_of() {
    case $1 in
    spindle-*) echo "${SPINDLE_VERSION:-?} ($SPINDLE_FINGERPRINT)" ;;
    gunicorn-*) echo "gunicorn $(venv_version "$VENV" gunicorn)" ;;
    uwsgi) echo "uWSGI $(venv_version "$VENV" uwsgi)" ;;
    granian) echo "Granian $(venv_version "$VENV" granian)" ;;
    bjoern) echo "bjoern $(venv_version "$VENV" bjoern), libev $(dpkg-query -W -f='${Version}' libev4 2>/dev/null || echo '?')" ;;
    waitress) echo "waitress $(venv_version "$VENV" waitress)" ;;
    nginx) nginx -v 2>&1 | sed 's/^nginx version: //' ;;
    esac
}

BINARY_CHANGED=$(spindle_changed_note)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "none")
DIRTY=$(git -C "$ROOT" --no-optional-locks status --porcelain 2>/dev/null | wc -l || echo "?")
# The command line as typed: knobs that differ from the defaults, then the script.
COMMAND=
[[ $SERVERS == "$ALL_SERVERS" ]] || COMMAND+="SERVERS=\"$SERVERS\" "
[[ $SCENARIOS == "$ALL_SCENARIOS" ]] || COMMAND+="SCENARIOS=\"$SCENARIOS\" "
[[ $DURATION == 5s ]] || COMMAND+="DURATION=$DURATION "
[[ $WARMUP == 1s ]] || COMMAND+="WARMUP=$WARMUP "
[[ $WRK_TIMEOUT == 2s ]] || COMMAND+="WRK_TIMEOUT=$WRK_TIMEOUT "
[[ -z $SPINDLE_ARGS ]] || COMMAND+="SPINDLE_ARGS=\"$SPINDLE_ARGS\" "
COMMAND+="perf/lab.sh"

{
    echo "# Spindle performance lab: $(date -u '+%F %T UTC')"
    echo
    echo "Every server on core $SERVER_CORE (\`taskset -c $SERVER_CORE\`), wrk on core $CLIENT_CORE, one after the other; per server and"
    echo "scenario: start, check the answer, ${WARMUP} warm-up, ${DURATION} measured (\`wrk -t1 --latency --timeout $WRK_TIMEOUT\`), stop."
    echo "**req/s** and latency from wrk; **× nginx**: req/s over nginx's in the same scenario and run;"
    echo "**errors**: socket errors (connect, read, write, timeout) + non-2xx; **CPU µs/req**: user+system time of the"
    echo "server's process tree (/proc, ${CLK_TCK} ticks/s) over the measured run / requests; **peak RSS**: sum of VmHWM over"
    echo "the tree, reset just before the measured run; **wrk core**: wrk's own CPU share (at 90%+ the client is the limit"
    echo "and req/s is a floor: read CPU µs/req)."
    echo
    echo "- command: \`$COMMAND\` (${ELAPSED}s)"
    echo "- host: $(hostname), $(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r)"
    echo "- load average before / after: $LOADAVG_BEFORE / $LOADAVG_AFTER; cores $SERVER_CORE / $CLIENT_CORE busy in the 2 s before the start: $IDLE_CHECK"
    echo "- commit: $COMMIT ($DIRTY changed or untracked paths)"
    echo "- Python: $PY_VERSION (\`$PY\`, from $PY_SOURCE); venv \`${VENV#"$ROOT"/}\`"
    echo "- wrk: $(wrk -v 2>&1 | head -n 1 || true)"
    [[ -z $BINARY_CHANGED ]] || echo "$BINARY_CHANGED"
    echo
    for scenario in "${SCENARIO_LIST[@]}"; do
        scenario_def "$scenario"
        printf '%s\t%s\n' "$scenario" "$SC_DESC"
    done >"$WORK/scenarios.tsv"
    "$PY" "$PERF_DIR/lab_summary.py" --scenarios "$WORK/scenarios.tsv" "$CSV"
    echo
    echo "## Plots"
    echo
    echo "![req/s per scenario and server](lab-rps.png)"
    echo
    echo "![server CPU µs per request](lab-cpu.png)"
    echo
    echo "## Appendix: scenarios"
    echo
    echo "| scenario | what | wrk command (PORT: a free port per run) |"
    echo "|---|---|---|"
    for scenario in "${SCENARIO_LIST[@]}"; do
        scenario_def "$scenario"
        echo "| $scenario | $SC_DESC | \`$(shell_words taskset -c "$CLIENT_CORE" wrk -t1 -c"$SC_CONN" --timeout "$WRK_TIMEOUT" -d"$DURATION" --latency "http://127.0.0.1:PORT$SC_PATH" "${SC_WRK[@]}" | sed "s|$ROOT/||g")\` |"
    done
    echo
    echo "Warm-up: the same command with \`-d$WARMUP\` and without \`--latency\`. Lua scripts: \`perf/lua/\`."
    echo
    echo "## Appendix: servers"
    echo
    echo "| server | version | command (run from \`perf/apps/\`) |"
    echo "|---|---|---|"
    for server in "${SERVER_LIST[@]}"; do
        server_def "$server" PORT
        echo "| $server | $(version_of "$server") | \`$(shell_words "${SV_CMD[@]}" | sed -e "s|$ROOT/||g" -e "s|$WORK/|\$WORK/|g")\` |"
    done
    if wants nginx; then
        echo
        echo "nginx.conf (\`\$WORK\`: a scratch folder of the run):"
        echo
        echo '```nginx'
        nginx_conf PORT
        sed "s|$WORK/|\$WORK/|g" "$WORK/nginx/nginx.conf"
        echo '```'
    fi
    echo
    echo "Raw wrk output (\`<server>--<scenario>.wrk\`, with the exact commands at the end), server logs"
    echo "(\`.log\`, first 200 lines), one full hello response per server (\`<server>.response\`) and, for runs that"
    echo "starved connections, both \`ss\` snapshots (\`.conns1\`, \`.conns2\`: port/cookie, bytes received): [raw/](raw/)."
} >"$RUN_DIR/lab.md"

if "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
    "$VENV/bin/python" "$PERF_DIR/lab_plot.py" "$CSV" "$RUN_DIR" || warn "plotting failed"
else
    warn "matplotlib is not in $VENV: no plots"
fi

if [[ $(dirname "$RUN_DIR") == "$ROOT/perf/runs" ]]; then {
    echo "# Latest lab run"
    echo
    echo "[$(basename "$RUN_DIR")/lab.md]($(basename "$RUN_DIR")/lab.md): \`$COMMAND\`, $(date -u '+%F %T UTC'), commit $COMMIT."
    echo
    echo "![req/s](${RUN_DIR##*/}/lab-rps.png)"
    echo
    echo "![CPU µs per request](${RUN_DIR##*/}/lab-cpu.png)"
} >"$ROOT/perf/runs/LATEST.md"; fi

"$PY" "$PERF_DIR/lab_summary.py" --brief "$CSV"
[[ -z $BINARY_CHANGED ]] || warn "${BINARY_CHANGED#- WARNING: }"
echo
echo "report: ${RUN_DIR#"$ROOT"/}/lab.md (${ELAPSED}s)"
