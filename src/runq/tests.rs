//! Unit tests of the run-queue protocol (deterministic: one thread, explicit
//! clock), the fault injector, and the property and soak tests.

use super::fault::{catch_crash, FaultAction, Freezer};
use super::fault_points::FaultPoint;
use super::*;
use std::time::Duration;

mod prop;
mod soak;

const MS: u64 = 1_000_000;

fn sched(cores: usize, replication: Replication) -> RunQueues {
    let cfg = Config {
        replication,
        ring_capacity: 64,
        task_capacity: 256,
        ..Config::default()
    };
    let rq = RunQueues::with_cores(cores, cfg).unwrap();
    rq.faults().set_park_on_crash(false);
    rq
}

fn backup_of(rq: &RunQueues, core: usize, q: QueueId) -> BackupHandle {
    let mut v = Vec::new();
    rq.attach_backups(core, &mut v).unwrap();
    let i = v
        .iter()
        .position(|b| b.queue() == q)
        .expect("core backs the queue up");
    v.swap_remove(i)
}

fn took_over(ev: BackupEvent) -> (OwnerHandle, TakeoverReport) {
    match ev {
        BackupEvent::TookOver { owner, report } => (*owner, report),
        other => panic!("expected a takeover, got {other:?}"),
    }
}

fn pick(o: &mut OwnerHandle) -> TaskId {
    match o.pick().unwrap() {
        Pick::Task(t) => t,
        Pick::Empty => panic!("queue {} unexpectedly empty", o.queue()),
    }
}

#[test]
fn bad_configuration_is_an_error_not_a_panic() {
    let one = RunQueues::with_cores(1, Config::default());
    assert!(matches!(one, Err(RunqError::BadConfig(_))));
    let ring = Config {
        ring_capacity: 6,
        ..Config::default()
    };
    assert!(matches!(
        RunQueues::with_cores(2, ring),
        Err(RunqError::BadConfig(_))
    ));
    let batch = Config {
        replication: Replication::Async {
            batch: 0,
            max_lag: Duration::from_millis(1),
        },
        ..Config::default()
    };
    assert!(matches!(
        RunQueues::with_cores(2, batch),
        Err(RunqError::BadConfig(_))
    ));
    let rq = sched(2, Replication::Sync);
    assert!(rq.owner(0).is_ok());
    assert_eq!(
        rq.owner(0).unwrap_err(),
        RunqError::AlreadyClaimed { core: 0 }
    );
    assert!(matches!(
        rq.owner(5),
        Err(RunqError::NoSuchQueue {
            queue: 5,
            queues: 2
        })
    ));
    assert!(matches!(
        rq.spawner().spawn(9),
        Err(RunqError::NoSuchQueue { .. })
    ));
}

#[test]
fn neighbours_follow_ring_order_within_a_node_then_across_nodes() {
    let rq = RunQueues::with_layout(&[vec![0, 1, 2], vec![3]], Config::default()).unwrap();
    assert_eq!(rq.sh.candidates[0], vec![1, 2, 3]);
    assert_eq!(rq.sh.candidates[2], vec![0, 1, 3]);
    assert_eq!(rq.sh.candidates[3], vec![0, 1, 2]);
}

#[test]
fn spawn_pick_complete_and_the_replica_agrees() {
    let rq = sched(2, Replication::Sync);
    let sp = rq.spawner();
    let mut o = rq.owner(0).unwrap();
    let mut b = backup_of(&rq, 1, 0);
    let ts: Vec<TaskId> = (0..3).map(|_| sp.spawn(0).unwrap()).collect();
    assert_eq!(rq.task_state(ts[0]).unwrap().phase, Phase::Transit);
    let t = pick(&mut o);
    assert_eq!(t, ts[0], "FIFO");
    assert_eq!(rq.task_state(t).unwrap().phase, Phase::Running);
    assert!(matches!(
        o.complete(ts[1], Exit::Done),
        Err(RunqError::NotRunning { .. })
    ));
    o.complete(t, Exit::Done).unwrap();
    assert!(matches!(
        o.complete(t, Exit::Done),
        Err(RunqError::NotRunning { .. })
    ));
    assert!(matches!(b.poll(0).unwrap(), BackupEvent::Applied(5)));
    let rep = b.replica();
    assert_eq!(
        rep.queued().iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![ts[1], ts[2]]
    );
    assert_eq!(
        rep.get(t).unwrap().1,
        Replicated::Gone,
        "completion leaves a tombstone"
    );
    assert_eq!(o.queued(), vec![ts[1], ts[2]]);
}

