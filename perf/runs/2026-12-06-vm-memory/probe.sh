#!/bin/bash
# probe.sh c1|close NAME: one server on core 0 and wrk on core 1 (the lab's app, lab:app).
#   c1:    wrk -c1 for 5 s; the server's CPU per request (perf stat), p99, context switches.
#   close: wrk -c64 with `Connection: close` for 5 s; req/s, wrk's CPU, the server's ticks,
#          TIME_WAIT sockets after, and TCP counters per request (nstat).
# NAME: spindle, spindle-inline, spindle-epoll, spindle-inline-epoll, granian, bjoern.
# Outputs land in $OUT (default /tmp/probe).
set -u
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
V=$ROOT/build/perf-venv-3.13 APPS=$ROOT/perf/apps OUT=${OUT:-/tmp/probe} PORT=18123
mode=$1 name=$2
mkdir -p "$OUT"
spindle=("$V/bin/spindle" --bind "127.0.0.1:$PORT" --single-process --io-threads 1 --py-threads 1 --pythonpath "$APPS")
case $name in
spindle) cmd=("${spindle[@]}" lab:app) ;;
spindle-inline) cmd=("${spindle[@]}" --inline lab:app) ;;
spindle-epoll) cmd=("${spindle[@]}" --driver epoll lab:app) ;;
spindle-inline-epoll) cmd=("${spindle[@]}" --inline --driver epoll lab:app) ;;
granian) cmd=("$V/bin/granian" --interface wsgi --workers 1 --http 1 --no-ws --host 127.0.0.1 --port "$PORT" lab:app) ;;
bjoern) cmd=("$V/bin/python" bjoern_run.py 127.0.0.1 "$PORT") ;;
*) echo "unknown server $name" >&2; exit 2 ;;
esac
case $mode in
c1) conns=1 hdr=() ;;
close) conns=64 hdr=(-H "Connection: close") ;;
*) echo "unknown mode $mode" >&2; exit 2 ;;
esac
cd "$APPS"
taskset -c 0 "${cmd[@]}" >"$OUT/$name.log" 2>&1 & SP=$!
for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$PORT/" && break; sleep 0.1; done
taskset -c 1 wrk -t1 -c$conns -d1s "${hdr[@]}" "http://127.0.0.1:$PORT/" >/dev/null
ticks() { cat /proc/$SP/task/*/stat | awk '{s += $14 + $15} END {print s}'; }
if [[ $mode == c1 ]]; then
    perf stat -x, -e task-clock,context-switches -p $SP -o "$OUT/$name.perf" -- sleep 5.2 & PP=$!
    taskset -c 1 wrk -t1 -c1 -d5s --latency "http://127.0.0.1:$PORT/" >"$OUT/$name.wrk"
    wait $PP
else
    sleep 1
    nstat -n
    t0=$(ticks)
    /usr/bin/time -f "wrkcpu %U %S" taskset -c 1 wrk -t1 -c64 -d5s "${hdr[@]}" "http://127.0.0.1:$PORT/" \
        >"$OUT/$name.wrk" 2>"$OUT/$name.time"
    t1=$(ticks)
    nstat >"$OUT/$name.nstat"
fi
tw=$(ss -tan state time-wait | wc -l)
kill $SP; wait $SP 2>/dev/null
req=$(awk '/requests in/{print $1}' "$OUT/$name.wrk")
if [[ $mode == c1 ]]; then
    p99=$(awk '/ 99%/{print $2}' "$OUT/$name.wrk")
    awk -F, -v n="$req" -v name="$name" -v p99="$p99" 'BEGIN {printf "%s n=%d p99=%s", name, n, p99}
        /task-clock/ {printf " us/req=%.2f", $1 * 1000 / n} /context-switches/ {printf " cs=%.2f", $1 / n}
        END {print ""}' "$OUT/$name.perf"
else
    echo "$name req/s $(awk '/Requests\/sec/{print $2}' "$OUT/$name.wrk") $(grep wrkcpu "$OUT/$name.time")" \
        "server_ticks $((t1 - t0)) timewait $tw"
    awk -v n="$req" '$1 ~ /TcpOutSegs|TcpInSegs|TcpActiveOpens|TcpPassiveOpens|TcpOutRsts|TcpExtTW|TcpExtTCPPureAcks|TcpExtTCPHPAcks|TcpEstabResets|TcpExtTCPOrigDataSent|TcpExtTCPAbortOn/ {
        printf "  %s %.2f\n", $1, $2 / n}' "$OUT/$name.nstat"
fi
