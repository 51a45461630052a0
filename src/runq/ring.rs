//! The replication stream from a queue's owner to its backup: a bounded
//! single-producer ring of `(task, kind, epoch, seq)` records whose tail word
//! carries the owner's epoch, so that closing it is the fence.
//!
//! The ring lives with the backup (it is the backup's memory), so a record in
//! it survives the owner's core. In synchronous mode an owner operation is
//! acknowledged only once its record is in the ring; the push is the commit.
//!
//! # How it works
//!
//! The tail word packs `closed:1 | epoch:24 | pos:38`. The owner
//! writes records into the free slots past the tail, then publishes them with
//! one CAS `(open, e, pos) -> (open, e, pos+n)`. A neighbour taking the queue
//! over CASes the tail to `(closed, e', pos)`: from that instant every push by
//! the old owner fails (it compares its epoch and the open bit), and the
//! records up to `pos` are exactly the ones the neighbour must apply. There is
//! no window in which a zombie can append after the fence. The backup drains
//! `[head, tail)` and publishes `head` so the owner can reuse slots and know
//! which records (and tombstones) the backup has passed.
//!
//! # Trade-offs
//!
//! Bounded: when the backup falls a ring behind, a synchronous owner gets
//! `Push::Full` and backs off (a frozen backup stalls its owner's writes
//! until the backup is fenced and replaced). Slots are pairs of atomics rather
//! than an `UnsafeCell` array: slightly slower, but no `unsafe` and loom checks
//! every access.

use crate::sync::{AtomicU64, CachePadded, Ordering};
use alloc::boxed::Box;
use alloc::vec::Vec;

use super::task::{TaskId, MASK24};

const CLOSED: u64 = 1 << 63;
const POS_BITS: u32 = 38;
const POS_MASK: u64 = (1 << POS_BITS) - 1;

/// What a record says happened to a task on the replicated queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum RecordKind {
    /// The task was put on the queue (spawn, wake, migration in, yield).
    Enqueue = 0,
    /// The task was picked and runs.
    Pick = 1,
    /// The task completed (a tombstone).
    Complete = 2,
    /// The task was removed before it ran: exit or kill (a tombstone).
    Remove = 3,
    /// The task left for another queue (a tombstone on this queue).
    Migrate = 4,
    /// The task blocked (it leaves the queue; a later wake re-enqueues it).
    Block = 5,
    /// Snapshot line: the task is queued, with its original `(epoch, seq)`.
    SnapQueued = 6,
    /// Snapshot line: the task is running, with its original `(epoch, seq)`.
    SnapRunning = 7,
    /// Tombstones up to `(epoch, seq)` may be collected: every replica has
    /// passed them, and older records are refused from now on.
    Collect = 8,
}

impl RecordKind {
    fn from_bits(b: u64) -> Self {
        match b {
            0 => Self::Enqueue,
            1 => Self::Pick,
            2 => Self::Complete,
            3 => Self::Remove,
            4 => Self::Migrate,
            5 => Self::Block,
            6 => Self::SnapQueued,
            7 => Self::SnapRunning,
            _ => Self::Collect,
        }
    }
}

/// `(epoch, seq)`: the total order of a queue's operations across owners.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Stamp {
    /// Owner epoch the operation ran in.
    pub epoch: u32,
    /// Position among that epoch's operations (from 1).
    pub seq: u64,
}

/// One replicated operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Record {
    /// The task (ignored by [`RecordKind::Collect`]).
    pub(crate) task: TaskId,
    /// What happened.
    pub(crate) kind: RecordKind,
    /// When, in the queue's order.
    pub(crate) stamp: Stamp,
}

impl Record {
    fn pack(self) -> (u64, u64) {
        let meta = (self.kind as u64) << 60
            | (u64::from(self.stamp.epoch) & MASK24) << 36
            | (self.stamp.seq & ((1 << 36) - 1));
        (self.task.to_raw(), meta)
    }

    fn unpack(task: u64, meta: u64) -> Self {
        Self {
            task: TaskId::from_raw(task),
            kind: RecordKind::from_bits(meta >> 60),
            stamp: Stamp {
                epoch: ((meta >> 36) & MASK24) as u32,
                seq: meta & ((1 << 36) - 1),
            },
        }
    }
}

