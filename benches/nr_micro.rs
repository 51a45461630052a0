//! Micro-benchmarks of noderep's paths, one thread, peers in the same group:
//!
//! * `read_path`: a hashmap lookup through noderep, node-replication 0.1.1,
//!   std/parking_lot locks, and the bare `HashMap::get` floor;
//! * `write_path`: a hashmap insert (overwrite) through the same;
//! * `log_append`: a write to a trivial structure (add to a counter), so the
//!   figure is the cost of the write path itself: with one replica (combiner
//!   and apply, no log) and with two (log append, apply on both: the second
//!   replica has no thread, so the writer applies the log to it too), against
//!   a Mutex and a bare atomic add;
//! * `rwlock`: a read of a trivial structure, so the figure is the read
//!   path's lock, against std, parking_lot and crossbeam readers-writer locks.
//!
//! Run: `cargo bench --bench nr_micro` (or `scripts/bench.sh`).

use criterion::{criterion_group, criterion_main, Criterion};
use noderep::topology::Topology;
use noderep::{Dispatch, NodeReplicated, NrBuilder, ReplicaPolicy};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

const KEYS: u64 = 100_000;

/// A hashmap, for both libraries.
#[derive(Default, Clone)]
struct Map(HashMap<u64, u64>);

#[derive(Clone, Copy, Debug, PartialEq)]
struct Put(u64, u64);

#[derive(Clone, Copy, Debug, PartialEq)]
struct Get(u64);

impl Dispatch for Map {
    type ReadOperation<'a> = Get;
    type WriteOperation = Put;
    type Response = Option<u64>;
    fn dispatch(&self, op: Get) -> Option<u64> {
        self.0.get(&op.0).copied()
    }
    fn dispatch_mut(&mut self, op: Put) -> Option<u64> {
        self.0.insert(op.0, op.1)
    }
}

impl node_replication::Dispatch for Map {
    type ReadOperation = Get;
    type WriteOperation = Put;
    type Response = Option<u64>;
    fn dispatch(&self, op: Get) -> Option<u64> {
        self.0.get(&op.0).copied()
    }
    fn dispatch_mut(&mut self, op: Put) -> Option<u64> {
        self.0.insert(op.0, op.1)
    }
}

/// A counter: the cheapest possible structure.
#[derive(Default, Clone)]
struct Counter(u64);

impl Dispatch for Counter {
    type ReadOperation<'a> = ();
    type WriteOperation = u64;
    type Response = u64;
    fn dispatch(&self, _: ()) -> u64 {
        self.0
    }
    fn dispatch_mut(&mut self, add: u64) -> u64 {
        self.0 = self.0.wrapping_add(add);
        self.0
    }
}

impl node_replication::Dispatch for Counter {
    type ReadOperation = ();
    type WriteOperation = u64;
    type Response = u64;
    fn dispatch(&self, _: ()) -> u64 {
        self.0
    }
    fn dispatch_mut(&mut self, add: u64) -> u64 {
        self.0 = self.0.wrapping_add(add);
        self.0
    }
}

fn prefilled() -> Map {
    Map((0..KEYS).map(|k| (k, k)).collect())
}

/// Keys visited round-robin (pre-generated: no RNG in the timed loop).
fn keys() -> Vec<u64> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % KEYS
        })
        .collect()
}

/// `d` replicated `n` times, on a simulated topology of `n` one-core nodes.
fn replicated<D>(d: D, n: usize) -> NodeReplicated<D>
where
    D: Dispatch + Clone + Send + Sync,
    D::WriteOperation: Send + Sync,
    D::Response: Send,
{
    NrBuilder::new()
        .topology(Topology::simulated(n, 1).expect("n x 1 topology"))
        .replicas(ReplicaPolicy::Fixed(n))
        .build(|_| d.clone())
        .expect("valid noderep settings")
}

fn old_replica<D>(
    d: D,
) -> (
    Arc<node_replication::Replica<'static, D>>,
    node_replication::ReplicaToken,
)
where
    D: node_replication::Dispatch + Sync + Default,
{
    let log = Arc::new(node_replication::Log::<D::WriteOperation>::new(
        32 * 1024 * 1024,
    ));
    let r = node_replication::Replica::with_data(&log, d);
    let t = r.register().expect("a node-replication slot");
    (r, t)
}

