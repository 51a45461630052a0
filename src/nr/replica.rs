//! One replica: a copy of the data structure, its flat combiner, its thread
//! slots and its readers-writer lock.
//!
//! # How it works
//!
//! The *combiner lock* gives one thread at a time the right to act for the
//! replica: collect the pending writes of its threads ([`Replica::collect`]),
//! and apply the log to its copy ([`Replica::exec`]). Whoever holds it — a
//! thread of this replica, or a thread of another replica that is helping a
//! lagging one — is "the combiner". `exec` applies log entries in order under
//! the write side of the [`DistRwLock`], publishes the new applied position
//! and commit point *before* releasing the write lock (so a reader that sees
//! the new state can never be followed by a reader elsewhere that sees an
//! older one), and only then hands responses to the waiting threads. An
//! instance with a single replica has no log:
//! [`combine_direct`](Replica::combine_direct) applies the combiner's own
//! operation and the pending slots straight from the slots in one round.
//!
//! A panic inside `dispatch_mut` (or the operation's `clone`) is caught
//! (with `std`): the instance is poisoned, the thread that issued the
//! operation gets the panic payload, and everyone else gets
//! [`ExecError::Poisoned`](super::ExecError::Poisoned). Without `std` a guard
//! poisons the instance while the panic unwinds.
//!
//! # Trade-offs
//!
//! Applying under one write lock per batch makes readers wait for the whole
//! batch; batches are bounded by the replica's thread slots, so the wait is
//! bounded too.

use super::context::{Context, Outcome};
use super::log::{Log, Record};
use super::page_slice::PageSlice;
use super::rwlock::{DistRwLock, ReadGuard, WriteGuard};
use super::Dispatch;
use crate::mutants;
use crate::sync::{
    wait_on, wake_all, AtomicBool, AtomicU32, AtomicUsize, Backoff, CachePadded, Ordering,
    UnsafeCell,
};
use alloc::vec::Vec;

/// The instance has been poisoned by a panicking operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoisonedInstance;

/// The thread slots of a replica of `D`.
type Slots<D> =
    PageSlice<CachePadded<Context<<D as Dispatch>::WriteOperation, <D as Dispatch>::Response>>>;

/// One replica of `D`. Page-aligned (and so a whole number of pages), like
/// its slots and reader flags ([`PageSlice`]): the builder moves these pages
/// to the replica's node, and no other replica's memory may share them.
#[repr(align(4096))]
pub(crate) struct Replica<D: Dispatch> {
    /// This replica's index (its position in the log's `ltails`).
    pub(crate) id: usize,
    /// The combiner lock: [`FREE`], [`LOCKED`], or [`LOCKED_SLEEPERS`] (a
    /// waiter sleeps on it and the holder must wake it on release). CAS by
    /// any thread that wants to combine or help.
    combiner: CachePadded<AtomicU32>,
    /// Threads of this replica waiting for its combiner lock (to combine or
    /// to catch it up for a read). Helpers leave a replica with waiters to
    /// them, or catch it up all the way. Relaxed counter: a hint only.
    pub(crate) waiting: AtomicUsize,
    /// Rounds run for this replica by its own threads; written under the
    /// combiner lock. With `seen_activity` (written by helpers, also under
    /// the lock) it tells a helper whether the replica's threads did
    /// anything since the last time it was helped, i.e. whether it is idle.
    pub(crate) activity: AtomicUsize,
    /// The `activity` value a helper saw when it last helped.
    pub(crate) seen_activity: AtomicUsize,
    /// Set by `remove_replica` (under the combiner lock); read by the slow
    /// paths of this replica's threads, which then fail.
    pub(crate) removed: AtomicBool,
    /// One slot per thread that may register with this replica.
    pub(crate) contexts: Slots<D>,
    /// Readers-writer lock over `data`.
    pub(crate) rwlock: DistRwLock,
    /// Number of registered threads (for least-loaded placement).
    pub(crate) registered: AtomicUsize,
    /// The replica's copy. Written under the write lock by the combiner;
    /// read under the read lock by the replica's threads.
    data: UnsafeCell<D>,
    /// Combiner-owned scratch: slots collected for the current batch.
    batch: UnsafeCell<Vec<usize>>,
    /// Rounds a writer spins for a busy combiner lock before using its slot
    /// (`NrBuilder::spin_for_combiner`); set before the replica is shared.
    pub(crate) combiner_spin: u32,
}

