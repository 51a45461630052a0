//! The owner core's handle of a run queue: the only handle that can change the
//! queue (accept, pick, complete, remove, migrate, steal service), renew its
//! lease and ship its replication stream.
//!
//! Each operation is intent → commit → finalise on the task word (see the
//! parent module); the local queue is private to this handle, so the hot path
//! takes no lock. The handle is `Send` (it moves to its core's thread) but not
//! `Sync`.

use core::cell::Cell;
use core::marker::PhantomData;

use crate::mutants;
use crate::sync::{Arc, Backoff, Ordering};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use super::fault_points::FaultPoint;
use super::inbox::Take;
use super::ring::{Push, Record, RecordKind, Ring, Stamp};
use super::task::{Cas, QueueId, TaskId, TaskPhase, TaskState};
use super::{lock, EventKind, Replication, RunqError, Shared, Stream, MAX_BACKUPS};

/// Ring positions just past one record, per backup ring.
type Ends = [u64; MAX_BACKUPS];

/// What `pick` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// This task now runs on the caller's core.
    Task(TaskId),
    /// Nothing to run.
    Empty,
}

/// How a running task leaves the core.
///
/// # Examples
///
/// ```
/// use noderep::runq::{Exit, Pick, RunQueues, TaskPhase, Wake};
///
/// let rq = RunQueues::builder().cores(2).build()?;
/// let mut owner = rq.owner(0)?;
/// let spawner = rq.spawner(0)?;
/// let t = spawner.spawn(0)?;
/// assert_eq!(owner.pick()?, Pick::Task(t));
/// owner.complete(t, Exit::Yield)?; // back to the tail of the queue
/// assert_eq!(owner.pick()?, Pick::Task(t));
/// owner.complete(t, Exit::Block)?; // asleep until woken
/// assert_eq!(rq.task_state(t).map(|s| s.phase), Some(TaskPhase::Blocked));
/// assert_eq!(spawner.wake(t), Wake::Woken);
/// assert_eq!(owner.pick()?, Pick::Task(t));
/// owner.complete(t, Exit::Done)?; // finished for good
/// assert_eq!(rq.task_state(t).map(|s| s.phase), Some(TaskPhase::Done));
/// assert_eq!(owner.pick()?, Pick::Empty);
/// # Ok::<(), noderep::runq::RunqError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It finished: it will never run again.
    Done,
    /// It sleeps until a [`super::Spawner::wake`].
    Block,
    /// It goes back to the tail of the queue.
    Yield,
}

/// What a tick did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tick {
    /// Nothing was due.
    Idle,
    /// The lease was renewed (and replication/collection work done).
    Renewed,
}

/// Why a transition did not happen.
enum Fail {
    /// The task word was not in the expected state (it holds this one).
    Moved(TaskState),
    /// The operation was refused or could not commit.
    Err(RunqError),
}

/// The owner's handle of one run queue (one per queue and epoch).
///
/// # Examples
///
/// ```
/// use noderep::runq::{Exit, Pick, RunQueues};
///
/// let rq = RunQueues::builder().cores(2).build()?;
/// let mut owner = rq.owner(0)?;
/// let t = rq.spawner(0)?.spawn(0)?;
/// assert_eq!(owner.pick()?, Pick::Task(t));
/// owner.complete(t, Exit::Block)?; // it sleeps until woken
/// assert_eq!(owner.pick()?, Pick::Empty);
/// owner.tick(rq.now())?; // renews the lease
/// # Ok::<(), noderep::runq::RunqError>(())
/// ```
pub struct OwnerHandle {
    sh: Arc<Shared>,
    q: QueueId,
    core: usize,
    epoch: u32,
    seq: u64,
    /// One replication ring per backup, in rank order (fan-out: every
    /// record goes to every ring).
    rings: Vec<Arc<Ring>>,
    backups: Vec<usize>,
    /// Queued tasks in order, with the stamp of their enqueue.
    local: VecDeque<(TaskId, Stamp)>,
    /// Running tasks and the stamp of their pick.
    running: BTreeMap<TaskId, Stamp>,
    /// Deliveries whose migration has not been finalised yet.
    deferred: Vec<TaskId>,
    /// Async mode: records acknowledged but not shipped to every ring, their
    /// ack times, their positions in each ring, and how many of them each
    /// ring has.
    batch: Vec<Record>,
    batch_at: Vec<u64>,
    batch_ends: Vec<Ends>,
    sent: [usize; MAX_BACKUPS],
    /// Tombstones pushed, with the ring positions after them, awaiting every
    /// backup's drain before they can be collected.
    tombs: VecDeque<(Ends, Stamp)>,
    last_renew: u64,
    fenced: Option<u32>,
    _not_sync: PhantomData<Cell<()>>,
}

impl core::fmt::Debug for OwnerHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OwnerHandle")
            .field("queue", &self.q)
            .field("core", &self.core)
            .field("epoch", &self.epoch)
            .field("queued", &self.local.len())
            .field("running", &self.running.len())
            .field("fenced", &self.fenced.is_some())
            .finish()
    }
}

