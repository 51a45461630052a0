//! Workloads: what the threads do, generated before any clock starts.
//!
//! A workload is a structure (hashmap, stack, ordered map), a write share and
//! a key distribution (uniform or Zipf). Each thread gets its own
//! pre-generated stream of operations ([`Op`]) that the timed loop walks
//! round-robin, so no random number is drawn while the clock runs.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// The sequential structure a workload exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Structure {
    /// `HashMap<u64, u64>`: get / insert.
    #[value(name = "hashmap")]
    HashMap,
    /// `Vec<u64>` as a stack: peek / push and pop.
    Stack,
    /// `BTreeMap<u64, u64>`: range reads / insert (a kernel address-space map).
    #[value(name = "btree")]
    BTree,
}

impl Structure {
    /// Short name used in tables and file names.
    pub fn name(self) -> &'static str {
        match self {
            Structure::HashMap => "hashmap",
            Structure::Stack => "stack",
            Structure::BTree => "btree",
        }
    }
}

/// How keys are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyDist {
    /// Every key equally likely.
    Uniform,
    /// Zipf with exponent `s`: key rank `i` has weight `1 / (i + 1)^s`.
    Zipf(f64),
}

/// One benchmark workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Workload {
    /// Which structure.
    pub structure: Structure,
    /// Percentage of operations that write (0..=100).
    pub write_pct: u32,
    /// Key distribution (ignored by the stack).
    pub dist: KeyDist,
    /// Percentage of operations that are a whole-structure `len` (an
    /// all-lane read for the lane-partitioned noderep), drawn before the
    /// read/write choice; 0 leaves the streams as they were.
    pub all_pct: u32,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.structure, self.dist) {
            (Structure::Stack, _) => write!(f, "stack/{}%w", self.write_pct)?,
            (s, KeyDist::Uniform) => write!(f, "{}/uniform/{}%w", s.name(), self.write_pct)?,
            (s, KeyDist::Zipf(z)) => write!(f, "{}/zipf{z}/{}%w", s.name(), self.write_pct)?,
        }
        if self.all_pct > 0 {
            write!(f, "+{}%len", self.all_pct)?;
        }
        Ok(())
    }
}

/// Length of the ordered map's range reads, in keys.
pub const RANGE_LEN: u64 = 16;

/// A read-only operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOp {
    /// Hashmap / ordered map lookup.
    Get(u64),
    /// Stack top.
    Peek,
    /// Ordered map: sum of the values in `[lo, lo + len)`.
    Range(u64, u64),
    /// Hashmap / ordered map: number of entries.
    Len,
}

/// A mutating operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp {
    /// Insert or overwrite.
    Put(u64, u64),
    /// Stack push.
    Push(u64),
    /// Stack pop.
    Pop,
}

/// One operation of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A read.
    Read(ReadOp),
    /// A write.
    Write(WriteOp),
}

/// What the responses encode "nothing" as (responses are plain `u64`s so
/// that no implementation pays for a bigger return value than another).
pub const NONE: u64 = u64::MAX;

/// Key space and prefill shared by every workload of a run.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Number of distinct keys.
    pub keys: u64,
    /// Keys inserted before the run (the first `prefill` keys; for the stack,
    /// the number of elements pushed).
    pub prefill: u64,
}

/// A sequential structure every implementation wraps.
pub trait Seq: Clone + Default + Send + Sync + 'static {
    /// A structure filled as `shape` says.
    fn prefilled(shape: Shape) -> Self;
    /// Runs a read.
    fn read(&self, op: ReadOp) -> u64;
    /// Runs a write.
    fn write(&mut self, op: WriteOp) -> u64;
    /// What [`write`](Self::write) would return, without writing (for
    /// left-right, whose writes return nothing).
    fn respond(&self, op: WriteOp) -> u64;
    /// The part of the structure that lane `lane` of `lanes` holds (keys
    /// `k` with `k % lanes == lane`; the stack lives in lane 0).
    fn lane_part(&self, lanes: usize, lane: usize) -> Self;
}

/// The hashmap workload's structure (std `HashMap`, SipHash, as every peer).
#[derive(Clone, Default)]
pub struct HashSeq(pub HashMap<u64, u64>);

impl Seq for HashSeq {
    fn prefilled(shape: Shape) -> Self {
        let mut m = HashMap::with_capacity(shape.keys as usize);
        for k in 0..shape.prefill {
            m.insert(k, k);
        }
        HashSeq(m)
    }
    #[inline]
    fn read(&self, op: ReadOp) -> u64 {
        match op {
            ReadOp::Get(k) => self.0.get(&k).copied().unwrap_or(NONE),
            ReadOp::Len => self.0.len() as u64,
            _ => NONE,
        }
    }
    #[inline]
    fn write(&mut self, op: WriteOp) -> u64 {
        match op {
            WriteOp::Put(k, v) => self.0.insert(k, v).unwrap_or(NONE),
            _ => NONE,
        }
    }
    fn respond(&self, op: WriteOp) -> u64 {
        match op {
            WriteOp::Put(k, _) => self.read(ReadOp::Get(k)),
            _ => NONE,
        }
    }
    fn lane_part(&self, lanes: usize, lane: usize) -> Self {
        HashSeq(
            self.0
                .iter()
                .filter(|(&k, _)| k % lanes as u64 == lane as u64)
                .map(|(&k, &v)| (k, v))
                .collect(),
        )
    }
}

