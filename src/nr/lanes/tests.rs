//! Unit tests of lanes: configuration, single-lane and all-lane operations
//! on one and several replicas, the all-lane barrier with idle lanes and
//! replicas, poisoning and tokens. Linearizability is checked in
//! `tests/linearizability/lane_runs.rs`, the barrier's interleavings by loom
//! model 10.

use super::*;
use crate::topology::Topology;
use crate::ReplicaPolicy;
use std::collections::HashMap;
use std::sync::Barrier;

/// A map whose shards also count the all-lane `Bump`s they applied.
#[derive(Default, Debug)]
struct Counted {
    map: HashMap<u64, u64>,
    bumps: u64,
}

#[derive(Clone, Debug)]
enum W {
    Put(u64, u64),
    /// All lanes: every shard counts one more bump.
    Bump,
    /// All lanes: empty every shard.
    Clear,
    /// Panics in lane `key % lanes`.
    Panic(u64),
    /// Panics on every shard.
    PanicAll,
    /// In lane `key % lanes`: raises `BLOCK_ENTERED`, then waits for
    /// `BLOCK_RELEASE` (only the test of independent lanes uses it).
    Block(u64),
}

/// Raised by a `W::Block` once it runs inside its lane's combiner.
static BLOCK_ENTERED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Lets a running `W::Block` return.
static BLOCK_RELEASE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Clone, Copy, Debug)]
enum R {
    Get(u64),
    /// All lanes: the number of entries.
    Len,
    /// All lanes: every shard's bump count, lane by lane.
    Bumps,
}

impl Dispatch for Counted {
    type ReadOperation<'a> = R;
    type WriteOperation = W;
    type Response = Vec<u64>;
    fn dispatch(&self, op: R) -> Vec<u64> {
        match op {
            R::Get(k) => self.map.get(&k).copied().into_iter().collect(),
            R::Len => vec![self.map.len() as u64],
            R::Bumps => vec![self.bumps],
        }
    }
    fn dispatch_mut(&mut self, op: W) -> Vec<u64> {
        match op {
            W::Put(k, v) => self.map.insert(k, v).into_iter().collect(),
            W::Bump => {
                self.bumps += 1;
                vec![self.bumps]
            }
            W::Clear => {
                self.map.clear();
                Vec::new()
            }
            W::Panic(_) | W::PanicAll => panic!("lanes test: operation panicked on purpose"),
            W::Block(_) => {
                use std::sync::atomic::Ordering::SeqCst;
                BLOCK_ENTERED.store(true, SeqCst);
                while !BLOCK_RELEASE.load(SeqCst) {
                    std::thread::yield_now();
                }
                Vec::new()
            }
        }
    }
}

impl LaneMap for Counted {
    fn write_lane(op: &W) -> Lane {
        match *op {
            W::Put(k, _) | W::Panic(k) | W::Block(k) => Lane::One(k),
            W::Bump | W::Clear | W::PanicAll => Lane::All,
        }
    }
    fn read_lane(op: &R) -> Lane {
        match *op {
            R::Get(k) => Lane::One(k),
            R::Len | R::Bumps => Lane::All,
        }
    }
    /// Concatenates, so that tests see every lane's answer.
    fn merge_responses(mut acc: Vec<u64>, next: Vec<u64>) -> Vec<u64> {
        acc.extend(next);
        acc
    }
}

/// `replicas` simulated replicas, `lanes` lanes, `slots` slots, log `log`.
fn build(replicas: usize, lanes: usize, slots: usize, log: usize) -> LaneReplicated<Counted> {
    LanesBuilder::new(
        NrBuilder::new()
            .topology(Topology::simulated(replicas, 1).unwrap())
            .log_capacity(log)
            .max_threads_per_replica(slots),
    )
    .lanes(lanes)
    .build(|_, _| Counted::default())
    .unwrap()
}

fn len(map: &LaneReplicated<Counted>, t: &LaneToken<Counted>) -> u64 {
    map.execute(R::Len, t).unwrap().iter().sum()
}

