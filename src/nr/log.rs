//! The shared operation log: a fixed-capacity circular buffer of write
//! operations that every replica replays in the same order.
//!
//! # How it works
//!
//! Log positions are unbounded logical indices (`usize`, which does not wrap
//! in practice); position `i` lives in slot `i % capacity`. Four kinds of
//! counters describe the log:
//!
//! * `tail` — the next position to hand out. Combiners reserve a whole batch
//!   with one compare-and-swap on it ([`Log::try_reserve`]).
//! * `ctail` — the commit point: the highest position some replica has fully
//!   applied. A read waits until its replica has applied up to the `ctail` it
//!   observed, which makes reads linearizable.
//! * `ltails[r]` — how far replica `r` has applied the log.
//! * `head` — a cached minimum of the `ltails`: slots below it are free.
//!
//! A replica may be *parked* ([`PARKED`] in its `ltail`): it no longer holds
//! back the log (the minimum skips it), and before it serves again it is
//! rebuilt from an up-to-date replica (`nr::combine`). Its readers notice
//! without an extra load: [`Log::is_behind`] treats `PARKED` as behind any
//! commit point.
//!
//! Appenders that find the log full *wait for room* ([`Log::join_waiters`]):
//! the sum of their batch sizes is kept, and every appender — a new arrival
//! or another waiter — reserves only if that much room stays free after its
//! reservation ([`Log::try_reserve_keeping`]). Room that a waiting writer
//! made is therefore never taken from it by later appends: once the free
//! room covers every waiter, each of them fits. Nobody waits for a
//! particular thread to take its turn (a FIFO of tickets would: a
//! descheduled first-in-line stalls everyone behind it). The waiters are at
//! most one combiner per replica, whose batches fit in the log together
//! (the builder checks), so the wait is bounded. The common case, a log with
//! room and nobody waiting, pays one load of a line that is not written.
//!
//! Each entry has an *alive bit* whose meaning flips on every lap of the
//! buffer: position `i` is published when the bit equals `lap_parity(i)`
//! (true on even laps, false on odd ones). A writer stores the entry, then
//! sets the bit with Release; a replica that sees the right bit with Acquire
//! sees the whole entry. Because a slot is only reused once every replica has
//! passed it, a stale bit from the previous lap can never be mistaken for a
//! fresh one, and no per-lap reset pass is needed.
//!
//! This module knows nothing about replicas, combiners or data structures: a
//! full log is reported as [`LogFull`] and the caller decides how to make room.
//!
//! # Trade-offs
//!
//! A fixed capacity keeps allocation out of the write path and bounds memory,
//! at the price of writers having to wait (and help) when the slowest replica
//! is a whole log behind. Entries are not cache-padded: consecutive entries of
//! one batch are written by one combiner, so padding would waste memory
//! without removing contention.
//!
//! # References
//!
//! Calciu, Sen, Balakrishnan, Aguilera: "Black-box Concurrent Data Structures
//! for NUMA Architectures", ASPLOS 2017 (section 4, the shared log).

use crate::mutants;
use crate::sync::{AtomicBool, AtomicUsize, CachePadded, Ordering, UnsafeCell};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::mem::MaybeUninit;

/// One logged write operation and where it came from.
#[derive(Debug)]
pub(crate) struct Record<T> {
    /// The operation.
    pub op: T,
    /// The replica whose combiner appended it.
    pub replica: usize,
    /// The thread slot (in that replica) that issued it.
    pub slot: usize,
}

/// One slot of the circular buffer.
struct Entry<T> {
    /// Written by the combiner that reserved the position, before it sets
    /// `alive`; read (cloned) by every replica after it sees `alive`.
    record: UnsafeCell<MaybeUninit<Record<T>>>,
    /// Lap-parity publication bit (see the module docs). Written once per lap
    /// by the appender (Release), read by replicas (Acquire).
    alive: AtomicBool,
}

/// The `ltail` of a parked replica: it no longer holds back the log, and its
/// readers and writers must rebuild it before using it.
pub(crate) const PARKED: usize = usize::MAX;

/// The log has no room for the batch until the slowest replica advances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogFull {
    /// The position every replica must have passed for the batch to fit.
    pub needed_head: usize,
}

