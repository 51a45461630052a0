//! Per-core run queues replicated on `k` other cores, with epochs, leases and
//! tombstones: a scheduler substrate that survives the loss of a core (and of
//! `k - 1` of its backups in the same recovery window) with no task lost,
//! duplicated or resurrected.
//!
//! Each core owns one run queue ([`OwnerHandle`]); `k` backup cores
//! ([`BackupHandle`]; `k` set by [`RunqBuilder::backups`], default 1; ring
//! order within a node, then across nodes) keep a replica of it. When a core
//! stops renewing its lease, a backup raises the queue's epoch, adopts the
//! queue, runs its tasks, and from then on every operation of the old epoch
//! is refused. A core that was only frozen wakes up as a fenced zombie and
//! can do no harm. Cores spawn, wake and kill tasks through a [`Spawner`].
//! Build a scheduler with [`RunQueues::builder`].
//!
//! # How it works
//!
//! * **Task words**: one atomic word per task names its one place
//!   ([`TaskPhase`]: `Transit`, `Queued{q, e}`, `Running{q, e}`, `Blocked`,
//!   `Done`, `Removed`, `Spawning`, or an owner's *intent*). Every change of
//!   place is a CAS on it, generation included, so a reused slot is never
//!   mistaken for an old task. The word, not any replica, is the authority.
//! * **Operations** carry `(epoch, seq)` (a stamp) and run in three steps:
//!   CAS the task word to an intent stamped with the owner's epoch; *commit*
//!   (push the record into every backup's ring — synchronous mode — or check
//!   the rings are still open and buffer the record — asynchronous mode); CAS
//!   the intent to its final phase.
//! * **Fencing** happens where state changes: the lease word ([`LeaseWord`])
//!   is renewed and taken over by CAS; the takeover closes every replication
//!   ring with the new epoch in its tail word, re-tags the inbox and *claims*
//!   each adopted task's word. A zombie's commit then fails at a ring, its
//!   finalising CAS fails at the task word, and it is told
//!   [`RunqError::Fenced`].
//! * **k backups (fan-out)**: the owner pushes each record to all `k` rings;
//!   all `k` backups watch the lease and race for it when it expires (the
//!   CAS picks one; no wait by rank, so losing the first backup too does not
//!   slow the takeover). A backup whose ring another backup's takeover closed
//!   stays on *standby* until the new owner publishes its new stream, and
//!   takes over in turn if the new owner dies first.
//! * **Tombstones** (`replica.rs`): completions and removals are kept in each
//!   replica as `(task, epoch, seq)` entries that outrank any older enqueue;
//!   they are collected once every backup has passed them.
//! * **Re-backup**: the adopter seeds `k` new backups with a snapshot, and an
//!   owner whose backup died does the same (raising its own epoch so the old
//!   backups can no longer take over), so later failures are survived too.
//! * **Spawns** are fenced like operations: a spawn first takes its slot in
//!   phase `Spawning`, stamped with the spawner's core; if that core dies
//!   mid-spawn, its takeover's table scan (or a later allocation) reclaims
//!   the slot, so a crashed spawner leaks nothing.
//! * **Configuration** is checked against what the arithmetic can represent
//!   (durations up to an hour, ring and table sizes within their bit fields)
//!   and what the machine can hold (at most half its memory); allocations use
//!   `try_reserve`: a bad value is an error saying what to change.
//! * **Faults** (`fault`, feature `fault-injection`): crashes at named points
//!   inside operations, freezes by a real signal that parks the thread,
//!   slow-downs beyond the lease. **Invariants** (`check`, same feature) are
//!   checked by a lock-free ledger. Without the feature, none of this is
//!   compiled: no fault points, no signal masking around locks.
//!
//! # Trade-offs
//!
//! Synchronous replication costs one CAS on a shared cache line per
//! operation and backup (`k` of them) and stalls the owner when a backup
//! stops draining; asynchronous replication acknowledges at once and ships
//! in batches, losing about λ·L operations per failure (λ the write rate, L
//! the replication lag) — but no task: the takeover's table scan finds every
//! task whose word names the queue. It buffers at most four rings' worth of
//! unshipped records; past that, a backup that stopped draining stalls the
//! owner as in synchronous mode. With `k = 1`, a failure of the adopter
//! inside its takeover (or of a core and its only backup together) is not
//! survived; `k = 2` survives it.
//!
//! # References
//!
//! Gray & Cheriton, "Leases", SOSP 1989; Kleppmann, "How to do distributed
//! locking" (fencing tokens), 2016; Shapiro et al., "CRDTs", 2011 (tombstones);
//! van Renesse & Schneider, "Chain replication", OSDI 2004 (backup order).
//!
//! The task-word protocol and the takeover as state tables:
//! `docs/ARCHITECTURE.md` in the repository.

#[cfg(feature = "fault-injection")]
pub mod check;
#[cfg(all(feature = "fault-injection", not(loom)))]
pub mod fault;
mod inbox;
mod lease;
mod replica;
mod ring;
mod task;
#[cfg(all(test, not(loom), feature = "fault-injection"))]
mod tests;

mod backup;
mod builder;
mod owner;
mod worker;

pub use backup::{BackupEvent, BackupHandle, TakeoverReport};
pub use builder::RunqBuilder;
pub use lease::LeaseWord;
pub use owner::{Exit, OwnerHandle, Pick, Tick};
// A backup's replica of its queue, for tests and the loom models to look
// into (a user needs only the takeover, which adopts it).
#[cfg(any(feature = "fault-injection", loom))]
pub use replica::{Replica, Replicated};
#[cfg(any(feature = "fault-injection", loom))]
pub use ring::Stamp;

