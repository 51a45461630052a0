#!/usr/bin/env bash
# Shows that the linearizability suite catches a real protocol break in
# node replication: with the `ctail_skipped` mutant compiled in (the commit
# point never advances, so reads stop waiting for their replica to catch up
# and return stale values), the noderep campaigns of tests/linearizability
# must FAIL with a non-linearizable history. Without the mutant they pass.
# Then four mutants of the lanes' all-lane operations against the lane
# campaigns (table below).
#   scripts/lin_mutant.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# A separate target dir keeps the mutant build from invalidating the normal one.
# build.rs turns NODEREP_MUTANT into `--cfg noderep_mutant="ctail_skipped"`
# for noderep alone (src/mutants.rs).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/lin-mutant}"
# Runs one campaign (`module::test` of tests/linearizability) with MUTANT
# compiled in, NODEREP_LIN_SCALE=SCALE, and requires it to fail by finding a
# non-linearizable history.
expect_rejected() {
  local mutant=$1 campaign=$2 scale=$3 out
  if out=$(NODEREP_LIN_SCALE="$scale" NODEREP_MUTANT="$mutant" \
      cargo test --test linearizability -- --exact "$campaign" 2>&1); then
    echo "FAIL: $campaign passed with the $mutant mutant; the suite missed it" >&2
    exit 1
  fi
  if ! grep -q "NON-linearizable history" <<<"$out"; then
    echo "FAIL: $campaign failed with the $mutant mutant, but not by finding a non-linearizable history:" >&2
    echo "$out" | tail -20 >&2
    exit 1
  fi
  echo "ok: $campaign rejects the $mutant mutant:"
  grep -E "longest linearizable prefix|next candidate" <<<"$out" | head -4 | sed 's/^/    /' || true
}

# Node replication: `ctail_skipped` against the single-log campaigns.
#
# Lanes (src/nr/lanes): each mutant breaks one rule of the all-lane
# operations, and the named lane campaign must reject it.
#   lane_read_all_no_recheck     an all-lane read on several replicas skips
#                                the re-check of the commit points
#   lane_read_all_lane_by_lane   an all-lane read on one replica holds one
#                                lane's read lock at a time
#   lane_write_all_lane_by_lane  an all-lane write on one replica applies and
#                                unlocks one lane at a time
#   lane_barrier_keeps_ctail     the last lane at an all-lane barrier does not
#                                raise the commit points past the leaves
# A barrier that keeps the commit points behind is visible only until the
# next write of that lane raises them, so one default campaign catches it
# about every other time: the lane campaigns run with 10 times their
# histories here (a caught mutant stops at its first non-linearizable
# history, within seconds).
while read -r mutant campaign scale; do
  expect_rejected "$mutant" "$campaign" "$scale"
done <<'TABLE'
ctail_skipped noderep_runs::hashmap_on_2_replicas_is_linearizable 1
ctail_skipped noderep_runs::stack_on_2_replicas_is_linearizable 1
lane_read_all_no_recheck lane_runs::lanes_on_2_replicas_are_linearizable 10
lane_read_all_lane_by_lane lane_runs::lanes_on_1_replica_are_linearizable 10
lane_write_all_lane_by_lane lane_runs::lanes_on_1_replica_are_linearizable 10
lane_barrier_keeps_ctail lane_runs::lanes_on_3_and_4_replicas_are_linearizable 10
TABLE
echo "the linearizability suite catches ctail_skipped and the 4 lane mutants"