/// The shared operation log.
pub(crate) struct Log<T> {
    entries: Box<[Entry<T>]>,
    /// `capacity - 1`; capacity is a power of two.
    mask: usize,
    /// log2(capacity), to compute lap parity.
    shift: u32,
    /// Only one replica replays the log. Appends then all come from holders
    /// of that replica's one combiner lock (one at a time), and every
    /// completed write is already applied to the only replica, so the tail
    /// needs no CAS and the commit point is not needed (see `try_reserve`,
    /// `ctail`).
    single: bool,
    /// Next position to hand out. CAS by combiners; read by everybody.
    tail: CachePadded<AtomicUsize>,
    /// Commit point: highest position fully applied by some replica.
    /// fetch_max by combiners; read by readers.
    ctail: CachePadded<AtomicUsize>,
    /// Cached minimum of `ltails`: positions below it may be overwritten.
    /// fetch_max by appenders that found the log full; read by appenders.
    head: CachePadded<AtomicUsize>,
    /// Per-replica applied position, or [`PARKED`]. Written only by the
    /// holder of that replica's combiner lock; read by appenders computing
    /// `head` and by the replica's readers.
    ltails: Box<[CachePadded<AtomicUsize>]>,
    /// What appenders that found the log full still wait for. Read by every
    /// appender, written only while the log is full.
    line: CachePadded<Line>,
}

/// The appenders waiting for room in a full log.
struct Line {
    /// Sum of their batch sizes: everyone else leaves that much room free
    /// (fetch_add / fetch_sub by the waiters).
    need: AtomicUsize,
}

// SAFETY: entries hold `T`s that are written by one thread and cloned/dropped
// by others, so `T: Send` suffices to move them and `T: Send` + the alive-bit
// protocol (no entry is read before it is published, none is overwritten while
// a replica may still read it) makes shared access sound. Readers only ever
// take `&T` to clone it, which needs `T: Sync`.
unsafe impl<T: Send + Sync> Sync for Log<T> {}
// SAFETY: the log owns its `T`s; sending it sends them.
unsafe impl<T: Send> Send for Log<T> {}

impl<T> Log<T> {
    /// A log of at least `capacity` entries (rounded up to a power of two)
    /// replayed by `replicas` replicas. `capacity` must be non-zero (the
    /// builder checks).
    pub(crate) fn new(capacity: usize, replicas: usize) -> Self {
        Self::try_new(capacity, replicas).expect("log allocation failed")
    }

    /// Bytes per log entry.
    pub(crate) fn entry_size() -> usize {
        core::mem::size_of::<Entry<T>>()
    }

    /// As [`new`](Self::new), but `None` instead of aborting when the
    /// entries cannot be allocated (or the capacity has no power of two).
    pub(crate) fn try_new(capacity: usize, replicas: usize) -> Option<Self> {
        let capacity = capacity.max(1).checked_next_power_of_two()?;
        let mut entries: Vec<Entry<T>> = Vec::new();
        entries.try_reserve_exact(capacity).ok()?;
        entries.extend((0..capacity).map(|_| Entry {
            record: UnsafeCell::new(MaybeUninit::uninit()),
            alive: AtomicBool::new(false),
        }));
        Some(Self {
            entries: entries.into_boxed_slice(),
            mask: capacity - 1,
            shift: capacity.trailing_zeros(),
            single: replicas == 1,
            tail: CachePadded::new(AtomicUsize::new(0)),
            ctail: CachePadded::new(AtomicUsize::new(0)),
            head: CachePadded::new(AtomicUsize::new(0)),
            ltails: (0..replicas)
                .map(|_| CachePadded::new(AtomicUsize::new(0)))
                .collect(),
            line: CachePadded::new(Line {
                need: AtomicUsize::new(0),
            }),
        })
    }

    /// A log for `replicas` replicas of which only the first `live` start
    /// unparked (the others start at [`PARKED`]); `None` if it cannot be
    /// allocated.
    pub(crate) fn try_with_live(capacity: usize, replicas: usize, live: usize) -> Option<Self> {
        let log = Self::try_new(capacity, replicas)?;
        for l in &log.ltails[live.min(replicas)..] {
            // Relaxed: not shared yet.
            l.store(PARKED, Ordering::Relaxed);
        }
        Some(log)
    }

    /// Log positions that appenders waiting for room still need (the sum
    /// of their batch sizes; 0 when nobody waits).
    #[inline]
    pub(crate) fn waiting_need(&self) -> usize {
        // Relaxed: a hint that sizes the room to leave. An appender that
        // reads a stale value may take room a waiter joined for a moment
        // ago, once; the waiter was not yet waiting when it looked, and the
        // next appender sees it (RMWs below are totally ordered).
        // Mutant `line_ignored`: appenders take the room a waiter made, so
        // it can wait forever (a fairness property, not a safety one: the
        // unit test `waiting_writers_keep_the_room_they_need` catches it).
        if mutants::skip!("line_ignored") {
            return 0;
        }
        self.line.need.load(Ordering::Relaxed)
    }