#[test]
fn bad_lane_counts_are_errors_that_say_what_to_do() {
    let nr = NrBuilder::new().replicas(ReplicaPolicy::Fixed(1));
    let e = LanesBuilder::new(nr.clone())
        .lanes(0)
        .build(|_, _| Counted::default())
        .unwrap_err();
    assert_eq!(e, LanesError::ZeroLanes);
    assert!(e.to_string().contains("at least 1"), "{e}");
    let e = LanesBuilder::new(nr.clone())
        .lanes(MAX_LANES + 1)
        .build(|_, _| Counted::default())
        .unwrap_err();
    assert_eq!(
        e,
        LanesError::TooManyLanes {
            asked: MAX_LANES + 1,
            max: MAX_LANES
        }
    );
    let e = LanesBuilder::new(nr.clone().log_capacity(0))
        .build(|_, _| Counted::default())
        .unwrap_err();
    assert_eq!(e, LanesError::Nr(NrError::ZeroLogCapacity));
    let e = LanesBuilder::new(nr.max_replicas(2))
        .build(|_, _| Counted::default())
        .unwrap_err();
    assert_eq!(e, LanesError::SpareReplicas);
    assert!(e.to_string().contains("leave max_replicas unset"), "{e}");
}

#[test]
fn single_and_all_lane_operations_on_one_and_two_replicas() {
    for replicas in [1, 2] {
        for lanes in [1, 3, 4] {
            let map = build(replicas, lanes, 4, 64);
            assert_eq!(map.num_lanes(), lanes);
            assert_eq!(map.num_replicas(), replicas);
            let t: Vec<_> = (0..replicas).map(|r| map.register_on(r).unwrap()).collect();
            for k in 0..20u64 {
                let tok = &t[k as usize % replicas];
                assert_eq!(map.execute_mut(W::Put(k, k * 10), tok).unwrap(), vec![]);
            }
            assert_eq!(map.execute_mut(W::Put(7, 1), &t[0]).unwrap(), vec![70]);
            for tok in &t {
                assert_eq!(map.execute(R::Get(7), tok).unwrap(), vec![1]);
                assert_eq!(map.execute(R::Get(8), tok).unwrap(), vec![80]);
                assert_eq!(len(&map, tok), 20);
            }
            // An all-lane write answers with every lane's response, in lane
            // order, from the caller's replica.
            assert_eq!(
                map.execute_mut(W::Bump, &t[replicas - 1]).unwrap(),
                vec![1; lanes]
            );
            assert_eq!(map.execute_mut(W::Clear, &t[0]).unwrap(), vec![]);
            for tok in &t {
                assert_eq!(len(&map, tok), 0);
                assert_eq!(map.execute(R::Bumps, tok).unwrap(), vec![1; lanes]);
            }
            // Each shard holds exactly its lane's keys, on every replica.
            map.execute_mut(W::Put(5, 5), &t[0]).unwrap();
            let seen = map
                .sync_and_inspect(&t[0], |r, lane, d| {
                    (r, lane, d.map.keys().copied().collect::<Vec<_>>())
                })
                .unwrap();
            assert_eq!(seen.len(), replicas * lanes);
            for (_, lane, keys) in seen {
                let want = if lane == map.lane_index(Lane::One(5)).unwrap() {
                    vec![5]
                } else {
                    vec![]
                };
                assert_eq!(keys, want);
            }
        }
    }
}

