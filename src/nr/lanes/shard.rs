//! One lane's share of a replica, and the all-lane barrier.
//!
//! # How it works
//!
//! A lane is an ordinary single-log instance whose replicas hold a
//! [`Shard`]: the user's structure for that lane, plus which replica and
//! lane it is. Its log holds [`LaneOp`]s: a single-lane write, or a *leaf*
//! of an all-lane write. Every lane of an all-lane write gets a leaf, all
//! pointing at one shared [`AllDesc`].
//!
//! When a lane's combiner on replica `r` reaches a leaf (inside
//! `dispatch_mut`, under that lane's combiner and write locks) it *arrives*
//! at the barrier of replica `r` for that write and may not go on: a leaf
//! must not let its lane run ahead of the other lanes of the same replica,
//! or a reader of this lane could see the all-lane write while a later
//! reader of another lane does not. The last lane to arrive raises every
//! lane's commit point past its leaf and releases the barrier; the others
//! wait for that, and while they wait they apply the other lanes' logs of
//! replica `r` up to exactly their leaves (taking those lanes' combiner
//! locks if free), so that a lane without active threads on `r` cannot
//! stall the barrier. After the release every lane applies the write to
//! its own shard (each shard is only ever touched by its own lane's lock
//! holder) and, on the issuer's replica, stores its response for the
//! issuer.
//!
//! Why this is linearizable and cannot deadlock:
//!
//! 1. All-lane writes are appended under one instance-wide lock, so their
//!    leaves appear in the same order in every lane. A lane waiting at the
//!    barrier of write `X` on replica `r` has passed every earlier all-lane
//!    write on `r`, so every lane of `r` has too (they were released), and
//!    the leaves it waits for are `X`'s: no cycle of waits.
//! 2. Every lane's write lock on `r` is held from before its arrival until
//!    it has applied `X`, and every commit point is raised before the
//!    barrier is released, so a reader (of any lane, on any replica) that
//!    starts after some reader saw `X` has a commit point past `X`'s leaf
//!    and waits until its replica has applied `X` too.
//! 3. A write placed after `X`'s leaf in its lane cannot complete before
//!    `X` is applied on its replica (its lane waits at the barrier), so no
//!    operation that `X` must precede completes first; one placed before
//!    the leaf is ordered before `X`.
//! 4. Helpers apply other lanes only up to the leaf they wait for, never
//!    past it, so a helper never arrives at a *later* barrier while holding
//!    a lane that the later barrier needs.
//!
//! A waiter that sees the instance poisoned panics (inside the lane's
//! `dispatch_mut`, where the lane's combiner catches it and stops): the
//! barrier can no longer complete.
//!
//! # Trade-offs
//!
//! An all-lane write costs one allocation (its descriptor), one log entry
//! per lane and a short stop of every lane on every replica; single-lane
//! operations pay nothing for the possibility (one enum tag).

use super::super::Dispatch;
use super::hooks;
use super::{LaneMap, LanesShared};
use crate::mutants;
use crate::sync::{Arc, AtomicBool, AtomicUsize, Backoff, Ordering, UnsafeCell};
use alloc::boxed::Box;

/// A leaf position not yet known (the appender has not reached that lane).
pub(super) const UNPLACED: usize = usize::MAX;

/// One lane's part of a replica: the user's structure for the lane.
pub(crate) struct Shard<D> {
    /// The user's structure (this lane's share of it).
    pub(super) data: D,
    /// The replica this shard belongs to.
    replica: usize,
    /// The lane this shard belongs to.
    lane: usize,
}

impl<D> Shard<D> {
    pub(super) fn new(data: D, replica: usize, lane: usize) -> Self {
        Self {
            data,
            replica,
            lane,
        }
    }
}

/// What a lane's log holds.
pub(crate) enum LaneOp<D: LaneMap> {
    /// A write that touches this lane only.
    One(D::WriteOperation),
    /// A leaf of an all-lane write.
    All(Arc<AllDesc<D>>),
}

impl<D: LaneMap> Clone for LaneOp<D> {
    fn clone(&self) -> Self {
        match self {
            LaneOp::One(op) => LaneOp::One(op.clone()),
            LaneOp::All(desc) => LaneOp::All(Arc::clone(desc)),
        }
    }
}

/// Barrier state of one all-lane write on one replica.
pub(super) struct ReplicaBarrier {
    /// Lanes of this replica that have reached their leaf. fetch_add by each
    /// lane's combiner on arrival.
    arrived: AtomicUsize,
    /// Set by the last arriver once every lane's commit point is past its
    /// leaf; read by the waiting lanes.
    released: AtomicBool,
}

/// An all-lane write, shared by its leaves.
pub(crate) struct AllDesc<D: LaneMap> {
    /// The operation, applied to every shard of every replica.
    op: D::WriteOperation,
    /// The replica of the issuing thread, whose lanes store their responses.
    pub(super) issuer: usize,
    /// The instance. Valid whenever a leaf is applied: leaves are only
    /// applied from calls on the instance (see `SAFETY` at its use).
    home: *const LanesShared<D>,
    /// Per lane: the leaf's position in that lane's log, [`UNPLACED`] until
    /// it is reserved. Written once by the appender (Release, before the
    /// leaf is published); read by the last arriver and by helpers.
    pub(super) leaves: Box<[AtomicUsize]>,
    /// Per replica: its barrier.
    barriers: Box<[ReplicaBarrier]>,
    /// Per lane: the response of the issuer's replica's shard. Written once
    /// by that lane's combiner on the issuer's replica (after the barrier);
    /// taken by the issuer after it saw that lane's applied position pass
    /// the leaf.
    responses: Box<[UnsafeCell<Option<D::Response>>]>,
}

