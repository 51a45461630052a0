//! Model 1: log append / exec across a wrap-around.
//!
//! One appender and one replica share a log of 2 entries; the appender
//! writes positions 0, 1, 2 (position 2 reuses slot 0 on the second lap,
//! where the alive bit's meaning flips), the replica applies them in order.
//! Checked: the replica reads exactly the value written at each position
//! (never last lap's stale entry, never an entry before it is published:
//! loom's `UnsafeCell` tracking reports any read not ordered after the
//! write), and the appender never overwrites a slot the replica may still be
//! reading (same tracking, through `head`/`ltail`).
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use noderep::nr::loom_api::LoomLog;

const WRITES: usize = 3;

#[test]
fn m1_log_wraparound() {
    loom_tests::model("m1_log_wraparound", || {
        let log = Arc::new(LoomLog::new(2, 1));
        let appender = {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                for v in 0..WRITES {
                    let pos = loop {
                        match log.try_reserve(1) {
                            Ok(pos) => break pos,
                            // Full: the replica has not passed the slot yet.
                            Err(needed_head) => {
                                assert_eq!(needed_head, v - 1, "log full at position {v}");
                                thread::yield_now();
                            }
                        }
                    };
                    assert_eq!(pos, v, "positions are handed out in order");
                    log.write(pos, 100 + v as u64);
                }
            })
        };
        // This thread is replica 0's combiner: apply positions in order.
        for pos in 0..WRITES {
            let got = loop {
                // SAFETY: pos is our ltail and below the tail once published;
                // only this thread moves replica 0's ltail.
                match unsafe { log.read(pos) } {
                    Some(v) => break v,
                    None => thread::yield_now(),
                }
            };
            assert_eq!(got, 100 + pos as u64, "replica read position {pos}");
            log.set_ltail(0, pos + 1);
        }
        appender.join().unwrap();
    });
}
