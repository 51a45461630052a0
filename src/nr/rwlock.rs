//! A distributed readers-writer lock: one cache-padded flag per reader.
//!
//! Readers of a replica vastly outnumber its one writer (the combiner), so
//! readers must not contend with each other. Each registered thread owns one
//! reader flag on its own cache line; a reader only writes its own line and
//! reads the writer's, so concurrent readers never bounce a line between
//! cores. The writer pays instead: it raises its flag and waits for every
//! reader flag to drop.
//!
//! # How it works
//!
//! Reader `s`: wait while the writer flag is up; raise flag `s`; full fence;
//! if the writer flag is now up, lower flag `s` and start over; else read.
//! Writer: raise the writer flag; full fence; wait for every reader flag (up
//! to the high-water mark of registered slots) to be down.
//!
//! This is Dekker's pattern: each side stores its flag and then loads the
//! other's, all in the single total order of sequentially consistent
//! operations, so at least one side sees the other's store and a reader and
//! the writer are never both inside. Natively the store is a SeqCst store
//! (one `xchg` on x86, much cheaper than `mfence` on AMD Zen) followed by
//! SeqCst loads; under loom, which models SeqCst *accesses* only as AcqRel
//! but models SeqCst *fences* exactly, the same step is a Relaxed store and a
//! SeqCst fence ([`crate::sync::store_then_fence`]). Both are correct in the
//! C11 model. The high-water mark is raised (SeqCst) at registration, before
//! the slot's first flag store, so the same argument makes the writer see it.
//!
//! Only the holder of the replica's combiner lock takes the write side, so
//! writers never race each other here.
//!
//! *Asymmetric fences* (`NrBuilder::read_mostly`): the reader's Dekker
//! step becomes a Relaxed store, a compiler fence and an Acquire load, and
//! the writer's becomes a Relaxed store followed by `membarrier` (a full
//! barrier on every CPU that runs a thread of the process), then the scan.
//! Either the barrier reaches the reader's CPU after the reader's load (then
//! the barrier drains the reader's flag store before the writer scans, and
//! the writer waits for it), or before it (then the load comes after the
//! writer's store and sees it). Reads then cost no fence at all; every write
//! round costs one `membarrier` call (see [`crate::sync::heavy_fence`]).
//!
//! # Trade-offs
//!
//! A write costs a scan of one line per registered slot (not per possible
//! slot); with the default 64 slots per replica that is at most 64 line
//! reads per batch, amortised over the batch. Readers cannot starve the
//! writer: new readers back off as soon as the writer flag is up.
//!
//! # References
//!
//! Calciu et al., ASPLOS 2017, section 4.3 (the distributed readers-writer
//! lock); Dekker's mutual exclusion via store-fence-load.

use super::page_slice::PageSlice;
use crate::mutants;
use crate::sync::{
    heavy_fence, light_fence, store_then_fence, AtomicBool, AtomicUsize, Backoff, CachePadded,
    Ordering, DEKKER_LOAD,
};

/// The readers-writer lock of one replica.
pub(crate) struct DistRwLock {
    /// Raised by the combiner while it applies a batch.
    writer: CachePadded<AtomicBool>,
    /// One flag per thread slot, each written only by its thread.
    readers: PageSlice<CachePadded<AtomicBool>>,
    /// One past the highest reader slot ever registered (never lowered).
    hwm: AtomicUsize,
    /// Readers use a compiler fence and the writer a process-wide barrier
    /// (`membarrier`) instead of a full fence on both sides (module docs).
    asymmetric: bool,
}

impl DistRwLock {
    /// A lock with `slots` reader slots and symmetric fences.
    #[cfg(any(test, loom))]
    pub(crate) fn new(slots: usize) -> Self {
        Self::with_fences(slots, false)
    }

    /// A lock with `slots` reader slots; with `asymmetric` (which the caller
    /// must have checked with [`crate::sync::asymmetric_fences`]), readers
    /// pay no fence and every write pays a process-wide barrier.
    pub(crate) fn with_fences(slots: usize, asymmetric: bool) -> Self {
        Self {
            writer: CachePadded::new(AtomicBool::new(false)),
            readers: PageSlice::from_fn(slots, |_| CachePadded::new(AtomicBool::new(false))),
            hwm: AtomicUsize::new(0),
            asymmetric,
        }
    }

    /// Whether readers skip the fence (see [`with_fences`](Self::with_fences)).
    pub(crate) fn is_asymmetric(&self) -> bool {
        self.asymmetric
    }

