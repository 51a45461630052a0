#!/usr/bin/env bash
# Shows that the emulated-NUMA guest tests catch wrong placement: with the
# `replicas_on_node0` mutant compiled in (the builder builds, and so first
# touches, every replica on node 0), tests/numa_guest.rs must FAIL in the
# 2-node guest, saying which replica is on the wrong node. Without the
# mutant, `scripts/numa-vm.sh 2` passes.
#   scripts/numa-vm-mutant.sh
set -euo pipefail
cd "$(dirname "$0")/.."
log=target/numa-vm/mutant.log
mkdir -p target/numa-vm
if NODEREP_MUTANT=replicas_on_node0 scripts/numa-vm.sh 2 >"$log" 2>&1; then
  echo "FAIL: the guest tests passed with every replica built on node 0 (log: $log)" >&2
  exit 1
fi
if ! grep -q "is not on node" "$log"; then
  echo "FAIL: the mutant run failed, but not on a placement check (log: $log):" >&2
  tail -20 "$log" >&2
  exit 1
fi
echo "ok: the guest tests reject the replicas_on_node0 mutant:"
grep -E "^round 0: replica|panicked|is not on node|test result" "$log" | head -6 | sed 's/^/    /'