    /// An appender starts waiting for `n` positions.
    pub(crate) fn join_waiters(&self, n: usize) {
        // Relaxed: see `waiting_need`.
        self.line.need.fetch_add(n, Ordering::Relaxed);
    }

    /// An appender stops waiting for `n` positions (it reserved them, or
    /// gave up).
    pub(crate) fn leave_waiters(&self, n: usize) {
        // Relaxed: see `waiting_need`.
        self.line.need.fetch_sub(n, Ordering::Relaxed);
    }

    /// Number of entries.
    pub(crate) fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// The alive-bit value that marks position `pos` as published.
    #[inline]
    fn lap_parity(&self, pos: usize) -> bool {
        // Mutant `log_no_lap_flip` (loom model 1): the bit never flips, so a
        // stale entry of the previous lap looks published.
        mutants::skip!("log_no_lap_flip") || (pos >> self.shift) & 1 == 0
    }

    /// Reserves `n` consecutive positions, returning the first, or reports
    /// that the log is full.
    ///
    /// The caller must then [`write`](Self::write) every reserved position
    /// promptly and without failing: replicas wait for them in order. Callers
    /// must hold their replica's combiner lock (with one replica this makes
    /// the caller the only appender).
    #[cfg(any(test, loom))]
    pub(crate) fn try_reserve(&self, n: usize) -> Result<usize, LogFull> {
        self.try_reserve_keeping(n, 0)
    }

    /// As [`try_reserve`](Self::try_reserve), but only if `keep` positions
    /// stay free after the reservation (room that waiting appenders need).
    pub(crate) fn try_reserve_keeping(&self, n: usize, keep: usize) -> Result<usize, LogFull> {
        debug_assert!(n <= self.capacity());
        let n_keep = n + keep;
        loop {
            // Relaxed: the tail is only a reservation counter; the CAS below
            // decides, and slot reuse is guarded by `head`, not by `tail`.
            let tail = self.tail.load(Ordering::Relaxed);
            // Acquire: pairs with the Release fetch_max in `advance_head`, so
            // that every replica's reads of the slots below `head` happen
            // before we overwrite them.
            let mut head = self.head.load(Ordering::Acquire);
            if tail + n_keep > head + self.capacity() {
                head = self.advance_head();
                if tail + n_keep > head + self.capacity() {
                    return Err(LogFull {
                        needed_head: (tail + n_keep).saturating_sub(self.capacity()),
                    });
                }
            }
            if self.single {
                // Relaxed: the only appender (the holder of the only combiner
                // lock, whose Acquire/Release orders successive holders)
                // needs no RMW to make its reservation unique.
                self.tail.store(tail + n, Ordering::Relaxed);
                return Ok(tail);
            }
            // Relaxed on success and failure: the reservation only has to be
            // unique (RMW atomicity); publication is the alive bit's job.
            if self
                .tail
                .compare_exchange_weak(tail, tail + n, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return Ok(tail);
            }
        }
    }

