//! Model 9: parking an idle replica, rebuilding it, and removing and adding
//! replicas, racing with writes.
//!
//! `m9_park_and_wake`: two replicas of a copyable sequence, a log of 2. The
//! writer (replica 0) appends six values; the log fills while replica 1
//! has no thread, so the writer parks it and goes on without the log. A
//! thread of replica 1 then reads, concurrently with the writes: its read
//! rebuilds replica 1 from replica 0 and must return a prefix of the writes,
//! and a read after the writer is done must see all six. Mutants caught:
//! `wake_after_unlock` (the rebuilt replica's position is published after
//! the source's lock is released, when the log may already have moved past
//! it) and `park_keeps_ltail` (a parked replica keeps its old position, so
//! its reader trusts stale data).
//!
//! `m9_remove_and_add`: replicas 0 and 1 in service plus a spare place.
//! Once replica 1's thread has registered, the main thread removes replica 1
//! while that thread writes, then adds a replica back (the spare place:
//! places with registered threads come last). The thread of replica 1 gets either its response or
//! `ReplicaRemoved` (and then the write must not appear anywhere); a write
//! issued after the removal is known must be refused. Mutant caught:
//! `removed_not_checked` (a removed replica is rebuilt by its own threads).
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;
use loom_tests::{copy_nr, Op};
use noderep::ExecError;

/// Writes of the writer in `m9_park_and_wake`: two fill the log, the third
/// parks replica 1, and the last three can wrap the log past the position a
/// rebuilt replica 1 starts from (what `wake_after_unlock` gets wrong).
const WRITES: u64 = 6;

#[test]
fn m9_park_and_wake() {
    loom_tests::model("m9_park_and_wake", || {
        let nr = Arc::new(copy_nr(2, 0, 1, 2));
        let writer = {
            let nr = Arc::clone(&nr);
            thread::spawn(move || {
                let tok = nr.register_on(0).unwrap();
                for v in 1..=WRITES {
                    let resp = nr.execute_mut(Op::Push(v), &tok).unwrap();
                    assert_eq!(resp, (1..=v).collect::<Vec<_>>(), "response to write {v}");
                }
            })
        };
        let reader = {
            let nr = Arc::clone(&nr);
            thread::spawn(move || {
                let tok = nr.register_on(1).unwrap();
                let got = nr.execute((), &tok).unwrap();
                let all: Vec<u64> = (1..=WRITES).collect();
                assert_eq!(&all[..got.len()], &got[..], "replica 1 read {got:?}");
            })
        };
        writer.join().unwrap();
        reader.join().unwrap();
        let tok = nr.register_on(1).unwrap();
        let all: Vec<u64> = (1..=WRITES).collect();
        assert_eq!(nr.execute((), &tok).unwrap(), all, "rebuilt and current");
    });
}

#[test]
fn m9_remove_and_add() {
    loom_tests::model("m9_remove_and_add", || {
        let nr = Arc::new(copy_nr(2, 1, 1, 4));
        let removed = Arc::new(AtomicBool::new(false));
        let registered = Arc::new(AtomicBool::new(false));
        let worker = {
            let (nr, removed, registered) = (
                Arc::clone(&nr),
                Arc::clone(&removed),
                Arc::clone(&registered),
            );
            thread::spawn(move || {
                let tok = nr.register_on(1).unwrap();
                // Release: pairs with the main thread's Acquire wait.
                registered.store(true, Ordering::Release);
                let first = nr.execute_mut(Op::Push(1), &tok);
                // Acquire: pairs with the main thread's Release after removal.
                let known = removed.load(Ordering::Acquire);
                let second = nr.execute_mut(Op::Push(2), &tok);
                if known {
                    assert_eq!(second, Err(ExecError::ReplicaRemoved { replica: 1 }));
                }
                (first.is_ok(), second.is_ok())
            })
        };
        let t0 = nr.register_on(0).unwrap();
        // Acquire: the worker holds its token on replica 1 from here on.
        while !registered.load(Ordering::Acquire) {
            thread::yield_now();
        }
        nr.remove_replica(1).unwrap();
        // Release: the removal happens before the worker's Acquire load.
        removed.store(true, Ordering::Release);
        // The spare place while the worker holds its token (places with
        // registered threads come last), else possibly replica 1 itself.
        let added = nr.add_replica().unwrap();
        let (first, second) = worker.join().unwrap();
        let expect: Vec<u64> = [(first, 1), (second, 2)]
            .into_iter()
            .filter_map(|(ok, v)| ok.then_some(v))
            .collect();
        assert_eq!(
            nr.execute((), &t0).unwrap(),
            expect,
            "exactly the accepted writes"
        );
        let t = nr.register_on(added).unwrap();
        assert_eq!(
            nr.execute((), &t).unwrap(),
            expect,
            "the added replica is current"
        );
    });
}
