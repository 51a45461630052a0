//! Property tests and the fault campaign: random operations and random
//! faults — crashes at named points (inside operations and inside spawns),
//! freezes and slow-downs beyond the lease, double faults (a core and its
//! first backup together, with `k = 2`) — on simulated cores driven from one
//! thread with an explicit clock, checked against a sequential model of what
//! must happen to every task. Every planned fault must fire: the harness
//! counts planned and fired faults per kind and the tests assert they agree.
//!
//! The campaign's size comes from `NODEREP_FAULT_CAMPAIGN` (faults to fire;
//! default 400, seconds in debug mode); run it with 10000 or more to measure.
//!
//! Also here: the replica's order-insensitivity property, with deliveries
//! that really reorder enqueue, completion and removal records (no in-order
//! replay afterwards), against a model of the tombstone and epoch rules.

use super::super::check::{check_owners, Ledger};
use super::super::fault::{catch_crash, FaultAction, FaultPoint};
use super::super::ring::{Record, RecordKind};
use super::super::*;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const MS: u64 = 1_000_000;

/// The kinds of injected fault, for the planned/fired counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// A core crashes at a named point inside an operation.
    Crash,
    /// A core stops (frozen), then wakes up as a zombie if it missed its lease.
    Freeze,
    /// A core keeps running its task but misses its lease renewals.
    Slow,
    /// A core and its first backup crash together (`k >= 2`).
    Double,
    /// A spawning core crashes mid-spawn.
    SpawnCrash,
}

const KINDS: [Kind; 5] = [
    Kind::Crash,
    Kind::Freeze,
    Kind::Slow,
    Kind::Double,
    Kind::SpawnCrash,
];

#[derive(Clone, Debug)]
enum Op {
    Spawn(u8),
    Step(u8),
    Finish(u8, u8),
    Kill(u8),
    Wake(u8),
    Advance(u8),
    Crash(u8, u8, u8),
    Freeze(u8, u8),
    Slow(u8, u8),
    Double(u8, u8),
    SpawnCrash(u8, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u8>().prop_map(Op::Spawn),
        6 => any::<u8>().prop_map(Op::Step),
        5 => (any::<u8>(), any::<u8>()).prop_map(|(c, e)| Op::Finish(c, e)),
        1 => any::<u8>().prop_map(Op::Kill),
        1 => any::<u8>().prop_map(Op::Wake),
        3 => (1u8..12).prop_map(Op::Advance),
        1 => (any::<u8>(), any::<u8>(), 1u8..4).prop_map(|(c, p, a)| Op::Crash(c, p, a)),
        1 => (any::<u8>(), 5u8..80).prop_map(|(c, ms)| Op::Freeze(c, ms)),
        1 => (any::<u8>(), 10u8..80).prop_map(|(c, ms)| Op::Slow(c, ms)),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(c, p)| Op::Double(c, p)),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(c, d)| Op::SpawnCrash(c, d)),
    ]
}

/// A random op with the same mix as [`op`] (for the seeded campaign).
fn random_op(rng: &mut impl Rng) -> Op {
    let b = |rng: &mut dyn rand::RngCore| rng.random::<u8>();
    match rng.random_range(0..28) {
        0..=3 => Op::Spawn(b(rng)),
        4..=9 => Op::Step(b(rng)),
        10..=14 => Op::Finish(b(rng), b(rng)),
        15 => Op::Kill(b(rng)),
        16 => Op::Wake(b(rng)),
        17..=19 => Op::Advance(rng.random_range(1..12)),
        20..=21 => Op::Crash(b(rng), b(rng), rng.random_range(1..4)),
        22 => Op::Freeze(b(rng), rng.random_range(5..80)),
        23 => Op::Slow(b(rng), rng.random_range(10..80)),
        24..=25 => Op::Double(b(rng), b(rng)),
        _ => Op::SpawnCrash(b(rng), rng.random()),
    }
}

/// One simulated core.
struct Core {
    worker: Option<CoreWorker>,
    running: Option<(QueueId, TaskId)>,
    frozen_until: u64,
    slow_until: u64,
}

