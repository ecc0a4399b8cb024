#!/bin/bash
# Interleaved: SPINDLE_SPREAD=0 (hashed only) against the default (hand-overs); whole machine.
cd "$(dirname "$0")/../../.."
B=${SPINDLE_BIN:-build/test-venv-3.13/bin/spindle}
# usage: SCENARIOS="4:keep 64:keep 64:close" TRIALS=4 after.sh
for sc in $SCENARIOS; do c=${sc%%:*}; hdr=${sc#*:}; for t in $(seq $TRIALS); do for mode in 0 1; do
  port=$((18200 + RANDOM % 500))
  SPINDLE_SPREAD=$mode $B --single-process --bind 127.0.0.1:$port --pythonpath perf/apps --log-level debug lab:app > /tmp/spr.log 2>&1 & P=$!
  for i in $(seq 100); do curl -s -o /dev/null 127.0.0.1:$port/ && break; sleep 0.05; done
  if [ "$hdr" = close ]; then out=$(wrk -t2 -c$c -d3s -H 'Connection: close' http://127.0.0.1:$port/); else out=$(wrk -t2 -c$c -d3s http://127.0.0.1:$port/); fi
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  kill $P; wait $P 2>/dev/null
  r=$(sed -nE 's/.*I\/O thread [01]: ([0-9]+) requests, .*, ([0-9]+) connections handed.*/\1\/\2/p' /tmp/spr.log | tr '\n' ' ')
  echo "$sc spread=$mode trial=$t requests/handed: $r rps=$rps"
done; done; done
