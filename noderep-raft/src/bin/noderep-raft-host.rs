//! One host of a noderep-raft cluster as a process of its own: a
//! `Host<NrMachine<KvMap>>` on a log directory, until its standard input
//! closes (then it shuts down cleanly) or it is killed.
//!
//! ```text
//! noderep-raft-host --cluster NAME --id 1 --dir /tmp/h1 \
//!     --members 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \
//!     [--election-ms 150,300] [--heartbeat-ms 50] [--snapshot-every 200,50] \
//!     [--op-timeout-ms 2000] [--private-network]
//! ```
//!
//! The process-level campaign (tests/netns_campaign.rs) starts one of these
//! per network namespace, SIGKILLs it and starts it again on the same
//! directory. `--private-network` lets the host use a private IPv4 address
//! (see `HostConfig::private_network`).
//!
//! On standard error it logs, besides start and stop, every change of the
//! host's role, term, vote or leader as `@<Unix time in ms> host <id>: ...`;
//! the campaign lines these up with its own clock to explain a slow
//! failover.
//!
//! Exit status: 0 after a clean shutdown, 2 on bad arguments or a host that
//! cannot start (the message says why), 3 when the Raft engine stopped on
//! its own (the directory is intact; start the host again).

use noderep_raft::{Host, HostConfig, HostId, KvMap, NrMachine};
use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: noderep-raft-host --cluster NAME --id N --dir DIR \
--members 1=IP:PORT,2=IP:PORT,... [--election-ms MIN,MAX] [--heartbeat-ms N] \
[--snapshot-every ENTRIES,KEEP] [--op-timeout-ms N] [--private-network]";

/// How long a restarted host keeps trying to bind its address (a killed
/// predecessor's socket may linger for a moment).
const LISTEN_RETRY: Duration = Duration::from_secs(5);

fn parse_members(s: &str) -> Result<BTreeMap<HostId, SocketAddr>, String> {
    s.split(',')
        .map(|p| {
            let (id, addr) = p
                .split_once('=')
                .ok_or_else(|| format!("member {p:?} is not ID=IP:PORT"))?;
            let id = id
                .parse()
                .map_err(|e| format!("member id {id:?} is not a number: {e}"))?;
            let addr = addr
                .parse()
                .map_err(|e| format!("member address {addr:?} is not IP:PORT: {e}"))?;
            Ok((id, addr))
        })
        .collect()
}

fn parse_pair(flag: &str, s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("{flag} takes two numbers A,B, not {s:?}"))?;
    let n = |x: &str| {
        x.parse::<u64>()
            .map_err(|e| format!("{flag}: {x:?} is not a number: {e}"))
    };
    Ok((n(a)?, n(b)?))
}

fn parse_u64(flag: &str, s: &str) -> Result<u64, String> {
    s.parse()
        .map_err(|e| format!("{flag}: {s:?} is not a number: {e}"))
}

fn parse(args: &[String]) -> Result<HostConfig, String> {
    let mut cluster = None;
    let mut id = None;
    let mut dir = None;
    let mut members = None;
    let mut election = None;
    let mut heartbeat = None;
    let mut snapshot = None;
    let mut op_timeout = None;
    let mut private = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--private-network" {
            private = true;
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .as_str();
        match flag.as_str() {
            "--cluster" => cluster = Some(value.to_string()),
            "--id" => id = Some(parse_u64(flag, value)?),
            "--dir" => dir = Some(value.to_string()),
            "--members" => members = Some(parse_members(value)?),
            "--election-ms" => election = Some(parse_pair(flag, value)?),
            "--heartbeat-ms" => heartbeat = Some(parse_u64(flag, value)?),
            "--snapshot-every" => snapshot = Some(parse_pair(flag, value)?),
            "--op-timeout-ms" => op_timeout = Some(parse_u64(flag, value)?),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let cluster = cluster.ok_or("--cluster is required")?;
    let id = id.ok_or("--id is required")?;
    let dir = dir.ok_or("--dir is required")?;
    let members = members.ok_or("--members is required")?;
    let addr = *members
        .get(&id)
        .ok_or_else(|| format!("host {id} is not in --members"))?;
    let mut cfg = HostConfig::new(&cluster, id, addr, dir)
        .members(members)
        .private_network(private);
    if let Some((min, max)) = election {
        cfg = cfg.election_timeout_ms(min, max);
    }
    if let Some(ms) = heartbeat {
        cfg = cfg.heartbeat_ms(ms);
    }
    if let Some((every, keep)) = snapshot {
        cfg = cfg.snapshot_every(every, keep);
    }
    if let Some(ms) = op_timeout {
        cfg = cfg.op_timeout(Duration::from_millis(ms));
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("noderep-raft-host: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("noderep-raft-host: no tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = rt.block_on(run(cfg));
    // The thread blocked on standard input would hold a plain drop of the
    // runtime forever (after the engine stopped, stdin is still open).
    rt.shutdown_background();
    code
}

/// Milliseconds since the Unix epoch: the one clock that the campaign and
/// every host process share, so that their logs can be lined up.
fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Logs every change of the host's role, term, vote or leader as
/// `@<unix ms> host <id>: ...`, so that a slow failover can be explained
/// from the hosts' logs (the campaign prints these lines for slow ones).
async fn log_roles(host: Host<NrMachine<KvMap>>) {
    let id = host.id();
    let mut rx = host.raft().metrics();
    let mut last = String::new();
    loop {
        let line = {
            let m = rx.borrow_and_update();
            format!(
                "{:?} term {} vote {} leader {:?} last_log {:?} applied {:?}",
                m.state,
                m.current_term,
                m.vote,
                m.current_leader,
                m.last_log_index,
                m.last_applied.map(|l| l.index),
            )
        };
        // Only role changes: the indexes move with every write.
        let role = line
            .split(" last_log")
            .next()
            .unwrap_or_default()
            .to_string();
        if role != last {
            eprintln!("@{} host {id}: {line}", unix_ms());
            last = role;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn run(cfg: HostConfig) -> ExitCode {
    let start = Instant::now();
    let host = loop {
        let machine = match NrMachine::<KvMap>::new(Default::default()) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("noderep-raft-host: {e}");
                return ExitCode::from(2);
            }
        };
        match Host::start(cfg.clone(), machine).await {
            Ok(h) => break h,
            Err(e @ noderep_raft::HostError::Listen { .. }) if start.elapsed() < LISTEN_RETRY => {
                eprintln!("noderep-raft-host: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                eprintln!("noderep-raft-host: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let id = host.id();
    eprintln!("noderep-raft-host: host {id} started");
    tokio::spawn(log_roles(host.clone()));
    let mut eof = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    });
    loop {
        tokio::select! {
            _ = &mut eof => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if let Some(why) = host.stopped() {
                    eprintln!("noderep-raft-host: host {id}: Raft engine stopped ({why})");
                    host.shutdown().await;
                    return ExitCode::from(3);
                }
            }
        }
    }
    host.shutdown().await;
    eprintln!("noderep-raft-host: host {id} shut down");
    ExitCode::SUCCESS
}