/// Writers on their own lanes and an all-lane writer on another replica,
/// with a tiny log that wraps and fills and one lane that no thread of
/// replica 0 ever writes (only the barrier's helping moves it there): the
/// run finishes, every all-lane read sees the same number of bumps in
/// every shard (one cut), and the replicas agree at the end.
#[test]
fn all_lane_writes_stay_atomic_with_idle_lanes_and_a_small_log() {
    for (replicas, lanes) in [(1, 3), (2, 3), (3, 2)] {
        let map = build(replicas, lanes, 4, 16);
        let writers = lanes - 1;
        let bumps = 40u64;
        let start = Barrier::new(writers + 2);
        std::thread::scope(|s| {
            for w in 0..writers {
                let (map, start) = (&map, &start);
                s.spawn(move || {
                    let t = map.register_on(0).unwrap();
                    start.wait();
                    for i in 0..300u64 {
                        // Lane w only (keys w, w + lanes, ...).
                        let k = w as u64 + lanes as u64 * (i % 5);
                        map.execute_mut(W::Put(k, i), &t).unwrap();
                    }
                });
            }
            let (map, start) = (&map, &start);
            s.spawn(move || {
                let t = map.register_on(replicas - 1).unwrap();
                start.wait();
                for b in 1..=bumps {
                    assert_eq!(map.execute_mut(W::Bump, &t).unwrap(), vec![b; lanes]);
                }
            });
            s.spawn(move || {
                let t = map.register_on(0).unwrap();
                start.wait();
                let mut last = 0;
                for _ in 0..200 {
                    let got = map.execute(R::Bumps, &t).unwrap();
                    assert!(
                        got.iter().all(|&b| b == got[0]),
                        "a torn all-lane write: {got:?}"
                    );
                    assert!(got[0] >= last, "bumps went back: {got:?} after {last}");
                    last = got[0];
                }
            });
        });
        let t = map.register_on(0).unwrap();
        let seen = map
            .sync_and_inspect(&t, |r, lane, d| (r, lane, d.bumps, d.map.len()))
            .unwrap();
        for &(r, lane, b, n) in &seen {
            assert_eq!(b, bumps, "replica {r} lane {lane}");
            let same = seen.iter().find(|x| x.1 == lane).unwrap();
            assert_eq!(n, same.3, "replica {r} lane {lane} differs from replica 0");
        }
        assert_eq!(len(&map, &t), 5 * writers as u64);
    }
}

/// While lane 0's combiner is stuck inside an operation (holding lane 0's
/// combiner and write locks), writes and reads of lane 1 on the same
/// replica complete: the lanes share no lock. One replica and two.
#[test]
fn a_stuck_lane_does_not_stop_another_lane() {
    use std::sync::atomic::Ordering::SeqCst;
    for replicas in [1, 2] {
        BLOCK_ENTERED.store(false, SeqCst);
        BLOCK_RELEASE.store(false, SeqCst);
        let map = build(replicas, 2, 2, 16);
        std::thread::scope(|s| {
            let blocked = s.spawn(|| {
                let t = map.register_on(0).unwrap();
                map.execute_mut(W::Block(0), &t).unwrap()
            });
            while !BLOCK_ENTERED.load(SeqCst) {
                std::thread::yield_now();
            }
            let t = map.register_on(0).unwrap();
            for i in 0..100 {
                map.execute_mut(W::Put(1, i), &t).unwrap();
            }
            assert_eq!(map.execute(R::Get(1), &t).unwrap(), vec![99]);
            assert!(!blocked.is_finished(), "lane 0 is still stuck");
            BLOCK_RELEASE.store(true, SeqCst);
            assert_eq!(blocked.join().unwrap(), Vec::<u64>::new());
        });
    }
}

#[test]
fn a_panicking_single_lane_write_poisons_every_lane() {
    for replicas in [1, 2] {
        let map = build(replicas, 2, 2, 16);
        let t = map.register_on(0).unwrap();
        map.execute_mut(W::Put(1, 1), &t).unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            map.execute_mut(W::Panic(0), &t)
        }));
        assert!(caught.is_err() || caught.unwrap() == Err(ExecError::Poisoned));
        assert!(map.is_poisoned());
        // The other lane refuses too, and so do all-lane operations.
        assert_eq!(map.execute_mut(W::Put(1, 2), &t), Err(ExecError::Poisoned));
        assert_eq!(map.execute(R::Get(1), &t), Err(ExecError::Poisoned));
        assert_eq!(map.execute(R::Len, &t), Err(ExecError::Poisoned));
        assert_eq!(map.register().unwrap_err(), NrError::Poisoned);
    }
}

