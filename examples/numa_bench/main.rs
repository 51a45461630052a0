//! The NUMA benchmark suite: noderep against its peers, same workload, same
//! run — an aligned table, CSV, JSON and an SVG plot.
//!
//! Run: `cargo run --release --example numa_bench` (under a minute on a
//! 2-core machine: hashmap with 0 % and 100 % writes, 1 and 2 threads, every
//! implementation). `-- --full` runs every workload, write share, key
//! distribution and thread count; `-- --help` lists the options.
//!
//! # How it works
//!
//! For each workload the operation streams are generated first (one per
//! thread, deterministic), then each implementation is built and prefilled,
//! and [`runner::run`] drives pinned threads through a warm-up, throughput
//! repetitions (no clock reading per operation) and one latency repetition
//! (one clock reading per operation, every operation recorded in an HDR
//! histogram; the clock's own cost is measured and printed, not subtracted).
//! The whole list of cells runs several *rounds* (default 3), each starting
//! at a different implementation, and each cell's repetitions are pooled
//! across rounds, so a burst of load from another process lands on every
//! implementation alike and none is always first. The table gives the median
//! of the pooled repetitions, their spread ((max - min) / median), each row's
//! ratio to the best row of its block, the same throughput per CPU second
//! the threads actually got (robust to other processes), the latency
//! percentiles, the maximum over the operations not delayed by a preemption
//! (`max*`: see [`runner`] for how a preempted or hypervisor-stolen
//! operation is recognised) and the involuntary context switches during the
//! latency repetitions. Results go to `target/numa-bench/` (`report.txt`,
//! `results.csv`, `results.json`, `results.md`, `throughput.svg`).
//!
//! `--count-ops N` runs N operations per cell on one thread, untimed, for
//! instruction counting under `valgrind --tool=callgrind` (run it with two
//! values of N and divide the difference).
//!
//! # Trade-offs
//!
//! Short repetitions keep the default run under a minute; on a noisy machine
//! use `--rounds 7 --rep-ms 500` (or `--full`) for tighter spreads. Threads
//! are pinned but the machine is not otherwise isolated: the `preempt` and
//! `CPU Mop/s` columns say how much that mattered.

mod memory;
mod report;
mod runner;
mod systems;
mod workload;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use noderep::topology::{Core, Topology};
use noderep::ReplicaPolicy;
use report::Row;
use runner::Settings;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use systems::{Impl, System};
use workload::{BTreeSeq, HashSeq, KeyDist, Op, Seq, Shape, StackSeq, Structure, Workload};

#[global_allocator]
static ALLOC: memory::Counting = memory::Counting;

/// Key distributions to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Dist {
    /// Uniform keys.
    Uniform,
    /// Zipf-skewed keys (exponent `--zipf`).
    Zipf,
    /// Both.
    Both,
}

/// Thread placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Placement {
    /// Fill one node's cores before using the next node.
    Fill,
    /// Round-robin across nodes.
    Interleave,
}

/// NUMA benchmark suite: noderep against its peers on the same workloads in
/// the same run.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Run everything: all structures, writes 0,1,10,50,100 %, uniform and
    /// Zipf keys, 1..=ncpu threads, 5 repetitions of 0.5 s. Explicit options
    /// still override.
    #[arg(long)]
    full: bool,
    /// Structures [default: hashmap; --full: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    workloads: Vec<Structure>,
    /// Write percentages [default: 0,100; --full: 0,1,10,50,100].
    #[arg(long, value_delimiter = ',')]
    writes: Vec<u32>,
    /// Key distribution [default: uniform; --full: both].
    #[arg(long, value_enum)]
    dist: Option<Dist>,
    /// Zipf exponent.
    #[arg(long, default_value_t = 0.99)]
    zipf: f64,
    /// Key space (distinct keys).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Fraction of the key space inserted before the run (stack: elements
    /// pushed).
    #[arg(long, default_value_t = 1.0)]
    prefill: f64,
    /// Implementations [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    impls: Vec<Impl>,
    /// Thread counts: a list such as `1,2,4`, or `all` for 1..=ncpu
    /// [default: 1, 2 and ncpu; --full: all].
    #[arg(long)]
    threads: Option<String>,
    /// Thread placement across NUMA nodes.
    #[arg(long, value_enum, default_value_t = Placement::Fill)]
    placement: Placement,
    /// Simulated nodes for the `*/sim` implementations.
    #[arg(long, default_value_t = 2)]
    sim_nodes: usize,
    /// Warm-up per cell, milliseconds [default: 80; --full: 200].
    #[arg(long)]
    warmup_ms: Option<u64>,
    /// Length of one throughput repetition, milliseconds [default: 120; --full: 500].
    #[arg(long)]
    rep_ms: Option<u64>,
    /// Throughput repetitions per cell and round [default: 1; --full: 2].
    #[arg(long)]
    reps: Option<usize>,
    /// Rounds: the whole list of cells is run this many times, one after
    /// the other, and each cell's repetitions are pooled across rounds, so a
    /// burst of load from another process hits every implementation alike
    /// instead of spoiling one cell [default: 3].
    #[arg(long)]
    rounds: Option<usize>,
    /// Length of the latency repetition, milliseconds (0: none) [default: 120; --full: 500].
    #[arg(long)]
    latency_ms: Option<u64>,
    /// Operations pre-generated per thread (rounded up to a power of two).
    #[arg(long, default_value_t = 1 << 16)]
    stream_len: usize,
    /// Output directory [default: target/numa-bench in the crate].
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Skip the memory-per-replica measurement.
    #[arg(long)]
    skip_memory: bool,
    /// Lanes (logs) of the `noderep-lanes/*` implementations.
    #[arg(long, default_value_t = 2)]
    lanes: usize,
    /// Percentages of whole-structure `len` operations (all-lane reads for
    /// noderep-lanes) to run each workload with, besides [default: 0 only].
    #[arg(long, value_delimiter = ',')]
    len_pct: Vec<u32>,
    /// noderep's log capacity in entries, for instances with several replicas
    /// (a single replica has no log) [default: the library's, 4096].
    #[arg(long)]
    nr_log: Option<usize>,
    /// Threads of the oversubscribed cell (100% writes on the hashmap, more
    /// threads than cores): noderep/1, noderep/sim4 (four simulated
    /// replicas) and Mutex; 0 leaves it out.
    #[arg(long, default_value_t = 8)]
    oversub: usize,
    /// Profiling mode: instead of timing, run exactly N operations of each
    /// cell on the main thread (thread 0's stream) and print a checksum.
    /// Use under `valgrind --tool=callgrind` with two values of N: the
    /// difference of the instruction counts divided by the difference of N is
    /// the instructions per operation, set-up excluded.
    #[arg(long, value_name = "N")]
    count_ops: Option<u64>,
}

