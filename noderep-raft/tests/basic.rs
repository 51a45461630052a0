//! A three-host cluster on loopback: writes, reads of every kind, and the
//! state agreeing on every host and every NUMA replica.

mod support;

use noderep_raft::{HostError, KvWrite};
use std::time::Duration;
use support::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_reads_agree_on_every_host() {
    let c = Cluster::start(3).await;
    let ids = c.live();
    for i in 0..20u64 {
        let h = c.host(ids[(i % 3) as usize]).unwrap();
        support::put(&h, i % 4, i).await;
    }
    // A write returns the previous value.
    let h = c.host(ids[0]).unwrap();
    let mut prev = h.write(KvWrite::Put { key: 9, value: 1 }).await;
    // Retry only a write that was never proposed (an election was running).
    while let Err(HostError::NoLeader(_)) = prev {
        tokio::time::sleep(Duration::from_millis(50)).await;
        prev = h.write(KvWrite::Put { key: 9, value: 1 }).await;
    }
    assert!(matches!(prev, Ok(None)), "first write of key 9: {prev:?}");
    for &id in &ids {
        let h = c.host(id).unwrap();
        for k in 0..4u64 {
            assert_eq!(h.read(k).await.unwrap(), Some(16 + k), "host {id} key {k}");
        }
        let s = h.read_stale(3, Duration::from_millis(500)).await.unwrap();
        assert_eq!(s.value, Some(19));
        assert!(
            s.applied >= 20,
            "applied {} covers the 20 writes",
            s.applied
        );
        // Every NUMA replica of the host holds the same map.
        let maps = h.machine().inspect(|_, d| d.clone()).unwrap();
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[0], maps[1]);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_respect_their_bound() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(5)).await.unwrap();
    let f = *c.live().iter().find(|&&id| id != leader).unwrap();
    let (lh, fh) = (c.host(leader).unwrap(), c.host(f).unwrap());
    support::put(&lh, 5, 1).await;
    assert_eq!(fh.read(5).await.unwrap(), Some(1)); // proven fresh now
    c.isolate(f);
    support::put(&lh, 5, 2).await; // the other two hosts are a majority
                                   // Within a generous bound the isolated host may answer from its replica
                                   // (and says how far it has applied).
    let s = fh.read_stale(5, Duration::from_secs(30)).await.unwrap();
    assert_eq!(s.value, Some(1));
    assert!(s.applied > 0);
    // Past a short bound it must refuse, since it cannot refresh.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let err = fh
        .read_stale(5, Duration::from_millis(100))
        .await
        .expect_err("an isolated host is staler than 100 ms");
    assert!(matches!(err, HostError::TooStale { .. }), "{err}");
    c.heal();
    let s = fh.read_stale(5, Duration::from_millis(100)).await.unwrap();
    assert_eq!(s.value, Some(2));
    c.shutdown().await;
}