#[doc(hidden)]
// Public as `RunqBuilder::MAX_QUEUES`; this path is kept for code written against it.
pub use task::MAX_QUEUES;
pub use task::{QueueId, TaskId, TaskPhase, TaskState};
pub use worker::{CoreWorker, Step};

use crate::mutants;
use crate::sync::{Arc, AtomicBool, AtomicU64, AtomicUsize, CachePadded, Mutex, Ordering};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use inbox::Inbox;
use lease::Lease;
use ring::Ring;
use task::TaskTable;

/// Most backups a queue can have ([`RunqBuilder::backups`]).
#[doc(hidden)] // Public as `RunqBuilder::MAX_BACKUPS`; this path is kept for code written against it.
pub const MAX_BACKUPS: usize = 4;

/// Everything that can go wrong in the run-queue module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunqError {
    /// The caller's core no longer owns the queue: a neighbour took it over.
    #[error("queue {queue} was taken over (this handle's epoch {epoch}, now epoch {now_epoch}): this core is fenced; drop the handle and stop running this queue's tasks")]
    Fenced {
        /// The queue.
        queue: QueueId,
        /// The epoch the caller held.
        epoch: u32,
        /// The epoch that fenced it (0 if not known yet).
        now_epoch: u32,
    },
    /// The spawner's core was taken over (it is considered dead): its spawns
    /// are refused and a spawn it had begun was reclaimed.
    #[error("core {core} was taken over, so its spawner is fenced: spawn from a live core's spawner (RunQueues::spawner)")]
    SpawnerFenced {
        /// The spawner's core.
        core: usize,
    },
    /// Synchronous replication could not get a free slot in a backup's ring.
    #[error("a backup of queue {queue} has not drained its replication ring: drain this core's own backup handles (CoreWorker does) and retry; a dead backup is replaced once its own lease expires; a larger ring_capacity makes this rarer")]
    BackupStalled {
        /// The queue.
        queue: QueueId,
    },
    /// No free task slot.
    #[error("the task table is full ({capacity} slots): complete or remove tasks, or raise RunqBuilder::task_capacity")]
    TableFull {
        /// Number of slots.
        capacity: usize,
    },
    /// The epoch counter of a queue is exhausted.
    #[error("queue {queue} has been taken over 2^24 times and its epoch cannot grow: restart the scheduler")]
    EpochExhausted {
        /// The queue.
        queue: QueueId,
    },
    /// A configuration value is out of range.
    #[error("bad run-queue configuration: {0}")]
    BadConfig(String),
    /// Memory for a table or ring could not be allocated.
    #[error("cannot allocate {bytes} bytes for the {what}: lower RunqBuilder::ring_capacity / task_capacity / backups")]
    OutOfMemory {
        /// What was being allocated.
        what: &'static str,
        /// How many bytes.
        bytes: usize,
    },
    /// A queue id that does not exist.
    #[error("there is no queue {queue} (this scheduler has {queues} queues, numbered from 0)")]
    NoSuchQueue {
        /// The id given.
        queue: usize,
        /// Number of queues.
        queues: usize,
    },
    /// The owner handle of a core's home queue was already handed out.
    #[error("the owner handle of core {core} was already taken: there is exactly one per core")]
    AlreadyClaimed {
        /// The core.
        core: usize,
    },
    /// `complete` was called for a task this owner is not running.
    #[error("task {task} is not running on queue {queue}: only a task returned by pick() can be completed, once")]
    NotRunning {
        /// The task.
        task: TaskId,
        /// The queue.
        queue: QueueId,
    },
    /// An operation named a task that is not queued here.
    #[error("task {task} is not queued on queue {queue} (it is {phase:?}): remove and migrate apply to this queue's queued tasks")]
    NotQueued {
        /// The task.
        task: TaskId,
        /// The queue.
        queue: QueueId,
        /// Where it is instead.
        phase: TaskPhase,
    },
    /// A task was to be migrated to, or stolen from, the handle's own queue.
    #[error("queue {queue} is this handle's own queue: migrate to, or steal from, another queue")]
    OwnQueue {
        /// The queue.
        queue: QueueId,
    },
    /// A time passed to `tick`, `poll`, `step` or `housekeep` is more than
    /// an hour ahead of the scheduler's clock.
    #[error("time {now} ns is more than an hour ahead of the scheduler's clock ({clock} ns): pass RunQueues::now() (nanoseconds since the scheduler was built), not another clock or unit")]
    BadTime {
        /// The time given.
        now: u64,
        /// [`RunQueues::now`] when it was refused.
        clock: u64,
    },
}

/// How operations reach the backups.
///
/// # Examples
///
/// ```
/// use noderep::runq::{Replication, RunQueues};
/// use std::time::Duration;
///
/// // Acknowledge at once, ship records in batches of 32 or after 1 ms.
/// let async_mode = Replication::Async { batch: 32, max_lag: Duration::from_millis(1) };
/// let rq = RunQueues::builder().cores(2).replication(async_mode).build()?;
/// assert_eq!(rq.config().replication, async_mode);
/// // The default: every acknowledged operation is in every backup's ring.
/// let rq = RunQueues::builder().cores(2).build()?;
/// assert_eq!(rq.config().replication, Replication::Sync);
/// # Ok::<(), noderep::runq::RunqError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replication {
    /// No backup at all: the baseline an unreplicated scheduler would be
    /// (a failure loses the queue). Operations are still fenced.
    None,
    /// Acknowledged only once the record is in every backup's ring: an
    /// acknowledged operation is never lost.
    Sync,
    /// Acknowledged at once and shipped in batches of `batch` records, or when
    /// the oldest unshipped record is `max_lag` old, whichever comes first.
    Async {
        /// Records per shipment.
        batch: usize,
        /// Longest a record waits before it is shipped (checked at each tick).
        max_lag: Duration,
    },
}

