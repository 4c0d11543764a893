#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ and runs each for SECONDS, from its seeds and corpus,
# with the JSON dictionary. The build uses the flags `cargo fuzz build -s none` uses (the
# coverage instrumentation libFuzzer needs, which stable Rust has; no sanitizer), so it
# needs neither cargo-fuzz nor a nightly toolchain; with cargo-fuzz installed,
# `cd fuzz && cargo fuzz run -s none TARGET` runs the same targets.
#
# Usage: scripts/fuzz.sh SECONDS [TARGET...]   (default: every target)
# A crash leaves its input in fuzz/artifacts/TARGET/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request_body signed_envelope ledger_tx usage_records check_report keystore)

triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --quiet --target "$triple" --bins

status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log=$(mktemp)
  if "target/$triple/release/$t" -max_total_time="$seconds" -dict=json.dict \
      -artifact_prefix="artifacts/$t/" -print_final_stats=1 "corpus/$t" "seeds/$t" >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    echo "$t: $runs runs in $seconds s, $cov, no crash"
  else
    echo "$t: CRASH (input in fuzz/artifacts/$t/):"
    grep -E -A12 "panicked|ERROR" "$log" | head -40
    status=1
  fi
  rm -f "$log"
done
exit $status
