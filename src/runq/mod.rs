//! Per-core run queues replicated on a neighbour core, with epochs, leases and
//! tombstones: a scheduler substrate that survives the loss of a core with no
//! task lost, duplicated or resurrected.
//!
//! Each core owns one run queue ([`OwnerHandle`]); a neighbour core
//! ([`BackupHandle`], ring order within a node, then across nodes) keeps a
//! replica of it. When a core stops renewing its lease, the neighbour raises
//! the queue's epoch, adopts the queue from its replica, runs its tasks, and
//! from then on every operation of the old epoch is refused. A core that was
//! only frozen wakes up as a fenced zombie and can do no harm. Other cores
//! spawn, wake and kill tasks through a [`Spawner`].
//!
//! # How it works
//!
//! * **Task words** ([`task`]): one atomic word per task names its one place
//!   (`Transit`, `Queued{q, e}`, `Running{q, e}`, `Blocked`, `Done`,
//!   `Removed`, or an owner's *intent*). Every change of place is a CAS on it,
//!   generation included, so a reused slot is never mistaken for an old task.
//! * **Operations** carry `(epoch, seq)` ([`Stamp`]) and run in three steps:
//!   CAS the task word to an intent stamped with the owner's epoch; *commit*
//!   (push the record into the backup's ring — synchronous mode — or check the
//!   ring is still open and buffer the record — asynchronous mode); CAS the
//!   intent to its final phase.
//! * **Fencing** happens where state changes: the lease word ([`lease`]) is
//!   renewed and taken over by CAS; the takeover closes the replication ring
//!   ([`ring`]) with the new epoch in its tail word, re-tags the inbox
//!   ([`inbox`]) and *claims* each adopted task's word. A zombie's commit then
//!   fails at the ring, its finalising CAS fails at the task word, and it is
//!   told [`RunqError::Fenced`].
//! * **Tombstones** ([`replica`]): completions and removals are kept in the
//!   replica as `(task, epoch, seq)` entries that outrank any older enqueue;
//!   they are collected once the backup has passed them (`Collect` records).
//! * **Re-backup**: the adopter seeds a new backup with a snapshot, and an
//!   owner whose backup died does the same (raising its own epoch so the old
//!   backup can no longer take over), so a second failure is survived too.
//! * **Faults** ([`fault`]): crashes at named points inside operations,
//!   freezes by a real signal that parks the thread, slow-downs beyond the
//!   lease. **Invariants** ([`check`]) are checked by a lock-free ledger.
//!
//! # Trade-offs
//!
//! Synchronous replication costs one CAS on a shared cache line per operation
//! and stalls the owner when the backup stops draining; asynchronous
//! replication acknowledges at once and ships in batches, losing about λ·L
//! operations per failure (λ the write rate, L the replication lag). In both
//! modes the task words prevent duplicates and resurrections: what async mode
//! can lose is only tasks whose enqueue had not been shipped. A failure of the
//! adopter between its takeover and the seeding of the new backup (a double
//! failure inside one takeover) is not survived.
//!
//! # References
//!
//! Gray & Cheriton, "Leases", SOSP 1989; Kleppmann, "How to do distributed
//! locking" (fencing tokens), 2016; Shapiro et al., "CRDTs", 2011 (tombstones);
//! van Renesse & Schneider, "Chain replication", OSDI 2004 (backup order).
//!
//! The task-word protocol and the takeover as state tables:
//! `docs/ARCHITECTURE.md` in the repository.

pub mod check;
#[cfg(not(loom))]
pub mod fault;
pub mod inbox;
pub mod lease;
pub mod replica;
pub mod ring;
pub mod task;
#[cfg(all(test, not(loom)))]
mod tests;

mod backup;
mod owner;
mod worker;

pub use backup::{BackupEvent, BackupHandle, TakeoverReport};
pub use lease::{LeaseWord, Renewal, Takeover};
pub use owner::{Exit, OwnerHandle, Pick, Tick};
pub use replica::{Apply, Replica, Replicated};
pub use ring::{Record, RecordKind, Stamp};
pub use task::{Phase, QueueId, TaskId, TaskState, MAX_QUEUES};
pub use worker::{CoreWorker, Step};

use crate::sync::{Arc, AtomicBool, AtomicU64, AtomicUsize, CachePadded, Mutex, Ordering};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use inbox::Inbox;
use lease::Lease;
use ring::Ring;
use task::TaskTable;

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
    /// Synchronous replication could not get a free slot in the backup's ring.
    #[error("the backup of queue {queue} is not draining its replication ring: retry after the next tick (a dead backup is replaced once its own lease expires), or use a larger ring_capacity")]
    BackupStalled {
        /// The queue.
        queue: QueueId,
    },
    /// No free task slot.
    #[error("the task table is full ({capacity} slots): complete or remove tasks, or raise Config::task_capacity")]
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
        phase: Phase,
    },
}

