//! Unit tests of the run-queue protocol (deterministic: one thread, explicit
//! clock), the fault injector, and the property and soak tests.

use super::fault::FaultPoint;
use super::fault::{catch_crash, FaultAction, Freezer};
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

/// A spawner on the last core (the tests below never fail it).
fn spawner_of(rq: &RunQueues) -> Spawner {
    rq.spawner(rq.queues() - 1).unwrap()
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
        spawner_of(&rq).spawn(9),
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
    let sp = spawner_of(&rq);
    let mut o = rq.owner(0).unwrap();
    let mut b = backup_of(&rq, 1, 0);
    let ts: Vec<TaskId> = (0..3).map(|_| sp.spawn(0).unwrap()).collect();
    assert_eq!(rq.task_state(ts[0]).unwrap().phase, TaskPhase::Transit);
    let t = pick(&mut o);
    assert_eq!(t, ts[0], "FIFO");
    assert_eq!(rq.task_state(t).unwrap().phase, TaskPhase::Running);
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
fn a_time_far_ahead_is_refused_and_a_clock_that_went_back_recovers() {
    let rq = sched(2, Replication::Sync);
    let mut o = rq.owner(0).unwrap();
    let mut b = backup_of(&rq, 1, 0);
    let t = spawner_of(&rq).spawn(0).unwrap();
    o.tick(0).unwrap();
    b.poll(0).unwrap();
    // A time hours ahead (a wrong clock or unit) is refused by every entry
    // point instead of taking over a live owner at once or stopping
    // renewals until the clock catches up.
    let far = rq.now() + 2 * 3600 * 1_000_000_000;
    for bad in [far, u64::MAX] {
        assert!(matches!(o.tick(bad), Err(RunqError::BadTime { now, .. }) if now == bad));
        assert!(matches!(b.poll(bad), Err(RunqError::BadTime { .. })));
    }
    // A time ahead but within the bound, then the real clock again: the
    // owner renews at the earlier time (it would otherwise wait for the
    // clock to catch up), and the backup's wait restarts rather than
    // measuring from the future.
    o.tick(30 * 60 * 1_000_000_000).unwrap();
    b.poll(30 * 60 * 1_000_000_000).unwrap();
    assert_ne!(
        o.tick(10 * MS).unwrap(),
        Tick::Idle,
        "a clock that went back renews"
    );
    for step in 1..20u64 {
        let now = step * 10 * MS;
        o.tick(now).unwrap();
        assert!(
            !matches!(b.poll(now).unwrap(), BackupEvent::TookOver { .. }),
            "a ticking owner is never taken over"
        );
    }
    // And once the owner stops, the backup does take over, from the
    // earlier clock: the far time left nothing behind.
    let mut adopted = None;
    for step in 20..40u64 {
        if let BackupEvent::TookOver { owner, .. } = b.poll(step * 10 * MS).unwrap() {
            adopted = Some(owner);
            break;
        }
    }
    let mut adopted = adopted.expect("a silent owner is taken over within a few leases");
    assert_eq!(pick(&mut adopted), t, "the task survives, once");
}

#[test]
fn a_panicking_spawn_callback_gives_its_slot_back() {
    let rq = RunQueues::builder()
        .cores(2)
        .task_capacity(1)
        .build()
        .unwrap();
    let sp = rq.spawner(0).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sp.spawn_with(1, |_| panic!("ledger full"))
    }));
    assert!(r.is_err(), "the callback's panic reaches the caller");
    assert!(rq.live_tasks().is_empty(), "{:?}", rq.live_tasks());
    // The one slot is free again: a spawn succeeds and the task runs.
    let t = sp.spawn(1).expect("the slot was given back");
    let mut o = rq.owner(1).unwrap();
    assert_eq!(pick(&mut o), t);
}

#[test]
fn a_panicking_commit_callback_loses_no_yielded_task() {
    let rq = sched(2, Replication::Sync);
    let t = spawner_of(&rq).spawn(0).unwrap();
    let mut o = rq.owner(0).unwrap();
    assert_eq!(pick(&mut o), t);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        o.complete_then(t, Exit::Yield, || panic!("ledger full"))
    }));
    assert!(r.is_err(), "the callback's panic reaches the caller");
    // The yield stands: the task is queued again and picked once more.
    assert_eq!(pick(&mut o), t);
    o.complete(t, Exit::Done).unwrap();
    assert_eq!(o.pick().unwrap(), Pick::Empty);
}

