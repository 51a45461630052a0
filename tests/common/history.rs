//! Recording histories of concurrent operations for the linearizability
//! checker ([`super::lincheck`]).
//!
//! Each operation is stamped twice from one global counter: just before it
//! is invoked and just after it returns. The checker only needs the order
//! of the stamps: if `a`'s return stamp is below `b`'s call stamp, `a`
//! really finished before `b` started, so every linearization must put `a`
//! first.
//!
//! # How it works
//!
//! A [`Clock`] is a shared atomic counter; each thread owns a [`ThreadLog`]
//! that stamps and stores its own operations without any other
//! synchronisation, and the logs are merged after the threads are joined.
//!
//! # Trade-offs
//!
//! The counter is one contended cache line, touched twice per operation,
//! which perturbs the timing of the system under test a little (it adds a
//! synchronisation point between operations, never inside one). A counter
//! gives exact, tie-free stamps where `Instant` can tie on fast operations.
//! These are integration tests, outside the crate, so they use std's atomics
//! directly rather than `noderep::sync` (whose atomics are crate-private).

use super::lincheck::Operation;
use std::sync::atomic::{AtomicU64, Ordering};

/// The global logical clock of one history.
#[derive(Debug, Default)]
pub struct Clock(AtomicU64);

impl Clock {
    /// A fresh clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new, unique timestamp, later than every timestamp already taken.
    pub fn tick(&self) -> u64 {
        // AcqRel: the read-modify-writes on the counter are totally ordered
        // (and agree with each thread's program order); Release publishes
        // the operation that finished before a return stamp, Acquire makes
        // the thread that takes a later call stamp see it, so "a.returned <
        // b.call" implies a happens-before b. Pairs with itself in the other
        // threads.
        self.0.fetch_add(1, Ordering::AcqRel)
    }
}

/// One thread's part of a history.
#[derive(Debug)]
pub struct ThreadLog<'c, Op, Ret> {
    clock: &'c Clock,
    thread: usize,
    ops: Vec<Operation<Op, Ret>>,
}

impl<'c, Op, Ret: Clone> ThreadLog<'c, Op, Ret> {
    /// An empty log for thread `thread`, stamping from `clock`.
    pub fn new(clock: &'c Clock, thread: usize) -> Self {
        Self {
            clock,
            thread,
            ops: Vec::new(),
        }
    }

    /// Runs `op` through `run`, recording it with its call and return
    /// stamps, and returns its response.
    pub fn record(&mut self, op: Op, run: impl FnOnce(&Op) -> Ret) -> Ret {
        let call = self.clock.tick();
        let ret = run(&op);
        let returned = self.clock.tick();
        self.ops.push(Operation {
            thread: self.thread,
            op,
            ret: ret.clone(),
            call,
            returned,
        });
        ret
    }

    /// The recorded operations.
    pub fn into_ops(self) -> Vec<Operation<Op, Ret>> {
        self.ops
    }
}

/// A start line that releases a group of threads at (nearly) the same
/// instant.
///
/// `std::sync::Barrier` wakes the waiters one by one through the kernel;
/// the last thread to arrive runs on while the others wake up, and a short
/// run of operations can finish before any other thread starts, leaving
/// nothing concurrent to check. Here every thread spins (yielding, so that
/// threads outnumbering cores still all get to arrive) until the group is
/// complete, and the threads on a CPU at that moment start together.
#[derive(Debug)]
pub struct StartLine {
    arrived: AtomicU64,
    group: u64,
}

impl StartLine {
    /// A start line for `group` threads.
    pub fn new(group: usize) -> Self {
        Self {
            arrived: AtomicU64::new(0),
            group: group as u64,
        }
    }

    /// Waits until all `group` threads have called `wait`.
    pub fn wait(&self) {
        // AcqRel: the arrivals form one release sequence; what each thread
        // did before arriving happens before the others leave (Acquire
        // loads below). Pairs with the loads of the other threads.
        self.arrived.fetch_add(1, Ordering::AcqRel);
        let mut spins = 0u32;
        // Acquire: pairs with the AcqRel arrivals above.
        while self.arrived.load(Ordering::Acquire) < self.group {
            spins += 1;
            if spins % 64 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}