/// How operations reach the backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replication {
    /// No backup at all: the baseline an unreplicated scheduler would be
    /// (a failure loses the queue). Operations are still fenced.
    None,
    /// Acknowledged only once the record is in the backup's ring: an
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

/// Run-queue configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Replication mode.
    pub replication: Replication,
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
            lease: Duration::from_millis(20),
            skew_margin: Duration::from_millis(5),
            // Under loom the logic is unchanged; only the sizes shrink so the
            // model checker's state space stays small.
            ring_capacity: if cfg!(loom) { 4 } else { 1 << 14 },
            task_capacity: if cfg!(loom) { 4 } else { 1 << 16 },
        }
    }
}

impl Config {
    fn validate(&self) -> Result<(), RunqError> {
        if !self.ring_capacity.is_power_of_two() || self.ring_capacity < 4 {
            return Err(RunqError::BadConfig(format!(
                "ring_capacity must be a power of two >= 4 (got {})",
                self.ring_capacity
            )));
        }
        if self.task_capacity == 0 || self.task_capacity > u32::MAX as usize {
            return Err(RunqError::BadConfig(format!(
                "task_capacity must be in 1..=2^32-1 (got {})",
                self.task_capacity
            )));
        }
        if self.lease.is_zero() || self.lease > Duration::from_secs(60) {
            return Err(RunqError::BadConfig(format!(
                "lease must be in (0, 60 s] (got {:?})",
                self.lease
            )));
        }
        if let Replication::Async { batch, .. } = self.replication {
            if batch == 0 || batch > self.ring_capacity {
                return Err(RunqError::BadConfig(format!(
                    "async batch must be in 1..=ring_capacity ({}) (got {batch})",
                    self.ring_capacity
                )));
            }
        }
        Ok(())
    }

    /// Nanoseconds a watcher waits without seeing a renewal before a takeover.
    pub fn expiry_ns(&self) -> u64 {
        (self.lease + self.skew_margin).as_nanos() as u64
    }
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
    /// A neighbour saw a lease unrenewed for lease + margin.
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
    /// A neighbour took a queue over.
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
    /// A queue got a new backup (seeded with a snapshot).
    Rebackup {
        /// The queue.
        queue: QueueId,
        /// Its owner.
        owner: usize,
        /// The new backup core.
        backup: usize,
        /// The epoch the new stream carries.
        epoch: u32,
        /// Snapshot lines sent.
        snapshot: usize,
    },
}

/// The current replication stream of a queue.
pub(crate) struct Stream {
    pub(crate) ring: Arc<Ring>,
    pub(crate) backup: Option<usize>,
    pub(crate) generation: u64,
}

/// Statistics counters of one queue (Relaxed: reports only).
#[derive(Default)]
pub(crate) struct QueueStats {
    /// Operations acknowledged by owners.
    pub(crate) acked: AtomicU64,
    /// Operations shipped to a ring (sync: at commit; async: at shipment).
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
    #[allow(dead_code)]
    pub(crate) events: Mutex<Vec<Event>>,
    #[cfg(not(loom))]
    pub(crate) origin: std::time::Instant,
    #[cfg(not(loom))]
    pub(crate) faults: fault::FaultTable,
}

impl Shared {
    /// Nanoseconds since creation (0 under loom, where models pass times).
    pub(crate) fn now(&self) -> u64 {
        #[cfg(not(loom))]
        {
            self.origin.elapsed().as_nanos() as u64
        }
        #[cfg(loom)]
        {
            0
        }
    }

    /// Is `core` alive: does it still own its home queue?
    pub(crate) fn alive(&self, core: usize) -> bool {
        self.queues[core].lease.load().owner as usize == core
    }

    /// The first live backup candidate of `core`.
    pub(crate) fn next_live(&self, core: usize) -> Option<usize> {
        self.candidates[core]
            .iter()
            .copied()
            .find(|&c| self.alive(c))
    }

    pub(crate) fn log(&self, kind: EventKind) {
        #[cfg(not(loom))]
        {
            let at_ns = self.now();
            fault::masked(|| {
                if let Ok(mut ev) = self.events.lock() {
                    ev.push(Event { at_ns, kind });
                }
            });
        }
        #[cfg(loom)]
        drop(kind);
    }

    /// A fault point (no-op under loom).
    #[inline]
    pub(crate) fn fault(&self, _core: usize, _point: fault_points::FaultPoint) {
        #[cfg(not(loom))]
        self.faults.hit(_core, _point, || self.now());
    }
}

