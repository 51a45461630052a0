//! Model 6: thread registration and token drop racing with combining.
//!
//! Replica 0 with two thread slots (alone, and with an idle second replica
//! in `m6_registration_log`). Two threads register, append their
//! value and leave, dropping their token (which frees the slot); the second
//! also reads before leaving. The main thread waits for the first to leave,
//! then registers — while the second may still be registering, combining or
//! reading — takes the freed slot, appends its own value and reads.
//! Registration raises the slot high-water mark that the combiner's
//! collection and the writer side of the readers-writer lock rely on, and the
//! freed slot's cells pass from the old owner to the new one. Checked: every
//! value is applied exactly once, every response is right, and the slot's cells change hands without a data
//! race (loom `UnsafeCell` tracking).
//!
//! Why the main thread joins instead of retrying on `ReplicaFull`: three
//! threads that all wait by yielding make loom explore schedules where two
//! of them yield to each other for thousands of steps while the third,
//! which they wait for, is runnable; loom reports those as livelocks
//! (branch limit) although every fair schedule finishes.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::{seq_nr, Op};

#[test]
fn m6_registration() {
    loom_tests::model("m6_registration", || scenario(1));
}

/// With a second, idle replica the writes go through the log and every
/// response, the combiner's own included, passes through its thread's slot,
/// so the slot's cells change hands on every path.
#[test]
fn m6_registration_log() {
    loom_tests::model("m6_registration_log", || scenario(2));
}

/// The model with `replicas` replicas; every thread uses replica 0.
fn scenario(replicas: usize) {
    {
        let nr = Arc::new(seq_nr(replicas, 2, 4));
        let mut others: Vec<_> = [1u64, 2]
            .into_iter()
            .map(|v| {
                let nr = Arc::clone(&nr);
                thread::spawn(move || {
                    let tok = nr.register_on(0).unwrap();
                    let resp = nr.execute_mut(Op::Push(v), &tok).unwrap();
                    assert_eq!(resp.last(), Some(&v), "thread {v} response {resp:?}");
                    if v == 2 {
                        let got = nr.execute((), &tok).unwrap();
                        assert!(got.contains(&2), "read-your-writes: {got:?}");
                    }
                })
            })
            .collect();
        let second = others.pop().unwrap();
        others.pop().unwrap().join().unwrap();
        // At most the second thread holds a slot now.
        let tok = nr.register_on(0).expect("a slot is free");
        let resp = nr.execute_mut(Op::Push(3), &tok).unwrap();
        assert_eq!(resp.last(), Some(&3), "main response {resp:?}");
        second.join().unwrap();
        let mut fin = nr.execute((), &tok).unwrap();
        fin.sort_unstable();
        assert_eq!(fin, vec![1, 2, 3], "every write applied exactly once");
    }
}
