//! Quick start: a `HashMap` made concurrent and NUMA-aware with noderep.
//!
//! Run: `cargo run --release --example hashmap`
//! Try several replicas on a one-node machine: `NODEREP_TOPOLOGY=2x1 cargo run --release --example hashmap`

use noderep::{Dispatch, NodeReplicated};
use std::collections::HashMap;
use std::time::Instant;

/// The sequential structure: a plain map.
#[derive(Default)]
struct Map(HashMap<u64, u64>);

/// Writes are values: they go through the shared log to every replica.
#[derive(Clone)]
enum Write {
    Put(u64, u64),
    Remove(u64),
}

impl Dispatch for Map {
    type ReadOperation<'a> = &'a u64;
    type WriteOperation = Write;
    type Response = Option<u64>;

    fn dispatch(&self, key: &u64) -> Option<u64> {
        self.0.get(key).copied()
    }

    fn dispatch_mut(&mut self, op: Write) -> Option<u64> {
        match op {
            Write::Put(k, v) => self.0.insert(k, v),
            Write::Remove(k) => self.0.remove(&k),
        }
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let map = NodeReplicated::new(|_replica| Map::default())?;
    let threads = std::thread::available_parallelism()?.get();
    println!("{} replica(s), {threads} thread(s)", map.num_replicas());

    let ops_per_thread = 1_000_000u64;
    let start = Instant::now();
    std::thread::scope(|s| -> Result<(), noderep::NrError> {
        let mut handles = Vec::new();
        for t in 0..threads as u64 {
            let map = &map;
            handles.push(s.spawn(move || -> Result<u64, noderep::ExecError> {
                let token = map.register().expect("a free thread slot");
                let mut hits = 0;
                for i in 0..ops_per_thread {
                    let key = (t * 7919 + i) % 10_000;
                    if i % 10 == 0 {
                        map.execute_mut(Write::Put(key, i), &token)?;
                    } else if map.execute(&key, &token)?.is_some() {
                        hits += 1;
                    }
                }
                map.execute_mut(Write::Remove(t), &token)?;
                Ok(hits)
            }));
        }
        for h in handles {
            let hits = h.join().expect("worker panicked").expect("no poisoning");
            println!("worker: {hits} read hits");
        }
        Ok(())
    })?;
    let elapsed = start.elapsed();
    let total = threads as f64 * ops_per_thread as f64;
    println!(
        "{total:.0} operations (10% writes) in {:.2?}: {:.1} Mop/s",
        elapsed,
        total / elapsed.as_secs_f64() / 1e6
    );
    let token = map.register()?;
    let sizes = map.sync_and_inspect(&token, |_, m| m.0.len())?;
    println!("replica sizes at quiescence: {sizes:?}");
    assert!(sizes.iter().all(|&n| n == sizes[0]), "replicas must agree");
    Ok(())
}
