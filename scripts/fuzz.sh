#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder and validator of peer input (fuzz/fuzz_targets/*):
# socket packets, message-ring records, the memfd layout and identity, cursor arithmetic, a
# hostile peer writing anywhere in a real stream memfd, and the daemon's mixing core under a
# hostile client. libFuzzer through cargo-fuzz on the STABLE toolchain: `-s none` (no sanitizer,
# which would need nightly's -Zsanitizer); coverage comes from the stable -Cpasses=sancov-module,
# overflow checks and debug assertions stay on.
#
#   scripts/fuzz.sh SECONDS [TARGET...]     runs each target for SECONDS (default: all targets)
#
# Prints executions, corpus, coverage and findings per target; exits 1 if anything was found.
# Crash inputs land in fuzz/artifacts/TARGET/ (replay: cargo fuzz run -s none TARGET FILE).
set -euo pipefail
secs=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --version 0.13.2 --locked
fi
if ! command -v c++ >/dev/null 2>&1; then
    echo "installing a C++ compiler (libFuzzer is C++)" >&2
    apt-get install -y g++ >/dev/null
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build -s none

mkdir -p logs
found_any=0
printf '%-12s %12s %10s %8s %8s %9s\n' target executions exec/s corpus cov findings
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="logs/$t.log"
    before=$(find "artifacts/$t" -type f | wc -l)
    set +e
    cargo fuzz run -s none "$t" "corpus/$t" -- -max_total_time="$secs" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1
    set -e
    after=$(find "artifacts/$t" -type f | wc -l)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    corpus=$(find "corpus/$t" -type f | wc -l)
    findings=$((after - before))
    [ "$findings" -gt 0 ] && found_any=1
    printf '%-12s %12s %10s %8s %8s %9s\n' "$t" "${execs:-?}" "${rate:-?}" "$corpus" "${cov:-?}" "$findings"
    if [ "$findings" -gt 0 ]; then
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | head -5 | sed 's/^/    /'
    fi
done
exit $found_any