// SAFETY: the descriptor is shared by the lanes' combiners on every replica.
// `op` is only cloned through `&` (needs `Sync`) and moved with the
// descriptor (`Send`); each `responses` cell is written by exactly one
// thread (the issuer replica's combiner of that lane, once) and read by the
// issuer after an Acquire that pairs with that combiner's Release of its
// applied position, so a response only moves between threads (`Send`);
// `home` is only dereferenced while the instance is alive (see its field
// docs) and the instance is `Sync` under the same bounds. Everything else is
// atomics.
unsafe impl<D: LaneMap> Send for AllDesc<D> {}
// SAFETY: as for `Send` above.
unsafe impl<D: LaneMap> Sync for AllDesc<D> {}

impl<D: LaneMap> AllDesc<D> {
    pub(super) fn new(
        op: D::WriteOperation,
        issuer: usize,
        home: &LanesShared<D>,
        lanes: usize,
        replicas: usize,
    ) -> Self {
        Self {
            op,
            issuer,
            home,
            leaves: (0..lanes).map(|_| AtomicUsize::new(UNPLACED)).collect(),
            barriers: (0..replicas)
                .map(|_| ReplicaBarrier {
                    arrived: AtomicUsize::new(0),
                    released: AtomicBool::new(false),
                })
                .collect(),
            responses: (0..lanes).map(|_| UnsafeCell::new(None)).collect(),
        }
    }

    /// Takes lane `lane`'s response on the issuer's replica.
    ///
    /// # Safety
    ///
    /// The caller is the issuer and has seen (Acquire) the issuer replica's
    /// applied position of that lane pass the leaf, and calls this once.
    pub(super) unsafe fn take_response(&self, lane: usize) -> Option<D::Response> {
        self.responses[lane].with_mut(|p| {
            // SAFETY: the writer is done (see the contract) and nobody else
            // touches the cell.
            unsafe { (*p).take() }
        })
    }
}

impl<D: LaneMap> Dispatch for Shard<D> {
    type ReadOperation<'a>
        = D::ReadOperation<'a>
    where
        Self: 'a;
    type WriteOperation = LaneOp<D>;
    /// `None` for the leaf of an all-lane write (its response goes to the
    /// descriptor), else `Some`.
    type Response = Option<D::Response>;

    #[inline(always)]
    fn dispatch<'a>(&self, op: Self::ReadOperation<'a>) -> Self::Response {
        Some(self.data.dispatch(op))
    }

    #[inline(always)]
    fn dispatch_mut(&mut self, op: LaneOp<D>) -> Self::Response {
        match op {
            LaneOp::One(op) => Some(self.data.dispatch_mut(op)),
            LaneOp::All(desc) => {
                arrive(&desc, self.replica, self.lane);
                let response = self.data.dispatch_mut(desc.op.clone());
                if self.replica == desc.issuer {
                    desc.responses[self.lane].with_mut(|p| {
                        // SAFETY: only this lane's combiner on the issuer's
                        // replica writes this cell, once; the issuer reads it
                        // after this lane's applied position passed the leaf
                        // (Release in `set_ltail`, after this store).
                        unsafe { *p = Some(response) }
                    });
                }
                None
            }
        }
    }
}

/// Lane `lane` of replica `r` has reached its leaf of `desc`: returns once
/// every lane of `r` has (module docs).
#[cold]
#[inline(never)]
fn arrive<D: LaneMap>(desc: &AllDesc<D>, r: usize, lane: usize) {
    // SAFETY: leaves are only applied by `Replica::exec`, which runs only
    // inside calls on the instance (through a `LaneReplicated` method or a
    // helper called from one), so `home` points to a live instance.
    let home = unsafe { &*desc.home };
    let lanes = home.lanes.len();
    let barrier = &desc.barriers[r];
    // AcqRel: Release passes on our arrival (and, transitively, the leaf
    // positions we acquired when reading our leaf) to the last arriver;
    // Acquire, for the last arriver, makes every other lane's arrival and
    // every leaf position visible (the increments form one release
    // sequence).
    let before = barrier.arrived.fetch_add(1, Ordering::AcqRel);
    if before + 1 == lanes {
        for (j, lane_nr) in home.lanes.iter().enumerate() {
            // Acquire: pairs with the appender's Release store; every leaf
            // is placed once every lane has arrived.
            let leaf = desc.leaves[j].load(Ordering::Acquire);
            debug_assert_ne!(leaf, UNPLACED, "every lane arrived at a placed leaf");
            if !mutants::skip!("lane_barrier_keeps_ctail") {
                hooks::advance_ctail(lane_nr, leaf + 1);
            }
        }
        // Release: our commit-point raises happen before any waiting lane
        // applies the write (Acquire below), hence before any reader sees it.
        barrier.released.store(true, Ordering::Release);
        return;
    }
    // Mutant `lane_leaf_runs_ahead` (loom model 10): apply the write to this
    // lane without waiting for the other lanes of the replica.
    if mutants::skip!("lane_leaf_runs_ahead") {
        return;
    }
    let mut backoff = Backoff::new();
    // Acquire: pairs with the Release store of the last arriver.
    while !barrier.released.load(Ordering::Acquire) {
        if home.any_poisoned() {
            // Caught by this lane's combiner, which stops there.
            panic!("noderep lanes: another lane was poisoned while an all-lane write waited for it; build a new instance");
        }
        for (j, lane_nr) in home.lanes.iter().enumerate() {
            if j == lane {
                continue;
            }
            // Acquire: pairs with the appender's Release store.
            let leaf = desc.leaves[j].load(Ordering::Acquire);
            if leaf != UNPLACED {
                // Up to the leaf and no further (module docs, point 4).
                hooks::try_exec(lane_nr, r, leaf + 1);
            }
        }
        backoff.snooze();
    }
}
