#!/usr/bin/env bash
# Runs the benchmark suite and leaves every file in target/numa-bench/:
#   report.txt, results.csv, results.json, results.md, throughput.svg (examples/numa_bench)
#   criterion.txt and criterion/<group>/<bench>/estimates.json (benches/nr_micro)
# Arguments are passed to numa_bench, e.g. `scripts/bench.sh --full`.
# NODEREP_SKIP_CRITERION=1 skips the criterion micro-benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/numa-bench
mkdir -p "$out"

printf '=== numa_bench %s ===\n' "$*"
cargo run --release --example numa_bench -- --out "$out" "$@"

if [ "${NODEREP_SKIP_CRITERION:-0}" != "1" ]; then
  printf '\n=== criterion micro-benchmarks (benches/nr_micro.rs) ===\n'
  cargo bench --bench nr_micro 2>&1 | tee "$out/criterion.txt"
  rm -rf "$out/criterion"
  if [ -d target/criterion ]; then
    # Keep the estimates of this run next to the suite's files.
    (cd target/criterion && find . -path '*/new/estimates.json' -print0 |
      while IFS= read -r -d '' f; do
        dest="../numa-bench/criterion/$(dirname "$(dirname "$f")")"
        mkdir -p "$dest" && cp "$f" "$dest/estimates.json"
      done)
  fi
fi
printf '\nfiles in %s:\n' "$out"
ls -1 "$out"