/// Everything a cell needs besides the implementation.
struct Ctx<'a> {
    shape: Shape,
    settings: Settings,
    interleave: bool,
    topo: &'a Topology,
    sim_nodes: usize,
    bar: &'a ProgressBar,
    count_ops: Option<u64>,
    nr_log: Option<usize>,
    /// Threads of the oversubscribed cell (0: none).
    oversub: usize,
    lanes: usize,
}

impl Ctx<'_> {
    fn places(&self, topo: &Topology) -> Vec<Core> {
        topo.placement_order(self.interleave)
    }

    /// The simulated topology for `threads` threads: only the simulated
    /// nodes that get a thread (both sim peers then have a replica per busy
    /// node; node-replication 0.1.1 would stall on a replica with no thread,
    /// see its log's garbage collection).
    fn sim(&self, threads: usize) -> Topology {
        let ncpu = self.topo.num_cores().max(1);
        let nodes = self.sim_nodes.max(1);
        let per = (ncpu / nodes).max(1);
        let full = Topology::simulated(nodes, per).expect("non-zero simulated topology");
        let order = full.placement_order(self.interleave);
        let used: BTreeSet<usize> = (0..threads).map(|t| order[t % order.len()].node).collect();
        Topology::simulated(used.len().max(1), per).expect("non-zero simulated topology")
    }

    fn measure<Y: System>(
        &self,
        sys: &Y,
        streams: &[Vec<Op>],
        places: &[Core],
    ) -> runner::Measurement {
        match self.count_ops {
            Some(n) => runner::count_ops(sys, &streams[0], places[0], n),
            None => runner::run(sys, streams, places, &self.settings, || self.bar.inc(1)),
        }
    }
}

/// Runs implementation `imp` on structure `S` with `threads` threads.
fn run_cell<S: Seq>(
    imp: Impl,
    proto: &S,
    streams: &[Vec<Op>],
    ctx: &Ctx<'_>,
) -> Result<runner::Measurement, Box<dyn std::error::Error>> {
    let threads = streams.len();
    let host = ctx.places(ctx.topo);
    let nodes_used = {
        let s: BTreeSet<usize> = (0..threads).map(|t| host[t % host.len()].node).collect();
        s.len().max(1)
    };
    Ok(match imp {
        Impl::NoderepNode | Impl::NoderepCore | Impl::NoderepSingle | Impl::NoderepReadMostly => {
            let policy = match imp {
                Impl::NoderepNode | Impl::NoderepReadMostly => ReplicaPolicy::PerNode,
                Impl::NoderepCore => ReplicaPolicy::PerCore,
                _ => ReplicaPolicy::Fixed(1),
            };
            let read_mostly = imp == Impl::NoderepReadMostly;
            let sys =
                systems::Noderep::build(proto, policy, ctx.topo, threads, ctx.nr_log, read_mostly)?;
            ctx.measure(&sys, streams, &host)
        }
        Impl::NoderepSim4 => {
            let topo = Topology::simulated(4, 1).expect("a 4-node simulated topology");
            let mut sys = systems::Noderep::build(
                proto,
                ReplicaPolicy::PerNode,
                &topo,
                threads,
                ctx.nr_log,
                false,
            )?;
            sys.by_node = true;
            ctx.measure(&sys, streams, &ctx.places(&topo))
        }
        Impl::NoderepSim => {
            let topo = ctx.sim(threads);
            let sys = systems::Noderep::build(
                proto,
                ReplicaPolicy::PerNode,
                &topo,
                threads,
                ctx.nr_log,
                false,
            )?;
            ctx.measure(&sys, streams, &ctx.places(&topo))
        }
        Impl::NoderepLanes => {
            let sys = systems::NoderepLanes::build(
                proto,
                ReplicaPolicy::Fixed(1),
                ctx.topo,
                threads,
                ctx.lanes,
                ctx.nr_log,
            )?;
            ctx.measure(&sys, streams, &host)
        }
        Impl::NoderepLanesSim => {
            let topo = ctx.sim(threads);
            let sys = systems::NoderepLanes::build(
                proto,
                ReplicaPolicy::PerNode,
                &topo,
                threads,
                ctx.lanes,
                ctx.nr_log,
            )?;
            ctx.measure(&sys, streams, &ctx.places(&topo))
        }
        Impl::NodeReplication => {
            // One replica per node that has a thread (see `Ctx::sim`).
            let sys = systems::OldNr::build(proto, nodes_used);
            ctx.measure(&sys, streams, &host)
        }
        Impl::NodeReplicationSim => {
            let topo = ctx.sim(threads);
            let sys = systems::OldNr::build(proto, topo.num_nodes());
            ctx.measure(&sys, streams, &ctx.places(&topo))
        }
        Impl::LaneLocks => ctx.measure(
            &systems::ByRef(systems::LaneLocks::build(proto, ctx.lanes)),
            streams,
            &host,
        ),
        Impl::Mutex => ctx.measure(&systems::ByRef(Mutex::new(proto.clone())), streams, &host),
        Impl::Rwlock => ctx.measure(
            &systems::ByRef(std::sync::RwLock::new(proto.clone())),
            streams,
            &host,
        ),
        Impl::ParkingLot => ctx.measure(
            &systems::ByRef(parking_lot::RwLock::new(proto.clone())),
            streams,
            &host,
        ),
        Impl::ShardedLock => ctx.measure(
            &systems::ByRef(crossbeam_utils::sync::ShardedLock::new(proto.clone())),
            streams,
            &host,
        ),
        Impl::LeftRight => ctx.measure(&systems::LeftRight::build(proto), streams, &host),
        Impl::Dashmap => ctx.measure(&systems::dash(ctx.shape), streams, &host),
        Impl::Papaya => ctx.measure(&systems::papaya(ctx.shape), streams, &host),
        Impl::Scc => ctx.measure(&systems::scc(ctx.shape), streams, &host),
        Impl::Bare => ctx.measure(
            &systems::Bare(Mutex::new(Some(proto.clone()))),
            streams,
            &host,
        ),
    })
}