// SAFETY: `data` is read concurrently only through `&D` under the read lock
// (needs `D: Sync`) and mutated by whichever thread holds the combiner lock
// (needs `D: Send`); operations and responses move between the issuing thread
// and the combiner thread (need `Send`). The scratch vectors are touched only
// by the combiner-lock holder. Everything else is atomics.
unsafe impl<D> Sync for Replica<D>
where
    D: Dispatch + Send + Sync,
    D::WriteOperation: Send + Sync,
    D::Response: Send,
{
}
// SAFETY: the replica owns its `D`, operations and responses; moving it moves
// them, which their `Send` bounds allow.
unsafe impl<D> Send for Replica<D>
where
    D: Dispatch + Send,
    D::WriteOperation: Send,
    D::Response: Send,
{
}

/// What one [`Replica::combine_direct`] round did.
pub(crate) struct DirectRound<R> {
    /// The response to the combiner's own operation, if it passed one.
    pub own: Option<R>,
    /// Operations applied or attempted in the round, own one included
    /// (read by the tests' statistics).
    #[cfg_attr(not(test), allow(dead_code))]
    pub size: usize,
}

/// Combiner lock states.
const FREE: u32 = 0;
/// Held; nobody sleeps on it.
const LOCKED: u32 = 1;
/// Held, and some waiter sleeps on it (futex): the release wakes them.
const LOCKED_SLEEPERS: u32 = 2;

/// Proof of holding a replica's combiner lock; unlocks on drop.
pub(crate) struct CombinerGuard<'a> {
    lock: &'a AtomicU32,
}

impl Drop for CombinerGuard<'_> {
    fn drop(&mut self) {
        // Release: everything the combiner did (applied entries, advanced
        // ltail, delivered responses) happens before the next holder's
        // Acquire CAS in `try_combine` (and before a woken waiter's Acquire
        // CAS or Acquire poll of its slot).
        let order = mutants::ordering!("combiner_unlock_relaxed", Release, Relaxed);
        let prev = self.lock.swap(FREE, order);
        if prev == LOCKED_SLEEPERS {
            wake_all(self.lock);
        }
    }
}

impl<'a> CombinerGuard<'a> {
    /// MUTANT ONLY: for `help_unlocked` (loom model 5), a guard that proves
    /// nothing, for helping a replica without taking its combiner lock.
    pub(crate) fn forged(dummy: &'a AtomicU32) -> Self {
        Self { lock: dummy }
    }
}

/// Counts a thread of the replica as waiting for its combiner lock while
/// alive (see [`Replica::waiting`]).
pub(crate) struct WaitingGuard<'a>(&'a AtomicUsize);

impl<'a> WaitingGuard<'a> {
    pub(crate) fn new(counter: &'a AtomicUsize) -> Self {
        // Relaxed: a hint for helpers; nothing is published through it.
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        // Relaxed: as in `new`.
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Poisons the instance if dropped during a panic (the no-`std` path, and a
/// last line of defence with `std`); defused with `mem::forget` on success.
struct PoisonOnUnwind<'a>(&'a AtomicBool);

impl Drop for PoisonOnUnwind<'_> {
    fn drop(&mut self) {
        // Release: pairs with the Acquire loads of the poison flag.
        self.0.store(true, Ordering::Release);
    }
}

impl<D: Dispatch> Replica<D> {
    /// A replica holding `data` with `slots` thread slots.
    pub(crate) fn new(id: usize, data: D, slots: usize, asymmetric_reads: bool) -> Self {
        Self {
            id,
            combiner: CachePadded::new(AtomicU32::new(FREE)),
            waiting: AtomicUsize::new(0),
            activity: AtomicUsize::new(0),
            seen_activity: AtomicUsize::new(0),
            removed: AtomicBool::new(false),
            contexts: PageSlice::from_fn(slots, |_| CachePadded::new(Context::new())),
            rwlock: DistRwLock::with_fences(slots, asymmetric_reads),
            registered: AtomicUsize::new(0),
            data: UnsafeCell::new(data),
            batch: UnsafeCell::new(Vec::with_capacity(slots)),
            combiner_spin: 0,
        }
    }