/// Named places where a crash or slow-down can be injected.
pub mod fault_points {
    /// A named fault point.
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
        /// In a takeover, right after winning the lease (the adopter's own
        /// double failure; not survived, see the module docs).
        AfterLeaseWon = 5,
        /// Between a migration's delivery and its final CAS.
        MigrateDelivered = 6,
    }

    impl FaultPoint {
        /// Every point, for random fault plans.
        pub const ALL: [FaultPoint; 6] = [
            FaultPoint::OpStart,
            FaultPoint::AfterIntent,
            FaultPoint::AfterCommit,
            FaultPoint::Tick,
            FaultPoint::AfterLeaseWon,
            FaultPoint::MigrateDelivered,
        ];

        /// The points a single failure may hit and be survived.
        pub const SURVIVABLE: [FaultPoint; 5] = [
            FaultPoint::OpStart,
            FaultPoint::AfterIntent,
            FaultPoint::AfterCommit,
            FaultPoint::Tick,
            FaultPoint::MigrateDelivered,
        ];

        #[cfg_attr(loom, allow(dead_code))]
        pub(crate) fn from_u8(v: u8) -> Option<Self> {
            Self::ALL.iter().copied().find(|p| *p as u8 == v)
        }
    }
}

/// A scheduler: one run queue per core, each replicated on a neighbour.
///
/// Cheap to clone (an `Arc`). Hand out one [`OwnerHandle`] per core with
/// [`RunQueues::owner`]; backups attach with [`RunQueues::attach_backups`]
/// (or use [`CoreWorker`], which does both).
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
    /// One queue per core of `topology`; backups in ring order within a node,
    /// then across nodes.
    #[cfg(not(loom))]
    pub fn new(topology: &crate::topology::Topology, config: Config) -> Result<Self, RunqError> {
        let nodes: Vec<Vec<usize>> = topology
            .nodes()
            .iter()
            .map(|n| n.cores.iter().map(|c| c.id).collect())
            .collect();
        Self::with_layout(&nodes, config)
    }

    /// `cores` queues on one (simulated) node.
    pub fn with_cores(cores: usize, config: Config) -> Result<Self, RunqError> {
        Self::with_layout(&[(0..cores).collect()], config)
    }

    /// Queues for cores laid out as `nodes[i]` = the core ids of node `i`
    /// (core ids must be `0..n`, each once).
    pub fn with_layout(nodes: &[Vec<usize>], config: Config) -> Result<Self, RunqError> {
        config.validate()?;
        let n: usize = nodes.iter().map(Vec::len).sum();
        if n < 2 {
            return Err(RunqError::BadConfig(format!(
                "a replicated run queue needs at least 2 cores (got {n}): a queue's backup lives on another core"
            )));
        }
        if n > MAX_QUEUES {
            return Err(RunqError::BadConfig(format!(
                "at most {MAX_QUEUES} cores are supported (got {n})"
            )));
        }
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
        let queues: Vec<CachePadded<QueueShared>> = (0..n)
            .map(|c| {
                let backup = match config.replication {
                    Replication::None => None,
                    _ => candidates[c].first().copied(),
                };
                CachePadded::new(QueueShared {
                    lease: Lease::new(c as u16),
                    inbox: Inbox::new(1),
                    stream: Mutex::new(Stream {
                        ring: Arc::new(Ring::new(1, config.ring_capacity)),
                        backup,
                        generation: 1,
                    }),
                    stream_gen: AtomicU64::new(1),
                    steal: AtomicU64::new(0),
                    len_hint: AtomicUsize::new(0),
                    home_claimed: AtomicBool::new(false),
                    stats: QueueStats::default(),
                })
            })
            .collect();
        let sh = Shared {
            tasks: TaskTable::new(config.task_capacity),
            config,
            queues: queues.into_boxed_slice(),
            candidates,
            fenced_ops: AtomicU64::new(0),
            takeovers: AtomicU64::new(0),
            events: Mutex::new(Vec::new()),
            #[cfg(not(loom))]
            origin: std::time::Instant::now(),
            #[cfg(not(loom))]
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
    pub fn owner(&self, core: usize) -> Result<OwnerHandle, RunqError> {
        self.check_queue(core)?;
        // AcqRel: exactly one caller wins the flag.
        if self.sh.queues[core]
            .home_claimed
            .swap(true, Ordering::AcqRel)
        {
            return Err(RunqError::AlreadyClaimed { core });
        }
        let ring = self.sh.queues[core]
            .stream
            .lock()
            .map(|s| (s.ring.clone(), s.backup, s.generation))
            .map_err(|_| RunqError::BadConfig("stream lock poisoned".into()))?;
        Ok(OwnerHandle::new(
            self.sh.clone(),
            core as QueueId,
            core,
            1,
            ring.0,
            ring.1,
            Vec::new(),
        ))
    }

    /// Adds to `backups` a handle for every queue whose current backup is
    /// `core` and that `backups` does not already follow; drops handles whose
    /// stream moved on. Returns how many were added.
    pub fn attach_backups(
        &self,
        core: usize,
        backups: &mut Vec<BackupHandle>,
    ) -> Result<usize, RunqError> {
        self.check_queue(core)?;
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
                (s.backup == Some(core) && s.generation == generation).then(|| s.ring.clone())
            };
            if let Some(ring) = got {
                backups.push(BackupHandle::new(
                    self.sh.clone(),
                    q as QueueId,
                    core,
                    ring,
                    generation,
                ));
                added += 1;
            }
        }
        Ok(added)
    }

    /// A handle for spawning, waking and killing tasks from any core.
    pub fn spawner(&self) -> Spawner {
        Spawner {
            sh: self.sh.clone(),
        }
    }

    /// The state of a task (`None` once its slot was reused).
    pub fn task_state(&self, t: TaskId) -> Option<TaskState> {
        self.sh.tasks.state(t)
    }

    /// The lease word of queue `q`.
    pub fn lease(&self, q: QueueId) -> Result<LeaseWord, RunqError> {
        self.check_queue(q as usize)?;
        Ok(self.sh.queues[q as usize].lease.load())
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

    /// Takes the events logged so far.
    pub fn take_events(&self) -> Vec<Event> {
        #[cfg(not(loom))]
        {
            fault::masked(|| core::mem::take(&mut *lock(&self.sh.events)))
        }
        #[cfg(loom)]
        {
            Vec::new()
        }
    }

    /// `(acked, shipped, lag_ns_sum)` summed over queues: operations
    /// acknowledged, operations that reached a backup, and their total lag.
    pub fn replication_stats(&self) -> (u64, u64, u64) {
        let mut t = (0, 0, 0);
        for q in self.sh.queues.iter() {
            // Relaxed: statistics counters.
            t.0 += q.stats.acked.load(Ordering::Relaxed);
            t.1 += q.stats.shipped.load(Ordering::Relaxed);
            t.2 += q.stats.lag_ns.load(Ordering::Relaxed);
        }
        t
    }

    /// `(acked, shipped, lag_ns_sum)` of queue `q` since its last takeover.
    pub fn queue_stats(&self, q: QueueId) -> Result<(u64, u64, u64), RunqError> {
        self.check_queue(q as usize)?;
        let st = &self.sh.queues[q as usize].stats;
        // Relaxed: statistics.
        Ok((
            st.acked.load(Ordering::Relaxed),
            st.shipped.load(Ordering::Relaxed),
            st.lag_ns.load(Ordering::Relaxed),
        ))
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

    /// The fault injector of this scheduler.
    #[cfg(not(loom))]
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
    NotBlocked(Phase),
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

/// Spawns, wakes and kills tasks from any core.
#[derive(Clone)]
pub struct Spawner {
    sh: Arc<Shared>,
}

impl core::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Spawner")
    }
}

