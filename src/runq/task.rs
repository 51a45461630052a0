//! Task ids with generations, and the task table whose per-task state word is
//! where every change of a task's place is decided.
//!
//! A run queue, its replica and a neighbour's takeover all *propose* where a
//! task is; the task's state word *decides*. Each word names exactly one place
//! (free, in transit to a queue, queued or running on a queue in an epoch,
//! blocked, done, removed, or an operation's intent), so "a task is in exactly
//! one place" holds by construction, and two cores racing for the same task are
//! serialised by one compare-and-swap.
//!
//! # How it works
//!
//! A word packs `gen:24 | phase:4 | place:12 | epoch:24` ([`TaskState`]). A
//! [`TaskId`] is `(slot, generation)`; every transition compares the whole
//! word, generation included, so an id whose slot was freed and reused can
//! never act on the new task (the operation fails with a stale generation).
//!
//! An owner's operation moves a task in three steps: (1) CAS the word from its
//! current phase to an *intent* phase stamped with the owner's queue and epoch,
//! (2) commit (push the record to the backup, or validate the epoch in
//! asynchronous mode), (3) CAS the intent to the final phase. A neighbour that
//! takes the queue over *claims* every intent and every queued/running word of
//! the old epoch with one CAS, so a zombie's step (3) fails and its operation is
//! refused; the zombie's undo of step (1) fails the same way.
//!
//! # Trade-offs
//!
//! 24-bit generations wrap after 16 M reuses of one slot; an id held across that
//! many reuses could alias (documented, not checked). 12 bits of place limit a
//! machine to 4096 queues; 24 bits of epoch allow 16 M takeovers per queue
//! ([`super::RunqError::EpochExhausted`] after that). Allocation scans from a
//! shared cursor: simple and lock-free, but a nearly full table costs a scan.

use crate::mutants;
use crate::sync::{AtomicU64, AtomicUsize, CachePadded, Ordering};
use alloc::boxed::Box;
use alloc::vec::Vec;

use super::RunqError;

/// Mask of a 24-bit field (generation, epoch).
pub(crate) const MASK24: u64 = (1 << 24) - 1;
/// Mask of the 12-bit place field.
pub(crate) const MASK12: u64 = (1 << 12) - 1;

/// The id of a run queue (equal to the id of the core it belongs to).
pub type QueueId = u16;

/// Largest number of queues a word can name (12 bits of place).
pub const MAX_QUEUES: usize = 1 << 12;

/// A task: a slot of the task table and the generation of that slot's use.
///
/// Ids are small, `Copy` and totally ordered; two ids are equal only if both
/// slot and generation are, so a reused slot never aliases an old task.
///
/// # Examples
///
/// ```
/// use noderep::runq::TaskId;
///
/// let t = TaskId::new(7, 3);
/// assert_eq!((t.slot(), t.generation()), (7, 3));
/// assert_eq!(TaskId::from_raw(t.to_raw()), t);
/// // The same slot in a later use is another task.
/// assert_ne!(TaskId::new(7, 4), t);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(u64);

impl TaskId {
    /// Builds an id from a slot and a generation (the generation keeps 24 bits).
    pub fn new(slot: u32, generation: u32) -> Self {
        Self((u64::from(generation) & MASK24) << 32 | u64::from(slot))
    }

    /// The table slot.
    pub fn slot(self) -> u32 {
        self.0 as u32
    }

    /// The generation of the slot this id refers to.
    pub fn generation(self) -> u32 {
        ((self.0 >> 32) & MASK24) as u32
    }

    /// The packed form (never 0 for an allocated task: generations start at 1).
    pub fn to_raw(self) -> u64 {
        self.0
    }

    /// Inverse of [`TaskId::to_raw`]. Bits above the slot and the 24-bit
    /// generation are dropped, so that one task never has two ids.
    pub fn from_raw(raw: u64) -> Self {
        Self(raw & (MASK24 << 32 | u64::from(u32::MAX)))
    }
}

