//! Three hosts as three processes on loopback, a write/read workload, the
//! leader killed (SIGKILL) and restarted, and a final check.
//!
//! ```text
//! cargo run --release -p noderep-raft --example three_hosts
//! cargo run --release -p noderep-raft --example three_hosts -- --secs 3
//! ```
//!
//! The driver starts `three_hosts host ...` three times (each child runs one
//! `Host<NrMachine<KvMap>>` with its own log directory under the system's
//! temporary directory), then runs four writers (one key each, values
//! increasing) and two readers (linearizable and bounded-staleness reads)
//! through random hosts over TCP. After one phase it kills the leader's
//! process, keeps writing, measures how long writes stay unavailable,
//! restarts the killed process on its directory, keeps writing, and finally
//! reads every key on every host. It prints
//!
//! `acked=N lost=0 stale_reads=0 ...`
//!
//! and exits with status 1 if an acknowledged write was lost or a read
//! returned a value older than its guarantee allows (or one never written).

use noderep_raft::{Client, Host, HostConfig, HostId, KvMap, KvWrite, NrMachine, ReadMode};
use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLUSTER: &str = "noderep-raft-example";
const ELECTION_MS: (u64, u64) = (300, 600);
const KEYS: u64 = 4;
const STALE_BOUND: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if args.get(1).map(String::as_str) == Some("host") {
        return rt.block_on(host_main(&args[2..]));
    }
    let secs = args
        .iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    rt.block_on(driver(Duration::from_secs_f64(secs)))
}

fn parse_members(s: &str) -> Option<BTreeMap<HostId, SocketAddr>> {
    s.split(',')
        .map(|p| {
            let (id, addr) = p.split_once('=')?;
            Some((id.parse().ok()?, addr.parse().ok()?))
        })
        .collect()
}

/// A child process: one host, until its standard input closes.
async fn host_main(args: &[String]) -> ExitCode {
    let (Some(id), Some(dir), Some(members)) = (
        args.first().and_then(|s| s.parse::<HostId>().ok()),
        args.get(1),
        args.get(2).and_then(|s| parse_members(s)),
    ) else {
        eprintln!("usage: three_hosts host ID DIR 1=127.0.0.1:PORT,2=...,3=...");
        return ExitCode::from(2);
    };
    let Some(&addr) = members.get(&id) else {
        eprintln!("host {id} is not in the member list");
        return ExitCode::from(2);
    };
    let cfg = HostConfig::new(CLUSTER, id, addr, dir)
        .members(members)
        .election_timeout_ms(ELECTION_MS.0, ELECTION_MS.1)
        .snapshot_every(2000, 500);
    let machine = match NrMachine::<KvMap>::new(Default::default()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("host {id}: {e}");
            return ExitCode::from(2);
        }
    };
    let host = match Host::start(cfg, machine).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("host {id}: {e}");
            return ExitCode::from(2);
        }
    };
    // Run until the driver closes our standard input.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await;
    host.shutdown().await;
    ExitCode::SUCCESS
}

fn spawn_host(id: HostId, dir: &std::path::Path, members: &str) -> std::io::Result<Child> {
    Command::new(std::env::current_exe()?)
        .arg("host")
        .arg(id.to_string())
        .arg(dir.join(format!("host{id}")))
        .arg(members)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    l.local_addr().expect("local address")
}

/// What the writers and readers share.
struct Shared {
    client: Client,
    live: Mutex<Vec<HostId>>,
    /// Per key: (time acknowledged, value), in order.
    acks: Vec<Mutex<Vec<(Instant, u64)>>>,
    /// Per key: highest value ever sent.
    issued: Vec<AtomicU64>,
    stop: AtomicBool,
    acked: AtomicU64,
    indeterminate: AtomicU64,
    reads: AtomicU64,
    stale_mode_reads: AtomicU64,
    violations: AtomicU64,
    /// Time of the kill, and of the first acknowledgement of a write sent
    /// after it.
    killed_at: Mutex<Option<Instant>>,
    resumed_at: Mutex<Option<Instant>>,
}

impl Shared {
    fn pick(&self, n: u64) -> Option<HostId> {
        let live = self.live.lock().unwrap();
        (!live.is_empty()).then(|| live[(n as usize) % live.len()])
    }