#[test]
fn backup_handles_of_another_core_or_scheduler_are_refused() {
    let rq = sched(3, Replication::Sync);
    let mut mine = Vec::new();
    rq.attach_backups(1, &mut mine).unwrap();
    assert!(matches!(
        rq.attach_backups(2, &mut mine),
        Err(RunqError::BadConfig(why)) if why.contains("one Vec")
    ));
    let other = sched(3, Replication::Sync);
    let mut theirs = Vec::new();
    other.attach_backups(1, &mut theirs).unwrap();
    assert!(matches!(
        rq.attach_backups(1, &mut theirs),
        Err(RunqError::BadConfig(_))
    ));
    // The right Vec still works, and adds nothing twice.
    assert_eq!(rq.attach_backups(1, &mut mine).unwrap(), 0);
}

#[test]
fn raw_ids_with_stray_high_bits_name_the_same_task() {
    let rq = sched(2, Replication::Sync);
    let t = spawner_of(&rq).spawn(0).unwrap();
    let forged = TaskId::from_raw(t.to_raw() | 1 << 63 | 1 << 58);
    assert_eq!(forged, t);
    assert_eq!(TaskId::from_raw(u64::MAX).to_raw() >> 56, 0);
    // An id of a slot never used names no task.
    assert_eq!(rq.task_state(TaskId::new(5, 0)), None);
    assert!(rq.task_state(t).is_some());
}

#[test]
fn migrating_or_stealing_to_the_own_queue_says_so() {
    let rq = sched(3, Replication::Sync);
    let t = spawner_of(&rq).spawn(0).unwrap();
    let mut o = rq.owner(0).unwrap();
    o.accept().unwrap();
    assert_eq!(o.migrate(t, 0), Err(RunqError::OwnQueue { queue: 0 }));
    assert_eq!(o.request_steal(0), Err(RunqError::OwnQueue { queue: 0 }));
    assert!(matches!(
        o.migrate(t, 7),
        Err(RunqError::NoSuchQueue { queue: 7, .. })
    ));
    // The refused migrations left the task where it was.
    assert_eq!(pick(&mut o), t);
}

#[test]
fn a_worker_finishing_on_a_queue_that_does_not_exist_says_so() {
    let rq = sched(2, Replication::Sync);
    let mut w = CoreWorker::new(&rq, 0).unwrap();
    let t = spawner_of(&rq).spawn(0).unwrap();
    assert!(matches!(
        w.finish(99, t, Exit::Done, || {}),
        Err(RunqError::NoSuchQueue {
            queue: 99,
            queues: 2
        })
    ));
}

#[test]
fn takeover_adopts_queued_and_running_tasks_and_fences_the_zombie() {
    let rq = sched(3, Replication::Sync);
    let sp = spawner_of(&rq);
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
    assert_eq!(o1.backups(), &[2]);
    let events = rq.take_events();
    assert!(check::check_owners(&events).is_empty());
    assert!(events
        .iter()
        .any(|e| matches!(e.kind, EventKind::TakeOver(_))));
}

