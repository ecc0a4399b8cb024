#!/bin/bash
# Interleaved: hashed (per-thread SO_REUSEPORT) against a shared listener; whole machine.
# SPINDLE_SHARED_LISTENER was a temporary switch in run/listen.rs for this run, not kept:
# at any later commit both modes run the same.
cd "$(dirname "$0")/../../.."
B=${SPINDLE_BIN:-build/test-venv-3.13/bin/spindle}
# usage: CONNS="2 4 64" TRIALS=4 spread.sh
for c in $CONNS; do for t in $(seq $TRIALS); do for mode in hashed shared; do
  port=$((18200 + RANDOM % 500))
  env SPINDLE_SHARED_LISTENER=$([ $mode = shared ] && echo 1 || echo 0) $B --single-process --bind 127.0.0.1:$port --pythonpath perf/apps --log-level debug lab:app > /tmp/spr.log 2>&1 & P=$!
  for i in $(seq 100); do curl -s -o /dev/null 127.0.0.1:$port/ && break; sleep 0.05; done
  rps=$(wrk -t2 -c$c -d3s $EXTRA http://127.0.0.1:$port/ | awk '/Requests\/sec/{print $2}')
  kill $P; wait $P 2>/dev/null
  r=$(grep -o 'I/O thread [01]: [0-9]* requests' /tmp/spr.log | awk '{print $4}' | tr '\n' ' ')
  echo "c=$c $mode trial=$t threads: $r rps=$rps"
done; done; done
