#!/usr/bin/env bash
# Shows that the linearizability suite catches a real protocol break in
# node replication: with the `ctail_skipped` mutant compiled in (the commit
# point never advances, so reads stop waiting for their replica to catch up
# and return stale values), the noderep campaigns of tests/linearizability
# must FAIL with a non-linearizable history. Without the mutant they pass.
#   scripts/lin_mutant.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# A separate target dir keeps the mutant build from invalidating the normal one.
# build.rs turns NODEREP_MUTANT into `--cfg noderep_mutant="ctail_skipped"`
# for noderep alone (src/mutants.rs).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/lin-mutant}"
export NODEREP_MUTANT=ctail_skipped
for campaign in hashmap_on_2_replicas_is_linearizable stack_on_2_replicas_is_linearizable; do
  if out=$(cargo test --test linearizability -- --exact "noderep_runs::$campaign" 2>&1); then
    echo "FAIL: $campaign passed with the ctail_skipped mutant; the suite missed a stale read" >&2
    exit 1
  fi
  if ! grep -q "NON-linearizable history" <<<"$out"; then
    echo "FAIL: $campaign failed with the mutant, but not by finding a non-linearizable history:" >&2
    echo "$out" | tail -20 >&2
    exit 1
  fi
  echo "ok: $campaign rejects the ctail_skipped mutant:"
  grep -E "longest linearizable prefix|next candidate" <<<"$out" | head -4 | sed 's/^/    /'
done
echo "the linearizability suite catches the ctail_skipped mutant"
