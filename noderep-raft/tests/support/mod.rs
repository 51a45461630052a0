//! A cluster of in-process hosts talking TCP on loopback, with crash,
//! restart and partition switches, and a recorder of client histories for
//! the linearizability checker.

#![allow(dead_code)]

use noderep::{NrBuilder, ReplicaPolicy};
use noderep_raft::{Host, HostConfig, HostId, KvMap, NrMachine};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

pub type KvHost = Host<NrMachine<KvMap>>;

/// A fresh directory under the system's temporary directory.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    // Relaxed: a unique number is all that is needed.
    let n = N.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!(
        "noderep-raft-{tag}-{}-{n}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A free loopback port (bound then released).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local address")
}

/// Two NUMA replicas per host (simulated), so that every host exercises
/// noderep's log and catch-up, not just the one-replica fast path.
pub fn machine() -> NrMachine<KvMap> {
    NrMachine::new(NrBuilder::new().replicas(ReplicaPolicy::Fixed(2))).expect("noderep instance")
}

pub fn config(cluster: &str, id: HostId, addr: SocketAddr, dir: PathBuf) -> HostConfig {
    HostConfig::new(cluster, id, addr, dir)
        .election_timeout_ms(150, 300)
        .heartbeat_ms(50)
        .snapshot_every(150, 30)
        .op_timeout(Duration::from_secs(2))
}

pub struct Cluster {
    pub name: String,
    pub root: PathBuf,
    pub addrs: BTreeMap<HostId, SocketAddr>,
    pub hosts: RwLock<BTreeMap<HostId, KvHost>>,
}

impl Cluster {
    /// Starts hosts 1..=n.
    pub async fn start(n: u64) -> Arc<Self> {
        let name = format!("test-{}", std::process::id());
        let root = scratch_dir("cluster");
        let addrs: BTreeMap<HostId, SocketAddr> = (1..=n).map(|i| (i, free_addr())).collect();
        let c = Arc::new(Self {
            name,
            root,
            addrs,
            hosts: RwLock::new(BTreeMap::new()),
        });
        for id in 1..=n {
            c.restart(id).await;
        }
        c.wait_leader(Duration::from_secs(10))
            .await
            .expect("a leader is elected");
        c
    }

    pub fn dir(&self, id: HostId) -> PathBuf {
        self.root.join(format!("host{id}"))
    }

    pub fn config(&self, id: HostId) -> HostConfig {
        config(&self.name, id, self.addrs[&id], self.dir(id)).members(self.addrs.clone())
    }

    /// Starts host `id` on its directory (a restart if it ran before).
    pub async fn restart(&self, id: HostId) {
        let mut last = None;
        // The port may take a moment to be free again after a crash.
        for _ in 0..50 {
            match Host::start(self.config(id), machine()).await {
                Ok(h) => {
                    self.hosts.write().unwrap().insert(id, h);
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("host {id} did not restart: {last:?}");
    }

    /// Stops host `id` (its directory stays).
    pub async fn crash(&self, id: HostId) {
        let h = self.hosts.write().unwrap().remove(&id);
        if let Some(h) = h {
            h.shutdown().await;
        }
    }

    pub fn host(&self, id: HostId) -> Option<KvHost> {
        self.hosts.read().unwrap().get(&id).cloned()
    }

    pub fn live(&self) -> Vec<HostId> {
        self.hosts.read().unwrap().keys().copied().collect()
    }

    /// Cuts every link between `id` and the other hosts.
    pub fn isolate(&self, id: HostId) {
        let hosts = self.hosts.read().unwrap();
        for (&other, h) in hosts.iter() {
            if other == id {
                for &peer in self.addrs.keys() {
                    if peer != id {
                        h.links().cut(peer);
                    }
                }
            } else {
                h.links().cut(id);
            }
        }
    }

    pub fn heal(&self) {
        for h in self.hosts.read().unwrap().values() {
            h.links().heal();
        }
    }

    pub async fn wait_leader(&self, within: Duration) -> Option<HostId> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            let hosts: Vec<KvHost> = self.hosts.read().unwrap().values().cloned().collect();
            for h in hosts {
                let s = h.status();
                if s.leader == Some(s.id) {
                    return Some(s.id);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Restarts any host whose Raft engine stopped, and says how many.
    /// openraft 0.9.25 sometimes stops a leader with "Read Snapshot:
    /// replication channel closed" when a replication stream ends while a
    /// snapshot is due (its own bookkeeping, not a disk fault: the directory
    /// is intact, and a restart resumes).
    pub async fn revive(&self) -> usize {
        let mut n = 0;
        for id in self.live() {
            if let Some(why) = self.host(id).and_then(|h| h.stopped()) {
                eprintln!("host {id} stopped ({why}); restarting it");
                self.crash(id).await;
                self.restart(id).await;
                n += 1;
            }
        }
        n
    }

    pub async fn shutdown(&self) {
        for id in self.live() {
            self.crash(id).await;
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Real-time stamps (nanoseconds since a common origin) for histories.
pub fn now_ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

/// Writes `key = value`, retrying while no leader accepts it or its outcome
/// is unknown (a put of the same value is idempotent, so retrying is safe).
pub async fn put(h: &KvHost, key: u64, value: u64) {
    for _ in 0..100 {
        match h.write(noderep_raft::KvWrite::Put { key, value }).await {
            Ok(_) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("put {key}={value} never succeeded");
}