/// Runs every (threads, implementation) cell of one workload.
/// Runs every cell of workload `w`. The implementations start at a
/// different one in each round (`round` rotates the list), so that none of
/// them is always the first cell after the workload's set-up (which, on the
/// development VM, measured up to 40% slower than the same configuration
/// later in the round).
fn run_workload<S: Seq>(
    w: &Workload,
    thread_counts: &[usize],
    impls: &[Impl],
    round: usize,
    stream_len: usize,
    ctx: &Ctx<'_>,
    rows: &mut Vec<Row>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut impls = impls.to_vec();
    if !impls.is_empty() {
        let shift = round % impls.len();
        impls.rotate_left(shift);
    }
    let oversub = oversubscribed(w, &impls, ctx);
    let max_t = thread_counts
        .iter()
        .copied()
        .chain(oversub.iter().map(|_| ctx.oversub))
        .max()
        .unwrap_or(1);
    let zipf = match w.dist {
        KeyDist::Zipf(s) => Some(workload::Zipf::new(ctx.shape.keys, s)),
        KeyDist::Uniform => None,
    };
    let streams: Vec<Vec<Op>> = (0..max_t)
        .map(|t| workload::stream(w, ctx.shape, zipf.as_ref(), t, stream_len))
        .collect();
    let proto = S::prefilled(ctx.shape);
    for &threads in thread_counts {
        for &imp in &impls {
            if !imp.supports(w.structure) || (imp == Impl::Bare && threads > 1) {
                continue;
            }
            ctx.bar
                .set_message(format!("{w} {} x{threads}", imp.name()));
            let t0 = Instant::now();
            let m = run_cell(imp, &proto, &streams[..threads], ctx)?;
            if std::env::var_os("NUMA_BENCH_DEBUG").is_some() {
                eprintln!(
                    "cell {w} {} x{threads}: {:.3} s, stop wait {:?}",
                    imp.name(),
                    t0.elapsed().as_secs_f64(),
                    m.max_stop_wait
                );
            }
            rows.push(Row {
                workload: w.to_string(),
                write_pct: w.write_pct,
                threads,
                imp,
                m,
            });
        }
    }
    for imp in oversub {
        let threads = ctx.oversub;
        ctx.bar
            .set_message(format!("{w} {} x{threads} (oversubscribed)", imp.name()));
        let m = run_cell(imp, &proto, &streams[..threads], ctx)?;
        rows.push(Row {
            workload: w.to_string(),
            write_pct: w.write_pct,
            threads,
            imp,
            m,
        });
    }
    Ok(())
}

/// The implementations of the oversubscribed cell for workload `w`: the
/// write-only uniform hashmap, `ctx.oversub` threads (more than cores),
/// noderep/1, noderep/sim4 and Mutex among the selected implementations
/// (noderep/sim4 whenever noderep/1 is selected).
fn oversubscribed(w: &Workload, impls: &[Impl], ctx: &Ctx<'_>) -> Vec<Impl> {
    if ctx.oversub == 0
        || ctx.count_ops.is_some()
        || w.structure != Structure::HashMap
        || w.write_pct != 100
        || w.dist != KeyDist::Uniform
    {
        return Vec::new();
    }
    let mut out: Vec<Impl> = [Impl::NoderepSingle, Impl::Mutex]
        .into_iter()
        .filter(|i| impls.contains(i))
        .collect();
    if impls.contains(&Impl::NoderepSingle) || impls.contains(&Impl::NoderepSim4) {
        out.insert(1, Impl::NoderepSim4);
    }
    out
}

