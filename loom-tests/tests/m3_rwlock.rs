//! Model 3: the distributed readers-writer lock.
//!
//! The main thread is the combiner: twice, under the write lock, it applies
//! a "batch" of two writes, one to each of two cells (`a` then `b`). A
//! reader thread registers slot 1 (so the writer scans two slots) and takes
//! the read lock twice, reading both cells each time. Checked: the reader
//! sees whole batches only (`a == b`, never a half-applied batch), and no
//! read overlaps a write: the cells are loom `UnsafeCell`s, so any access not
//! ordered by the lock is reported as a data race.
//!
//! Why one reader thread: with two readers and the writer all spinning
//! (each waits by yielding), loom explores schedules in which the two
//! readers keep yielding to each other and never to the writer, and reports
//! them as livelocks (exceeded branch limit) although the lock is correct.
//! The Dekker handshake is between one reader and the writer, so one reader
//! on a non-zero slot covers it.
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;
use noderep::nr::loom_api::LoomRwLock;

struct Guarded {
    lock: LoomRwLock,
    a: UnsafeCell<u64>,
    b: UnsafeCell<u64>,
}

// SAFETY: the cells are only touched under `lock` (that is what the model
// checks; loom reports any access that the lock fails to order).
unsafe impl Sync for Guarded {}

#[test]
fn m3_rwlock() {
    loom_tests::model("m3_rwlock", || scenario(LoomRwLock::new(2)));
}

/// The same with the read-mostly lock's asymmetric fences (fence-free
/// readers, `membarrier` writer), which loom models as SeqCst fences on both
/// sides (see `light_fence` in `src/sync.rs`): this checks the orderings around
/// the handshake, not `membarrier` itself.
#[test]
fn m3_rwlock_asymmetric() {
    loom_tests::model("m3_rwlock_asymmetric", || {
        scenario(LoomRwLock::new_asymmetric(2))
    });
}

fn scenario(lock: LoomRwLock) {
    {
        let g = Arc::new(Guarded {
            lock,
            a: UnsafeCell::new(0),
            b: UnsafeCell::new(0),
        });
        let reader = {
            let g = Arc::clone(&g);
            thread::spawn(move || {
                g.lock.note_slot(1);
                let mut last = 0;
                for _ in 0..2 {
                    let _r = g.lock.read(1);
                    // SAFETY: read lock held (checked by loom).
                    let a = g.a.with(|p| unsafe { *p });
                    // SAFETY: as above.
                    let b = g.b.with(|p| unsafe { *p });
                    assert_eq!(a, b, "the reader saw a half-applied batch");
                    assert!(a >= last, "the reader went back in time: {a} after {last}");
                    last = a;
                }
            })
        };
        for batch in 1..=2 {
            let _w = g.lock.write();
            // SAFETY: write lock held (checked by loom).
            g.a.with_mut(|p| unsafe { *p = batch });
            // SAFETY: as above.
            g.b.with_mut(|p| unsafe { *p = batch });
        }
        reader.join().unwrap();
    }
}