    /// Tries to become this replica's combiner.
    #[inline]
    pub(crate) fn try_combine(&self) -> Option<CombinerGuard<'_>> {
        // Relaxed pre-check: avoids a cache-line-stealing CAS while another
        // thread combines (test-and-test-and-set).
        if self.combiner.load(Ordering::Relaxed) != FREE {
            return None;
        }
        // Acquire: pairs with the Release in `CombinerGuard::drop`; the
        // previous combiner's work is visible to us.
        self.combiner
            .compare_exchange(FREE, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| CombinerGuard {
                lock: &self.combiner,
            })
    }

    /// [`try_combine`](Self::try_combine), spinning up to `combiner_spin`
    /// short waits (one `spin_loop` hint each) while the lock is busy: the
    /// fast path of a writer on a lightly shared lock (a lane), which would
    /// rather take the lock a moment later than hand its operation over.
    #[cold]
    #[inline(never)]
    pub(crate) fn try_combine_spinning(&self) -> Option<CombinerGuard<'_>> {
        // Under loom a spin would only multiply the interleavings of the
        // try that follows it; the models check the protocol, not the wait.
        let rounds = if cfg!(loom) { 0 } else { self.combiner_spin };
        for _ in 0..rounds {
            core::hint::spin_loop();
            if let Some(guard) = self.try_combine() {
                return Some(guard);
            }
        }
        None
    }

    /// Waits until nobody holds the combiner lock: spinning first (with
    /// `backoff`), then asleep on the lock word (a futex on Linux), so that a
    /// waiter behind a descheduled combiner gives its CPU away until the
    /// combiner releases, instead of yielding in a loop.
    #[inline]
    pub(crate) fn wait_while_combining(&self, backoff: &mut Backoff) {
        // Yields before the first sleep: a sleeper costs the combiner a
        // futex wake on release, on its critical path (two threads on two
        // cores wrote 20-25% slower when waiters slept as soon as they
        // stopped spinning); a waiter behind a descheduled combiner still
        // gives its CPU away soon.
        const YIELDS_BEFORE_SLEEP: u32 = 32;
        let mut yields = 0u32;
        loop {
            // Relaxed: only a hint to stop waiting; the caller's next poll
            // of its slot (Acquire) or CAS of the lock (Acquire) synchronises.
            let state = self.combiner.load(Ordering::Relaxed);
            if state == FREE {
                return;
            }
            if !backoff.is_yielding() || yields < YIELDS_BEFORE_SLEEP {
                yields += u32::from(backoff.is_yielding());
                backoff.snooze();
                continue;
            }
            // Mark the lock so that its release wakes us, then sleep while it
            // stays marked. Relaxed: the mark only asks for a wake-up; the
            // release's swap reads it (RMWs on one word are totally ordered).
            if state == LOCKED_SLEEPERS
                || self
                    .combiner
                    .compare_exchange(
                        LOCKED,
                        LOCKED_SLEEPERS,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                wait_on(&self.combiner, LOCKED_SLEEPERS);
            }
        }
    }

    /// Whether some thread slot of this replica holds a pending operation.
    pub(crate) fn has_pending(&self) -> bool {
        let hwm = self.rwlock.slot_hwm();
        self.contexts[..hwm].iter().any(|ctx| ctx.is_pending())
    }

    /// Runs `f` on the replica's data, shared (the caller holds the combiner
    /// lock, so no write runs; readers may run alongside, which `&D` allows).
    pub(crate) fn with_data<R>(&self, _guard: &CombinerGuard<'_>, f: impl FnOnce(&D) -> R) -> R {
        self.data.with(|d| {
            // SAFETY: every mutation of `data` happens under the combiner
            // lock, which `_guard` proves we hold; concurrent readers only
            // take `&D` too.
            f(unsafe { &*d })
        })
    }

    /// Replaces the replica's data with `fresh` (a rebuild from another
    /// replica) and returns the old copy, to be dropped by the caller
    /// outside the locks.
    pub(crate) fn replace_data(&self, _guard: &CombinerGuard<'_>, fresh: D) -> D {
        let _write = self.rwlock.write();
        self.data.with_mut(|d| {
            // SAFETY: the combiner lock and the write lock exclude every
            // other access.
            core::mem::replace(unsafe { &mut *d }, fresh)
        })
    }

    /// Collects the slots with pending operations into the batch scratch and
    /// returns how many there are.
    pub(crate) fn collect(&self, _guard: &CombinerGuard<'_>) -> usize {
        let hwm = self.rwlock.slot_hwm();
        self.batch.with_mut(|b| {
            // SAFETY: the batch scratch is only touched by the combiner-lock
            // holder, which `_guard` proves we are.
            let batch = unsafe { &mut *b };
            batch.clear();
            batch.extend((0..hwm).filter(|&s| self.contexts[s].is_pending()));
            batch.len()
        })
    }

    /// Adds the combiner's own slot at the end of the collected batch (its
    /// operation, which never went through the slot, is passed to
    /// [`append_batch`](Self::append_batch)) and returns the batch size.
    pub(crate) fn push_own(&self, _guard: &CombinerGuard<'_>, own_slot: usize) -> usize {
        self.batch.with_mut(|b| {
            // SAFETY: combiner-only scratch, see `collect`.
            let batch = unsafe { &mut *b };
            batch.push(own_slot);
            batch.len()
        })
    }

    /// Moves the collected operations into the log at `start..start + n`.
    /// With `own`, the batch ends with the combiner's own slot
    /// ([`push_own`](Self::push_own)) and `own` is its operation.
    pub(crate) fn append_batch(
        &self,
        _guard: &CombinerGuard<'_>,
        log: &Log<D::WriteOperation>,
        start: usize,
        mut own: Option<D::WriteOperation>,
    ) {
        self.batch.with(|b| {
            // SAFETY: combiner-only scratch, see `collect`.
            let batch = unsafe { &*b };
            let last = batch.len().wrapping_sub(1);
            for (i, &slot) in batch.iter().enumerate() {
                let op = match own.take() {
                    Some(op) if i == last => op,
                    mine => {
                        own = mine;
                        // SAFETY: we hold the combiner lock and `collect`
                        // saw the slot pending; nobody else takes it.
                        unsafe { self.contexts[slot].take_op() }
                    }
                };
                log.write(
                    start + i,
                    Record {
                        op,
                        replica: self.id,
                        slot,
                    },
                );
            }
        });
    }

    /// One combining round without a log, for an instance with a single
    /// replica: nobody else replays the log there, so the combiner applies
    /// its own operation `own` (if any, moved in, not cloned) and then every
    /// pending operation of the replica's slots, straight from the slots,
    /// under one write lock, publishing each response as soon as it has it.
    ///
    /// Publishing before the write lock is released is safe here: with one
    /// replica there is no commit point to advance first, and a thread that
    /// returns and reads waits for the write lock like any other reader.
    /// The scan goes forward, so a thread that got its response and already
    /// submitted its next operation is not collected again in this round.
    ///
    /// Poisoning: a panic of `own` unwinds straight to the caller, which
    /// issued it; [`PoisonOnUnwind`] raises the flag on the way and the
    /// guards release the locks; the slots not yet scanned stay pending and
    /// their threads see the flag. A panic of a slot's operation is caught:
    /// its payload goes to its issuer, the round stops, the slots after it
    /// stay pending, and the flag is raised after publishing, as in
    /// [`exec`](Self::exec).
    #[inline]
    pub(crate) fn combine_direct(
        &self,
        _guard: &CombinerGuard<'_>,
        own: Option<D::WriteOperation>,
        poisoned: &AtomicBool,
    ) -> Result<DirectRound<D::Response>, PoisonedInstance> {
        // Acquire: pairs with the Release that poisons; a combiner that
        // stopped at a panic raised the flag before releasing the lock we
        // hold, so we never apply operations after a panicking one.
        // Mutant `exec_ignores_poison` (loom model 7) skips this check here
        // as in `exec`.
        if !mutants::skip!("exec_ignores_poison") && poisoned.load(Ordering::Acquire) {
            return Err(PoisonedInstance);
        }
        let mut size = 0;
        let mut panicked = false;
        let write = self.rwlock.write();
        let unwind_guard = PoisonOnUnwind(poisoned);
        let own = own.map(|op| {
            size += 1;
            self.apply_op(op)
        });
        let hwm = self.rwlock.slot_hwm();
        if self.contexts[..hwm].iter().any(|ctx| ctx.is_pending()) {
            let (applied, stop) = self.apply_pending(hwm);
            size += applied;
            panicked = stop;
        }
        core::mem::forget(unwind_guard);
        drop(write);
        if panicked {
            // After publishing, for the reasons given in `exec`.
            // Release: pairs with the Acquire loads of the flag. Mutant
            // `poison_flag_skipped` (loom model 7) forgets to poison.
            if !mutants::skip!("poison_flag_skipped") {
                poisoned.store(true, Ordering::Release);
            }
        }
        Ok(DirectRound { own, size })
    }

    /// Applies the log to this replica up to position `to` (waiting for
    /// entries still being written), then publishes the progress and hands
    /// out the responses of this replica's own operations.
    pub(crate) fn exec(
        &self,
        _guard: &CombinerGuard<'_>,
        log: &Log<D::WriteOperation>,
        to: usize,
        poisoned: &AtomicBool,
        batch: core::ops::Range<usize>,
        own: Option<(usize, usize)>,
    ) -> Result<Option<D::Response>, PoisonedInstance> {
        // A combiner that stopped at a panic has applied entries beyond this
        // replica's ltail without advancing it; applying them again would run
        // the panicking operation a second time and store a second outcome in
        // its issuer's slot while that thread may be taking the first (a data
        // race on the slot's result, found by loom model 7). That combiner
        // raised the flag before it released the combiner lock we now hold,
        // so the lock's Acquire makes the flag visible here.
        // Acquire: pairs with the Release that poisons. Mutant
        // `exec_ignores_poison` (loom model 7) skips this check.
        if !mutants::skip!("exec_ignores_poison") && poisoned.load(Ordering::Acquire) {
            return Err(PoisonedInstance);
        }
        let from = log.ltail(self.id);
        if from >= to {
            return Ok(None);
        }
        // `batch` is the range the lock holder (us) has just appended, if
        // any: a combiner applies its own batch before it releases the lock.
        // Results of its entries are stored in the slots now and published
        // after the commit point, below. Entries of this replica's origin
        // outside it were answered long ago (by the combiner that appended
        // them); a replica rebuilt from another one replays them again and
        // must not answer twice.
        // `own` is the combiner's own operation (its position and slot): its
        // response is handed straight back to the caller, never through the
        // slot (unless the round fails after applying it, see below).
        let mut answered = 0usize;
        let mut own_response = None;
        let mut outcome = Ok(());
        {
            let _write = self.rwlock.write();
            let unwind_guard = PoisonOnUnwind(poisoned);
            'entries: for pos in from..to {
                let mut backoff = Backoff::new();
                let applied = loop {
                    // SAFETY: `pos` is at or above our ltail and below the
                    // tail, and the ltail cannot move: we hold the combiner
                    // lock (the only writer of our ltail).
                    let got = unsafe { log.read(pos, |rec| self.apply(rec)) };
                    match got {
                        Some(applied) => break applied,
                        // Acquire: pairs with the Release that poisons.
                        None if poisoned.load(Ordering::Acquire) => {
                            outcome = Err(PoisonedInstance);
                            break 'entries;
                        }
                        None => backoff.snooze(),
                    }
                };
                match applied {
                    (origin, slot, Outcome::Response(r)) => {
                        if own.is_some_and(|(p, _)| p == pos) {
                            own_response = Some(r);
                        } else if origin == self.id && batch.contains(&pos) {
                            // SAFETY: own-origin entry of the batch we took
                            // (see above); its slot is TAKEN by us.
                            unsafe { self.contexts[slot].store_result(Outcome::Response(r)) };
                            answered += 1;
                        }
                    }
                    #[cfg(feature = "std")]
                    (origin, slot, Outcome::Panicked(p)) => {
                        // The poison flag is raised below, after the
                        // outcomes are published (see there). Mutant
                        // `panic_not_forwarded` (loom model 7) drops the
                        // payload instead of handing it to its thread.
                        if !mutants::skip!("panic_not_forwarded")
                            && origin == self.id
                            && batch.contains(&pos)
                        {
                            // SAFETY: as for a response above, or our own
                            // slot (the fast path), which only we touch; the
                            // caller's poll resumes the panic.
                            unsafe { self.contexts[slot].store_result(Outcome::Panicked(p)) };
                            answered += 1;
                        }
                        outcome = Err(PoisonedInstance);
                        break 'entries;
                    }
                }
            }
            core::mem::forget(unwind_guard);
            // Both before the write lock is released: see module docs.
            // Mutant `ctail_after_unlock` (loom model 2) publishes them after.
            if !mutants::skip!("ctail_after_unlock") && outcome.is_ok() {
                log.set_ltail(self.id, to);
                log.advance_ctail(to);
            }
        }
        if mutants::skip!("ctail_after_unlock") && outcome.is_ok() {
            log.set_ltail(self.id, to);
            log.advance_ctail(to);
        }
        if outcome.is_err() {
            // The round stops here: a response of our own operation, applied
            // before the panic, goes out through our slot with the others
            // (the caller polls it before it looks at the poison flag).
            if let (Some(r), Some((_, slot))) = (own_response.take(), own) {
                // SAFETY: our own slot (the fast path), which only we touch.
                unsafe { self.contexts[slot].store_result(Outcome::Response(r)) };
                answered += 1;
            }
        }
        if answered > 0 {
            self.batch.with(|b| {
                // SAFETY: combiner-only scratch, see `collect`.
                let batch = unsafe { &*b };
                debug_assert!(answered <= batch.len());
                for &slot in batch {
                    // SAFETY: every slot of the batch was taken by us in this
                    // round; `publish` hands over only those with a result.
                    unsafe { self.contexts[slot].publish() };
                }
            });
        }
        if outcome.is_err() {
            // Poison only after the batch's outcomes are published, the panic
            // payload included: a thread of this replica that sees the flag
            // then also sees its outcome (`execute_mut` loads the flag before
            // it polls), so the thread whose operation panicked gets the
            // panic, not `Poisoned`, and a write applied before the panic
            // gets its response (found by loom model 7: raising the flag
            // before publishing let the issuer see the flag first). A reader
            // that starts between the unlock above and this store sees what a
            // reader that passed its poison check just before the panic and
            // then waited for the write lock would see.
            // Release: pairs with the Acquire loads of the flag and orders
            // the `publish` stores above before them. Mutant
            // `poison_flag_skipped` (loom model 7) forgets to poison.
            if !mutants::skip!("poison_flag_skipped") {
                poisoned.store(true, Ordering::Release);
            }
        }
        outcome.map(|()| own_response)
    }

    /// The slot part of [`combine_direct`](Self::combine_direct), kept out
    /// of line (a thread alone never has pending slots): applies and
    /// publishes the pending operations of slots `..hwm` in slot order.
    /// Returns how many it applied or attempted and whether one panicked
    /// (it stops there). The caller holds the combiner and write locks.
    #[inline(never)]
    fn apply_pending(&self, hwm: usize) -> (usize, bool) {
        let mut applied = 0;
        for ctx in &self.contexts[..hwm] {
            if !ctx.is_pending() {
                continue;
            }
            applied += 1;
            // SAFETY: we hold the combiner lock and saw the slot pending;
            // nobody else takes it.
            let out = self.run(|| unsafe { ctx.take_op() });
            let stop = out.is_panic();
            // Mutant `panic_not_forwarded` (loom model 7) drops a panic
            // payload instead of handing it over.
            if mutants::skip!("panic_not_forwarded") && stop {
                return (applied, true);
            }
            // SAFETY: we took this slot's operation just now and publish
            // its outcome once.
            unsafe {
                ctx.store_result(out);
                ctx.publish();
            }
            if stop {
                return (applied, true);
            }
        }
        (applied, false)
    }

    /// Clones a logged operation and applies it to the replica.
    fn apply(&self, rec: &Record<D::WriteOperation>) -> (usize, usize, Outcome<D::Response>) {
        (rec.replica, rec.slot, self.run(|| rec.op.clone()))
    }

    /// Applies `op` to the replica. The caller holds the combiner lock and
    /// the write lock.
    #[inline(always)]
    fn apply_op(&self, op: D::WriteOperation) -> D::Response {
        self.data.with_mut(|d| {
            // SAFETY: the caller holds the write lock (no readers) and the
            // combiner lock (no other writer).
            unsafe { (*d).dispatch_mut(op) }
        })
    }

    /// Applies the operation that `op` produces to the replica, catching a
    /// panic of either (with `std`). The caller holds the combiner lock and
    /// the write lock.
    #[inline]
    fn run(&self, op: impl FnOnce() -> D::WriteOperation) -> Outcome<D::Response> {
        let run = || self.apply_op(op());
        #[cfg(feature = "std")]
        return match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok(r) => Outcome::Response(r),
            Err(p) => Outcome::Panicked(p),
        };
        #[cfg(not(feature = "std"))]
        return Outcome::Response(run());
    }

    /// Runs a read-only operation under the read lock of the slot whose flag
    /// (from `rwlock.reader_flag`) is `flag`.
    #[inline(always)]
    pub(crate) fn read<'a>(&self, flag: &AtomicBool, op: D::ReadOperation<'a>) -> D::Response
    where
        D: 'a,
    {
        let _read = self.rwlock.read_with(flag);
        self.data.with(|d| {
            // SAFETY: the read lock excludes the combiner's writes.
            unsafe { (*d).dispatch(op) }
        })
    }

    /// Runs `f` on the replica's data with no concurrent reader or writer.
    pub(crate) fn inspect_exclusive<R>(
        &self,
        _guard: &CombinerGuard<'_>,
        f: impl FnOnce(&D) -> R,
    ) -> R {
        let _write = self.rwlock.write();
        self.data.with(|d| {
            // SAFETY: the combiner lock and the write lock exclude every
            // other access.
            f(unsafe { &*d })
        })
    }

    /// Runs `f` on the replica's data while the caller holds this replica's
    /// combiner lock (`_guard`) and the write side of its `rwlock`
    /// (`_write`). Used by `nr::lanes`: an all-lane write on a single
    /// replica applies to every lane's shard under all their locks at once.
    pub(crate) fn with_data_mut<R>(
        &self,
        _guard: &CombinerGuard<'_>,
        _write: &WriteGuard<'_>,
        f: impl FnOnce(&mut D) -> R,
    ) -> R {
        self.data.with_mut(|d| {
            // SAFETY: the caller holds the combiner lock (no other writer)
            // and this replica's write lock (no reader).
            f(unsafe { &mut *d })
        })
    }

    /// Runs `f` on the replica's data while the caller holds a read guard of
    /// this replica's `rwlock` (`_read`, taken with `try_read`). Used by
    /// `nr::lanes`, whose all-lane reads hold the read side of every lane.
    pub(crate) fn with_data_read<R>(&self, _read: &ReadGuard<'_>, f: impl FnOnce(&D) -> R) -> R {
        self.data.with(|d| {
            // SAFETY: the caller holds this replica's read lock, which
            // excludes the combiner's writes.
            f(unsafe { &*d })
        })
    }

    /// Whether `D::snapshot` gives a copy (asked once, by the builder, before
    /// the replica is shared).
    pub(crate) fn probe_snapshot(&self) -> bool {
        self.data.with(|d| {
            // SAFETY: called by the builder before the replica is shared:
            // nobody else accesses it.
            unsafe { (*d).snapshot() }.is_some()
        })
    }

    /// Address of the replica's data (for NUMA placement checks).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn data_addr(&self) -> *const u8 {
        self.data.with(|d| d as *const u8)
    }

    /// The memory this replica owns apart from `D`'s own heap, as
    /// `(address, length in bytes)`: the replica (with `D` inline), its
    /// thread slots and its reader flags. The builder moves these pages to
    /// the replica's node.
    #[cfg(all(feature = "std", not(loom)))]
    pub(crate) fn owned_ranges(&self) -> [(usize, usize); 3] {
        let flags = self.contexts.len() * core::mem::size_of::<CachePadded<AtomicBool>>();
        [
            (self as *const Self as usize, core::mem::size_of::<Self>()),
            (
                self.contexts.as_ptr() as usize,
                core::mem::size_of_val(&*self.contexts),
            ),
            (
                self.rwlock.reader_flag(0) as *const AtomicBool as usize,
                flags,
            ),
        ]
    }
}