    /// Makes slot `s` visible to writers; call before the slot's first read.
    pub(crate) fn note_slot(&self, s: usize) {
        // SeqCst: takes part in the Dekker argument (module docs): it is
        // ordered before the slot's first flag store, so a writer that misses
        // that flag's store cannot miss this one either.
        self.hwm.fetch_max(s + 1, Ordering::SeqCst);
    }

    /// One past the highest slot ever registered.
    pub(crate) fn slot_hwm(&self) -> usize {
        // Acquire: pairs with the SeqCst fetch_max in `note_slot`; a scan
        // that sees a raised mark also sees what the registering thread did
        // before it.
        self.hwm.load(Ordering::Acquire)
    }

    /// Acquires the read side for slot `s`; released when the guard drops.
    #[inline]
    #[cfg(any(test, loom))]
    pub(crate) fn read(&self, s: usize) -> ReadGuard<'_> {
        self.read_with(&self.readers[s])
    }

    /// Reader slot `s`'s flag, for callers that cache it (thread tokens).
    pub(crate) fn reader_flag(&self, s: usize) -> &AtomicBool {
        &self.readers[s]
    }

    /// [`read`](Self::read) with the slot's flag from
    /// [`reader_flag`](Self::reader_flag); `flag` must belong to this lock.
    #[inline(always)]
    pub(crate) fn read_with<'a>(&'a self, flag: &'a AtomicBool) -> ReadGuard<'a> {
        match self.try_read(flag) {
            Some(guard) => guard,
            None => self.read_contended(flag),
        }
    }

    /// The waiting part of [`read_with`](Self::read_with), kept out of line
    /// so that the uncontended read stays small enough to inline.
    #[cold]
    #[inline(never)]
    fn read_contended<'a>(&'a self, flag: &'a AtomicBool) -> ReadGuard<'a> {
        let mut backoff = Backoff::new();
        loop {
            backoff.snooze();
            if let Some(guard) = self.try_read(flag) {
                return guard;
            }
        }
    }

    /// One attempt at the read side: `None` if a writer is (or may be)
    /// inside, with our flag down again. `flag` must belong to this lock.
    /// (Also used by `nr::lanes`, whose all-lane reads hold several locks
    /// and must never block while holding one.)
    #[inline(always)]
    pub(crate) fn try_read<'a>(&'a self, flag: &'a AtomicBool) -> Option<ReadGuard<'a>> {
        // Acquire: pairs with the Release in `WriteGuard::drop`, so a
        // reader that sees the writer gone sees its writes.
        if self.writer.load(Ordering::Acquire) {
            return None;
        }
        if self.asymmetric {
            // Asymmetric Dekker step: store our flag (Relaxed: the writer's
            // process-wide barrier makes it visible before the writer scans,
            // or our load below sees the writer's flag), then a compiler
            // fence, then the Acquire load of the writer flag (pairs with
            // the Release in `WriteGuard::drop`).
            flag.store(true, Ordering::Relaxed);
            // Mutant `rwlock_no_light_fence` (loom model 3, asymmetric
            // variant) drops it.
            if !mutants::skip!("rwlock_no_light_fence") {
                light_fence();
            }
            if !self.writer.load(Ordering::Acquire) {
                return Some(ReadGuard { flag });
            }
        } else {
            // Dekker step: store our flag, then (SeqCst / fence) check the
            // writer; pairs with the same step in `write`. Mutant
            // `rwlock_no_reader_fence` (loom model 3) stores without it.
            if mutants::skip!("rwlock_no_reader_fence") {
                flag.store(true, Ordering::Relaxed);
            } else {
                store_then_fence(flag, true);
            }
            // DEKKER_LOAD (SeqCst natively, Acquire after the loom fence):
            // Acquire also pairs with the Release in `WriteGuard::drop`.
            // Mutant `rwlock_no_recheck` (loom model 3) enters without
            // looking again.
            if mutants::skip!("rwlock_no_recheck") || !self.writer.load(DEKKER_LOAD) {
                return Some(ReadGuard { flag });
            }
        }
        // Release: our earlier reads are done (none happened yet); pairs
        // with the writer's load of our flag in its scan (`write`).
        flag.store(false, Ordering::Release);
        None
    }

    /// Acquires the write side. The caller must hold the replica's combiner
    /// lock (single writer); released when the guard drops.
    #[inline]
    pub(crate) fn write(&self) -> WriteGuard<'_> {
        // Dekker step: store the writer flag, then (SeqCst / fence) scan the
        // readers; pairs with the same step in `read`. Mutant
        // `rwlock_no_writer_fence` (loom model 3): a plain store, so the
        // reader scan may be ordered before it.
        if mutants::skip!("rwlock_no_writer_fence") {
            self.writer.store(true, Ordering::Relaxed);
        } else if self.asymmetric {
            // Relaxed: the barrier that follows orders it before our scan
            // and before the scan-side loads of every reader (module docs).
            self.writer.store(true, Ordering::Relaxed);
            // Mutant `rwlock_no_heavy_fence` (loom model 3, asymmetric
            // variant) drops it.
            if !mutants::skip!("rwlock_no_heavy_fence") {
                heavy_fence();
            }
        } else {
            store_then_fence(&self.writer, true);
        }
        let hwm = self.hwm.load(DEKKER_LOAD);
        for flag in &self.readers[..hwm] {
            let mut backoff = Backoff::new();
            // DEKKER_LOAD (at least Acquire): pairs with the Release in
            // `ReadGuard::drop`; the reader's reads happen before our writes.
            while flag.load(DEKKER_LOAD) {
                backoff.snooze();
            }
        }
        WriteGuard { lock: self }
    }
}

