//! A backup core's handle of a queue it backs up: it applies the replication
//! stream to its replica, watches the owner's lease, and when the lease has
//! expired takes the queue over.
//!
//! A backup handle cannot change the queue; its one power is the takeover,
//! which turns it into an [`OwnerHandle`] of the next epoch.
//!
//! # How it works
//!
//! A queue has `k` backups (fan-out: the owner pushes every record into each
//! backup's own ring; in synchronous mode an operation is acknowledged once
//! all `k` rings hold it, so every backup's replica has every acknowledged
//! operation). All `k` backups watch the lease; when it expires they race for
//! it and the lease CAS picks exactly one winner, whatever its rank: there is
//! no wait by rank, so a takeover after a core *and* its first backup died is
//! as quick as after one failure.
//!
//! The takeover, in order: (1) CAS the lease word it watched to
//! `(epoch+1, itself)` — losing means the owner renewed or another backup
//! won; (2) close every ring of the stream with the new epoch (every later
//! push of the old owner fails); (3) re-tag the inbox (every later take of
//! the old owner fails); (4) drain its ring's last records; (5) claim, by CAS
//! on each task word, the tasks the replica shows running (they are re-queued
//! first: their runs died with the core) or queued; (6) scan the task table
//! and claim every word of the queue from an older epoch — in transit,
//! queued, running or an unfinished intent — (the task word, not the replica,
//! is the authority: a record a zombie left in one ring only is harmless) and
//! reclaim the slots of spawns begun by dead cores; (7) seed `k` new backups
//! with a snapshot. Each claim is a CAS from a word of an *older* epoch, so a
//! zombie's finalising CAS fails.
//!
//! **Standby.** A backup whose ring was closed by another backup's takeover
//! keeps its replica and keeps watching the lease until the new owner
//! publishes its new stream (step 7). If the new owner dies before that (a
//! failure inside the takeover), the standby takes the queue over in turn:
//! with `k >= 2`, a core and `k - 1` of its backups may fail within one
//! recovery window.

use core::cell::Cell;
use core::marker::PhantomData;

use crate::mutants;
use crate::sync::{Arc, Ordering};
use alloc::boxed::Box;
use alloc::vec::Vec;

use super::fault_points::FaultPoint;
use super::lease::{LeaseWatch, Takeover, Watch};
use super::owner::{MaskGuard, OwnerHandle};
use super::replica::Replica;
use super::ring::{Ring, RingState};
use super::task::{Cas, QueueId, TaskId, TaskPhase, TaskState, MASK24};
use super::{lock, EventKind, RunqError, Shared};

/// What a takeover did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakeoverReport {
    /// The queue taken over.
    pub queue: QueueId,
    /// Its previous owner core.
    pub from: usize,
    /// The new owner core.
    pub by: usize,
    /// The new epoch.
    pub epoch: u32,
    /// Tasks adopted in all.
    pub adopted: usize,
    /// Of which were running on the failed core (re-queued first).
    pub requeued_running: usize,
    /// Of which were found in transit or mid-operation by the table scan.
    pub from_scan: usize,
    /// Records the replica had applied.
    pub replica_records: u64,
    /// Operations the old owner acknowledged but never shipped (async loss).
    pub lost_ops: u64,
    /// How long the owner had been silent when the lease was taken (ns).
    pub silent_ns: u64,
    /// Time from the last renewal seen to the end of the takeover (ns).
    pub takeover_ns: u64,
}

/// What a poll did.
#[derive(Debug)]
pub enum BackupEvent {
    /// Nothing new.
    Idle,
    /// This many records were applied.
    Applied(usize),
    /// The lease had expired and this core now owns the queue.
    TookOver {
        /// The new owner handle (on the polling core).
        owner: Box<OwnerHandle>,
        /// What the takeover did.
        report: TakeoverReport,
    },
    /// This handle no longer backs the queue up (the owner chose another
    /// backup, or someone else took over): drop it.
    Detached,
}

/// A backup core's handle of one queue (one per stream it follows).
pub struct BackupHandle {
    sh: Arc<Shared>,
    q: QueueId,
    core: usize,
    /// This backup's rank in the stream (0 = first backup).
    rank: usize,
    ring: Arc<Ring>,
    generation: u64,
    replica: Replica,
    watch: LeaseWatch,
    records: u64,
    detached: bool,
    _not_sync: PhantomData<Cell<()>>,
}

