//! Memory per replica, counted by a global allocator (not estimated).
//!
//! # How it works
//!
//! The example's global allocator forwards to the system allocator and, only
//! while counting is switched on, adds every allocation's size to a signed
//! counter and subtracts every deallocation's. Counting is switched on for
//! single-threaded, quiescent measurements only, so the benchmark's timed
//! loops pay one relaxed load of a flag per allocation and nothing more.
//!
//! The per-replica overhead is the difference between an instance with
//! three replicas and one with two, with an empty structure (an empty
//! `HashMap` allocates nothing), so it leaves out the data and the log's
//! entries but keeps everything a replica adds (its thread slots, locks,
//! scratch buffers, and its share of the log's bookkeeping). One replica is
//! not a baseline: a one-replica instance has no log at all.

use crate::systems::{NrD, OldD, OLD_LOG_BYTES};
use crate::workload::{HashSeq, WriteOp};
use noderep::topology::Topology;
use noderep::ReplicaPolicy;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::Arc;

/// The counting allocator.
pub struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours, forwarded.
        let p = unsafe { System.alloc(layout) };
        // Relaxed: a statistic read after the measured code finished on the
        // same thread.
        if !p.is_null() && ON.load(Ordering::Relaxed) {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { System.alloc_zeroed(layout) };
        // Relaxed: see `alloc`.
        if !p.is_null() && ON.load(Ordering::Relaxed) {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) };
        // Relaxed: see `alloc`.
        if ON.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        // Relaxed: see `alloc`.
        if !p.is_null() && ON.load(Ordering::Relaxed) {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

/// Net bytes allocated by `f` and still held by what it returns (the value
/// is returned so that it is dropped after counting stops).
fn retained<T>(f: impl FnOnce() -> T) -> (isize, T) {
    // Relaxed: single-threaded measurement (see the module docs).
    LIVE.store(0, Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
    let v = f();
    ON.store(false, Ordering::Relaxed);
    (LIVE.load(Ordering::Relaxed), v)
}

/// The memory figures of the report.
#[derive(Debug, Clone)]
pub struct MemoryReport {
    /// noderep: bytes per extra replica (64 thread slots), data excluded.
    pub noderep_per_replica: isize,
    /// noderep: bytes of an instance with one replica (which has no log).
    pub noderep_one_replica: isize,
    /// noderep: log capacity of the two- and three-replica instances.
    pub noderep_log_entries: usize,
    /// node-replication 0.1.1: bytes per replica (256 thread slots, fixed).
    pub old_per_replica: isize,
    /// node-replication 0.1.1: bytes of its log (32 MiB default).
    pub old_log: isize,
    /// Registered threads per replica when measuring (tokens held).
    pub threads_registered: usize,
}

/// Measures both libraries with an empty hashmap and the benchmark's
/// operation type, holding `threads` registered threads per replica.
pub fn measure(threads: usize) -> Result<MemoryReport, noderep::NrError> {
    let topo = Topology::simulated(1, 1).map_err(|e| noderep::NrError::Topology(e.to_string()))?;
    let build = |r: usize| {
        noderep::NrBuilder::new()
            .topology(topo.clone())
            .replicas(ReplicaPolicy::Fixed(r))
            .max_threads_per_replica(64)
            .build(|_| NrD(HashSeq::default()))
    };
    // Warm up anything lazily allocated once per process (thread spawning
    // for first-touch placement, the topology's buffers).
    drop(build(1)?);
    let (one, nr1) = retained(|| build(1));
    let nr1 = nr1?;
    let (two, nr2) = retained(|| build(2));
    let nr2 = nr2?;
    let (three, nr3) = retained(|| build(3));
    let nr3 = nr3?;
    let entries = nr2.log_capacity();
    debug_assert_eq!(entries, nr3.log_capacity(), "same log in both");
    // Registered threads: one thread may hold several tokens (one slot
    // each), so the main thread registers `threads` times and holds them.
    let n = threads.min(64);
    let (reg, tokens) = retained(|| {
        (0..n)
            .map(|_| nr2.register_on(1))
            .collect::<Result<Vec<_>, _>>()
    });
    drop(tokens?);
    drop((nr1, nr2, nr3));

    let (old_log, log) =
        retained(|| Arc::new(node_replication::Log::<WriteOp>::new(OLD_LOG_BYTES)));
    let (o1, r1) =
        retained(|| node_replication::Replica::with_data(&log, OldD(HashSeq::default())));
    let (o2, r2) =
        retained(|| node_replication::Replica::with_data(&log, OldD(HashSeq::default())));
    let (oreg, registered) = retained(|| (0..n).filter_map(|_| r2.register()).count());
    drop((r1, r2));
    debug_assert_eq!(registered, n);

    Ok(MemoryReport {
        noderep_per_replica: (three - two) + reg,
        noderep_one_replica: one,
        noderep_log_entries: entries,
        old_per_replica: (o1 + o2) / 2 + oreg,
        old_log,
        threads_registered: n,
    })
}
