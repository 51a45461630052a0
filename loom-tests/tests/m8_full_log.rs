//! Model 8: two appenders of different replicas meet a full log.
//!
//! Two replicas, one thread each, a log of 2 entries (the builder's minimum
//! for two one-slot replicas). Each thread appends two values, so the third
//! and fourth appends find the log full while the other replica's thread is
//! appending, catching up or waiting too: both wait for room at the same
//! moment, and each must catch up its own replica and help (or leave room
//! for) the other. Checked: both finish (no deadlock, no livelock), every
//! value is applied exactly once, in one order on both replicas, and each
//! response is a prefix of that order ending with the thread's own value.
//! Mutants caught: `make_room_skips_own` (a waiter does not catch up its own
//! replica, which nobody else can while it holds the lock: deadlock) and
//! `waiter_never_leaves` (a served waiter's need stays counted, so later
//! appends keep room for a ghost; checked at quiescence).
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::{seq_nr, Op};

#[test]
fn m8_full_log() {
    loom_tests::model("m8_full_log", || {
        let nr = Arc::new(seq_nr(2, 1, 2));
        let writers: Vec<_> = (0..2u64)
            .map(|r| {
                let nr = Arc::clone(&nr);
                thread::spawn(move || {
                    let tok = nr.register_on(r as usize).unwrap();
                    let mut seen = Vec::new();
                    for i in 0..2u64 {
                        let v = 10 * (r + 1) + i;
                        let resp = nr.execute_mut(Op::Push(v), &tok).unwrap();
                        assert_eq!(resp.last(), Some(&v), "own value last in its response");
                        assert!(
                            resp.starts_with(&seen),
                            "responses grow: {seen:?} then {resp:?}"
                        );
                        seen = resp;
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let t0 = nr.register_on(0).unwrap();
        let t1 = nr.register_on(1).unwrap();
        let a = nr.execute((), &t0).unwrap();
        let b = nr.execute((), &t1).unwrap();
        assert_eq!(a, b, "replicas agree");
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![10, 11, 20, 21], "every value exactly once");
        assert_eq!(
            noderep::nr::loom_api::waiting_need(&nr),
            0,
            "no room is kept for waiters at quiescence"
        );
    });
}
