#!/usr/bin/env bash
# Whole-system figures for the core path on the virtual card: per device/client period size P,
# one `aplay --period-size=P --buffer-size=4P` of a 10 s 48 kHz S16 stereo WAV through shmix.
# Prints CPU time of client and daemon per second of audio, and (with STRACE=1) syscalls per
# period of each from `strace -c -f`. The card discards what it plays (no file writes), so every
# write(2) the daemon makes is an eventfd wakeup.
#   usage: scripts/measure.sh [PERIOD...]      (default: 64 256 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
T=$PWD/target/$PROFILE
SECS=${SECS:-10}
W=$(mktemp -d /tmp/shmix-measure.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$W"; echo "work dir: $W" >&2' EXIT
sox -q -n -r 48000 -b 16 -c 2 "$W/noise.wav" synth "$SECS" whitenoise gain -6
cat > "$W/asound.conf" <<CONF
pcm_type.shmix { lib "$T/libasound_module_pcm_shmix.so" }
pcm_type.shmix_vcard { lib "$T/libasound_module_pcm_shmix_vcard.so" }
pcm.vcard { type shmix_vcard format S16_LE rate 48000 channels 2 }
pcm.shmix { type shmix socket "$W/sock" }
CONF
export ALSA_CONFIG_PATH=/usr/share/alsa/alsa.conf:$W/asound.conf
unset SHMIX_SOCKET
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
printf '%-7s %-12s %-12s %-12s %-14s %-14s %s\n' period client_ms/s daemon_ms/s wall_s client_sc/per daemon_sc/per daemon_efd_writes/per
for P in "${@:-64 256 1024}"; do
  for P in $P; do
    rm -f "$W/sock"
    "$T/shmixd" --socket "$W/sock" --device vcard --period "$P" --periods 4 2> "$W/d.log" &
    D=$!
    for _ in $(seq 100); do [ -S "$W/sock" ] && break; sleep 0.05; done
    periods=$((SECS * 48000 / P))
    if [ "${STRACE:-0}" = 1 ]; then
      strace -c -f -o "$W/d.strace" -p "$D" & S=$!
      sleep 0.3
      strace -c -f -o "$W/c.strace" aplay -q -D shmix --period-size="$P" --buffer-size=$((4 * P)) "$W/noise.wav"
      kill -INT $S; wait $S || true
      csc=$(awk '$NF=="total" {print $4}' "$W/c.strace"); dsc=$(awk '$NF=="total" {print $4}' "$W/d.strace")
      dw=$(awk '$NF=="write" {print $4}' "$W/d.strace"); dw=${dw:-0}
      printf '%-7s %-12s %-12s %-12s %-14.2f %-14.2f %.2f\n' "$P" - - - "$(echo "$csc / $periods" | bc -l)" \
        "$(echo "$dsc / $periods" | bc -l)" "$(echo "$dw / $periods" | bc -l)"
    else
      d0=$(ticks "$D"); t0=$(date +%s.%N)
      TIMEFORMAT='%U %S'
      ct=$( { time aplay -q -D shmix --period-size="$P" --buffer-size=$((4 * P)) "$W/noise.wav" 2>/dev/null; } 2>&1 )
      t1=$(date +%s.%N); d1=$(ticks "$D")
      read -r cu cs <<<"$ct"
      printf '%-7s %-12.2f %-12.2f %-12.2f %-14s %-14s %s\n' "$P" "$(echo "($cu + $cs) * 1000 / $SECS" | bc -l)" \
        "$(echo "($d1 - $d0) * 1000 / $HZ / $SECS" | bc -l)" "$(echo "$t1 - $t0" | bc -l)" - - -
    fi
    kill -TERM "$D"; wait "$D" || true
  done
done
