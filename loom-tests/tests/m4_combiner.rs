//! Model 4: the flat combiner hands every response back.
//!
//! Replica 0 with two thread slots; two threads each append their own
//! value with `execute_mut`. Either one combines both operations in one
//! batch or each combines its own (loom explores both). Run twice: with one
//! replica, where the combiner applies operations straight from the slots
//! (no log), and with a second, idle replica, where the batch goes through
//! the log (`m4_combiner_log`). Checked: each
//! operation is applied exactly once (the final sequence is a permutation of
//! the two values), every thread gets its own response (the sequence right
//! after its value was appended, a prefix of the final sequence ending with
//! its value), and the operation and response cells are handed over without
//! a data race (loom `UnsafeCell` tracking).
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::{seq_nr, Op};

#[test]
fn m4_combiner() {
    loom_tests::model("m4_combiner", || scenario(1));
}

#[test]
fn m4_combiner_log() {
    loom_tests::model("m4_combiner_log", || scenario(2));
}

/// The model with `replicas` replicas; both threads use replica 0.
fn scenario(replicas: usize) {
    {
        let nr = Arc::new(seq_nr(replicas, 2, 4));
        let writers: Vec<_> = [1u64, 2]
            .into_iter()
            .map(|v| {
                let nr = Arc::clone(&nr);
                thread::spawn(move || {
                    let tok = nr.register_on(0).unwrap();
                    let resp = nr.execute_mut(Op::Push(v), &tok).unwrap();
                    assert_eq!(
                        resp.last(),
                        Some(&v),
                        "thread {v} got someone else's response {resp:?}"
                    );
                    assert_eq!(
                        resp.iter().filter(|&&x| x == v).count(),
                        1,
                        "{v} applied twice: {resp:?}"
                    );
                    resp
                })
            })
            .collect();
        let responses: Vec<Vec<u64>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        let tok = nr.register_on(0).unwrap();
        let fin = nr.execute((), &tok).unwrap();
        let mut sorted = fin.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            vec![1, 2],
            "every operation applied exactly once: {fin:?}"
        );
        for r in &responses {
            assert_eq!(
                &fin[..r.len()],
                &r[..],
                "response {r:?} is not a prefix of the final {fin:?}"
            );
        }
    }
}