#[test]
fn renewals_keep_the_neighbour_out() {
    let rq = sched(2, Replication::Sync);
    let mut o = rq.owner(0).unwrap();
    let mut b = backup_of(&rq, 1, 0);
    for step in 0..20u64 {
        let now = step * 10 * MS;
        o.tick(now).unwrap();
        assert!(!matches!(
            b.poll(now).unwrap(),
            BackupEvent::TookOver { .. }
        ));
    }
    assert_eq!(rq.lease(0).unwrap().owner, 0);
}

#[test]
fn takeover_adopts_queued_and_running_tasks_and_fences_the_zombie() {
    let rq = sched(3, Replication::Sync);
    let sp = rq.spawner();
    let mut o = rq.owner(0).unwrap();
    let mut b = backup_of(&rq, 1, 0);
    let ts: Vec<TaskId> = (0..3).map(|_| sp.spawn(0).unwrap()).collect();
    let running = pick(&mut o);
    o.tick(0).unwrap();
    b.poll(0).unwrap();
    // The owner stops renewing (frozen): lease 20 ms + margin 5 ms.
    assert!(matches!(b.poll(24 * MS).unwrap(), BackupEvent::Idle));
    let (mut o1, rep) = took_over(b.poll(26 * MS).unwrap());
    assert_eq!((rep.queue, rep.from, rep.by, rep.epoch), (0, 0, 1, 2));
    assert_eq!((rep.adopted, rep.requeued_running), (3, 1));
    assert_eq!(
        o1.queued(),
        vec![running, ts[1], ts[2]],
        "the interrupted run goes first"
    );
    assert_eq!(rq.lease(0).unwrap().owner, 1);
    // The zombie wakes up: every operation of epoch 1 is refused.
    let before = rq.fenced_ops();
    assert!(matches!(
        o.complete(running, Exit::Done),
        Err(RunqError::Fenced {
            queue: 0,
            epoch: 1,
            ..
        })
    ));
    assert!(matches!(o.pick(), Err(RunqError::Fenced { .. })));
    assert!(matches!(o.tick(30 * MS), Err(RunqError::Fenced { .. })));
    assert_eq!(rq.fenced_ops() - before, 3);
    // A delivery after the takeover reaches the new owner only.
    let late = sp.spawn(0).unwrap();
    let mut done = Vec::new();
    while let Pick::Task(t) = o1.pick().unwrap() {
        o1.complete(t, Exit::Done).unwrap();
        done.push(t);
    }
    assert_eq!(done, vec![running, ts[1], ts[2], late]);
    // The new owner seeded a new backup (core 2).
    assert_eq!(o1.backup(), Some(2));
    let events = rq.take_events();
    assert!(check::check_owners(&events).is_empty());
    assert!(events
        .iter()
        .any(|e| matches!(e.kind, EventKind::TakeOver(_))));
}

#[test]
fn a_second_failure_is_survived_through_the_new_backup() {
    let rq = sched(3, Replication::Sync);
    let sp = rq.spawner();
    let _o0 = rq.owner(0).unwrap();
    let mut o1 = rq.owner(1).unwrap();
    let mut b1 = backup_of(&rq, 1, 0);
    let ts: Vec<TaskId> = (0..4).map(|_| sp.spawn(0).unwrap()).collect();
    b1.poll(0).unwrap();
    o1.tick(0).unwrap();
    let (mut a1, _) = took_over(b1.poll(30 * MS).unwrap());
    let first = pick(&mut a1);
    a1.complete(first, Exit::Done).unwrap();
    // Core 2 is the new backup of queue 0 and sees the snapshot.
    let mut b2 = backup_of(&rq, 2, 0);
    b2.poll(31 * MS).unwrap();
    assert_eq!(b2.replica().queued().len(), 3);
    // Now core 1 dies too (no more ticks): core 2 adopts queue 0 again.
    let (mut a2, rep) = took_over(b2.poll(70 * MS).unwrap());
    assert_eq!((rep.by, rep.epoch), (2, 3));
    let mut left = Vec::new();
    while let Pick::Task(t) = a2.pick().unwrap() {
        a2.complete(t, Exit::Done).unwrap();
        left.push(t);
    }
    assert_eq!(left, ts[1..].to_vec());
}

