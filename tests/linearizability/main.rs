//! Linearizability of node replication, checked on recorded histories.
//!
//! * `checker` tests the checker itself (`tests/common/lincheck.rs`):
//!   hand-built histories it must accept or reject, a recorded pathological
//!   history it must give up on rather than hang, and a cross-check against
//!   a brute-force search on thousands of small random histories;
//! * `noderep_runs` records many random concurrent histories of a hash map
//!   and a stack replicated by noderep (1 replica, which has no log, and 2
//!   and 4 simulated replicas, every replica with threads, large and tiny
//!   logs), checks each one, and checks that the replicas agree at
//!   quiescence; its mutation check shows that
//!   the checker rejects a map whose reads are stale.
//!
//! Run: `cargo test --test linearizability -- --nocapture` to see the
//! figures (histories checked, their sizes, how much their operations
//! overlap, the checker's effort). `NODEREP_LIN_SCALE=40` multiplies the
//! number of histories for a soak run (use `--release`).
//! `scripts/lin_mutant.sh` rebuilds noderep with a protocol break (the
//! `ctail_skipped` mutant: reads stop waiting for the commit point) and
//! checks that these campaigns fail.

#[path = "../common/mod.rs"]
mod common;

mod checker;
mod lane_runs;
mod models;
mod noderep_runs;
