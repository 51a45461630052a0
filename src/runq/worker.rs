//! One core's scheduling loop state: the queues it owns (its home queue and
//! any it adopted), the queues it backs up, lease ticks, takeovers, stealing.
//!
//! A convenience over [`OwnerHandle`] and [`BackupHandle`] for demos, soak
//! tests and simple schedulers; it adds no protocol of its own.

use alloc::vec::Vec;

use super::backup::{BackupEvent, BackupHandle, TakeoverReport};
use super::owner::{Exit, OwnerHandle, Pick};
use super::task::{QueueId, TaskId};
use super::{RunQueues, RunqError};

/// What the core should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Run `task` (it belongs to `queue`), then call [`CoreWorker::finish`].
    Run {
        /// The queue it came from.
        queue: QueueId,
        /// The task.
        task: TaskId,
    },
    /// Nothing to run right now.
    Idle,
    /// This core was fenced: it owns and backs up nothing; it may stop.
    Fenced,
}

/// The scheduler state of one core.
///
/// # Examples
///
/// ```
/// use noderep::runq::{CoreWorker, Exit, RunQueues, Step};
///
/// let rq = RunQueues::builder().cores(2).build()?;
/// let mut w0 = CoreWorker::new(&rq, 0)?;
/// let _w1 = CoreWorker::new(&rq, 1)?; // backs queue 0 up
/// let t = rq.spawner(0)?.spawn(0)?;
/// match w0.step(rq.now())? {
///     Step::Run { queue, task } => {
///         assert_eq!(task, t);
///         w0.finish(queue, task, Exit::Done, || {})?;
///     }
///     other => panic!("expected a task, got {other:?}"),
/// }
/// # Ok::<(), noderep::runq::RunqError>(())
/// ```
#[derive(Debug)]
pub struct CoreWorker {
    rq: RunQueues,
    core: usize,
    owners: Vec<OwnerHandle>,
    backups: Vec<BackupHandle>,
    rr: usize,
    last_attach: Option<u64>,
    reports: Vec<TakeoverReport>,
    surrendered: usize,
    steal: bool,
}

impl CoreWorker {
    /// Takes `core`'s owner handle and attaches its backups.
    ///
    /// # Errors
    ///
    /// As [`RunQueues::owner`].
    pub fn new(rq: &RunQueues, core: usize) -> Result<Self, RunqError> {
        let owner = rq.owner(core)?;
        let mut w = Self {
            rq: rq.clone(),
            core,
            owners: alloc::vec![owner],
            backups: Vec::new(),
            rr: 0,
            last_attach: None,
            reports: Vec::new(),
            surrendered: 0,
            steal: true,
        };
        rq.attach_backups(core, &mut w.backups)?;
        Ok(w)
    }

    /// Turns work stealing on or off (on by default).
    pub fn set_stealing(&mut self, on: bool) {
        self.steal = on;
    }

    /// The core.
    pub fn core(&self) -> usize {
        self.core
    }

    /// Queues this core owns now.
    pub fn owned(&self) -> Vec<QueueId> {
        self.owners.iter().map(OwnerHandle::queue).collect()
    }

    /// Queued tasks over every queue this core owns.
    pub fn queued(&self) -> usize {
        self.owners.iter().map(OwnerHandle::len).sum()
    }

    /// Takeovers this core performed since the last call.
    pub fn take_reports(&mut self) -> Vec<TakeoverReport> {
        core::mem::take(&mut self.reports)
    }

    /// Tasks handed back by this core's fenced queues (see `surrender`).
    pub fn surrendered(&self) -> usize {
        self.surrendered
    }

    fn drop_fenced(&mut self) {
        let mut i = 0;
        while i < self.owners.len() {
            if self.owners[i].is_fenced() {
                let o = self.owners.swap_remove(i);
                self.surrendered += o.surrender();
            } else {
                i += 1;
            }
        }
    }