impl core::fmt::Display for TaskId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "t{}.{}", self.slot(), self.generation())
    }
}

/// Where a task is. `*ing` phases are intents: an owner's operation that has
/// reserved the task but not yet committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TaskPhase {
    /// The slot is unused (its generation is the last one handed out).
    Free = 0,
    /// Spawned, woken or migrated towards queue `place`; not yet accepted.
    Transit = 1,
    /// On queue `place`'s run queue, owned in `epoch`.
    Queued = 2,
    /// Running on the owner of queue `place` in `epoch`.
    Running = 3,
    /// Sleeping; `place` is its home queue (a wake sends it there).
    Blocked = 4,
    /// Completed; the slot may be reused with the next generation.
    Done = 5,
    /// Exited or killed before running; the slot may be reused.
    Removed = 6,
    /// Intent: accepting a transit task onto queue `place`.
    Accepting = 7,
    /// Intent: picking a queued task to run.
    Picking = 8,
    /// Intent: completing a running task.
    Finishing = 9,
    /// Intent: removing a queued task (exit before it ran).
    Removing = 10,
    /// Intent: migrating a queued task to another queue (steal, balance).
    Migrating = 11,
    /// Intent: a running task blocks (sleeps).
    Blocking = 12,
    /// Intent: a running task yields (back to the tail of its queue).
    Yielding = 13,
    /// Being spawned by the spawner bound to core `place` (not yet handed to
    /// its queue). If that core is taken over (it died) before the spawn
    /// finishes, the slot is reclaimed: by the takeover's table scan, or by a
    /// later allocation that meets it.
    Spawning = 14,
}

impl TaskPhase {
    fn from_bits(bits: u64) -> TaskPhase {
        match bits {
            0 => TaskPhase::Free,
            1 => TaskPhase::Transit,
            2 => TaskPhase::Queued,
            3 => TaskPhase::Running,
            4 => TaskPhase::Blocked,
            5 => TaskPhase::Done,
            6 => TaskPhase::Removed,
            7 => TaskPhase::Accepting,
            8 => TaskPhase::Picking,
            9 => TaskPhase::Finishing,
            10 => TaskPhase::Removing,
            11 => TaskPhase::Migrating,
            12 => TaskPhase::Blocking,
            13 => TaskPhase::Yielding,
            _ => TaskPhase::Spawning,
        }
    }

    /// True for the intent phases (an uncommitted owner operation).
    pub(crate) fn is_intent(self) -> bool {
        (TaskPhase::Accepting as u8..=TaskPhase::Yielding as u8).contains(&(self as u8))
    }

    /// True where the slot may be reused (the task is over).
    pub(crate) fn is_reusable(self) -> bool {
        matches!(self, TaskPhase::Free | TaskPhase::Done | TaskPhase::Removed)
    }
}

/// The decoded state word of one task slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskState {
    /// Generation of the slot's current (or last) task.
    pub generation: u32,
    /// Where the task is.
    pub phase: TaskPhase,
    /// The queue the phase refers to (see [`TaskPhase`]).
    pub place: QueueId,
    /// The owner epoch of `place` the phase was stamped with (0 where unused).
    pub epoch: u32,
}

impl TaskState {
    /// A state in `phase` at `place`/`epoch` for generation `generation`.
    pub(crate) fn new(generation: u32, phase: TaskPhase, place: QueueId, epoch: u32) -> Self {
        Self {
            generation,
            phase,
            place,
            epoch,
        }
    }

    /// Packs into the 64-bit word.
    pub(crate) fn pack(self) -> u64 {
        (u64::from(self.generation) & MASK24) << 40
            | (self.phase as u64) << 36
            | (u64::from(self.place) & MASK12) << 24
            | (u64::from(self.epoch) & MASK24)
    }

