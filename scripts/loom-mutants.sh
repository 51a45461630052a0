#!/usr/bin/env bash
# Mutation check of the loom models: for every (model, mutant) pair in the
# table below, builds noderep with `--cfg noderep_mutant="NAME"` (a deliberate
# protocol break compiled in at that switch) and runs the model; the model
# must FAIL. Prints CAUGHT (with how: assertion, race, deadlock, livelock) or
# MISSED per pair and exits non-zero if any pair is missed.
#
#   scripts/loom-mutants.sh                 every mutant in the table
#   scripts/loom-mutants.sh NAME [NAME...]  only these mutants
#   scripts/loom-mutants.sh --matrix        also run every other model against
#                                           each mutant (extra catches are
#                                           reported, never required)
#
# Mutants run one after the other in one target dir (target/loom-mutants).
# The mutant reaches noderep through NODEREP_MUTANT (build.rs turns it into
# `--cfg noderep_mutant=...` for noderep alone), so each mutant rebuilds
# noderep and the models, not the dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

# model  mutant   (one line per expected catch; see loom-tests/README.md)
TABLE="
m1_log_wraparound      log_publish_relaxed
m1_log_wraparound      log_no_lap_flip
m1_log_wraparound      log_ltail_relaxed
m2_commit_point        ctail_skipped
m2_commit_point        read_skips_sync
m2_commit_point        ctail_after_unlock
m3_rwlock              rwlock_no_reader_fence
m3_rwlock              rwlock_no_writer_fence
m3_rwlock              rwlock_no_recheck
m3_rwlock              rwlock_unlock_relaxed
m3_rwlock              rwlock_writer_unlock_relaxed
m3_rwlock              rwlock_no_light_fence
m3_rwlock              rwlock_no_heavy_fence
m4_combiner            context_submit_relaxed
m4_combiner            context_finish_relaxed
m4_combiner            combiner_unlock_relaxed
m4_combiner            no_combine_retry
m5_helping             no_helping
m5_helping             help_unlocked
m6_registration        register_no_note_slot
m6_registration        token_release_relaxed
m7_poisoning           poison_flag_skipped
m7_poisoning           panic_not_forwarded
m7_poisoning           exec_ignores_poison
m8_full_log            make_room_skips_own
m8_full_log            waiter_never_leaves
m9_parking             wake_after_unlock
m9_parking             park_keeps_ltail
m9_parking             removed_not_checked
m10_lanes              lane_leaf_runs_ahead
runq                   renew_blind_store
runq                   finalize_blind
runq                   kill_check_then_store
runq                   takeover_blind_store
runq                   reclaim_blind_store
"

MODELS="$(ls loom-tests/tests/*.rs | xargs -n1 basename | sed 's/\.rs$//' | sort)"
matrix=0
if [ "${1:-}" = "--matrix" ]; then matrix=1; shift; fi
only="$*"

export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/loom-mutants}"
export RUSTFLAGS="${RUSTFLAGS:-} --cfg loom"
# Seconds a model may run before it counts as hung (also a catch: livelock).
limit="${LOOM_MUTANT_TIMEOUT:-300}"
logdir="$CARGO_TARGET_DIR/mutant-logs"
mkdir -p "$logdir"

# How a failed run failed, from its output.
classify() {
  if grep -q "Causality violation" "$1"; then echo "race"
  elif grep -q "deadlock; threads" "$1"; then echo "deadlock"
  elif grep -q "maximum number of branches" "$1"; then echo "livelock"
  elif grep -q "TIMEOUT" "$1"; then echo "hang"
  elif grep -q "panicked at" "$1"; then echo "assertion"
  else echo "failure"
  fi
}

# The panic message of a failed run (one line), for the report.
message() {
  grep -A1 "panicked at" "$1" | grep -v "panicked at\|^--" | head -n1 | cut -c1-110
}

mutants="$(echo "$TABLE" | awk 'NF==2 {print $2}' | awk '!seen[$0]++')"
if [ -n "$only" ]; then mutants="$only"; fi

missed=0; caught=0; extra=0
summary=""
for mutant in $mutants; do
  expected="$(echo "$TABLE" | awk -v m="$mutant" 'NF==2 && $2==m {print $1}')"
  if [ -z "$expected" ]; then echo "unknown mutant $mutant (not in the table)" >&2; exit 2; fi
  echo "=== mutant $mutant: building"
  NODEREP_MUTANT="$mutant" \
    cargo build --release -p loom-tests --tests -q 2>"$logdir/$mutant.build" || {
      echo "build failed, see $logdir/$mutant.build" >&2; exit 2; }
  if [ "$matrix" = 1 ]; then run_models="$MODELS"; else run_models="$expected"; fi
  for model in $run_models; do
    log="$logdir/$mutant.$model.log"
    rc=0
    NODEREP_MUTANT="$mutant" \
      timeout "$limit" cargo test --release -p loom-tests --test "$model" -q >"$log" 2>&1 || rc=$?
    [ "$rc" = 124 ] && echo "TIMEOUT after ${limit}s" >>"$log"
    is_expected=0; echo "$expected" | grep -qx "$model" && is_expected=1
    if [ "$rc" != 0 ]; then
      how="$(classify "$log")"
      line="CAUGHT  $model x $mutant ($how: $(message "$log"))"
      if [ "$is_expected" = 1 ]; then caught=$((caught + 1)); else extra=$((extra + 1)); line="$line [extra]"; fi
    elif [ "$is_expected" = 1 ]; then
      line="MISSED  $model x $mutant"; missed=$((missed + 1))
    else
      continue
    fi
    echo "$line"; summary="$summary$line"$'\n'
  done
done

echo
echo "=== summary (LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS)"
printf '%s' "$summary"
echo "expected pairs caught: $caught, missed: $missed; extra catches: $extra"
[ "$missed" = 0 ]