/// The sequential model: what each spawned task must end as.
#[derive(Default)]
struct Model {
    /// Logical task -> id (acknowledged spawns only).
    ids: Vec<TaskId>,
    killed: BTreeSet<usize>,
    blocked: BTreeSet<usize>,
    completed: BTreeMap<usize, u32>,
    /// Ids of spawns whose spawner crashed before acknowledging them.
    unacked: Vec<TaskId>,
}

/// Planned and fired faults per kind.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counts {
    pub(crate) planned: BTreeMap<Kind, u64>,
    pub(crate) fired: BTreeMap<Kind, u64>,
    /// Fired crashes per fault point.
    pub(crate) points: BTreeMap<String, u64>,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        for (k, v) in &o.planned {
            *self.planned.entry(*k).or_default() += v;
        }
        for (k, v) in &o.fired {
            *self.fired.entry(*k).or_default() += v;
        }
        for (k, v) in &o.points {
            *self.points.entry(k.clone()).or_default() += v;
        }
    }

    pub(crate) fn total_fired(&self) -> u64 {
        self.fired.values().sum()
    }

    pub(crate) fn total_planned(&self) -> u64 {
        self.planned.values().sum()
    }
}

/// A crash armed and not yet fired.
struct Armed {
    core: usize,
    kind: Kind,
    ops_left: u32,
}

struct Sim {
    rq: RunQueues,
    ledger: Ledger,
    cores: Vec<Core>,
    model: Model,
    now: u64,
    k: usize,
    counts: Counts,
    crashed_any: bool,
    armed: Option<Armed>,
    /// A spawn crash armed on this core: the next spawn runs there.
    spawn_crash: Option<usize>,
    next_logical: usize,
}

impl Sim {
    fn new(cores: usize, k: usize, replication: Replication) -> Self {
        let cfg = Config {
            replication,
            backups: k,
            ring_capacity: 64,
            task_capacity: 512,
            ..Config::default()
        };
        let rq = RunQueues::with_cores(cores, cfg).unwrap();
        rq.faults().set_park_on_crash(false);
        let cores = (0..cores)
            .map(|c| {
                let mut w = CoreWorker::new(&rq, c).unwrap();
                w.set_stealing(c % 2 == 0);
                Core {
                    worker: Some(w),
                    running: None,
                    frozen_until: 0,
                    slow_until: 0,
                }
            })
            .collect();
        Self {
            ledger: Ledger::new(512, 8192),
            rq,
            cores,
            model: Model::default(),
            now: 1,
            k,
            counts: Counts::default(),
            crashed_any: false,
            armed: None,
            spawn_crash: None,
            next_logical: 0,
        }
    }

    fn n(&self) -> usize {
        self.cores.len()
    }

    fn live(&self) -> usize {
        (0..self.n()).filter(|&c| self.rq.is_alive(c)).count()
    }

    /// True when every failure so far has been recovered: every queue is
    /// owned by a usable core and backed up by as many usable live cores as
    /// there can be. A new fault is injected only then, and only if enough
    /// cores stay alive for every queue to keep `k` backups afterwards.
    fn settled(&self, failing: usize) -> bool {
        if self.armed.is_some() || self.spawn_crash.is_some() {
            return false;
        }
        let live = self.live();
        if live < failing + self.k + 1 {
            return false;
        }
        (0..self.n()).all(|q| {
            let owner = self.rq.lease(q as QueueId).unwrap().owner as usize;
            let backups = lock(&self.rq.sh.queues[q].stream).backups.clone();
            self.usable(owner)
                && backups.len() >= self.k.min(live - 1)
                && backups
                    .iter()
                    .all(|&b| b != owner && self.usable(b) && self.rq.is_alive(b))
        })
    }

    fn usable(&self, c: usize) -> bool {
        self.cores[c].worker.is_some()
            && self.cores[c].frozen_until <= self.now
            && self.cores[c].slow_until <= self.now
    }

    /// A core whose spawner is not fenced (the first live usable one).
    fn spawner_core(&self) -> usize {
        (0..self.n())
            .find(|&c| self.rq.is_alive(c) && self.cores[c].worker.is_some())
            .or_else(|| (0..self.n()).find(|&c| self.rq.is_alive(c)))
            .unwrap_or(0)
    }

