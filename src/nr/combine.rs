//! Flat combining across replicas: how a combiner turns its replica's
//! pending writes into log entries, keeps replicas up to date, makes room in
//! a full log, and parks and rebuilds idle replicas.
//!
//! # How it works
//!
//! [`Shared::combine`] is one round for replica `r`, run by the holder of its
//! combiner lock:
//!
//! 1. If `r` is parked ([`PARKED`] in its `ltail`), rebuild it first
//!    ([`Shared::wake`]): take the combiner lock of a live replica `s`, copy
//!    `s`'s data with [`Dispatch::snapshot`] and start `r` at `s`'s applied
//!    position. Holding `s`'s lock keeps `s`'s position — and hence the log's
//!    head — at or below that position until `r`'s own position is stored,
//!    so nothing `r` still has to replay is overwritten.
//! 2. If `r` is the only live replica (every other one is parked), nobody
//!    else replays the log: catch `r` up with what is left in it, then apply
//!    the batch straight from the slots ([`Replica::combine_direct`]), as a
//!    single-replica instance does. A replica that wakes takes `r`'s lock
//!    first, so it sees every such write in the copy it takes.
//! 3. Otherwise collect the pending slots, reserve log positions
//!    ([`Shared::reserve`]), move the operations into the log and apply the
//!    log up to the end of the batch ([`Replica::exec`]).
//!
//! **Full log.** An appender that finds the log full waits for room, and
//! everyone else leaves the room waiters need free (`log.rs`); every waiter
//! keeps catching up its own replica and makes room ([`Shared::make_room`]):
//! a lagging replica whose lock is free is helped (caught up a bounded
//! stretch) or, if its threads did nothing since it was last helped and the
//! structure can be copied, parked (O(1): it stops holding the log back and
//! is rebuilt when one of its threads comes back). A replica whose own
//! threads wait for its lock is *helped through* ([`Shared::help_through`]):
//! caught up to the tail and its pending writes appended and answered on
//! their behalf, so a helper that holds the lock those threads want serves
//! them instead of starving them (a helper that kept retaking the lock of a
//! replica whose thread was waiting for a CPU once starved it for seconds).
//!
//! # Trade-offs
//!
//! Parking trades a copy of the structure on the woken replica's first
//! operation (its latency: the cost of `snapshot`, about a millisecond for a
//! 100k-entry hash map) for writers elsewhere not paying for the idle
//! replica at all. Structures that cannot be copied keep the helping path.
//! Leaving room for waiters costs the fast path one load of a line that is
//! written only while the log is full.

use super::log::{LogFull, PARKED};
use super::replica::{CombinerGuard, PoisonedInstance, WaitingGuard};
use super::{Dispatch, ExecError, Shared};
use crate::mutants;
use crate::sync::{Backoff, Ordering};

/// Why a round stopped without serving its replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The instance is poisoned.
    Poisoned,
    /// The replica was removed (`remove_replica`).
    Removed,
}

impl From<PoisonedInstance> for Stop {
    fn from(_: PoisonedInstance) -> Self {
        Stop::Poisoned
    }
}

impl Stop {
    pub(crate) fn into_exec_error(self, replica: usize) -> ExecError {
        match self {
            Stop::Poisoned => ExecError::Poisoned,
            Stop::Removed => ExecError::ReplicaRemoved { replica },
        }
    }
}

