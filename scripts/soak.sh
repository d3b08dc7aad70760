#!/usr/bin/env bash
# Soak: `scripts/soak.sh SECONDS` runs a private shmixd on the virtual card, one reference stream
# (known noise on the left channel, SECONDS + 2 s long, 2 s buffer) and 32 clients (tests/c/soak_client.c) that
# for SECONDS open, play, pause (snd_pcm_pause), stall into underruns, drain, drop and close at
# random, with random formats, rates and buffers, on the right channel only. At the end the
# card's left channel must hold the reference bit-exact, no client may have seen an unexpected
# error, the daemon's open fds must be back to their count before the soak and its RSS within
# SOAK_RSS_SLACK_KB (default 1024) of it; the daemon must exit 0 on SIGTERM.
#
# The baseline is taken with the daemon idle after a warm-up: the same 32 clients churn for
# SOAK_WARMUP seconds (default 5) first: the first streams grow glibc's heap by a few MB that
# it keeps for reuse after they are freed (it stays flat from then on, however long the soak).
# The idle RSS at startup is printed too.
#
# Everything lives in a fresh temp dir (private ALSA config, socket, card recording), so it can
# run next to the test suite. Built artifacts come from SHMIX_ARTIFACTS (default target/debug;
# `cargo build --workspace` first). SOAK_CLIENTS (default 32), SOAK_KEEP=1 keeps the work dir.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${1:?usage: scripts/soak.sh SECONDS}
CLIENTS=${SOAK_CLIENTS:-32}
SLACK_KB=${SOAK_RSS_SLACK_KB:-1024}
WARMUP=${SOAK_WARMUP:-5}
T=${SHMIX_ARTIFACTS:-$PWD/target/debug}
for f in shmixd libasound_module_pcm_shmix.so libasound_module_pcm_shmix_vcard.so; do
    [ -e "$T/$f" ] || { echo "soak: $T/$f is missing: run 'cargo build --workspace' first" >&2; exit 2; }
done

W=$(mktemp -d "${TMPDIR:-/tmp}/shmix-soak-XXXXXX")
DAEMON=
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null || true
    wait 2>/dev/null || true
    if [ "${SOAK_KEEP:-0}" = 1 ]; then echo "soak: work dir kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

cc -O2 -Wall -Wextra -Werror -o "$W/soak_client" tests/c/soak_client.c -lasound -lm
cat > "$W/asound.conf" <<CONF
pcm_type.shmix { lib "$T/libasound_module_pcm_shmix.so" }
pcm_type.shmix_vcard { lib "$T/libasound_module_pcm_shmix_vcard.so" }
pcm.card { type shmix_vcard format S16_LE rate 48000 channels 2 playback_file "$W/card.raw" }
pcm.shmix { type shmix socket "$W/shmix.sock" }
pcm.shmix_ref { type shmix socket "$W/shmix.sock" max_buffer_ms 2500 }
CONF
export ALSA_CONFIG_PATH=/usr/share/alsa/alsa.conf:$W/asound.conf
unset SHMIX_SOCKET

# A device buffer of 4 x 1024 frames (85 ms): the reference must survive a loaded machine (the
# soak runs next to the test suite in CI), and a device xrun would cost it its buffer's frames.
RUST_LOG=info "$T/shmixd" --socket "$W/shmix.sock" --device card --period 1024 --periods 4 2>"$W/shmixd.log" &
DAEMON=$!
for _ in $(seq 500); do [ -S "$W/shmix.sock" ] && break; sleep 0.02; done
[ -S "$W/shmix.sock" ] || { echo "soak: shmixd did not start:"; cat "$W/shmixd.log"; exit 1; }

rss() { awk '/^VmRSS/ {print $2}' "/proc/$DAEMON/status"; }
fds() { find "/proc/$DAEMON/fd" -mindepth 1 -maxdepth 1 | wc -l; }
sleep 0.5
echo "soak: daemon pid $DAEMON idle at startup: RSS $(rss) kB, $(fds) open fds"
for i in $(seq "$CLIENTS"); do
    "$W/soak_client" churn "$((1000 + i))" "$WARMUP" >"$W/warmup$i.out" 2>&1 &
    PIDS+=("$!")
