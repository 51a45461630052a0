//! Linearizability of node replication, checked on recorded histories.
//!
//! * `checker` tests the checker itself (hand-built histories it must accept
//!   or reject, and a cross-check against brute force);
//! * `noderep_runs` records many random concurrent histories of a hash map
//!   and a stack replicated by noderep (2 and 4 replicas, large and tiny
//!   logs) and checks each one, then checks that the replicas agree;
//! * the mutation check there shows that the checker does catch a map whose
//!   reads are stale.
//!
//! Run: `cargo test --test linearizability -- --nocapture` to see the
//! figures (histories checked, their sizes, checker effort).

#[path = "../common/mod.rs"]
mod common;

mod checker;
mod models;
mod noderep_runs;
