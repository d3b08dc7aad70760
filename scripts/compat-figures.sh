#!/usr/bin/env bash
# Figures for the README's compatibility table: runs the compat tests (one at a time, so the
# figures are not skewed by each other) and the delay-versus-card-clock tests, then prints per
# program the CPU per second of audio of the program and of the daemon, and the delay errors.
#   usage: scripts/compat-figures.sh          (PROFILE=release: release build of everything)
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
[ "${PROFILE:-dev}" = release ] && args=(--cargo-profile release)
out=$(cargo nextest run -p shmix-integration "${args[@]}" -j 1 --no-fail-fast --no-capture \
  -E 'test(/^compat::/) | test(/^semantics::c_delay_matches/)' 2>&1) || { echo "$out" | grep -E 'FAIL|panicked' -A3; exit 1; }
echo "| program | wall s (audio s) | program CPU ms per audio s | program CPU, steady, % of wall | daemon CPU ms per audio s |"
echo "| --- | --- | --- | --- | --- |"
echo "$out" | sed -n 's/^compat-figure: \(.*\): audio \([0-9.]*\) s, wall \([0-9.]*\) s, program cpu \([0-9.]*\) ms per audio s (steady \([0-9.]*\) % of wall), daemon cpu \([0-9.]*\) ms per audio s$/| \1 | \3 (\2) | \4 | \5 | \6 |/p' | sort
echo
echo "$out" | grep -E '^delay vs card clock' || true
echo "$out" | grep -E 'zero-copy [0-9]+, xruns' | grep -v '^shmix:' || true
