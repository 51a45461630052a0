#!/usr/bin/env bash
# Runs the loom models (loom-tests/) against the real noderep code.
#   scripts/loom.sh          LOOM_MAX_PREEMPTIONS=2 (the CI bound)
#   scripts/loom.sh --quick  LOOM_MAX_PREEMPTIONS=1
# Extra arguments are passed to the test binary (e.g. a model name filter).
# On a 2-core machine the models take about 3 s at bound 2 (0.3 s at bound 1)
# after a 1-minute cold build; loom-tests/README.md has the figures and why 2.
# scripts/loom-mutants.sh checks that every model catches its mutants.
set -euo pipefail
cd "$(dirname "$0")/.."
bound=2
if [ "${1:-}" = "--quick" ]; then bound=1; shift; fi
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-$bound}"
export RUSTFLAGS="${RUSTFLAGS:-} --cfg loom"
# A separate target dir keeps the --cfg loom build from invalidating the normal one.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/loom}"
start=$(date +%s)
cargo test --release -p loom-tests -- --test-threads="$(nproc)" "$@"
echo "loom models passed with LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS in $(( $(date +%s) - start ))s"