#[test]
fn an_owner_replaces_a_dead_backup_and_the_old_backup_cannot_take_over() {
    let rq = sched(3, Replication::Sync);
    let sp = rq.spawner();
    let mut o0 = rq.owner(0).unwrap();
    let _o1 = rq.owner(1).unwrap();
    let mut b1 = backup_of(&rq, 1, 0); // core 1 backs up queue 0
    let mut b2 = backup_of(&rq, 2, 1); // core 2 backs up queue 1
    let t = sp.spawn(0).unwrap();
    o0.accept().unwrap();
    o0.tick(0).unwrap();
    b1.poll(0).unwrap();
    b2.poll(0).unwrap();
    // Core 1 dies: core 2 takes queue 1 over, so core 1 is no longer alive.
    let _ = took_over(b2.poll(30 * MS).unwrap());
    assert!(!rq.is_alive(1));
    o0.tick(30 * MS).unwrap();
    assert_eq!(o0.backup(), Some(2), "re-backup to the next live core");
    assert_eq!(o0.epoch(), 2, "re-backup raises the epoch");
    // The stale backup handle detaches instead of taking over.
    assert!(matches!(b1.poll(90 * MS).unwrap(), BackupEvent::Detached));
    let mut nb = backup_of(&rq, 2, 0);
    nb.poll(31 * MS).unwrap();
    assert_eq!(
        nb.replica()
            .queued()
            .iter()
            .map(|x| x.0)
            .collect::<Vec<_>>(),
        vec![t]
    );
    assert_eq!(pick(&mut o0), t);
}

#[test]
fn killed_tasks_never_run_and_leave_tombstones() {
    let rq = sched(2, Replication::Sync);
    let sp = rq.spawner();
    let mut o = rq.owner(0).unwrap();
    let mut b = backup_of(&rq, 1, 0);
    let a = sp.spawn(0).unwrap();
    let c = sp.spawn(0).unwrap();
    o.accept().unwrap();
    assert_eq!(sp.kill(a), Kill::Killed);
    assert_eq!(sp.kill(a), Kill::AlreadyGone);
    let t = pick(&mut o);
    assert_eq!(t, c, "the killed task is skipped");
    assert_eq!(sp.kill(c), Kill::Running);
    b.poll(0).unwrap();
    assert_eq!(b.replica().get(a).unwrap().1, Replicated::Gone);
    // Takeover: the killed task is not resurrected.
    let (o1, rep) = took_over(b.poll(30 * MS).unwrap());
    assert_eq!(o1.queued(), vec![c]);
    assert_eq!(rep.requeued_running, 1);
    assert_eq!(rq.task_state(a).unwrap().phase, Phase::Removed);
    // Killing in transit works too, and the owner drops the delivery.
    let d = sp.spawn(0).unwrap();
    assert_eq!(sp.kill(d), Kill::Killed);
    let mut o1 = o1;
    assert_eq!(pick(&mut o1), c);
    assert_eq!(o1.pick().unwrap(), Pick::Empty);
}

#[test]
fn tombstones_are_collected_once_the_backup_passed_them() {
    let rq = sched(2, Replication::Sync);
    let sp = rq.spawner();
    let mut o = rq.owner(0).unwrap();
    let mut b = backup_of(&rq, 1, 0);
    for _ in 0..3 {
        sp.spawn(0).unwrap();
    }
    for _ in 0..3 {
        let t = pick(&mut o);
        o.complete(t, Exit::Done).unwrap();
    }
    b.poll(0).unwrap();
    assert_eq!(b.replica().tombstones(), 3);
    o.tick(0).unwrap(); // the backup drained them: send Collect
    b.poll(1).unwrap();
    assert_eq!(b.replica().tombstones(), 0);
    assert!(b.replica().watermark() > Stamp::default());
}

