//! Snapshot install and membership changes while clients keep writing.

mod support;

use noderep_raft::{Host, KvWrite};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{config, free_addr, machine, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_host_joins_by_snapshot_and_old_one_leaves_under_load() {
    let c = Cluster::start(3).await;
    // Writers on keys 0..4, through host 2, values increasing per key.
    let stop = Arc::new(AtomicBool::new(false));
    let last: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
    let mut writers = Vec::new();
    for key in 0..4u64 {
        let (c, stop, last) = (Arc::clone(&c), Arc::clone(&stop), Arc::clone(&last));
        writers.push(tokio::spawn(async move {
            let mut v = 0;
            while !stop.load(Ordering::Relaxed) {
                v += 1;
                let Some(h) = c.host(2) else { break };
                match h.write(KvWrite::Put { key, value: v }).await {
                    Ok(_) => last[key as usize].store(v, Ordering::Relaxed),
                    // No leader for a moment (host 1 may have been it), or
                    // host 2 stopped and is being restarted (see `revive`).
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }));
    }
    // Enough writes for several snapshots (every 150 entries) and purges.
    let h2 = c.host(2).unwrap();
    while h2.applied() < 600 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Wait until the leader has compacted its log: from then on a new host
    // can only catch up through a snapshot.
    let mut leader = 0;
    for _ in 0..500 {
        leader = c.wait_leader(Duration::from_secs(5)).await.unwrap();
        let purged = c.host(leader).unwrap().raft().metrics().borrow().purged;
        if purged.is_some_and(|p| p.index > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_log = h2
        .raft()
        .metrics()
        .borrow()
        .snapshot
        .map(|s| s.index)
        .unwrap_or(0);
    assert!(
        first_log > 0,
        "a snapshot was built before the new host joins"
    );

    // Host 4 starts empty, with no members: it waits to be added, and can
    // only catch up by installing a snapshot (the log before it is purged).
    let addr4 = free_addr();
    let h4 = Host::start(config(&c.name, 4, addr4, c.dir(4)), machine())
        .await
        .unwrap();
    // Retried if the leader changes or stops meanwhile (adding is
    // idempotent).
    // (openraft 0.9 sometimes stops a host with "replication channel
    // closed" here; after its restart the cluster may briefly know no
    // leader, so the retries span several election timeouts.)
    let mut added = Err(None);
    for _ in 0..20 {
        let l = c
            .wait_leader(Duration::from_secs(5))
            .await
            .unwrap_or(leader);
        match c.host(l).unwrap().add_host(4, addr4).await {
            Ok(()) => {
                added = Ok(());
                break;
            }
            Err(e) => added = Err(Some(e)),
        }
        c.revive().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    added.expect("host 4 added");
    c.revive().await;
    // Host 4 persisted the snapshot it installed (the install may finish
    // just after the leader counts the learner as caught up).
    for _ in 0..250 {
        if c.dir(4).join("snapshot.json").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        c.dir(4).join("snapshot.json").exists(),
        "host 4 caught up by installing a snapshot"
    );
    // Remove host 1 (possibly the leader) while the writers go on.
    let mut removed = Err(None);
    for _ in 0..20 {
        match c.host(2).unwrap().remove_host(1).await {
            Ok(()) => {
                removed = Ok(());
                break;
            }
            Err(e) => removed = Err(Some(e)),
        }
        c.revive().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    removed.expect("host 1 removed");
    // A removed host is stopped, as an operator would: left running, it may
    // never learn of its removal and keep calling elections.
    c.crash(1).await;
    c.revive().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    c.revive().await;
    let h2 = c.host(2).unwrap();
    h2.barrier().await.unwrap();
    let voters = h2.status().voters;
    assert_eq!(voters, vec![2, 3, 4]);
    // Host 4 serves linearizable reads that include every acknowledged write.
    for key in 0..4u64 {
        let v = h4.read(key).await.unwrap().unwrap_or(0);
        assert!(
            v >= last[key as usize].load(Ordering::Relaxed),
            "host 4 misses acknowledged writes of key {key}"
        );
    }
    // Its replicas (rebuilt from the snapshot) equal host 2's.
    h2.barrier().await.unwrap();
    h4.barrier().await.unwrap();
    let a = h2.machine().inspect(|_, d| d.clone()).unwrap();
    let b = h4.machine().inspect(|_, d| d.clone()).unwrap();
    assert_eq!(a[0], b[0]);
    assert_eq!(b[0], b[1]);
    h4.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_host_recovers_from_its_snapshot_and_log() {
    let c = Cluster::start(3).await;
    let h = c.host(1).unwrap();
    for i in 0..400u64 {
        support::put(&h, i % 7, i).await;
    }
    let before = {
        h.barrier().await.unwrap();
        h.machine().inspect(|_, d| d.clone()).unwrap().remove(0)
    };
    // Stop everything and start again from the directories alone.
    for id in c.live() {
        c.crash(id).await;
    }
    assert!(
        c.dir(1).join("snapshot.json").exists(),
        "a snapshot was persisted"
    );
    for id in 1..=3 {
        c.restart(id).await;
    }
    c.wait_leader(Duration::from_secs(10)).await.unwrap();
    for id in 1..=3 {
        let h = c.host(id).unwrap();
        h.barrier().await.unwrap();
        let after = h.machine().inspect(|_, d| d.clone()).unwrap().remove(0);
        assert_eq!(after, before, "host {id} state after restart");
    }
    c.shutdown().await;
}
