//! The one-thread read path, measured so that a noisy machine hurts every
//! contender alike: a bare `HashMap::get`, noderep (default and
//! `read_mostly`), node-replication 0.1.1, noderep lanes (one replica, 1
//! and 2 lanes) and the bare map split in two by key parity (the layout of
//! the 2-lane shards, without noderep) take turns in short runs on
//! one pinned thread, round after round, and the report gives each one's
//! median and its cost relative to the bare map, both as a ratio of medians
//! and as the median of the per-round ratios.
//!
//! Run: `cargo run --release --example read_path_ab [-- ROUNDS [KEYS]]`
//! (defaults: 15 rounds, 100,000 keys; about 10 s; `-- --help` for help).

use clap::Parser;
use noderep::nr::lanes::{Lane, LaneMap, LanesBuilder};
use noderep::{Dispatch, NrBuilder};
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

#[derive(Default, Clone)]
struct Map(HashMap<u64, u64>);

impl Dispatch for Map {
    type ReadOperation<'a> = u64;
    type WriteOperation = (u64, u64);
    type Response = Option<u64>;
    fn dispatch(&self, k: u64) -> Option<u64> {
        self.0.get(&k).copied()
    }
    fn dispatch_mut(&mut self, (k, v): (u64, u64)) -> Option<u64> {
        self.0.insert(k, v)
    }
}

impl LaneMap for Map {
    fn write_lane(op: &(u64, u64)) -> Lane {
        Lane::One(op.0)
    }
    fn read_lane(k: &u64) -> Lane {
        Lane::One(*k)
    }
    fn merge_responses(a: Option<u64>, b: Option<u64>) -> Option<u64> {
        a.or(b)
    }
}

#[derive(Default, Clone)]
struct OldMap(HashMap<u64, u64>);

impl node_replication::Dispatch for OldMap {
    type ReadOperation = u64;
    type WriteOperation = (u64, u64);
    type Response = Option<u64>;
    fn dispatch(&self, k: u64) -> Option<u64> {
        self.0.get(&k).copied()
    }
    fn dispatch_mut(&mut self, (k, v): (u64, u64)) -> Option<u64> {
        self.0.insert(k, v)
    }
}

/// Reads per run.
const READS: usize = 2_000_000;

/// The one-thread read path of a bare map, noderep (default and
/// read_mostly) and node-replication 0.1.1, measured in alternating rounds.
#[derive(Parser)]
#[command(long_about = None)]
struct Cli {
    /// Rounds; each runs every contender once.
    #[arg(default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Keys in the map (the reads are spread uniformly over them).
    #[arg(default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Cli { rounds, keys } = Cli::parse();
    let rounds = usize::try_from(rounds)?;
    if let Err(e) = noderep::topology::pin_to_cpu(0) {
        eprintln!("note: not pinned ({e}); figures will be noisier");
    }
    let mut proto = Map::default();
    for k in 0..keys {
        proto.0.insert(k, k);
    }
    let stream: Vec<u64> = (0..1u64 << 16)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) % keys)
        .collect();
    let plain = NrBuilder::new().build(|_| proto.clone())?;
    let rm = NrBuilder::new()
        .read_mostly(true)
        .build(|_| proto.clone())?;
    // The map split in two by key parity: the 2-lane shards, and the bare
    // contender with their layout.
    let halves: Vec<Map> = (0..2u64)
        .map(|half| {
            Map(proto
                .0
                .iter()
                .filter(|(k, _)| *k % 2 == half)
                .map(|(k, v)| (*k, *v))
                .collect())
        })
        .collect();
    let lanes1 = LanesBuilder::new(NrBuilder::new())
        .lanes(1)
        .build(|_, _| proto.clone())?;
    let lanes2 = LanesBuilder::new(NrBuilder::new())
        .lanes(2)
        .build(|_, lane| halves[lane].clone())?;
    let plain_token = plain.register()?;
    let rm_token = rm.register()?;
    let lanes1_token = lanes1.register()?;
    let lanes2_token = lanes2.register()?;
    let log = std::sync::Arc::new(node_replication::Log::<(u64, u64)>::new(32 << 20));
    let old = node_replication::Replica::<OldMap>::with_data(&log, OldMap(proto.0.clone()));
    let old_token = old
        .register()
        .ok_or("node-replication 0.1.1 has no free thread slot")?;
    let bare = proto.clone();

    let names = [
        "bare HashMap::get",
        "noderep",
        if rm.reads_are_fence_free() {
            "noderep read_mostly"
        } else {
            "noderep read_mostly (unavailable: fenced)"
        },
        "node-replication 0.1.1",
        "noderep lanes, 1 lane",
        "noderep lanes, 2 lanes",
        "bare, two maps by key parity",
    ];
    let mut mops: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for _ in 0..rounds {
        for (which, runs) in mops.iter_mut().enumerate() {
            let start = Instant::now();
            let mut sum = 0u64;
            for i in 0..READS {
                let k = stream[i & 0xffff];
                let got = match which {
                    0 => bare.0.get(&k).copied(),
                    1 => plain.execute(k, &plain_token)?,
                    2 => rm.execute(k, &rm_token)?,
                    3 => old.execute(k, old_token),
                    4 => lanes1.execute(k, &lanes1_token)?,
                    5 => lanes2.execute(k, &lanes2_token)?,
                    _ => halves[(k % 2) as usize].0.get(&k).copied(),
                };
                sum = sum.wrapping_add(got.unwrap_or(0));
            }
            black_box(sum);
            runs.push(READS as f64 / start.elapsed().as_secs_f64() / 1e6);
        }
    }
    println!("{rounds} rounds of {READS} reads per contender, {keys} keys, one thread");
    println!(
        "{:<42} {:>9} {:>14} {:>15}",
        "", "Mop/s", "cost vs bare", "paired by round"
    );
    for (which, name) in names.iter().enumerate() {
        let paired: Vec<f64> = (0..rounds).map(|r| mops[0][r] / mops[which][r]).collect();
        println!(
            "{:<42} {:>9.2} {:>14.2} {:>15.2}",
            name,
            median(&mops[which]),
            median(&mops[0]) / median(&mops[which]),
            median(&paired)
        );
    }
    Ok(())
}