    fn bury(&mut self, c: usize) {
        self.cores[c].worker = None;
        self.cores[c].running = None;
        self.crashed_any = true;
    }

    /// Runs `f` on core `c`'s worker, burying the core if it crashes.
    fn on_core<R>(&mut self, c: usize, f: impl FnOnce(&mut CoreWorker, &Ledger) -> R) -> Option<R> {
        let ledger = &self.ledger;
        let w = self.cores[c].worker.as_mut()?;
        match catch_crash(|| f(w, ledger)) {
            Ok(r) => Some(r),
            Err(crash) => {
                self.fired_crash(c, crash.point);
                self.bury(c);
                None
            }
        }
    }

    /// A crash fired on `c` at `point`: count it against what was armed.
    fn fired_crash(&mut self, c: usize, point: FaultPoint) {
        if let Some(a) = self.armed.take_if(|a| a.core == c) {
            *self.counts.fired.entry(a.kind).or_default() += 1;
            *self.counts.points.entry(format!("{point:?}")).or_default() += 1;
        }
        if self.spawn_crash == Some(c) {
            self.spawn_crash = None;
            *self.counts.fired.entry(Kind::SpawnCrash).or_default() += 1;
            *self.counts.points.entry(format!("{point:?}")).or_default() += 1;
        }
    }

    fn plan(&mut self, kind: Kind) {
        *self.counts.planned.entry(kind).or_default() += 1;
    }

    fn step(&mut self, c: usize) {
        if !self.usable(c) || self.cores[c].running.is_some() {
            return;
        }
        let now = self.now;
        if let Some(Ok(Step::Run { queue, task })) = self.on_core(c, |w, _| w.step(now)) {
            self.ledger.started(task);
            self.cores[c].running = Some((queue, task));
        }
    }

    fn finish(&mut self, c: usize, exit: Exit) {
        // A slow core still finishes its task (it only misses renewals).
        if self.cores[c].worker.is_none() || self.cores[c].frozen_until > self.now {
            return;
        }
        let Some((q, t)) = self.cores[c].running.take() else {
            return;
        };
        let n = self.ledger.logical(t).expect("registered");
        let done = self
            .on_core(c, |w, l| {
                w.finish(q, t, exit, || {
                    if exit == Exit::Done {
                        l.committed(t);
                    }
                })
            })
            .map(|r| r.is_ok());
        if done == Some(true) {
            match exit {
                Exit::Done => *self.model.completed.entry(n).or_default() += 1,
                Exit::Block => {
                    self.model.blocked.insert(n);
                }
                Exit::Yield => {}
            }
        }
    }

