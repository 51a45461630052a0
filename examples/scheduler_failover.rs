//! Scheduler failover demo: per-core run queues replicated on `k` other cores.
//!
//! Runs one worker thread per simulated core (8 by default, 2 nodes of 4, on
//! however many real CPUs there are), streams tasks at them (tasks also
//! spawn children from their own core), and injects faults of every kind the
//! library supports, in rounds on fresh schedulers: crashes at named points
//! inside operations, freezes by a real signal, slow-downs beyond the lease,
//! double faults (a core and its first backup crash together, survived with
//! `k = 2`), and crashes of a core in the middle of a spawn. It prints a
//! timeline, the checks, and a final line with the faults planned and fired
//! per kind. It exits non-zero if any planned fault did not fire or any
//! invariant breaks (a lost, duplicated or resurrected task, two owners of one
//! epoch, a task word left in flight, a leaked spawn slot).
//!
//! ```text
//! cargo run --release --example scheduler_failover                 # the demo (< 10 s)
//! cargo run --release --example scheduler_failover -- --double     # core + first backup, together
//! cargo run --release --example scheduler_failover -- --backups 1 --double   # ... and what k = 1 loses
//! cargo run --release --example scheduler_failover -- --compare    # throughput and loss per mode
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use noderep::runq::check::{check_owners, Ledger};
use noderep::runq::fault::{catch_crash, FaultAction, FaultPoint, Freezer};
use noderep::runq::{
    CoreWorker, EventKind, Exit, QueueId, Replication, RunQueues, RunqError, Step, TaskPhase,
};
use noderep::topology::{pin_to_cpu, Topology};

struct Opts {
    tasks: usize,
    work_us: u64,
    backups: usize,
    double_only: bool,
    rounds: usize,
    compare: bool,
    trials: usize,
}

const USAGE: &str = "usage: scheduler_failover [--tasks N] [--work-us US] [--backups K] [--double] [--rounds R] [--compare [--trials N]]";

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        tasks: 2500,
        work_us: 20,
        backups: 2,
        double_only: false,
        rounds: 3,
        compare: false,
        trials: 4,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--tasks" => o.tasks = num("--tasks")? as usize,
            "--work-us" => o.work_us = num("--work-us")?,
            "--backups" => o.backups = num("--backups")? as usize,
            "--rounds" => o.rounds = num("--rounds")? as usize,
            "--trials" => o.trials = num("--trials")? as usize,
            "--double" => o.double_only = true,
            "--compare" => o.compare = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if o.tasks == 0 || o.tasks > 1_000_000 {
        return Err("--tasks must be in 1..=1000000".into());
    }
    if !(1..=4).contains(&o.backups) {
        return Err("--backups must be in 1..=4".into());
    }
    if !(1..=100).contains(&o.rounds) {
        return Err("--rounds must be in 1..=100".into());
    }
    if o.work_us > 1_000_000 {
        return Err("--work-us must be at most 1000000".into());
    }
    Ok(o)
}

