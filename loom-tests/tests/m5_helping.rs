//! Model 5: a full log is emptied by helping a lagging replica.
//!
//! Two replicas, one thread slot each, a log of 2 entries. The writer
//! (replica 0) appends three values, so its third append needs a slot that
//! replica 1 has not applied yet; replica 1's only thread reads once and then
//! goes away (it is idle for the rest of the run). Checked: the writer
//! finishes (helping: it applies the log to replica 1 itself; without it
//! loom reports the writer spinning forever), every response is right, the
//! idle thread's read returns a prefix of the writes, and afterwards
//! replica 1 holds all three values. The helper's application races with the
//! idle thread's read and its own catch-up; loom's `UnsafeCell` tracking
//! checks that they are ordered by replica 1's locks.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::{seq_nr, Op};

#[test]
fn m5_helping() {
    loom_tests::model("m5_helping", || {
        let nr = Arc::new(seq_nr(2, 1, 2));
        let idle = {
            let nr = Arc::clone(&nr);
            thread::spawn(move || {
                let tok = nr.register_on(1).unwrap();
                let got = nr.execute((), &tok).unwrap();
                assert_eq!(&[1, 2, 3][..got.len()], &got[..], "replica 1 read {got:?}");
            })
        };
        let writer = {
            let nr = Arc::clone(&nr);
            thread::spawn(move || {
                let tok = nr.register_on(0).unwrap();
                for v in 1..=3u64 {
                    let resp = nr.execute_mut(Op::Push(v), &tok).unwrap();
                    assert_eq!(resp, (1..=v).collect::<Vec<_>>(), "response to write {v}");
                }
            })
        };
        idle.join().unwrap();
        writer.join().unwrap();
        // The idle thread's slot is free again: check replica 1 caught up.
        let tok = nr.register_on(1).unwrap();
        assert_eq!(
            nr.execute((), &tok).unwrap(),
            vec![1, 2, 3],
            "replica 1 caught up with every write"
        );
    });
}