/// Pools the rows of several rounds: one row per (workload, threads,
/// implementation), with every round's repetitions, latencies and
/// preemptions.
fn pool(rows: Vec<Row>) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    for r in rows {
        match out
            .iter_mut()
            .find(|o| o.workload == r.workload && o.threads == r.threads && o.imp == r.imp)
        {
            None => out.push(r),
            Some(o) => {
                o.m.reps.extend(&r.m.reps);
                o.m.cpu_reps.extend(&r.m.cpu_reps);
                o.m.preemptions += r.m.preemptions;
                o.m.max_unpreempted_ns = o.m.max_unpreempted_ns.max(r.m.max_unpreempted_ns);
                o.m.slow_ops.0 += r.m.slow_ops.0;
                o.m.slow_ops.1 += r.m.slow_ops.1;
                o.m.max_stop_wait = o.m.max_stop_wait.max(r.m.max_stop_wait);
                o.m.latency_rep_ops = o.m.latency_rep_ops.max(r.m.latency_rep_ops);
                o.m.checksum = o.m.checksum.wrapping_add(r.m.checksum);
                if let (Some(a), Some(b)) = (o.m.latency.as_mut(), r.m.latency.as_ref()) {
                    a.add(b).expect("same histogram bounds");
                }
            }
        }
    }
    out
}

/// One of noderep's performance goals against its peers, and what was
/// measured.
struct Target {
    what: String,
    measured: Option<f64>,
    /// The same ratio from CPU-time throughput (robust to other processes).
    cpu: Option<f64>,
    /// The median over rounds of the ratio within each round (robust to
    /// load that comes and goes between rounds).
    paired: Option<f64>,
    goal: String,
    met: Option<bool>,
}

fn find<'a>(rows: &'a [Row], workload: &str, threads: usize, imp: Impl) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.workload == workload && r.threads == threads && r.imp == imp)
}

/// The median over rounds of `a`'s throughput divided by `b`'s in the same
/// round (`per_round` repetitions per round, averaged first).
fn paired_ratio(a: &Row, b: &Row, per_round: usize) -> Option<f64> {
    let per_round = per_round.max(1);
    let means = |r: &Row| -> Vec<f64> {
        r.m.reps
            .chunks(per_round)
            .map(|c| c.iter().sum::<f64>() / c.len() as f64)
            .collect()
    };
    let ratios: Vec<f64> = means(a)
        .into_iter()
        .zip(means(b))
        .filter(|&(_, y)| y > 0.0)
        .map(|(x, y)| x / y)
        .collect();
    (!ratios.is_empty()).then(|| runner::median(&ratios))
}

/// (ratio of medians, by CPU time, paired by round).
type Ratios = (Option<f64>, Option<f64>, Option<f64>);