fn spin(us: u64) {
    let end = Instant::now() + Duration::from_micros(us);
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

/// The worker threads of one scheduler (one per simulated core).
struct Cluster {
    rq: RunQueues,
    ledger: Arc<Ledger>,
    /// Next logical task number (spawns by the main thread and by tasks).
    next: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    freezers: Vec<Freezer>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Per core: true while it runs a task (so the demo can freeze it mid-task).
    busy: Arc<Vec<AtomicBool>>,
}

/// Spawns one task on `q` through `core`'s spawner, registering it in the
/// ledger; `Ok(false)` if the ledger is full.
fn spawn_one(
    rq: &RunQueues,
    ledger: &Ledger,
    next: &AtomicUsize,
    core: usize,
    q: QueueId,
) -> Result<bool, RunqError> {
    // Relaxed: a unique counter.
    let n = next.fetch_add(1, Ordering::Relaxed);
    if n >= ledger.capacity() {
        return Ok(false);
    }
    rq.spawner(core)?.spawn_with(q, |t| ledger.register(n, t))?;
    ledger.acked(n);
    Ok(true)
}

fn start(
    topo: &Topology,
    rq: RunQueues,
    max_tasks: usize,
    work_us: u64,
    children: bool,
) -> Cluster {
    let ledger = Arc::new(Ledger::new(rq.config().task_capacity, max_tasks));
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Arc<Vec<AtomicBool>> = Arc::new(
        (0..topo.num_cores())
            .map(|_| AtomicBool::new(false))
            .collect(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let barrier = Arc::new(std::sync::Barrier::new(topo.num_cores()));
    let threads = topo
        .cores()
        .iter()
        .map(|core| {
            let (rq, ledger, next, stop, tx, barrier, busy) = (
                rq.clone(),
                ledger.clone(),
                next.clone(),
                stop.clone(),
                tx.clone(),
                barrier.clone(),
                busy.clone(),
            );
            let (id, cpu) = (core.id, core.os_cpu);
            std::thread::spawn(move || {
                let _ = pin_to_cpu(cpu);
                tx.send((id, Freezer::register_current().expect("freezer")))
                    .expect("send");
                let mut w = CoreWorker::new(&rq, id).expect("worker");
                // Stealing on in the demo; off for the throughput bursts, where
                // every queue is loaded alike and steals would only ping-pong.
                w.set_stealing(children);
                barrier.wait();
                let mut runs = 0u64;
                let _ = catch_crash(|| {
                    // Acquire: pairs with the Release store in `shutdown`.
                    while !stop.load(Ordering::Acquire) {
                        match w.step(rq.now()).expect("step") {
                            Step::Run { queue, task } => {
                                ledger.started(task);
                                // Release/Acquire: a hint for the demo's freeze timing only.
                                busy[id].store(true, Ordering::Release);
                                spin(work_us);
                                runs += 1;
                                if children && runs % 8 == 0 {
                                    // The task spawns a child from this core,
                                    // onto the next queue (a spawn crash
                                    // fires here).
                                    let q = ((id + 1) % rq.queues()) as QueueId;
                                    let _ = spawn_one(&rq, &ledger, &next, id, q);
                                }
                                busy[id].store(false, Ordering::Release);
                                // A backup that stays stalled (with k = 1, a
                                // core and its only backup dead): keep trying
                                // until told to stop.
                                while let Err(RunqError::BackupStalled { .. }) =
                                    w.finish(queue, task, Exit::Done, || ledger.committed(task))
                                {
                                    // Acquire: pairs with the Release store in `shutdown`.
                                    if stop.load(Ordering::Acquire) {
                                        break;
                                    }
                                    std::thread::sleep(Duration::from_millis(1));
                                }
                            }
                            Step::Idle => std::thread::sleep(Duration::from_micros(30)),
                            Step::Fenced => std::thread::sleep(Duration::from_millis(1)),
                        }
                    }
                });
            })
        })
        .collect();
    let mut f: Vec<(usize, Freezer)> = (0..topo.num_cores())
        .map(|_| rx.recv().expect("freezer"))
        .collect();
    f.sort_by_key(|x| x.0);
    Cluster {
        rq,
        ledger,
        next,
        stop,
        freezers: f.into_iter().map(|x| x.1).collect(),
        threads,
        busy,
    }
}

impl Cluster {
    /// Spawns one task from the main thread (on behalf of a live core that
    /// is not `avoid`); false if none could be spawned.
    fn spawn(&self, avoid: Option<usize>) -> bool {
        let n = self.rq.queues();
        // Relaxed: only a hint for the target queue.
        let q = (self.next.load(Ordering::Relaxed) % n) as QueueId;
        for c in 0..n {
            if Some(c) == avoid || !self.rq.is_alive(c) {
                continue;
            }
            match spawn_one(&self.rq, &self.ledger, &self.next, c, q) {
                Ok(ok) => return ok,
                Err(RunqError::SpawnerFenced { .. }) => continue,
                Err(_) => return false,
            }
        }
        false
    }

    /// Waits until every acknowledged task is finished or `quiet` passes
    /// without progress.
    fn settle(&self, quiet: Duration, limit: Duration) {
        let start = Instant::now();
        let mut last = (0, Instant::now());
        loop {
            let r = self.ledger.report();
            if r.completed + r.killed >= r.tasks || start.elapsed() > limit {
                return;
            }
            if r.completed != last.0 {
                last = (r.completed, Instant::now());
            } else if last.1.elapsed() > quiet {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Every queue owned by a live core and backed up by live cores.
    fn settled(&self) -> bool {
        let n = self.rq.queues();
        let live = (0..n).filter(|&c| self.rq.is_alive(c)).count();
        let k = self.rq.config().backups.min(live.saturating_sub(1));
        (0..n).all(|q| {
            let owner = self.rq.lease(q as QueueId).map(|l| l.owner as usize);
            let backups = self.rq.backups_of(q as QueueId).unwrap_or_default();
            owner.is_ok_and(|o| self.rq.is_alive(o))
                && backups.len() >= k
                && backups.iter().all(|&b| self.rq.is_alive(b))
        })
    }

    fn shutdown(self) -> (RunQueues, Arc<Ledger>) {
        // Release: pairs with the workers' Acquire load.
        self.stop.store(true, Ordering::Release);
        self.rq.faults().release_crashed();
        for t in self.threads {
            let _ = t.join();
        }
        (self.rq, self.ledger)
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The kinds of fault the demo injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Crash(FaultPoint),
    Freeze,
    Slow,
    Double,
    SpawnCrash(FaultPoint),
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Crash(_) => "crash",
            Kind::Freeze => "freeze",
            Kind::Slow => "slow",
            Kind::Double => "double",
            Kind::SpawnCrash(_) => "spawn-crash",
        }
    }
}

/// One fault that fired: what, on which cores, when (scheduler clock, ns).
struct Fired {
    kind: Kind,
    cores: Vec<usize>,
    at: u64,
}

/// Injects `kind` into a live core (the first live one from `hint`), waits
/// until it fired and its failure was taken over; `None` if it did not.
fn inject(c: &Cluster, kind: Kind, hint: usize, notes: &mut Vec<(u64, String)>) -> Option<Fired> {
    let n = c.rq.queues();
    let live = |x: usize| c.rq.is_alive(x) && !c.rq.faults().has_crashed(x);
    let core = (0..n).map(|k| (hint + k) % n).find(|&x| live(x))?;
    let mut cores = vec![core];
    let mut at = c.rq.now();
    match kind {
        Kind::Crash(point) => {
            c.rq.faults().arm(core, point, 1, FaultAction::Crash);
            notes.push((at, format!("armed: core {core} crashes at {point:?}")));
        }
        Kind::SpawnCrash(point) => {
            // Fires in the core's own thread, when one of its tasks spawns.
            c.rq.faults().arm(core, point, 1, FaultAction::Crash);
            notes.push((
                at,
                format!("armed: core {core} crashes mid-spawn at {point:?}"),
            ));
        }
        Kind::Slow => {
            // Its next lease renewal stalls for 4 leases: it runs on as a
            // zombie after that.
            let stall = c.rq.config().lease * 4;
            c.rq.faults()
                .arm(core, FaultPoint::Tick, 1, FaultAction::Stall(stall));
            notes.push((
                at,
                format!("armed: core {core} stalls {stall:?} in its next renewal"),
            ));
        }
        Kind::Double => {
            let first = *c.rq.backups_of(core as QueueId).ok()?.first()?;
            cores.push(first);
            c.rq.faults()
                .arm(core, FaultPoint::AfterCommit, 1, FaultAction::Crash);
            c.rq.faults()
                .arm(first, FaultPoint::OpStart, 1, FaultAction::Crash);
            notes.push((
                at,
                format!("armed: core {core} and its first backup, core {first}, crash together"),
            ));
        }
        Kind::Freeze => {
            // Freeze it in the middle of running a task, as a stopped core
            // would be: a freeze that lands between tasks is undone at once
            // (far shorter than the lease, harmless) and tried again.
            for attempt in 0..10 {
                let wait = Instant::now();
                // Acquire: the busy flag is only a timing hint.
                while !c.busy[core].load(Ordering::Acquire)
                    && wait.elapsed() < Duration::from_millis(20)
                {
                    std::hint::spin_loop();
                }
                at = c.rq.now();
                c.freezers[core].freeze().ok()?;
                if c.busy[core].load(Ordering::Acquire) || attempt == 9 {
                    break;
                }
                c.freezers[core].thaw().ok()?;
            }
            notes.push((
                at,
                format!("core {core} FROZEN by SIGUSR2 (parked in its signal handler)"),
            ));
            std::thread::sleep(Duration::from_millis(80));
            c.freezers[core].thaw().ok()?;
            notes.push((
                c.rq.now(),
                format!("core {core} THAWED after 80 ms: it wakes up as a zombie"),
            ));
        }
    }
    // Keep tasks flowing until every victim fired and lost its home queue.
    let start = Instant::now();
    let lost_queue = |x: usize| !c.rq.is_alive(x);
    let crashed = |x: usize| c.rq.faults().has_crashed(x);
    loop {
        let done = match kind {
            Kind::Crash(_) | Kind::SpawnCrash(_) | Kind::Double => {
                cores.iter().all(|&x| crashed(x) && lost_queue(x))
            }
            Kind::Freeze => lost_queue(core),
            Kind::Slow => {
                c.rq.faults()
                    .last_fired(core)
                    .is_some_and(|(p, _)| p == FaultPoint::Tick)
                    && lost_queue(core)
            }
        };
        if done {
            break;
        }
        if start.elapsed() > Duration::from_secs(2) {
            for &x in &cores {
                c.rq.faults().disarm(x);
            }
            notes.push((
                c.rq.now(),
                format!(
                    "{} on core(s) {cores:?} did NOT fire: retrying with a fresh plan",
                    kind.name()
                ),
            ));
            return None;
        }
        for _ in 0..4 {
            c.spawn(Some(core));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if kind != Kind::Freeze {
        at = cores
            .iter()
            .filter_map(|&x| c.rq.faults().last_fired(x).map(|f| f.1))
            .min()
            .unwrap_or(at);
    }
    Some(Fired { kind, cores, at })
}

/// What one round found.
#[derive(Default)]
struct RoundResult {
    tasks: u64,
    completed: u64,
    lost: u64,
    duplicated: u64,
    resurrected: u64,
    owners_bad: Vec<String>,
    stranded: usize,
    fenced_ops: u64,
    takeovers: u64,
    reclaimed: u64,
    spawn_crashes: u64,
    /// Per fired fault: (kind, ms from the failure to the takeover of each
    /// victim's queue).
    takeover_after_failure: Vec<(Kind, f64)>,
}

/// Runs one round on a fresh scheduler. Faults that could not be placed
/// (too few live cores left, e.g. after a spurious lease expiry on a loaded
/// machine) or did not fire are returned in `unfired`, for a fresh plan.
fn round(
    o: &Opts,
    r: usize,
    plan: &[Kind],
    fired_by_kind: &mut BTreeMap<&'static str, u64>,
    unfired: &mut Vec<Kind>,
) -> RoundResult {
    let topo = Topology::simulated(2, 4).expect("topology");
    let rq = RunQueues::builder()
        .topology(&topo)
        .replication(Replication::Sync)
        .backups(o.backups)
        .lease(Duration::from_millis(20))
        .skew_margin(Duration::from_millis(5))
        .build()
        .expect("run queues");
    let c = start(&topo, rq, o.tasks * 2, o.work_us, true);
    let t0 = c.rq.now();
    let mut notes: Vec<(u64, String)> = Vec::new();
    let mut fired: Vec<Fired> = Vec::new();
    let per_fault = o.tasks / (plan.len() + 1);
    let mut spawned = 0usize;
    let spawn_batch = |k: usize, spawned: &mut usize| {
        for _ in 0..k {
            if *spawned < o.tasks && c.spawn(None) {
                *spawned += 1;
            }
        }
    };
    for (i, &kind) in plan.iter().enumerate() {
        // Some work first, at 8 tasks a millisecond.
        let mut sent = 0;
        while sent < per_fault {
            spawn_batch(8, &mut spawned);
            sent += 8;
            std::thread::sleep(Duration::from_millis(1));
        }
        // A fault goes only into a settled system (every failure so far
        // recovered and re-backed-up) with enough live cores that every
        // queue keeps k backups after it.
        let victims = if kind == Kind::Double { 2 } else { 1 };
        let mut got = None;
        for attempt in 0..2 {
            let settle = Instant::now();
            while !c.settled() && settle.elapsed() < Duration::from_secs(1) {
                spawn_batch(2, &mut spawned);
                std::thread::sleep(Duration::from_millis(1));
            }
            let live = (0..c.rq.queues()).filter(|&x| c.rq.is_alive(x)).count();
            if !c.settled() || live < victims + o.backups + 1 {
                break;
            }
            if let Some(f) = inject(&c, kind, 1 + 3 * i + attempt, &mut notes) {
                got = Some(f);
                break;
            }
        }
        match got {
            Some(f) => {
                *fired_by_kind.entry(kind.name()).or_default() += 1;
                fired.push(f);
            }
            None => {
                notes.push((
                    c.rq.now(),
                    format!(
                        "{} could not be placed or did not fire: planned again on a fresh scheduler",
                        kind.name()
                    ),
                ));
                unfired.push(kind);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The rest of the tasks (bounded: a scheduler that lost a queue for good
    // may stop accepting spawns, e.g. a full table).
    let mut idle = 0;
    while spawned < o.tasks && idle < 500 {
        let before = spawned;
        spawn_batch(16, &mut spawned);
        idle = if spawned == before { idle + 1 } else { 0 };
        std::thread::sleep(Duration::from_millis(1));
    }
    if spawned < o.tasks {
        notes.push((
            c.rq.now(),
            format!("spawns refused after {spawned} of {} tasks", o.tasks),
        ));
    }
    c.settle(Duration::from_millis(500), Duration::from_secs(8));
    let spawn_crashes = fired
        .iter()
        .filter(|f| matches!(f.kind, Kind::SpawnCrash(_)))
        .count() as u64;
    // Give the last takeovers' scans time to reclaim spawn slots.
    let wait = Instant::now();
    while c.rq.reclaimed_spawns() < spawn_crashes && wait.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let (rq, ledger) = c.shutdown();
    let events = rq.take_events();
    let mut lines: Vec<(u64, String)> = notes;
    for f in &fired {
        for &x in &f.cores {
            if let Some((point, at)) = rq.faults().last_fired(x) {
                lines.push((
                    at,
                    format!(
                        "core {x} {} at fault point {point:?}",
                        if f.kind == Kind::Slow {
                            "STALLS"
                        } else {
                            "CRASHED"
                        }
                    ),
                ));
            }
        }
    }
    let mut res = RoundResult::default();
    let mut refused: BTreeMap<(usize, QueueId), (u64, u32, usize)> = BTreeMap::new();
    for e in &events {
        match &e.kind {
            EventKind::LeaseExpired { queue, owner, epoch, silent_ns } => lines.push((
                e.at_ns,
                format!("lease of queue {queue} (owner core {owner}, epoch {epoch}) expired: no renewal for {:.1} ms", ms(*silent_ns)),
            )),
            EventKind::TakeOver(t) => {
                // The failure this takeover recovers: the first fired fault
                // whose victims include the old owner, before it.
                if let Some(f) = fired.iter().find(|f| f.cores.contains(&t.from) && f.at <= e.at_ns) {
                    res.takeover_after_failure.push((f.kind, ms(e.at_ns - f.at)));
                }
                lines.push((
                    e.at_ns,
                    format!(
                        "core {} TOOK OVER queue {} from core {}: epoch {} -> {}, adopted {} tasks ({} were running, {} from the table scan); {:.1} ms after the last renewal",
                        t.by, t.queue, t.from, t.epoch - 1, t.epoch, t.adopted, t.requeued_running, t.from_scan, ms(t.takeover_ns)
                    ),
                ))
            }
            EventKind::Rebackup { queue, owner, backups, epoch, snapshot } => lines.push((
                e.at_ns,
                format!("queue {queue} (owner core {owner}) re-backed-up on cores {backups:?} in epoch {epoch} (snapshot of {snapshot} tasks)"),
            )),
            EventKind::SpawnReclaimed { task, spawner } => lines.push((
                e.at_ns,
                format!("slot of {task}, spawned by dead core {spawner}, RECLAIMED"),
            )),
            EventKind::Fenced { queue, core, epoch, .. } => {
                let ent = refused.entry((*core, *queue)).or_insert((e.at_ns, *epoch, 0));
                ent.2 += 1;
            }
        }
    }
    for ((core, queue), (at, epoch, n)) in &refused {
        lines.push((
            *at,
            format!("zombie core {core}: {n} operation(s) on queue {queue} with old epoch {epoch} REFUSED"),
        ));
    }
    lines.sort_by_key(|l| l.0);
    println!(
        "\nround {r}: faults {:?}",
        plan.iter().map(|k| k.name()).collect::<Vec<_>>()
    );
    for (at, text) in &lines {
        println!("  {:>8.1}  {text}", ms(at.saturating_sub(t0)));
    }
    let rep = ledger.report();
    res.tasks = rep.tasks;
    res.completed = rep.completed;
    res.lost = rep.lost;
    res.duplicated = rep.duplicated;
    res.resurrected = rep.resurrected + rep.unknown;
    res.owners_bad = check_owners(&events);
    res.stranded = rq
        .live_tasks()
        .into_iter()
        .filter(|(_, s)| s.phase != TaskPhase::Blocked)
        .count();
    res.fenced_ops = rq.fenced_ops();
    res.takeovers = rq.takeovers();
    res.reclaimed = rq.reclaimed_spawns();
    res.spawn_crashes = spawn_crashes;
    res
}

fn demo(o: &Opts) -> ExitCode {
    let plans: Vec<Vec<Kind>> = if o.double_only {
        (0..o.rounds)
            .map(|_| vec![Kind::Double, Kind::Double])
            .collect()
    } else {
        let all = [
            vec![
                Kind::Crash(FaultPoint::AfterIntent),
                Kind::Freeze,
                Kind::Double,
            ],
            vec![
                Kind::Crash(FaultPoint::AfterCommit),
                Kind::Slow,
                Kind::SpawnCrash(FaultPoint::SpawnAllocated),
            ],
            vec![
                Kind::Crash(FaultPoint::OpStart),
                Kind::SpawnCrash(FaultPoint::SpawnDelivered),
                Kind::Crash(FaultPoint::Tick),
            ],
        ];
        (0..o.rounds).map(|r| all[r % all.len()].clone()).collect()
    };
    if o.backups < 2 && plans.iter().flatten().any(|k| *k == Kind::Double) {
        println!(
            "note: --backups {} cannot survive a double fault: expect lost tasks",
            o.backups
        );
    }
    println!(
        "scheduler_failover: {} rounds on 2 simulated nodes of 4 cores, {} tasks of {} us per round (tasks spawn children too)",
        plans.len(),
        o.tasks,
        o.work_us
    );
    println!(
        "  synchronous replication to k = {} backups (fan-out), lease 20 ms + skew margin 5 ms",
        o.backups
    );
    let wall = Instant::now();
    let mut planned: BTreeMap<&'static str, u64> = BTreeMap::new();
    for k in plans.iter().flatten() {
        *planned.entry(k.name()).or_default() += 1;
    }
    let mut fired: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut all = RoundResult::default();
    let mut bad: Vec<String> = Vec::new();
    let mut queue: std::collections::VecDeque<Vec<Kind>> = plans.into_iter().collect();
    let mut r = 0;
    let mut replans = 0;
    while let Some(plan) = queue.pop_front() {
        let mut unfired = Vec::new();
        r += 1;
        let res = round(o, r, &plan, &mut fired, &mut unfired);
        if !unfired.is_empty() && replans < 4 {
            replans += 1;
            queue.push_back(unfired);
        }
        all.tasks += res.tasks;
        all.completed += res.completed;
        all.lost += res.lost;
        all.duplicated += res.duplicated;
        all.resurrected += res.resurrected;
        all.stranded += res.stranded;
        all.fenced_ops += res.fenced_ops;
        all.takeovers += res.takeovers;
        all.reclaimed += res.reclaimed;
        all.spawn_crashes += res.spawn_crashes;
        all.takeover_after_failure
            .extend(res.takeover_after_failure);
        bad.extend(res.owners_bad.iter().map(|b| format!("round {r}: {b}")));
        if res.completed != res.tasks {
            bad.push(format!(
                "round {r}: {} of {} tasks completed",
                res.completed, res.tasks
            ));
        }
    }
    let elapsed = wall.elapsed();
    let p: u64 = planned.values().sum();
    let f: u64 = fired.values().sum();
    let per_kind: Vec<String> = planned
        .iter()
        .map(|(k, p)| format!("{k} {}/{p}", fired.get(k).copied().unwrap_or(0)))
        .collect();
    let limit_ms = 20.0 + 5.0 + 5.0;
    let worst = all
        .takeover_after_failure
        .iter()
        .map(|x| x.1)
        .fold(0.0f64, f64::max);
    let worst_double = all
        .takeover_after_failure
        .iter()
        .filter(|x| x.0 == Kind::Double)
        .map(|x| x.1)
        .fold(0.0f64, f64::max);
    println!("\nchecks:");
    println!(
        "  at most one owner per (queue, epoch): {}",
        if bad.is_empty() {
            "ok".to_string()
        } else {
            bad.join("; ")
        }
    );
    println!("  task words left in flight: {}", all.stranded);
    println!(
        "  spawn slots reclaimed from dead spawners: {} (spawn crashes fired: {})",
        all.reclaimed, all.spawn_crashes
    );
    println!(
        "  takeover after the failure: max {worst:.1} ms, double faults max {worst_double:.1} ms (target: lease + margin + 5 ms = {limit_ms:.0} ms)"
    );
    println!(
        "  wall time {:.2} s; {r} rounds ({replans} re-planned); {} takeovers",
        elapsed.as_secs_f64(),
        all.takeovers
    );
    println!(
        "tasks={} completed={} lost={} duplicated={} resurrected={} fenced_ops={} faults planned={p} fired={f} ({})",
        all.tasks,
        all.completed,
        all.lost,
        all.duplicated,
        all.resurrected,
        all.fenced_ops,
        per_kind.join(", ")
    );
    let mut why = Vec::new();
    if p != f {
        why.push(format!("{} planned fault(s) did not fire", p - f));
    }
    if all.lost + all.duplicated + all.resurrected > 0 {
        why.push("tasks lost, duplicated or resurrected".to_string());
    }
    if !bad.is_empty() {
        why.push("ownership or completion check failed".to_string());
    }
    if all.stranded > 0 {
        why.push("task words left in flight".to_string());
    }
    if all.reclaimed < all.spawn_crashes {
        why.push("a dead spawner's slot leaked".to_string());
    }
    if why.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("FAILED: {}", why.join("; "));
        ExitCode::FAILURE
    }
}

/// One measurement of a replication mode.
struct Measured {
    lost_ops: Vec<u64>,
    lost_tasks: Vec<u64>,
    violations: u64,
    trial_lambda: Vec<f64>,
    trial_lag_ms: Vec<f64>,
    estimate: Vec<f64>,
}

/// 3 cores so that k = 2 has two backups; the same for every mode.
fn compare_topology() -> Topology {
    Topology::simulated(1, 3).expect("topology")
}

/// Operations per second of a burst of zero-work tasks, no failure (a long
/// lease: a starved thread must not cause a failover here).
fn throughput(mode: Replication, k: usize, n: usize) -> (f64, u64) {
    let topo = compare_topology();
    let rq = RunQueues::builder()
        .topology(&topo)
        .replication(mode)
        .backups(k)
        .lease(Duration::from_secs(1))
        .task_capacity(1 << 18)
        .build()
        .expect("run queues");
    let c = start(&topo, rq, n, 0, false);
    let t = Instant::now();
    for _ in 0..n {
        c.spawn(None);
    }
    c.settle(Duration::from_millis(300), Duration::from_secs(10));
    let secs = t.elapsed().as_secs_f64();
    let (_rq, ledger) = c.shutdown();
    let r = ledger.report();
    // accept + pick + complete per task
    (3.0 * r.completed as f64 / secs, r.violations() + r.lost)
}

fn measure(mode: Replication, k: usize, o: &Opts) -> Measured {
    let topo = compare_topology();
    let build = || {
        RunQueues::builder()
            .topology(&topo)
            .replication(mode)
            .backups(k)
            .lease(Duration::from_millis(10))
            .skew_margin(Duration::from_millis(3))
            .build()
            .expect("run queues")
    };
    let mut m = Measured {
        lost_ops: Vec::new(),
        lost_tasks: Vec::new(),
        violations: 0,
        trial_lambda: Vec::new(),
        trial_lag_ms: Vec::new(),
        estimate: Vec::new(),
    };
    // Loss per failure: crash core 1 at a random moment of a steady stream.
    let mut rng = rand::rng();
    let trials = if mode == Replication::None {
        0
    } else {
        o.trials
    };
    for _ in 0..trials {
        let per = 6_000;
        let c = start(&topo, build(), per, 0, false);
        let crash_at = rand::Rng::random_range(&mut rng, per / 4..per / 2);
        let mut spawned = 0;
        let takeovers = c.rq.takeovers();
        let mut window: Option<(Instant, noderep::runq::ReplicationStats)> = None;
        let mut armed = false;
        while spawned < per {
            for _ in 0..20 {
                if spawned < per && c.spawn(Some(1)) {
                    spawned += 1;
                }
            }
            if !armed && window.is_none() && spawned >= per / 8 {
                window = Some((Instant::now(), c.rq.queue_stats(1).expect("queue 1")));
            }
            if !armed && spawned >= crash_at {
                armed = true;
                if let Some((t0, a)) = window.take() {
                    let b = c.rq.queue_stats(1).expect("queue 1");
                    let secs = t0.elapsed().as_secs_f64();
                    // Saturating: a spurious takeover resets the counters.
                    let lambda = b.acked.saturating_sub(a.acked) as f64 / secs;
                    let lag_s = if b.shipped > a.shipped && b.lag_ns >= a.lag_ns {
                        (b.lag_ns - a.lag_ns) as f64 / (b.shipped - a.shipped) as f64 / 1e9
                    } else {
                        0.0
                    };
                    m.trial_lambda.push(lambda);
                    m.trial_lag_ms.push(lag_s * 1e3);
                    m.estimate.push(lambda * lag_s);
                }
                c.rq.faults()
                    .arm(1, FaultPoint::OpStart, 1, FaultAction::Crash);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let t = Instant::now();
        while c.rq.takeovers() == takeovers && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(1));
        }
        c.settle(Duration::from_millis(100), Duration::from_secs(3));
        let (rq, ledger) = c.shutdown();
        for e in rq.take_events() {
            if let EventKind::TakeOver(r) = &e.kind {
                m.lost_ops.push(r.lost_ops);
            }
        }
        let r = ledger.report();
        m.lost_tasks.push(r.lost);
        m.violations += r.violations();
    }
    m
}

fn mean(v: &[u64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<u64>() as f64 / v.len() as f64
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn compare(o: &Opts) -> ExitCode {
    println!(
        "replication modes on 3 simulated cores (zero-work tasks; 3 queue operations per task)"
    );
    println!(
        "ops/s: median of {} rounds of a 200k-task burst, no failure, the modes alternating within each round;",
        o.rounds.max(5)
    );
    println!("vs unrep: median of the per-round ratios (paired, robust to load between rounds).");
    println!(
        "λ, L: the crashed queue's write rate and mean replication lag in the steady stream just"
    );
    println!(
        "before each crash; lost: measured at the takeover ({} crashes per mode).",
        o.trials
    );
    let modes = [
        ("unreplicated", Replication::None, 1),
        ("sync, k = 1", Replication::Sync, 1),
        ("sync, k = 2", Replication::Sync, 2),
        (
            "async (batch 64, max lag 2 ms), k = 1",
            Replication::Async {
                batch: 64,
                max_lag: Duration::from_millis(2),
            },
            1,
        ),
    ];
    let mut bad = 0;
    let rounds = o.rounds.max(5);
    let mut ops: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for _ in 0..rounds {
        let mut base = 0.0;
        for (i, &(_, mode, k)) in modes.iter().enumerate() {
            let (x, v) = throughput(mode, k, 200_000);
            bad += v;
            if i == 0 {
                base = x;
            }
            ops[i].push(x);
            ratios[i].push(x / base);
        }
    }
    println!(
        "{:<38} {:>11} {:>8} {:>15} | {:>10} {:>8} {:>8} {:>13} {:>15}",
        "mode",
        "ops/s",
        "vs unrep",
        "(min..max)",
        "λ ops/s",
        "L ms",
        "λ·L",
        "lost ops/fail",
        "lost tasks/fail"
    );
    for (i, &(name, mode, k)) in modes.iter().enumerate() {
        let m = measure(mode, k, o);
        bad += m.violations;
        if mode == Replication::Sync {
            bad += m.lost_tasks.iter().sum::<u64>() + m.lost_ops.iter().sum::<u64>();
        }
        let avg = |v: &[f64]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let lo = ratios[i].iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios[i].iter().copied().fold(0.0, f64::max);
        println!(
            "{:<38} {:>11.0} {:>7.2}x {:>15} | {:>10.0} {:>8.3} {:>8.1} {:>13.1} {:>15.1}",
            name,
            median(&mut ops[i]),
            median(&mut ratios[i]),
            format!("({lo:.2}..{hi:.2})"),
            avg(&m.trial_lambda),
            avg(&m.trial_lag_ms),
            avg(&m.estimate),
            mean(&m.lost_ops),
            mean(&m.lost_tasks)
        );
    }
    println!("(unreplicated: a failure loses the whole queue; its loss is not measured)");
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("INVARIANT BROKEN: {bad} violations or synchronous losses");
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if o.compare {
        compare(&o)
    } else {
        demo(&o)
    }
}
