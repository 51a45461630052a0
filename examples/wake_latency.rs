//! The latency of the first operation on a parked replica, which rebuilds
//! it from a live one (`Dispatch::snapshot`), against a normal operation.
//!
//! `cargo run --release --example wake_latency [KEYS] [ROUNDS]` (defaults:
//! 100000 keys, 20 rounds): each round fills a two-replica hash map of KEYS
//! entries, writes until the idle replica is parked (the log fills once),
//! then times the first read on the parked replica and a second read.

use noderep::topology::Topology;
use noderep::{Dispatch, NrBuilder};
use std::collections::HashMap;
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
    fn dispatch_mut(&mut self, Put(k, v): Put) -> Option<u64> {
        self.0.insert(k, v)
    }
    fn snapshot(&self) -> Option<Self> {
        Some(self.clone())
    }
}

fn arg(i: usize, default: u64) -> u64 {
    match std::env::args().nth(i).map(|s| s.parse()) {
        None => default,
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            eprintln!("error: argument {i} must be a whole number ({e})");
            std::process::exit(2);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys = arg(1, 100_000);
    let rounds = arg(2, 20).max(1);
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let nr = NrBuilder::new()
            .topology(Topology::simulated(2, 1)?)
            .build(|_| Map(HashMap::new()))?;
        let t0 = nr.register_on(0)?;
        let t1 = nr.register_on(1)?;
        for k in 0..keys {
            nr.execute_mut(Put(k, k), &t0)?;
        }
        // Writes from replica 0 only, until replica 1 has been parked.
        let mut k = 0;
        while nr.live_replicas() == 2 {
            nr.execute_mut(Put(k % keys, k), &t0)?;
            k += 1;
        }
        let s = Instant::now();
        let v = nr.execute(keys - 1, &t1)?;
        first.push(s.elapsed());
        assert!(v.is_some(), "the rebuilt replica holds every key");
        let s = Instant::now();
        nr.execute(keys - 1, &t1)?;
        second.push(s.elapsed());
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "{keys} keys, {rounds} rounds: first read on a parked replica (rebuild) median {:?}, max {:?}; \
         the next read median {:?}",
        median(&mut first),
        first.iter().max().copied().unwrap_or_default(),
        median(&mut second)
    );
    Ok(())
}