impl core::fmt::Debug for BackupHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BackupHandle")
            .field("queue", &self.q)
            .field("core", &self.core)
            .field("records", &self.records)
            .finish()
    }
}

impl BackupHandle {
    /// The core this handle was attached for.
    pub(crate) fn owner_core(&self) -> usize {
        self.core
    }

    /// Whether this handle is `core`'s for the scheduler behind `sh`.
    pub(crate) fn belongs_to(&self, sh: &Arc<Shared>, core: usize) -> bool {
        Arc::ptr_eq(&self.sh, sh) && self.core == core
    }

    pub(crate) fn new(
        sh: Arc<Shared>,
        q: QueueId,
        core: usize,
        rank: usize,
        ring: Arc<Ring>,
        generation: u64,
    ) -> Self {
        Self {
            sh,
            q,
            core,
            rank,
            ring,
            generation,
            replica: Replica::new(),
            watch: LeaseWatch::new(),
            records: 0,
            detached: false,
            _not_sync: PhantomData,
        }
    }

    /// The queue backed up.
    pub fn queue(&self) -> QueueId {
        self.q
    }

    /// This backup's rank among the queue's backups (0 = first).
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The stream generation this handle follows.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The replica as applied so far (feature `fault-injection`, for tests).
    #[cfg(any(test, feature = "fault-injection", loom))]
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    pub(crate) fn is_current(&self) -> bool {
        // Acquire: pairs with the Release store of a new stream generation.
        !self.detached
            && self.sh.queues[self.q as usize]
                .stream_gen
                .load(Ordering::Acquire)
                == self.generation
    }

    /// Applies what the owner shipped, then watches the lease at time `now`
    /// (ns, [`super::RunQueues::now`]) and takes the queue over if it expired.
    ///
    /// # Errors
    ///
    /// [`RunqError::EpochExhausted`] if the queue cannot be taken over again;
    /// [`RunqError::BadTime`] for a `now` more than an hour ahead of
    /// [`RunQueues::now`](super::RunQueues::now) (an earlier `now` than
    /// before restarts the wait for the lease to expire).
    pub fn poll(&mut self, now: u64) -> Result<BackupEvent, RunqError> {
        if self.detached {
            return Ok(BackupEvent::Detached);
        }
        self.sh.check_now(now)?;
        let mut n = 0usize;
        let replica = &mut self.replica;
        let state = self.ring.drain(|r| {
            replica.apply(r);
            n += 1;
        });
        self.records += n as u64;
        // A core fenced from its own queue (it was only slow) keeps backing
        // up: its replica may be the only one, and its takeover is fenced
        // by the lease CAS like anyone's. Owners move away from it at their
        // next tick, which detaches this handle.
        //
        // A ring closed by another backup's takeover, while the stream is
        // still current (the new owner has not published its new stream
        // yet), leaves this handle on standby: it keeps watching the lease.
        if !self.is_current() {
            self.detached = true;
            return Ok(BackupEvent::Detached);
        }
        // Mutant `standby_detaches` (docs/RESULTS.md): no standby, a closed
        // ring detaches at once.
        if mutants::skip!("standby_detaches") && state != RingState::Open {
            self.detached = true;
            return Ok(BackupEvent::Detached);
        }
        let qs = &self.sh.queues[self.q as usize];
        match self
            .watch
            .observe(&qs.lease, now, self.sh.config.expiry_ns())
        {
            Watch::Live => Ok(if n == 0 {
                BackupEvent::Idle
            } else {
                BackupEvent::Applied(n)
            }),
            Watch::Expired { word, since } => {
                if word.owner as usize == self.core {
                    return Ok(BackupEvent::Idle);
                }
                self.takeover(word, since, now)
            }
        }
    }

    /// Is a word in state `s` the queue's to claim in `epoch`: in transit
    /// to it, or queued, running or mid-operation in an older epoch of it?
    fn claimable(&self, s: TaskState, epoch: u32) -> bool {
        match s.phase {
            TaskPhase::Transit => s.place == self.q,
            TaskPhase::Queued | TaskPhase::Running => s.place == self.q && s.epoch < epoch,
            p if p.is_intent() => s.place == self.q && s.epoch < epoch,
            // Mutant `adopt_finished` (docs/RESULTS.md): the adopter also
            // claims tasks that already finished here (they would run a
            // second time).
            TaskPhase::Done if mutants::skip!("adopt_finished") => s.place == self.q,
            _ => false,
        }
    }