    /// Unpacks a word.
    pub(crate) fn unpack(w: u64) -> Self {
        Self {
            generation: ((w >> 40) & MASK24) as u32,
            phase: TaskPhase::from_bits((w >> 36) & 0xf),
            place: ((w >> 24) & MASK12) as QueueId,
            epoch: (w & MASK24) as u32,
        }
    }

    /// The same task in another phase/place/epoch.
    pub(crate) fn with(self, phase: TaskPhase, place: QueueId, epoch: u32) -> Self {
        Self::new(self.generation, phase, place, epoch)
    }
}

/// The outcome of one compare-and-swap on a task word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cas {
    /// The word held `from` and now holds `to`.
    Done,
    /// The word held something else (returned), or another generation.
    Saw(TaskState),
}

/// Every task slot's state word, plus the allocation cursor.
///
/// Written by: spawners (allocation), queue owners (intents, commits), a
/// neighbour taking over (claims), killers. Read by all of them.
pub(crate) struct TaskTable {
    words: Box<[AtomicU64]>,
    /// Next slot to try when allocating (a hint; any value is correct).
    cursor: CachePadded<AtomicUsize>,
}

impl TaskTable {
    /// A table of `capacity` free slots; an allocation failure is an error
    /// (never an abort).
    pub(crate) fn new(capacity: usize) -> Result<Self, RunqError> {
        let mut words: Vec<AtomicU64> = Vec::new();
        words
            .try_reserve_exact(capacity)
            .map_err(|_| RunqError::OutOfMemory {
                what: "task table",
                bytes: capacity.saturating_mul(8),
            })?;
        words.extend(
            (0..capacity).map(|_| AtomicU64::new(TaskState::new(0, TaskPhase::Free, 0, 0).pack())),
        );
        Ok(Self {
            words: words.into_boxed_slice(),
            cursor: CachePadded::new(AtomicUsize::new(0)),
        })
    }

    /// Number of slots.
    pub(crate) fn capacity(&self) -> usize {
        self.words.len()
    }

    /// The current state of a slot.
    pub(crate) fn state_of_slot(&self, slot: usize) -> TaskState {
        // Acquire: sees the task's previous transitions (and what they
        // published); pairs with the AcqRel CAS in `cas`.
        TaskState::unpack(self.words[slot].load(Ordering::Acquire))
    }

    /// The state of `t`'s slot, or `None` if the slot moved to another
    /// generation (the task is over and its slot reused) or does not exist.
    pub(crate) fn state(&self, t: TaskId) -> Option<TaskState> {
        let slot = t.slot() as usize;
        if slot >= self.words.len() {
            return None;
        }
        let s = self.state_of_slot(slot);
        (s.generation == t.generation()).then_some(s)
    }

    /// Moves `t` from exactly `from` to `to` (both of `t`'s generation).
    #[inline]
    pub(crate) fn cas(&self, t: TaskId, from: TaskState, to: TaskState) -> Cas {
        self.cas_or_blind(false, t, from, to)
    }

    /// [`cas`](Self::cas), or with `blind` (a mutant's switch: a
    /// `mutants::skip!`, `false` in every build without that mutant) a check
    /// then a separate store ([`mutants::check_then_store`]).
    #[inline]
    pub(crate) fn cas_or_blind(
        &self,
        blind: bool,
        t: TaskId,
        from: TaskState,
        to: TaskState,
    ) -> Cas {
        let slot = t.slot() as usize;
        if slot >= self.words.len() {
            return Cas::Saw(TaskState::new(0, TaskPhase::Free, 0, 0));
        }
        // AcqRel: the Release half publishes the transition (and the local
        // queue/record state that led to it) to whoever next reads this word:
        // the Acquire loads in `state_of_slot` and the next CAS. The Acquire
        // half orders this transition after the previous one, whoever made it.
        // Acquire on failure: the returned word is acted upon by the caller.
        let word = &self.words[slot];
        let done = if blind {
            mutants::check_then_store(word, from.pack(), to.pack())
        } else {
            word.compare_exchange(from.pack(), to.pack(), Ordering::AcqRel, Ordering::Acquire)
        };
        match done {
            Ok(_) => Cas::Done,
            Err(actual) => Cas::Saw(TaskState::unpack(actual)),
        }
    }

