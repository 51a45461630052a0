//! Probe: two replicas, one thread each, both pinned to CPU 0, a 50/50 mix;
//! prints each thread's operations and worst operation (wall clock).
use noderep::topology::Topology;
use noderep::{Dispatch, ReplicaPolicy};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Default, Clone)]
struct Map(HashMap<u64, u64>);
#[derive(Clone)]
struct Put(u64, u64);
impl Dispatch for Map {
    type ReadOperation<'a> = u64;
    type WriteOperation = Put;
    type Response = Option<u64>;
    fn dispatch(&self, k: u64) -> Option<u64> {
        self.0.get(&k).copied()
    }
    fn dispatch_mut(&mut self, p: Put) -> Option<u64> {
        self.0.insert(p.0, p.1)
    }
}

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let nr = noderep::NrBuilder::new()
        .topology(Topology::simulated(2, 1).unwrap())
        .replicas(ReplicaPolicy::PerNode)
        .log_capacity(
            std::env::args()
                .nth(2)
                .and_then(|s| s.parse().ok())
                .unwrap_or(4096),
        )
        .max_threads_per_replica(4)
        .build(|_| Map::default())
        .unwrap();
    let stop = AtomicBool::new(false);
    let ops = [AtomicU64::new(0), AtomicU64::new(0)];
    let worst = [AtomicU64::new(0), AtomicU64::new(0)];
    std::thread::scope(|s| {
        for t in 0..2usize {
            let (nr, stop, ops, worst) = (&nr, &stop, &ops, &worst);
            s.spawn(move || {
                noderep::topology::pin_to_cpu(0).ok();
                let tok = nr.register_on(t).unwrap();
                let mut x = t as u64 * 7919 + 1;
                let mut n = 0u64;
                let mut w = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = x % 100_000;
                    let t0 = Instant::now();
                    if x & 1 == 0 {
                        nr.execute_mut(Put(k, n), &tok).unwrap();
                    } else {
                        nr.execute(k, &tok).unwrap();
                    }
                    let d = t0.elapsed().as_micros() as u64;
                    if d > w {
                        w = d;
                    }
                    n += 1;
                }
                ops[t].store(n, Ordering::Relaxed);
                worst[t].store(w, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
    });
    for t in 0..2 {
        println!(
            "thread {t}: ops {} worst {} us",
            ops[t].load(Ordering::Relaxed),
            worst[t].load(Ordering::Relaxed)
        );
    }
}
