//! Random concurrent histories of a lane-partitioned map
//! (`noderep::nr::lanes`), mixing single-lane operations (get, put, remove)
//! with all-lane ones (an all-lane read `len`, an all-lane read `snapshot`,
//! an all-lane write `clear` that answers how many entries it removed), on
//! 1 to 4 replicas with 2 to 4 lanes, checked for linearizability; at the
//! end every replica's shards must agree and equal the witness's final
//! state.
//!
//! The keys collide on purpose (8 keys over 2-4 lanes), the logs are small
//! enough to wrap and fill (so writers help lagging replicas, and all-lane
//! leaves wait in full logs), and one campaign leaves a replica without
//! threads so that only helping moves it through the all-lane barriers.

use crate::common::history::{Clock, StartLine, ThreadLog};
use crate::common::lincheck::{check_with_budget, render, verify_linearization, Model, Verdict};
use crate::models::chaos;
use crate::noderep_runs::{scale, Watchdog};
use noderep::nr::lanes::{Lane, LaneMap, LaneReplicated, LaneToken, LanesBuilder};
use noderep::topology::Topology;
use noderep::{Dispatch, ExecError, NrBuilder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// Keys: few, so that operations collide within a lane.
const KEYS: u64 = 8;

#[derive(Clone, Debug, PartialEq)]
pub enum LOp {
    Get(u64),
    Put(u64, u64),
    Remove(u64),
    /// All-lane read.
    Len,
    /// All-lane read of every entry.
    Snapshot,
    /// All-lane write; answers how many entries it removed.
    Clear,
}

#[derive(Clone, Debug, PartialEq)]
pub enum LRet {
    Value(Option<u64>),
    Count(u64),
    Entries(Vec<(u64, u64)>),
}

/// The sequential specification: one ordered map, no lanes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LaneMapModel(BTreeMap<u64, u64>);

impl Model for LaneMapModel {
    type Op = LOp;
    type Ret = LRet;
    fn is_read_only(op: &LOp) -> bool {
        matches!(op, LOp::Get(_) | LOp::Len | LOp::Snapshot)
    }
    fn step(&mut self, op: &LOp) -> LRet {
        match *op {
            LOp::Get(k) => LRet::Value(self.0.get(&k).copied()),
            LOp::Put(k, v) => LRet::Value(self.0.insert(k, v)),
            LOp::Remove(k) => LRet::Value(self.0.remove(&k)),
            LOp::Len => LRet::Count(self.0.len() as u64),
            LOp::Snapshot => LRet::Entries(self.0.iter().map(|(&k, &v)| (k, v)).collect()),
            LOp::Clear => {
                let n = self.0.len() as u64;
                self.0.clear();
                LRet::Count(n)
            }
        }
    }
}

/// One shard: a plain `HashMap` (written independently of the model).
#[derive(Debug, Default)]
pub struct Shard(HashMap<u64, u64>);

#[derive(Clone, Copy, Debug)]
pub enum ShardRead {
    Get(u64),
    Len,
    Snapshot,
}

#[derive(Clone, Debug)]
pub enum ShardWrite {
    Put(u64, u64),
    Remove(u64),
    Clear,
}

impl Dispatch for Shard {
    type ReadOperation<'a> = ShardRead;
    type WriteOperation = ShardWrite;
    type Response = LRet;
    fn dispatch(&self, op: ShardRead) -> LRet {
        chaos::pause(4);
        match op {
            ShardRead::Get(k) => LRet::Value(self.0.get(&k).copied()),
            ShardRead::Len => LRet::Count(self.0.len() as u64),
            ShardRead::Snapshot => {
                let mut e: Vec<_> = self.0.iter().map(|(&k, &v)| (k, v)).collect();
                e.sort_unstable();
                LRet::Entries(e)
            }
        }
    }
    fn dispatch_mut(&mut self, op: ShardWrite) -> LRet {
        chaos::pause(4);
        match op {
            ShardWrite::Put(k, v) => LRet::Value(self.0.insert(k, v)),
            ShardWrite::Remove(k) => LRet::Value(self.0.remove(&k)),
            ShardWrite::Clear => {
                let n = self.0.len() as u64;
                self.0.clear();
                LRet::Count(n)
            }
        }
    }
}

impl LaneMap for Shard {
    fn write_lane(op: &ShardWrite) -> Lane {
        match *op {
            ShardWrite::Put(k, _) | ShardWrite::Remove(k) => Lane::One(k),
            ShardWrite::Clear => Lane::All,
        }
    }
    fn read_lane(op: &ShardRead) -> Lane {
        match *op {
            ShardRead::Get(k) => Lane::One(k),
            ShardRead::Len | ShardRead::Snapshot => Lane::All,
        }
    }
    fn merge_responses(acc: LRet, next: LRet) -> LRet {
        match (acc, next) {
            (LRet::Count(a), LRet::Count(b)) => LRet::Count(a + b),
            (LRet::Entries(mut a), LRet::Entries(b)) => {
                a.extend(b);
                a.sort_unstable();
                LRet::Entries(a)
            }
            (a, b) => panic!("an all-lane operation answered {a:?} and {b:?}"),
        }
    }
}

fn run(map: &LaneReplicated<Shard>, t: &LaneToken<Shard>, op: &LOp) -> Result<LRet, ExecError> {
    match *op {
        LOp::Get(k) => map.execute(ShardRead::Get(k), t),
        LOp::Len => map.execute(ShardRead::Len, t),
        LOp::Snapshot => map.execute(ShardRead::Snapshot, t),
        LOp::Put(k, v) => map.execute_mut(ShardWrite::Put(k, v), t),
        LOp::Remove(k) => map.execute_mut(ShardWrite::Remove(k), t),
        LOp::Clear => map.execute_mut(ShardWrite::Clear, t),
    }
}

/// A random operation: about one in six is all-lane.
fn random_op(rng: &mut StdRng, thread: usize, i: usize) -> LOp {
    let k = rng.random_range(0..KEYS);
    match rng.random_range(0..100) {
        0..30 => LOp::Get(k),
        30..62 => LOp::Put(k, (thread as u64 + 1) * 1_000 + i as u64),
        62..84 => LOp::Remove(k),
        84..90 => LOp::Len,
        90..95 => LOp::Snapshot,
        _ => LOp::Clear,
    }
}

/// One campaign's shape.
#[derive(Debug, Clone, Copy)]
struct LanePlan {
    replicas: usize,
    lanes: usize,
    /// Replicas (the last ones) without worker threads.
    idle: usize,
    threads_per_replica: usize,
    ops_per_thread: usize,
    log_capacity: usize,
    histories: usize,
}

/// Records and checks `plan.histories` (times the scale) histories; returns
/// how many were checked. Fails on a non-linearizable history, on replicas
/// that disagree at quiescence, or on too many undecided histories.
fn lane_campaign(name: &str, mut plan: LanePlan, base_seed: u64) -> usize {
    let _watchdog = Watchdog::arm(name);
    plan.histories *= scale();
    let started = Instant::now();
    let busy = plan.replicas - plan.idle;
    let threads = busy * plan.threads_per_replica;
    let (mut gave_up, mut ops, mut all_lane) = (0, 0, 0);
    for h in 0..plan.histories {
        let seed = base_seed + h as u64;
        let map = LanesBuilder::new(
            NrBuilder::new()
                .topology(Topology::simulated(plan.replicas, 1).expect("a simulated topology"))
                .log_capacity(plan.log_capacity)
                .max_threads_per_replica(plan.threads_per_replica + 1),
        )
        .lanes(plan.lanes)
        .build(|_, _| Shard::default())
        .expect("a valid configuration");
        let clock = Clock::new();
        let start = StartLine::new(threads);
        let mut history: Vec<_> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let (clock, start, map) = (&clock, &start, &map);
                    s.spawn(move || {
                        let token = map.register_on(t % busy).expect("a free slot");
                        let mut rng = StdRng::seed_from_u64(
                            seed.wrapping_mul(1_000_003).wrapping_add(t as u64),
                        );
                        let mut log = ThreadLog::new(clock, t);
                        start.wait();
                        for i in 0..plan.ops_per_thread {
                            let op = random_op(&mut rng, t, i);
                            if rng.random_ratio(1, 4) {
                                std::thread::yield_now();
                            }
                            log.record(op, |op| run(map, &token, op).expect("not poisoned"));
                        }
                        log.into_ops()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("worker thread"))
                .collect()
        });
        // A final snapshot from every replica, idle ones included.
        for r in 0..plan.replicas {
            let token = map.register_on(r).expect("the spare slot");
            let mut log = ThreadLog::new(&clock, threads + r);
            log.record(LOp::Snapshot, |op| {
                run(&map, &token, op).expect("not poisoned")
            });
            history.extend(log.into_ops());
        }
        // Every replica's shards, brought up to date, as one map each.
        let token = map.register_on(0).expect("the spare slot");
        let mut finals = vec![BTreeMap::new(); plan.replicas];
        map.sync_and_inspect(&token, |r, _, shard| finals[r].extend(shard.0.clone()))
            .expect("not poisoned");
        for (r, f) in finals.iter().enumerate() {
            assert_eq!(
                f, &finals[0],
                "{name} seed {seed}: replica {r} differs from replica 0"
            );
        }
        let init = LaneMapModel::default();
        match check_with_budget(&init, &history, 2_000_000).expect("well-formed history") {
            Verdict::Linearizable { order, .. } => {
                let end = verify_linearization(&init, &history, &order)
                    .unwrap_or_else(|e| panic!("{name}: invalid witness: {e}"));
                assert_eq!(
                    end.0, finals[0],
                    "{name} seed {seed}: the replicas' final state is not the history's"
                );
            }
            Verdict::NotLinearizable(c) => panic!(
                "{name} seed {seed} ({plan:?}): lanes produced a NON-linearizable history:\n{}",
                render(&history, Some(&c))
            ),
            Verdict::GaveUp { .. } => gave_up += 1,
        }
        ops += history.len();
        all_lane += history
            .iter()
            .filter(|o| matches!(o.op, LOp::Len | LOp::Snapshot | LOp::Clear))
            .count();
    }
    assert!(
        gave_up * 25 <= plan.histories,
        "{name}: {gave_up} of {} histories undecided; make them smaller",
        plan.histories
    );
    eprintln!(
        "{name}: {} histories checked, {} linearizable, {gave_up} undecided, none non-linearizable; \
         {} replicas ({} idle) x {} lanes, {threads} threads x {} ops, log {}; {ops} ops in all, {all_lane} all-lane; {:?}",
        plan.histories,
        plan.histories - gave_up,
        plan.replicas,
        plan.idle,
        plan.lanes,
        plan.ops_per_thread,
        plan.log_capacity,
        started.elapsed()
    );
    plan.histories
}