/// The stack workload's structure.
#[derive(Clone, Default)]
pub struct StackSeq(pub Vec<u64>);

impl Seq for StackSeq {
    fn prefilled(shape: Shape) -> Self {
        StackSeq((0..shape.prefill).collect())
    }
    #[inline]
    fn read(&self, op: ReadOp) -> u64 {
        match op {
            ReadOp::Peek => self.0.last().copied().unwrap_or(NONE),
            _ => NONE,
        }
    }
    #[inline]
    fn write(&mut self, op: WriteOp) -> u64 {
        match op {
            WriteOp::Push(v) => {
                self.0.push(v);
                v
            }
            WriteOp::Pop => self.0.pop().unwrap_or(NONE),
            _ => NONE,
        }
    }
    fn respond(&self, op: WriteOp) -> u64 {
        match op {
            WriteOp::Push(v) => v,
            WriteOp::Pop => self.read(ReadOp::Peek),
            _ => NONE,
        }
    }
    fn lane_part(&self, _lanes: usize, lane: usize) -> Self {
        if lane == 0 {
            self.clone()
        } else {
            StackSeq::default()
        }
    }
}

/// The ordered-map workload's structure.
#[derive(Clone, Default)]
pub struct BTreeSeq(pub BTreeMap<u64, u64>);

impl Seq for BTreeSeq {
    fn prefilled(shape: Shape) -> Self {
        BTreeSeq((0..shape.prefill).map(|k| (k, k)).collect())
    }
    #[inline]
    fn read(&self, op: ReadOp) -> u64 {
        match op {
            ReadOp::Get(k) => self.0.get(&k).copied().unwrap_or(NONE),
            ReadOp::Range(lo, len) => self
                .0
                .range(lo..lo.saturating_add(len))
                .fold(0u64, |a, (_, v)| a.wrapping_add(*v)),
            ReadOp::Len => self.0.len() as u64,
            ReadOp::Peek => NONE,
        }
    }
    #[inline]
    fn write(&mut self, op: WriteOp) -> u64 {
        match op {
            WriteOp::Put(k, v) => self.0.insert(k, v).unwrap_or(NONE),
            _ => NONE,
        }
    }
    fn respond(&self, op: WriteOp) -> u64 {
        match op {
            WriteOp::Put(k, _) => self.read(ReadOp::Get(k)),
            _ => NONE,
        }
    }
    fn lane_part(&self, lanes: usize, lane: usize) -> Self {
        BTreeSeq(
            self.0
                .iter()
                .filter(|(&k, _)| k % lanes as u64 == lane as u64)
                .map(|(&k, &v)| (k, v))
                .collect(),
        )
    }
}

/// Draws key ranks from a Zipf distribution by inverting its CDF (a binary
/// search over a precomputed table: exact, and fast enough for
/// pre-generation).
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// A Zipf distribution over `0..n` with exponent `s`.
    pub fn new(n: u64, s: f64) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (0..n.max(1))
            .map(|i| {
                acc += 1.0 / ((i + 1) as f64).powf(s);
                acc
            })
            .collect();
        let total = acc;
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    /// One key rank.
    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1) as u64
    }
}

/// Generates thread `thread`'s stream of `len` operations (deterministic:
/// the seed is derived from the thread index).
pub fn stream(
    w: &Workload,
    shape: Shape,
    zipf: Option<&Zipf>,
    thread: usize,
    len: usize,
) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(
        0x006e_6f64_6572_6570 ^ (thread as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    let keys = shape.keys.max(1);
    let key = |rng: &mut StdRng| match (w.dist, zipf) {
        (KeyDist::Zipf(_), Some(z)) => z.sample(rng),
        _ => rng.random_range(0..keys),
    };
    (0..len)
        .map(|i| {
            // Only drawn when asked for, so that other streams stay as they were.
            if w.all_pct > 0
                && w.structure != Structure::Stack
                && rng.random_range(0..100u32) < w.all_pct
            {
                return Op::Read(ReadOp::Len);
            }
            let write = rng.random_range(0..100u32) < w.write_pct;
            match (w.structure, write) {
                (Structure::HashMap, false) => Op::Read(ReadOp::Get(key(&mut rng))),
                (Structure::HashMap, true) | (Structure::BTree, true) => {
                    Op::Write(WriteOp::Put(key(&mut rng), i as u64))
                }
                (Structure::BTree, false) => Op::Read(ReadOp::Range(key(&mut rng), RANGE_LEN)),
                (Structure::Stack, false) => Op::Read(ReadOp::Peek),
                (Structure::Stack, true) => {
                    if rng.random_bool(0.5) {
                        Op::Write(WriteOp::Push(i as u64))
                    } else {
                        Op::Write(WriteOp::Pop)
                    }
                }
            }
        })
        .collect()
}