impl<D> Shared<D>
where
    D: Dispatch + Send + Sync,
    D::WriteOperation: Send + Sync,
    D::Response: Send,
{
    /// Waits until replica `r` has applied the log up to `target` (and is
    /// not parked), applying it ourselves when its combiner lock is free.
    #[cold]
    #[inline(never)]
    pub(crate) fn sync_replica(&self, r: usize, target: usize) -> Result<(), ExecError> {
        let replica = &self.replicas[r];
        let mut backoff = Backoff::new();
        let mut waiting = None;
        while self.log.is_behind(r, target) {
            // Acquire: pairs with the Release that poisons.
            if self.poisoned.load(Ordering::Acquire) {
                return Err(ExecError::Poisoned);
            }
            match replica.try_combine() {
                Some(guard) => {
                    drop(waiting.take());
                    self.combine(r, &guard, target, None, true)
                        .map_err(|s| s.into_exec_error(r))?;
                }
                None => {
                    waiting.get_or_insert_with(|| WaitingGuard::new(&replica.waiting));
                    replica.wait_while_combining(&mut backoff);
                }
            }
        }
        Ok(())
    }

    /// One round of flat combining for replica `r` (see the module docs):
    /// collect its pending writes, append them, and apply the log up to the
    /// end of the batch (and at least up to `min_target`). `own` is the
    /// combiner's own slot and operation when it has not gone through the
    /// slot (the fast path of `execute_mut`); its response is returned
    /// (when it panicked, its outcome is left in the slot instead).
    /// `by_owner` is false when the caller is not one of `r`'s threads.
    pub(crate) fn combine(
        &self,
        r: usize,
        guard: &CombinerGuard<'_>,
        min_target: usize,
        own: Option<(usize, D::WriteOperation)>,
        by_owner: bool,
    ) -> Result<Option<D::Response>, Stop> {
        let replica = &self.replicas[r];
        if self.log.is_single() {
            debug_assert!(
                own.is_none(),
                "the single-replica fast path returns directly"
            );
            return self.combine_alone(0, guard, None).map_err(Stop::from);
        }
        // No collection after a panic: an operation taken by a combiner that
        // then stopped (or refused) because of the poison is never published,
        // and every such combiner saw or raised the flag before releasing the
        // lock we hold, so this check sees it.
        // Acquire: pairs with the Release that poisons. Mutant
        // `exec_ignores_poison` (loom model 7) drops this check and the one
        // in `Replica::exec`.
        if !mutants::skip!("exec_ignores_poison") && self.poisoned.load(Ordering::Acquire) {
            return Err(Stop::Poisoned);
        }
        if by_owner {
            // Relaxed: read and written only under `r`'s combiner lock.
            let a = replica.activity.load(Ordering::Relaxed);
            replica.activity.store(a.wrapping_add(1), Ordering::Relaxed);
        }
        // Relaxed: our ltail is written only under our lock, which we hold.
        if self.log.ltail(r) == PARKED {
            self.wake(r, guard)?;
        }
        // Direct mode: we are the only live replica. Acquire: pairs with the
        // Release decrement in `park`; the parked replica's last entries are
        // below the tail we load next, and we apply them first.
        if self.live.load(Ordering::Acquire) == 1 {
            let tail = self.log.tail();
            if self.log.ltail(r) < tail {
                replica.exec(guard, &self.log, tail, &self.poisoned, 0..0, None)?;
            }
            let round = replica.combine_direct(guard, own.map(|(_, op)| op), &self.poisoned)?;
            #[cfg(test)]
            {
                super::stats::Stats::bump(&self.stats.direct_rounds, 1);
                if round.size > 0 {
                    super::stats::Stats::bump(&self.stats.batches, 1);
                    super::stats::Stats::bump(&self.stats.combined_ops, round.size);
                }
            }
            return Ok(round.own);
        }
        let mut n = replica.collect(guard);
        let own_slot = own.as_ref().map(|(slot, _)| *slot);
        let own = own.map(|(slot, op)| {
            n = replica.push_own(guard, slot);
            op
        });
        let mut end = min_target;
        let mut batch = 0..0;
        if n > 0 {
            let start = self.reserve(r, guard, n)?;
            replica.append_batch(guard, &self.log, start, own);
            end = end.max(start + n);
            batch = start..start + n;
            #[cfg(test)]
            {
                super::stats::Stats::bump(&self.stats.batches, 1);
                super::stats::Stats::bump(&self.stats.combined_ops, n);
            }
        }
        // The combiner's own operation is the last of its batch; `exec` hands
        // its response straight back (a panic payload goes to our slot,
        // where the caller's poll resumes it).
        let own = own_slot.map(|slot| (batch.end.wrapping_sub(1), slot));
        Ok(replica.exec(guard, &self.log, end, &self.poisoned, batch, own)?)
    }

    /// Whether replica `r` (whose lock we hold) is the only live replica
    /// and has applied the whole log, so that a round may skip the log
    /// entirely: the inlined check of [`combine`](Self::combine)'s direct
    /// mode, for the fast path of `execute_mut`.
    #[inline(always)]
    pub(crate) fn runs_alone(&self, r: usize) -> bool {
        // Acquire: as in `combine` (pairs with the Release decrement in
        // `park`). Our ltail is written only under our lock; PARKED never
        // equals the tail.
        self.live.load(Ordering::Acquire) == 1 && self.log.ltail(r) == self.log.tail()
    }

    /// [`Replica::combine_direct`] on replica `r`, the only one serving
    /// (the single replica, or the only live one when
    /// [`runs_alone`](Self::runs_alone)); returns `own`'s outcome.
    #[inline]
    pub(crate) fn combine_alone(
        &self,
        r: usize,
        guard: &CombinerGuard<'_>,
        own: Option<D::WriteOperation>,
    ) -> Result<Option<D::Response>, PoisonedInstance> {
        let round = self.replicas[r].combine_direct(guard, own, &self.poisoned)?;
        #[cfg(test)]
        if !self.log.is_single() {
            super::stats::Stats::bump(&self.stats.direct_rounds, 1);
        }
        #[cfg(test)]
        if round.size > 0 {
            super::stats::Stats::bump(&self.stats.batches, 1);
            super::stats::Stats::bump(&self.stats.combined_ops, round.size);
        }
        Ok(round.own)
    }

    /// Rebuilds parked replica `r` (whose lock we hold) from a live one and
    /// marks it live again. See the module docs for why holding the source's
    /// lock makes this safe.
    #[cold]
    #[inline(never)]
    pub(crate) fn wake(&self, r: usize, guard: &CombinerGuard<'_>) -> Result<(), Stop> {
        let replica = &self.replicas[r];
        // Acquire: pairs with the Release store in `remove_replica`.
        // Mutant `removed_not_checked` (loom model 9) rebuilds it anyway.
        if !mutants::skip!("removed_not_checked") && replica.removed.load(Ordering::Acquire) {
            return Err(Stop::Removed);
        }
        let mut backoff = Backoff::new();
        loop {
            // Acquire: pairs with the Release that poisons.
            if self.poisoned.load(Ordering::Acquire) {
                return Err(Stop::Poisoned);
            }
            for (s, source) in self.replicas.iter().enumerate() {
                if s == r || self.log.ltail(s) == PARKED {
                    continue;
                }
                let Some(source_guard) = source.try_combine() else {
                    continue;
                };
                let at = self.log.ltail(s);
                if at == PARKED {
                    // Parked between our check and the lock: try another.
                    continue;
                }
                let copy = source.with_data(&source_guard, |d| {
                    #[cfg(feature = "std")]
                    return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.snapshot()));
                    #[cfg(not(feature = "std"))]
                    return Ok::<_, ()>(d.snapshot());
                });
                let fresh = match copy {
                    Ok(Some(fresh)) => fresh,
                    Ok(None) => {
                        // The builder only parks when snapshots work; a
                        // structure whose snapshot stopped working cannot be
                        // rebuilt, which we treat like a panic.
                        // Release: pairs with the Acquire loads of the flag.
                        self.poisoned.store(true, Ordering::Release);
                        return Err(Stop::Poisoned);
                    }
                    Err(_) => {
                        // Release: pairs with the Acquire loads of the flag.
                        self.poisoned.store(true, Ordering::Release);
                        return Err(Stop::Poisoned);
                    }
                };
                let old = replica.replace_data(guard, fresh);
                // Release: the new data (written under our write lock, which
                // readers acquire) and our position are published together;
                // an appender that sees `at` (Acquire in `advance_head`)
                // keeps every position from `at` on until we pass it. Mutant
                // `wake_after_unlock` (loom model 9) stores it only after the
                // source's lock is released, when the head may already have
                // moved past `at`.
                if !mutants::skip!("wake_after_unlock") {
                    self.log.set_ltail(r, at);
                }
                // AcqRel: pairs with the Acquire load and AcqRel CAS of the
                // parkers that decrement concurrently (`park`); all RMWs on
                // `live` are totally ordered. Readers need no more: `live`
                // is read under the locks of the replicas it counts (see
                // `combine`), and we hold `s`'s, whose release publishes it
                // to `s`'s next combiner.
                self.live.fetch_add(1, Ordering::AcqRel);
                drop(source_guard);
                if mutants::skip!("wake_after_unlock") {
                    self.log.set_ltail(r, at);
                }
                drop(old);
                #[cfg(test)]
                super::stats::Stats::bump(&self.stats.woken, 1);
                return Ok(());
            }
            backoff.snooze();
        }
    }

    /// Parks replica `q`, whose lock we hold: it stops holding back the log
    /// and will be rebuilt by [`wake`](Self::wake) when one of its threads
    /// comes back. Never parks the last live replica.
    pub(crate) fn park(&self, q: usize, _their_guard: &CombinerGuard<'_>) -> bool {
        // Acquire here and AcqRel in the CAS below: pair with the AcqRel
        // increment in `wake`, so the decrement is ordered with the wakers'
        // increments; the CAS loop keeps one replica live.
        let mut live = self.live.load(Ordering::Acquire);
        loop {
            if live <= 1 {
                return false;
            }
            match self.live.compare_exchange_weak(
                live,
                live - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => live = now,
            }
        }
        // Mutant `park_keeps_ltail` (loom model 9): the parked replica keeps
        // its old position, so its readers trust its stale data.
        if !mutants::skip!("park_keeps_ltail") {
            self.log.set_ltail(q, PARKED);
        }
        #[cfg(test)]
        super::stats::Stats::bump(&self.stats.parked, 1);
        true
    }

    /// Reserves `n` log positions for replica `r`'s combiner, leaving free
    /// the room that waiting appenders need. When that fails, waits for room
    /// itself, making room meanwhile.
    ///
    /// Progress argument: the log is full only while some live replica's
    /// applied position is below the needed head. That replica either has an
    /// active combiner (which applies the published entries it waits for and
    /// advances), or a free lock (which we take and advance, or park), or
    /// threads waiting for its lock (one of which takes it next). Every entry
    /// below the tail is published by its appender without waiting for
    /// anything, and every appender in line catches up its own replica on
    /// each turn, so the first in line eventually fits. (Also used by
    /// `nr::lanes` to append the leaves of an all-lane write.)
    pub(crate) fn reserve(
        &self,
        r: usize,
        guard: &CombinerGuard<'_>,
        n: usize,
    ) -> Result<usize, Stop> {
        match self.log.try_reserve_keeping(n, self.log.waiting_need()) {
            Ok(start) => Ok(start),
            Err(_) => self.reserve_waiting(r, guard, n),
        }
    }

    #[cold]
    #[inline(never)]
    fn reserve_waiting(
        &self,
        r: usize,
        guard: &CombinerGuard<'_>,
        n: usize,
    ) -> Result<usize, Stop> {
        #[cfg(test)]
        super::stats::Stats::bump(&self.stats.waited_for_room, 1);
        /// Stops counting us as waiting, however we leave.
        struct Leave<'a, T>(&'a super::log::Log<T>, usize);
        impl<T> Drop for Leave<'_, T> {
            fn drop(&mut self) {
                // Mutant `waiter_never_leaves` (loom model 8).
                if !mutants::skip!("waiter_never_leaves") {
                    self.0.leave_waiters(self.1);
                }
            }
        }
        self.log.join_waiters(n);
        let _leave = Leave(&self.log, n);
        let mut backoff = Backoff::new();
        loop {
            // Room for us and for every other waiter (`need` includes us).
            // Tried again right after making room, before yielding: the
            // room we made is ours to take now, while another waiter that
            // runs during our yield would take it and leave us short again.
            for attempt in 0..2 {
                let keep = self.log.waiting_need().saturating_sub(n);
                match self.log.try_reserve_keeping(n, keep) {
                    Ok(start) => return Ok(start),
                    Err(LogFull { needed_head }) if attempt == 0 => {
                        self.make_room(r, guard, needed_head, n)?
                    }
                    Err(_) => {}
                }
            }
            // Acquire: pairs with the Release that poisons.
            if self.poisoned.load(Ordering::Acquire) {
                return Err(Stop::Poisoned);
            }
            backoff.snooze();
        }
    }

    /// Moves every live replica towards `needed_head`: our own replica `r` to
    /// the tail, each lagging one by helping it (a bounded stretch), parking
    /// it (if idle and `D` can be copied), or leaving it to its waiting
    /// threads.
    fn make_room(
        &self,
        r: usize,
        guard: &CombinerGuard<'_>,
        needed_head: usize,
        n: usize,
    ) -> Result<(), Stop> {
        let tail = self.log.tail();
        // A lagging replica is helped only a bounded stretch past what the
        // batch needs, not all the way to the tail: the total work is the
        // same, but no single write pays for a whole log (4096 entries by
        // default, about 0.5 ms here).
        let help_to = tail.min(needed_head + help_chunk(self.log.capacity(), n));
        // Mutant `make_room_skips_own` (loom model 8): our replica, whose
        // lock we hold, is never caught up while we wait.
        if !mutants::skip!("make_room_skips_own") {
            self.replicas[r].exec(guard, &self.log, tail, &self.poisoned, 0..0, None)?;
        }
        for (q, lagging) in self.replicas.iter().enumerate() {
            let at = self.log.ltail(q);
            if q == r || at == PARKED || at >= needed_head {
                continue;
            }
            // Mutant `help_unlocked` (loom model 5): help without taking the
            // lagging replica's combiner lock.
            if mutants::skip!("help_unlocked") {
                let dummy = crate::sync::AtomicU32::new(1);
                let forged = CombinerGuard::forged(&dummy);
                lagging.exec(&forged, &self.log, help_to, &self.poisoned, 0..0, None)?;
                continue;
            }
            // Mutant `no_helping` (loom model 5): leave it lagging.
            if mutants::skip!("no_helping") {
                continue;
            }
            if let Some(their_guard) = lagging.try_combine() {
                // Relaxed: both activity counters are written under the lock
                // we hold.
                let activity = lagging.activity.load(Ordering::Relaxed);
                let idle = lagging.seen_activity.load(Ordering::Relaxed) == activity
                    && !lagging.has_pending();
                if self.log.ltail(q) == PARKED {
                    continue;
                }
                let can_park = !mutants::skip!("no_parking") && self.can_snapshot;
                if can_park && idle && self.park(q, &their_guard) {
                    continue;
                }
                // Relaxed: a hint (see `Replica::waiting`).
                let waited_for = lagging.waiting.load(Ordering::Relaxed) > 0;
                if waited_for || lagging.has_pending() {
                    // Its own threads wait for it: help them through instead
                    // of making them wait for the lock we hold (a helper
                    // that kept taking it starved them for seconds).
                    self.help_through(q, &their_guard, tail)?;
                } else {
                    lagging.exec(&their_guard, &self.log, help_to, &self.poisoned, 0..0, None)?;
                }
                // Relaxed: like `activity`, read and written only under the
                // lagging replica's combiner lock, which we hold.
                lagging.seen_activity.store(activity, Ordering::Relaxed);
                #[cfg(test)]
                super::stats::Stats::bump(&self.stats.helped, 1);
            }
        }
        Ok(())
    }
}

