//! Scheduler failover demo: per-core run queues replicated on a neighbour.
//!
//! Runs one worker thread per simulated core (4 by default, 2 nodes of 2, on
//! however many real CPUs there are), streams tasks at them, crashes one core
//! at a fault point inside an operation and freezes another with a real
//! signal, then prints a timeline (lease expiry, takeover, epoch, tasks
//! adopted, zombie operations refused) and a summary line. Exits non-zero if
//! any invariant breaks.
//!
//! ```text
//! cargo run --release --example scheduler_failover              # the demo
//! cargo run --release --example scheduler_failover -- --tasks 50000
//! cargo run --release --example scheduler_failover -- --compare # sync vs async
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use noderep::runq::check::{check_owners, Ledger};
use noderep::runq::fault::{catch_crash, FaultAction, Freezer};
use noderep::runq::fault_points::FaultPoint;
use noderep::runq::{
    Config, CoreWorker, EventKind, Exit, Phase, QueueId, Replication, RunQueues, Step,
};
use noderep::topology::{pin_to_cpu, Topology};

struct Opts {
    tasks: usize,
    work_us: u64,
    compare: bool,
    trials: usize,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        tasks: 20_000,
        work_us: 20,
        compare: false,
        trials: 12,
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
            "--trials" => o.trials = num("--trials")? as usize,
            "--compare" => o.compare = true,
            "-h" | "--help" => {
                return Err(
                    "usage: scheduler_failover [--tasks N] [--work-us US] [--compare [--trials N]]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if o.tasks == 0 || o.tasks > 1_000_000 {
        return Err("--tasks must be in 1..=1000000".into());
    }
    Ok(o)
}

fn spin(us: u64) {
    let end = Instant::now() + Duration::from_micros(us);
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

/// A worker thread: one simulated core.
struct Cluster {
    rq: RunQueues,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    freezers: Vec<Freezer>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Per core: true while it runs a task (so the demo can freeze it mid-task).
    busy: Arc<Vec<AtomicBool>>,
}

fn start(topo: &Topology, cfg: Config, max_tasks: usize, work_us: u64) -> Cluster {
    let rq = RunQueues::new(topo, cfg).expect("run queues");
    let ledger = Arc::new(Ledger::new(rq.config().task_capacity, max_tasks));
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
            let (rq, ledger, stop, tx, barrier, busy) = (
                rq.clone(),
                ledger.clone(),
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
                barrier.wait();
                let _ = catch_crash(|| {
                    // Acquire: pairs with the Release store in `shutdown`.
                    while !stop.load(Ordering::Acquire) {
                        match w.step(rq.now()).expect("step") {
                            Step::Run { queue, task } => {
                                ledger.started(task);
                                // Release/Acquire: a hint for the demo's freeze timing only.
                                busy[id].store(true, Ordering::Release);
                                spin(work_us);
                                busy[id].store(false, Ordering::Release);
                                let _ =
                                    w.finish(queue, task, Exit::Done, || ledger.committed(task));
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
        stop,
        freezers: f.into_iter().map(|x| x.1).collect(),
        threads,
        busy,
    }
}

impl Cluster {
    fn spawn(&self, n: usize) -> bool {
        let q = (n % self.rq.queues()) as QueueId;
        match self
            .rq
            .spawner()
            .spawn_with(q, |t| self.ledger.register(n, t))
        {
            Ok(_) => {
                self.ledger.acked(n);
                true
            }
            Err(_) => false,
        }
    }

    /// Waits until every acknowledged task is finished or `quiet` passes
    /// without progress.
    fn settle(&self, spawned: usize, quiet: Duration, limit: Duration) {
        let start = Instant::now();
        let mut last = (0, Instant::now());
        loop {
            let r = self.ledger.report();
            if r.completed + r.killed >= spawned as u64 || start.elapsed() > limit {
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

/// Refused zombie operations of one (core, queue): first time, old epoch,
/// count, operation names.
type Refused = (u64, u32, usize, Vec<&'static str>);

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn demo(o: &Opts) -> ExitCode {
    let topo = Topology::simulated(2, 2).expect("topology");
    let cfg = Config {
        replication: Replication::Sync,
        lease: Duration::from_millis(20),
        skew_margin: Duration::from_millis(5),
        ..Config::default()
    };
    let lease_ms = cfg.lease.as_secs_f64() * 1e3;
    let margin_ms = cfg.skew_margin.as_secs_f64() * 1e3;
    println!("scheduler_failover: {topo}");
    println!(
        "  {} tasks of {} us, synchronous replication, lease {lease_ms} ms + skew margin {margin_ms} ms",
        o.tasks, o.work_us
    );
    println!("  backups: ring order within a node, then across nodes");
    let c = start(&topo, cfg, o.tasks, o.work_us);
    let t0 = c.rq.now();
    let mut notes: Vec<(u64, String)> = Vec::new();
    let (crash_core, freeze_core) = (1usize, 3usize);
    let wall = Instant::now();
    let mut spawned = 0;
    let mut crash_armed = false;
    let mut froze = false;
    let mut freeze_at = 0;
    let rate_per_ms = 8usize;
    while spawned < o.tasks {
        for _ in 0..rate_per_ms {
            if spawned < o.tasks && c.spawn(spawned) {
                spawned += 1;
            }
        }
        if !crash_armed && spawned >= o.tasks / 4 {
            c.rq.faults()
                .arm(crash_core, FaultPoint::AfterCommit, 1, FaultAction::Crash);
            notes.push((
                c.rq.now(),
                format!("armed: core {crash_core} crashes after its next commit"),
            ));
            crash_armed = true;
        }
        if !froze && spawned >= o.tasks / 2 {
            // Freeze it in the middle of running a task, as a stopped core would
            // be: a freeze that lands between tasks is undone at once (a stall
            // far shorter than the lease, harmless) and tried again.
            let mut at = c.rq.now();
            const ATTEMPTS: usize = 40;
            for attempt in 0..ATTEMPTS {
                let wait = Instant::now();
                let mut last_spawn = wait;
                // Acquire: the busy flag is only a timing hint.
                while !c.busy[freeze_core].load(Ordering::Acquire)
                    && wait.elapsed() < Duration::from_millis(20)
                {
                    if last_spawn.elapsed() > Duration::from_micros(50)
                        && spawned < o.tasks
                        && c.spawn(spawned)
                    {
                        spawned += 1;
                        last_spawn = Instant::now();
                    }
                    std::hint::spin_loop();
                }
                at = c.rq.now();
                c.freezers[freeze_core].freeze().expect("freeze");
                if c.busy[freeze_core].load(Ordering::Acquire) || attempt + 1 == ATTEMPTS {
                    break;
                }
                c.freezers[freeze_core].thaw().expect("thaw");
            }
            freeze_at = at;
            notes.push((
                at,
                format!("core {freeze_core} FROZEN by SIGUSR2 (parked in its signal handler)"),
            ));
            std::thread::sleep(Duration::from_millis(80));
            c.freezers[freeze_core].thaw().expect("thaw");
            notes.push((
                c.rq.now(),
                format!("core {freeze_core} THAWED after 80 ms: it wakes up as a zombie"),
            ));
            froze = true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    c.settle(spawned, Duration::from_millis(500), Duration::from_secs(8));
    let elapsed = wall.elapsed();
    let crashed_at = (0..topo.num_cores())
        .filter(|&k| c.rq.faults().has_crashed(k))
        .collect::<Vec<_>>();
    let (rq, ledger) = c.shutdown();
    let events = rq.take_events();
    // Timeline.
    let mut lines: Vec<(u64, String)> = notes;
    let mut failed_at = BTreeMap::new();
    for &k in &crashed_at {
        if let Some((point, at)) = rq.faults().last_fired(k) {
            failed_at.insert(k, at);
            lines.push((at, format!("core {k} CRASHED at fault point {point:?} (inside an operation; its thread stops there)")));
        }
    }
    failed_at.insert(freeze_core, freeze_at);
    let mut refused: BTreeMap<(usize, QueueId), Refused> = BTreeMap::new();
    let mut takeover_ms = Vec::new();
    for e in &events {
        match &e.kind {
            EventKind::LeaseExpired {
                queue,
                owner,
                epoch,
                silent_ns,
            } => lines.push((
                e.at_ns,
                format!(
                    "lease of queue {queue} (owner core {owner}, epoch {epoch}) expired: no renewal for {:.1} ms",
                    ms(*silent_ns)
                ),
            )),
            EventKind::TakeOver(r) => {
                takeover_ms.push(ms(r.takeover_ns));
                let since_failure = failed_at
                    .get(&r.from)
                    .map(|&f| format!(", {:.1} ms after the failure", ms(e.at_ns.saturating_sub(f))))
                    .unwrap_or_default();
                lines.push((
                    e.at_ns,
                    format!(
                        "core {} TOOK OVER queue {} from core {}: epoch {} -> {}, adopted {} tasks ({} were running, {} in transit/mid-op), replica had {} records; {:.1} ms after the last renewal{since_failure}",
                        r.by, r.queue, r.from, r.epoch - 1, r.epoch, r.adopted, r.requeued_running, r.from_scan, r.replica_records, ms(r.takeover_ns)
                    ),
                ))
            }
            EventKind::Rebackup {
                queue,
                owner,
                backup,
                epoch,
                snapshot,
            } => lines.push((
                e.at_ns,
                format!("queue {queue} (owner core {owner}) re-backed-up on core {backup} in epoch {epoch} (snapshot of {snapshot} tasks)"),
            )),
            EventKind::Fenced { queue, core, epoch, op } => {
                let ent = refused.entry((*core, *queue)).or_insert((e.at_ns, *epoch, 0, Vec::new()));
                ent.2 += 1;
                if !ent.3.contains(op) {
                    ent.3.push(op);
                }
            }
        }
    }
    for ((core, queue), (at, epoch, n, ops)) in &refused {
        let now_epoch = rq.lease(*queue).map(|l| l.epoch).unwrap_or(0);
        lines.push((
            *at,
            format!(
                "zombie core {core}: {n} operation(s) on queue {queue} with old epoch {epoch} REFUSED (queue now in epoch {now_epoch}; ops: {})",
                ops.join(", ")
            ),
        ));
    }
    lines.sort_by_key(|l| l.0);
    println!("\ntimeline (ms since start):");
    for (at, text) in &lines {
        println!("  {:>8.1}  {text}", ms(at.saturating_sub(t0)));
    }
    // Invariants.
    let rep = ledger.report();
    let owners = check_owners(&events);
    let stranded = rq
        .live_tasks()
        .into_iter()
        .filter(|(_, s)| s.phase != Phase::Blocked)
        .count();
    println!("\nchecks:");
    println!(
        "  crashed cores: {crashed_at:?}; takeovers: {}; faults fired: {}",
        rq.takeovers(),
        rq.faults().fired()
    );
    println!(
        "  at most one owner per (queue, epoch): {}",
        if owners.is_empty() {
            "ok".to_string()
        } else {
            owners.join("; ")
        }
    );
    println!("  task words left in flight: {stranded}");
    println!(
        "  runs re-executed after a takeover (fenced or interrupted): {}",
        rep.aborted_runs
    );
    println!(
        "  throughput: {:.0} tasks/s over {:.2} s (wall, including failures)",
        rep.completed as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    let tk: Vec<String> = takeover_ms.iter().map(|t| format!("{t:.1}")).collect();
    println!(
        "tasks={} completed={} lost={} duplicated={} resurrected={} fenced_ops={} takeover_ms={}",
        rep.tasks,
        rep.completed,
        rep.lost,
        rep.duplicated,
        rep.resurrected,
        rq.fenced_ops(),
        if tk.is_empty() {
            "none".into()
        } else {
            tk.join(",")
        }
    );
    let ok = rep.lost == 0
        && rep.violations() == 0
        && owners.is_empty()
        && stranded == 0
        && rep.completed == rep.tasks
        && rq.takeovers() >= 2;
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("INVARIANT BROKEN (or a failure was not injected): see the checks above");
        ExitCode::FAILURE
    }
}

/// One measurement of a replication mode.
struct Measured {
    ops_per_s: f64,
    lost_ops: Vec<u64>,
    lost_tasks: Vec<u64>,
    violations: u64,
    trial_lambda: Vec<f64>,
    trial_lag_ms: Vec<f64>,
    estimate: Vec<f64>,
}

fn measure(mode: Replication, o: &Opts) -> Measured {
    let topo = Topology::simulated(1, 2).expect("topology");
    let cfg = Config {
        replication: mode,
        lease: Duration::from_millis(10),
        skew_margin: Duration::from_millis(3),
        ..Config::default()
    };
    // Throughput: a burst of zero-work tasks, no failure.
    let n = 40_000;
    let c = start(&topo, cfg.clone(), n, 0);
    let t = Instant::now();
    for i in 0..n {
        c.spawn(i);
    }
    c.settle(n, Duration::from_millis(300), Duration::from_secs(10));
    let secs = t.elapsed().as_secs_f64();
    let (_rq, ledger) = c.shutdown();
    let done = ledger.report().completed as f64;
    let ops_per_s = 3.0 * done / secs; // accept + pick + complete per task
    let mut m = Measured {
        ops_per_s,
        lost_ops: Vec::new(),
        lost_tasks: Vec::new(),
        violations: ledger.report().violations(),
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
        let c = start(&topo, cfg.clone(), per, 0);
        let crash_at = rand::Rng::random_range(&mut rng, per / 4..per / 2);
        let mut spawned = 0;
        let takeovers = c.rq.takeovers();
        // λ and L of the crashed queue, measured in this very stream just
        // before the crash (from its acked/shipped/lag counters).
        let mut window: Option<(Instant, (u64, u64, u64))> = None;
        let mut armed = false;
        while spawned < per {
            for _ in 0..20 {
                if spawned < per && c.spawn(spawned) {
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
                    let lambda = (b.0 - a.0) as f64 / secs;
                    let lag_s = if b.1 > a.1 {
                        (b.2 - a.2) as f64 / (b.1 - a.1) as f64 / 1e9
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
        c.settle(per, Duration::from_millis(100), Duration::from_secs(3));
        let (rq, ledger) = c.shutdown();
        let events = rq.take_events();
        for e in &events {
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

fn compare(o: &Opts) -> ExitCode {
    println!(
        "replication modes on 2 simulated cores (zero-work tasks; 3 queue operations per task)"
    );
    println!("ops/s: a 40k-task burst, no failure. λ, L: the crashed queue's write rate and mean");
    println!("replication lag in the steady stream just before each crash; lost: measured at the takeover.");
    let modes = [
        ("unreplicated", Replication::None),
        ("sync", Replication::Sync),
        (
            "async (batch 64, max lag 2 ms)",
            Replication::Async {
                batch: 64,
                max_lag: Duration::from_millis(2),
            },
        ),
    ];
    let mut base = 0.0;
    let mut bad = 0;
    println!(
        "{:<32} {:>11} {:>8} | {:>10} {:>8} {:>8} {:>13} {:>15}",
        "mode", "ops/s", "vs unrep", "λ ops/s", "L ms", "λ·L", "lost ops/fail", "lost tasks/fail"
    );
    for (name, mode) in modes {
        let m = measure(mode, o);
        if base == 0.0 {
            base = m.ops_per_s;
        }
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
        println!(
            "{:<32} {:>11.0} {:>7.2}x | {:>10.0} {:>8.3} {:>8.1} {:>13.1} {:>15.1}",
            name,
            m.ops_per_s,
            m.ops_per_s / base,
            avg(&m.trial_lambda),
            avg(&m.trial_lag_ms),
            avg(&m.estimate),
            mean(&m.lost_ops),
            mean(&m.lost_tasks)
        );
        if !m.lost_ops.is_empty() {
            let est: Vec<String> = m.estimate.iter().map(|e| format!("{e:.0}")).collect();
            println!(
                "    {} crashes: lost ops {:?}; λ·L per crash [{}]; violations {}",
                m.lost_ops.len(),
                m.lost_ops,
                est.join(", "),
                m.violations
            );
        }
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