fn read_path(c: &mut Criterion) {
    let keys = keys();
    let mut g = c.benchmark_group("read_path");
    let mut i = 0usize;
    let mut next = move || {
        i = (i + 1) & 4095;
        i
    };
    let bare = prefilled();
    g.bench_function("bare HashMap::get", |b| {
        b.iter(|| black_box(bare.0.get(&keys[next()]).copied()))
    });
    let nr = replicated(prefilled(), 1);
    let tok = nr.register().expect("slot");
    g.bench_function("noderep", |b| {
        b.iter(|| black_box(nr.execute(Get(keys[next()]), &tok)))
    });
    let (old, otok) = old_replica(prefilled());
    g.bench_function("node-replication 0.1.1", |b| {
        b.iter(|| black_box(old.execute(Get(keys[next()]), otok)))
    });
    let rw = RwLock::new(prefilled());
    g.bench_function("std RwLock", |b| {
        b.iter(|| black_box(rw.read().expect("unpoisoned").0.get(&keys[next()]).copied()))
    });
    let mx = Mutex::new(prefilled());
    g.bench_function("std Mutex", |b| {
        b.iter(|| black_box(mx.lock().expect("unpoisoned").0.get(&keys[next()]).copied()))
    });
    let pl = parking_lot::RwLock::new(prefilled());
    g.bench_function("parking_lot RwLock", |b| {
        b.iter(|| black_box(pl.read().0.get(&keys[next()]).copied()))
    });
    g.finish();
}

fn write_path(c: &mut Criterion) {
    let keys = keys();
    let mut g = c.benchmark_group("write_path");
    let mut i = 0usize;
    let mut next = move || {
        i = (i + 1) & 4095;
        i
    };
    let mut bare = prefilled();
    g.bench_function("bare HashMap::insert", |b| {
        b.iter(|| {
            let k = keys[next()];
            black_box(bare.0.insert(k, k))
        })
    });
    let nr = replicated(prefilled(), 1);
    let tok = nr.register().expect("slot");
    g.bench_function("noderep", |b| {
        b.iter(|| {
            let k = keys[next()];
            black_box(nr.execute_mut(Put(k, k), &tok))
        })
    });
    let (old, otok) = old_replica(prefilled());
    g.bench_function("node-replication 0.1.1", |b| {
        b.iter(|| {
            let k = keys[next()];
            black_box(old.execute_mut(Put(k, k), otok))
        })
    });
    let mx = Mutex::new(prefilled());
    g.bench_function("std Mutex", |b| {
        b.iter(|| {
            let k = keys[next()];
            black_box(mx.lock().expect("unpoisoned").0.insert(k, k))
        })
    });
    let rw = RwLock::new(prefilled());
    g.bench_function("std RwLock", |b| {
        b.iter(|| {
            let k = keys[next()];
            black_box(rw.write().expect("unpoisoned").0.insert(k, k))
        })
    });
    g.finish();
}

fn log_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("log_append");
    let nr = replicated(Counter::default(), 1);
    let tok = nr.register().expect("slot");
    g.bench_function("noderep write (counter)", |b| {
        b.iter(|| black_box(nr.execute_mut(black_box(1), &tok)))
    });
    let nr2 = replicated(Counter::default(), 2);
    let tok2 = nr2.register_on(0).expect("slot");
    g.bench_function("noderep write, 2 replicas, log (counter)", |b| {
        b.iter(|| black_box(nr2.execute_mut(black_box(1), &tok2)))
    });
    let (old, otok) = old_replica(Counter::default());
    g.bench_function("node-replication 0.1.1 write (counter)", |b| {
        b.iter(|| black_box(old.execute_mut(black_box(1), otok)))
    });
    let mx = Mutex::new(0u64);
    g.bench_function("std Mutex<u64> add", |b| {
        b.iter(|| {
            let mut v = mx.lock().expect("unpoisoned");
            *v += black_box(1);
            black_box(*v)
        })
    });
    let at = AtomicU64::new(0);
    g.bench_function("AtomicU64 fetch_add", |b| {
        b.iter(|| black_box(at.fetch_add(black_box(1), Ordering::SeqCst)))
    });
    g.finish();
}

fn rwlock(c: &mut Criterion) {
    let mut g = c.benchmark_group("rwlock");
    let nr = replicated(Counter(7), 1);
    let tok = nr.register().expect("slot");
    g.bench_function("noderep read (counter)", |b| {
        b.iter(|| black_box(nr.execute((), &tok)))
    });
    let (old, otok) = old_replica(Counter(7));
    g.bench_function("node-replication 0.1.1 read (counter)", |b| {
        b.iter(|| black_box(old.execute((), otok)))
    });
    let rw = RwLock::new(7u64);
    g.bench_function("std RwLock read", |b| {
        b.iter(|| black_box(*rw.read().expect("unpoisoned")))
    });
    let pl = parking_lot::RwLock::new(7u64);
    g.bench_function("parking_lot RwLock read", |b| {
        b.iter(|| black_box(*pl.read()))
    });
    let sl = crossbeam_utils::sync::ShardedLock::new(7u64);
    g.bench_function("crossbeam ShardedLock read", |b| {
        b.iter(|| black_box(*sl.read().expect("unpoisoned")))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = read_path, write_path, log_append, rwlock
}
criterion_main!(benches);