fn plan(replicas: usize, lanes: usize, histories: usize) -> LanePlan {
    LanePlan {
        replicas,
        lanes,
        idle: 0,
        threads_per_replica: if replicas == 1 { 3 } else { 2 },
        ops_per_thread: 8,
        log_capacity: 16,
        histories,
    }
}

#[test]
fn lanes_on_1_replica_are_linearizable() {
    let n: usize = [2, 3, 4]
        .into_iter()
        .map(|lanes| {
            lane_campaign(
                "lanes 1 replica",
                plan(1, lanes, 200),
                7_100 + lanes as u64 * 1_000,
            )
        })
        .sum();
    assert_eq!(n, 600 * scale());
}

#[test]
fn lanes_on_2_replicas_are_linearizable() {
    let n: usize = [2, 3, 4]
        .into_iter()
        .map(|lanes| {
            lane_campaign(
                "lanes 2 replicas",
                plan(2, lanes, 200),
                7_200 + lanes as u64 * 1_000,
            )
        })
        .sum();
    assert_eq!(n, 600 * scale());
}

#[test]
fn lanes_on_3_and_4_replicas_are_linearizable() {
    let n = lane_campaign("lanes 3 replicas", plan(3, 3, 200), 7_300)
        + lane_campaign("lanes 4 replicas", plan(4, 2, 200), 7_400)
        + lane_campaign("lanes 4 replicas", plan(4, 4, 200), 7_500);
    assert_eq!(n, 600 * scale());
}

#[test]
fn lanes_with_an_idle_replica_are_linearizable() {
    let mut p = plan(3, 3, 200);
    p.idle = 1;
    let n = lane_campaign("lanes idle replica", p, 7_600);
    assert_eq!(n, 200 * scale());
}