/// Run-queue configuration, as validated by [`RunqBuilder::build`] (read it
/// back with [`RunQueues::config`]).
///
/// # Examples
///
/// ```
/// use noderep::runq::{Config, RunQueues, RunqError};
/// use std::time::Duration;
///
/// let mut config = Config::default();
/// config.backups = 2;
/// config.lease = Duration::from_millis(20);
/// let rq = RunQueues::builder().cores(3).config(config.clone()).build()?;
/// assert_eq!(rq.config(), &config);
/// assert_eq!(rq.backups_of(0)?.len(), 2);
///
/// // A configuration that cannot work is refused, saying why.
/// config.ring_capacity = 3; // not a power of two
/// assert!(matches!(
///     RunQueues::builder().cores(3).config(config).build(),
///     Err(RunqError::BadConfig(_))
/// ));
/// # Ok::<(), RunqError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Replication mode.
    pub replication: Replication,
    /// Backups per queue (`k`): a queue survives its owner and `k - 1` of its
    /// backups failing within one recovery window.
    pub backups: usize,
    /// How long an owner's lease lasts without renewal.
    pub lease: Duration,
    /// Extra wait before a takeover, covering clock skew between cores.
    pub skew_margin: Duration,
    /// Slots in each replication ring (a power of two, at least 4).
    pub ring_capacity: usize,
    /// Task slots in the task table.
    pub task_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            replication: Replication::Sync,
            backups: 1,
            lease: Duration::from_millis(20),
            skew_margin: Duration::from_millis(5),
            // Under loom the logic is unchanged; only the sizes shrink so the
            // model checker's state space stays small.
            ring_capacity: if cfg!(loom) { 4 } else { 1 << 14 },
            task_capacity: if cfg!(loom) { 4 } else { 1 << 16 },
        }
    }
}

/// Longest lease, skew margin or async lag accepted: an hour. Far beyond any
/// scheduler's need, and small enough that `lease + skew_margin` in
/// nanoseconds never overflows a `u64`.
#[doc(hidden)] // Public as `RunqBuilder::MAX_DURATION`; this path is kept for code written against it.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Largest ring: 2^24 slots (256 MiB per ring).
#[doc(hidden)] // Public as `RunqBuilder::MAX_RING_CAPACITY`; this path is kept for code written against it.
pub const MAX_RING_CAPACITY: usize = 1 << 24;
/// Largest task table: 2^32 - 1 slots (task ids hold 32-bit slots).
#[doc(hidden)] // Public as `RunqBuilder::MAX_TASK_CAPACITY`; this path is kept for code written against it.
pub const MAX_TASK_CAPACITY: usize = u32::MAX as usize;

impl Config {
    /// Checks every value against what the arithmetic can represent and what
    /// the machine can hold, for `cores` queues.
    fn validate(&self, cores: usize) -> Result<(), RunqError> {
        let bad = |m: String| Err(RunqError::BadConfig(m));
        if !self.ring_capacity.is_power_of_two()
            || !(4..=MAX_RING_CAPACITY).contains(&self.ring_capacity)
        {
            return bad(format!(
                "ring_capacity must be a power of two in 4..=2^24 (got {}): pick e.g. 16384",
                self.ring_capacity
            ));
        }
        if !(1..=MAX_TASK_CAPACITY).contains(&self.task_capacity) {
            return bad(format!(
                "task_capacity must be in 1..=2^32-1 (got {}): pick e.g. 65536",
                self.task_capacity
            ));
        }
        if self.lease.is_zero() || self.lease > MAX_DURATION {
            return bad(format!(
                "lease must be in (0, 1 h] (got {:?}): pick e.g. 20 ms",
                self.lease
            ));
        }
        if self.skew_margin > MAX_DURATION {
            return bad(format!(
                "skew_margin must be at most 1 h (got {:?}): pick e.g. 5 ms",
                self.skew_margin
            ));
        }
        if let Replication::Async { batch, max_lag } = self.replication {
            if batch == 0 || batch > self.ring_capacity {
                return bad(format!(
                    "async batch must be in 1..=ring_capacity ({}) (got {batch})",
                    self.ring_capacity
                ));
            }
            if max_lag > MAX_DURATION {
                return bad(format!(
                    "async max_lag must be at most 1 h (got {max_lag:?}): pick e.g. 2 ms"
                ));
            }
        }
        if cores < 2 {
            return bad(format!(
                "a replicated run queue needs at least 2 cores (got {cores}): a queue's backup lives on another core"
            ));
        }
        if cores > MAX_QUEUES {
            return bad(format!(
                "at most {MAX_QUEUES} cores are supported (got {cores})"
            ));
        }
        if self.backups == 0 || self.backups > MAX_BACKUPS || self.backups >= cores {
            return bad(format!(
                "backups must be in 1..={} (at most {MAX_BACKUPS}, and fewer than the {cores} cores) (got {})",
                MAX_BACKUPS.min(cores - 1),
                self.backups
            ));
        }
        // What the machine can hold: the task table (8 B a slot) and, per
        // queue, k rings (16 B a slot), twice over (a stream being replaced
        // lives next to its successor for a moment).
        let rings = cores.saturating_mul(self.backups).saturating_mul(2);
        let need = self
            .task_capacity
            .saturating_mul(8)
            .saturating_add(rings.saturating_mul(self.ring_capacity.saturating_mul(16)));
        if let Some(have) = physical_memory() {
            if need > have / 2 {
                return bad(format!(
                    "task_capacity {} and ring_capacity {} x {rings} rings need {need} bytes, more than half of this machine's {have} bytes of memory: lower them",
                    self.task_capacity, self.ring_capacity
                ));
            }
        }
        Ok(())
    }

