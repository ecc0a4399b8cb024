#!/bin/bash
# c1-probe.sh NAME (spindle, spindle-inline, spindle-inline-epoll, granian, bjoern) [CONNS]: server on core 0, wrk -c1 (or CONNS) on core 1 for 5 s; perf stat of the server.
set -u
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel); V=$ROOT/build/perf-venv-3.13; APPS=$ROOT/perf/apps; OUT=${OUT:-/tmp/close}; mkdir -p "$OUT"; PORT=18124
name=$1; c=${2:-1}
case $name in
spindle) cmd=($V/bin/spindle --bind 127.0.0.1:$PORT --single-process --io-threads 1 --py-threads 1 --pythonpath $APPS lab:app) ;;
spindle-inline) cmd=($V/bin/spindle --bind 127.0.0.1:$PORT --single-process --io-threads 1 --py-threads 1 --inline --pythonpath $APPS lab:app) ;;
spindle-inline-epoll) cmd=($V/bin/spindle --bind 127.0.0.1:$PORT --single-process --io-threads 1 --py-threads 1 --inline --driver epoll --pythonpath $APPS lab:app) ;;
granian) cmd=($V/bin/granian --interface wsgi --workers 1 --http 1 --no-ws --host 127.0.0.1 --port $PORT lab:app) ;;
bjoern) cmd=($V/bin/python bjoern_run.py 127.0.0.1 $PORT) ;;
esac
cd $APPS
taskset -c 0 "${cmd[@]}" >$OUT/$name.log 2>&1 & SP=$!
for i in $(seq 100); do curl -s -o /dev/null 127.0.0.1:$PORT/ && break; sleep 0.1; done
taskset -c 1 wrk -t1 -c$c -d1s http://127.0.0.1:$PORT/ >/dev/null
perf stat -x, -e task-clock,context-switches,cpu-migrations -p $SP -o $OUT/$name.perf -- sleep 5.2 &
PP=$!
taskset -c 1 wrk -t1 -c$c -d5s --latency http://127.0.0.1:$PORT/ > $OUT/$name.c1wrk
wait $PP
kill $SP; wait $SP 2>/dev/null
req=$(awk '/requests in/{print $1}' $OUT/$name.c1wrk)
p99=$(awk '/ 99%/{print $2}' $OUT/$name.c1wrk)
awk -F, -v n=$req -v name=$name -v p99=$p99 'BEGIN{printf "%s n=%d p99=%s", name, n, p99} /task-clock/{printf " us/req=%.2f", $1*1000/n} /instructions:u/{printf " insn_u=%.0f", $1/n} /instructions:k/{printf " insn_k=%.0f", $1/n} /context-switches/{printf " cs=%.2f", $1/n} END{print ""}' $OUT/$name.perf