#[test]
fn block_wake_yield_and_remove() {
    let rq = sched(2, Replication::Sync);
    let sp = rq.spawner();
    let mut o = rq.owner(0).unwrap();
    let a = sp.spawn(0).unwrap();
    let c = sp.spawn(0).unwrap();
    assert_eq!(pick(&mut o), a);
    o.complete(a, Exit::Block).unwrap();
    assert_eq!(rq.task_state(a).unwrap().phase, Phase::Blocked);
    assert_eq!(sp.wake(a), Wake::Woken);
    assert_eq!(sp.wake(a), Wake::NotBlocked(Phase::Transit));
    assert_eq!(pick(&mut o), c);
    o.complete(c, Exit::Yield).unwrap();
    // The woken task was accepted by that pick, before the yield re-queued c.
    assert_eq!(o.queued(), vec![a, c]);
    o.remove(c).unwrap();
    assert!(matches!(o.remove(c), Err(RunqError::NotQueued { .. })));
    assert_eq!(pick(&mut o), a);
}

#[test]
fn steal_migrates_half_through_transit() {
    let rq = sched(2, Replication::Sync);
    let sp = rq.spawner();
    let mut o0 = rq.owner(0).unwrap();
    let mut o1 = rq.owner(1).unwrap();
    for _ in 0..6 {
        sp.spawn(0).unwrap();
    }
    o0.accept().unwrap();
    assert_eq!(o1.load_of(0), 6);
    assert!(o1.request_steal(0).unwrap());
    assert!(!o1.request_steal(0).unwrap(), "one request at a time");
    let first = pick(&mut o0); // serves the steal first
    assert_eq!(o0.len(), 2);
    let mut got = Vec::new();
    while let Pick::Task(t) = o1.pick().unwrap() {
        assert_eq!(rq.task_state(t).unwrap().place, 1);
        o1.complete(t, Exit::Done).unwrap();
        got.push(t);
    }
    assert_eq!(got.len(), 3);
    assert!(!got.contains(&first));
}

#[test]
fn async_mode_loses_only_unshipped_enqueues_and_a_zombie_gives_them_back() {
    let rq = sched(
        2,
        Replication::Async {
            batch: 8,
            max_lag: Duration::from_secs(1),
        },
    );
    let sp = rq.spawner();
    let mut o = rq.owner(0).unwrap();
    let mut b = backup_of(&rq, 1, 0);
    let ts: Vec<TaskId> = (0..3).map(|_| sp.spawn(0).unwrap()).collect();
    o.accept().unwrap();
    o.tick(0).unwrap();
    // Nothing shipped yet: the backup knows nothing.
    b.poll(0).unwrap();
    assert!(b.replica().queued().is_empty());
    let (mut o1, rep) = took_over(b.poll(30 * MS).unwrap());
    assert_eq!(
        rep.lost_ops, 3,
        "three acknowledged enqueues were never shipped"
    );
    assert_eq!(rep.adopted, 0);
    assert_eq!(o1.pick().unwrap(), Pick::Empty);
    // The thawed zombie is refused, then hands back what only it knew.
    assert!(matches!(o.pick(), Err(RunqError::Fenced { .. })));
    assert_eq!(o.surrender(), 3);
    let mut got = Vec::new();
    while let Pick::Task(t) = o1.pick().unwrap() {
        o1.complete(t, Exit::Done).unwrap();
        got.push(t);
    }
    assert_eq!(got, ts);
}

#[test]
fn async_mode_ships_in_batches() {
    let rq = sched(
        2,
        Replication::Async {
            batch: 4,
            max_lag: Duration::from_millis(2),
        },
    );
    let sp = rq.spawner();
    let mut o = rq.owner(0).unwrap();
    let mut b = backup_of(&rq, 1, 0);
    for _ in 0..3 {
        sp.spawn(0).unwrap();
    }
    o.accept().unwrap();
    b.poll(0).unwrap();
    assert_eq!(b.replica().queued().len(), 0);
    let _ = pick(&mut o); // 4th record: a batch ships
    b.poll(0).unwrap();
    assert_eq!(b.replica().queued().len(), 2);
    assert_eq!(b.replica().running().len(), 1);
    let (acked, shipped, _) = rq.replication_stats();
    assert_eq!((acked, shipped), (4, 4));
}