    /// Recomputes `head` as the minimum of the replicas' applied positions
    /// and returns it.
    fn advance_head(&self) -> usize {
        // Acquire: pairs with the Release stores in `set_ltail`; a replica's
        // clones of entries below its ltail happen before we free them.
        // A parked replica reads nothing (PARKED is above every position);
        // if every replica is parked nobody reads, and the tail bounds it.
        let min = self
            .ltails
            .iter()
            .map(|l| l.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
            // Relaxed: only a bound (the head never passes the tail); a
            // stale, smaller tail frees less, never too much.
            .min(self.tail.load(Ordering::Relaxed));
        // AcqRel: Release passes on what we acquired from the ltails to the
        // appender that will load `head` (Acquire in try_reserve); Acquire
        // keeps the transitive chain when another appender raised it first.
        let prev = self.head.fetch_max(min, Ordering::AcqRel);
        prev.max(min)
    }

    /// Stores `record` at a position obtained from [`try_reserve`](Self::try_reserve)
    /// and publishes it.
    pub(crate) fn write(&self, pos: usize, record: Record<T>) {
        let entry = &self.entries[pos & self.mask];
        entry.record.with_mut(|slot| {
            // SAFETY: `pos` was reserved by us alone (unique CAS on `tail`),
            // and `try_reserve` only hands out positions below `head +
            // capacity`, so every replica has finished reading the previous
            // occupant (position `pos - capacity`) and nobody reads this slot
            // until we publish it below. On every lap after the first the slot
            // holds that previous, initialized record, which we drop here.
            unsafe {
                if pos > self.mask {
                    (*slot).assume_init_drop();
                }
                (*slot).write(record);
            }
        });
        // Release: publishes the record; pairs with the Acquire load in
        // `read`.
        let order = mutants::ordering!("log_publish_relaxed", Release, Relaxed);
        entry.alive.store(self.lap_parity(pos), order);
    }

    /// Calls `f` with the record at `pos` if it is published, else returns
    /// `None` (the appender has reserved but not yet written it).
    ///
    /// # Safety
    ///
    /// `pos` must be at or above the calling replica's applied position and
    /// below `tail`, and that replica's position must not move past `pos`
    /// until this returns (the caller holds the replica's combiner lock).
    /// Together with `try_reserve`, this keeps the slot from being reused
    /// while `f` reads it.
    pub(crate) unsafe fn read<R>(&self, pos: usize, f: impl FnOnce(&Record<T>) -> R) -> Option<R> {
        let entry = &self.entries[pos & self.mask];
        // Acquire: pairs with the Release store in `write`; seeing this lap's
        // parity means the record written before it is visible.
        if entry.alive.load(Ordering::Acquire) != self.lap_parity(pos) {
            return None;
        }
        Some(entry.record.with(|slot| {
            // SAFETY: the alive bit says the record for this lap is
            // initialized; the caller's contract keeps it from being dropped
            // or overwritten while we hold the reference.
            f(unsafe { (*slot).assume_init_ref() })
        }))
    }

    /// Whether only one replica replays the log (no commit point is kept).
    #[inline]
    pub(crate) fn is_single(&self) -> bool {
        self.single
    }

    /// The next position to be handed out.
    pub(crate) fn tail(&self) -> usize {
        // Acquire: orders the caller's later loads (ltails, entries) after
        // this one. No Release pairs with it (reservations are Relaxed CASes);
        // the entries themselves are synchronised by `read`'s Acquire on
        // their alive bit.
        self.tail.load(Ordering::Acquire)
    }

    /// The commit point. With a single replica it is not maintained and is
    /// always 0: every completed write is already applied to that replica, so
    /// a read never has to wait for it.
    #[inline]
    pub(crate) fn ctail(&self) -> usize {
        // Acquire: pairs with the Release in `advance_ctail`.
        self.ctail.load(Ordering::Acquire)
    }

    /// Raises the commit point to `pos` (never lowers it).
    pub(crate) fn advance_ctail(&self, pos: usize) {
        // Release: a reader that sees the new commit point and then waits for
        // its own replica reaches it through the ltail protocol; Release
        // orders this after our replica's application for readers that
        // synchronise through it.
        // Relaxed pre-check: skips the locked RMW when another combiner
        // already published a later commit point. Mutant `ctail_skipped`
        // (loom model 2, scripts/lin_mutant.sh) never raises it.
        if !mutants::skip!("ctail_skipped")
            && !self.single
            && self.ctail.load(Ordering::Relaxed) < pos
        {
            self.ctail.fetch_max(pos, Ordering::Release);
        }
    }

    /// Whether replica `r` must catch up (or, parked, be rebuilt) before it
    /// serves a read that observed commit point `commit`.
    #[inline]
    pub(crate) fn is_behind(&self, r: usize, commit: usize) -> bool {
        // PARKED wraps to 0, which is behind every commit point: one compare
        // covers both cases.
        self.ltail(r).wrapping_add(1) <= commit
    }

    /// How far replica `r` has applied the log ([`PARKED`] if parked).
    #[inline]
    pub(crate) fn ltail(&self, r: usize) -> usize {
        // Acquire: pairs with the Release in `set_ltail`; a reader that sees
        // its replica at `pos` will then take the read lock, which gives it
        // the data itself.
        self.ltails[r].load(Ordering::Acquire)
    }

    /// Records that replica `r` has applied every position below `pos`.
    /// Only the holder of replica `r`'s combiner lock may call this.
    pub(crate) fn set_ltail(&self, r: usize, pos: usize) {
        // Release: our reads (clones) of the entries below `pos` happen
        // before an appender that frees them (Acquire in `advance_head`).
        let order = mutants::ordering!("log_ltail_relaxed", Release, Relaxed);
        self.ltails[r].store(pos, order);
    }
}

impl<T> Drop for Log<T> {
    fn drop(&mut self) {
        // Every reserved position was written (writes cannot fail), so the
        // initialized slots are the last `min(tail, capacity)` positions.
        // Relaxed: `drop` has `&mut self`, so no other thread touches the log.
        let tail = self.tail.load(Ordering::Relaxed);
        let start = tail.saturating_sub(self.capacity());
        for pos in start..tail {
            self.entries[pos & self.mask].record.with_mut(|slot| {
                // SAFETY: positions in [tail - capacity, tail) hold the most
                // recent, initialized record of their slot; we have `&mut
                // self`, so nobody else can read it.
                unsafe { (*slot).assume_init_drop() }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::sync::Arc as StdArc;

    fn rec(op: u64) -> Record<u64> {
        Record {
            op,
            replica: 0,
            slot: 0,
        }
    }

    fn read(log: &Log<u64>, pos: usize) -> Option<u64> {
        // SAFETY: single-threaded test; nothing moves the ltail meanwhile.
        unsafe { log.read(pos, |r| r.op) }
    }

    #[test]
    fn capacity_rounds_up_to_a_power_of_two() {
        assert_eq!(Log::<u64>::new(5, 1).capacity(), 8);
        assert_eq!(Log::<u64>::new(8, 1).capacity(), 8);
        assert_eq!(Log::<u64>::new(1, 1).capacity(), 1);
    }

    #[test]
    fn reserved_entries_are_invisible_until_written() {
        let log = Log::new(4, 1);
        let p = log.try_reserve(2).unwrap();
        assert_eq!(p, 0);
        assert_eq!(read(&log, 0), None);
        log.write(0, rec(10));
        assert_eq!(read(&log, 0), Some(10));
        assert_eq!(read(&log, 1), None);
    }

    #[test]
    fn full_log_reports_the_head_it_needs_and_frees_after_apply() {
        let log = Log::new(4, 2);
        let p = log.try_reserve(4).unwrap();
        for i in 0..4 {
            log.write(p + i, rec(i as u64));
        }
        assert_eq!(log.try_reserve(1), Err(LogFull { needed_head: 1 }));
        log.set_ltail(0, 3);
        // Replica 1 is still at 0: nothing is freed.
        assert_eq!(log.try_reserve(1), Err(LogFull { needed_head: 1 }));
        log.set_ltail(1, 2);
        assert_eq!(log.try_reserve(2), Ok(4));
        assert_eq!(log.try_reserve(1), Err(LogFull { needed_head: 3 }));
    }

    #[test]
    fn alive_bits_flip_each_lap_so_stale_entries_stay_invisible() {
        let log = Log::new(2, 1);
        for lap in 0..5u64 {
            let base = (lap * 2) as usize;
            let p = log.try_reserve(2).unwrap();
            assert_eq!(p, base);
            // Before writing, the slots hold last lap's bits: not visible
            // as this lap's positions.
            assert_eq!(read(&log, base), None, "lap {lap}");
            log.write(base, rec(lap * 10));
            log.write(base + 1, rec(lap * 10 + 1));
            assert_eq!(read(&log, base), Some(lap * 10));
            assert_eq!(read(&log, base + 1), Some(lap * 10 + 1));
            log.set_ltail(0, base + 2);
        }
    }

    #[test]
    fn commit_point_only_moves_forward() {
        let log = Log::<u64>::new(8, 2);
        log.advance_ctail(5);
        log.advance_ctail(3);
        assert_eq!(log.ctail(), 5);
        let single = Log::<u64>::new(8, 1);
        single.advance_ctail(5);
        assert_eq!(single.ctail(), 0, "one replica keeps no commit point");
        log.set_ltail(1, 4);
        assert_eq!(log.ltail(1), 4);
        assert_eq!(log.ltail(0), 0);
    }

    #[test]
    fn records_are_dropped_on_overwrite_and_with_the_log() {
        let tracker = StdArc::new(());
        let log = Log::new(2, 1);
        for i in 0..5usize {
            let p = log.try_reserve(1).unwrap();
            log.write(
                p,
                Record {
                    op: (StdArc::clone(&tracker), String::from("x")),
                    replica: 0,
                    slot: 0,
                },
            );
            log.set_ltail(0, i + 1);
        }
        // Two slots hold the two most recent records.
        assert_eq!(StdArc::strong_count(&tracker), 3);
        drop(log);
        assert_eq!(StdArc::strong_count(&tracker), 1);
    }
}
