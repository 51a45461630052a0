//! Soak test: real worker threads (6 simulated cores on the machine's CPUs),
//! thousands of tasks, and several injected crashes (at named points inside
//! operations) and freezes (a real signal that parks the thread past its
//! lease). Size with `NODEREP_SOAK_TASKS` (default 3000, a few seconds in
//! debug mode).

use super::super::check::{check_owners, Ledger};
use super::super::fault::FaultPoint;
use super::super::fault::{catch_crash, FaultAction, Freezer};
use super::super::*;
use crate::sync::{Arc, AtomicBool, Ordering};
use std::time::{Duration, Instant};

const CORES: usize = 6;

fn worker(
    rq: RunQueues,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    core: usize,
    tx: std::sync::mpsc::Sender<(usize, Freezer)>,
    start: Arc<std::sync::Barrier>,
) {
    let _ = crate::topology::pin_to_cpu(core % crate::topology::online_cpus().len().max(1));
    tx.send((
        core,
        Freezer::register_current().expect("register for freezing"),
    ))
    .unwrap();
    let mut w = CoreWorker::new(&rq, core).unwrap();
    start.wait();
    let mut i = 0u64;
    let _ = catch_crash(|| {
        // Acquire: pairs with the Release store that stops the test.
        while !stop.load(Ordering::Acquire) {
            match w.step(rq.now()).unwrap() {
                Step::Run { queue, task } => {
                    ledger.started(task);
                    i += 1;
                    let exit = if i % 11 == 0 { Exit::Yield } else { Exit::Done };
                    let _ = w.finish(queue, task, exit, || {
                        if exit == Exit::Done {
                            ledger.committed(task);
                        }
                    });
                }
                Step::Idle => std::thread::sleep(Duration::from_micros(50)),
                // A fenced core stays parked (it may still be frozen).
                Step::Fenced => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });
}

fn settled(rq: &RunQueues) -> bool {
    let live = (0..CORES).filter(|&c| rq.is_alive(c)).count();
    (0..CORES).all(|q| {
        let owner = rq.lease(q as QueueId).unwrap().owner as usize;
        let backups = lock(&rq.sh.queues[q].stream).backups.clone();
        rq.is_alive(owner)
            && backups.len() >= rq.config().backups.min(live - 1)
            && backups.iter().all(|&b| b != owner && rq.is_alive(b))
    })
}

/// Spawns logical task `n` on queue `q` from a live core's spawner (a
/// spawner whose core died is fenced: try the next).
fn spawn_live(rq: &RunQueues, ledger: &Ledger, n: usize, q: QueueId) -> bool {
    for c in 0..CORES {
        if !rq.is_alive(c) {
            continue;
        }
        match rq
            .spawner(c)
            .unwrap()
            .spawn_with(q, |t| ledger.register(n, t))
        {
            Ok(_) => return true,
            Err(RunqError::SpawnerFenced { .. }) => continue,
            Err(e) => panic!("spawn: {e}"),
        }
    }
    false
}

#[test]
fn soak_thousands_of_tasks_with_crashes_and_freezes() {
    let tasks: usize = std::env::var("NODEREP_SOAK_TASKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let cfg = Config {
        backups: 2,
        // Generous: the machine may be loaded (a starved thread that misses
        // its lease is fenced, which is safe but spends the failure budget).
        lease: Duration::from_millis(100),
        skew_margin: Duration::from_millis(50),
        ..Config::default()
    };
    let rq = RunQueues::with_cores(CORES, cfg).unwrap();
    let ledger = Arc::new(Ledger::new(rq.config().task_capacity, tasks));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let barrier = Arc::new(std::sync::Barrier::new(CORES));
    let handles: Vec<_> = (0..CORES)
        .map(|c| {
            let (rq, l, s, tx, b) = (
                rq.clone(),
                ledger.clone(),
                stop.clone(),
                tx.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || worker(rq, l, s, c, tx, b))
        })
        .collect();
    let mut freezers: Vec<(usize, Freezer)> = (0..CORES).map(|_| rx.recv().unwrap()).collect();
    freezers.sort_by_key(|f| f.0);
    let freezers: Vec<Freezer> = freezers.into_iter().map(|f| f.1).collect();
    // The fault plan: a crash inside an operation, a freeze by signal, a
    // double fault (a core and its first backup crash together, survived
    // with k = 2), spaced so each failure is recovered (takeover and
    // re-backup) before the next one. Every planned fault must fire: one
    // that cannot (its crash point not reached, or the machine so loaded
    // that the system never settled) is retried with a fresh plan, and the
    // test fails if it still does not.
    #[derive(Clone, Copy, Debug)]
    enum Fault {
        Crash(FaultPoint),
        Freeze,
        Double,
    }
    let plan = [
        (1, Fault::Crash(FaultPoint::AfterCommit)),
        (3, Fault::Freeze),
        (4, Fault::Double),
    ];
    let per_phase = tasks / (plan.len() + 2);
    let mut spawned = 0;
    let mut fired: Vec<String> = Vec::new();
    let spawn_some = |k: usize, spawned: &mut usize| {
        for _ in 0..k {
            if *spawned >= tasks {
                return;
            }
            let n = *spawned;
            let q = (n % CORES) as QueueId;
            if spawn_live(&rq, &ledger, n, q) {
                ledger.acked(n);
                *spawned += 1;
            }
            if n % 64 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    for &(planned, fault) in &plan {
        spawn_some(per_phase, &mut spawned);
        let mut done = false;
        for attempt in 0..3 {
            // Inject only once the previous failure is recovered: every queue
            // owned by a live core and backed up by live cores.
            let settle = Instant::now();
            while !settled(&rq) && settle.elapsed() < Duration::from_secs(5) {
                spawn_some(2, &mut spawned);
                std::thread::sleep(Duration::from_millis(2));
            }
            if !settled(&rq) {
                eprintln!("soak: {fault:?} attempt {attempt}: the system did not settle");
                continue;
            }
            // The planned core, or the next live one (a loaded machine can
            // fence a core spuriously: safe, but that core cannot fail again).
            let Some(core) = (0..CORES)
                .map(|k| (planned + k) % CORES)
                .find(|&c| rq.is_alive(c) && !rq.faults().has_crashed(c))
            else {
                break;
            };
            let takeovers = rq.takeovers();
            let mut victims = vec![core];
            match fault {
                Fault::Crash(point) => rq.faults().arm(core, point, 3, FaultAction::Crash),
                Fault::Freeze => {
                    freezers[core].freeze().unwrap();
                    std::thread::sleep(Duration::from_millis(400)); // > 2 leases
                    freezers[core].thaw().unwrap();
                }
                Fault::Double => {
                    let first = rq.backups_of(core as QueueId).unwrap()[0];
                    victims.push(first);
                    rq.faults()
                        .arm(core, FaultPoint::AfterCommit, 1, FaultAction::Crash);
                    rq.faults()
                        .arm(first, FaultPoint::OpStart, 1, FaultAction::Crash);
                }
            }
            // Wait for the failure to be recovered (bounded).
            let start = Instant::now();
            while rq.takeovers() < takeovers + victims.len() as u64
                && start.elapsed() < Duration::from_secs(5)
            {
                // Keep work flowing so an armed crash point is reached.
                spawn_some(4, &mut spawned);
                std::thread::sleep(Duration::from_millis(2));
            }
            let crashed = victims.iter().all(|&v| rq.faults().has_crashed(v));
            if !matches!(fault, Fault::Freeze) && !crashed {
                // A crash point was not reached in time: no failure injected;
                // retry with a fresh plan.
                for &v in &victims {
                    rq.faults().disarm(v);
                }
                eprintln!("soak: {fault:?} on {victims:?} did not fire (attempt {attempt})");
                continue;
            }
            if rq.takeovers() == takeovers {
                for e in rq.take_events() {
                    if !matches!(e.kind, EventKind::Fenced { .. }) {
                        eprintln!("{e:?}");
                    }
                }
                panic!(
                    "failure of {victims:?} ({fault:?}) was never taken over (settled: {}, fired: {})",
                    settled(&rq),
                    rq.faults().fired()
                );
            }
            fired.push(format!("{fault:?} on {victims:?}"));
            done = true;
            std::thread::sleep(Duration::from_millis(30)); // re-backups settle
            break;
        }
        if !done {
            eprintln!("soak: planned fault {fault:?} never fired");
        }
    }
    spawn_some(tasks, &mut spawned);
    let start = Instant::now();
    while ledger.report().completed + ledger.report().killed < spawned as u64
        && start.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Release: pairs with the workers' Acquire load.
    stop.store(true, Ordering::Release);
    rq.faults().release_crashed();
    for h in handles {
        h.join().unwrap();
    }
    let rep = ledger.report();
    if rep.lost > 0 {
        for e in rq.take_events() {
            if !matches!(e.kind, EventKind::Fenced { .. }) {
                eprintln!("{e:?}");
            }
        }
        for q in 0..CORES {
            eprintln!(
                "q{q}: {:?} backup {:?}",
                rq.lease(q as QueueId),
                lock(&rq.sh.queues[q].stream).backups
            );
        }
        let mut phases = std::collections::BTreeMap::new();
        for (_, st) in rq.live_tasks() {
            *phases
                .entry(format!("{:?}@{}e{}", st.phase, st.place, st.epoch))
                .or_insert(0) += 1;
        }
        eprintln!(
            "live task words: {phases:?}; crashed: {:?}",
            (0..CORES)
                .map(|c| rq.faults().has_crashed(c))
                .collect::<Vec<_>>()
        );
    }
    eprintln!(
        "soak: {tasks} tasks, faults planned {} fired {} ({}), {} takeovers, {} fenced ops",
        plan.len(),
        fired.len(),
        fired.join(", "),
        rq.takeovers(),
        rq.fenced_ops()
    );
    assert_eq!(
        fired.len(),
        plan.len(),
        "planned faults that never fired (machine too loaded?): fired only {fired:?}"
    );
    assert_eq!(rep.tasks, tasks as u64);
    assert_eq!(
        (rep.lost, rep.duplicated, rep.resurrected, rep.unknown),
        (0, 0, 0, 0),
        "{rep:?}"
    );
    assert_eq!(rep.completed, tasks as u64);
    assert!(rq.fenced_ops() > 0 || rq.faults().fired() > 0);
    assert!(check_owners(&rq.take_events()).is_empty());
    let stranded: Vec<_> = rq
        .live_tasks()
        .into_iter()
        .filter(|(_, s)| s.phase != TaskPhase::Blocked)
        .collect();
    assert!(
        stranded.is_empty(),
        "task words left in flight: {stranded:?}"
    );
}