impl<D> Shared<D>
where
    D: Dispatch + Send + Sync,
    D::WriteOperation: Send + Sync,
    D::Response: Send,
{
    /// Serves replica `q`'s own waiting threads on their behalf (we hold its
    /// lock, so they cannot): catch it up to `tail`, which satisfies a
    /// reader waiting for a commit point it saw earlier, then append and
    /// apply its pending writes as one batch and publish their responses,
    /// if the log has room for them beyond what waiting appenders need (we
    /// are one of them: no waiting here). Mutant `help_not_through` only
    /// catches the replica up, leaving its writers waiting for the lock
    /// (`tests/starvation.rs` catches it: `scripts/lin_mutant.sh`-style,
    /// `NODEREP_MUTANT=help_not_through cargo test --test starvation`).
    fn help_through(&self, q: usize, guard: &CombinerGuard<'_>, tail: usize) -> Result<(), Stop> {
        let lagging = &self.replicas[q];
        lagging.exec(guard, &self.log, tail, &self.poisoned, 0..0, None)?;
        if mutants::skip!("help_not_through") {
            return Ok(());
        }
        let n = lagging.collect(guard);
        if n == 0 {
            return Ok(());
        }
        let Ok(start) = self.log.try_reserve_keeping(n, self.log.waiting_need()) else {
            return Ok(());
        };
        lagging.append_batch(guard, &self.log, start, None);
        lagging.exec(
            guard,
            &self.log,
            start + n,
            &self.poisoned,
            start..start + n,
            None,
        )?;
        #[cfg(test)]
        super::stats::Stats::bump(&self.stats.helped_through, n);
        Ok(())
    }
}

/// How far past the needed position a writer helps a lagging replica: an
/// eighth of the log, and at least the batch that has to fit.
fn help_chunk(capacity: usize, batch: usize) -> usize {
    (capacity / 8).max(batch)
}