    /// Claims `t` for queue `q` in `epoch` if its word is claimable.
    fn claim(&self, t: TaskId, epoch: u32) -> bool {
        loop {
            let Some(s) = self.sh.tasks.state(t) else {
                return false;
            };
            let ours = self.claimable(s, epoch);
            if !ours {
                return false;
            }
            if self
                .sh
                .tasks
                .cas(t, s, s.with(TaskPhase::Queued, self.q, epoch))
                == Cas::Done
            {
                return true;
            }
        }
    }

    fn takeover(
        &mut self,
        word: super::LeaseWord,
        since: u64,
        now: u64,
    ) -> Result<BackupEvent, RunqError> {
        if u64::from(word.epoch) + 1 > MASK24 {
            return Err(RunqError::EpochExhausted { queue: self.q });
        }
        self.sh.log(EventKind::LeaseExpired {
            queue: self.q,
            owner: word.owner,
            epoch: word.epoch,
            silent_ns: now.saturating_sub(since),
        });
        let qs = &self.sh.queues[self.q as usize];
        // (1) the lease word: one winner per epoch.
        let epoch = match qs.lease.try_takeover(word, self.core as u16) {
            Takeover::Won { epoch } => epoch,
            Takeover::Changed { .. } => return Ok(BackupEvent::Idle),
        };
        // (2) close every ring: the fence for the old owner's commits.
        {
            let _masked = MaskGuard::new();
            let s = lock(&qs.stream);
            for r in &s.rings {
                r.close(epoch);
            }
            if !s.rings.iter().any(|r| Arc::ptr_eq(r, &self.ring)) {
                self.ring.close(epoch);
            }
        }
        // (3) the inbox: the fence for the old owner's takes.
        qs.inbox.retag(epoch);
        // The worst moment for the adopter to die: the old owner is fenced,
        // nobody runs the queue yet (a standby backup takes over).
        self.sh.fault(self.core, FaultPoint::AfterLeaseWon);
        // (4) the last records.
        let replica = &mut self.replica;
        let mut n = 0u64;
        self.ring.drain(|r| {
            replica.apply(r);
            n += 1;
        });
        self.records += n;
        // (5) claim what the replica knows: running tasks first.
        let mut adopted: Vec<TaskId> = Vec::new();
        let mut requeued = 0;
        for t in self.replica.running() {
            if self.claim(t, epoch) {
                adopted.push(t);
                requeued += 1;
            }
        }
        for (t, _) in self.replica.queued() {
            if self.claim(t, epoch) {
                adopted.push(t);
            }
        }
        // (6) every other word of the queue from an older epoch (in transit,
        // unfinished operations, and what the replica missed), and spawns
        // begun by dead cores.
        let mut from_scan = 0;
        for slot in 0..self.sh.tasks.capacity() {
            let s = self.sh.tasks.state_of_slot(slot);
            let t = TaskId::new(slot as u32, s.generation);
            if s.phase == TaskPhase::Spawning {
                if !self.sh.alive(s.place as usize) {
                    self.sh.reclaim_spawn(t, s);
                }
            } else if self.claimable(s, epoch) && self.claim(t, epoch) {
                adopted.push(t);
                from_scan += 1;
            }
        }
        // Relaxed: statistics (the async loss estimate of this failure).
        let acked = qs.stats.acked.swap(0, Ordering::Relaxed);
        let shipped = qs.stats.shipped.swap(0, Ordering::Relaxed);
        let lost_ops = acked.saturating_sub(shipped);
        // (7) become the owner and give the queue a new backup.
        let adopted_n = adopted.len();
        let mut owner = OwnerHandle::new(
            self.sh.clone(),
            self.q,
            self.core,
            epoch,
            alloc::vec![self.ring.clone()],
            Vec::new(),
            adopted,
        );
        owner.seed_backup();
        self.detached = true;
        // Relaxed: statistics.
        self.sh.takeovers.fetch_add(1, Ordering::Relaxed);
        let report = TakeoverReport {
            queue: self.q,
            from: word.owner as usize,
            by: self.core,
            epoch,
            adopted: adopted_n,
            requeued_running: requeued,
            from_scan,
            replica_records: self.records,
            lost_ops,
            silent_ns: now.saturating_sub(since),
            takeover_ns: self.sh.now().max(now).saturating_sub(since),
        };
        self.sh.log(EventKind::TakeOver(report.clone()));
        Ok(BackupEvent::TookOver {
            owner: Box::new(owner),
            report,
        })
    }
}