    /// The highest value of `key` acknowledged before `t`.
    fn acked_before(&self, key: u64, t: Instant) -> u64 {
        let acks = self.acks[key as usize].lock().unwrap();
        acks.iter()
            .rev()
            .find(|(at, _)| *at < t)
            .map_or(0, |(_, v)| *v)
    }
}

async fn writer(s: Arc<Shared>, key: u64) {
    let mut value = 0u64;
    let mut n = key;
    while !s.stop.load(Ordering::Relaxed) {
        n += 1;
        let Some(host) = s.pick(n) else { continue };
        value += 1;
        s.issued[key as usize].fetch_max(value, Ordering::Relaxed);
        let sent = Instant::now();
        let op = serde_json::to_string(&KvWrite::Put { key, value }).expect("encode");
        match s.client.write_json(host, op).await {
            Ok(_) => {
                let now = Instant::now();
                s.acks[key as usize].lock().unwrap().push((now, value));
                s.acked.fetch_add(1, Ordering::Relaxed);
                let killed = *s.killed_at.lock().unwrap();
                if killed.is_some_and(|k| sent > k) {
                    let mut r = s.resumed_at.lock().unwrap();
                    if r.is_none() {
                        *r = Some(now);
                    }
                }
            }
            Err(noderep_raft::HostError::NoLeader(_)) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => {
                s.indeterminate.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn reader(s: Arc<Shared>, seed: u64) {
    let mut n = seed;
    while !s.stop.load(Ordering::Relaxed) {
        n += 1;
        let Some(host) = s.pick(n) else { continue };
        let key = n % KEYS;
        let stale = n % 3 == 0;
        let mode = if stale {
            ReadMode::Stale {
                bound_ms: STALE_BOUND.as_millis() as u64,
            }
        } else {
            ReadMode::Linearizable
        };
        let begun = Instant::now();
        let Ok(answer) = s.client.query_json(host, &key.to_string(), mode).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let value: Option<u64> = serde_json::from_str(&answer.value).unwrap_or(None);
        let value = value.unwrap_or(0);
        let floor_time = if stale {
            begun.checked_sub(STALE_BOUND).unwrap_or(begun)
        } else {
            begun
        };
        let floor = s.acked_before(key, floor_time);
        let ceiling = s.issued[key as usize].load(Ordering::Relaxed);
        if value < floor || value > ceiling {
            eprintln!(
                "violation: host {host} key {key} read {value} ({mode:?}); acknowledged before: {floor}, highest sent: {ceiling}"
            );
            s.violations.fetch_add(1, Ordering::Relaxed);
        }
        s.reads.fetch_add(1, Ordering::Relaxed);
        if stale {
            s.stale_mode_reads.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn killed_at(s: &Shared) -> Instant {
    (*s.killed_at.lock().unwrap()).expect("kill time")
}

async fn leader_of(client: &Client, hosts: &[HostId], within: Duration) -> Option<HostId> {
    let end = Instant::now() + within;
    while Instant::now() < end {
        for &h in hosts {
            if let Ok(s) = client.status(h).await {
                if s.leader == Some(s.id) {
                    return Some(h);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn stop_children(children: &mut BTreeMap<HostId, Child>) {
    for c in children.values_mut() {
        drop(c.stdin.take()); // the host shuts down cleanly on EOF
    }
    let end = Instant::now() + Duration::from_secs(5);
    for (id, c) in children.iter_mut() {
        loop {
            match c.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    eprintln!("host {id} did not stop in 5 s; killing it");
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
            }
        }
    }
}

async fn driver(phase: Duration) -> ExitCode {
    let dir = std::env::temp_dir().join(format!("noderep-raft-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let addrs: BTreeMap<HostId, SocketAddr> = (1..=3).map(|i| (i, free_port())).collect();
    let members = addrs
        .iter()
        .map(|(i, a)| format!("{i}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = BTreeMap::new();
    for &id in addrs.keys() {
        match spawn_host(id, &dir, &members) {
            Ok(c) => {
                children.insert(id, c);
            }
            Err(e) => {
                eprintln!("cannot start host {id}: {e}");
                stop_children(&mut children);
                return ExitCode::from(2);
            }
        }
    }
    let ids: Vec<HostId> = addrs.keys().copied().collect();
    let client = Client::new(CLUSTER, addrs.clone(), Duration::from_secs(3));
    let Some(first) = leader_of(&client, &ids, Duration::from_secs(20)).await else {
        eprintln!("no leader elected within 20 s");
        stop_children(&mut children);
        return ExitCode::from(2);
    };
    println!("3 hosts up, leader is host {first}; writing and reading for {phase:?}");
    let s = Arc::new(Shared {
        client,
        live: Mutex::new(ids.clone()),
        acks: (0..KEYS).map(|_| Mutex::new(Vec::new())).collect(),
        issued: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
        stop: AtomicBool::new(false),
        acked: AtomicU64::new(0),
        indeterminate: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        stale_mode_reads: AtomicU64::new(0),
        violations: AtomicU64::new(0),
        killed_at: Mutex::new(None),
        resumed_at: Mutex::new(None),
    });
    let mut tasks = Vec::new();
    for key in 0..KEYS {
        tasks.push(tokio::spawn(writer(Arc::clone(&s), key)));
    }
    for r in 0..2 {
        tasks.push(tokio::spawn(reader(Arc::clone(&s), 1000 * (r + 1))));
    }
    tokio::time::sleep(phase).await;

    // Kill the leader's process.
    let victim = leader_of(&s.client, &ids, Duration::from_secs(10))
        .await
        .unwrap_or(first);
    s.live.lock().unwrap().retain(|&h| h != victim);
    if let Some(c) = children.get_mut(&victim) {
        let _ = c.kill();
        let _ = c.wait();
    }
    *s.killed_at.lock().unwrap() = Some(Instant::now());
    println!("killed the leader, host {victim} (SIGKILL); writing on");
    let survivors: Vec<HostId> = ids.iter().copied().filter(|&h| h != victim).collect();
    let elected = leader_of(&s.client, &survivors, Duration::from_secs(10))
        .await
        .map(|_| Instant::now() - killed_at(&s));
    tokio::time::sleep(phase.max(Duration::from_secs(2))).await;

    // Restart it on its own directory.
    match spawn_host(victim, &dir, &members) {
        Ok(c) => {
            children.insert(victim, c);
        }
        Err(e) => eprintln!("cannot restart host {victim}: {e}"),
    }
    // Let it come up before clients use it again.
    let back = Instant::now() + Duration::from_secs(10);
    while Instant::now() < back && s.client.status(victim).await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.live.lock().unwrap().push(victim);
    println!("restarted host {victim}; writing on");
    tokio::time::sleep(phase).await;
    s.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }

    // Final reads: every key on every host.
    let mut lost = 0u64;
    let mut disagree = 0u64;
    for key in 0..KEYS {
        let last_acked = s.acks[key as usize]
            .lock()
            .unwrap()
            .last()
            .map_or(0, |(_, v)| *v);
        let mut seen = Vec::new();
        for &h in &ids {
            let mut v = None;
            for _ in 0..50 {
                if let Ok(a) = s
                    .client
                    .query_json(h, &key.to_string(), ReadMode::Linearizable)
                    .await
                {
                    v = serde_json::from_str::<Option<u64>>(&a.value).ok();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen.push(v.flatten().unwrap_or(0));
        }
        if seen.iter().any(|&v| v < last_acked) {
            eprintln!("key {key}: last acknowledged {last_acked}, final reads {seen:?}");
            lost += 1;
        }
        if seen.windows(2).any(|w| w[0] != w[1]) {
            disagree += 1;
        }
    }
    stop_children(&mut children);
    let _ = std::fs::remove_dir_all(&dir);

    let killed = (*s.killed_at.lock().unwrap()).expect("kill time");
    let failover = s.resumed_at.lock().unwrap().map(|r| r - killed);
    let bound = Duration::from_millis(2 * ELECTION_MS.1);
    let stale_reads = s.violations.load(Ordering::Relaxed);
    println!(
        "acked={} lost={lost} stale_reads={stale_reads} reads={} bounded_staleness_reads={} \
         indeterminate={} hosts_disagreeing={disagree} killed=host{victim} failover_ms={} \
         new_leader_ms={} failover_bound_ms={} failover_ok={}",
        s.acked.load(Ordering::Relaxed),
        s.reads.load(Ordering::Relaxed),
        s.stale_mode_reads.load(Ordering::Relaxed),
        s.indeterminate.load(Ordering::Relaxed),
        failover.map_or("none".into(), |f| f.as_millis().to_string()),
        elected.map_or("none".into(), |f| f.as_millis().to_string()),
        bound.as_millis(),
        failover.is_some_and(|f| f <= bound),
    );
    if lost > 0 || stale_reads > 0 || disagree > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