fn targets(
    rows: &[Row],
    mem: Option<&memory::MemoryReport>,
    per_round: usize,
    oversub: usize,
) -> Vec<Target> {
    let r0 = "hashmap/uniform/0%w";
    let w100 = "hashmap/uniform/100%w";
    let nr = Impl::NoderepNode;
    // `a` on workload `wa` over `b` on workload `wb`, `t` threads each.
    let ratio2 = |wa: &str, a: Impl, wb: &str, b: Impl, t: usize| -> Ratios {
        match (find(rows, wa, t, a), find(rows, wb, t, b)) {
            (Some(a), Some(b)) => (
                (b.mops() > 0.0).then(|| a.mops() / b.mops()),
                (b.cpu_mops() > 0.0).then(|| a.cpu_mops() / b.cpu_mops()),
                paired_ratio(a, b, per_round),
            ),
            _ => (None, None, None),
        }
    };
    let ratio = |w: &str, t: usize, a: Impl, b: Impl| ratio2(w, a, w, b, t);
    let at_least = |what: String, (v, cpu, paired): Ratios, goal: f64| Target {
        what,
        measured: v,
        cpu,
        paired,
        goal: format!(">= {goal:.2}x"),
        met: v.map(|v| v >= goal),
    };
    let at_most = |what: String, (v, cpu, paired): Ratios, goal: f64, unit: &str| Target {
        what,
        measured: v,
        cpu,
        paired,
        goal: format!("<= {goal}{unit}"),
        met: v.map(|v| v <= goal),
    };
    let mut out = vec![
        at_least(
            "read-only, 2 threads: noderep / node-replication".into(),
            ratio(r0, 2, nr, Impl::NodeReplication),
            1.2,
        ),
        at_least(
            "read-only, 2 threads: noderep / RwLock".into(),
            ratio(r0, 2, nr, Impl::Rwlock),
            2.5,
        ),
        at_least(
            "write-only, 2 threads: noderep / node-replication".into(),
            ratio(w100, 2, nr, Impl::NodeReplication),
            1.4,
        ),
        at_least(
            "write-only, 2 threads: noderep / Mutex".into(),
            ratio(w100, 2, nr, Impl::Mutex),
            1.0,
        ),
        at_most(
            "1 thread read: cost noderep / bare HashMap::get".into(),
            ratio(r0, 1, Impl::Bare, nr),
            1.3,
            "x",
        ),
        at_most(
            "1 thread write: cost noderep / bare insert".into(),
            ratio(w100, 1, Impl::Bare, nr),
            2.0,
            "x",
        ),
        at_least(
            "write-only, 1 thread: noderep/core (2 replicas, 1 idle) / noderep/1".into(),
            ratio(w100, 1, Impl::NoderepCore, Impl::NoderepSingle),
            0.8,
        ),
        at_most(
            "p99.9 of 1-thread writes, noderep/core (us)".into(),
            (
                find(rows, w100, 1, Impl::NoderepCore)
                    .filter(|r| r.m.latency.is_some())
                    .map(|r| r.lat(0.999) as f64 / 1e3),
                None,
                None,
            ),
            2.0,
            " us",
        ),
        at_least(
            "write-only, 2 threads: noderep/sim (2 active replicas) / node-replication/sim".into(),
            ratio(w100, 2, Impl::NoderepSim, Impl::NodeReplicationSim),
            1.5,
        ),
        at_least(
            format!(
                "write-only, {oversub} threads on the machine's cores: noderep/sim4 / noderep/1"
            ),
            ratio(w100, oversub, Impl::NoderepSim4, Impl::NoderepSingle),
            0.5,
        ),
        at_least(
            format!("write-only, {oversub} threads on the machine's cores: noderep/sim4 / Mutex"),
            ratio(w100, oversub, Impl::NoderepSim4, Impl::Mutex),
            1.0,
        ),
        at_least(
            "read-only, 2 threads: noderep/node-rm (read_mostly) / node-replication".into(),
            ratio(r0, 2, Impl::NoderepReadMostly, Impl::NodeReplication),
            1.2,
        ),
        at_most(
            "1 thread read: cost noderep/node-rm (read_mostly) / bare".into(),
            ratio(r0, 1, Impl::Bare, Impl::NoderepReadMostly),
            1.3,
            "x",
        ),
    ];
    // Lanes: `--lanes 2` and, for the all-lane rows, `--len-pct 1`.
    let (lanes, lanes_sim) = (Impl::NoderepLanes, Impl::NoderepLanesSim);
    let w100_len = format!("{w100}+1%len");
    out.extend([
        at_least(
            "write-only, 2 threads, 1 replica: noderep-lanes/1 / dashmap".into(),
            ratio(w100, 2, lanes, Impl::Dashmap),
            0.6,
        ),
        at_least(
            "write-only, 2 threads, 1 replica: noderep-lanes/1 / noderep/1".into(),
            ratio(w100, 2, lanes, Impl::NoderepSingle),
            1.5,
        ),
        at_least(
            "write-only, 2 threads, 2 replicas: noderep-lanes/sim / noderep/sim".into(),
            ratio(w100, 2, lanes_sim, Impl::NoderepSim),
            2.0,
        ),
        at_least(
            "write-only, 2 threads, 1 replica: noderep-lanes/1 with 1% all-lane len / without"
                .into(),
            ratio2(&w100_len, lanes, w100, lanes, 2),
            0.8,
        ),
        at_least(
            "write-only, 2 threads, 2 replicas: noderep-lanes/sim with 1% all-lane len / without"
                .into(),
            ratio2(&w100_len, lanes_sim, w100, lanes_sim, 2),
            0.8,
        ),
        at_most(
            "read-only, 2 threads: time per read noderep-lanes/1 / noderep/1".into(),
            ratio(r0, 2, Impl::NoderepSingle, lanes),
            1.05,
            "x",
        ),
        at_most(
            "read-only, 1 thread: time per read noderep-lanes/1 / noderep/1".into(),
            ratio(r0, 1, Impl::NoderepSingle, lanes),
            1.05,
            "x",
        ),
    ]);
    // The ceiling of the first two lanes rows: one spinlock per lane over
    // the same shards (`lane-locks`). No goal: they say how much of a write
    // goal any per-lane-lock design could reach here, and how close lanes
    // come to it.
    let reference = |what: &str, (v, cpu, paired): Ratios, goal: &str| Target {
        what: what.into(),
        measured: v,
        cpu,
        paired,
        goal: goal.into(),
        met: None,
    };
    out.extend([
        reference(
            "write-only, 2 threads: lane-locks / dashmap",
            ratio(w100, 2, Impl::LaneLocks, Impl::Dashmap),
            "(ceiling of lanes/dashmap)",
        ),
        reference(
            "write-only, 2 threads: lane-locks / noderep/1",
            ratio(w100, 2, Impl::LaneLocks, Impl::NoderepSingle),
            "(ceiling of lanes/noderep/1)",
        ),
        reference(
            "write-only, 2 threads: noderep-lanes/1 / lane-locks",
            ratio(w100, 2, lanes, Impl::LaneLocks),
            "(lanes against the ceiling)",
        ),
    ]);
    // The largest of `ns(row)` over the latency-measured rows of the chosen
    // implementations, in milliseconds.
    let max_ms = |pred: &dyn Fn(Impl) -> bool, ns: fn(&Row) -> u64| -> Option<f64> {
        rows.iter()
            .filter(|r| pred(r.imp) && r.m.latency.is_some())
            .map(|r| ns(r) as f64 / 1e6)
            .reduce(f64::max)
    };
    let max_lat = |pred: &dyn Fn(Impl) -> bool| max_ms(pred, Row::lat_max);
    let max_clean = |pred: &dyn Fn(Impl) -> bool| max_ms(pred, |r| r.m.max_unpreempted_ns);
    // The read-mostly row trades write latency for fence-free reads (every
    // write batch waits for a membarrier, an IPI to each busy CPU): it is
    // reported on its own line, not held to the default's latency goal.
    let default_nr = |i: Impl| i.is_noderep() && i != Impl::NoderepReadMostly;
    out.push(at_most(
        "max latency, every default noderep row, ops not delayed by a preemption (ms)".into(),
        (max_clean(&default_nr), None, None),
        1.0,
        " ms",
    ));
    out.push(Target {
        what: "the same for noderep/node-rm (read_mostly) (ms)".into(),
        measured: max_clean(&|i: Impl| i == Impl::NoderepReadMostly),
        cpu: None,
        paired: None,
        goal: "(opt-in trade-off)".into(),
        met: None,
    });
    out.push(Target {
        what: "max latency, every default noderep row, all ops (ms)".into(),
        measured: max_lat(&default_nr),
        cpu: None,
        paired: None,
        goal: "(incl. preemptions)".into(),
        met: None,
    });
    out.push(Target {
        what: "noderep ops > 20 us that were preempted or overlapped a preempted op".into(),
        measured: Some(
            rows.iter()
                .filter(|r| default_nr(r.imp))
                .map(|r| r.m.slow_ops.1 as f64)
                .sum::<f64>(),
        ),
        cpu: None,
        paired: None,
        goal: format!(
            "(of {} ops > 20 us)",
            rows.iter()
                .filter(|r| default_nr(r.imp))
                .map(|r| r.m.slow_ops.0)
                .sum::<u64>()
        ),
        met: None,
    });
    out.push(Target {
        what: "involuntary context switches in those noderep latency passes".into(),
        measured: Some(
            rows.iter()
                .filter(|r| default_nr(r.imp))
                .map(|r| r.m.preemptions as f64)
                .sum::<f64>()
                .max(0.0),
        ),
        cpu: None,
        paired: None,
        goal: "(explains ms outliers)".into(),
        met: None,
    });
    out.push(Target {
        what: "max latency, bare HashMap row(s) (ms)".into(),
        measured: max_lat(&|i: Impl| i == Impl::Bare),
        cpu: None,
        paired: None,
        goal: "(machine floor)".into(),
        met: None,
    });
    out.push(Target {
        what: "max latency, every node-replication row (ms)".into(),
        measured: max_lat(&|i: Impl| matches!(i, Impl::NodeReplication | Impl::NodeReplicationSim)),
        cpu: None,
        paired: None,
        goal: "(peer, for reference)".into(),
        met: None,
    });
    out.push(Target {
        what: "the same, ops not delayed by a preemption (ms)".into(),
        measured: max_clean(&|i: Impl| {
            matches!(i, Impl::NodeReplication | Impl::NodeReplicationSim)
        }),
        cpu: None,
        paired: None,
        goal: "(peer, for reference)".into(),
        met: None,
    });
    if let Some(m) = mem {
        out.push(at_most(
            format!(
                "memory per replica, noderep, {} threads registered (KiB)",
                m.threads_registered
            ),
            (Some(m.noderep_per_replica as f64 / 1024.0), None, None),
            64.0,
            " KiB",
        ));
        out.push(Target {
            what: "memory per replica, node-replication 0.1.1 (KiB)".into(),
            measured: Some(m.old_per_replica as f64 / 1024.0),
            cpu: None,
            paired: None,
            goal: "(peer, for reference)".into(),
            met: None,
        });
    }
    out
}

