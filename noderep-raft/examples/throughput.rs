//! Throughput of a three-host cluster (one process, TCP on loopback) whose
//! state machine is a noderep `NodeReplicated<KvMap>` against the same
//! cluster running the usual `Mutex<HashMap>` state machine (`PlainKv`),
//! in alternating rounds.
//!
//! ```text
//! cargo run --release -p noderep-raft --example throughput -- --rounds 3 --secs 2
//! ```
//!
//! * writes: clients on every host, each write committed by Raft and
//!   applied on every host;
//! * linearizable reads: noderep-raft reads the caller's host's replica
//!   after a read index shared by the waiting reads; the plain machine does
//!   what a plain openraft state machine does, the leader confirming its
//!   leadership for every read (`ensure_linearizable`) and reading its map
//!   (followers forward the read to it);
//! * bounded-staleness reads (100 ms) of noderep-raft against the plain
//!   machine's reads.

use noderep_raft::{
    Host, HostConfig, HostId, KvMap, KvWrite, Machine, NrMachine, PlainKv, ReadMode,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOSTS: u64 = 3;
const CLIENTS_PER_HOST: usize = 8;
const KEYS: u64 = 1000;

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    l.local_addr().expect("local address")
}

async fn cluster<M: Machine>(
    tag: &str,
    make: impl Fn() -> M,
) -> (Vec<Host<M>>, std::path::PathBuf) {
    let root =
        std::env::temp_dir().join(format!("noderep-raft-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let addrs: BTreeMap<HostId, SocketAddr> = (1..=HOSTS).map(|i| (i, free_addr())).collect();
    let mut hosts = Vec::new();
    for (&id, &addr) in &addrs {
        let cfg = HostConfig::new("bench", id, addr, root.join(format!("h{id}")))
            .members(addrs.clone())
            .snapshot_every(20_000, 5_000);
        hosts.push(Host::start(cfg, make()).await.expect("host starts"));
    }
    // Wait for a leader.
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end && !hosts.iter().any(|h| h.status().leader == Some(h.id())) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (hosts, root)
}

/// Runs `clients` loops of `op` for `secs`; returns completed operations per
/// second.
async fn rate<F, Fut>(clients: usize, dur: Duration, op: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (op, stop, done) = (Arc::clone(&op), Arc::clone(&stop), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let mut i = c as u64 * 7919;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                if op(c, i).await {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let el = start.elapsed();
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / el.as_secs_f64()
}

fn put(i: u64) -> String {
    serde_json::to_string(&KvWrite::Put {
        key: i % KEYS,
        value: i,
    })
    .expect("encode")
}

struct Rates {
    writes: f64,
    reads: f64,
    stale: f64,
    /// The plain machine behind noderep-raft's batched read index (not a
    /// plain openraft setup; shown to separate the two sources of the gain).
    batched: f64,
}

/// `rate` with client `c` calling host `c % hosts`.
async fn rate_on<M, F, Fut>(hosts: &Arc<Vec<Host<M>>>, dur: Duration, op: F) -> f64
where
    M: Machine,
    F: Fn(Host<M>, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let h = Arc::clone(hosts);
    rate(CLIENTS_PER_HOST * hosts.len(), dur, move |c, i| {
        op(h[c % h.len()].clone(), i)
    })
    .await
}

async fn stop_all<M: Machine>(hosts: Arc<Vec<Host<M>>>, root: std::path::PathBuf) {
    for h in hosts.iter() {
        h.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(root);
}

async fn noderep_round(dur: Duration) -> Rates {
    let (hosts, root) = cluster("nr", || {
        NrMachine::<KvMap>::new(Default::default()).expect("noderep instance")
    })
    .await;
    let hosts = Arc::new(hosts);
    let writes = rate_on(&hosts, dur, |h, i| async move {
        h.write_json(put(i)).await.is_ok()
    })
    .await;
    let reads = rate_on(
        &hosts,
        dur,
        |h, i| async move { h.read(i % KEYS).await.is_ok() },
    )
    .await;
    let stale = rate_on(&hosts, dur, |h, i| async move {
        let bound = Duration::from_millis(100);
        h.read_stale(i % KEYS, bound).await.is_ok()
    })
    .await;
    stop_all(hosts, root).await;
    Rates {
        writes,
        reads,
        stale,
        batched: f64::NAN,
    }
}

async fn plain_round(dur: Duration) -> Rates {
    let (hosts, root) = cluster("plain", PlainKv::default).await;
    let hosts = Arc::new(hosts);
    let writes = rate_on(&hosts, dur, |h, i| async move {
        h.write_json(put(i)).await.is_ok()
    })
    .await;
    let reads = rate_on(&hosts, dur, |h, i| async move {
        h.read_leader_only(i % KEYS).await.is_ok()
    })
    .await;
    let batched = rate_on(&hosts, dur, |h, i| async move {
        let key = (i % KEYS).to_string();
        h.query_json(&key, ReadMode::Linearizable).await.is_ok()
    })
    .await;
    stop_all(hosts, root).await;
    Rates {
        writes,
        reads,
        stale: reads,
        batched,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: f64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(default)
    };
    let rounds = arg("--rounds", 3.0) as usize;
    let dur = Duration::from_secs_f64(arg("--secs", 2.0));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (mut w, mut r, mut s, mut rb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    println!("round  system    writes/s  lin_reads/s  stale_reads/s  batched_lin_reads/s");
    for round in 0..rounds {
        // Alternate which system goes first.
        let (a, b) = if round % 2 == 0 {
            let a = rt.block_on(noderep_round(dur));
            let b = rt.block_on(plain_round(dur));
            (a, b)
        } else {
            let b = rt.block_on(plain_round(dur));
            let a = rt.block_on(noderep_round(dur));
            (a, b)
        };
        println!(
            "{round:5}  noderep {:10.0} {:12.0} {:14.0}",
            a.writes, a.reads, a.stale
        );
        println!(
            "{round:5}  plain   {:10.0} {:12.0} {:14.0} {:20.0}",
            b.writes, b.reads, b.stale, b.batched
        );
        w.push(a.writes / b.writes);
        r.push(a.reads / b.reads);
        s.push(a.stale / b.stale);
        rb.push(a.reads / b.batched);
    }
    println!(
        "median ratios over {rounds} paired rounds (noderep-raft / plain Mutex<HashMap>): \
         writes={:.2}x lin_reads={:.2}x stale_reads={:.2}x (targets: >=0.8x, >=2x, >=10x); \
         lin_reads against the plain machine behind the same batched read index: {:.2}x",
        median(w),
        median(r),
        median(s),
        median(rb)
    );
}
