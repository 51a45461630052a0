//! Model 7: poisoning after a panicking operation.
//!
//! Replica 0 with two thread slots. One thread submits an operation that
//! panics inside `dispatch_mut`, the other appends a value at the same time;
//! either may be the combiner that runs the panicking operation, and the two
//! operations may share a batch in either order. Run with one replica (no
//! log: operations applied straight from the slots) and with a second, idle
//! replica (through the log, `m7_poisoning_log`). Checked: the thread whose
//! operation panicked gets the panic (with its payload) back, never a plain
//! error; the other thread gets its response (its write was applied before
//! the panic) or `ExecError::Poisoned`, and never hangs (loom would report
//! it spinning); afterwards the instance is poisoned and refuses new
//! registrations and operations.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::{seq_nr, Op, PANIC_MSG};
use noderep::{ExecError, NrError};
use std::panic::{self, AssertUnwindSafe};

/// Keeps the expected panic's message out of the output (loom runs the
/// scenario thousands of times); every other panic is reported as usual.
fn quiet_expected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let ours = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|m| m == PANIC_MSG);
            if !ours {
                default(info);
            }
        }));
    });
}

#[test]
fn m7_poisoning() {
    quiet_expected_panics();
    loom_tests::model("m7_poisoning", || scenario(1));
}

#[test]
fn m7_poisoning_log() {
    quiet_expected_panics();
    loom_tests::model("m7_poisoning_log", || scenario(2));
}

/// The model with `replicas` replicas; both threads use replica 0.
fn scenario(replicas: usize) {
    {
        let nr = Arc::new(seq_nr(replicas, 2, 4));
        let panicker = {
            let nr = Arc::clone(&nr);
            thread::spawn(move || {
                let tok = nr.register_on(0).unwrap();
                let res = panic::catch_unwind(AssertUnwindSafe(|| nr.execute_mut(Op::Panic, &tok)));
                match res {
                    Err(payload) => {
                        let msg = payload.downcast_ref::<String>().map(String::as_str);
                        assert_eq!(msg, Some(PANIC_MSG), "the panic payload reached its thread");
                    }
                    Ok(r) => {
                        panic!("the thread whose operation panicked got {r:?} instead of the panic")
                    }
                }
                assert!(
                    nr.is_poisoned(),
                    "a panicking operation poisons the instance"
                );
            })
        };
        let tok = nr.register_on(0).unwrap();
        match nr.execute_mut(Op::Push(1), &tok) {
            Ok(resp) => assert_eq!(resp, vec![1], "the write applied before the panic"),
            Err(e) => assert_eq!(e, ExecError::Poisoned),
        }
        panicker.join().unwrap();
        assert!(nr.is_poisoned());
        assert_eq!(nr.execute((), &tok).unwrap_err(), ExecError::Poisoned);
        assert_eq!(
            nr.execute_mut(Op::Push(2), &tok).unwrap_err(),
            ExecError::Poisoned
        );
        drop(tok);
        assert_eq!(nr.register_on(0).unwrap_err(), NrError::Poisoned);
        // Nothing ran again after the panic: a combiner that ignored the
        // poison would replay the stretch that the panicking one applied
        // without recording it, running the panicking operation (and any
        // write before it) a second time (mutant `exec_ignores_poison`).
        for r in 0..replicas {
            let (items, panics) =
                noderep::nr::loom_api::peek(&nr, r, |d| (d.items.clone(), d.panics));
            assert!(
                panics <= 1,
                "replica {r} ran the panicking operation {panics} times"
            );
            let mut unique = items.clone();
            unique.dedup();
            assert_eq!(
                unique, items,
                "replica {r} applied a write twice: {items:?}"
            );
        }
    }
}
