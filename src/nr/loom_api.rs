//! Internals of node replication exposed to the loom models in `loom-tests/`
//! (built only with `--cfg loom`; not part of the public API).
//!
//! Most models drive [`NodeReplicated`](super::NodeReplicated) through its
//! public API. Two protocols are easier to check exhaustively on their own:
//! the shared log across a wrap-around (model 1) and the distributed
//! readers-writer lock (model 3). This module wraps exactly those two types
//! with thin `pub` forwarding methods; it adds no logic of its own.
//!
//! # How it works
//!
//! [`LoomLog`] is a [`Log`] of `u64` operations, [`LoomRwLock`] a
//! [`DistRwLock`]; every method forwards to the crate-internal method of the
//! same name.
//!
//! # Trade-offs
//!
//! A wrapper instead of making the internal types `pub`: the crate's
//! visibility stays as it is in normal builds.

use super::log::{Log, LogFull, Record};
use super::rwlock::{DistRwLock, ReadGuard, WriteGuard};

/// The shared operation log, with `u64` operations.
pub struct LoomLog(Log<u64>);

impl LoomLog {
    /// A log of `capacity` entries (rounded up to a power of two) replayed by
    /// `replicas` replicas.
    pub fn new(capacity: usize, replicas: usize) -> Self {
        Self(Log::new(capacity, replicas))
    }

    /// Reserves `n` positions; `Err(needed_head)` when the log is full.
    pub fn try_reserve(&self, n: usize) -> Result<usize, usize> {
        self.0
            .try_reserve(n)
            .map_err(|LogFull { needed_head }| needed_head)
    }

    /// Stores `op` at the reserved position `pos` and publishes it.
    pub fn write(&self, pos: usize, op: u64) {
        self.0.write(
            pos,
            Record {
                op,
                replica: 0,
                slot: 0,
            },
        );
    }

    /// The operation at `pos` if it is published.
    ///
    /// # Safety
    ///
    /// As [`Log::read`]: `pos` is at or above replica `r`'s applied position
    /// and below the tail, and only the caller (acting as replica `r`'s
    /// combiner) moves that position.
    pub unsafe fn read(&self, pos: usize) -> Option<u64> {
        // SAFETY: forwarded contract.
        unsafe { self.0.read(pos, |rec| rec.op) }
    }

    /// Records that replica `r` has applied every position below `pos`.
    pub fn set_ltail(&self, r: usize, pos: usize) {
        self.0.set_ltail(r, pos);
    }
}

/// The distributed readers-writer lock of one replica.
pub struct LoomRwLock(DistRwLock);

/// Read access held by one slot (released on drop).
pub struct LoomReadGuard<'a>(#[allow(dead_code)] ReadGuard<'a>);

/// Write access (released on drop).
pub struct LoomWriteGuard<'a>(#[allow(dead_code)] WriteGuard<'a>);

impl LoomRwLock {
    /// A lock with `slots` reader slots.
    pub fn new(slots: usize) -> Self {
        Self(DistRwLock::new(slots))
    }

    /// A lock with `slots` reader slots and asymmetric fences (fence-free
    /// readers, `membarrier` writer; both SeqCst fences under loom).
    pub fn new_asymmetric(slots: usize) -> Self {
        Self(DistRwLock::with_fences(slots, true))
    }

    /// Makes slot `s` visible to the writer (registration).
    pub fn note_slot(&self, s: usize) {
        self.0.note_slot(s);
    }

    /// Acquires the read side for slot `s`.
    pub fn read(&self, s: usize) -> LoomReadGuard<'_> {
        LoomReadGuard(self.0.read(s))
    }

    /// Acquires the write side (single writer: the caller plays the
    /// combiner).
    pub fn write(&self) -> LoomWriteGuard<'_> {
        LoomWriteGuard(self.0.write())
    }
}

/// Log positions that appenders waiting for room still claim in `nr`'s log
/// (0 at quiescence: every waiter leaves once served).
pub fn waiting_need<D>(nr: &super::NodeReplicated<D>) -> usize
where
    D: super::Dispatch + Send + Sync,
    D::WriteOperation: Send + Sync,
    D::Response: Send,
{
    nr.shared.log.waiting_need()
}