fn machine(topo: &Topology) -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // Which CPUs each node has, and where that came from (sysfs, hwloc, or a
    // simulated topology), so a report says what it ran on.
    let nodes: Vec<String> = topo
        .nodes()
        .iter()
        .map(|n| {
            let cpus: Vec<usize> = n.cores.iter().map(|c| c.os_cpu).collect();
            format!(
                "node {}: cpus {}",
                n.os_node,
                Topology::format_cpulist(&cpus)
            )
        })
        .collect();
    format!(
        "{model}, {} CPU(s), {} NUMA node(s) ({}; {:?}), Linux {}",
        topo.num_cores(),
        topo.num_nodes(),
        nodes.join("; "),
        topo.source(),
        kernel.trim()
    )
}

/// The 1-minute load average, to show how busy the machine was.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn parse_threads(spec: Option<&str>, full: bool, ncpu: usize) -> Result<Vec<usize>, String> {
    let mut v: Vec<usize> = match spec {
        Some("all") => (1..=ncpu).collect(),
        Some(list) => list
            .split(',')
            .map(|t| {
                t.trim().parse::<usize>().map_err(|_| {
                    format!("--threads: `{t}` is not a number (use e.g. 1,2,4 or all)")
                })
            })
            .collect::<Result<_, _>>()?,
        None if full => (1..=ncpu).collect(),
        None => vec![1, 2, ncpu],
    };
    v.sort_unstable();
    v.dedup();
    if v.first() == Some(&0) || v.is_empty() {
        return Err("--threads: thread counts start at 1".into());
    }
    Ok(v)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let started = Instant::now();
    let topo = Topology::detect()?;
    let ncpu = topo.num_cores().max(1);
    let full = cli.full;
    let structures = if !cli.workloads.is_empty() {
        cli.workloads.clone()
    } else if full {
        vec![Structure::HashMap, Structure::Stack, Structure::BTree]
    } else {
        vec![Structure::HashMap]
    };
    let writes = if !cli.writes.is_empty() {
        cli.writes.clone()
    } else if full {
        vec![0, 1, 10, 50, 100]
    } else {
        vec![0, 100]
    };
    if let Some(bad) = cli.len_pct.iter().find(|&&w| w > 100) {
        return Err(format!("--len-pct: {bad} is not a percentage (0..=100)").into());
    }
    if cli.lanes == 0
        || cli.lanes > noderep::nr::lanes::LanesBuilder::<systems::NrD<HashSeq>>::MAX_LANES
    {
        return Err(format!(
            "--lanes: {} is not between 1 and {}",
            cli.lanes,
            noderep::nr::lanes::LanesBuilder::<systems::NrD<HashSeq>>::MAX_LANES
        )
        .into());
    }
    if let Some(bad) = writes.iter().find(|&&w| w > 100) {
        return Err(format!("--writes: {bad} is not a percentage (0..=100)").into());
    }
    if !(0.0..=1.0).contains(&cli.prefill) {
        return Err("--prefill is a fraction of the key space, between 0 and 1".into());
    }
    if cli.keys == 0 {
        return Err("--keys must be at least 1".into());
    }
    let dists = match cli
        .dist
        .unwrap_or(if full { Dist::Both } else { Dist::Uniform })
    {
        Dist::Uniform => vec![KeyDist::Uniform],
        Dist::Zipf => vec![KeyDist::Zipf(cli.zipf)],
        Dist::Both => vec![KeyDist::Uniform, KeyDist::Zipf(cli.zipf)],
    };
    let impls = if cli.impls.is_empty() {
        Impl::ALL.to_vec()
    } else {
        cli.impls.clone()
    };
    let thread_counts = if cli.count_ops.is_some() {
        vec![1]
    } else {
        parse_threads(cli.threads.as_deref(), full, ncpu)?
    };
    let ms = |v: Option<u64>, d: u64, f: u64| {
        Duration::from_millis(v.unwrap_or(if full { f } else { d }))
    };
    let settings = Settings {
        warmup: ms(cli.warmup_ms, 50, 150),
        rep: ms(cli.rep_ms, 120, 400),
        reps: cli.reps.unwrap_or(if full { 2 } else { 1 }).max(1),
        latency: ms(cli.latency_ms, 50, 200),
    };
    let shape = Shape {
        keys: cli.keys,
        prefill: (cli.keys as f64 * cli.prefill).round() as u64,
    };
    let stream_len = cli.stream_len.max(CHUNK_MIN).next_power_of_two();
    let out_dir = cli.out.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("numa-bench")
    });

    let mut workloads = Vec::new();
    for &s in &structures {
        let ds: &[KeyDist] = if s == Structure::Stack {
            &[KeyDist::Uniform]
        } else {
            &dists
        };
        for &d in ds {
            for &w in &writes {
                let mut alls = vec![0];
                alls.extend(cli.len_pct.iter().copied().filter(|&a| a > 0));
                for all_pct in alls {
                    workloads.push(Workload {
                        structure: s,
                        write_pct: w,
                        dist: d,
                        all_pct,
                    });
                }
            }
        }
    }

    let machine = machine(&topo);
    let mut head = String::new();
    head.push_str(&format!(
        "machine: {machine}\ntopology: {topo}\nload average at start: {}\n",
        loadavg()
    ));
    let clock = runner::clock_overhead_ns();
    head.push_str(&format!(
        "settings: {} round(s) over all cells, each: warm-up {:?}, {} x {:?} throughput repetition(s), \
         latency repetition {:?} (median of the pooled repetitions, spread = (max-min)/median); \
         keys {}, prefill {}; threads {:?} pinned ({:?}); stream {} ops/thread\n",
        cli.rounds.unwrap_or(3).max(1), settings.warmup, settings.reps, settings.rep, settings.latency, shape.keys, shape.prefill, thread_counts, cli.placement, stream_len
    ));
    head.push_str(&format!(
        "latency: every operation of the latency repetition is timed with {} (one reading per op, \
         {clock:.1} ns with the histogram record: included, not subtracted); \
         preempt = involuntary context switches during it; max* = max over the ops that were \
         neither preempted (involuntary switch, or CPU lost without sleeping: hypervisor steal) nor overlapping \
         a preempted op of another thread (ops > 20 us are checked)\n",
        runner::Clock::get().name
    ));
    print!("{head}");

    let mem = if cli.skip_memory {
        None
    } else {
        Some(memory::measure(64)?)
    };

    let cells: usize = workloads
        .iter()
        .map(|w| {
            thread_counts
                .iter()
                .map(|&t| {
                    impls
                        .iter()
                        .filter(|i| i.supports(w.structure) && !(**i == Impl::Bare && t > 1))
                        .count()
                })
                .sum::<usize>()
        })
        .sum();
    let phases = 1 + settings.reps + usize::from(!settings.latency.is_zero());
    let rounds_est = if cli.count_ops.is_some() {
        1
    } else {
        cli.rounds.unwrap_or(3).max(1)
    };
    let cells = cells * rounds_est;
    let per_cell = settings.warmup + settings.rep * settings.reps as u32 + settings.latency;
    println!(
        "{} workload(s), {cells} cell runs, about {:.0} s",
        workloads.len(),
        (per_cell * cells as u32).as_secs_f64() * 1.05
    );
    let bar = if cli.no_progress {
        ProgressBar::hidden()
    } else {
        ProgressBar::new((cells * phases) as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {percent:>3}% eta {eta} {msg}")?
            .progress_chars("=> "),
    );
    let ctx = Ctx {
        shape,
        settings,
        interleave: cli.placement == Placement::Interleave,
        topo: &topo,
        sim_nodes: cli.sim_nodes,
        bar: &bar,
        count_ops: cli.count_ops,
        nr_log: cli.nr_log,
        oversub: cli.oversub,
        lanes: cli.lanes,
    };
    let mut rows = Vec::new();
    let rounds = if cli.count_ops.is_some() {
        1
    } else {
        cli.rounds.unwrap_or(3).max(1)
    };
    for round in 0..rounds {
        for w in &workloads {
            let run = match w.structure {
                Structure::HashMap => run_workload::<HashSeq>,
                Structure::Stack => run_workload::<StackSeq>,
                Structure::BTree => run_workload::<BTreeSeq>,
            };
            run(
                w,
                &thread_counts,
                &impls,
                round,
                stream_len,
                &ctx,
                &mut rows,
            )?;
        }
    }
    let rows = pool(rows);
    bar.finish_and_clear();
    if cli.count_ops.is_some() {
        for r in &rows {
            println!(
                "counted {} ops: {} {} (checksum {})",
                cli.count_ops.unwrap_or(0),
                r.workload,
                r.imp.name(),
                r.m.checksum
            );
        }
        return Ok(());
    }

    let mut text = String::new();
    text.push_str(&report::table(&rows));
    text.push('\n');
    let mut notes: Vec<&str> = rows.iter().filter_map(|r| r.imp.note()).collect();
    notes.dedup();
    notes.sort_unstable();
    notes.dedup();
    for n in notes {
        text.push_str(&format!("{n}\n"));
    }
    if let Some(m) = &mem {
        text.push_str(&format!(
            "\nmemory (counted by the example's global allocator, empty hashmap, {} threads registered):\n  \
             noderep: {} B per replica (64 thread slots); one-replica instance {} B (no log); log of the multi-replica instances {} entries (not counted per replica)\n  \
             node-replication 0.1.1: {} B per replica (256 thread slots, preallocated); log {} B\n",
            m.threads_registered,
            m.noderep_per_replica,
            m.noderep_one_replica,
            m.noderep_log_entries,
            m.old_per_replica,
            m.old_log
        ));
    }
    let targets = targets(&rows, mem.as_ref(), settings.reps, cli.oversub);
    text.push_str(
        "\nperformance goals of noderep against its peers (noderep = noderep/node; ratios of medians from this run; \
         `by CPU` = the same ratio from CPU-time throughput, robust to other processes; \
         `paired` = median over rounds of the ratio within each round, robust to load that comes and goes):\n",
    );
    let tw = targets
        .iter()
        .map(|t| t.what.chars().count())
        .max()
        .unwrap_or(10);
    text.push_str(&format!(
        "  {:<tw$}  {:>10}  {:>7}  {:>7}  {:<22}\n",
        "target", "measured", "by CPU", "paired", "goal"
    ));
    for t in &targets {
        text.push_str(&format!(
            "  {:<tw$}  {:>10}  {:>7}  {:>7}  {:<22}  {}\n",
            t.what,
            t.measured.map_or("n/a".into(), |v| format!("{v:.2}")),
            t.cpu.map_or(String::new(), |v| format!("{v:.2}")),
            t.paired.map_or(String::new(), |v| format!("{v:.2}")),
            t.goal,
            match t.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "",
            }
        ));
    }
    let wall = started.elapsed();
    text.push_str(&format!(
        "\nwall time: {:.1} s; load average at the end: {}\n",
        wall.as_secs_f64(),
        loadavg()
    ));
    print!("{text}");
    let text = head + &text;

    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(out_dir.join("report.txt"), &text)?;
    std::fs::write(out_dir.join("results.csv"), report::csv(&rows))?;
    std::fs::write(out_dir.join("results.md"), report::markdown(&rows))?;
    let json = serde_json::json!({
        "machine": machine,
        "topology": topo.to_string(),
        "settings": {
            "warmup_ms": settings.warmup.as_millis() as u64,
            "rep_ms": settings.rep.as_millis() as u64,
            "reps": settings.reps,
            "rounds": cli.rounds.unwrap_or(3).max(1),
            "latency_ms": settings.latency.as_millis() as u64,
            "keys": shape.keys,
            "prefill": shape.prefill,
            "threads": thread_counts,
            "placement": format!("{:?}", cli.placement),
            "stream_len": stream_len,
            "clock_overhead_ns": clock,
        },
        "memory": mem.as_ref().map(|m| serde_json::json!({
            "threads_registered": m.threads_registered,
            "noderep_per_replica_bytes": m.noderep_per_replica,
            "noderep_one_replica_instance_bytes": m.noderep_one_replica,
            "noderep_log_entries": m.noderep_log_entries,
            "node_replication_per_replica_bytes": m.old_per_replica,
            "node_replication_log_bytes": m.old_log,
        })),
        "targets": targets.iter().map(|t| serde_json::json!({
            "target": t.what, "measured": t.measured, "by_cpu_time": t.cpu, "paired_by_round": t.paired, "goal": t.goal, "met": t.met,
        })).collect::<Vec<_>>(),
        "wall_time_s": wall.as_secs_f64(),
        "rows": report::json_rows(&rows),
    });
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    report::plot(&rows, &out_dir.join("throughput.svg"), &machine)?;
    println!(
        "files: {}/{{report.txt,results.csv,results.json,results.md,throughput.svg}}",
        out_dir.display()
    );
    Ok(())
}

/// Smallest stream: at least a few chunks of the timed loop.
const CHUNK_MIN: usize = 4 * runner::CHUNK;