/// What a push found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Push {
    /// Published; the last record sits at ring position `end - 1`.
    Pushed {
        /// Ring position just past the pushed records.
        end: u64,
    },
    /// Not enough free slots: the backup has not drained yet.
    Full,
    /// The ring was closed (a takeover, or its owner chose a new backup):
    /// the pusher is fenced.
    Closed,
}

/// The state of a ring as seen by its consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RingState {
    /// The owner may still push.
    Open,
    /// Closed by a takeover in `epoch`; nothing past the tail will come.
    Closed {
        /// The epoch that closed it.
        epoch: u32,
    },
}

/// A replication ring (one per owner epoch and backup).
///
/// `tail` is written by the owner (push) and by a taker or re-backup (close),
/// both by CAS; `head` is written only by the backup (drain) and read by the
/// owner; the slots are written by the owner past the tail and read by the
/// backup below it.
pub(crate) struct Ring {
    tail: CachePadded<AtomicU64>,
    head: CachePadded<AtomicU64>,
    /// The producer's last view of `head` (written and read by the owner
    /// only, on its own cache line): `head` itself, which the backup writes,
    /// is re-read only when this view says the ring is full, so an owner
    /// does not miss on the backup's cache line at every push.
    head_seen: CachePadded<AtomicU64>,
    slots: Box<[(AtomicU64, AtomicU64)]>,
    mask: u64,
}

impl Ring {
    /// An open ring for the owner of `epoch`, with `capacity` (a power of two) slots.
    /// An allocation failure is an error, never an abort.
    pub(crate) fn new(epoch: u32, capacity: usize) -> Result<Self, super::RunqError> {
        debug_assert!(capacity.is_power_of_two());
        let mut slots: Vec<(AtomicU64, AtomicU64)> = Vec::new();
        slots
            .try_reserve_exact(capacity)
            .map_err(|_| super::RunqError::OutOfMemory {
                what: "replication ring",
                bytes: capacity.saturating_mul(16),
            })?;
        slots.extend((0..capacity).map(|_| (AtomicU64::new(0), AtomicU64::new(0))));
        Ok(Self {
            tail: CachePadded::new(AtomicU64::new((u64::from(epoch) & MASK24) << POS_BITS)),
            head: CachePadded::new(AtomicU64::new(0)),
            head_seen: CachePadded::new(AtomicU64::new(0)),
            slots: slots.into_boxed_slice(),
            mask: capacity as u64 - 1,
        })
    }

    fn word_epoch(w: u64) -> u32 {
        ((w >> POS_BITS) & MASK24) as u32
    }

    /// Appends `recs` for the owner of `epoch`, all or nothing.
    pub(crate) fn push(&self, recs: &[Record], epoch: u32) -> Push {
        // Acquire: pairs with the AcqRel CAS in `close`; a closed ring is seen
        // as closed here or, at the latest, by the CAS below.
        let t = self.tail.load(Ordering::Acquire);
        if t & CLOSED != 0 || Self::word_epoch(t) != (epoch & MASK24 as u32) {
            return Push::Closed;
        }
        let pos = t & POS_MASK;
        let n = recs.len() as u64;
        if !self.room_for(pos, n) {
            return Push::Full;
        }
        for (i, r) in recs.iter().enumerate() {
            let (a, b) = r.pack();
            let slot = &self.slots[((pos + i as u64) & self.mask) as usize];
            // Relaxed: the slots are published by the Release CAS on `tail` below.
            slot.0.store(a, Ordering::Relaxed);
            slot.1.store(b, Ordering::Relaxed);
        }
        let next = (t & !POS_MASK) | ((pos + n) & POS_MASK);
        // AcqRel: Release publishes the slot stores to the backup's Acquire
        // load of `tail` in `drain`; the CAS fails if `close` got there first,
        // which is the fence: no record is appended after a takeover.
        match self
            .tail
            .compare_exchange(t, next, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Push::Pushed { end: pos + n },
            Err(_) => Push::Closed,
        }
    }

    /// Owner side: is there room for `n` more records? (Only the owner
    /// pushes, so room seen here stays until it pushes.)
    pub(crate) fn has_room(&self, n: u64) -> bool {
        // Acquire: pairs with the Release CAS of `tail` in `push` / `close`.
        let pos = self.tail.load(Ordering::Acquire) & POS_MASK;
        self.room_for(pos, n)
    }

