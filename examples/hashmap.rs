//! Quick start: a `HashMap` made concurrent and NUMA-aware with noderep.
//!
//! Run: `cargo run --release --example hashmap`
//! Try several replicas on a one-node machine: `NODEREP_TOPOLOGY=2x1 cargo run --release --example hashmap`
//!
//! The second half runs the same map split into lanes (`noderep::nr::lanes`):
//! one log per lane, keys spread over the lanes, so writers of different
//! keys do not queue behind one combiner; `len` and `clear` are all-lane
//! operations.

use noderep::nr::lanes::{Lane, LaneMap, LanesBuilder};
use noderep::{Dispatch, NodeReplicated, NrBuilder};
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

/// One lane's share of the lane-partitioned map.
#[derive(Default)]
struct Shard(HashMap<u64, u64>);

/// Reads of the lane-partitioned map: a lookup borrows the key.
#[derive(Clone, Copy)]
enum Read<'a> {
    Get(&'a u64),
    /// All lanes: the number of entries.
    Len,
}

/// Writes of the lane-partitioned map.
#[derive(Clone)]
enum ShardWrite {
    Put(u64, u64),
    /// All lanes: empty the map.
    Clear,
}

impl Dispatch for Shard {
    type ReadOperation<'a> = Read<'a>;
    type WriteOperation = ShardWrite;
    /// A value for `Get`, the count for `Len`.
    type Response = Option<u64>;

    fn dispatch(&self, op: Read<'_>) -> Option<u64> {
        match op {
            Read::Get(k) => self.0.get(k).copied(),
            Read::Len => Some(self.0.len() as u64),
        }
    }

    fn dispatch_mut(&mut self, op: ShardWrite) -> Option<u64> {
        match op {
            ShardWrite::Put(k, v) => self.0.insert(k, v),
            ShardWrite::Clear => {
                self.0.clear();
                None
            }
        }
    }
}

/// Which lane each operation needs: a key's operations conflict only with
/// the same key's, so the key picks the lane; `len` and `clear` need all.
impl LaneMap for Shard {
    fn write_lane(op: &ShardWrite) -> Lane {
        match op {
            ShardWrite::Put(k, _) => Lane::One(*k),
            ShardWrite::Clear => Lane::All,
        }
    }

    fn read_lane(op: &Read<'_>) -> Lane {
        match op {
            Read::Get(k) => Lane::One(**k),
            Read::Len => Lane::All,
        }
    }

    /// `len` of the whole map is the sum over the lanes.
    fn merge_responses(acc: Option<u64>, next: Option<u64>) -> Option<u64> {
        match (acc, next) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
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
    run_lanes(threads, ops_per_thread)
}

/// The same workload on a lane-partitioned map.
fn run_lanes(threads: usize, ops_per_thread: u64) -> Result<(), Box<dyn std::error::Error>> {
    // A few lanes per writing thread: two writers meet on a lane with
    // probability 1/lanes (`LanesBuilder::lanes`).
    let lanes = (4 * threads).clamp(2, LanesBuilder::<Shard>::MAX_LANES);
    let map = LanesBuilder::new(NrBuilder::new())
        .lanes(lanes)
        .build(|_replica, _lane| Shard::default())?;
    println!(
        "\nlanes: {} lane(s) x {} replica(s), {threads} thread(s)",
        map.num_lanes(),
        map.num_replicas()
    );
    let start = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|t| {
                let map = &map;
                s.spawn(move || -> Result<u64, noderep::ExecError> {
                    let token = map.register().expect("a free thread slot");
                    let mut hits = 0;
                    for i in 0..ops_per_thread {
                        let key = (t * 7919 + i) % 10_000;
                        if i % 10 == 0 {
                            map.execute_mut(ShardWrite::Put(key, i), &token)?;
                        } else if map.execute(Read::Get(&key), &token)?.is_some() {
                            hits += 1;
                        }
                    }
                    Ok(hits)
                })
            })
            .collect();
        for h in handles {
            let hits = h.join().expect("worker panicked").expect("no poisoning");
            println!("worker: {hits} read hits");
        }
    });
    let elapsed = start.elapsed();
    let total = threads as f64 * ops_per_thread as f64;
    println!(
        "{total:.0} operations (10% writes) in {:.2?}: {:.1} Mop/s",
        elapsed,
        total / elapsed.as_secs_f64() / 1e6
    );
    let token = map.register()?;
    let len = map.execute(Read::Len, &token)?;
    println!("len (an all-lane read): {len:?}");
    map.execute_mut(ShardWrite::Clear, &token)?;
    let after = map.execute(Read::Len, &token)?;
    println!("len after clear (an all-lane write): {after:?}");
    assert_eq!(after, Some(0), "clear empties every lane");
    Ok(())
}
