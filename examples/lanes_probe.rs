//! Do lanes scale writes on this machine? Two threads (pinned to CPUs 0
//! and 1) write a 100k-key hash map through one log (`noderep/1`), through
//! two lanes of one replica, and into a `dashmap` (the peer), first with
//! random keys (each write goes to either lane), then with keys partitioned
//! so that each thread's keys are all in its own lane. Prints Mop/s per
//! round and the ratios.
//!
//! ```text
//! cargo run --release --example lanes_probe [random|partitioned] [rounds]
//! ```
//!
//! With random keys the two writers meet on one lane's lock half of the
//! time, and each lane's lock, shard and slots move between the two cores'
//! caches on every other write, while one combiner keeps the single map in
//! the cache of whichever thread combines; with partitioned keys each shard
//! stays with its thread. README ("Lanes") has the figures.
use noderep::nr::lanes::{Lane, LaneMap, LanesBuilder};
use noderep::{Dispatch, NrBuilder, ReplicaPolicy};
use std::collections::HashMap;
use std::sync::Barrier;
use std::time::{Duration, Instant};

#[derive(Default, Clone)]
struct M(HashMap<u64, u64>);
impl Dispatch for M {
    type ReadOperation<'a> = u64;
    type WriteOperation = (u64, u64);
    type Response = u64;
    fn dispatch(&self, k: u64) -> u64 {
        self.0.get(&k).copied().unwrap_or(0)
    }
    fn dispatch_mut(&mut self, (k, v): (u64, u64)) -> u64 {
        self.0.insert(k, v).unwrap_or(0)
    }
}
impl LaneMap for M {
    fn write_lane(op: &(u64, u64)) -> Lane {
        Lane::One(op.0)
    }
    fn read_lane(k: &u64) -> Lane {
        Lane::One(*k)
    }
    fn merge_responses(a: u64, b: u64) -> u64 {
        a + b
    }
}

const KEYS: u64 = 100_000;
const DURATION: Duration = Duration::from_millis(400);

/// Thread `t`'s keys (xorshift), all of parity `t` when `partitioned`.
fn keys(t: u64, partitioned: bool) -> Vec<u64> {
    let mut x = 0x9e3779b97f4a7c15u64 ^ t;
    (0..1 << 16)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = x % KEYS;
            if partitioned {
                (k & !1) | t
            } else {
                k
            }
        })
        .collect()
}

/// Two threads pinned to CPUs 0 and 1 write for `DURATION`; `register`
/// makes a thread's token and `write` runs one write with it. Returns Mop/s.
fn two_writers<T>(
    partitioned: bool,
    register: impl Fn() -> T + Sync,
    write: impl Fn(&T, (u64, u64)) + Sync,
) -> f64 {
    let barrier = Barrier::new(2);
    let ops: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2u64)
            .map(|t| {
                let (barrier, register, write) = (&barrier, &register, &write);
                s.spawn(move || {
                    // Best effort: unpinned threads still measure something.
                    let _ = noderep::topology::pin_to_cpu(t as usize);
                    let token = register();
                    let ks = keys(t, partitioned);
                    barrier.wait();
                    let start = Instant::now();
                    let mut n = 0u64;
                    while start.elapsed() < DURATION {
                        for &k in &ks[..1024] {
                            write(&token, (k, n));
                        }
                        n += 1024;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    ops as f64 / DURATION.as_secs_f64() / 1e6
}

/// A map holding the keys `k < KEYS` with `k % parts == part`.
fn prefilled(parts: u64, part: u64) -> M {
    M((0..KEYS)
        .filter(|k| k % parts == part)
        .map(|k| (k, k))
        .collect())
}

fn one_log(partitioned: bool) -> f64 {
    let nr = NrBuilder::new()
        .replicas(ReplicaPolicy::Fixed(1))
        .build(|_| prefilled(1, 0))
        .expect("one replica");
    two_writers(
        partitioned,
        || nr.register().expect("a free slot"),
        |token, op| {
            nr.execute_mut(op, token).expect("not poisoned");
        },
    )
}

fn two_lanes(partitioned: bool) -> f64 {
    let nr = LanesBuilder::new(NrBuilder::new().replicas(ReplicaPolicy::Fixed(1)))
        .lanes(2)
        .build(|_, lane| prefilled(2, lane as u64))
        .expect("two lanes of one replica");
    two_writers(
        partitioned,
        || nr.register().expect("a free slot"),
        |token, op| {
            nr.execute_mut(op, token).expect("not poisoned");
        },
    )
}

/// The peer: a sharded concurrent map (`dashmap`, default shards), the
/// same writes.
fn dashmap(partitioned: bool) -> f64 {
    let map: dashmap::DashMap<u64, u64> = (0..KEYS).map(|k| (k, k)).collect();
    two_writers(
        partitioned,
        || (),
        |_, (k, v)| {
            map.insert(k, v);
        },
    )
}

fn main() {
    // `lanes_probe [random|partitioned] [rounds]`: one key pattern only
    // (for profiling); default both, 3 rounds.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let patterns: &[bool] = match args.first().map(String::as_str) {
        Some("random") => &[false],
        Some("partitioned") => &[true],
        _ => &[false, true],
    };
    let rounds: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(3);
    for round in 0..rounds {
        for &partitioned in patterns {
            let one = one_log(partitioned);
            let lanes = two_lanes(partitioned);
            let peer = dashmap(partitioned);
            println!(
                "round {round} partitioned={partitioned}: noderep/1 {one:.1} Mop/s, lanes/1 {lanes:.1} Mop/s, dashmap {peer:.1} Mop/s; lanes/noderep/1 {:.2}, lanes/dashmap {:.2}",
                lanes / one,
                lanes / peer
            );
        }
    }
}