    /// Housekeeping only: lease ticks of the owned queues, backups attached
    /// and polled, takeovers. Call it from the timer tick, also while a task
    /// runs. Returns how many queues this core owns afterwards.
    ///
    /// # Errors
    ///
    /// [`RunqError::EpochExhausted`] from a takeover or re-backup (fencing
    /// and stalls are handled here, not returned); [`RunqError::BadTime`]
    /// for a `now` more than an hour ahead of
    /// [`RunQueues::now`](super::RunQueues::now).
    pub fn housekeep(&mut self, now: u64) -> Result<usize, RunqError> {
        self.rq.check_now(now)?;
        if self.last_attach.is_some_and(|t| now < t) {
            // The clock went back: attach again from here.
            self.last_attach = None;
        }
        for o in &mut self.owners {
            match o.tick(now) {
                Ok(_) | Err(RunqError::Fenced { .. }) | Err(RunqError::BackupStalled { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.drop_fenced();
        let quarter = self.rq.config().lease.as_nanos() as u64 / 4;
        if self
            .last_attach
            .is_none_or(|t| now.saturating_sub(t) >= quarter)
        {
            self.last_attach = Some(now);
            self.rq.attach_backups(self.core, &mut self.backups)?;
        }
        let mut i = 0;
        while i < self.backups.len() {
            match self.backups[i].poll(now)? {
                BackupEvent::TookOver { owner, report } => {
                    self.owners.push(*owner);
                    self.reports.push(report);
                    self.backups.swap_remove(i);
                }
                BackupEvent::Detached => {
                    self.backups.swap_remove(i);
                }
                BackupEvent::Idle | BackupEvent::Applied(_) => i += 1,
            }
        }
        Ok(self.owners.len())
    }

    /// Housekeeping, then the next task to run.
    ///
    /// # Errors
    ///
    /// As [`CoreWorker::housekeep`].
    pub fn step(&mut self, now: u64) -> Result<Step, RunqError> {
        if self.housekeep(now)? == 0 {
            return Ok(if self.backups.is_empty() {
                Step::Fenced
            } else {
                Step::Idle
            });
        }
        let n = self.owners.len();
        for k in 0..n {
            let idx = (self.rr + k) % n;
            match self.owners[idx].pick() {
                Ok(Pick::Task(task)) => {
                    self.rr = idx + 1;
                    return Ok(Step::Run {
                        queue: self.owners[idx].queue(),
                        task,
                    });
                }
                Ok(Pick::Empty)
                | Err(RunqError::Fenced { .. })
                | Err(RunqError::BackupStalled { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.drop_fenced();
        if self.steal {
            if let Some(me) = self.owners.first() {
                let mine = self.owned();
                let victim = (0..self.rq.queues() as QueueId)
                    .filter(|q| !mine.contains(q))
                    .max_by_key(|&q| me.load_of(q));
                if let Some(v) = victim {
                    if me.load_of(v) >= 4 {
                        let _ = me.request_steal(v);
                    }
                }
            }
        }
        Ok(if self.owners.is_empty() && self.backups.is_empty() {
            Step::Fenced
        } else {
            Step::Idle
        })
    }

    /// Ends the run of `task` from `queue`; `on_commit` runs once the
    /// completion is final (see [`OwnerHandle::complete_then`]).
    ///
    /// # Errors
    ///
    /// [`RunqError::NoSuchQueue`] for a queue that does not exist;
    /// [`RunqError::Fenced`] if this core does not own `queue` (any more);
    /// [`RunqError::BackupStalled`] if a backup's ring stayed full for twice
    /// lease + margin (the task is still running here: call again); else as
    /// [`OwnerHandle::complete`].
    pub fn finish(
        &mut self,
        queue: QueueId,
        task: TaskId,
        exit: Exit,
        on_commit: impl FnOnce(),
    ) -> Result<(), RunqError> {
        if queue as usize >= self.rq.queues() {
            return Err(RunqError::NoSuchQueue {
                queue: queue as usize,
                queues: self.rq.queues(),
            });
        }
        let mut on_commit = Some(on_commit);
        let mut backoff = crate::sync::Backoff::new();
        // A dead backup is replaced within about lease + margin (its own
        // queue is taken over, then this core's tick re-backs-up); wait for
        // twice that at most, then report the stall (the task stays running
        // here: call again).
        let start = self.rq.now();
        let limit = self.rq.config().expiry_ns().saturating_mul(2);
        loop {
            let Some(o) = self.owners.iter_mut().find(|o| o.queue() == queue) else {
                return Err(RunqError::Fenced {
                    queue,
                    epoch: 0,
                    now_epoch: 0,
                });
            };
            let r = o.complete_then(task, exit, || {
                if let Some(f) = on_commit.take() {
                    f();
                }
            });
            match r {
                // A backup's ring is full: drain the rings this core backs up
                // (the cycle of cores backing each other up must not wait on
                // itself), then retry.
                Err(e @ RunqError::BackupStalled { .. }) => {
                    let now = self.rq.now();
                    if now.saturating_sub(start) > limit {
                        return Err(e);
                    }
                    self.housekeep(now)?;
                    backoff.snooze();
                }
                r => return r,
            }
        }
    }
}
