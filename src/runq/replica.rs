//! The backup's replica of a neighbour's run queue, with tombstones.
//!
//! The replica must end up describing the queue the owner had, whatever the
//! records' delivery did: late, duplicated or replayed records must never put
//! a removed task back. It is therefore a last-writer-wins map from task to
//! `(stamp, state)` ordered by `(epoch, seq)`: a removal is kept as a tombstone
//! `(task, epoch, seq)` that outranks every older enqueue of that task.
//!
//! # How it works
//!
//! [`Replica::apply`] keeps a record only if its stamp is newer than the one
//! the task already has; a tombstone (complete, remove, migrate, block) is an
//! entry in state `Gone`. Because each task's entry only ever moves to a larger
//! stamp, applying the same set of records in any order, any number of times,
//! gives the same replica (the property test checks this against a model).
//! Tombstones are collected when a `Collect(w)` record says every replica has
//! passed `w`; from then on records stamped `<= w` are refused outright (the
//! watermark stands in for the collected tombstones), except snapshot lines
//! that seed a new replica.
//!
//! # Trade-offs
//!
//! A hash map keyed by task id (fixed hasher, so runs are reproducible) costs
//! `O(1)` per record; the queue order is rebuilt (sorted by stamp) only at
//! takeover, which is rare. The
//! replica keeps running tasks too, so a takeover can re-queue the tasks that
//! were running on the failed core.
//!
//! # References
//!
//! Shapiro et al., "Conflict-free replicated data types", 2011 (LWW registers,
//! tombstones and their collection).

use crate::mutants;
use alloc::vec::Vec;
use core::hash::{BuildHasherDefault, Hasher};
use std::collections::HashMap;

/// A hash map with a fixed, cheap hasher: deterministic (loom replays need
/// that), and the keys are task ids the replica's owner chose, not attacker
/// input, so a keyed hash (SipHash) would only cost time on every record.
type Map = HashMap<TaskId, (Stamp, Replicated), BuildHasherDefault<IdHasher>>;

/// Multiplicative (Fibonacci) hashing of the 64-bit task id: one multiply,
/// good high bits (which the map's control bytes use).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

use super::ring::{Record, RecordKind, Stamp};
use super::task::TaskId;

/// A task's state in a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Replicated {
    /// On the queue.
    Queued,
    /// Running on the owner.
    Running,
    /// Left the queue (completed, removed, migrated, blocked): a tombstone.
    Gone,
}

/// What applying one record did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Apply {
    /// The record was newer and changed the replica.
    Applied,
    /// The task already had a newer (or equal) stamp: ignored.
    Older,
    /// An enqueue older than the task's tombstone: refused (no resurrection).
    Tombstoned,
    /// Older than the collection watermark: refused.
    BelowWatermark,
    /// Tombstones up to the stamp were collected.
    Collected(usize),
}

/// A replica of one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replica {
    entries: Map,
    watermark: Stamp,
    last: Stamp,
}

impl Replica {
    /// An empty replica.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Applies one record (see the module docs for the rules).
    pub(crate) fn apply(&mut self, r: Record) -> Apply {
        let state = match r.kind {
            RecordKind::Collect => {
                if r.stamp > self.watermark {
                    self.watermark = r.stamp;
                }
                let w = self.watermark;
                let before = self.entries.len();
                self.entries
                    .retain(|_, (s, st)| !(*st == Replicated::Gone && *s <= w));
                return Apply::Collected(before - self.entries.len());
            }
            RecordKind::Enqueue | RecordKind::SnapQueued => Replicated::Queued,
            RecordKind::Pick | RecordKind::SnapRunning => Replicated::Running,
            RecordKind::Complete | RecordKind::Remove | RecordKind::Migrate | RecordKind::Block => {
                Replicated::Gone
            }
        };
        let snapshot = matches!(r.kind, RecordKind::SnapQueued | RecordKind::SnapRunning);
        // Rule W (watermark): a record at or below the collection watermark
        // is refused; it stands in for the tombstones collected.
        // Mutant `watermark_ignored` drops rule W.
        if !mutants::skip!("watermark_ignored") && !snapshot && r.stamp <= self.watermark {
            return Apply::BelowWatermark;
        }
        if r.stamp > self.last {
            self.last = r.stamp;
        }
        match self.entries.get(&r.task) {
            // Rule L (last writer wins, by `(epoch, seq)`) and rule T (a
            // tombstone outranks every older record of its task).
            Some(&(s, st)) if Self::outranks(s, st, r.stamp, state) => {
                if st == Replicated::Gone && state != Replicated::Gone {
                    Apply::Tombstoned
                } else {
                    Apply::Older
                }
            }
            _ => {
                self.entries.insert(r.task, (r.stamp, state));
                Apply::Applied
            }
        }
    }