/// Read access to a replica, held by one thread slot.
pub(crate) struct ReadGuard<'a> {
    flag: &'a AtomicBool,
}

impl Drop for ReadGuard<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        // Release: our reads of the replica happen before the next writer's
        // writes; pairs with the Acquire scan in `write`.
        let order = mutants::ordering!("rwlock_unlock_relaxed", Release, Relaxed);
        self.flag.store(false, order);
    }
}

/// Write access to a replica, held by its combiner.
pub(crate) struct WriteGuard<'a> {
    lock: &'a DistRwLock,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        // Release: the batch we applied happens before any reader that sees
        // the flag down (Acquire in `read`).
        let order = mutants::ordering!("rwlock_writer_unlock_relaxed", Release, Relaxed);
        self.lock.writer.store(false, order);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sync::{Arc, AtomicU64};

    #[test]
    fn readers_share_and_writer_waits_for_them() {
        let lock = DistRwLock::new(4);
        lock.note_slot(0);
        lock.note_slot(1);
        let r0 = lock.read(0);
        let r1 = lock.read(1);
        assert_eq!(lock.slot_hwm(), 2);
        drop(r0);
        drop(r1);
        let w = lock.write();
        drop(w);
        let _r = lock.read(1);
    }

    /// A writer keeps two words equal; readers must never see them differ.
    #[test]
    fn readers_never_see_a_half_applied_write() {
        half_applied_writes_stay_invisible(false);
    }

    /// The same with fence-free readers and a `membarrier` writer.
    #[test]
    fn fence_free_readers_never_see_a_half_applied_write() {
        let available = crate::sync::asymmetric_fences();
        assert_eq!(
            available,
            cfg!(target_os = "linux"),
            "membarrier on Linux 4.14+"
        );
        if available {
            half_applied_writes_stay_invisible(true);
        }
    }

    fn half_applied_writes_stay_invisible(asymmetric: bool) {
        struct Pair {
            lock: DistRwLock,
            a: AtomicU64,
            b: AtomicU64,
        }
        let p = Arc::new(Pair {
            lock: DistRwLock::with_fences(3, asymmetric),
            a: AtomicU64::new(0),
            b: AtomicU64::new(0),
        });
        for s in 0..3 {
            p.lock.note_slot(s);
        }
        let readers: Vec<_> = (1..3)
            .map(|s| {
                let p = Arc::clone(&p);
                std::thread::spawn(move || {
                    let mut torn = 0;
                    for _ in 0..20_000 {
                        let _g = p.lock.read(s);
                        let a = p.a.load(Ordering::Relaxed);
                        std::hint::spin_loop();
                        let b = p.b.load(Ordering::Relaxed);
                        if a != b {
                            torn += 1;
                        }
                    }
                    torn
                })
            })
            .collect();
        for i in 1..=5_000u64 {
            let _w = p.lock.write();
            p.a.store(i, Ordering::Relaxed);
            std::hint::spin_loop();
            p.b.store(i, Ordering::Relaxed);
        }
        for r in readers {
            assert_eq!(r.join().unwrap(), 0);
        }
        assert_eq!(p.a.load(Ordering::Relaxed), 5_000);
    }
}
