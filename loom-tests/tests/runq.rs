//! Loom models of the run-queue failover protocol (`noderep::runq`), run on
//! the real code, whose atomics come from loom through `src/sync.rs` (sizes
//! shrink under `cfg(loom)`: rings of 4 records, 4 task slots; the logic is
//! unchanged).
//!
//! | model | race | mutant that makes it fail |
//! |---|---|---|
//! | `lease_renewal_races_takeover` | owner renews while the neighbour takes over | `renew_blind_store` |
//! | `zombie_completion_races_takeover` | a fenced owner completes a task while the neighbour adopts it | `finalize_blind` |
//! | `kill_races_wake_and_pick` | a kill races a wake-up, accept and pick of the same task | `kill_check_then_store` |
//! | `k2_backups_race_to_take_over` | with `k = 2`, both backups race to take an expired queue over | `takeover_blind_store` |
//! | `spawn_races_takeover_of_the_spawners_core` | a spawn races the takeover (and slot reclaim) of its own core | `reclaim_blind_store` |
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom
//! cargo test --release -p loom-tests --test runq`; set
//! `NODEREP_MUTANT=name` (a name of `src/mutants.rs`) to see a model fail.

#![cfg(loom)]

use loom::thread;
use noderep::runq::{
    BackupEvent, BackupHandle, Exit, Kill, Pick, Replicated, RunQueues, RunqError, TaskPhase, Tick,
};

/// Far beyond lease + margin: a backup polling at this time sees an expired
/// lease if the word did not change since it last looked (at time 0).
const LATER: u64 = 1_000_000_000;

fn backup_of(rq: &RunQueues, core: usize) -> BackupHandle {
    let mut v = Vec::new();
    rq.attach_backups(core, &mut v).unwrap();
    assert_eq!(v.len(), 1);
    v.pop().unwrap()
}

/// The owner renews its lease while the neighbour, which watched the old
/// word for longer than the lease, tries to take over. Exactly one wins: never
/// a renewed owner and a new owner at once.
#[test]
fn lease_renewal_races_takeover() {
    loom::model(|| {
        let rq = RunQueues::builder().cores(2).build().unwrap();
        let mut owner = rq.owner(0).unwrap();
        let mut backup = backup_of(&rq, 1);
        assert!(matches!(backup.poll(0).unwrap(), BackupEvent::Idle));
        let t = thread::spawn(move || owner.tick(1));
        let taken = matches!(backup.poll(LATER).unwrap(), BackupEvent::TookOver { .. });
        let renewed = t.join().unwrap();
        let lease = rq.lease(0).unwrap();
        match renewed {
            Ok(Tick::Renewed) => {
                assert!(
                    !taken,
                    "the owner renewed and the neighbour took over: two owners"
                );
                assert_eq!((lease.epoch, lease.owner), (1, 0));
            }
            Err(RunqError::Fenced { .. }) => {
                assert!(taken);
                assert_eq!((lease.epoch, lease.owner), (2, 1));
            }
            other => panic!("unexpected tick result {other:?}"),
        }
    });
}

/// A frozen owner wakes up and completes the task it was running while its
/// neighbour takes the queue over. The completion is either accepted before
/// the fence (then the neighbour does not adopt the task) or refused (then
/// the neighbour adopts and completes it): exactly one completion.
#[test]
fn zombie_completion_races_takeover() {
    loom::model(|| {
        let rq = RunQueues::builder().cores(2).build().unwrap();
        let task = rq.spawner(1).unwrap().spawn(0).unwrap();
        let mut owner = rq.owner(0).unwrap();
        assert_eq!(owner.pick().unwrap(), Pick::Task(task));
        let mut backup = backup_of(&rq, 1);
        backup.poll(0).unwrap();
        let zombie = thread::spawn(move || owner.complete(task, Exit::Done));
        let mut completed_by_new_owner = 0;
        let adopted;
        if let BackupEvent::TookOver { mut owner, .. } = backup.poll(LATER).unwrap() {
            adopted = owner.queued().contains(&task);
            while let Pick::Task(t) = owner.pick().unwrap() {
                assert_eq!(t, task);
                owner.complete(t, Exit::Done).unwrap();
                completed_by_new_owner += 1;
            }
        } else {
            panic!("nobody renews: the takeover must happen");
        }
        let zombie_ok = zombie.join().unwrap().is_ok();
        assert!(
            !(zombie_ok && adopted),
            "an operation of the old epoch was accepted after the task was adopted"
        );
        assert_eq!(
            u32::from(zombie_ok) + completed_by_new_owner,
            1,
            "exactly one completion"
        );
    });
}