done
for p in "${PIDS[@]}"; do wait "$p" || { echo "soak: FAIL: a warm-up client failed:"; cat "$W"/warmup*.out; exit 1; }; done
PIDS=()
sleep 1
RSS0=$(rss) FDS0=$(fds)
echo "soak: before (idle after a ${WARMUP} s warm-up): RSS $RSS0 kB, $FDS0 open fds"

START=$(date +%s.%N)
"$W/soak_client" ref "$((SECONDS_TO_RUN + 2))" >"$W/ref.out" 2>&1 &
REF=$!
PIDS+=("$REF")
for i in $(seq "$CLIENTS"); do
    "$W/soak_client" churn "$i" "$SECONDS_TO_RUN" >"$W/churn$i.out" 2>&1 &
    PIDS+=("$!")
done
RSS_MAX=$RSS0 FDS_MAX=$FDS0
while kill -0 "$REF" 2>/dev/null; do
    r=$(rss) f=$(fds)
    [ "$r" -gt "$RSS_MAX" ] && RSS_MAX=$r
    [ "$f" -gt "$FDS_MAX" ] && FDS_MAX=$f
    echo "$(date +%s) $r $f" >>"$W/rss.log"
    sleep 1
done
FAIL=0
wait "$REF" || FAIL=1
for p in "${PIDS[@]:1}"; do wait "$p" || FAIL=1; done
PIDS=()
ELAPSED=$(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $START}")
# Retired streams are freed by the control thread; give it a moment.
sleep 1
RSS1=$(rss) FDS1=$(fds)

kill -TERM "$DAEMON"
DSTATUS=0
wait "$DAEMON" || DSTATUS=$?
DAEMON=

cat "$W/ref.out"
awk '/^soak churn seed/ {s+=$6; fr+=$8; pa+=$10; st+=$12; x+=$14; d+=$16; dr+=$18; c+=$20; nb+=$22; e+=$24}
     END {printf "soak: %d churn sessions: %d frames, %d pauses, %d stalls, %d underruns recovered, %d drains, %d drops, %d plain closes, %d non-blocking, %d errors\n", s, fr, pa, st, x, d, dr, c, nb, e}' "$W"/churn*.out
grep -h "soak churn error" "$W"/churn*.out | sort | uniq -c | head -20 || true
grep -q "^soak ref ok" "$W/ref.out" || FAIL=1
"$W/soak_client" check "$W/card.raw" "$((SECONDS_TO_RUN + 2))" || FAIL=1
grep " | cycles " "$W/shmixd.log" | tail -1 | sed 's/^/soak: daemon stats at exit: /'
grep -m1 "mix thread" "$W/shmixd.log" | sed 's/^/soak: /' || true
echo "soak: ran ${ELAPSED} s with $CLIENTS churning clients + 1 reference"
echo "soak: daemon RSS before $RSS0 kB, peak $RSS_MAX kB, after $RSS1 kB; open fds before $FDS0, peak $FDS_MAX, after $FDS1"
if [ "$FDS1" -ne "$FDS0" ]; then echo "soak: FAIL: the daemon's open fds did not return to $FDS0"; FAIL=1; fi
if [ "$RSS1" -gt $((RSS0 + SLACK_KB)) ]; then echo "soak: FAIL: the daemon's RSS grew by more than $SLACK_KB kB"; FAIL=1; fi
if [ "$DSTATUS" -ne 0 ]; then echo "soak: FAIL: shmixd exited with $DSTATUS"; FAIL=1; fi
if grep -E "^shmixd (ERROR|WARN)" "$W/shmixd.log" | head -5 | grep .; then
    echo "soak: FAIL: the daemon warned (above)"
    FAIL=1
fi
if [ "$FAIL" -ne 0 ]; then
    echo "soak: FAIL"
    tail -20 "$W/shmixd.log"
    exit 1
fi
echo "soak: PASS"
