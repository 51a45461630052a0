#!/usr/bin/env bash
# The one test command (README): format, lints, tests, loom models, docs,
# the no_std build, and a compile of every benchmark and example.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s ===\n' "$*"; }

step "rustfmt"
cargo fmt --all -- --check

step "clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
cargo test --workspace

step "io-uring backend of the mirror"
cargo clippy --lib --features io-uring -- -D warnings
cargo test --lib --features io-uring mirror

step "no_std build of the node-replication core"
cargo build --lib --no-default-features

step "benchmarks and examples compile"
cargo build --release --benches --examples

step "docs (-D warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace

if [ "${NODEREP_SKIP_LOOM:-0}" != "1" ]; then
  step "loom models"
  scripts/loom.sh
fi

if [ "${NODEREP_HWLOC:-0}" = "1" ]; then
  step "hwloc feature"
  cargo test --lib --features hwloc topology
fi

step "all checks passed"
