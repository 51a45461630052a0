//! Model 10: lanes (`noderep::nr::lanes`): combiners of different lanes and
//! the all-lane barrier.
//!
//! * `m10_lanes_two_combiners`: two threads of replica 0 write to different
//!   lanes at once (with one replica, where each lane applies straight from
//!   its slots, and with a second, idle replica, where each lane has its own
//!   log). Checked: each write is applied exactly once, to its own lane's
//!   shard only, each thread gets its own response, an all-lane read
//!   afterwards sees both, and the two lanes' cells are never touched
//!   concurrently (loom `UnsafeCell` tracking).
//! * `m10_lanes_all_lane_order`: two replicas, two lanes. A thread of
//!   replica 1 issues an all-lane write (its leaves go into both lanes'
//!   logs, then it drives replica 1 through them); a thread of replica 0
//!   reads lane 0 and then lane 1. Checked: if the first read sees the
//!   all-lane write, so does the second (a leaf may not let its lane run
//!   ahead of the other lanes: mutant `lane_leaf_runs_ahead` lets it, and
//!   this model catches it); the all-lane write's response holds both
//!   lanes; at the end both replicas hold it in both lanes.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use noderep::nr::lanes::{Lane, LaneMap, LaneReplicated, LanesBuilder};
use noderep::Dispatch;

/// One lane's share of an append-only sequence.
#[derive(Default, Debug)]
struct LSeq(Vec<u64>);

#[derive(Clone, Debug)]
enum W {
    /// Appends to the lane of the key.
    Push { key: u64, v: u64 },
    /// Appends to every lane.
    PushAll(u64),
}

#[derive(Clone, Copy, Debug)]
enum R {
    /// The sequence of the key's lane.
    Lane(u64),
    /// Every lane's sequence, concatenated in lane order.
    All,
}

impl Dispatch for LSeq {
    type ReadOperation<'a> = R;
    type WriteOperation = W;
    type Response = Vec<u64>;
    fn dispatch(&self, _op: R) -> Vec<u64> {
        self.0.clone()
    }
    fn dispatch_mut(&mut self, op: W) -> Vec<u64> {
        match op {
            W::Push { v, .. } | W::PushAll(v) => self.0.push(v),
        }
        self.0.clone()
    }
}

impl LaneMap for LSeq {
    fn write_lane(op: &W) -> Lane {
        match *op {
            W::Push { key, .. } => Lane::One(key),
            W::PushAll(_) => Lane::All,
        }
    }
    fn read_lane(op: &R) -> Lane {
        match *op {
            R::Lane(key) => Lane::One(key),
            R::All => Lane::All,
        }
    }
    fn merge_responses(mut acc: Vec<u64>, next: Vec<u64>) -> Vec<u64> {
        acc.extend(next);
        acc
    }
}

fn lanes(replicas: usize, slots: usize, log: usize) -> LaneReplicated<LSeq> {
    LanesBuilder::new(loom_tests::nr_builder(replicas, slots, log))
        .lanes(2)
        .build(|_, _| LSeq::default())
        .expect("valid loom configuration")
}

#[test]
fn m10_lanes_two_combiners() {
    loom_tests::model("m10_lanes_two_combiners", || two_combiners(1));
}

#[test]
fn m10_lanes_two_combiners_log() {
    loom_tests::model("m10_lanes_two_combiners_log", || two_combiners(2));
}

fn two_combiners(replicas: usize) {
    let map = Arc::new(lanes(replicas, 2, 4));
    let writers: Vec<_> = [(0u64, 10u64), (1, 11)]
        .into_iter()
        .map(|(key, v)| {
            let map = Arc::clone(&map);
            thread::spawn(move || {
                let tok = map.register_on(0).unwrap();
                let resp = map.execute_mut(W::Push { key, v }, &tok).unwrap();
                assert_eq!(resp, vec![v], "lane {key} got {resp:?}");
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let tok = map.register_on(replicas - 1).unwrap();
    assert_eq!(map.execute(R::All, &tok).unwrap(), vec![10, 11]);
    assert_eq!(map.execute(R::Lane(0), &tok).unwrap(), vec![10]);
}

#[test]
fn m10_lanes_all_lane_order() {
    loom_tests::model("m10_lanes_all_lane_order", || {
        let map = Arc::new(lanes(2, 2, 4));
        let issuer = {
            let map = Arc::clone(&map);
            thread::spawn(move || {
                let tok = map.register_on(1).unwrap();
                let resp = map.execute_mut(W::PushAll(9), &tok).unwrap();
                assert_eq!(resp, vec![9, 9], "the all-lane write's response");
            })
        };
        let reader = {
            let map = Arc::clone(&map);
            thread::spawn(move || {
                let tok = map.register_on(0).unwrap();
                let first = map.execute(R::Lane(0), &tok).unwrap();
                let second = map.execute(R::Lane(1), &tok).unwrap();
                if first.contains(&9) {
                    assert_eq!(
                        second,
                        vec![9],
                        "lane 0 showed the all-lane write, then lane 1 did not"
                    );
                }
            })
        };
        issuer.join().unwrap();
        reader.join().unwrap();
        for r in 0..2 {
            let tok = map.register_on(r).unwrap();
            assert_eq!(
                map.execute(R::All, &tok).unwrap(),
                vec![9, 9],
                "replica {r}"
            );
        }
    });
}
