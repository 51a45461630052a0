//! Model 2: the commit point (`ctail`) and the per-replica applied indices
//! (`ltails`) make reads linearizable across replicas.
//!
//! Two replicas. The writer (replica 0) appends a value, reads it back on its
//! own replica (read-your-writes), then raises `done`. A second thread of
//! replica 0 reads once and raises `seen` if its read returned the value.
//! The main thread (replica 1, which has applied nothing yet) looks at both
//! flags and then reads. Checked: if either flag was up — the write
//! completed, or some read already returned it, before this read began —
//! the read on replica 1 returns the value (it first caught its replica up
//! to the commit point); otherwise it returns the empty or the complete
//! sequence, nothing else.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;
use loom_tests::{seq_nr, Op};

#[test]
fn m2_commit_point() {
    loom_tests::model("m2_commit_point", || {
        let nr = Arc::new(seq_nr(2, 2, 4));
        let done = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicBool::new(false));
        let writer = {
            let (nr, done) = (Arc::clone(&nr), Arc::clone(&done));
            thread::spawn(move || {
                let tok = nr.register_on(0).unwrap();
                assert_eq!(nr.execute_mut(Op::Push(7), &tok).unwrap(), vec![7]);
                assert_eq!(
                    nr.execute((), &tok).unwrap(),
                    vec![7],
                    "read-your-writes on replica 0"
                );
                // Release: the write completed before; pairs with the Acquire below.
                done.store(true, Ordering::Release);
            })
        };
        let reader0 = {
            let (nr, seen) = (Arc::clone(&nr), Arc::clone(&seen));
            thread::spawn(move || {
                let tok = nr.register_on(0).unwrap();
                let got = nr.execute((), &tok).unwrap();
                assert!(
                    got.is_empty() || got == vec![7],
                    "impossible state {got:?} on replica 0"
                );
                if !got.is_empty() {
                    // Release: our read returned the write; pairs with the Acquire below.
                    seen.store(true, Ordering::Release);
                }
            })
        };
        let tok = nr.register_on(1).unwrap();
        // Acquire: pairs with the Releases above; a flag that is up means
        // the write completed, or was returned by a read, before ours began.
        let before = done.load(Ordering::Acquire) || seen.load(Ordering::Acquire);
        let got = nr.execute((), &tok).unwrap();
        if before {
            assert_eq!(
                got,
                vec![7],
                "a read on replica 1 missed a write that an earlier operation had observed"
            );
        } else {
            assert!(
                got.is_empty() || got == vec![7],
                "impossible state {got:?} on replica 1"
            );
        }
        drop(tok);
        writer.join().unwrap();
        reader0.join().unwrap();
    });
}
