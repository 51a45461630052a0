//! The only place where lanes reach into one lane's node-replication
//! internals (its log, its replicas, its helping `reserve`): everything else
//! in `lanes` goes through these few functions, so that a change of the
//! single-log machinery is adapted here.
//!
//! # How it works
//!
//! Each lane is a plain [`NodeReplicated`] of [`Shard`](super::shard::Shard)s.
//! Lanes need three things beyond its public API: append an entry *without*
//! combining or waiting for it to be applied ([`append_detached`]), apply a
//! replica's log up to an exact position without collecting new writes
//! ([`try_exec`]), and read or raise the commit point ([`ctail`],
//! [`advance_ctail`]).
//!
//! # Trade-offs
//!
//! Functions on the lane's internals rather than new public methods: the
//! single-log API stays as it is.

use super::super::log::Record;
use super::super::replica::Replica;
use super::super::{Dispatch, ExecError, NodeReplicated};
use crate::sync::{Backoff, Ordering};

/// The origin recorded for entries that no thread slot waits for (the
/// leaves of all-lane writes): no replica has this id, so `Replica::exec`
/// never stores their response in a slot.
const NO_ORIGIN: usize = usize::MAX;

/// Whether the lane has a single replica (no log at all).
#[inline]
pub(super) fn is_single<D: Dispatch>(nr: &NodeReplicated<D>) -> bool {
    nr.shared.log.is_single()
}

/// Replica `r` of the lane.
#[inline]
pub(super) fn replica<D: Dispatch>(nr: &NodeReplicated<D>, r: usize) -> &Replica<D> {
    &nr.shared.replicas[r]
}

/// How far replica `r` has applied the lane's log (Acquire, see `Log::ltail`).
#[inline]
pub(super) fn ltail<D: Dispatch>(nr: &NodeReplicated<D>, r: usize) -> usize {
    nr.shared.log.ltail(r)
}

/// The lane's commit point (Acquire, see `Log::ctail`).
#[inline]
pub(super) fn ctail<D: Dispatch>(nr: &NodeReplicated<D>) -> usize {
    nr.shared.log.ctail()
}

/// The next position the lane's log hands out (see `Log::tail`).
#[inline]
pub(super) fn tail<D: Dispatch>(nr: &NodeReplicated<D>) -> usize {
    nr.shared.log.tail()
}

/// Raises the lane's commit point to `pos` (see `Log::advance_ctail`).
#[inline]
pub(super) fn advance_ctail<D: Dispatch>(nr: &NodeReplicated<D>, pos: usize) {
    nr.shared.log.advance_ctail(pos);
}

/// Whether the lane itself is poisoned.
#[inline]
pub(super) fn lane_poisoned<D: Dispatch>(nr: &NodeReplicated<D>) -> bool {
    // Acquire: pairs with the Release that poisons the lane.
    nr.shared.poisoned.load(Ordering::Acquire)
}

/// TEST ONLY: poisons the lane alone, as a combiner of the lane does when
/// an operation panics, without raising the lanes' instance flag (the state
/// between a lane's poisoning and the failing call's return).
#[cfg(all(test, not(loom)))]
pub(super) fn poison_lane_only<D: Dispatch>(nr: &NodeReplicated<D>) {
    // Release: pairs with the Acquire loads of the lane's flag.
    nr.shared.poisoned.store(true, Ordering::Release);
}

impl<D> NodeReplicated<D>
where
    D: Dispatch + Send + Sync,
    D::WriteOperation: Send + Sync,
    D::Response: Send,
{
    /// Brings replica `r` of this lane up to position `to` (waiting for its
    /// combiner or acting as it, collecting its pending writes on the way),
    /// as a read does.
    pub(super) fn lane_sync(&self, r: usize, to: usize) -> Result<(), ExecError> {
        if self.shared.log.ltail(r) < to {
            self.shared.sync_replica(r, to)?;
        }
        Ok(())
    }
}

/// One attempt to apply this lane's log to replica `r` up to exactly `to`
/// (no new writes are collected, and nothing past `to` is applied): true if
/// the replica is there now (already, or we did it), false if its combiner
/// lock is taken.
pub(super) fn try_exec<D>(nr: &NodeReplicated<D>, r: usize, to: usize) -> bool
where
    D: Dispatch + Send + Sync,
    D::WriteOperation: Send + Sync,
    D::Response: Send,
{
    let shared = &*nr.shared;
    if shared.log.ltail(r) >= to {
        return true;
    }
    match shared.replicas[r].try_combine() {
        Some(guard) => {
            // An Err means poisoned; every caller checks the poison flags.
            let _ = shared.replicas[r].exec(&guard, &shared.log, to, &shared.poisoned, 0..0, None);
            shared.log.ltail(r) >= to
        }
        None => false,
    }
}

/// Appends one entry to the lane's log from replica `r` without waiting for
/// it to be applied anywhere: takes `r`'s combiner lock (making room in a
/// full log exactly as a combiner does: catching `r` up and helping lagging
/// replicas), reserves one position, builds the entry with `make(position)`
/// and publishes it. Returns the position. The entry's origin is
/// [`NO_ORIGIN`], so no slot receives its response.
pub(super) fn append_detached<D>(
    nr: &NodeReplicated<D>,
    r: usize,
    make: impl FnOnce(usize) -> D::WriteOperation,
) -> Result<usize, ExecError>
where
    D: Dispatch + Send + Sync,
    D::WriteOperation: Send + Sync,
    D::Response: Send,
{
    let shared = &*nr.shared;
    let rep = &shared.replicas[r];
    let mut backoff = Backoff::new();
    let guard = loop {
        if let Some(g) = rep.try_combine() {
            break g;
        }
        if lane_poisoned(nr) {
            return Err(ExecError::Poisoned);
        }
        backoff.snooze();
    };
    let pos = shared
        .reserve(r, &guard, 1)
        .map_err(|_| ExecError::Poisoned)?;
    shared.log.write(
        pos,
        Record {
            op: make(pos),
            replica: NO_ORIGIN,
            slot: 0,
        },
    );
    Ok(pos)
}