/// A kill races a wake-up of the same blocked task and its owner's accept and
/// pick. A killed task never runs, and the backup's replica keeps a tombstone
/// (never a queued or running entry) for it.
#[test]
fn kill_races_wake_and_pick() {
    loom::model(|| {
        let rq = RunQueues::builder().cores(2).build().unwrap();
        let sp = rq.spawner(1).unwrap();
        let task = sp.spawn(0).unwrap();
        let mut owner = rq.owner(0).unwrap();
        assert_eq!(owner.pick().unwrap(), Pick::Task(task));
        owner.complete(task, Exit::Block).unwrap();
        let mut backup = backup_of(&rq, 1);
        backup.poll(0).unwrap();
        let sp2 = sp.clone();
        let runner = thread::spawn(move || {
            let woke = sp2.wake(task);
            let picked = owner.pick().unwrap() == Pick::Task(task);
            (woke, picked, owner)
        });
        // A kill that meets an owner mid-operation is told to retry.
        let killed = loop {
            match sp.kill(task) {
                Kill::Busy => thread::yield_now(),
                k => break k,
            }
        };
        let (woke, picked, _owner) = runner.join().unwrap();
        if killed == Kill::Killed {
            assert!(!picked, "a killed task ran (wake: {woke:?})");
            assert_eq!(
                rq.task_state(task).map(|s| s.phase),
                Some(TaskPhase::Removed)
            );
        } else {
            assert_eq!(killed, Kill::Running, "{killed:?} {woke:?}");
            assert!(picked);
        }
        backup.poll(1).unwrap();
        let replicated = backup.replica().get(task).map(|e| e.1);
        if killed == Kill::Killed {
            assert_eq!(
                replicated,
                Some(Replicated::Gone),
                "the replica must hold a tombstone"
            );
        } else {
            assert_eq!(replicated, Some(Replicated::Running));
        }
    });
}

/// With two backups (`k = 2`), both see the owner's lease expire and race to
/// take the queue over. The lease CAS picks exactly one winner, whatever
/// its rank; the winner adopts the queued task, the loser does not take
/// over, and the task runs exactly once.
#[test]
fn k2_backups_race_to_take_over() {
    loom::model(|| {
        let rq = RunQueues::builder().cores(3).backups(2).build().unwrap();
        let task = rq.spawner(2).unwrap().spawn(0).unwrap();
        let mut owner = rq.owner(0).unwrap();
        assert_eq!(owner.accept().unwrap(), 1);
        let mut b1 = backup_of_queue(&rq, 1, 0);
        let mut b2 = backup_of_queue(&rq, 2, 0);
        assert_eq!((b1.rank(), b2.rank()), (0, 1));
        b1.poll(0).unwrap();
        b2.poll(0).unwrap();
        let t = thread::spawn(move || took_over(b2.poll(LATER).unwrap()));
        let one = took_over(b1.poll(LATER).unwrap());
        let two = t.join().unwrap();
        let mut winners: Vec<_> = [one, two].into_iter().flatten().collect();
        assert_eq!(
            winners.len(),
            1,
            "both backups took the queue over: two owners of one epoch"
        );
        let mut new_owner = winners.pop().unwrap();
        assert_eq!(new_owner.epoch(), 2);
        let mut runs = 0;
        while let Pick::Task(t) = new_owner.pick().unwrap() {
            assert_eq!(t, task);
            new_owner.complete(t, Exit::Done).unwrap();
            runs += 1;
        }
        assert_eq!(runs, 1, "the queued task runs exactly once");
        assert!(matches!(owner.pick(), Err(RunqError::Fenced { .. })));
    });
}

/// A spawner on core 0 spawns onto queue 1 while core 0's queue is taken
/// over (core 0 is considered dead). Either the spawn is acknowledged and
/// its task is in transit to queue 1 (never reclaimed under it), or it is
/// refused and its slot reclaimed; no slot is left mid-spawn.
#[test]
fn spawn_races_takeover_of_the_spawners_core() {
    loom::model(|| {
        let rq = RunQueues::builder().cores(2).build().unwrap();
        let mut backup = backup_of(&rq, 1);
        backup.poll(0).unwrap();
        let sp = rq.spawner(0).unwrap();
        let t = thread::spawn(move || sp.spawn(1));
        let took = took_over(backup.poll(LATER).unwrap()).is_some();
        assert!(took, "nobody renews: the takeover must happen");
        match t.join().unwrap() {
            Ok(task) => assert_eq!(
                rq.task_state(task).map(|s| s.phase),
                Some(TaskPhase::Transit),
                "an acknowledged spawn was reclaimed"
            ),
            Err(RunqError::SpawnerFenced { core: 0 }) => {}
            Err(e) => panic!("unexpected spawn error {e:?}"),
        }
        let mid: Vec<_> = rq
            .live_tasks()
            .into_iter()
            .filter(|(_, s)| s.phase == TaskPhase::Spawning)
            .collect();
        assert!(mid.is_empty(), "a slot was left mid-spawn: {mid:?}");
    });
}

fn backup_of_queue(rq: &RunQueues, core: usize, q: u16) -> BackupHandle {
    let mut v = Vec::new();
    rq.attach_backups(core, &mut v).unwrap();
    let i = v.iter().position(|b| b.queue() == q).unwrap();
    v.swap_remove(i)
}

fn took_over(ev: BackupEvent) -> Option<noderep::runq::OwnerHandle> {
    match ev {
        BackupEvent::TookOver { owner, .. } => Some(*owner),
        _ => None,
    }
}
