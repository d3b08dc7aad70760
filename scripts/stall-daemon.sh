#!/bin/bash
# Stalls every running shmixd (SIGSTOP for 12 ms, then SIGCONT) every 150-250 ms for SECONDS
# seconds: device xruns on demand, as a loaded machine makes them. A reproduction aid, e.g.:
#   scripts/stall-daemon.sh 14 & cargo nextest run -E 'test(/a_joining_low_latency_stream/)' --retries 0
# (that test then fails on a stray single frame after a device xrun: see the stop-18 note).
# usage: scripts/stall-daemon.sh SECONDS
set -u
end=$((SECONDS + ${1:?usage: $0 SECONDS}))
while [ "$SECONDS" -lt "$end" ]; do
  for p in $(pgrep -x shmixd); do kill -STOP "$p"; done
  sleep 0.012
  for p in $(pgrep -x shmixd); do kill -CONT "$p"; done
  sleep "0.$((150 + RANDOM % 100))"
done
