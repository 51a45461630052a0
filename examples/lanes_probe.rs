//! Do lanes scale writes on this machine? Two threads (pinned to CPUs 0
//! and 1) write a 100k-key hash map through one log (`noderep/1`), through
//! two lanes of one replica, and into a `dashmap` (the peer), first with
//! random keys (each write goes to either lane), then with keys partitioned
//! so that each thread's keys are all in its own lane. Prints Mop/s per
//! round and the ratios.
//!
//! ```text
//! cargo run --release --example lanes_probe [random|partitioned] [rounds] [lanes] [system]
//! ```
//!
//! `lanes` (default 2) is the number of lanes, and of locks of the
//! `spinlocks` row; `system` (`one-log`, `lanes`, `spinlocks` or
//! `dashmap`) runs only that one, for profiling.
//!
//! The `spinlocks` row is the ceiling of any design that runs the user's
//! sequential insert under one lock per lane: one test-and-test-and-set
//! spinlock per lane over a plain `HashMap` shard, nothing else (no
//! readers-writer lock, no slots, no poisoning). Lanes cannot beat it with
//! the same number of lanes; `dashmap` hashes the key before it takes its
//! shard lock and has 4 shards per CPU (8 here).
//!
//! With random keys the two writers meet on one lane's lock half of the
//! time, and each lane's lock, shard and slots move between the two cores'
//! caches on every other write, while one combiner keeps the single map in
//! the cache of whichever thread combines; with partitioned keys each shard
//! stays with its thread. README ("Lanes") has the figures.
use noderep::nr::lanes::{Lane, LaneMap, LanesBuilder};
use noderep::{Dispatch, NrBuilder, ReplicaPolicy};
use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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

fn lanes(partitioned: bool, lanes: u64) -> f64 {
    let nr = LanesBuilder::new(NrBuilder::new().replicas(ReplicaPolicy::Fixed(1)))
        .lanes(lanes as usize)
        .build(|_, lane| prefilled(lanes, lane as u64))
        .expect("lanes of one replica");
    two_writers(
        partitioned,
        || nr.register().expect("a free slot"),
        |token, op| {
            nr.execute_mut(op, token).expect("not poisoned");
        },
    )
}

/// One shard of the `spinlocks` ceiling: a spinlock and the map it guards.
struct Locked {
    busy: AtomicBool,
    map: UnsafeCell<M>,
}

// SAFETY: `map` is touched only by the thread that holds `busy`.
unsafe impl Sync for Locked {}

/// The ceiling (module docs): `lanes` spinlocks over `lanes` shards.
fn spinlocks(partitioned: bool, lanes: u64) -> f64 {
    let shards: Vec<Locked> = (0..lanes)
        .map(|lane| Locked {
            busy: AtomicBool::new(false),
            map: UnsafeCell::new(prefilled(lanes, lane)),
        })
        .collect();
    two_writers(
        partitioned,
        || (),
        |_, (k, v)| {
            let shard = &shards[(k % lanes) as usize];
            // Acquire: pairs with the Release below; the previous holder's
            // insert is visible to ours.
            while shard
                .busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                // Relaxed: only a hint to try the CAS again.
                while shard.busy.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            }
            // SAFETY: we hold the shard's lock.
            unsafe { (*shard.map.get()).0.insert(k, v) };
            // Release: our insert happens before the next holder's.
            shard.busy.store(false, Ordering::Release);
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
    // `lanes_probe [random|partitioned] [rounds] [lanes] [system]`: one key
    // pattern only (for profiling); default both, 3 rounds, 2 lanes, every
    // system.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let patterns: &[bool] = match args.first().map(String::as_str) {
        Some("random") => &[false],
        Some("partitioned") => &[true],
        _ => &[false, true],
    };
    let rounds: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(3);
    let lane_count: u64 = args.get(2).and_then(|l| l.parse().ok()).unwrap_or(2);
    if !(1..=LanesBuilder::<M>::MAX_LANES as u64).contains(&lane_count) {
        eprintln!(
            "lanes_probe: lanes must be between 1 and {} (got {lane_count})",
            LanesBuilder::<M>::MAX_LANES
        );
        std::process::exit(2);
    }
    let only = args.get(3).map(String::as_str);
    let runs = |name: &str| only.is_none_or(|o| o == name);
    let measure = |name: &str, f: &dyn Fn() -> f64| if runs(name) { f() } else { f64::NAN };
    for round in 0..rounds {
        for &partitioned in patterns {
            let one = measure("one-log", &|| one_log(partitioned));
            let lanes = measure("lanes", &|| lanes(partitioned, lane_count));
            let spin = measure("spinlocks", &|| spinlocks(partitioned, lane_count));
            let peer = measure("dashmap", &|| dashmap(partitioned));
            println!(
                "round {round} partitioned={partitioned} lanes={lane_count}: noderep/1 {one:.1} Mop/s, \
                 lanes/1 {lanes:.1}, spinlocks {spin:.1}, dashmap {peer:.1}; \
                 lanes/noderep/1 {:.2}, lanes/spinlocks {:.2}, lanes/dashmap {:.2}, spinlocks/dashmap {:.2}",
                lanes / one,
                lanes / spin,
                lanes / peer,
                spin / peer
            );
        }
    }
}