    /// Nanoseconds a watcher waits without seeing a renewal before a takeover.
    pub fn expiry_ns(&self) -> u64 {
        // Saturating: validation bounds both by an hour, so this never saturates.
        u64::try_from(self.lease.saturating_add(self.skew_margin).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Physical memory in bytes, if the platform says.
fn physical_memory() -> Option<usize> {
    #[cfg(all(unix, not(loom)))]
    {
        // SAFETY: sysconf has no preconditions and only reads system values.
        let (pages, size) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if pages > 0 && size > 0 {
            return Some((pages as usize).saturating_mul(size as usize));
        }
    }
    None
}

/// Something that happened, for timelines and reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Nanoseconds since the scheduler was created.
    pub at_ns: u64,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of [`Event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A backup saw a lease unrenewed for lease + margin.
    LeaseExpired {
        /// The queue.
        queue: QueueId,
        /// Its owner.
        owner: u16,
        /// Its epoch.
        epoch: u32,
        /// How long the watcher saw no renewal.
        silent_ns: u64,
    },
    /// A backup took a queue over.
    TakeOver(TakeoverReport),
    /// An operation of an old epoch was refused.
    Fenced {
        /// The queue.
        queue: QueueId,
        /// The refused core.
        core: usize,
        /// Its (old) epoch.
        epoch: u32,
        /// The refused operation.
        op: &'static str,
    },
    /// A queue got new backups (seeded with a snapshot).
    Rebackup {
        /// The queue.
        queue: QueueId,
        /// Its owner.
        owner: usize,
        /// The new backup cores, in rank order.
        backups: Vec<usize>,
        /// The epoch the new stream carries.
        epoch: u32,
        /// Snapshot lines sent.
        snapshot: usize,
    },
    /// A spawn begun by a dead core was reclaimed (its slot freed).
    SpawnReclaimed {
        /// The slot's task.
        task: TaskId,
        /// The dead spawner's core.
        spawner: usize,
    },
}

/// Replication counters of a queue or of the whole scheduler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicationStats {
    /// Operations acknowledged by owners.
    pub acked: u64,
    /// Operations that reached the backups (sync: at commit; async: at
    /// shipment, once every backup's ring has them).
    pub shipped: u64,
    /// Sum over shipped operations of (ship time - acknowledgement time), ns.
    pub lag_ns: u64,
}

/// The current replication stream of a queue: one ring per backup.
pub(crate) struct Stream {
    pub(crate) rings: Vec<Arc<Ring>>,
    /// The backup core of each ring, in rank order.
    pub(crate) backups: Vec<usize>,
    pub(crate) generation: u64,
}

/// Statistics counters of one queue (Relaxed: reports only).
#[derive(Default)]
pub(crate) struct QueueStats {
    /// Operations acknowledged by owners.
    pub(crate) acked: AtomicU64,
    /// Operations shipped to every ring (sync: at commit; async: at shipment).
    pub(crate) shipped: AtomicU64,
    /// Sum of ship time - ack time over shipped records, in ns.
    pub(crate) lag_ns: AtomicU64,
}

/// Shared state of one queue.
pub(crate) struct QueueShared {
    pub(crate) lease: Lease,
    pub(crate) inbox: Inbox,
    /// Replaced only at takeover and re-backup (cold path).
    pub(crate) stream: Mutex<Stream>,
    /// Generation of `stream`, for backups to notice a change without locking.
    pub(crate) stream_gen: AtomicU64,
    /// Pending steal request: 0 or thief queue + 1.
    pub(crate) steal: AtomicU64,
    /// Length of the owner's local queue (a hint for thieves).
    pub(crate) len_hint: AtomicUsize,
    pub(crate) home_claimed: AtomicBool,
    pub(crate) stats: QueueStats,
}

/// State shared by every handle of one scheduler.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) queues: Box<[CachePadded<QueueShared>]>,
    pub(crate) tasks: TaskTable,
    /// Backup candidates of each core, in preference order.
    pub(crate) candidates: Vec<Vec<usize>>,
    pub(crate) fenced_ops: AtomicU64,
    pub(crate) takeovers: AtomicU64,
    pub(crate) reclaimed: AtomicU64,
    #[allow(dead_code)]
    pub(crate) events: Mutex<Vec<Event>>,
    #[cfg(not(loom))]
    pub(crate) origin: std::time::Instant,
    #[cfg(all(feature = "fault-injection", not(loom)))]
    pub(crate) faults: fault::FaultTable,
}

impl Shared {
    /// Refuses a caller's time more than [`MAX_DURATION`] ahead of the
    /// scheduler's clock: a time that far ahead is a bug (a wrong clock or
    /// unit), and acted upon it would take over live owners at once.
    pub(crate) fn check_now(&self, now: u64) -> Result<(), RunqError> {
        let clock = self.now();
        if now > clock.saturating_add(MAX_DURATION.as_nanos() as u64) {
            return Err(RunqError::BadTime { now, clock });
        }
        Ok(())
    }

    /// Nanoseconds since creation (0 under loom, where models pass times).
    pub(crate) fn now(&self) -> u64 {
        #[cfg(not(loom))]
        {
            u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
        }
        #[cfg(loom)]
        {
            0
        }
    }

    /// Is `core` alive: does it still own its home queue? (Once a core's home
    /// queue is taken over it never owns it again: a core is never a backup
    /// of its own queue.)
    pub(crate) fn alive(&self, core: usize) -> bool {
        self.queues[core].lease.load().owner as usize == core
    }

    /// The first `k` live backup candidates of `core`, in preference order.
    pub(crate) fn live_backups(&self, core: usize, k: usize) -> Vec<usize> {
        self.candidates[core]
            .iter()
            .copied()
            .filter(|&c| self.alive(c))
            .take(k)
            .collect()
    }

    pub(crate) fn log(&self, kind: EventKind) {
        #[cfg(not(loom))]
        {
            let at_ns = self.now();
            let _masked = owner::MaskGuard::new();
            if let Ok(mut ev) = self.events.lock() {
                ev.push(Event { at_ns, kind });
            }
        }
        #[cfg(loom)]
        drop(kind);
    }

    /// A fault point: compiled to nothing without the `fault-injection`
    /// feature (and under loom).
    #[inline(always)]
    pub(crate) fn fault(&self, _core: usize, _point: fault_points::FaultPoint) {
        #[cfg(all(feature = "fault-injection", not(loom)))]
        self.faults.hit(_core, _point, || self.now());
    }

    /// Reclaims `t` (seen as `s`, a `Spawning` word whose spawner core is
    /// dead); logs and counts it.
    pub(crate) fn reclaim_spawn(&self, t: TaskId, s: TaskState) -> bool {
        if self.tasks.reclaim_spawning(t, s).is_some() {
            // Relaxed: a statistics counter.
            self.reclaimed.fetch_add(1, Ordering::Relaxed);
            self.log(EventKind::SpawnReclaimed {
                task: t,
                spawner: s.place as usize,
            });
            true
        } else {
            false
        }
    }
}

/// Named places where a crash or slow-down can be injected.
pub(crate) mod fault_points {
    /// A named fault point inside the protocol.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[repr(u8)]
    pub enum FaultPoint {
        /// Start of an owner operation.
        OpStart = 1,
        /// After the task word holds the intent, before the commit.
        AfterIntent = 2,
        /// After the commit, before the final CAS.
        AfterCommit = 3,
        /// In a tick, before renewing the lease.
        Tick = 4,
        /// In a takeover, after winning the lease and fencing the old owner
        /// (rings closed, inbox re-tagged), before adopting anything: the
        /// adopter's own failure inside the takeover, survived with `k >= 2`
        /// backups (a standby backup takes over), not with `k = 1`.
        AfterLeaseWon = 5,
        /// Between a migration's delivery and its final CAS.
        MigrateDelivered = 6,
        /// In a spawn, after the slot was taken (the word says `Spawning`).
        SpawnAllocated = 7,
        /// In a spawn, after the delivery to the inbox, before the final CAS.
        SpawnDelivered = 8,
    }

    impl FaultPoint {
        /// Every point, for random fault plans.
        #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
        pub const ALL: [FaultPoint; 8] = [
            FaultPoint::OpStart,
            FaultPoint::AfterIntent,
            FaultPoint::AfterCommit,
            FaultPoint::Tick,
            FaultPoint::AfterLeaseWon,
            FaultPoint::MigrateDelivered,
            FaultPoint::SpawnAllocated,
            FaultPoint::SpawnDelivered,
        ];

        /// The points a single failure may hit and be survived with one backup.
        #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
        pub const SURVIVABLE: [FaultPoint; 7] = [
            FaultPoint::OpStart,
            FaultPoint::AfterIntent,
            FaultPoint::AfterCommit,
            FaultPoint::Tick,
            FaultPoint::MigrateDelivered,
            FaultPoint::SpawnAllocated,
            FaultPoint::SpawnDelivered,
        ];

        #[cfg_attr(any(loom, not(feature = "fault-injection")), allow(dead_code))]
        pub(crate) fn from_u8(v: u8) -> Option<Self> {
            Self::ALL.iter().copied().find(|p| *p as u8 == v)
        }
    }
}

/// A scheduler: one run queue per core, each replicated on `k` other cores.
///
/// Cheap to clone (an `Arc`). Build it with [`RunQueues::builder`]; hand out
/// one [`OwnerHandle`] per core with [`RunQueues::owner`]; backups attach
/// with [`RunQueues::attach_backups`] (or use [`CoreWorker`], which does
/// both).
///
/// # Examples
///
/// ```
/// use noderep::runq::{Exit, Pick, RunQueues};
///
/// let rq = RunQueues::builder().cores(2).build()?;
/// let mut owner = rq.owner(0)?;
/// let task = rq.spawner(1)?.spawn(0)?;
/// assert_eq!(owner.pick()?, Pick::Task(task));
/// owner.complete(task, Exit::Done)?;
/// # Ok::<(), noderep::runq::RunqError>(())
/// ```
#[derive(Clone)]
pub struct RunQueues {
    pub(crate) sh: Arc<Shared>,
}

impl core::fmt::Debug for RunQueues {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RunQueues")
            .field("queues", &self.sh.queues.len())
            .field("config", &self.sh.config)
            .finish()
    }
}

impl RunQueues {
    /// A builder (the one way to construct a scheduler).
    pub fn builder() -> RunqBuilder {
        RunqBuilder::new()
    }

    /// `cores` queues on one node (tests).
    #[cfg(test)]
    pub(crate) fn with_cores(cores: usize, config: Config) -> Result<Self, RunqError> {
        Self::with_layout(&[(0..cores).collect()], config)
    }

    /// Queues for cores laid out as `nodes[i]` = the core ids of node `i`
    /// (core ids must be `0..n`, each once).
    pub(crate) fn with_layout(nodes: &[Vec<usize>], config: Config) -> Result<Self, RunqError> {
        let n: usize = nodes.iter().map(Vec::len).sum();
        config.validate(n)?;
        let mut seen = alloc::vec![false; n];
        for &c in nodes.iter().flatten() {
            if c >= n || seen[c] {
                return Err(RunqError::BadConfig(format!(
                    "core ids must be 0..{n}, each once (bad or repeated id {c})"
                )));
            }
            seen[c] = true;
        }
        // Candidates: the rest of the core's node in ring order, then every
        // following node's cores (wrapping), in order.
        let mut candidates = alloc::vec![Vec::new(); n];
        for (ni, node) in nodes.iter().enumerate() {
            for (i, &c) in node.iter().enumerate() {
                let mut cand: Vec<usize> = (1..node.len())
                    .map(|k| node[(i + k) % node.len()])
                    .collect();
                for k in 1..nodes.len() {
                    cand.extend(nodes[(ni + k) % nodes.len()].iter().copied());
                }
                candidates[c] = cand;
            }
        }
        let k = match config.replication {
            Replication::None => 0,
            _ => config.backups,
        };
        let mut queues: Vec<CachePadded<QueueShared>> = Vec::new();
        queues
            .try_reserve_exact(n)
            .map_err(|_| RunqError::OutOfMemory {
                what: "queue table",
                bytes: n.saturating_mul(core::mem::size_of::<CachePadded<QueueShared>>()),
            })?;
        for (c, cand) in candidates.iter().enumerate() {
            let backups: Vec<usize> = cand.iter().copied().take(k).collect();
            let mut rings = Vec::with_capacity(backups.len());
            for _ in &backups {
                rings.push(Arc::new(Ring::new(1, config.ring_capacity)?));
            }
            queues.push(CachePadded::new(QueueShared {
                lease: Lease::new(c as u16),
                inbox: Inbox::new(1),
                stream: Mutex::new(Stream {
                    rings,
                    backups,
                    generation: 1,
                }),
                stream_gen: AtomicU64::new(1),
                steal: AtomicU64::new(0),
                len_hint: AtomicUsize::new(0),
                home_claimed: AtomicBool::new(false),
                stats: QueueStats::default(),
            }));
        }
        let sh = Shared {
            tasks: TaskTable::new(config.task_capacity)?,
            config,
            queues: queues.into_boxed_slice(),
            candidates,
            fenced_ops: AtomicU64::new(0),
            takeovers: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
            events: Mutex::new(Vec::new()),
            #[cfg(not(loom))]
            origin: std::time::Instant::now(),
            #[cfg(all(feature = "fault-injection", not(loom)))]
            faults: fault::FaultTable::new(n),
        };
        Ok(Self { sh: Arc::new(sh) })
    }

    /// Number of queues (= cores).
    pub fn queues(&self) -> usize {
        self.sh.queues.len()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.sh.config
    }

    /// Nanoseconds since creation (the clock handles are ticked with).
    pub fn now(&self) -> u64 {
        self.sh.now()
    }

    pub(crate) fn check_now(&self, now: u64) -> Result<(), RunqError> {
        self.sh.check_now(now)
    }

    fn check_queue(&self, q: usize) -> Result<(), RunqError> {
        if q < self.sh.queues.len() {
            Ok(())
        } else {
            Err(RunqError::NoSuchQueue {
                queue: q,
                queues: self.sh.queues.len(),
            })
        }
    }

    /// The owner handle of `core`'s home queue (once per core).
    ///
    /// # Errors
    ///
    /// [`RunqError::NoSuchQueue`] for a core that does not exist,
    /// [`RunqError::AlreadyClaimed`] the second time for one core.
    pub fn owner(&self, core: usize) -> Result<OwnerHandle, RunqError> {
        self.check_queue(core)?;
        // AcqRel: exactly one caller wins the flag.
        if self.sh.queues[core]
            .home_claimed
            .swap(true, Ordering::AcqRel)
        {
            return Err(RunqError::AlreadyClaimed { core });
        }
        let (rings, backups) = {
            let _masked = owner::MaskGuard::new();
            let s = lock(&self.sh.queues[core].stream);
            (s.rings.clone(), s.backups.clone())
        };
        Ok(OwnerHandle::new(
            self.sh.clone(),
            core as QueueId,
            core,
            1,
            rings,
            backups,
            Vec::new(),
        ))
    }

    /// Adds to `backups` a handle for every queue that has `core` among its
    /// current backups and that `backups` does not already follow; drops
    /// handles whose stream moved on. Returns how many were added.
    ///
    /// # Errors
    ///
    /// [`RunqError::NoSuchQueue`] for a core that does not exist;
    /// [`RunqError::BadConfig`] if `backups` holds a handle of another core
    /// or scheduler.
    pub fn attach_backups(
        &self,
        core: usize,
        backups: &mut Vec<BackupHandle>,
    ) -> Result<usize, RunqError> {
        self.check_queue(core)?;
        // Handles of another core or scheduler would hide the queues this
        // core must follow (their rings would never be drained).
        if let Some(other) = backups.iter().find(|b| !b.belongs_to(&self.sh, core)) {
            return Err(RunqError::BadConfig(std::format!(
                "attach_backups({core}, ..) was given a handle of core {} or of another scheduler; keep one Vec of backup handles per core and scheduler",
                other.owner_core()
            )));
        }
        backups.retain(|b| b.is_current());
        let mut added = 0;
        for q in 0..self.sh.queues.len() {
            // Acquire: pairs with the Release store after a stream change.
            let generation = self.sh.queues[q].stream_gen.load(Ordering::Acquire);
            if backups
                .iter()
                .any(|b| b.queue() as usize == q && b.generation() == generation)
            {
                continue;
            }
            let got = {
                let _masked = owner::MaskGuard::new();
                let s = lock(&self.sh.queues[q].stream);
                if s.generation == generation {
                    s.backups
                        .iter()
                        .position(|&b| b == core)
                        .map(|rank| (rank, s.rings[rank].clone()))
                } else {
                    None
                }
            };
            if let Some((rank, ring)) = got {
                backups.push(BackupHandle::new(
                    self.sh.clone(),
                    q as QueueId,
                    core,
                    rank,
                    ring,
                    generation,
                ));
                added += 1;
            }
        }
        Ok(added)
    }

    /// A handle for spawning, waking and killing tasks, for code running on
    /// `core`. Its spawns are fenced like the core's queue operations: if
    /// `core` dies mid-spawn, the slot it had taken is reclaimed.
    ///
    /// # Errors
    ///
    /// [`RunqError::NoSuchQueue`] for a core that does not exist.
    pub fn spawner(&self, core: usize) -> Result<Spawner, RunqError> {
        self.check_queue(core)?;
        Ok(Spawner {
            sh: self.sh.clone(),
            core,
        })
    }

    /// The state of a task: `None` once its slot was reused, and for an id
    /// no spawn ever returned (generation 0: generations start at 1).
    pub fn task_state(&self, t: TaskId) -> Option<TaskState> {
        if t.generation() == 0 {
            return None;
        }
        self.sh.tasks.state(t)
    }

    /// The lease word of queue `q`.
    ///
    /// # Errors
    ///
    /// [`RunqError::NoSuchQueue`] for a queue that does not exist.
    pub fn lease(&self, q: QueueId) -> Result<LeaseWord, RunqError> {
        self.check_queue(q as usize)?;
        Ok(self.sh.queues[q as usize].lease.load())
    }

    /// The current backup cores of queue `q`, in rank order.
    ///
    /// # Errors
    ///
    /// [`RunqError::NoSuchQueue`] for a queue that does not exist.
    pub fn backups_of(&self, q: QueueId) -> Result<Vec<usize>, RunqError> {
        self.check_queue(q as usize)?;
        let _masked = owner::MaskGuard::new();
        Ok(lock(&self.sh.queues[q as usize].stream).backups.clone())
    }

    /// Is `core` still the owner of its home queue?
    pub fn is_alive(&self, core: usize) -> bool {
        core < self.sh.queues.len() && self.sh.alive(core)
    }

    /// Operations refused because they carried an old epoch.
    pub fn fenced_ops(&self) -> u64 {
        // Relaxed: a statistics counter.
        self.sh.fenced_ops.load(Ordering::Relaxed)
    }

    /// Takeovers so far.
    pub fn takeovers(&self) -> u64 {
        // Relaxed: a statistics counter.
        self.sh.takeovers.load(Ordering::Relaxed)
    }

    /// Spawns of dead cores whose slots were reclaimed so far.
    pub fn reclaimed_spawns(&self) -> u64 {
        // Relaxed: a statistics counter.
        self.sh.reclaimed.load(Ordering::Relaxed)
    }

    /// Takes the events logged so far.
    pub fn take_events(&self) -> Vec<Event> {
        #[cfg(not(loom))]
        {
            let _masked = owner::MaskGuard::new();
            core::mem::take(&mut *lock(&self.sh.events))
        }
        #[cfg(loom)]
        {
            Vec::new()
        }
    }

    /// Replication counters summed over queues.
    pub fn replication_stats(&self) -> ReplicationStats {
        let mut t = ReplicationStats::default();
        for q in self.sh.queues.iter() {
            // Relaxed: statistics counters.
            t.acked += q.stats.acked.load(Ordering::Relaxed);
            t.shipped += q.stats.shipped.load(Ordering::Relaxed);
            t.lag_ns += q.stats.lag_ns.load(Ordering::Relaxed);
        }
        t
    }

    /// Replication counters of queue `q` since its last takeover.
    ///
    /// # Errors
    ///
    /// [`RunqError::NoSuchQueue`] for a queue that does not exist.
    pub fn queue_stats(&self, q: QueueId) -> Result<ReplicationStats, RunqError> {
        self.check_queue(q as usize)?;
        let st = &self.sh.queues[q as usize].stats;
        // Relaxed: statistics.
        Ok(ReplicationStats {
            acked: st.acked.load(Ordering::Relaxed),
            shipped: st.shipped.load(Ordering::Relaxed),
            lag_ns: st.lag_ns.load(Ordering::Relaxed),
        })
    }

    /// Every slot whose word is not reusable: `(id, state)` (for audits).
    pub fn live_tasks(&self) -> Vec<(TaskId, TaskState)> {
        (0..self.sh.tasks.capacity())
            .filter_map(|slot| {
                let s = self.sh.tasks.state_of_slot(slot);
                (!s.phase.is_reusable()).then(|| (TaskId::new(slot as u32, s.generation), s))
            })
            .collect()
    }

    /// The fault injector of this scheduler (feature `fault-injection`).
    #[cfg(all(feature = "fault-injection", not(loom)))]
    pub fn faults(&self) -> &fault::FaultTable {
        &self.sh.faults
    }
}

/// Locks a cold-path mutex, ignoring poisoning (the protected data is only
/// ever replaced whole, so a panic cannot leave it half-written).
pub(crate) fn lock<T>(m: &Mutex<T>) -> crate::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// What a wake found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The task was blocked and is now in transit to its home queue.
    Woken,
    /// The task was not blocked (it is in this phase): nothing done.
    NotBlocked(TaskPhase),
    /// The task is over (its slot was reused).
    Gone,
}

/// What a kill found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kill {
    /// The task was queued, blocked or in transit and is now removed: it will
    /// never run again.
    Killed,
    /// The task is running: it must exit by itself.
    Running,
    /// An owner is in the middle of an operation on it: retry.
    Busy,
    /// The task already completed or was removed.
    AlreadyGone,
}

/// Spawns, wakes and kills tasks; bound to the core it runs on (a spawn is
/// fenced, and its slot reclaimed, if that core dies mid-spawn).
///
/// # Examples
///
/// ```
/// use noderep::runq::{Kill, RunQueues};
///
/// let rq = RunQueues::builder().cores(2).build()?;
/// let sp = rq.spawner(0)?;
/// let t = sp.spawn(1)?;
/// assert_eq!(sp.kill(t), Kill::Killed);
/// # Ok::<(), noderep::runq::RunqError>(())
/// ```
#[derive(Clone)]
pub struct Spawner {
    sh: Arc<Shared>,
    core: usize,
}

impl core::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Spawner").field("core", &self.core).finish()
    }
}