#[test]
fn a_crash_inside_an_operation_is_recovered_without_loss_or_duplicate() {
    for point in [
        FaultPoint::AfterIntent,
        FaultPoint::AfterCommit,
        FaultPoint::MigrateDelivered,
    ] {
        let rq = sched(3, Replication::Sync);
        let sp = rq.spawner();
        let mut o0 = rq.owner(0).unwrap();
        let mut b = backup_of(&rq, 1, 0);
        let ts: Vec<TaskId> = (0..4).map(|_| sp.spawn(0).unwrap()).collect();
        o0.accept().unwrap();
        rq.faults().arm(0, point, 1, FaultAction::Crash);
        let r = catch_crash(|| {
            if point == FaultPoint::MigrateDelivered {
                let _ = o0.migrate(ts[3], 2);
            }
            let _ = o0.pick();
        });
        assert_eq!(
            r.map(|_| ()),
            Err(fault::Crashed { core: 0, point }),
            "{point:?}"
        );
        assert!(rq.faults().has_crashed(0));
        b.poll(0).unwrap();
        let (mut o1, _) = took_over(b.poll(30 * MS).unwrap());
        let mut o2 = rq.owner(2).unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            for o in [&mut o1, &mut o2] {
                while let Pick::Task(t) = o.pick().unwrap() {
                    o.complete(t, Exit::Done).unwrap();
                    seen.push(t);
                }
            }
        }
        seen.sort();
        assert_eq!(seen, ts, "{point:?}: every task exactly once");
    }
}

#[test]
fn a_stall_beyond_the_lease_makes_a_zombie() {
    let cfg = Config {
        lease: Duration::from_millis(5),
        skew_margin: Duration::from_millis(1),
        ring_capacity: 64,
        task_capacity: 64,
        ..Config::default()
    };
    let rq = RunQueues::with_cores(2, cfg).unwrap();
    let sp = rq.spawner();
    let t = sp.spawn(0).unwrap();
    let rq2 = rq.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let zombie = std::thread::spawn(move || {
        let mut o = rq2.owner(0).unwrap();
        o.tick(rq2.now()).unwrap();
        rq2.faults().arm(
            0,
            FaultPoint::OpStart,
            1,
            FaultAction::Stall(Duration::from_millis(200)),
        );
        tx.send(()).unwrap();
        o.pick() // stalls 200 ms at its start, then runs as a zombie
    });
    rx.recv().unwrap();
    let mut b = backup_of(&rq, 1, 0);
    let owner = loop {
        match b.poll(rq.now()).unwrap() {
            BackupEvent::TookOver { owner, .. } => break owner,
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    let zombie_pick = zombie.join().unwrap();
    assert!(
        matches!(zombie_pick, Err(RunqError::Fenced { .. })),
        "{zombie_pick:?}"
    );
    let mut owner = *owner;
    assert_eq!(owner.pick().unwrap(), Pick::Task(t));
}

#[test]
fn freeze_parks_a_thread_by_signal_until_thawed() {
    use crate::sync::{Arc, AtomicBool, AtomicU64, Ordering};
    let counter = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (c, s) = (counter.clone(), stop.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        tx.send(Freezer::register_current().unwrap()).unwrap();
        // Acquire: pairs with the Release store of `stop` below.
        while !s.load(Ordering::Acquire) {
            // Relaxed: the counter is only compared for progress.
            c.fetch_add(1, Ordering::Relaxed);
            std::hint::spin_loop();
        }
    });
    let f = rx.recv().unwrap();
    f.freeze().unwrap();
    // Relaxed: progress counter (see above).
    let a = counter.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        counter.load(Ordering::Relaxed),
        a,
        "a frozen thread makes no progress"
    );
    f.thaw().unwrap();
    while counter.load(Ordering::Relaxed) == a {
        std::thread::yield_now();
    }
    // Release: pairs with the Acquire load in the spinning thread.
    stop.store(true, Ordering::Release);
    h.join().unwrap();
}
