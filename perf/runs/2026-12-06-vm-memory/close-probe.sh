#!/bin/bash
# close-probe.sh NAME (spindle, spindle-inline, spindle-epoll, granian, bjoern): one server on core 0, wrk -c64 Connection: close on core 1 for 5 s;
# prints req/s, wrk's CPU, server CPU, and TCP counters per request.
set -u
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel); V=$ROOT/build/perf-venv-3.13; APPS=$ROOT/perf/apps; OUT=${OUT:-/tmp/close}; mkdir -p "$OUT"; PORT=18123
name=$1
case $name in
spindle) cmd=($V/bin/spindle --bind 127.0.0.1:$PORT --single-process --io-threads 1 --py-threads 1 --pythonpath $APPS lab:app) ;;
spindle-inline) cmd=($V/bin/spindle --bind 127.0.0.1:$PORT --single-process --io-threads 1 --py-threads 1 --inline --pythonpath $APPS lab:app) ;;
spindle-epoll) cmd=($V/bin/spindle --bind 127.0.0.1:$PORT --single-process --io-threads 1 --py-threads 1 --driver epoll --pythonpath $APPS lab:app) ;;
granian) cmd=($V/bin/granian --interface wsgi --workers 1 --http 1 --no-ws --host 127.0.0.1 --port $PORT lab:app) ;;
bjoern) cmd=($V/bin/python bjoern_run.py 127.0.0.1 $PORT) ;;
esac
cd $APPS
taskset -c 0 "${cmd[@]}" >$OUT/$name.log 2>&1 & SP=$!
for i in $(seq 100); do curl -s -o /dev/null 127.0.0.1:$PORT/ && break; sleep 0.1; done
taskset -c 1 wrk -t1 -c64 -d1s -H "Connection: close" http://127.0.0.1:$PORT/ >/dev/null
sleep 1
nstat -n
s0=$(awk '{print $14+$15}' /proc/$SP/stat); for t in /proc/$SP/task/*; do :; done
s0=$(cat /proc/$SP/task/*/stat | awk '{s+=$14+$15} END {print s}')
/usr/bin/time -f "wrkcpu %U %S" taskset -c 1 wrk -t1 -c64 -d5s -H "Connection: close" http://127.0.0.1:$PORT/ > $OUT/$name.wrk 2>$OUT/$name.time
s1=$(cat /proc/$SP/task/*/stat | awk '{s+=$14+$15} END {print s}')
nstat > $OUT/$name.nstat
tw=$(ss -tan state time-wait | wc -l)
kill $SP; wait $SP 2>/dev/null
req=$(awk '/requests in/{print $1}' $OUT/$name.wrk)
rps=$(awk '/Requests\/sec/{print $2}' $OUT/$name.wrk)
echo "$name req/s $rps $(cat $OUT/$name.time | grep wrkcpu) server_ticks $((s1-s0)) timewait $tw"
awk -v n=$req '$1 ~ /TcpOutSegs|TcpInSegs|TcpActiveOpens|TcpPassiveOpens|TcpOutRsts|TcpExtTCPAbortOnData|TcpExtTCPAbortOnClose|TcpExtTW|TcpExtDelayedACKs|TcpExtTCPPureAcks|TcpExtTCPHPAcks|TcpExtTCPHPHits|TcpEstabResets|TcpExtTCPOrigDataSent|TcpExtTCPAckCompressed/ {printf "  %s %.2f\n", $1, $2/n}' $OUT/$name.nstat