#[test]
fn a_panicking_all_lane_write_poisons_the_instance() {
    // One replica: the panic resumes in the caller.
    let map = build(1, 3, 2, 16);
    let t = map.register_on(0).unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        map.execute_mut(W::PanicAll, &t)
    }));
    assert!(caught.is_err(), "the panic reaches the caller");
    assert!(map.is_poisoned());
    assert_eq!(map.execute_mut(W::Put(1, 2), &t), Err(ExecError::Poisoned));
    // Two replicas: the leaves panic inside the lanes' combiners; the caller
    // gets Poisoned, and nobody waits forever at the barrier.
    let map = build(2, 3, 2, 16);
    let t0 = map.register_on(0).unwrap();
    let t1 = map.register_on(1).unwrap();
    assert_eq!(map.execute_mut(W::PanicAll, &t1), Err(ExecError::Poisoned));
    assert!(map.is_poisoned());
    assert_eq!(map.execute(R::Get(1), &t0), Err(ExecError::Poisoned));
    assert_eq!(map.execute(R::Len, &t0), Err(ExecError::Poisoned));
}

#[test]
fn a_poisoned_lane_fails_its_calls_before_the_instance_flag_is_up() {
    for replicas in [1, 2] {
        for read_first in [true, false] {
            let map = build(replicas, 2, 2, 16);
            let t = map.register_on(0).unwrap();
            // Key 1 is in lane 1, key 0 in lane 0.
            assert_eq!(map.execute_mut(W::Put(1, 5), &t), Ok(vec![]));
            assert_eq!(map.execute(R::Get(1), &t), Ok(vec![5]));
            hooks::poison_lane_only(&map.shared.lanes[1]);
            assert!(!map.shared.poisoned.load(Ordering::Acquire));
            // Only the lane's own flag can report it: a single-lane call on
            // that lane fails and raises the instance flag.
            let first = if read_first {
                map.execute(R::Get(1), &t)
            } else {
                map.execute_mut(W::Put(1, 6), &t)
            };
            assert_eq!(first, Err(ExecError::Poisoned));
            assert!(map.is_poisoned());
            // Then every call fails, on every lane.
            assert_eq!(map.execute(R::Get(0), &t), Err(ExecError::Poisoned));
            assert_eq!(map.execute_mut(W::Put(0, 1), &t), Err(ExecError::Poisoned));
            assert_eq!(map.execute(R::Len, &t), Err(ExecError::Poisoned));
        }
    }
}

#[test]
fn tokens_are_bound_to_their_instance() {
    for replicas in [1, 2] {
        let a = build(replicas, 2, 2, 16);
        let b = build(replicas, 2, 2, 16);
        let tb = b.register_on(0).unwrap();
        assert_eq!(
            a.execute_mut(W::Put(1, 1), &tb),
            Err(ExecError::WrongInstance)
        );
        assert_eq!(a.execute(R::Get(1), &tb), Err(ExecError::WrongInstance));
        assert_eq!(a.execute(R::Len, &tb), Err(ExecError::WrongInstance));
        assert_eq!(a.execute_mut(W::Bump, &tb), Err(ExecError::WrongInstance));
        // Tokens of instances with fewer and with more lanes, on every
        // lane: refused, never an out-of-bounds lane.
        for other_lanes in [1, 3] {
            let c = build(replicas, other_lanes, 2, 16);
            let tc = c.register_on(0).unwrap();
            for key in 0..4 {
                assert_eq!(a.execute(R::Get(key), &tc), Err(ExecError::WrongInstance));
                assert_eq!(
                    a.execute_mut(W::Put(key, 1), &tc),
                    Err(ExecError::WrongInstance)
                );
            }
        }
        assert!(!a.is_poisoned());
        // A full replica frees the slots it took in the first lanes.
        let t1 = a.register_on(0).unwrap();
        let t2 = a.register_on(0).unwrap();
        assert!(matches!(a.register_on(0), Err(NrError::ReplicaFull { .. })));
        drop(t1);
        let _t3 = a.register_on(0).unwrap();
        drop(t2);
        assert!(matches!(
            a.register_on(9),
            Err(NrError::NoSuchReplica { replica: 9, .. })
        ));
    }
}
