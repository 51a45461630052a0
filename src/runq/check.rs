//! Invariant checking: a lock-free ledger of what happened to every task, and
//! audits of ownership and of the task table.
//!
//! The ledger is updated from the worker threads themselves, so it must never
//! block (a frozen thread could otherwise hold it): every entry is an atomic.
//!
//! # How it works
//!
//! Tasks get a *logical* number when spawned ([`Ledger::register`], called
//! before the task can reach a core), so a task id whose slot is reused later
//! still maps to the right record. Runs are counted at start and at commit
//! (the completion's final CAS, via `complete_then`); a second commit of one
//! task is a duplicate, a start or commit after a successful kill is a
//! resurrection, and an acknowledged task with no commit and no kill at the end
//! is lost. [`check_owners`] checks that no `(queue, epoch)` had two owners.
//!
//! # Trade-offs
//!
//! A run that starts and is then fenced (its core was taken over while it
//! ran) counts as a start without a commit: the task is re-run by the adopter,
//! and "no task runs twice" means no task *commits* twice.

use crate::sync::{AtomicU64, Ordering};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use super::task::TaskId;
use super::{Event, EventKind};

/// Per-task ledger of acknowledgements, runs, commits and kills.
///
/// # Examples
///
/// ```
/// use noderep::runq::check::Ledger;
/// use noderep::runq::{Exit, Pick, RunQueues};
///
/// let rq = RunQueues::builder().cores(2).build()?;
/// let ledger = Ledger::new(rq.config().task_capacity, 1);
/// let t = rq.spawner(0)?.spawn_with(0, |t| ledger.register(0, t))?;
/// ledger.acked(0);
/// let mut owner = rq.owner(0)?;
/// assert_eq!(owner.pick()?, Pick::Task(t));
/// ledger.started(t);
/// owner.complete_then(t, Exit::Done, || ledger.committed(t))?;
/// let report = ledger.report();
/// assert_eq!((report.completed, report.lost, report.violations()), (1, 0, 0));
/// # Ok::<(), noderep::runq::RunqError>(())
/// ```
pub struct Ledger {
    /// Per task-table slot: `generation << 40 | (logical + 1)`.
    by_slot: Box<[AtomicU64]>,
    /// Per logical task: `acked:1 | killed:1` bits.
    flags: Box<[AtomicU64]>,
    starts: Box<[AtomicU64]>,
    commits: Box<[AtomicU64]>,
    duplicated: AtomicU64,
    resurrected: AtomicU64,
    unknown: AtomicU64,
}

const ACKED: u64 = 1;
const KILLED: u64 = 2;

impl core::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ledger")
            .field("report", &self.report())
            .finish()
    }
}

/// The ledger's totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerReport {
    /// Acknowledged spawns.
    pub tasks: u64,
    /// Tasks whose completion committed.
    pub completed: u64,
    /// Acknowledged, never completed, never killed.
    pub lost: u64,
    /// Extra commits of an already completed task.
    pub duplicated: u64,
    /// Runs or commits after a successful kill.
    pub resurrected: u64,
    /// Successful kills.
    pub killed: u64,
    /// Runs started that never committed (fenced or abandoned), re-run elsewhere.
    pub aborted_runs: u64,
    /// Runs of tasks the ledger did not know (must be 0).
    pub unknown: u64,
}

impl LedgerReport {
    /// Invariant violations: duplicates + resurrections + unknown runs.
    pub fn violations(&self) -> u64 {
        self.duplicated + self.resurrected + self.unknown
    }
}

fn atomics(n: usize) -> Box<[AtomicU64]> {
    (0..n)
        .map(|_| AtomicU64::new(0))
        .collect::<Vec<_>>()
        .into_boxed_slice()
}

impl Ledger {
    /// A ledger for a task table of `slots` slots and up to `tasks` spawns.
    pub fn new(slots: usize, tasks: usize) -> Self {
        Self {
            by_slot: atomics(slots),
            flags: atomics(tasks),
            starts: atomics(tasks),
            commits: atomics(tasks),
            duplicated: AtomicU64::new(0),
            resurrected: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
        }
    }

    /// Capacity in logical tasks.
    pub fn capacity(&self) -> usize {
        self.flags.len()
    }

    /// Maps `t` to logical task `n` (before `t` is delivered).
    pub fn register(&self, n: usize, t: TaskId) {
        let w = u64::from(t.generation()) << 40 | (n as u64 + 1);
        if let Some(s) = self.by_slot.get(t.slot() as usize) {
            // Release: the mapping is visible to any thread that later gets
            // `t` through the runq protocol (whose own Release/Acquire pairs
            // order it); pairs with the Acquire load in `logical`.
            s.store(w, Ordering::Release);
        }
    }

    /// The logical number of `t`, if registered.
    pub fn logical(&self, t: TaskId) -> Option<usize> {
        // Acquire: pairs with the Release store in `register`.
        let w = self.by_slot.get(t.slot() as usize)?.load(Ordering::Acquire);
        (w >> 40 == u64::from(t.generation()) && w & ((1 << 40) - 1) != 0)
            .then(|| (w & ((1 << 40) - 1)) as usize - 1)
            .filter(|&n| n < self.flags.len())
    }

