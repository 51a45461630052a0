//! Sizes and limits of node replication, shrunk under loom.
//!
//! Users read them as associated constants of the builder that applies them
//! ([`NrBuilder::MAX_REPLICAS`](super::NrBuilder::MAX_REPLICAS) and its
//! neighbours). This module stays reachable at its old path,
//! `noderep::nr::config`, hidden from the docs, so that code written
//! against it still compiles.
//!
//! Under `cfg(loom)` the defaults shrink (a log of 4 entries, 2 thread slots
//! per replica) so the model checker can explore every interleaving; the
//! logic that uses them is unchanged.

/// Default log capacity in entries (raised to one entry per thread slot of
/// every replica when that is more, and rounded up to a power of two).
#[cfg(not(loom))]
pub const DEFAULT_LOG_CAPACITY: usize = 1 << 12;
/// Default log capacity in entries (loom: small enough to wrap in a model).
#[cfg(loom)]
pub const DEFAULT_LOG_CAPACITY: usize = 4;

/// Default number of thread slots per replica.
#[cfg(not(loom))]
pub const DEFAULT_THREADS_PER_REPLICA: usize = 64;
/// Default number of thread slots per replica (loom: two threads per replica).
#[cfg(loom)]
pub const DEFAULT_THREADS_PER_REPLICA: usize = 2;

/// Upper bound on thread slots per replica: the writer side of the
/// readers-writer lock scans one flag per slot, so very large replicas should
/// be split (more replicas) rather than grown.
pub const MAX_THREADS_PER_REPLICA: usize = 1024;

/// Largest log capacity accepted (2^28 entries: gigabytes of log, far past
/// any useful size; beyond it, allocation would abort the process).
pub const MAX_LOG_CAPACITY: usize = 1 << 28;

/// Largest number of replicas (or replica places) accepted.
pub const MAX_REPLICAS: usize = 4096;
