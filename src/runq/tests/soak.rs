//! Soak test: real worker threads (6 simulated cores on the machine's CPUs),
//! thousands of tasks, and several injected crashes (at named points inside
//! operations) and freezes (a real signal that parks the thread past its
//! lease). Size with `NODEREP_SOAK_TASKS` (default 3000, a few seconds in
//! debug mode).

use super::super::check::{check_owners, Ledger};
use super::super::fault::{catch_crash, FaultAction, Freezer};
use super::super::fault_points::FaultPoint;
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
    (0..CORES).all(|q| {
        let owner = rq.lease(q as QueueId).unwrap().owner as usize;
        let backup = lock(&rq.sh.queues[q].stream).backup;
        rq.is_alive(owner) && backup.is_some_and(|b| b != owner && rq.is_alive(b))
    })
}

#[test]
fn soak_thousands_of_tasks_with_crashes_and_freezes() {
    let tasks: usize = std::env::var("NODEREP_SOAK_TASKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let cfg = Config {
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
    // The fault plan: crash, freeze, crash, freeze, spaced so each failure is
    // recovered (takeover and re-backup) before the next one.
    let plan: [(usize, Option<FaultPoint>); 4] = [
        (1, Some(FaultPoint::AfterCommit)),
        (3, None),
        (4, Some(FaultPoint::AfterIntent)),
        (0, None),
    ];
    let sp = rq.spawner();
    let per_phase = tasks / (plan.len() + 2);
    let mut spawned = 0;
    let mut injected = 0;
    let spawn_some = |k: usize, spawned: &mut usize| {
        for _ in 0..k {
            if *spawned >= tasks {
                return;
            }
            let n = *spawned;
            let q = (n % CORES) as QueueId;
            sp.spawn_with(q, |t| ledger.register(n, t)).unwrap();
            ledger.acked(n);
            *spawned += 1;
            if n % 64 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    for &(planned, crash) in &plan {
        spawn_some(per_phase, &mut spawned);
        // Inject only once the previous failure is recovered: every queue
        // owned by a live core and backed up by another live core.
        let settle = Instant::now();
        while !settled(&rq) && settle.elapsed() < Duration::from_secs(5) {
            spawn_some(2, &mut spawned);
            std::thread::sleep(Duration::from_millis(2));
        }
        // The planned core, or the next live one (a loaded machine can fence a
        // core spuriously: safe, but that core cannot fail again). Keep two
        // live cores at least, and inject only into a settled system.
        let live = (0..CORES).filter(|&c| rq.is_alive(c)).count();
        if live < 3 || !settled(&rq) {
            continue;
        }
        let core = (0..CORES)
            .map(|k| (planned + k) % CORES)
            .find(|&c| rq.is_alive(c) && !rq.faults().has_crashed(c))
            .expect("a live core");
        let takeovers = rq.takeovers();
        match crash {
            Some(point) => rq.faults().arm(core, point, 3, FaultAction::Crash),
            None => {
                freezers[core].freeze().unwrap();
                std::thread::sleep(Duration::from_millis(400)); // > 2 leases
                freezers[core].thaw().unwrap();
            }
        }
        // Wait for the failure to be recovered (bounded).
        let start = Instant::now();
        while rq.takeovers() == takeovers && start.elapsed() < Duration::from_secs(5) {
            // Keep work flowing so an armed crash point is reached.
            spawn_some(4, &mut spawned);
            std::thread::sleep(Duration::from_millis(2));
        }
        if crash.is_some() && !rq.faults().has_crashed(core) {
            // The crash point was not reached in time: no failure injected.
            rq.faults().disarm(core);
            continue;
        }
        if rq.takeovers() == takeovers {
            for e in rq.take_events() {
                if !matches!(e.kind, EventKind::Fenced { .. }) {
                    eprintln!("{e:?}");
                }
            }
            for q in 0..CORES {
                eprintln!(
                    "q{q}: {:?} backup {:?}",
                    rq.lease(q as QueueId),
                    lock(&rq.sh.queues[q].stream).backup
                );
            }
            panic!(
                "failure of core {core} ({crash:?}) was never taken over (crashed: {}, settled: {}, fired: {})",
                rq.faults().has_crashed(core),
                settled(&rq),
                rq.faults().fired()
            );
        }
        injected += 1;
        std::thread::sleep(Duration::from_millis(30)); // re-backups settle
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
                lock(&rq.sh.queues[q].stream).backup
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
        "soak: {tasks} tasks, {injected} failures injected, {} takeovers, {} fenced ops",
        rq.takeovers(),
        rq.fenced_ops()
    );
    assert!(
        injected >= 2,
        "only {injected} failures could be injected (machine too loaded?)"
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
        .filter(|(_, s)| s.phase != Phase::Blocked)
        .collect();
    assert!(
        stranded.is_empty(),
        "task words left in flight: {stranded:?}"
    );
}