impl Spawner {
    /// Spawns a task on queue `q`; it is acknowledged (in transit) on return.
    pub fn spawn(&self, q: QueueId) -> Result<TaskId, RunqError> {
        self.spawn_with(q, |_| {})
    }

    /// As [`Spawner::spawn`], calling `before_delivery` with the new id before
    /// the task can reach any core (to register it in a ledger).
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
        let t = self.sh.tasks.allocate(Phase::Transit, q)?;
        before_delivery(t);
        self.sh.queues[q as usize].inbox.push(t);
        Ok(t)
    }

    /// Wakes a blocked task: it goes back to its home queue.
    pub fn wake(&self, t: TaskId) -> Wake {
        loop {
            let Some(s) = self.sh.tasks.state(t) else {
                return Wake::Gone;
            };
            if s.phase != Phase::Blocked {
                return Wake::NotBlocked(s.phase);
            }
            if self.sh.tasks.cas(t, s, s.with(Phase::Transit, s.place, 0)) == task::Cas::Done {
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
                Phase::Queued | Phase::Blocked | Phase::Transit => {
                    #[cfg(noderep_mutant = "kill_check_then_store")]
                    {
                        // MUTANT: "check, then act": a blind store of Removed
                        // after the check above, racing the owner's CASes.
                        self.sh
                            .tasks
                            .store_for_mutant(t, s.with(Phase::Removed, s.place, s.epoch));
                        return Kill::Killed;
                    }
                    #[cfg(not(noderep_mutant = "kill_check_then_store"))]
                    if self
                        .sh
                        .tasks
                        .cas(t, s, s.with(Phase::Removed, s.place, s.epoch))
                        == task::Cas::Done
                    {
                        return Kill::Killed;
                    }
                }
                Phase::Running => return Kill::Running,
                Phase::Done | Phase::Removed | Phase::Free => return Kill::AlreadyGone,
                _ => return Kill::Busy,
            }
        }
    }
}
