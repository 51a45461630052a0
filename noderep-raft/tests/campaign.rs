//! Jepsen-style campaigns: clients write and read a few registers through
//! random hosts while a nemesis crashes and restarts hosts and cuts them off
//! the network; every key's history is then checked with the project's
//! linearizability checker (tests/common/lincheck.rs).
//!
//! * Acknowledged writes are recorded with their real call and return
//!   times; writes whose outcome is unknown stay open until the end of the
//!   history (they may take effect at any point after their call); writes
//!   refused before being proposed are dropped.
//! * A bounded-staleness read with bound `b` must be linearizable once its
//!   call time is moved `b` earlier: that is exactly its promise.
//! * After the faults stop, every host is restarted and healed and reads
//!   every key (part of the checked history), and all replicas of all hosts
//!   must hold the same map.
//!
//! `NODEREP_RAFT_CAMPAIGN_SECS` sets the length of each campaign (default 3
//! seconds, for CI); `NODEREP_RAFT_CAMPAIGN_SEED` fixes the random seed.

mod registers;
mod support;

#[path = "../../tests/common/lincheck.rs"]
#[allow(dead_code)]
mod lincheck;

use noderep_raft::{HostError, HostId, KvWrite};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use registers::{check_key, lost_writes, seed, Event, Op, Ret, Watchdog};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{now_ns, Cluster};

#[derive(Debug, Default)]
struct Counts {
    acked: u64,
    indeterminate: u64,
    refused: u64,
    reads: u64,
    stale_reads: u64,
    failed_reads: u64,
    faults: u64,
}

const KEYS: u64 = 3;
const CLIENTS: usize = 4;
const STALE_BOUND: Duration = Duration::from_millis(250);

fn secs() -> f64 {
    std::env::var("NODEREP_RAFT_CAMPAIGN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0)
}

async fn client(
    c: Arc<Cluster>,
    id: usize,
    origin: Instant,
    end: Instant,
    seed: u64,
    events: Arc<Mutex<Vec<Event>>>,
    counts: Arc<Mutex<Counts>>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seq = 0u64;
    while Instant::now() < end {
        let live = c.live();
        if live.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let Some(h) = c.host(live[rng.random_range(0..live.len())]) else {
            continue;
        };
        let key = rng.random_range(0..KEYS);
        let dice = rng.random_range(0..10);
        let call = now_ns(origin);
        if dice < 5 {
            seq += 1;
            let value = (id as u64 + 1) * 1_000_000 + seq;
            let r = h.write(KvWrite::Put { key, value }).await;
            let returned = now_ns(origin);
            let mut n = counts.lock().unwrap();
            let returned = match r {
                Ok(_) => {
                    n.acked += 1;
                    returned
                }
                // Never proposed: it can have no effect.
                Err(HostError::NoLeader(_)) => {
                    n.refused += 1;
                    continue;
                }
                // Unknown outcome: open until the end of the history.
                Err(_) => {
                    n.indeterminate += 1;
                    u64::MAX
                }
            };
            events.lock().unwrap().push(Event {
                key,
                client: id,
                op: Op::Write(value),
                ret: Ret::Done,
                call,
                returned,
            });
        } else {
            let stale = dice >= 8;
            let r = if stale {
                h.read_stale(key, STALE_BOUND).await.map(|s| s.value)
            } else {
                h.read(key).await
            };
            let returned = now_ns(origin);
            let mut n = counts.lock().unwrap();
            match r {
                Ok(v) => {
                    let call = if stale {
                        n.stale_reads += 1;
                        call.saturating_sub(STALE_BOUND.as_nanos() as u64)
                    } else {
                        n.reads += 1;
                        call
                    };
                    events.lock().unwrap().push(Event {
                        key,
                        client: id,
                        op: Op::Read,
                        ret: Ret::Value(v),
                        call,
                        returned,
                    });
                }
                Err(_) => n.failed_reads += 1,
            }
        }
    }
}

async fn nemesis(c: Arc<Cluster>, n: u64, end: Instant, seed: u64, counts: Arc<Mutex<Counts>>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let minority = (n - 1) / 2;
    let mut down: Vec<HostId> = Vec::new();
    let mut isolated: Option<HostId> = None;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..600))).await;
        let live = c.live();
        match rng.random_range(0..4) {
            0 if (down.len() as u64) < minority => {
                let victim = live[rng.random_range(0..live.len())];
                if Some(victim) == isolated {
                    continue;
                }
                c.crash(victim).await;
                down.push(victim);
            }
            1 if !down.is_empty() => {
                let back = down.remove(rng.random_range(0..down.len()));
                c.restart(back).await;
                // A restarted host must not talk across an active cut.
                if let Some(i) = isolated {
                    c.isolate(i);
                }
            }
            2 if isolated.is_none() && (down.len() as u64) < minority => {
                let victim = live[rng.random_range(0..live.len())];
                c.isolate(victim);
                isolated = Some(victim);
            }
            3 if isolated.is_some() => {
                c.heal();
                isolated = None;
            }
            _ => continue,
        }
        counts.lock().unwrap().faults += 1;
    }
    c.heal();
    for id in down {
        c.restart(id).await;
    }
}

