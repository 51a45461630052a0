//! Unit tests of the multi-replica path: a full log on 2 and 3 replicas,
//! parking and rebuilding idle replicas, log-free rounds with one live
//! replica, adding and removing replicas, room left for waiting writers,
//! registration fallback and the size limits.

use super::*;
use crate::topology::Topology;
use std::collections::HashMap;

/// A map that can be copied, so its idle replicas are parked.
#[derive(Default, Clone, PartialEq, Debug)]
struct CopyMap(HashMap<u64, u64>);

/// The same map without copies: idle replicas are helped instead.
#[derive(Default, Clone, PartialEq, Debug)]
struct PlainMap(HashMap<u64, u64>);

#[derive(Clone, Debug)]
struct Put(u64, u64);

impl Dispatch for CopyMap {
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

impl Dispatch for PlainMap {
    type ReadOperation<'a> = u64;
    type WriteOperation = Put;
    type Response = Option<u64>;
    fn dispatch(&self, k: u64) -> Option<u64> {
        self.0.get(&k).copied()
    }
    fn dispatch_mut(&mut self, Put(k, v): Put) -> Option<u64> {
        self.0.insert(k, v)
    }
}

fn build<D>(replicas: usize, log: usize) -> NodeReplicated<D>
where
    D: Dispatch + Default + Send + Sync,
    D::WriteOperation: Send + Sync,
    D::Response: Send,
{
    NrBuilder::new()
        .topology(Topology::simulated(replicas, 1).unwrap())
        .log_capacity(log)
        .max_threads_per_replica(2)
        .build(|_| D::default())
        .unwrap()
}

/// One thread alone writes 20 logs' worth on replica 0 of `replicas`; every
/// response and every replica's final state must be right.
fn one_thread_fills_the_log<D>(replicas: usize)
where
    D: Dispatch<WriteOperation = Put, Response = Option<u64>> + Default + Send + Sync,
    for<'a> D: Dispatch<ReadOperation<'a> = u64>,
{
    let nr = build::<D>(replicas, 8);
    let tok = nr.register_on(0).unwrap();
    for i in 0..160u64 {
        let prev = nr.execute_mut(Put(i % 5, i), &tok).unwrap();
        assert_eq!(prev, i.checked_sub(5), "write {i} on {replicas} replicas");
    }
    for r in 0..replicas {
        let t = nr.register_on(r).unwrap();
        for k in 0..5u64 {
            assert_eq!(
                nr.execute(k, &t).unwrap(),
                Some(155 + k),
                "replica {r} key {k}"
            );
        }
    }
}

#[test]
fn one_thread_fills_the_log_on_2_and_3_replicas_with_helping() {
    one_thread_fills_the_log::<PlainMap>(2);
    one_thread_fills_the_log::<PlainMap>(3);
}

#[test]
fn one_thread_fills_the_log_on_2_and_3_replicas_with_parking() {
    one_thread_fills_the_log::<CopyMap>(2);
    one_thread_fills_the_log::<CopyMap>(3);
}

#[test]
fn an_idle_replica_is_parked_writes_go_log_free_and_it_comes_back_current() {
    let nr = build::<CopyMap>(2, 16);
    let t0 = nr.register_on(0).unwrap();
    assert_eq!(nr.live_replicas(), 2);
    for i in 0..100u64 {
        nr.execute_mut(Put(i, i), &t0).unwrap();
    }
    assert!(
        nr.stats().parked.load(Ordering::Relaxed) >= 1,
        "replica 1 parked"
    );
    assert_eq!(nr.live_replicas(), 1);
    assert!(
        nr.stats().direct_rounds.load(Ordering::Relaxed) >= 50,
        "writes after parking run without the log"
    );
    assert_eq!(
        nr.stats().helped.load(Ordering::Relaxed),
        0,
        "parking, not helping"
    );
    // A thread of the parked replica comes back: rebuilt, and current.
    let t1 = nr.register_on(1).unwrap();
    assert_eq!(nr.execute(99, &t1).unwrap(), Some(99));
    assert_eq!(nr.stats().woken.load(Ordering::Relaxed), 1);
    assert_eq!(nr.live_replicas(), 2);
    // Both keep agreeing afterwards, through the log again.
    nr.execute_mut(Put(1000, 1), &t1).unwrap();
    assert_eq!(nr.execute(1000, &t0).unwrap(), Some(1));
    nr.execute_mut(Put(1001, 2), &t0).unwrap();
    assert_eq!(nr.execute(1001, &t1).unwrap(), Some(2));
    let states = nr.sync_and_inspect(&t0, |_, d| d.clone()).unwrap();
    assert_eq!(states[0], states[1]);
    assert_eq!(states[0].0.len(), 102);
}

#[test]
fn the_only_live_replica_can_be_removed_while_the_others_are_parked() {
    let nr = std::sync::Arc::new(build::<CopyMap>(2, 16));
    let t0 = nr.register_on(0).unwrap();
    for i in 0..100u64 {
        nr.execute_mut(Put(i, i), &t0).unwrap();
    }
    assert_eq!(nr.live_replicas(), 1, "replica 1 parked");
    // Removing the busy replica must bring the parked one back first. It
    // used to spin for ever: it held replica 0's lock while the wake of
    // replica 1 waited for a live replica's lock, and replica 0's was the
    // only one. Run on another thread so that a regression fails here
    // instead of hanging the suite.
    let (tx, rx) = std::sync::mpsc::channel();
    let remover = std::sync::Arc::clone(&nr);
    std::thread::spawn(move || {
        let _ = tx.send(remover.remove_replica(0));
    });
    let removed = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("remove_replica(0) returned (it hung before the fix)");
    assert_eq!(removed, Ok(()));
    assert!(!nr.is_replica_active(0) && nr.is_replica_active(1));
    assert_eq!(nr.live_replicas(), 1);
    // Replica 0's thread is told to move; on replica 1 every write is there.
    assert!(matches!(
        nr.execute(5, &t0),
        Err(ExecError::ReplicaRemoved { .. })
    ));
    let t1 = nr.register().unwrap();
    for i in 0..100u64 {
        assert_eq!(nr.execute(i, &t1).unwrap(), Some(i));
    }
}

#[test]
fn remove_replica_refuses_a_poisoned_instance() {
    let nr = build::<CopyMap>(2, 16);
    // What a panicking write leaves behind (tests.rs shows the panic path).
    nr.shared.poisoned.store(true, Ordering::Release);
    assert_eq!(nr.remove_replica(1), Err(NrError::Poisoned));
    assert!(nr.is_replica_active(1), "nothing was removed");
}

#[test]
fn a_write_of_a_parked_replica_rebuilds_it_before_applying() {
    let nr = build::<CopyMap>(3, 8);
    let t0 = nr.register_on(0).unwrap();
    for i in 0..40u64 {
        nr.execute_mut(Put(i, i), &t0).unwrap();
    }
    assert_eq!(nr.live_replicas(), 1);
    let t2 = nr.register_on(2).unwrap();
    // The write's response shows replica 2 saw every earlier write.
    assert_eq!(nr.execute_mut(Put(39, 0), &t2).unwrap(), Some(39));
    assert_eq!(nr.execute(39, &t0).unwrap(), Some(0));
    assert_eq!(nr.live_replicas(), 2);
}

#[test]
fn replicas_with_active_threads_are_helped_not_parked() {
    // Without copies nothing is parked, ever.
    let nr = build::<PlainMap>(2, 8);
    let t0 = nr.register_on(0).unwrap();
    for i in 0..64u64 {
        nr.execute_mut(Put(i, i), &t0).unwrap();
    }
    assert_eq!(nr.stats().parked.load(Ordering::Relaxed), 0);
    assert!(nr.stats().helped.load(Ordering::Relaxed) >= 1);
    assert_eq!(nr.live_replicas(), 2);
}

#[test]
fn removed_replicas_refuse_their_threads_and_added_ones_start_current() {
    let nr = NrBuilder::new()
        .topology(Topology::simulated(2, 1).unwrap())
        .log_capacity(16)
        .max_threads_per_replica(2)
        .max_replicas(3)
        .build(|_| CopyMap::default())
        .unwrap();
    assert_eq!(nr.num_replicas(), 3);
    assert!(
        !nr.is_replica_active(2),
        "the spare place starts out of service"
    );
    assert_eq!(
        nr.register_on(2).unwrap_err(),
        NrError::ReplicaRemoved { replica: 2 }
    );
    let t0 = nr.register_on(0).unwrap();
    let t1 = nr.register_on(1).unwrap();
    nr.execute_mut(Put(1, 1), &t1).unwrap();
    nr.remove_replica(1).unwrap();
    assert_eq!(
        nr.remove_replica(1).unwrap_err(),
        NrError::ReplicaRemoved { replica: 1 }
    );
    assert_eq!(
        nr.execute_mut(Put(2, 2), &t1).unwrap_err(),
        ExecError::ReplicaRemoved { replica: 1 }
    );
    assert_eq!(
        nr.execute(1, &t1).unwrap_err(),
        ExecError::ReplicaRemoved { replica: 1 }
    );
    // The refused write was not applied.
    assert_eq!(nr.execute(2, &t0).unwrap(), None);
    assert_eq!(nr.execute(1, &t0).unwrap(), Some(1));
    // Registering again lands on a replica in service.
    let again = nr.register().unwrap();
    assert_ne!(again.replica(), 1);
    assert_eq!(
        nr.remove_replica(0),
        Err(NrError::LastReplica { replica: 0 })
    );
    // Add two: the spare place and the removed one, both current.
    let a = nr.add_replica().unwrap();
    let b = nr.add_replica().unwrap();
    assert_eq!([a.min(b), a.max(b)], [1, 2]);
    assert_eq!(
        nr.add_replica(),
        Err(NrError::NoSpareReplica { replicas: 3 })
    );
    for r in [a, b] {
        let t = nr.register_on(r).unwrap();
        assert_eq!(nr.execute(1, &t).unwrap(), Some(1), "replica {r}");
        nr.execute_mut(Put(10 + r as u64, 5), &t).unwrap();
    }
    assert_eq!(nr.execute(10 + a as u64, &t0).unwrap(), Some(5));
    // Now replica 0 may go.
    drop(t0);
    nr.remove_replica(0).unwrap();
    let t = nr.register().unwrap();
    assert_eq!(nr.execute(1, &t).unwrap(), Some(1));
}

#[test]
fn replicas_cannot_be_added_without_snapshots() {
    let nr = NrBuilder::new()
        .topology(Topology::simulated(1, 1).unwrap())
        .max_replicas(2)
        .build(|_| PlainMap::default())
        .unwrap();
    assert_eq!(nr.add_replica(), Err(NrError::SnapshotUnsupported));
    let t = nr.register().unwrap();
    assert_eq!(t.replica(), 0);
    assert_eq!(nr.execute_mut(Put(1, 1), &t).unwrap(), None);
    // A one-replica instance without spare places cannot lose its replica.
    let single = build::<CopyMap>(1, 8);
    assert_eq!(
        single.remove_replica(0),
        Err(NrError::LastReplica { replica: 0 })
    );
}

#[test]
fn one_live_replica_of_several_runs_log_free_from_the_start() {
    let nr = NrBuilder::new()
        .topology(Topology::simulated(1, 1).unwrap())
        .max_replicas(4)
        .build(|_| CopyMap::default())
        .unwrap();
    assert_eq!(nr.live_replicas(), 1);
    let t = nr.register().unwrap();
    for i in 0..10u64 {
        nr.execute_mut(Put(i, i), &t).unwrap();
    }
    assert_eq!(nr.stats().direct_rounds.load(Ordering::Relaxed), 10);
    assert_eq!(nr.stats().batches.load(Ordering::Relaxed), 10);
}

#[test]
fn waiting_writers_keep_the_room_they_need() {
    let log = log::Log::<u64>::new(4, 2);
    let rec = |op| log::Record {
        op,
        replica: 0,
        slot: 0,
    };
    let p = log.try_reserve_keeping(4, 0).unwrap();
    for i in 0..4 {
        log.write(p + i, rec(i as u64));
    }
    // A writer waits for 3 positions.
    log.join_waiters(3);
    log.set_ltail(0, 4);
    log.set_ltail(1, 2);
    // Two positions are free: not enough for the waiter, and a newcomer may
    // not take them either.
    assert!(log.try_reserve_keeping(1, log.waiting_need()).is_err());
    log.set_ltail(1, 4);
    // Four free: the newcomer may take one (three stay for the waiter)...
    assert_eq!(log.try_reserve_keeping(1, log.waiting_need()), Ok(4));
    // ...but not a second one.
    assert!(log.try_reserve_keeping(1, log.waiting_need()).is_err());
    // The waiter fits.
    assert_eq!(log.try_reserve_keeping(3, log.waiting_need() - 3), Ok(5));
    log.leave_waiters(3);
    assert_eq!(log.waiting_need(), 0);
    for i in 4..8 {
        log.write(i, rec(i as u64));
    }
}

#[test]
fn parked_replicas_free_the_log_and_readers_see_them_as_behind() {
    let log = log::Log::<u64>::try_with_live(4, 3, 2).unwrap();
    assert_eq!(log.ltail(2), log::PARKED);
    assert!(
        log.is_behind(2, 0),
        "a parked replica is behind any commit point"
    );
    assert!(!log.is_behind(0, 0));
    let p = log.try_reserve(4).unwrap();
    for i in 0..4 {
        log.write(
            p + i,
            log::Record {
                op: i as u64,
                replica: 0,
                slot: 0,
            },
        );
    }
    log.set_ltail(0, 4);
    log.set_ltail(1, 4);
    // Replica 2 (parked) does not hold the log back.
    assert_eq!(log.try_reserve(4), Ok(4));
    for i in 4..8 {
        log.write(
            i,
            log::Record {
                op: i as u64,
                replica: 0,
                slot: 0,
            },
        );
    }
}

#[test]
fn sizes_beyond_what_can_be_allocated_are_errors() {
    let map = || PlainMap::default();
    let too_large =
        |b: NrBuilder<PlainMap>| matches!(b.build(|_| map()), Err(NrError::TooLarge { .. }));
    let sim = || NrBuilder::new().topology(Topology::simulated(2, 1).unwrap());
    assert!(too_large(sim().log_capacity(1 << 40)));
    assert!(too_large(sim().log_capacity((1 << 62) + 1)));
    assert!(too_large(sim().log_capacity(usize::MAX)));
    assert!(too_large(sim().replicas(ReplicaPolicy::Fixed(usize::MAX))));
    assert!(too_large(sim().max_replicas(usize::MAX)));
    // One replica per core of a topology larger than the limit: refused
    // before a replica (or a building thread) exists.
    let huge = crate::topology::Topology::simulated(1, NrBuilder::<PlainMap>::MAX_REPLICAS + 1)
        .expect("within the topology's own limits");
    let err = NrBuilder::new()
        .topology(huge)
        .replicas(ReplicaPolicy::PerCore)
        .build(|_| map())
        .unwrap_err();
    assert!(
        matches!(err, NrError::TooLarge { asked, max: 4096, .. } if asked == 4097),
        "{err}"
    );
    let err = sim().log_capacity(usize::MAX).build(|_| map()).unwrap_err();
    assert!(err.to_string().contains("log_capacity"), "{err}");
    assert_eq!(
        sim().max_replicas(1).build(|_| map()).unwrap_err(),
        NrError::TooFewPlaces {
            max_replicas: 1,
            replicas: 2
        }
    );
}

#[test]
fn register_falls_back_to_a_replica_with_room() {
    let nr = NrBuilder::new()
        .topology(Topology::simulated(2, 1).unwrap())
        .max_threads_per_replica(1)
        .build(|_| PlainMap::default())
        .unwrap();
    let a = nr.register().unwrap();
    let b = nr.register().unwrap();
    assert_ne!(
        a.replica(),
        b.replica(),
        "the second thread lands on the other replica"
    );
    assert!(matches!(nr.register(), Err(NrError::ReplicaFull { .. })));
    drop(a);
    assert!(nr.register().is_ok());
}

#[test]
fn debug_shows_the_log_capacity_that_log_capacity_returns() {
    let single = build::<PlainMap>(1, 8);
    assert!(format!("{single:?}").contains("log_capacity: 0"));
    let two = build::<PlainMap>(2, 8);
    assert!(format!("{two:?}").contains("log_capacity: 8"));
}

/// Every limit is inclusive: the largest accepted value builds, one more is
/// refused with the error that names the limit.
#[test]
fn limits_accept_their_own_value_and_refuse_one_more() {
    use crate::nr::config::{MAX_LOG_CAPACITY, MAX_THREADS_PER_REPLICA};
    let one = || {
        NrBuilder::new()
            .topology(Topology::simulated(1, 1).unwrap())
            .replicas(ReplicaPolicy::Fixed(1))
    };
    assert!(one()
        .max_threads_per_replica(MAX_THREADS_PER_REPLICA)
        .build(|_| PlainMap::default())
        .is_ok());
    assert_eq!(
        one()
            .max_threads_per_replica(MAX_THREADS_PER_REPLICA + 1)
            .build(|_| PlainMap::default())
            .unwrap_err(),
        NrError::TooManySlots {
            asked: MAX_THREADS_PER_REPLICA + 1,
            max: MAX_THREADS_PER_REPLICA
        }
    );
    // One replica keeps no log, so the largest capacity costs nothing here.
    assert!(one()
        .log_capacity(MAX_LOG_CAPACITY)
        .build(|_| PlainMap::default())
        .is_ok());
    assert!(matches!(
        one().log_capacity(MAX_LOG_CAPACITY + 1).build(|_| PlainMap::default()),
        Err(NrError::TooLarge { asked, max, .. }) if asked == MAX_LOG_CAPACITY + 1 && max == MAX_LOG_CAPACITY
    ));
    // A log exactly as large as what the threads can have in flight is
    // enough; one entry less is not (capacities round up to powers of two).
    let two = || {
        NrBuilder::new()
            .topology(Topology::simulated(2, 1).unwrap())
            .max_threads_per_replica(4)
    };
    let nr = two()
        .log_capacity(8)
        .build(|_| PlainMap::default())
        .unwrap();
    assert_eq!(nr.log_capacity(), 8);
    assert!(matches!(
        two().log_capacity(4).build(|_| PlainMap::default()),
        Err(NrError::LogTooSmall {
            capacity: 4,
            in_flight: 8,
            ..
        })
    ));
    assert_eq!(
        two()
            .max_replicas(2)
            .build(|_| PlainMap::default())
            .map(|nr| nr.num_replicas()),
        Ok(2)
    );
}