    fn spawn(&mut self, q: QueueId) {
        let n = self.next_logical;
        if n >= self.ledger.capacity() {
            return;
        }
        let core = self.spawn_crash.unwrap_or_else(|| self.spawner_core());
        let Ok(sp) = self.rq.spawner(core) else {
            return;
        };
        let ledger = &self.ledger;
        let seen = core::cell::Cell::new(None);
        let r = catch_crash(|| {
            sp.spawn_with(q, |t| {
                seen.set(Some(t));
                ledger.register(n, t);
            })
        });
        self.next_logical += 1;
        match r {
            Ok(Ok(t)) => {
                self.ledger.acked(n);
                self.model.ids.push(t);
                // Logical numbers of acknowledged tasks are their model index.
                self.ledger.register(self.model.ids.len() - 1, t);
                self.next_logical = self.model.ids.len();
            }
            Ok(Err(_)) => self.next_logical -= 1,
            Err(crash) => {
                self.fired_crash(core, crash.point);
                self.bury(core);
                self.next_logical -= 1;
                if let Some(t) = seen.get() {
                    self.model.unacked.push(t);
                }
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        let n = self.n();
        match *op {
            Op::Spawn(q) => self.spawn((q as usize % n) as QueueId),
            Op::Step(c) => self.step(c as usize % n),
            Op::Finish(c, e) => {
                let exit = match e % 8 {
                    0 => Exit::Yield,
                    1 => Exit::Block,
                    _ => Exit::Done,
                };
                self.finish(c as usize % n, exit);
            }
            Op::Kill(i) => {
                if self.model.ids.is_empty() {
                    return;
                }
                let m = i as usize % self.model.ids.len();
                let sp = self.rq.spawner(self.spawner_core()).unwrap();
                if sp.kill(self.model.ids[m]) == Kill::Killed {
                    self.ledger.killed(m);
                    self.model.killed.insert(m);
                    self.model.blocked.remove(&m);
                }
            }
            Op::Wake(i) => {
                if let Some(&m) = self
                    .model
                    .blocked
                    .iter()
                    .nth(i as usize % self.model.blocked.len().max(1))
                {
                    let sp = self.rq.spawner(self.spawner_core()).unwrap();
                    if sp.wake(self.model.ids[m]) == Wake::Woken {
                        self.model.blocked.remove(&m);
                    }
                }
            }
            Op::Advance(ms) => {
                self.now += u64::from(ms) * MS;
                let now = self.now;
                for c in 0..n {
                    // The timer tick: housekeeping runs even mid-task, as a
                    // timer interrupt would; idle cores also pick.
                    if self.usable(c) {
                        let _ = self.on_core(c, |w, _| w.housekeep(now));
                    }
                    if self.cores[c].running.is_none() {
                        self.step(c);
                    }
                }
            }
            Op::Crash(c, p, after) => {
                let c = c as usize % n;
                if !self.settled(1) || !self.rq.is_alive(c) {
                    return;
                }
                let point = [
                    FaultPoint::OpStart,
                    FaultPoint::AfterIntent,
                    FaultPoint::AfterCommit,
                    FaultPoint::Tick,
                    FaultPoint::MigrateDelivered,
                ][p as usize % 5];
                self.plan(Kind::Crash);
                self.rq
                    .faults()
                    .arm(c, point, u32::from(after), FaultAction::Crash);
                self.armed = Some(Armed {
                    core: c,
                    kind: Kind::Crash,
                    ops_left: 40,
                });
            }
            Op::Freeze(c, ms) => {
                let c = c as usize % n;
                if !self.settled(1) || !self.rq.is_alive(c) {
                    return;
                }
                self.plan(Kind::Freeze);
                // A freeze of a live, usable core always takes effect.
                *self.counts.fired.entry(Kind::Freeze).or_default() += 1;
                self.cores[c].frozen_until = self.now + u64::from(ms) * MS;
            }
            Op::Slow(c, ms) => {
                let c = c as usize % n;
                if !self.settled(1) || !self.rq.is_alive(c) {
                    return;
                }
                self.plan(Kind::Slow);
                *self.counts.fired.entry(Kind::Slow).or_default() += 1;
                self.cores[c].slow_until = self.now + u64::from(ms) * MS;
            }
            Op::Double(c, p) => {
                let c = c as usize % n;
                if self.k < 2 || !self.settled(2) || !self.rq.is_alive(c) {
                    return;
                }
                let Some(&first) = lock(&self.rq.sh.queues[c].stream).backups.first() else {
                    return;
                };
                // The core and its first backup crash together, between two
                // operations: both inside one recovery window.
                let _ = p;
                self.plan(Kind::Double);
                self.bury(c);
                self.bury(first);
                *self.counts.fired.entry(Kind::Double).or_default() += 1;
            }
            Op::SpawnCrash(c, delivered) => {
                let c = c as usize % n;
                if !self.settled(1) || !self.rq.is_alive(c) || !self.usable(c) {
                    return;
                }
                let point = if delivered {
                    FaultPoint::SpawnDelivered
                } else {
                    FaultPoint::SpawnAllocated
                };
                self.plan(Kind::SpawnCrash);
                self.rq.faults().arm(c, point, 1, FaultAction::Crash);
                self.spawn_crash = Some(c);
                let q = (c + 1) % n;
                self.spawn(q as QueueId);
            }
        }
        self.rearm();
        self.check_places();
    }

    /// An armed crash that has not fired after a few operations is re-armed
    /// at the start of the core's next operation (a fresh plan; it is still
    /// one planned fault, and it will fire).
    fn rearm(&mut self) {
        if let Some(a) = &mut self.armed {
            if a.ops_left == 0 {
                self.rq
                    .faults()
                    .arm(a.core, FaultPoint::OpStart, 1, FaultAction::Crash);
                a.ops_left = u32::MAX;
            } else if a.ops_left != u32::MAX {
                a.ops_left -= 1;
            }
        }
    }

    /// Every acknowledged, not yet finished task is in exactly one live place.
    fn check_places(&self) {
        for (n, &t) in self.model.ids.iter().enumerate() {
            let done = self.model.completed.contains_key(&n) || self.model.killed.contains(&n);
            match self.rq.task_state(t) {
                Some(s) => {
                    if !done {
                        assert!(
                            !matches!(
                                s.phase,
                                TaskPhase::Done | TaskPhase::Removed | TaskPhase::Free
                            ),
                            "task {n} ({t}) not finished but its word says {s:?}"
                        );
                    }
                    if self.model.killed.contains(&n) {
                        assert_eq!(s.phase, TaskPhase::Removed, "killed task {n} moved on");
                    }
                }
                None => assert!(done, "task {n} ({t}) vanished from the table unfinished"),
            }
        }
        // A spawn that crashed is never acknowledged and never runs.
        for &t in &self.model.unacked {
            if let Some(s) = self.rq.task_state(t) {
                assert!(
                    matches!(s.phase, TaskPhase::Spawning | TaskPhase::Removed),
                    "an unacknowledged spawn ({t}) reached {s:?}"
                );
            }
        }
    }

    /// Thaws everything, wakes the sleepers and runs until all is done (an
    /// armed crash stays armed: it fires here if it has not yet).
    fn drain(&mut self) {
        for c in 0..self.n() {
            self.cores[c].frozen_until = 0;
            self.cores[c].slow_until = 0;
        }
        if let Some(c) = self.spawn_crash.take() {
            // Never reached: not a planned fault after all.
            self.rq.faults().disarm(c);
            *self.counts.planned.entry(Kind::SpawnCrash).or_default() -= 1;
        }
        for _round in 0..4000 {
            for m in core::mem::take(&mut self.model.blocked) {
                let sp = self.rq.spawner(self.spawner_core()).unwrap();
                if sp.wake(self.model.ids[m]) != Wake::Woken {
                    self.model.blocked.insert(m);
                }
            }
            self.now += MS / 2;
            for c in 0..self.n() {
                self.finish(c, Exit::Done);
                self.step(c);
                self.finish(c, Exit::Done);
            }
            self.rearm();
            let open = self
                .model
                .ids
                .iter()
                .enumerate()
                .filter(|(n, _)| {
                    !self.model.completed.contains_key(n) && !self.model.killed.contains(n)
                })
                .count();
            // Done once every task finished and every dead core's queue was
            // taken over (which also reclaims its unfinished spawns).
            let recovered =
                (0..self.n()).all(|c| self.cores[c].worker.is_some() || !self.rq.is_alive(c));
            if open == 0 && self.armed.is_none() && recovered {
                return;
            }
        }
    }

    /// Drains, then checks every invariant; returns the fault counts.
    fn finish_and_check(mut self, replication: Replication) -> Result<Counts, TestCaseError> {
        self.drain();
        let rep = self.ledger.report();
        prop_assert_eq!(rep.duplicated, 0, "duplicated: {:?}", rep);
        prop_assert_eq!(rep.resurrected, 0, "resurrected: {:?}", rep);
        prop_assert_eq!(rep.unknown, 0);
        for (n, count) in &self.model.completed {
            prop_assert_eq!(*count, 1, "task {} completed {} times", n, count);
            prop_assert!(!self.model.killed.contains(n) || self.ledger.commits_of(*n) == 1);
        }
        if replication == Replication::Sync || !self.crashed_any {
            prop_assert_eq!(rep.lost, 0, "lost tasks ({:?}): {:?}", replication, rep);
            prop_assert_eq!(rep.completed + rep.killed, rep.tasks);
        }
        let violations = check_owners(&self.rq.take_events());
        prop_assert!(violations.is_empty(), "{:?}", violations);
        // No leaked slot: nothing left mid-spawn (the dead spawners' slots
        // were reclaimed) and, in sync mode, nothing left in flight.
        let left: Vec<_> = self
            .rq
            .live_tasks()
            .into_iter()
            .filter(|(_, s)| s.phase == TaskPhase::Spawning)
            .collect();
        prop_assert!(left.is_empty(), "spawn slots leaked: {:?}", left);
        prop_assert_eq!(
            &self.counts.planned,
            &self.counts.fired,
            "planned faults that did not fire"
        );
        Ok(self.counts)
    }
}

fn run(
    ops: &[Op],
    cores: usize,
    k: usize,
    replication: Replication,
) -> Result<Counts, TestCaseError> {
    let mut sim = Sim::new(cores, k, replication);
    for op in ops {
        sim.apply(op);
    }
    sim.finish_and_check(replication)
}

/// Faults planned and fired over the proptest cases (for the log line).
static TOTAL: std::sync::Mutex<Option<Counts>> = std::sync::Mutex::new(None);

fn tally(c: &Counts, what: &str) {
    let mut g = TOTAL.lock().unwrap_or_else(|p| p.into_inner());
    let t = g.get_or_insert_with(Counts::default);
    t.add(c);
    eprintln!(
        "prop ({what}): {} faults planned, {} fired so far, 0 violations",
        t.total_planned(),
        t.total_fired()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn sync_replication_never_loses_duplicates_or_resurrects(ops in prop::collection::vec(op(), 1..150)) {
        let c = run(&ops, 4, 1, Replication::Sync)?;
        tally(&c, "sync k=1");
    }

    #[test]
    fn two_backups_survive_a_core_and_its_first_backup_failing_together(ops in prop::collection::vec(op(), 1..150)) {
        let c = run(&ops, 6, 2, Replication::Sync)?;
        tally(&c, "sync k=2");
    }

    #[test]
    fn async_replication_never_duplicates_or_resurrects(ops in prop::collection::vec(op(), 1..150)) {
        let c = run(&ops, 4, 1, Replication::Async { batch: 4, max_lag: Duration::from_millis(3) })?;
        tally(&c, "async k=1");
    }
}

/// The fault campaign: seeded random runs on 6 cores with `k = 2` until
/// `NODEREP_FAULT_CAMPAIGN` faults (default 400) have fired; every planned
/// fault must fire and no task may be lost, duplicated or resurrected.
#[test]
fn fault_campaign_every_planned_fault_fires_and_nothing_is_lost() {
    let target: u64 = std::env::var("NODEREP_FAULT_CAMPAIGN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let mut total = Counts::default();
    let mut runs = 0u64;
    let mut takeovers = 0u64;
    let mut reclaimed = 0u64;
    let mut tasks = 0u64;
    while total.total_fired() < target {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0000 + runs);
        let mut sim = Sim::new(6, 2, Replication::Sync);
        for _ in 0..300 {
            let op = random_op(&mut rng);
            sim.apply(&op);
        }
        takeovers += sim.rq.takeovers();
        reclaimed += sim.rq.reclaimed_spawns();
        tasks += sim.model.ids.len() as u64;
        match sim.finish_and_check(Replication::Sync) {
            Ok(c) => total.add(&c),
            Err(e) => panic!("campaign run {runs} (seed {:#x}): {e}", 0x5eed_0000 + runs),
        }
        runs += 1;
    }
    eprintln!(
        "campaign: {runs} runs, {tasks} tasks, {takeovers} takeovers, {reclaimed} spawn slots reclaimed"
    );
    for k in KINDS {
        eprintln!(
            "campaign: {k:?}: planned {} fired {}",
            total.planned.get(&k).copied().unwrap_or(0),
            total.fired.get(&k).copied().unwrap_or(0)
        );
    }
    eprintln!("campaign: fired crashes by point: {:?}", total.points);
    eprintln!(
        "campaign: {} faults planned, {} fired; 0 lost, 0 duplicated, 0 resurrected",
        total.total_planned(),
        total.total_fired()
    );
    assert_eq!(total.planned, total.fired);
    for k in KINDS {
        assert!(
            total.fired.get(&k).copied().unwrap_or(0) > 0,
            "no {k:?} fault fired in the campaign"
        );
    }
}

/// The model of the replica's rules for one delivery: the final state of
/// each task is its record with the largest `(epoch, seq)` stamp (rule L;
/// tombstones win over older records, rule T; stamps order by epoch first,
/// rule E); tombstones at or below the last collection watermark are gone
/// (rule W).
fn model_replica(recs: &[Record], watermark: Stamp) -> (Vec<(TaskId, Stamp)>, Vec<TaskId>, usize) {
    let mut best: BTreeMap<TaskId, Record> = BTreeMap::new();
    for r in recs {
        if best.get(&r.task).is_none_or(|b| b.stamp < r.stamp) {
            best.insert(r.task, *r);
        }
    }
    let mut queued: Vec<(TaskId, Stamp)> = Vec::new();
    let mut running = Vec::new();
    let mut tombs = 0;
    for (t, r) in &best {
        match r.kind {
            RecordKind::Enqueue => queued.push((*t, r.stamp)),
            RecordKind::Pick => running.push(*t),
            _ => {
                if r.stamp > watermark {
                    tombs += 1
                }
            }
        }
    }
    queued.sort_by_key(|&(t, s)| (s, t));
    (queued, running, tombs)
}

/// A legal history of one queue over several owner epochs (each new owner's
/// seq restarts at 1), as records.
fn history(steps: &[(u8, u8, bool)]) -> Vec<Record> {
    let mut epoch = 1u32;
    let mut seq = 0u64;
    let mut recs = Vec::new();
    for &(slot, kind, new_epoch) in steps {
        if new_epoch {
            epoch += 1;
            seq = 0;
        }
        seq += 1;
        recs.push(Record {
            task: TaskId::new(u32::from(slot % 6), 1),
            kind: match kind % 5 {
                0 | 1 => RecordKind::Enqueue,
                2 => RecordKind::Pick,
                3 => RecordKind::Complete,
                _ => RecordKind::Remove,
            },
            stamp: Stamp { epoch, seq },
        });
    }
    recs
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Replicas converge whatever the delivery order and duplication: a
    /// random permutation of the records (each delivered at least once, some
    /// several times, with no in-order replay afterwards) gives the model's
    /// state. A `Collect` at a random point of the history is delivered only
    /// after every record it covers (as the owner guarantees), and stale
    /// duplicates may still arrive after it.
    #[test]
    fn replica_is_order_and_duplicate_insensitive(
        steps in prop::collection::vec((any::<u8>(), any::<u8>(), prop::bool::weighted(0.15)), 1..60),
        order in prop::collection::vec(any::<prop::sample::Index>(), 1..200),
        dups in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
        collect_at in any::<prop::sample::Index>(),
        collect in any::<bool>(),
    ) {
        let recs = history(&steps);
        // A random permutation: repeatedly take an index out of what is left.
        let mut left: Vec<usize> = (0..recs.len()).collect();
        let mut perm = Vec::with_capacity(recs.len());
        let mut i = 0;
        while !left.is_empty() {
            let ix = order[i % order.len()].index(left.len());
            perm.push(left.swap_remove(ix));
            i += 1;
        }
        let mut rep = Replica::new();
        let mut watermark = Stamp::default();
        // The Collect covers a prefix of the history: deliver it once all of
        // that prefix was delivered.
        let cut = collect_at.index(recs.len());
        let covered = recs[cut].stamp;
        let mut seen = 0usize;
        let mut collected = !collect;
        for &j in &perm {
            rep.apply(recs[j]);
            if recs[j].stamp <= covered {
                seen += 1;
            }
            if !collected && seen == cut + 1 {
                rep.apply(Record {
                    task: TaskId::from_raw(0),
                    kind: RecordKind::Collect,
                    stamp: covered,
                });
                watermark = covered;
                collected = true;
            }
        }
        // Late duplicates (replays) of any record, even below the watermark.
        for d in &dups {
            rep.apply(recs[d.index(recs.len())]);
        }
        let (queued, running, tombs) = model_replica(&recs, watermark);
        prop_assert_eq!(rep.queued(), queued);
        prop_assert_eq!(rep.running(), running);
        prop_assert_eq!(rep.tombstones(), tombs);
    }
}