    /// Producer side: room for `n` records past `pos`? Uses the cached view
    /// of `head` and re-reads `head` only when that view says no.
    fn room_for(&self, pos: u64, n: u64) -> bool {
        // Relaxed: written and read only by the producer (the owner thread).
        let seen = self.head_seen.load(Ordering::Relaxed);
        if pos + n - seen <= self.mask + 1 {
            // The view is older than `head`, so the slots it frees were
            // freed by a drain whose Release store we read earlier (below).
            return true;
        }
        // Acquire: pairs with the Release store of `head` in `drain`: the
        // backup has finished reading the slots we are about to overwrite.
        let head = self.head.load(Ordering::Acquire);
        // Relaxed: producer-private cache (see the field).
        self.head_seen.store(head, Ordering::Relaxed);
        pos + n - head <= self.mask + 1
    }

    /// True if the owner of `epoch` may still push (asynchronous mode's
    /// validation step).
    pub(crate) fn is_open_for(&self, epoch: u32) -> bool {
        // Acquire: pairs with the AcqRel CAS in `close`.
        let t = self.tail.load(Ordering::Acquire);
        t & CLOSED == 0 && Self::word_epoch(t) == (epoch & MASK24 as u32)
    }

    /// Fences the ring for epoch `new_epoch`; returns the final tail position.
    pub(crate) fn close(&self, new_epoch: u32) -> u64 {
        // Acquire: a first guess; the CAS below re-reads.
        let mut t = self.tail.load(Ordering::Acquire);
        loop {
            let next = CLOSED | (u64::from(new_epoch) & MASK24) << POS_BITS | (t & POS_MASK);
            // AcqRel: Acquire reads every push published before (their slots
            // are then visible to our drain); Release makes the close visible to
            // the owner's push CAS, which fails from now on.
            match self
                .tail
                .compare_exchange_weak(t, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return t & POS_MASK,
                Err(a) => t = a,
            }
        }
    }

    /// Backup side: passes every published record to `f`, frees their slots,
    /// and says whether more may come.
    pub(crate) fn drain(&self, mut f: impl FnMut(Record)) -> RingState {
        // Acquire: pairs with the Release CAS in `push` (slot contents) and in
        // `close`.
        let t = self.tail.load(Ordering::Acquire);
        let end = t & POS_MASK;
        // Relaxed: only this (consumer) thread writes `head`.
        let mut head = self.head.load(Ordering::Relaxed);
        while head < end {
            let slot = &self.slots[(head & self.mask) as usize];
            // Relaxed: ordered after the pusher's stores by the Acquire above.
            let r = Record::unpack(
                slot.0.load(Ordering::Relaxed),
                slot.1.load(Ordering::Relaxed),
            );
            f(r);
            head += 1;
        }
        // Release: the owner's Acquire load of `head` in `push` sees that we
        // are done reading these slots before it overwrites them.
        self.head.store(head, Ordering::Release);
        if t & CLOSED != 0 {
            RingState::Closed {
                epoch: Self::word_epoch(t),
            }
        } else {
            RingState::Open
        }
    }

    /// How far the backup has drained (ring position).
    pub(crate) fn drained(&self) -> u64 {
        // Acquire: pairs with the Release store in `drain`.
        self.head.load(Ordering::Acquire)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn rec(slot: u32, seq: u64) -> Record {
        Record {
            task: TaskId::new(slot, 1),
            kind: RecordKind::Enqueue,
            stamp: Stamp { epoch: 1, seq },
        }
    }

    #[test]
    fn records_round_trip_and_close_fences_pushes() {
        let r = Ring::new(1, 4).unwrap();
        assert_eq!(r.push(&[rec(1, 1), rec(2, 2)], 1), Push::Pushed { end: 2 });
        assert_eq!(r.push(&[rec(3, 3)], 2), Push::Closed, "wrong epoch");
        assert_eq!(r.push(&[rec(3, 3), rec(4, 4), rec(5, 5)], 1), Push::Full);
        let mut got = Vec::new();
        assert_eq!(r.drain(|x| got.push(x)), RingState::Open);
        assert_eq!(got, vec![rec(1, 1), rec(2, 2)]);
        assert_eq!(
            r.push(&[rec(3, 3), rec(4, 4), rec(5, 5)], 1),
            Push::Pushed { end: 5 }
        );
        assert_eq!(r.close(2), 5);
        assert_eq!(r.push(&[rec(6, 6)], 1), Push::Closed);
        got.clear();
        assert_eq!(r.drain(|x| got.push(x)), RingState::Closed { epoch: 2 });
        assert_eq!(got.len(), 3);
    }
}