impl Spawner {
    /// Spawns a task on queue `q`; it is acknowledged (in transit) on return.
    ///
    /// # Errors
    ///
    /// As [`Spawner::spawn_with`].
    pub fn spawn(&self, q: QueueId) -> Result<TaskId, RunqError> {
        self.spawn_with(q, |_| {})
    }

    /// As [`Spawner::spawn`], calling `before_delivery` with the new id before
    /// the task can reach any core (to register it in a ledger). If
    /// `before_delivery` panics, the task is not spawned (its slot is free
    /// again) and the panic continues in the caller.
    ///
    /// The spawn runs in three steps: take a slot in phase `Spawning` (stamped
    /// with this spawner's core), deliver the id to `q`'s inbox (its owner
    /// defers a `Spawning` delivery), then CAS `Spawning` to `Transit`. If
    /// the core dies in between, its takeover (or a later allocation) CASes
    /// the slot to `Removed`: nothing leaks, and the final CAS of a zombie
    /// spawner fails.
    ///
    /// # Errors
    ///
    /// [`RunqError::NoSuchQueue`] for a queue that does not exist,
    /// [`RunqError::TableFull`] when no slot is free,
    /// [`RunqError::SpawnerFenced`] if this spawner's core was taken over.
    pub fn spawn_with(
        &self,
        q: QueueId,
        before_delivery: impl FnOnce(TaskId),
    ) -> Result<TaskId, RunqError> {
        if q as usize >= self.sh.queues.len() {
            return Err(RunqError::NoSuchQueue {
                queue: q as usize,
                queues: self.sh.queues.len(),
            });
        }
        let me = self.core as QueueId;
        if !self.sh.alive(self.core) {
            return Err(RunqError::SpawnerFenced { core: self.core });
        }
        let sh = &self.sh;
        let t = sh
            .tasks
            .allocate(TaskPhase::Spawning, me, |c| !sh.alive(c as usize))?;
        let spawning = TaskState::new(t.generation(), TaskPhase::Spawning, me, 0);
        // Fence check after the word is written, by a read-modify-write of
        // the lease word: the RMWs on that word (ours, renewals, the takeover
        // CAS) are totally ordered. (1) Ours comes first: the takeover's
        // Acquire CAS reads from a value at or after our Release RMW, so its
        // table scan sees our `Spawning` word and reclaims it if we die. (2)
        // The takeover comes first: we read the new owner here and give the
        // slot back ourselves. There is no third case (a plain load here and
        // a plain load in the scan could each miss the other's write).
        if !sh.queues[self.core].lease.touch_is_owner(self.core as u16) {
            let _ = sh.tasks.reclaim_spawning(t, spawning);
            return Err(RunqError::SpawnerFenced { core: self.core });
        }
        sh.fault(self.core, fault_points::FaultPoint::SpawnAllocated);
        // The caller's callback may panic: nobody has been told of the task
        // yet, so the slot goes back (as a dead spawner's would) and the
        // panic goes on; otherwise it would stay `Spawning` for as long as
        // this core lives.
        if let Err(panic) =
            std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| before_delivery(t)))
        {
            let _ = sh.tasks.reclaim_spawning(t, spawning);
            std::panic::resume_unwind(panic);
        }
        let inbox = &sh.queues[q as usize].inbox;
        let tag = inbox.push(t);
        sh.fault(self.core, fault_points::FaultPoint::SpawnDelivered);
        match sh
            .tasks
            .cas(t, spawning, spawning.with(TaskPhase::Transit, q, 0))
        {
            task::Cas::Done => {
                // The owner that took the delivery may have deferred it (the
                // word said `Spawning`) and died since: if the inbox changed
                // hands, deliver again (see `Inbox::tag_now`).
                if inbox.tag_now() != tag {
                    inbox.push(t);
                }
                Ok(t)
            }
            // Reclaimed: our core was taken over while we spawned.
            task::Cas::Saw(_) => Err(RunqError::SpawnerFenced { core: self.core }),
        }
    }

    /// Wakes a blocked task: it goes back to its home queue.
    pub fn wake(&self, t: TaskId) -> Wake {
        loop {
            let Some(s) = self.sh.tasks.state(t) else {
                return Wake::Gone;
            };
            if s.phase != TaskPhase::Blocked {
                return Wake::NotBlocked(s.phase);
            }
            if self
                .sh
                .tasks
                .cas(t, s, s.with(TaskPhase::Transit, s.place, 0))
                == task::Cas::Done
            {
                self.sh.queues[s.place as usize].inbox.push(t);
                return Wake::Woken;
            }
        }
    }

    /// Kills a task that is not running.
    pub fn kill(&self, t: TaskId) -> Kill {
        loop {
            let Some(s) = self.sh.tasks.state(t) else {
                return Kill::AlreadyGone;
            };
            match s.phase {
                TaskPhase::Queued | TaskPhase::Blocked | TaskPhase::Transit => {
                    // Mutant `kill_check_then_store` (loom, runq models):
                    // "check, then act", racing the owner's CASes.
                    let blind = mutants::skip!("kill_check_then_store");
                    let removed = s.with(TaskPhase::Removed, s.place, s.epoch);
                    if self.sh.tasks.cas_or_blind(blind, t, s, removed) == task::Cas::Done {
                        return Kill::Killed;
                    }
                }
                TaskPhase::Running => return Kill::Running,
                TaskPhase::Done | TaskPhase::Removed | TaskPhase::Free => return Kill::AlreadyGone,
                _ => return Kill::Busy,
            }
        }
    }
}