async fn campaign(n: u64) {
    // Generous: ten times the fault phase plus two minutes to settle and check.
    let _watchdog = Watchdog::arm(
        &format!("in-process campaign, {n} hosts"),
        Duration::from_secs_f64(10.0 * secs() + 120.0),
    );
    let seed = seed();
    let c = Cluster::start(n).await;
    let origin = Instant::now();
    let end = origin + Duration::from_secs_f64(secs());
    let events = Arc::new(Mutex::new(Vec::new()));
    let counts = Arc::new(Mutex::new(Counts::default()));
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        tasks.push(tokio::spawn(client(
            Arc::clone(&c),
            id,
            origin,
            end,
            seed.wrapping_add(id as u64 + 1),
            Arc::clone(&events),
            Arc::clone(&counts),
        )));
    }
    let nem = tokio::spawn(nemesis(Arc::clone(&c), n, end, seed, Arc::clone(&counts)));
    for t in tasks {
        t.await.unwrap();
    }
    nem.await.unwrap();
    assert_eq!(c.live().len() as u64, n, "every host is back");
    let revived = c.revive().await;
    assert!(
        c.wait_leader(Duration::from_secs(10)).await.is_some(),
        "a leader after healing"
    );
    // Final reads, from every host, of every key.
    for id in c.live() {
        for key in 0..KEYS {
            // A read has no effect, so a failed one (the cluster still
            // settling after the last fault) is simply tried again.
            let mut tries = 0;
            let (call, v, returned) = loop {
                let h = c.host(id).unwrap();
                let call = now_ns(origin);
                match h.read(key).await {
                    Ok(v) => break (call, v, now_ns(origin)),
                    Err(e) if tries < 20 => {
                        tries += 1;
                        eprintln!("final read of key {key} on host {id}: {e}; retrying");
                        c.revive().await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("no read after healing: {e}"),
                }
            };
            events.lock().unwrap().push(Event {
                key,
                client: CLIENTS + id as usize,
                op: Op::Read,
                ret: Ret::Value(v),
                call,
                returned,
            });
        }
    }
    // All replicas of all hosts agree.
    let mut maps = Vec::new();
    for id in c.live() {
        let mut tries = 0;
        while let Err(e) = c.host(id).unwrap().barrier().await {
            tries += 1;
            assert!(tries < 20, "no barrier after healing: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let h = c.host(id).unwrap();
        maps.extend(h.machine().inspect(|_, d| d.clone()).unwrap());
    }
    assert!(maps.windows(2).all(|w| w[0] == w[1]), "replicas diverge");

    let events = events.lock().unwrap().clone();
    let counts = std::mem::take(&mut *counts.lock().unwrap());
    let mut lost = 0;
    let mut ops = 0;
    for key in 0..KEYS {
        ops += check_key(&events, key, seed);
        // The final value: that of the last read of the key, made after
        // the faults stopped (by the clients numbered from CLIENTS on).
        let last = events
            .iter()
            .rev()
            .find(|e| e.key == key && e.client >= CLIENTS)
            .and_then(|e| match e.ret {
                Ret::Value(v) => v,
                Ret::Done => None,
            });
        lost += lost_writes(&events, key, last).len();
    }
    println!(
        "campaign hosts={n} secs={} seed={seed} faults={} ops={ops} acked={} lost={lost} \
         indeterminate={} refused={} reads={} stale_reads={} failed_reads={} \
         histories={KEYS} non_linearizable=0 engine_restarts={revived}",
        secs(),
        counts.faults,
        counts.acked,
        counts.indeterminate,
        counts.refused,
        counts.reads,
        counts.stale_reads,
        counts.failed_reads,
    );
    assert_eq!(lost, 0, "acknowledged writes lost");
    assert!(counts.acked > 0, "some writes were acknowledged");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_three_hosts() {
    campaign(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_five_hosts() {
    campaign(5).await;
}