    /// Does the entry `(held, held_state)` outrank a record `(stamp, state)`?
    fn outranks(held: Stamp, held_state: Replicated, stamp: Stamp, state: Replicated) -> bool {
        // Mutant `stamp_seq_only`: stamps compared by seq alone, ignoring
        // the epoch (the new owner's seq restarts at 1).
        if mutants::skip!("stamp_seq_only") {
            return held.seq >= stamp.seq;
        }
        // Mutant `tombstone_ignored`: rule T dropped, any enqueue or pick
        // overrides a tombstone.
        let tombstone = held_state == Replicated::Gone && state != Replicated::Gone;
        if mutants::skip!("tombstone_ignored") && tombstone {
            return false;
        }
        // Mutant `replica_last_arrival_wins`: rule L dropped, whatever
        // arrives last wins.
        if mutants::skip!("replica_last_arrival_wins") {
            return false;
        }
        held >= stamp
    }

    /// Queued tasks in queue order (by the stamp of their enqueue).
    pub fn queued(&self) -> Vec<(TaskId, Stamp)> {
        let mut v: Vec<(TaskId, Stamp)> = self
            .entries
            .iter()
            .filter(|(_, (_, st))| *st == Replicated::Queued)
            .map(|(t, (s, _))| (*t, *s))
            .collect();
        v.sort_by_key(|&(t, s)| (s, t));
        v
    }

    /// Tasks the replica believes are running on the owner.
    pub fn running(&self) -> Vec<TaskId> {
        let mut v: Vec<TaskId> = self
            .entries
            .iter()
            .filter(|(_, (_, st))| *st == Replicated::Running)
            .map(|(t, _)| *t)
            .collect();
        v.sort_unstable();
        v
    }

    /// The replica's state of `t`, if it has an entry (tombstones included).
    #[cfg(any(test, feature = "fault-injection", loom))]
    pub fn get(&self, t: TaskId) -> Option<(Stamp, Replicated)> {
        self.entries.get(&t).copied()
    }

    /// Number of tombstones held.
    #[cfg(any(test, feature = "fault-injection", loom))]
    pub fn tombstones(&self) -> usize {
        self.entries
            .values()
            .filter(|(_, st)| *st == Replicated::Gone)
            .count()
    }

    /// The collection watermark.
    #[cfg(any(test, feature = "fault-injection", loom))]
    pub fn watermark(&self) -> Stamp {
        self.watermark
    }

    /// The newest stamp applied.
    #[cfg(any(test, feature = "fault-injection", loom))]
    pub fn last(&self) -> Stamp {
        self.last
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn r(slot: u32, kind: RecordKind, seq: u64) -> Record {
        Record {
            task: TaskId::new(slot, 1),
            kind,
            stamp: Stamp { epoch: 1, seq },
        }
    }

    #[test]
    fn late_enqueue_never_resurrects_a_removed_task() {
        let mut rep = Replica::new();
        assert_eq!(rep.apply(r(1, RecordKind::Remove, 5)), Apply::Applied);
        assert_eq!(rep.apply(r(1, RecordKind::Enqueue, 3)), Apply::Tombstoned);
        assert!(rep.queued().is_empty());
        // A newer enqueue (a legitimate re-wake) does win.
        assert_eq!(rep.apply(r(1, RecordKind::Enqueue, 7)), Apply::Applied);
        assert_eq!(rep.queued().len(), 1);
    }

    #[test]
    fn a_later_epoch_outranks_a_larger_seq_of_an_earlier_one() {
        let mut rep = Replica::new();
        let rec = |kind, epoch, seq| Record {
            task: TaskId::new(1, 1),
            kind,
            stamp: Stamp { epoch, seq },
        };
        // The new owner's seq restarts at 1: its removal (2, 1) is newer than
        // the old owner's enqueue (1, 9), whichever arrives first.
        assert_eq!(rep.apply(rec(RecordKind::Remove, 2, 1)), Apply::Applied);
        assert_eq!(rep.apply(rec(RecordKind::Enqueue, 1, 9)), Apply::Tombstoned);
        assert!(rep.queued().is_empty());
        let mut rep = Replica::new();
        assert_eq!(rep.apply(rec(RecordKind::Enqueue, 1, 9)), Apply::Applied);
        assert_eq!(rep.apply(rec(RecordKind::Pick, 2, 1)), Apply::Applied);
        assert_eq!(rep.running(), vec![TaskId::new(1, 1)]);
    }

    #[test]
    fn collection_drops_tombstones_and_raises_the_watermark() {
        let mut rep = Replica::new();
        rep.apply(r(1, RecordKind::Enqueue, 1));
        rep.apply(r(1, RecordKind::Complete, 2));
        rep.apply(r(2, RecordKind::Enqueue, 3));
        assert_eq!(rep.tombstones(), 1);
        let c = Record {
            task: TaskId::from_raw(0),
            kind: RecordKind::Collect,
            stamp: Stamp { epoch: 1, seq: 2 },
        };
        assert_eq!(rep.apply(c), Apply::Collected(1));
        assert_eq!(rep.tombstones(), 0);
        // The replayed enqueue is now refused by the watermark instead.
        assert_eq!(
            rep.apply(r(1, RecordKind::Enqueue, 1)),
            Apply::BelowWatermark
        );
        assert_eq!(
            rep.queued().iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![TaskId::new(2, 1)]
        );
    }
}