    /// Takes a reusable slot and puts a new task in `phase` at `place`.
    /// Scans at most the whole table once. A slot left `Spawning` by a
    /// spawner whose core is dead (`spawner_dead(core)`) is reclaimed on the
    /// way and reused.
    pub(crate) fn allocate(
        &self,
        phase: TaskPhase,
        place: QueueId,
        spawner_dead: impl Fn(QueueId) -> bool,
    ) -> Result<TaskId, RunqError> {
        let n = self.words.len();
        for _ in 0..n {
            // Relaxed: the cursor is only a hint for where to start looking;
            // the slot's own CAS below decides.
            let slot = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
            let mut cur = self.state_of_slot(slot);
            if cur.phase == TaskPhase::Spawning && spawner_dead(cur.place) {
                let old = TaskId::new(slot as u32, cur.generation);
                if let Some(s) = self.reclaim_spawning(old, cur) {
                    cur = s;
                }
            }
            if !cur.phase.is_reusable() {
                continue;
            }
            let mut generation = ((u64::from(cur.generation) + 1) & MASK24) as u32;
            if generation == 0 {
                generation = 1; // 0 is never handed out: raw ids stay non-zero.
            }
            let id = TaskId::new(slot as u32, generation);
            let old = TaskId::new(slot as u32, cur.generation);
            let next = TaskState::new(generation, phase, place, 0);
            if self.cas(old, cur, next) == Cas::Done {
                return Ok(id);
            }
        }
        Err(RunqError::TableFull { capacity: n })
    }

    /// Reclaims `t`, seen as `seen` (a `Spawning` word of a dead spawner):
    /// the spawn never returned, so nobody was told of the task and the slot
    /// becomes `Removed`. Returns the new word, or `None` if the word moved
    /// (the spawner finished after all: its task stands).
    pub(crate) fn reclaim_spawning(&self, t: TaskId, seen: TaskState) -> Option<TaskState> {
        let to = seen.with(TaskPhase::Removed, seen.place, 0);
        // Mutant `reclaim_blind_store` (loom, runq models): "check, then
        // act", racing the spawner's final CAS.
        match self.cas_or_blind(mutants::skip!("reclaim_blind_store"), t, seen, to) {
            Cas::Done => Some(to),
            Cas::Saw(_) => None,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn word_round_trips_every_field() {
        let s = TaskState::new(0xabcdef, TaskPhase::Migrating, 4095, 0x123456);
        assert_eq!(TaskState::unpack(s.pack()), s);
        let id = TaskId::new(77, 5);
        assert_eq!((id.slot(), id.generation()), (77, 5));
        assert_eq!(TaskId::from_raw(id.to_raw()), id);
    }

    #[test]
    fn reused_slot_gets_new_generation_and_old_id_is_refused() {
        let t = TaskTable::new(1).unwrap();
        let a = t.allocate(TaskPhase::Transit, 0, |_| false).unwrap();
        assert_eq!(
            t.allocate(TaskPhase::Transit, 0, |_| false),
            Err(RunqError::TableFull { capacity: 1 })
        );
        let s = t.state(a).unwrap();
        assert_eq!(t.cas(a, s, s.with(TaskPhase::Done, 0, 0)), Cas::Done);
        let b = t.allocate(TaskPhase::Transit, 0, |_| false).unwrap();
        assert_eq!(a.slot(), b.slot());
        assert_ne!(a, b);
        assert_eq!(t.state(a), None, "the old id must not see the new task");
        // A CAS with the old generation fails even if phase/place match.
        let stale = TaskState::new(a.generation(), TaskPhase::Transit, 0, 0);
        assert!(matches!(
            t.cas(a, stale, stale.with(TaskPhase::Queued, 0, 1)),
            Cas::Saw(_)
        ));
    }
}