    /// Logical task `n`'s spawn was acknowledged.
    pub fn acked(&self, n: usize) {
        // Relaxed: read only in `report`, after the threads are joined.
        self.flags[n].fetch_or(ACKED, Ordering::Relaxed);
    }

    /// Logical task `n` was killed (the kill returned `Killed`).
    pub fn killed(&self, n: usize) {
        // AcqRel: a later start/commit that reads KILLED is a resurrection;
        // pairs with the Acquire loads of `flags` in `started` and
        // `committed`, and the Acquire load of `commits` below pairs with the
        // AcqRel increment in `committed`.
        let old = self.flags[n].fetch_or(KILLED, Ordering::AcqRel);
        if old & KILLED == 0 && self.commits[n].load(Ordering::Acquire) > 0 {
            self.resurrected.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A run of `t` started.
    pub fn started(&self, t: TaskId) {
        match self.logical(t) {
            Some(n) => {
                // Relaxed: counters; the KILLED check below is Acquire.
                self.starts[n].fetch_add(1, Ordering::Relaxed);
                if self.flags[n].load(Ordering::Acquire) & KILLED != 0 {
                    self.resurrected.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                // Relaxed: a violation counter, read after the workers stop.
                self.unknown.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The completion of `t` committed.
    pub fn committed(&self, t: TaskId) {
        match self.logical(t) {
            Some(n) => {
                // AcqRel: totally orders commits of one task; pairs with the
                // Acquire load of `commits` in `killed` (and the load of
                // `flags` below with the AcqRel fetch_or there).
                if self.commits[n].fetch_add(1, Ordering::AcqRel) > 0 {
                    self.duplicated.fetch_add(1, Ordering::Relaxed);
                }
                if self.flags[n].load(Ordering::Acquire) & KILLED != 0 {
                    self.resurrected.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                // Relaxed: a violation counter, read after the workers stop.
                self.unknown.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Commits of logical task `n` so far.
    pub fn commits_of(&self, n: usize) -> u64 {
        // Acquire: pairs with the AcqRel increment in `committed`.
        self.commits[n].load(Ordering::Acquire)
    }

    /// Totals (exact once the workers are stopped).
    pub fn report(&self) -> LedgerReport {
        // Acquire (all loads below): pairs with the workers' read-modify-writes;
        // exact once they are joined, a snapshot while they run.
        let mut r = LedgerReport {
            duplicated: self.duplicated.load(Ordering::Acquire),
            resurrected: self.resurrected.load(Ordering::Acquire),
            unknown: self.unknown.load(Ordering::Acquire),
            ..Default::default()
        };
        for n in 0..self.flags.len() {
            let f = self.flags[n].load(Ordering::Acquire);
            let c = self.commits[n].load(Ordering::Acquire);
            let s = self.starts[n].load(Ordering::Acquire);
            if f & ACKED != 0 {
                r.tasks += 1;
                if f & KILLED == 0 && c == 0 {
                    r.lost += 1;
                }
            }
            if c > 0 {
                r.completed += 1;
            }
            if f & KILLED != 0 {
                r.killed += 1;
            }
            r.aborted_runs += s.saturating_sub(c);
        }
        r
    }
}

/// Checks that no `(queue, epoch)` was granted to two cores, from the
/// takeover and re-backup events. Returns the violations found.
pub fn check_owners(events: &[Event]) -> Vec<String> {
    let mut owners: BTreeMap<(u16, u32), usize> = BTreeMap::new();
    let mut bad = Vec::new();
    for e in events {
        let (q, epoch, who) = match &e.kind {
            EventKind::TakeOver(r) => (r.queue, r.epoch, r.by),
            EventKind::Rebackup {
                queue,
                owner,
                epoch,
                ..
            } => (*queue, *epoch, *owner),
            _ => continue,
        };
        if let Some(&prev) = owners.get(&(q, epoch)) {
            if prev != who {
                bad.push(format!(
                    "queue {q} epoch {epoch} owned by both core {prev} and core {who}"
                ));
            }
        } else {
            owners.insert((q, epoch), who);
        }
    }
    bad
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn ledger_flags_duplicates_resurrections_and_losses() {
        let l = Ledger::new(8, 4);
        let (a, b, c) = (TaskId::new(0, 1), TaskId::new(1, 1), TaskId::new(2, 1));
        for (n, t) in [a, b, c].into_iter().enumerate() {
            l.register(n, t);
            l.acked(n);
        }
        l.started(a);
        l.committed(a);
        l.committed(a);
        l.killed(1);
        l.started(b);
        l.started(TaskId::new(0, 2)); // a reused slot: unknown
        let r = l.report();
        assert_eq!(
            (
                r.tasks,
                r.completed,
                r.lost,
                r.duplicated,
                r.resurrected,
                r.killed
            ),
            (3, 1, 1, 1, 1, 1)
        );
        assert_eq!(r.unknown, 1);
        assert_eq!(r.violations(), 3);
    }
}