impl OwnerHandle {
    pub(crate) fn new(
        sh: Arc<Shared>,
        q: QueueId,
        core: usize,
        epoch: u32,
        rings: Vec<Arc<Ring>>,
        backups: Vec<usize>,
        adopted: Vec<TaskId>,
    ) -> Self {
        let mut h = Self {
            sh,
            q,
            core,
            epoch,
            seq: 0,
            rings,
            backups,
            local: VecDeque::new(),
            running: BTreeMap::new(),
            deferred: Vec::new(),
            batch: Vec::new(),
            batch_at: Vec::new(),
            batch_ends: Vec::new(),
            sent: [0; MAX_BACKUPS],
            tombs: VecDeque::new(),
            last_renew: 0,
            fenced: None,
            _not_sync: PhantomData,
        };
        for t in adopted {
            let st = h.stamp();
            h.local.push_back((t, st));
        }
        h.publish_len();
        h
    }

    /// The queue this handle owns.
    pub fn queue(&self) -> QueueId {
        self.q
    }

    /// The epoch this handle owns it in.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The core this handle belongs to.
    pub fn core(&self) -> usize {
        self.core
    }

    /// Number of queued tasks (accepted, not yet picked).
    pub fn len(&self) -> usize {
        self.local.len()
    }

    /// True if no task is queued.
    pub fn is_empty(&self) -> bool {
        self.local.is_empty()
    }

    /// True once this handle has been fenced.
    pub fn is_fenced(&self) -> bool {
        self.fenced.is_some()
    }

    /// The queued tasks, in order.
    pub fn queued(&self) -> Vec<TaskId> {
        self.local.iter().map(|e| e.0).collect()
    }

    /// The tasks running on this queue.
    pub fn running(&self) -> Vec<TaskId> {
        self.running.keys().copied().collect()
    }

    /// The current backup cores, in rank order (empty when no other core is
    /// alive, or unreplicated).
    pub fn backups(&self) -> &[usize] {
        &self.backups
    }

    fn stamp(&mut self) -> Stamp {
        self.seq += 1;
        Stamp {
            epoch: self.epoch,
            seq: self.seq,
        }
    }

    fn publish_len(&self) {
        // Relaxed: a hint for thieves, never used for correctness.
        self.sh.queues[self.q as usize]
            .len_hint
            .store(self.local.len(), Ordering::Relaxed);
    }

    /// Marks the handle fenced, counts the refusal and returns the error.
    fn fence(&mut self, op: &'static str) -> RunqError {
        let now_epoch = self.sh.queues[self.q as usize].lease.load().epoch;
        if self.fenced.is_none() {
            self.fenced = Some(now_epoch);
        }
        // Relaxed: a statistics counter.
        self.sh.fenced_ops.fetch_add(1, Ordering::Relaxed);
        self.sh.log(EventKind::Fenced {
            queue: self.q,
            core: self.core,
            epoch: self.epoch,
            op,
        });
        RunqError::Fenced {
            queue: self.q,
            epoch: self.epoch,
            now_epoch,
        }
    }

    fn refuse_if_fenced(&mut self, op: &'static str) -> Result<(), RunqError> {
        if self.fenced.is_some() {
            return Err(self.fence(op));
        }
        self.sh.fault(self.core, FaultPoint::OpStart);
        Ok(())
    }

    fn is_tomb(kind: RecordKind) -> bool {
        matches!(
            kind,
            RecordKind::Complete | RecordKind::Remove | RecordKind::Migrate | RecordKind::Block
        )
    }

    /// Is every ring still open for this epoch? (The fence check of an
    /// operation that ships nothing now.)
    fn rings_open(&self) -> bool {
        self.rings.iter().all(|r| r.is_open_for(self.epoch))
    }

