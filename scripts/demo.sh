#!/usr/bin/env bash
# shmix demo: start shmixd on the first sound card (or, on a machine without one, on the
# virtual card), play a short two-part piece through `aplay -D shmix` as two concurrent clients,
# stop the daemon and print what the card played. Run through `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
T=$PWD/target/$PROFILE
OUT=${DEMO_DIR:-$PWD/out/demo}
rm -rf "$OUT" && mkdir -p "$OUT"
for f in shmixd libasound_module_pcm_shmix.so libasound_module_pcm_shmix_vcard.so shmix-recstat; do
    [ -e "$T/$f" ] || { echo "demo: $T/$f is missing: run 'make demo' (it builds first)" >&2; exit 1; }
done

# The piece: a melody and a bass line, 48 kHz S16 stereo, one per client.
notes() { # notes OUT.wav PAN NOTE...
    local out=$1 pan=$2; shift 2; local parts=() i=0
    for n in "$@"; do
        sox -q -n -r 48000 -b 16 -c 1 "$OUT/n$i.wav" synth 0.35 pluck "$n" gain -8 fade 0 0.35 0.05
        parts+=("$OUT/n$i.wav"); i=$((i + 1))
    done
    sox -q "${parts[@]}" -c 2 "$out" remix "1v$pan" "1v$(awk "BEGIN{print 1 - $pan}")"
    rm -f "${parts[@]}"
}
notes "$OUT/melody.wav" 0.7 C5 E5 G5 C6 B5 G5 E5 D5 C5 E5 G5 E5
notes "$OUT/bass.wav" 0.3 C3 C3 G2 G2 A2 A2 F2 F2 C3 C3 G2 C3

CONF=$OUT/asound.conf
SOCK=$OUT/shmix.sock
REC=$OUT/card.raw
cat > "$CONF" <<CONF
pcm_type.shmix { lib "$T/libasound_module_pcm_shmix.so" }
pcm_type.shmix_vcard { lib "$T/libasound_module_pcm_shmix_vcard.so" }
pcm.vcard { type shmix_vcard format S16_LE rate 48000 channels 2 rewind true playback_file "$REC" }
pcm.shmix { type shmix socket "$SOCK" }
CONF
export ALSA_CONFIG_PATH=/usr/share/alsa/alsa.conf:$CONF
unset SHMIX_SOCKET

if [ -d /dev/snd ] && grep -q '^ *[0-9]' /proc/asound/cards 2>/dev/null; then
    DEVICE_ARGS=() ; WHERE="the first hardware card"
else
    DEVICE_ARGS=(--device vcard) ; WHERE="the virtual card (no sound hardware here)"
fi
echo "== starting shmixd on $WHERE"
RUST_LOG=${RUST_LOG:-info} "$T/shmixd" --socket "$SOCK" "${DEVICE_ARGS[@]}" 2> "$OUT/shmixd.log" &
DAEMON=$!
trap 'kill $DAEMON 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
[ -S "$SOCK" ] || { echo "demo: shmixd did not start:" >&2; cat "$OUT/shmixd.log" >&2; exit 1; }

echo "== playing melody.wav and bass.wav through 'aplay -D shmix' at the same time"
start=$(date +%s.%N)
aplay -q -D shmix "$OUT/melody.wav" & A=$!
aplay -q -D shmix --mmap "$OUT/bass.wav" & B=$!
wait $A; wait $B
end=$(date +%s.%N)
printf '   both clients finished after %.2f s (the piece is %.2f s long)\n' \
    "$(awk "BEGIN{print $end - $start}")" "$(soxi -D "$OUT/melody.wav")"

echo "== stopping shmixd"
kill -TERM $DAEMON; wait $DAEMON || true; trap - EXIT
sed 's/^/   shmixd: /' "$OUT/shmixd.log" | tail -n 5

if [ ${#DEVICE_ARGS[@]} -gt 0 ]; then
    echo "== what the card played"
    "$T/shmix-recstat" "$REC" S16_LE 2 48000 | sed 's/^/   /'
    echo "   listen: aplay -f S16_LE -r 48000 -c 2 $REC   (or: sox -t raw -r 48000 -e signed -b 16 -c 2 $REC $OUT/card.wav)"
else
    echo "== played on the hardware card (nothing is recorded there)"
fi