#[test]
fn a_second_failure_is_survived_through_the_new_backup() {
    let rq = sched(3, Replication::Sync);
    let sp = spawner_of(&rq);
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
    let sp = spawner_of(&rq);
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
    assert_eq!(o0.backups(), &[2], "re-backup to the next live core");
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
    let sp = spawner_of(&rq);
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
    assert_eq!(rq.task_state(a).unwrap().phase, TaskPhase::Removed);
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
    let sp = spawner_of(&rq);
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
    let sp = spawner_of(&rq);
    let mut o = rq.owner(0).unwrap();
    let a = sp.spawn(0).unwrap();
    let c = sp.spawn(0).unwrap();
    assert_eq!(pick(&mut o), a);
    o.complete(a, Exit::Block).unwrap();
    assert_eq!(rq.task_state(a).unwrap().phase, TaskPhase::Blocked);
    assert_eq!(sp.wake(a), Wake::Woken);
    assert_eq!(sp.wake(a), Wake::NotBlocked(TaskPhase::Transit));
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
    let sp = spawner_of(&rq);
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
fn async_mode_loses_unshipped_operations_but_the_task_words_recover_the_tasks() {
    let rq = sched(
        2,
        Replication::Async {
            batch: 8,
            max_lag: Duration::from_secs(1),
        },
    );
    let sp = spawner_of(&rq);
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
    // The replica never heard of them, but their task words say "queued on
    // queue 0 in epoch 1": the takeover's table scan adopts them.
    assert_eq!((rep.adopted, rep.from_scan), (3, 3));
    // The thawed zombie is refused and has nothing left to hand back.
    assert!(matches!(o.pick(), Err(RunqError::Fenced { .. })));
    assert_eq!(o.surrender(), 0);
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
    let sp = spawner_of(&rq);
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
    let st = rq.replication_stats();
    assert_eq!((st.acked, st.shipped), (4, 4));
}

#[test]
fn async_mode_buffers_a_bounded_backlog_for_a_backup_that_stopped_draining() {
    let cfg = Config {
        replication: Replication::Async {
            batch: 4,
            max_lag: Duration::from_millis(2),
        },
        ring_capacity: 8,
        task_capacity: 1024,
        ..Config::default()
    };
    let rq = RunQueues::with_cores(2, cfg).unwrap();
    let sp = spawner_of(&rq);
    let mut o = rq.owner(0).unwrap();
    let mut b = backup_of(&rq, 1, 0); // attached, but not polled: stalled
    let t = sp.spawn(0).unwrap();
    o.accept().unwrap();
    assert_eq!(pick(&mut o), t);
    // Yield the task over and over: each yield is a record. The ring holds
    // 8 and the backlog 4 rings' worth; past that the owner refuses, as in
    // synchronous mode, instead of buffering without bound.
    let mut acked = 0u64;
    let stalled = loop {
        match o.complete(t, Exit::Yield) {
            Ok(()) => {
                acked += 1;
                assert_eq!(pick(&mut o), t);
            }
            Err(e) => break e,
        }
        assert!(acked < 1000, "the backlog must be bounded");
    };
    assert_eq!(stalled, RunqError::BackupStalled { queue: 0 });
    assert!(acked <= 2 + 5 * 8, "{acked} operations buffered");
    // The refused yield left the task running here; flush says what is
    // still unshipped.
    assert_eq!(o.flush(), Err(RunqError::BackupStalled { queue: 0 }));
    // Once the backup drains, everything ships and work goes on.
    let mut rounds = 0;
    while o.flush().is_err() {
        b.poll(0).unwrap();
        rounds += 1;
        assert!(rounds < 1000, "a draining backup takes the whole backlog");
    }
    b.poll(0).unwrap();
    o.complete(t, Exit::Done).unwrap();
    o.flush().unwrap();
    b.poll(0).unwrap();
    let st = rq.replication_stats();
    assert_eq!(st.acked, st.shipped, "{st:?}");
}

#[test]
fn a_crash_inside_an_operation_is_recovered_without_loss_or_duplicate() {
    for point in [
        FaultPoint::AfterIntent,
        FaultPoint::AfterCommit,
        FaultPoint::MigrateDelivered,
    ] {
        let rq = sched(3, Replication::Sync);
        let sp = spawner_of(&rq);
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
    let sp = spawner_of(&rq);
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

#[test]
fn configuration_beyond_arithmetic_or_memory_is_an_error_saying_what_to_change() {
    let b = || RunQueues::builder().cores(2);
    let msg = |r: Result<RunQueues, RunqError>| match r {
        Err(RunqError::BadConfig(m)) => m,
        other => panic!("expected BadConfig, got {other:?}"),
    };
    assert!(msg(b().skew_margin(Duration::MAX).build()).contains("skew_margin"));
    assert!(msg(b().lease(Duration::MAX).build()).contains("lease"));
    assert!(msg(b().lease(Duration::ZERO).build()).contains("lease"));
    assert!(msg(b().ring_capacity(1 << 40).build()).contains("ring_capacity"));
    assert!(msg(b().ring_capacity(6).build()).contains("ring_capacity"));
    assert!(msg(b().task_capacity(usize::MAX).build()).contains("task_capacity"));
    assert!(msg(b().task_capacity(0).build()).contains("task_capacity"));
    // The documented maximum passes the range check, but not the memory
    // check on a machine with less than 64 GiB (32 GiB of task words).
    let big = b().task_capacity(MAX_TASK_CAPACITY).build();
    if let Err(e) = &big {
        assert!(e.to_string().contains("lower them"), "{e}");
    }
    drop(big);
    assert!(msg(b().backups(0).build()).contains("backups"));
    assert!(msg(b().backups(2).build()).contains("backups"), "k < cores");
    assert!(msg(RunQueues::builder()
        .cores(9)
        .backups(MAX_BACKUPS + 1)
        .build())
    .contains("backups"));
    assert!(msg(b()
        .replication(Replication::Async {
            batch: 4,
            max_lag: Duration::MAX
        })
        .build())
    .contains("max_lag"));
    assert!(msg(RunQueues::builder().build()).contains("no cores"));
    assert!(msg(RunQueues::builder().cores(usize::MAX).build()).contains("cores"));
    // The largest accepted durations do not overflow the expiry arithmetic.
    let rq = b()
        .lease(MAX_DURATION)
        .skew_margin(MAX_DURATION)
        .build()
        .unwrap();
    assert_eq!(rq.config().expiry_ns(), 2 * 3600 * 1_000_000_000);
}

fn sched_k(cores: usize, k: usize) -> RunQueues {
    let cfg = Config {
        backups: k,
        ring_capacity: 64,
        task_capacity: 256,
        ..Config::default()
    };
    let rq = RunQueues::with_cores(cores, cfg).unwrap();
    rq.faults().set_park_on_crash(false);
    rq
}

#[test]
fn with_two_backups_a_core_and_its_first_backup_may_fail_together() {
    let rq = sched_k(4, 2);
    assert_eq!(rq.backups_of(0).unwrap(), vec![1, 2]);
    let sp = spawner_of(&rq);
    let mut o0 = rq.owner(0).unwrap();
    let mut b2 = backup_of(&rq, 2, 0); // the second backup of queue 0
    assert_eq!(b2.rank(), 1);
    let ts: Vec<TaskId> = (0..5).map(|_| sp.spawn(0).unwrap()).collect();
    let running = pick(&mut o0);
    let next = pick(&mut o0);
    o0.complete(next, Exit::Done).unwrap();
    o0.tick(0).unwrap();
    b2.poll(0).unwrap();
    // Core 0 crashes inside an operation and core 1 (its first backup) dies
    // with it: neither ever runs again. The second backup takes over in
    // lease + margin.
    rq.faults()
        .arm(0, FaultPoint::AfterCommit, 1, FaultAction::Crash);
    assert!(catch_crash(|| o0.pick()).is_err());
    assert!(!matches!(
        b2.poll(24 * MS).unwrap(),
        BackupEvent::TookOver { .. }
    ));
    let (mut o2, rep) = took_over(b2.poll(26 * MS).unwrap());
    assert_eq!((rep.by, rep.epoch), (2, 2));
    assert_eq!(rep.requeued_running, 2, "the run and the crashed pick");
    let mut done = vec![next];
    while let Pick::Task(t) = o2.pick().unwrap() {
        o2.complete(t, Exit::Done).unwrap();
        done.push(t);
    }
    done.sort();
    assert_eq!(done, ts, "every task exactly once");
    assert!(done.contains(&running));
    // The new owner's backups are live cores only (core 1 never renewed, but
    // its lease has not been taken over yet, so it may still be listed; a
    // tick replaces it once it is).
    assert!(!o2.backups().contains(&2));
}

#[test]
fn a_standby_backup_takes_over_when_the_adopter_dies_inside_its_takeover() {
    let rq = sched_k(4, 2);
    let sp = spawner_of(&rq);
    let _o0 = rq.owner(0).unwrap();
    let mut b1 = backup_of(&rq, 1, 0);
    let mut b2 = backup_of(&rq, 2, 0);
    let ts: Vec<TaskId> = (0..3).map(|_| sp.spawn(0).unwrap()).collect();
    b1.poll(0).unwrap();
    b2.poll(0).unwrap();
    // Core 0 stops; core 1 wins the lease and crashes right after.
    rq.faults()
        .arm(1, FaultPoint::AfterLeaseWon, 1, FaultAction::Crash);
    assert!(catch_crash(|| b1.poll(30 * MS)).is_err());
    assert_eq!(rq.lease(0).unwrap().owner, 1);
    // Core 2 stays on standby and takes the queue over from the dead adopter.
    assert!(matches!(b2.poll(31 * MS).unwrap(), BackupEvent::Idle));
    let (mut o2, rep) = took_over(b2.poll(60 * MS).unwrap());
    assert_eq!((rep.from, rep.by, rep.epoch), (1, 2, 3));
    let mut done = Vec::new();
    while let Pick::Task(t) = o2.pick().unwrap() {
        o2.complete(t, Exit::Done).unwrap();
        done.push(t);
    }
    assert_eq!(done, ts);
}

#[test]
fn a_spawner_crash_mid_spawn_leaks_no_slot() {
    for point in [FaultPoint::SpawnAllocated, FaultPoint::SpawnDelivered] {
        let cfg = Config {
            ring_capacity: 64,
            task_capacity: 4,
            ..Config::default()
        };
        let rq = RunQueues::with_cores(3, cfg).unwrap();
        rq.faults().set_park_on_crash(false);
        let _o0 = rq.owner(0).unwrap();
        let mut o2 = rq.owner(2).unwrap();
        let mut b1 = backup_of(&rq, 1, 0);
        b1.poll(0).unwrap();
        // Core 0 spawns onto queue 2 and crashes mid-spawn.
        rq.faults().arm(0, point, 1, FaultAction::Crash);
        let r = catch_crash(|| rq.spawner(0).unwrap().spawn(2));
        assert!(r.is_err(), "{point:?}");
        let stuck = rq.live_tasks();
        assert_eq!(stuck.len(), 1);
        assert_eq!(stuck[0].1.phase, TaskPhase::Spawning);
        // Queue 2's owner defers (or never sees) the unfinished spawn.
        assert_eq!(o2.pick().unwrap(), Pick::Empty);
        // Core 0's lease expires: its takeover reclaims the slot.
        let _ = took_over(b1.poll(30 * MS).unwrap());
        assert_eq!(rq.reclaimed_spawns(), 1, "{point:?}");
        assert!(rq.live_tasks().is_empty(), "{point:?}: the slot leaked");
        assert_eq!(o2.pick().unwrap(), Pick::Empty, "never delivered");
        // The dead core's spawner is fenced; all 4 slots are usable again.
        assert!(matches!(
            rq.spawner(0).unwrap().spawn(2),
            Err(RunqError::SpawnerFenced { core: 0 })
        ));
        let sp = rq.spawner(2).unwrap();
        for _ in 0..4 {
            sp.spawn(2).unwrap();
        }
    }
}

#[test]
fn an_allocation_reclaims_a_dead_spawners_slot_the_takeover_missed() {
    let cfg = Config {
        ring_capacity: 64,
        task_capacity: 2,
        ..Config::default()
    };
    let rq = RunQueues::with_cores(2, cfg).unwrap();
    rq.faults().set_park_on_crash(false);
    let mut b1 = backup_of(&rq, 1, 0);
    b1.poll(0).unwrap();
    let _ = took_over(b1.poll(30 * MS).unwrap());
    // A zombie's spawn word written after the takeover's scan (what a spawn
    // racing the takeover can leave when its core then dies for good).
    let t = rq
        .sh
        .tasks
        .allocate(TaskPhase::Spawning, 0, |_| false)
        .unwrap();
    assert_eq!(rq.task_state(t).unwrap().phase, TaskPhase::Spawning);
    let sp = rq.spawner(1).unwrap();
    sp.spawn(1).unwrap();
    sp.spawn(1).unwrap(); // only possible by reclaiming the dead spawn's slot
    assert_eq!(rq.task_state(t), None, "the slot was reused");
}
