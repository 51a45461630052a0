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

# Lanes (src/nr/lanes): each mutant breaks one rule of the all-lane
# operations, and the named lane campaign must reject it with a
# non-linearizable history.
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
# histories here (NODEREP_LIN_SCALE; a caught mutant stops at its first
# non-linearizable history, within seconds).
while read -r mutant campaign; do
  if out=$(NODEREP_LIN_SCALE=10 NODEREP_MUTANT="$mutant" cargo test --test linearizability -- --exact "lane_runs::$campaign" 2>&1); then
    echo "FAIL: $campaign passed with the $mutant mutant" >&2
    exit 1
  fi
  if ! grep -q "NON-linearizable history" <<<"$out"; then
    echo "FAIL: $campaign failed with the $mutant mutant, but not by finding a non-linearizable history:" >&2
    echo "$out" | tail -20 >&2
    exit 1
  fi
  echo "ok: $campaign rejects the $mutant mutant"
done <<'TABLE'
lane_read_all_no_recheck lanes_on_2_replicas_are_linearizable
lane_read_all_lane_by_lane lanes_on_1_replica_are_linearizable
lane_write_all_lane_by_lane lanes_on_1_replica_are_linearizable
lane_barrier_keeps_ctail lanes_on_3_and_4_replicas_are_linearizable
TABLE
echo "the lane campaigns catch the 4 lane mutants"