    /// Makes `rec` durable according to the replication mode: the point at
    /// which the operation is acknowledged. Fails only if fenced or stalled.
    fn commit(&mut self, rec: Record) -> Result<(), RunqError> {
        let stats = &self.sh.queues[self.q as usize].stats;
        if self.rings.is_empty() || self.sh.config.replication == Replication::None {
            // Unreplicated, or no live core left to back this queue up: run
            // unreplicated, but still refuse the operation if fenced. (With
            // no ring, the lease word is the fence.)
            let fenced = if self.rings.is_empty() {
                self.sh.queues[self.q as usize].lease.load().epoch != self.epoch
            } else {
                !self.rings_open()
            };
            if fenced {
                return Err(self.fence("commit"));
            }
            // Relaxed: statistics.
            stats.acked.fetch_add(1, Ordering::Relaxed);
            stats.shipped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        match self.sh.config.replication {
            // (`None` took the unreplicated path above.)
            Replication::Sync | Replication::None => {
                // Fan-out: the record goes into every backup's ring, in rank
                // order; the operation is acknowledged once all have it. A
                // takeover closes every ring, so a zombie fails at the first
                // closed one; records it left in earlier rings are harmless
                // (the task word, not the replica, decides: see backup.rs).
                // First wait (a little) until every ring has room, so that a
                // stalled backup does not leave the record in some rings
                // only, to be pushed there again at the retry.
                let mut backoff = Backoff::new();
                let mut waited = StallClock::new();
                while !self.rings.iter().all(|r| r.has_room(1)) {
                    // Give up with `BackupStalled` after a little while: the
                    // caller drains its *own* backups before retrying
                    // (`CoreWorker` does). Waiting longer here could
                    // deadlock: cores that back each other up in a cycle
                    // would all wait on one another.
                    if waited.exceeded(STALL_WAIT.min(self.sh.config.lease / 2)) {
                        return Err(RunqError::BackupStalled { queue: self.q });
                    }
                    backoff.snooze();
                }
                let mut ends: Ends = [0; MAX_BACKUPS];
                // (Indexing, not iterating: `self.fence` needs `&mut self`.)
                #[allow(clippy::needless_range_loop)]
                for i in 0..self.rings.len() {
                    match self.rings[i].push(&[rec], self.epoch) {
                        Push::Pushed { end } => ends[i] = end,
                        Push::Closed => return Err(self.fence("commit")),
                        // Only this owner pushes, so the room seen above is
                        // still there (kept for robustness).
                        Push::Full => return Err(RunqError::BackupStalled { queue: self.q }),
                    }
                }
                if Self::is_tomb(rec.kind) {
                    self.tombs.push_back((ends, rec.stamp));
                }
                // Relaxed: statistics.
                stats.acked.fetch_add(1, Ordering::Relaxed);
                stats.shipped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Replication::Async { batch, .. } => {
                // The validation step: the commit point of an asynchronous
                // operation is this load; a takeover closes the rings first.
                if !self.rings_open() {
                    return Err(self.fence("commit"));
                }
                // Backpressure: a backup that stopped draining would
                // otherwise let the buffer grow without bound. Past
                // ASYNC_BACKLOG rings' worth, try to ship, and if that finds
                // no room, refuse the operation as synchronous mode does
                // (its intent is undone; the caller drains its own backups
                // and retries, and a dead backup is replaced).
                let limit = ASYNC_BACKLOG * self.sh.config.ring_capacity;
                if self.batch.len() >= limit {
                    self.ship()?;
                    if self.batch.len() >= limit {
                        return Err(RunqError::BackupStalled { queue: self.q });
                    }
                }
                self.batch.push(rec);
                self.batch_at.push(self.sh.now());
                self.batch_ends.push([0; MAX_BACKUPS]);
                // Relaxed: statistics.
                self.sh.queues[self.q as usize]
                    .stats
                    .acked
                    .fetch_add(1, Ordering::Relaxed);
                if self.batch.len() >= batch {
                    // A failed shipment only means we will learn of the fence
                    // at the next operation; this one was validated already.
                    let _ = self.ship();
                }
                Ok(())
            }
        }
    }

    /// Async mode: pushes the buffered records to every backup's ring; a
    /// record leaves the buffer once every ring has it.
    fn ship(&mut self) -> Result<(), RunqError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let cap = self.sh.config.ring_capacity;
        for i in 0..self.rings.len() {
            while self.sent[i] < self.batch.len() {
                let from = self.sent[i];
                let to = (from + cap / 2).min(self.batch.len());
                match self.rings[i].push(&self.batch[from..to], self.epoch) {
                    Push::Pushed { end } => {
                        let start = end - (to - from) as u64;
                        for (j, e) in self.batch_ends[from..to].iter_mut().enumerate() {
                            e[i] = start + j as u64 + 1;
                        }
                        self.sent[i] = to;
                    }
                    Push::Full => break,
                    Push::Closed => {
                        // Fenced: these records never reach the backups (this
                        // is the asynchronous mode's loss); drop them.
                        self.batch.clear();
                        self.batch_at.clear();
                        self.batch_ends.clear();
                        self.sent = [0; MAX_BACKUPS];
                        return Err(self.fence("ship"));
                    }
                }
            }
        }
        let done = self.sent[..self.rings.len()]
            .iter()
            .copied()
            .min()
            .unwrap_or(0);
        if done > 0 {
            let now = self.sh.now();
            let lag: u64 = self.batch_at[..done]
                .iter()
                .map(|&a| now.saturating_sub(a))
                .sum();
            for j in 0..done {
                if Self::is_tomb(self.batch[j].kind) {
                    self.tombs
                        .push_back((self.batch_ends[j], self.batch[j].stamp));
                }
            }
            let stats = &self.sh.queues[self.q as usize].stats;
            // Relaxed: statistics.
            stats.shipped.fetch_add(done as u64, Ordering::Relaxed);
            stats.lag_ns.fetch_add(lag, Ordering::Relaxed);
            self.batch.drain(..done);
            self.batch_at.drain(..done);
            self.batch_ends.drain(..done);
            for s in &mut self.sent[..self.rings.len()] {
                *s -= done;
            }
        }
        Ok(())
    }

    /// Moves `t` from `from` through `intent` to `to`, committing `kind`.
    fn transition(
        &mut self,
        t: TaskId,
        from: TaskState,
        intent: TaskPhase,
        kind: RecordKind,
        to: TaskState,
        op: &'static str,
    ) -> Result<Stamp, Fail> {
        let mine = from.with(intent, self.q, self.epoch);
        if let Cas::Saw(s) = self.sh.tasks.cas(t, from, mine) {
            if s.generation == t.generation() && s.place == self.q && s.epoch > self.epoch {
                // A later epoch of this queue claimed (and maybe already
                // finished) the task: we are fenced.
                return Err(Fail::Err(self.fence(op)));
            }
            return Err(Fail::Moved(s));
        }
        self.sh.fault(self.core, FaultPoint::AfterIntent);
        let stamp = self.stamp();
        if let Err(e) = self.commit(Record {
            task: t,
            kind,
            stamp,
        }) {
            // Undo the intent; if a taker claimed it meanwhile, its claim stands.
            let _ = self.sh.tasks.cas(t, mine, from);
            return Err(Fail::Err(e));
        }
        self.sh.fault(self.core, FaultPoint::AfterCommit);
        // Mutant `finalize_blind` (loom, runq models): finalise with a check
        // then a store, so a claim by the taker in between is overwritten.
        match self
            .sh
            .tasks
            .cas_or_blind(mutants::skip!("finalize_blind"), t, mine, to)
        {
            Cas::Done => Ok(stamp),
            // Only a taker moves an intent of ours: we were fenced.
            Cas::Saw(_) => Err(Fail::Err(self.fence(op))),
        }
    }

    /// Accepts the tasks delivered to this queue's inbox (spawns, wake-ups,
    /// migrations in). Returns how many joined the queue.
    ///
    /// # Errors
    ///
    /// [`RunqError::Fenced`] once the queue was taken over (drop the handle,
    /// or [`OwnerHandle::surrender`] it); [`RunqError::BackupStalled`] when a
    /// backup does not drain its ring in synchronous mode (retry later).
    pub fn accept(&mut self) -> Result<usize, RunqError> {
        self.refuse_if_fenced("accept")?;
        let mut delivered = core::mem::take(&mut self.deferred);
        match self.sh.queues[self.q as usize].inbox.take(self.epoch) {
            Take::Fenced => {
                self.deferred = delivered;
                return Err(self.fence("accept"));
            }
            Take::Tasks(v) => delivered.extend(v),
        }
        let mut accepted = 0;
        let mut rest = delivered.into_iter();
        while let Some(t) = rest.next() {
            let Some(s) = self.sh.tasks.state(t) else {
                continue;
            };
            match s.phase {
                TaskPhase::Transit if s.place == self.q => {
                    let to = s.with(TaskPhase::Queued, self.q, self.epoch);
                    match self.transition(
                        t,
                        s,
                        TaskPhase::Accepting,
                        RecordKind::Enqueue,
                        to,
                        "accept",
                    ) {
                        Ok(st) => {
                            self.local.push_back((t, st));
                            accepted += 1;
                        }
                        Err(Fail::Moved(_)) => {}
                        Err(Fail::Err(e)) => {
                            // Tasks not yet accepted (this one included: its
                            // intent was undone) stay in transit and are
                            // retried at the next accept; if we were fenced, a
                            // taker's scan claims them.
                            self.deferred.push(t);
                            self.deferred.extend(rest);
                            self.publish_len();
                            return Err(e);
                        }
                    }
                }
                // A migration (or spawn) to us that its sender has not
                // finalised yet.
                TaskPhase::Migrating | TaskPhase::Spawning => self.deferred.push(t),
                _ => {}
            }
        }
        self.publish_len();
        Ok(accepted)
    }

    /// Accepts deliveries, serves a pending steal, then picks the next task.
    ///
    /// # Errors
    ///
    /// As [`OwnerHandle::accept`].
    pub fn pick(&mut self) -> Result<Pick, RunqError> {
        self.refuse_if_fenced("pick")?;
        self.serve_steal()?;
        self.accept()?;
        while let Some((t, st)) = self.local.pop_front() {
            let from = TaskState::new(t.generation(), TaskPhase::Queued, self.q, st.epoch);
            let to = from.with(TaskPhase::Running, self.q, self.epoch);
            match self.transition(t, from, TaskPhase::Picking, RecordKind::Pick, to, "pick") {
                Ok(stamp) => {
                    self.running.insert(t, stamp);
                    self.publish_len();
                    return Ok(Pick::Task(t));
                }
                Err(Fail::Moved(s)) => {
                    if s.generation == t.generation() && s.phase == TaskPhase::Removed {
                        // Killed while queued: replicate the tombstone.
                        let stamp = self.stamp();
                        self.commit(Record {
                            task: t,
                            kind: RecordKind::Remove,
                            stamp,
                        })?;
                    }
                }
                Err(Fail::Err(e)) => {
                    self.local.push_front((t, st));
                    self.publish_len();
                    return Err(e);
                }
            }
        }
        self.publish_len();
        Ok(Pick::Empty)
    }

    /// Ends the run of `t` (returned by `pick`) as `exit`.
    ///
    /// # Errors
    ///
    /// [`RunqError::NotRunning`] for a task this handle is not running; else
    /// as [`OwnerHandle::accept`].
    pub fn complete(&mut self, t: TaskId, exit: Exit) -> Result<(), RunqError> {
        self.complete_then(t, exit, || {})
    }

    /// As [`OwnerHandle::complete`], calling `on_commit` right after the
    /// completion became final and before anything can fail (so a ledger
    /// stays exact even if the core crashes just after). If `on_commit`
    /// panics, the completion stands (a yielded task is queued again) and
    /// the panic continues in the caller.
    ///
    /// # Errors
    ///
    /// As [`OwnerHandle::complete`].
    pub fn complete_then(
        &mut self,
        t: TaskId,
        exit: Exit,
        on_commit: impl FnOnce(),
    ) -> Result<(), RunqError> {
        self.refuse_if_fenced("complete")?;
        let Some(&picked) = self.running.get(&t) else {
            return Err(RunqError::NotRunning {
                task: t,
                queue: self.q,
            });
        };
        let from = TaskState::new(t.generation(), TaskPhase::Running, self.q, picked.epoch);
        let (intent, kind, to) = match exit {
            Exit::Done => (
                TaskPhase::Finishing,
                RecordKind::Complete,
                from.with(TaskPhase::Done, self.q, self.epoch),
            ),
            Exit::Block => (
                TaskPhase::Blocking,
                RecordKind::Block,
                from.with(TaskPhase::Blocked, self.q, 0),
            ),
            Exit::Yield => (
                TaskPhase::Yielding,
                RecordKind::Enqueue,
                from.with(TaskPhase::Queued, self.q, self.epoch),
            ),
        };
        match self.transition(t, from, intent, kind, to, "complete") {
            Ok(st) => {
                // The handle's own bookkeeping first (it cannot fail): a
                // panicking `on_commit` must not leave a yielded task out of
                // the local queue, where no pick would find it again.
                self.running.remove(&t);
                if exit == Exit::Yield {
                    self.local.push_back((t, st));
                    self.publish_len();
                }
                on_commit();
                Ok(())
            }
            Err(Fail::Moved(_)) => {
                self.running.remove(&t);
                Err(RunqError::NotRunning {
                    task: t,
                    queue: self.q,
                })
            }
            // Kept in `running`: a fenced handle can still surrender it.
            Err(Fail::Err(e)) => Err(e),
        }
    }

    fn take_queued(&mut self, t: TaskId) -> Result<Stamp, RunqError> {
        let Some(i) = self.local.iter().position(|e| e.0 == t) else {
            let phase = self.sh.tasks.state(t).map_or(TaskPhase::Free, |s| s.phase);
            return Err(RunqError::NotQueued {
                task: t,
                queue: self.q,
                phase,
            });
        };
        let (_, st) = self.local.remove(i).expect("index from position");
        self.publish_len();
        Ok(st)
    }

    /// Removes a queued task (it exits before running); leaves a tombstone.
    ///
    /// # Errors
    ///
    /// [`RunqError::NotQueued`] for a task not queued here; else as
    /// [`OwnerHandle::accept`].
    pub fn remove(&mut self, t: TaskId) -> Result<(), RunqError> {
        self.refuse_if_fenced("remove")?;
        let st = self.take_queued(t)?;
        let from = TaskState::new(t.generation(), TaskPhase::Queued, self.q, st.epoch);
        let to = from.with(TaskPhase::Removed, self.q, self.epoch);
        match self.transition(
            t,
            from,
            TaskPhase::Removing,
            RecordKind::Remove,
            to,
            "remove",
        ) {
            Ok(_) => Ok(()),
            Err(Fail::Moved(s)) => Err(RunqError::NotQueued {
                task: t,
                queue: self.q,
                phase: s.phase,
            }),
            Err(Fail::Err(e)) => {
                if self.fenced.is_none() {
                    self.local.push_front((t, st));
                }
                Err(e)
            }
        }
    }

    /// Sends a queued task to queue `to` (load balancing); leaves a tombstone
    /// here. The task is in transit until `to`'s owner accepts it.
    ///
    /// # Errors
    ///
    /// [`RunqError::NoSuchQueue`] for a bad target,
    /// [`RunqError::OwnQueue`] for this queue itself; else as
    /// [`OwnerHandle::remove`].
    pub fn migrate(&mut self, t: TaskId, to: QueueId) -> Result<(), RunqError> {
        self.refuse_if_fenced("migrate")?;
        if to == self.q {
            return Err(RunqError::OwnQueue { queue: to });
        }
        if to as usize >= self.sh.queues.len() {
            return Err(RunqError::NoSuchQueue {
                queue: to as usize,
                queues: self.sh.queues.len(),
            });
        }
        let st = self.take_queued(t)?;
        self.migrate_entry(t, st, to)
    }

    fn migrate_entry(&mut self, t: TaskId, st: Stamp, to: QueueId) -> Result<(), RunqError> {
        let from = TaskState::new(t.generation(), TaskPhase::Queued, self.q, st.epoch);
        let mine = from.with(TaskPhase::Migrating, self.q, self.epoch);
        if let Cas::Saw(s) = self.sh.tasks.cas(t, from, mine) {
            return Err(RunqError::NotQueued {
                task: t,
                queue: self.q,
                phase: s.phase,
            });
        }
        self.sh.fault(self.core, FaultPoint::AfterIntent);
        let stamp = self.stamp();
        if let Err(e) = self.commit(Record {
            task: t,
            kind: RecordKind::Migrate,
            stamp,
        }) {
            let _ = self.sh.tasks.cas(t, mine, from);
            if self.fenced.is_none() {
                self.local.push_front((t, st));
            }
            return Err(e);
        }
        // Deliver first, then finalise: the receiver defers a delivery whose
        // word is still `Migrating`, and a taker of this queue claims it if we
        // die in between.
        let inbox = &self.sh.queues[to as usize].inbox;
        let tag = inbox.push(t);
        self.sh.fault(self.core, FaultPoint::MigrateDelivered);
        match self
            .sh
            .tasks
            .cas(t, mine, from.with(TaskPhase::Transit, to, 0))
        {
            Cas::Done => {
                // The receiver may have deferred the delivery and died since:
                // deliver again if its inbox changed hands (`Inbox::tag_now`).
                if inbox.tag_now() != tag {
                    inbox.push(t);
                }
                Ok(())
            }
            Cas::Saw(_) => Err(self.fence("migrate")),
        }
    }

    /// Asks queue `victim`'s owner to send this queue about half its tasks.
    /// Returns `false` if another steal request is already pending there.
    ///
    /// # Errors
    ///
    /// [`RunqError::NoSuchQueue`] for a bad victim, [`RunqError::OwnQueue`]
    /// for this queue itself.
    pub fn request_steal(&self, victim: QueueId) -> Result<bool, RunqError> {
        if victim == self.q {
            return Err(RunqError::OwnQueue { queue: victim });
        }
        if victim as usize >= self.sh.queues.len() {
            return Err(RunqError::NoSuchQueue {
                queue: victim as usize,
                queues: self.sh.queues.len(),
            });
        }
        // AcqRel: one request at a time; pairs with the Acquire swap in `serve_steal`.
        Ok(self.sh.queues[victim as usize]
            .steal
            .compare_exchange(
                0,
                u64::from(self.q) + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok())
    }

    /// Queue length hint of `q` (for choosing a victim).
    pub fn load_of(&self, q: QueueId) -> usize {
        self.sh
            .queues
            .get(q as usize)
            // Relaxed: a hint.
            .map_or(0, |x| x.len_hint.load(Ordering::Relaxed))
    }

    fn serve_steal(&mut self) -> Result<(), RunqError> {
        // Acquire: pairs with the AcqRel CAS in `request_steal`.
        let req = self.sh.queues[self.q as usize]
            .steal
            .swap(0, Ordering::Acquire);
        if req == 0 {
            return Ok(());
        }
        let thief = (req - 1) as QueueId;
        let n = self.local.len() / 2;
        for _ in 0..n {
            let Some((t, st)) = self.local.pop_back() else {
                break;
            };
            match self.migrate_entry(t, st, thief) {
                Ok(()) | Err(RunqError::NotQueued { .. }) => {}
                Err(e) => {
                    self.publish_len();
                    return Err(e);
                }
            }
        }
        self.publish_len();
        Ok(())
    }

    /// Periodic work: renews the lease every quarter lease, ships the
    /// asynchronous batch when due, collects tombstones the backup has passed
    /// and replaces a dead backup. Call it often (every scheduling decision).
    ///
    /// # Errors
    ///
    /// [`RunqError::Fenced`] once the queue was taken over;
    /// [`RunqError::EpochExhausted`] if a re-backup cannot raise the epoch;
    /// [`RunqError::BadTime`] for a `now` more than an hour ahead of
    /// [`RunQueues::now`](super::RunQueues::now). A `now` earlier than the
    /// last one renews the lease again.
    pub fn tick(&mut self, now: u64) -> Result<Tick, RunqError> {
        self.refuse_if_fenced("tick")?;
        if let Replication::Async { max_lag, .. } = self.sh.config.replication {
            if let Some(&first) = self.batch_at.first() {
                if now.saturating_sub(first) >= max_lag.as_nanos() as u64 {
                    self.ship()?;
                }
            }
        }
        let quarter = self.sh.config.lease.as_nanos() as u64 / 4;
        // A `now` before the last renewal (the clock went back) renews
        // again: one bad time must not stop renewals until the clock
        // catches up with it, which would let a backup take over a live
        // owner.
        if self.last_renew != 0 && now >= self.last_renew && now - self.last_renew < quarter {
            return Ok(Tick::Idle);
        }
        // Checked here, off the idle path (which a time far ahead never
        // takes), so that an idle tick reads no clock.
        self.sh.check_now(now)?;
        self.sh.fault(self.core, FaultPoint::Tick);
        if let super::lease::Renewal::Fenced { .. } = self.sh.queues[self.q as usize]
            .lease
            .renew(self.epoch, self.core as u16)
        {
            return Err(self.fence("renew"));
        }
        self.last_renew = now.max(1);
        self.collect()?;
        let replace = match self.sh.config.replication {
            Replication::None => false,
            _ => {
                self.backups.iter().any(|&b| !self.sh.alive(b))
                    || (self.backups.len() < self.sh.config.backups
                        && self
                            .sh
                            .live_backups(self.core, self.sh.config.backups)
                            .len()
                            > self.backups.len())
            }
        };
        if replace {
            self.rebackup()?;
        }
        Ok(Tick::Renewed)
    }

    /// Ships everything buffered now (async mode; no-op in sync mode).
    ///
    /// # Errors
    ///
    /// [`RunqError::Fenced`] once the queue was taken over;
    /// [`RunqError::BackupStalled`] if a backup's ring had no room for all
    /// of it (what did not fit stays buffered for the next shipment).
    pub fn flush(&mut self) -> Result<(), RunqError> {
        self.refuse_if_fenced("flush")?;
        self.ship()?;
        if self.batch.is_empty() {
            Ok(())
        } else {
            Err(RunqError::BackupStalled { queue: self.q })
        }
    }

    /// Sends a `Collect` record for the tombstones every backup has drained.
    fn collect(&mut self) -> Result<(), RunqError> {
        let k = self.rings.len();
        let mut drained: Ends = [0; MAX_BACKUPS];
        for (d, r) in drained.iter_mut().zip(&self.rings) {
            *d = r.drained();
        }
        let mut w = None;
        while let Some(&(ends, st)) = self.tombs.front() {
            if (0..k).any(|i| ends[i] > drained[i]) {
                break;
            }
            w = Some(st);
            self.tombs.pop_front();
        }
        if let Some(stamp) = w {
            let rec = Record {
                task: TaskId::from_raw(0),
                kind: RecordKind::Collect,
                stamp,
            };
            for i in 0..k {
                match self.rings[i].push(&[rec], self.epoch) {
                    // A full ring skips this collection; the next one covers it.
                    Push::Pushed { .. } | Push::Full => {}
                    Push::Closed => return Err(self.fence("collect")),
                }
            }
        }
        Ok(())
    }

    /// Replaces the backup: raises this queue's epoch (so the old backup can no
    /// longer take over), closes the old ring and seeds a new backup with a
    /// snapshot of the queue.
    pub(crate) fn rebackup(&mut self) -> Result<(), RunqError> {
        let sh = self.sh.clone();
        let qs = &sh.queues[self.q as usize];
        let w = qs.lease.load();
        if w.epoch != self.epoch || w.owner as usize != self.core {
            return Err(self.fence("rebackup"));
        }
        if u64::from(w.epoch) + 1 > super::task::MASK24 {
            return Err(RunqError::EpochExhausted { queue: self.q });
        }
        let new_epoch = match qs.lease.try_takeover(w, self.core as u16) {
            super::lease::Takeover::Won { epoch } => epoch,
            super::lease::Takeover::Changed { .. } => return Err(self.fence("rebackup")),
        };
        self.epoch = new_epoch;
        self.seq = 0;
        self.seed_backup();
        qs.inbox.retag(new_epoch);
        Ok(())
    }

    /// Opens a new replication stream in the current epoch towards the first
    /// `k` live backup candidates, each ring seeded with a snapshot of the
    /// queue, and closes the previous stream. If memory for the rings cannot
    /// be had, the queue runs unreplicated until the next tick retries.
    pub(crate) fn seed_backup(&mut self) {
        let sh = self.sh.clone();
        let qs = &sh.queues[self.q as usize];
        let mut backups = match self.sh.config.replication {
            Replication::None => Vec::new(),
            _ => self.sh.live_backups(self.core, self.sh.config.backups),
        };
        let mut snap: Vec<Record> = Vec::with_capacity(self.local.len() + self.running.len() + 1);
        for (&t, &stamp) in &self.running {
            snap.push(Record {
                task: t,
                kind: RecordKind::SnapRunning,
                stamp,
            });
        }
        for &(t, stamp) in &self.local {
            snap.push(Record {
                task: t,
                kind: RecordKind::SnapQueued,
                stamp,
            });
        }
        let mark = self.stamp();
        snap.push(Record {
            task: TaskId::from_raw(0),
            kind: RecordKind::Collect,
            stamp: mark,
        });
        let cap = (snap.len().saturating_mul(2))
            .checked_next_power_of_two()
            .unwrap_or(usize::MAX)
            .max(self.sh.config.ring_capacity);
        let mut rings = Vec::with_capacity(backups.len());
        for _ in &backups {
            match Ring::new(self.epoch, cap) {
                Ok(ring) => {
                    let pushed = ring.push(&snap, self.epoch);
                    debug_assert!(matches!(pushed, Push::Pushed { .. }));
                    rings.push(Arc::new(ring));
                }
                Err(_) => break,
            }
        }
        backups.truncate(rings.len());
        {
            let _masked = MaskGuard::new();
            let mut s = lock(&qs.stream);
            for r in &s.rings {
                r.close(self.epoch);
            }
            let generation = s.generation + 1;
            *s = Stream {
                rings: rings.clone(),
                backups: backups.clone(),
                generation,
            };
            // Release: a backup that sees the new generation (Acquire in
            // `attach_backups`) finds the new stream under the lock.
            qs.stream_gen.store(generation, Ordering::Release);
        }
        // Close the rings this handle pushed to as well (a takeover's own
        // ring may already have left the stream).
        for r in &self.rings {
            r.close(self.epoch);
        }
        self.rings = rings;
        // The snapshot covers what the batch held: count it as shipped.
        // Relaxed: statistics.
        qs.stats
            .shipped
            .fetch_add(self.batch.len() as u64, Ordering::Relaxed);
        self.batch.clear();
        self.batch_at.clear();
        self.batch_ends.clear();
        self.sent = [0; MAX_BACKUPS];
        self.tombs.clear();
        if !backups.is_empty() {
            self.sh.log(EventKind::Rebackup {
                queue: self.q,
                owner: self.core,
                backups: backups.clone(),
                epoch: self.epoch,
                snapshot: snap.len() - 1,
            });
        }
        self.backups = backups;
    }

    /// A fenced zombie hands the tasks only it knows about back to the
    /// queue's current owner (through the inbox), so that freezing a core in
    /// asynchronous mode loses nothing it can still give back. Returns how
    /// many tasks were handed back (queued ones, and the ones it was running,
    /// whose runs are abandoned). Consumes the handle.
    pub fn surrender(mut self) -> usize {
        let mut n = 0;
        let queued = self
            .local
            .drain(..)
            .map(|(t, st)| (t, st, TaskPhase::Queued));
        let running = self
            .running
            .iter()
            .map(|(&t, &st)| (t, st, TaskPhase::Running));
        let entries: Vec<(TaskId, Stamp, TaskPhase)> = queued.chain(running).collect();
        for (t, st, phase) in entries {
            let from = TaskState::new(t.generation(), phase, self.q, st.epoch);
            if self
                .sh
                .tasks
                .cas(t, from, from.with(TaskPhase::Transit, self.q, 0))
                == Cas::Done
            {
                self.sh.queues[self.q as usize].inbox.push(t);
                n += 1;
            }
        }
        n
    }
}

/// Asynchronous mode buffers at most this many rings' worth of records
/// that have not reached every backup; past it, operations wait for the
/// backups as in synchronous mode (`BackupStalled`).
const ASYNC_BACKLOG: usize = 4;

/// Longest a synchronous commit waits for ring space before it reports
/// `BackupStalled` (a few scheduler quanta of the backup's thread).
const STALL_WAIT: core::time::Duration = core::time::Duration::from_micros(200);

/// How long a synchronous commit has waited for ring space (a bounded spin
/// count under loom, where there is no time).
struct StallClock {
    #[cfg(not(loom))]
    start: Option<std::time::Instant>,
    #[cfg(loom)]
    spins: u32,
}

impl StallClock {
    fn new() -> Self {
        Self {
            #[cfg(not(loom))]
            start: None,
            #[cfg(loom)]
            spins: 0,
        }
    }

    #[cfg_attr(loom, allow(unused_variables))]
    fn exceeded(&mut self, limit: core::time::Duration) -> bool {
        #[cfg(not(loom))]
        {
            let start = *self.start.get_or_insert_with(std::time::Instant::now);
            start.elapsed() > limit
        }
        #[cfg(loom)]
        {
            self.spins += 1;
            self.spins > 16
        }
    }
}

/// Blocks the freeze signal while a cold-path lock is held. Only with the
/// `fault-injection` feature (which freezes threads by signal); otherwise,
/// and under loom, it is nothing.
pub(crate) struct MaskGuard {
    #[cfg(all(feature = "fault-injection", not(loom)))]
    _inner: super::fault::SignalMask,
}

impl MaskGuard {
    #[inline(always)]
    pub(crate) fn new() -> Self {
        Self {
            #[cfg(all(feature = "fault-injection", not(loom)))]
            _inner: super::fault::SignalMask::block(),
        }
    }
}
