//! Process-level Jepsen-style campaigns on 3 and 5 hosts: every host is an
//! OS process (`noderep-raft-host`) in a network namespace of its own; the
//! nemesis SIGKILLs and restarts host processes on their directories, cuts
//! the veth links between hosts (partitions) and, where `nft` is installed,
//! drops a fifth of a host's incoming packets; clients in a namespace of
//! their own record every operation, and each key's history is checked
//! with the project's linearizability checker (tests/common/lincheck.rs).
//!
//! # How it works
//!
//! * **Network.** One namespace per host and one for the clients, all
//!   created by this test and named after its process id (`nrr<pid>n<N>h<i>`,
//!   `nrr<pid>n<N>c`). Host `i` has the address 10.213.0.`i` on its own
//!   loopback device; every pair of hosts is joined by a veth pair (`p<j>`
//!   in host `i`'s namespace leads to host `j`), and every host by one more
//!   veth pair to the clients' namespace (10.213.0.100). Host routes (one
//!   /32 per peer) send each address down its own link, so cutting a link
//!   cuts exactly one pair of hosts; clients are never cut off (as in
//!   Jepsen, they talk to hosts on both sides of a partition). Nothing is
//!   added to the machine's own namespace.
//! * **Clients** run on a tokio runtime whose threads all enter the
//!   clients' namespace (`setns`) before running anything, so every socket
//!   they open lives there; the test asserts it.
//! * **Faults.** Kill: SIGKILL of a host's process (half of the time the
//!   current leader, and always the first fault, on a healthy cluster).
//!   Restart: the same binary on the same directory. Partition:
//!   one host isolated, or a minority/majority split, or (5 hosts) two
//!   pairs that each still reach one bridge host; links are set down (the
//!   kernel drops the routes on the down end, and the other end loses its
//!   carrier). Heal: links up, routes back. Loss: an nftables rule in one
//!   host's namespace drops 20% of its incoming packets (`numgen random`),
//!   because `tc netem` is missing from these kernels. A host process that
//!   exits by itself (its Raft engine stopped) is started again and counted.
//! * **Failover.** Every kill of the leader is timed from the moment its
//!   process was reaped: until a survivor reports itself leader
//!   ("elected"), and until the first write called after the kill is
//!   acknowledged ("writes resumed"; one probe writer per survivor sends
//!   writes through that survivor, on a register of their own that is
//!   checked like the others). Kills with no partition or loss active
//!   ("clean") are reported against the target, writes resumed within
//!   twice the election timeout's maximum; kills during a partition or loss
//!   are reported apart, since the failover may then have to wait for a
//!   heal. After a clean kill the nemesis holds still until writes have
//!   resumed. Each host process logs its role changes with the Unix time
//!   in ms; for a clean kill that missed the target (for every timed kill
//!   with `NODEREP_RAFT_NETNS_TRACE=1`) the hosts' log lines around it are
//!   printed, which tells a split vote, a refused candidate or a slow
//!   commit apart.
//! * **Histories**: as in tests/campaign.rs. Acknowledged writes have their
//!   real call and return times; writes of unknown outcome stay open until
//!   the end; writes refused before being proposed are dropped; a
//!   bounded-staleness read with bound `b` has its call moved `b` earlier.
//!   After the faults stop, everything is healed and restarted, every host
//!   reads every key (part of the checked history), and all must agree.
//! * **Clean-up**: a guard kills every process left in the host namespaces
//!   and deletes the namespaces, also when the test fails; namespaces left
//!   by an earlier run whose process is gone are removed first.
//!
//! Without root, or where `ip netns`, veth links or `ip netns exec` do not
//! work (probed in a throwaway namespace), the test prints a SKIP line
//! saying why and passes; without a working `nft` it runs without the loss
//! fault and says so. Nothing is asserted about failover times but that
//! writes resume within 10 s of every clean kill of the leader; the times
//! are printed with the target for comparison.
//! `NODEREP_RAFT_NETNS_SECS` sets the length of each
//! campaign (default 12 s), `NODEREP_RAFT_CAMPAIGN_SEED` the random seed.

#[path = "../../tests/common/lincheck.rs"]
#[allow(dead_code)]
mod lincheck;
mod registers;

use noderep_raft::{Client, HostError, HostId, KvWrite, ReadMode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use registers::{check_key, lost_writes, seed, Event, Op, Ret, Watchdog};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const HOST_BIN: &str = env!("CARGO_BIN_EXE_noderep-raft-host");
const CLUSTER: &str = "noderep-raft-netns";
/// Host `i` is at `NET.i`, the clients at `NET.100`.
const NET: &str = "10.213.0";
const CLIENT_OCTET: u64 = 100;
const PORT: u16 = 7000;
const ELECTION_MS: (u64, u64) = (300, 600);
const HEARTBEAT_MS: u64 = 100;
const KEYS: u64 = 3;
/// The register the failover probes write (after the clients' keys): kept
/// apart so that the probes' writes, which come in bursts of concurrent
/// attempts around each kill, do not enlarge the clients' histories, and
/// checked like them.
const PROBE_KEY: u64 = KEYS;
const CLIENTS: usize = 4;
const STALE_BOUND: Duration = Duration::from_millis(250);
const LOSS_PERCENT: u32 = 20;
/// How long a failover is waited for before it is recorded as not having
/// happened (which fails the campaign for a clean kill).
const FAILOVER_WAIT: Duration = Duration::from_secs(10);
/// The failover target: writes resume within twice the (maximum) election
/// timeout after the leader is killed. Reported, not asserted (timings on
/// a shared 2-vCPU machine are noisy).
const FAILOVER_TARGET_MS: u64 = 2 * ELECTION_MS.1;
/// Probe writes carry values from here up (the clients' stay far below).
const PROBE_VALUES: u64 = 1_000_000_000;

// ---------------------------------------------------------------- the model

fn now_ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

/// The clock the host processes write in their logs (see `log_roles` in
/// the host binary).
fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

// ------------------------------------------------------------ configuration

fn secs() -> f64 {
    std::env::var("NODEREP_RAFT_NETNS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12.0)
}

/// Writes a line to the process's standard error directly, past the test
/// harness's capture, so that a SKIP or the figures show in CI logs even
/// when the test passes.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

// ------------------------------------------------------------ the network

/// Runs `ip ARGS`, returning its error output on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip_ok(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("{e}");
    }
}

/// Why this machine cannot run the campaign, if it cannot.
fn skip_reason() -> Option<String> {
    // SAFETY: geteuid(2) takes no arguments, cannot fail and touches no
    // memory of ours.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!(
            "not root (euid {euid}): creating network namespaces and veth links needs root"
        ));
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return Some(format!(
                "`ip -V` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
        Err(e) => return Some(format!("iproute2's `ip` cannot be run: {e}")),
    }
    // A throwaway namespace proves that `ip netns`, veth links and
    // `ip netns exec` work here (a container may allow one but not another).
    let probe = format!("nrr{}probe", std::process::id());
    if let Err(e) = ip(&["netns", "add", &probe]) {
        return Some(format!("`ip netns add` does not work here: {e}"));
    }
    let checks = ip(&[
        "-n", &probe, "link", "add", "name", "probe0", "type", "veth", "peer", "name", "probe1",
    ])
    .map_err(|e| format!("veth links cannot be created here: {e}"))
    .and_then(|()| {
        match Command::new("ip")
            .args(["netns", "exec", &probe, "true"])
            .output()
        {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!(
                "`ip netns exec` does not work here: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(format!("`ip netns exec` cannot be run: {e}")),
        }
    });
    remove_netns(&probe);
    checks.err()
}

fn kill9(pid: i32) {
    // SAFETY: kill(2) takes two integers and touches no memory of ours; the
    // pid was listed by `ip netns pids` in a namespace this test created.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Kills what runs in namespace `ns` (never this process) and deletes it.
fn remove_netns(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        let me = std::process::id() as i32;
        for pid in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter(|&p| p != me)
        {
            kill9(pid);
        }
    }
    if let Err(e) = ip(&["netns", "del", ns]) {
        eprintln!("clean-up: {e}");
    }
}

/// Removes namespaces of earlier runs of this test whose process is gone
/// (a run killed before its guard could clean up).
fn sweep_stale_namespaces() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("nrr") else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(pid) = digits.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !PathBuf::from(format!("/proc/{pid}")).exists() {
            eprintln!("removing namespace {name} left by an earlier run (pid {pid} is gone)");
            remove_netns(&name);
        }
    }
}

/// The namespaces and links of one campaign; dropping it kills every host
/// process and deletes every namespace.
struct Net {
    n: u64,
    client: String,
    hosts: Vec<String>,
    created: Vec<String>,
}

impl Net {
    fn addr(octet: u64) -> String {
        format!("{NET}.{octet}")
    }

    fn host_ns(&self, i: u64) -> &str {
        &self.hosts[(i - 1) as usize]
    }

    fn create(n: u64) -> Self {
        let pid = std::process::id();
        let mut net = Net {
            n,
            client: format!("nrr{pid}n{n}c"),
            hosts: (1..=n).map(|i| format!("nrr{pid}n{n}h{i}")).collect(),
            created: Vec::new(),
        };
        let all: Vec<(String, u64)> = std::iter::once((net.client.clone(), CLIENT_OCTET))
            .chain((1..=n).map(|i| (net.hosts[(i - 1) as usize].clone(), i)))
            .collect();
        for (ns, octet) in &all {
            ip_ok(&["netns", "add", ns]);
            net.created.push(ns.clone());
            ip_ok(&["-n", ns, "link", "set", "lo", "up"]);
            ip_ok(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/32", Self::addr(*octet)),
                "dev",
                "lo",
            ]);
        }
        for i in 1..=n {
            for j in i + 1..=n {
                net.link(i, j, &format!("p{j}"), &format!("p{i}"));
            }
            net.link(i, CLIENT_OCTET, "c0", &format!("h{i}"));
        }
        net
    }

    fn ns_of(&self, octet: u64) -> &str {
        if octet == CLIENT_OCTET {
            &self.client
        } else {
            self.host_ns(octet)
        }
    }

    /// A veth pair between `a` (device `dev_a`) and `b` (device `dev_b`),
    /// with a /32 route each way.
    fn link(&self, a: u64, b: u64, dev_a: &str, dev_b: &str) {
        let (ns_a, ns_b) = (self.ns_of(a), self.ns_of(b));
        ip_ok(&[
            "-n", ns_a, "link", "add", "name", dev_a, "type", "veth", "peer", "name", dev_b,
            "netns", ns_b,
        ]);
        self.up(a, dev_a, b);
        self.up(b, dev_b, a);
    }

    /// Sets `dev` of `from` up and routes `to`'s address through it.
    fn up(&self, from: u64, dev: &str, to: u64) {
        let ns = self.ns_of(from);
        ip_ok(&["-n", ns, "link", "set", dev, "up"]);
        ip_ok(&[
            "-n",
            ns,
            "route",
            "replace",
            &format!("{}/32", Self::addr(to)),
            "dev",
            dev,
            "src",
            &Self::addr(from),
        ]);
    }

    /// Cuts or restores the link between hosts `i` and `j`.
    fn set_pair(&self, i: u64, j: u64, connected: bool) {
        if connected {
            self.up(i, &format!("p{j}"), j);
            self.up(j, &format!("p{i}"), i);
        } else {
            ip_ok(&[
                "-n",
                self.host_ns(i),
                "link",
                "set",
                &format!("p{j}"),
                "down",
            ]);
        }
    }

    /// Drops `LOSS_PERCENT`% of the packets host `i` receives, or stops.
    fn set_loss(&self, i: u64, on: bool) {
        let ns = self.host_ns(i);
        let script = if on {
            format!(
                "table inet nrrloss {{\n  chain input {{\n    type filter hook input priority 0; \
                 policy accept;\n    ip saddr {NET}.0/24 numgen random mod 100 < {LOSS_PERCENT} \
                 drop\n  }}\n}}\n"
            )
        } else {
            "delete table inet nrrloss\n".to_string()
        };
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft");
        child
            .stdin
            .take()
            .expect("nft's stdin")
            .write_all(script.as_bytes())
            .expect("write the nft script");
        let out = child.wait_with_output().expect("wait for nft");
        assert!(
            out.status.success(),
            "nft -f - <<< {script:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn members(&self) -> BTreeMap<HostId, SocketAddr> {
        (1..=self.n)
            .map(|i| (i, format!("{}:{PORT}", Self::addr(i)).parse().unwrap()))
            .collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            remove_netns(ns);
        }
    }
}

/// Whether `nft` can drop packets in a namespace of ours (the tool may be
/// missing, or the kernel may lack nf_tables).
fn nft_works() -> Result<(), String> {
    let probe = format!("nrr{}nft", std::process::id());
    ip(&["netns", "add", &probe])?;
    let r = Command::new("ip")
        .args([
            "netns", "exec", &probe, "nft", "add", "table", "inet", "nrrprobe",
        ])
        .output();
    remove_netns(&probe);
    match r {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Err(format!("cannot run nft: {e}")),
    }
}

// ------------------------------------------------------------ host processes

/// The host processes of one campaign and their directories.
struct Procs {
    root: PathBuf,
    members: String,
    children: BTreeMap<HostId, Child>,
    namespaces: BTreeMap<HostId, String>,
    /// Processes that exited by themselves and were started again.
    self_exits: u64,
}

impl Procs {
    fn spawn(&mut self, id: HostId) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(format!("host{id}.log")))
            .expect("host log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespaces[&id], HOST_BIN])
            .args(["--cluster", CLUSTER, "--id", &id.to_string()])
            .arg("--dir")
            .arg(self.root.join(format!("host{id}")))
            .args(["--members", &self.members, "--private-network"])
            .args([
                "--election-ms",
                &format!("{},{}", ELECTION_MS.0, ELECTION_MS.1),
            ])
            .args(["--heartbeat-ms", &HEARTBEAT_MS.to_string()])
            .args(["--snapshot-every", "300,50", "--op-timeout-ms", "1500"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a host process");
        self.children.insert(id, child);
    }

    /// SIGKILL (`ip netns exec` execs the host, so the child is the host).
    fn kill(&mut self, id: HostId) {
        if let Some(mut c) = self.children.remove(&id) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn live(&self) -> Vec<HostId> {
        self.children.keys().copied().collect()
    }

    /// Starts again every live host whose process has exited by itself.
    fn restart_exited(&mut self) {
        let exited: Vec<(HostId, std::process::ExitStatus)> = self
            .children
            .iter_mut()
            .filter_map(|(id, c)| c.try_wait().ok().flatten().map(|s| (*id, s)))
            .collect();
        for (id, status) in exited {
            eprintln!("host {id} exited by itself ({status}); starting it again");
            self.self_exits += 1;
            self.spawn(id);
        }
    }

    /// Closes every host's standard input (a clean shutdown), then kills
    /// what is still running after 5 s.
    fn stop_all(&mut self) {
        for c in self.children.values_mut() {
            drop(c.stdin.take());
        }
        let end = Instant::now() + Duration::from_secs(5);
        for (id, c) in self.children.iter_mut() {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < end => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        eprintln!("host {id} did not stop in 5 s; killing it");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
        self.children.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.children.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "host directories and logs kept in {} for inspection",
                self.root.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

// ------------------------------------------------------------ the campaign

#[derive(Debug, Default)]
struct Counts {
    acked: u64,
    indeterminate: u64,
    refused: u64,
    reads: u64,
    stale_reads: u64,
    failed_reads: u64,
    kills: u64,
    leader_kills: u64,
    restarts: u64,
    partitions: u64,
    heals: u64,
    loss_on: u64,
    loss_off: u64,
    /// Every kill of the leader, timed.
    failovers: Vec<Failover>,
}

/// One kill of the leader, timed from the moment its process was reaped.
#[derive(Debug, Clone)]
struct Failover {
    /// Unix time of the kill in ms, to line it up with the hosts' logs
    /// (each host process logs its role changes with the same clock).
    at_unix_ms: u128,
    /// No partition or packet loss was active at the kill. Only such kills
    /// are held to the failover target; the others are reported apart.
    clean: bool,
    /// Until a survivor reported itself leader (`None`: not within
    /// [`FAILOVER_WAIT`]).
    elected_ms: Option<u64>,
    /// Until the first acknowledged write called after the kill (a write
    /// that only a leader elected after the kill can have acknowledged).
    resumed_ms: Option<u64>,
}

/// What the client tasks and the nemesis share.
struct World {
    client: Client,
    n: u64,
    origin: Instant,
    end: Instant,
    events: Mutex<Vec<Event>>,
    counts: Mutex<Counts>,
}

async fn client(w: Arc<World>, id: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seq = 0u64;
    // After a write of unknown outcome the client continues as a new
    // logical client (as in Jepsen): the open write may still take effect.
    let mut generation = 0usize;
    while Instant::now() < w.end {
        let host = rng.random_range(1..=w.n);
        let key = rng.random_range(0..KEYS);
        let dice = rng.random_range(0..10);
        let thread = id * 10_000 + generation;
        let call = now_ns(w.origin);
        if dice < 5 {
            seq += 1;
            let value = (id as u64 + 1) * 1_000_000 + seq;
            let op = serde_json::to_string(&KvWrite::Put { key, value }).unwrap();
            let r = w.client.write_json(host, op).await;
            let returned = now_ns(w.origin);
            let returned = match r {
                Ok(_) => {
                    w.counts.lock().unwrap().acked += 1;
                    returned
                }
                // Never proposed: it can have no effect.
                Err(HostError::NoLeader(_)) => {
                    w.counts.lock().unwrap().refused += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                // Unknown outcome: open until the end of the history.
                Err(_) => {
                    w.counts.lock().unwrap().indeterminate += 1;
                    generation += 1;
                    u64::MAX
                }
            };
            w.events.lock().unwrap().push(Event {
                key,
                client: thread,
                op: Op::Write(value),
                ret: Ret::Done,
                call,
                returned,
            });
        } else {
            let stale = dice >= 8;
            let mode = if stale {
                ReadMode::Stale {
                    bound_ms: STALE_BOUND.as_millis() as u64,
                }
            } else {
                ReadMode::Linearizable
            };
            let r = w.client.query_json(host, &key.to_string(), mode).await;
            let returned = now_ns(w.origin);
            match r {
                Ok(a) => {
                    let v: Option<u64> = serde_json::from_str(&a.value).expect("a register value");
                    let call = {
                        let mut n = w.counts.lock().unwrap();
                        if stale {
                            n.stale_reads += 1;
                            call.saturating_sub(STALE_BOUND.as_nanos() as u64)
                        } else {
                            n.reads += 1;
                            call
                        }
                    };
                    w.events.lock().unwrap().push(Event {
                        key,
                        client: thread,
                        op: Op::Read,
                        ret: Ret::Value(v),
                        call,
                        returned,
                    });
                }
                Err(_) => {
                    w.counts.lock().unwrap().failed_reads += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// The host that says it is the leader, among `among`.
async fn leader(client: &Client, among: &[HostId]) -> Option<HostId> {
    for &h in among {
        if let Ok(s) = client.status(h).await {
            if s.leader == Some(s.id) {
                return Some(h);
            }
        }
    }
    None
}

async fn wait_leader(client: &Client, among: &[HostId], within: Duration) -> Option<HostId> {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if let Some(l) = leader(client, among).await {
            return Some(l);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Probe writers per timed kill (one per survivor; at most 4).
const PROBES_PER_KILL: usize = 4;

/// Times one kill of the leader: until a survivor reports itself leader,
/// and until the first write called after the kill is acknowledged. One
/// probe writer per survivor sends writes through that survivor (as a
/// client that does not know the leader would), each write starting when
/// the previous one was refused; all probe writes join the checked history.
async fn time_failover(
    w: Arc<World>,
    survivors: Vec<HostId>,
    killed: Instant,
    at_unix_ms: u128,
    clean: bool,
    probe_base: usize,
) {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut probes = tokio::task::JoinSet::new();
    for (i, &h) in survivors.iter().enumerate().take(PROBES_PER_KILL) {
        probes.spawn(probe(
            Arc::clone(&w),
            h,
            killed,
            Arc::clone(&done),
            probe_base + i,
        ));
    }
    let elected_ms = wait_leader(&w.client, &survivors, FAILOVER_WAIT)
        .await
        .map(|_| killed.elapsed().as_millis() as u64);
    let mut resumed_ms = None;
    while let Some(r) = probes.join_next().await {
        if let Some(ms) = r.expect("probe task") {
            resumed_ms = Some(resumed_ms.map_or(ms, |m: u64| m.min(ms)));
            // Relaxed: a stop flag; the probes' events go through a lock.
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    w.counts.lock().unwrap().failovers.push(Failover {
        at_unix_ms,
        clean,
        elected_ms,
        resumed_ms,
    });
}

/// Writes through `host` until one write is acknowledged (returning the
/// milliseconds from `killed` to its acknowledgement), another probe has
/// succeeded, or [`FAILOVER_WAIT`] has passed.
async fn probe(
    w: Arc<World>,
    host: HostId,
    killed: Instant,
    done: Arc<std::sync::atomic::AtomicBool>,
    id: usize,
) -> Option<u64> {
    let key = PROBE_KEY;
    let mut seq = 0u64;
    let mut generation = 0usize;
    // Relaxed: see `time_failover`.
    while !done.load(std::sync::atomic::Ordering::Relaxed) && killed.elapsed() < FAILOVER_WAIT {
        seq += 1;
        let value = PROBE_VALUES + id as u64 * 1_000_000 + seq;
        let op = serde_json::to_string(&KvWrite::Put { key, value }).unwrap();
        let call = now_ns(w.origin);
        let r = w.client.write_json(host, op).await;
        let returned = now_ns(w.origin);
        let (ret, acked) = match r {
            Ok(_) => (returned, true),
            Err(HostError::NoLeader(_)) => {
                w.counts.lock().unwrap().refused += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
            Err(_) => (u64::MAX, false),
        };
        w.events.lock().unwrap().push(Event {
            key,
            client: 500_000 + id * 100 + generation,
            op: Op::Write(value),
            ret: Ret::Done,
            call,
            returned: ret,
        });
        {
            let mut c = w.counts.lock().unwrap();
            if acked {
                c.acked += 1;
                return Some(killed.elapsed().as_millis() as u64);
            }
            c.indeterminate += 1;
        }
        generation += 1;
        // Every such write stays open to the end of the history: do not
        // pile them up if a host keeps failing fast.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// `n=…, median, max, within the target` of some failover times.
fn summary(ms: &[Option<u64>]) -> String {
    let mut got: Vec<u64> = ms.iter().flatten().copied().collect();
    got.sort_unstable();
    if got.is_empty() {
        return format!("n={} none", ms.len());
    }
    format!(
        "n={} median={} max={} within_{FAILOVER_TARGET_MS}ms={}/{}",
        ms.len(),
        got[got.len() / 2],
        got[got.len() - 1],
        got.iter().filter(|&&m| m <= FAILOVER_TARGET_MS).count(),
        ms.len(),
    )
}

/// The hosts' log lines from shortly before a kill to shortly after its
/// failover, in time order (each host process stamps its lines with the
/// Unix time in ms; see the host binary).
fn host_log_window(root: &std::path::Path, n: u64, fo: &Failover) -> Vec<String> {
    let from = fo.at_unix_ms.saturating_sub(800);
    let until = fo.at_unix_ms
        + u128::from(
            fo.resumed_ms
                .max(fo.elected_ms)
                .unwrap_or(FAILOVER_WAIT.as_millis() as u64),
        )
        + 200;
    let mut lines: Vec<(u128, String)> = Vec::new();
    for i in 1..=n {
        let text = match std::fs::read_to_string(root.join(format!("host{i}.log"))) {
            Ok(t) => t,
            Err(e) => {
                lines.push((0, format!("  (host {i}'s log cannot be read: {e})")));
                continue;
            }
        };
        for l in text.lines() {
            let Some(t) = l
                .strip_prefix('@')
                .and_then(|r| r.split_whitespace().next())
                .and_then(|t| t.parse::<u128>().ok())
            else {
                continue;
            };
            if (from..=until).contains(&t) {
                lines.push((
                    t,
                    format!("  {:+6} ms {}", t as i128 - fo.at_unix_ms as i128, l),
                ));
            }
        }
    }
    lines.sort();
    lines.into_iter().map(|(_, l)| l).collect()
}

/// Prints the failover figures of one campaign, and for every clean kill
/// that missed the target (every timed kill, with
/// `NODEREP_RAFT_NETNS_TRACE=1`) the hosts' log lines around it.
fn report_failovers(n: u64, failovers: &[Failover], root: &std::path::Path) {
    let trace_all = std::env::var_os("NODEREP_RAFT_NETNS_TRACE").is_some();
    for (label, clean) in [("clean", true), ("under_faults", false)] {
        let fos: Vec<&Failover> = failovers.iter().filter(|f| f.clean == clean).collect();
        let elected: Vec<Option<u64>> = fos.iter().map(|f| f.elected_ms).collect();
        let resumed: Vec<Option<u64>> = fos.iter().map(|f| f.resumed_ms).collect();
        report(&format!(
            "netns failover hosts={n} {label} leader_kills={} elected: {} | writes_resumed: {} \
             | per kill (elected,resumed) ms: {:?} | target {FAILOVER_TARGET_MS} ms = 2x \
             election timeout max ({}..{} ms)",
            fos.len(),
            summary(&elected),
            summary(&resumed),
            fos.iter()
                .map(|f| (f.elected_ms, f.resumed_ms))
                .collect::<Vec<_>>(),
            ELECTION_MS.0,
            ELECTION_MS.1,
        ));
    }
    for fo in failovers {
        let slow = fo.clean
            && (fo.resumed_ms.is_none_or(|m| m > FAILOVER_TARGET_MS)
                || fo.elected_ms.is_none_or(|m| m > FAILOVER_TARGET_MS));
        if slow || trace_all {
            report(&format!(
                "netns failover hosts={n} {}: {fo:?}; the hosts' logs around it:",
                if slow { "MISSED THE TARGET" } else { "trace" }
            ));
            for l in host_log_window(root, n, fo) {
                report(&l);
            }
        }
    }
}

/// Runs blocking work (processes, `ip`) off the runtime's workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

struct Faults {
    /// Cut host pairs.
    cut: Vec<(HostId, HostId)>,
    /// The host dropping packets.
    lossy: Option<HostId>,
}

/// Chooses a partition: the pairs of hosts to cut.
fn choose_partition(n: u64, rng: &mut StdRng) -> Vec<(HostId, HostId)> {
    let mut hosts: Vec<HostId> = (1..=n).collect();
    for i in (1..hosts.len()).rev() {
        hosts.swap(i, rng.random_range(0..=i));
    }
    let kind = rng.random_range(0..3);
    let (a, b): (Vec<HostId>, Vec<HostId>) = if kind == 2 && n >= 5 {
        // Two pairs that each still reach a bridge host (hosts[4]).
        (hosts[0..2].to_vec(), hosts[2..4].to_vec())
    } else if kind == 1 {
        // A minority against a majority.
        let m = (n as usize - 1) / 2;
        (hosts[..m].to_vec(), hosts[m..].to_vec())
    } else {
        // One host isolated.
        (hosts[..1].to_vec(), hosts[1..].to_vec())
    };
    let mut cut = Vec::new();
    for &x in &a {
        for &y in &b {
            cut.push((x.min(y), x.max(y)));
        }
    }
    cut
}

async fn nemesis(w: Arc<World>, net: Arc<Net>, procs: Arc<Mutex<Procs>>, seed: u64, loss: bool) {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = w.n;
    let minority = (n - 1) / 2;
    let mut f = Faults {
        cut: Vec::new(),
        lossy: None,
    };
    let all: Vec<HostId> = (1..=n).collect();
    let mut first = true;
    let mut probe_base = 0usize;
    let mut background = Vec::new();
    while Instant::now() < w.end {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..700))).await;
        {
            let p = Arc::clone(&procs);
            blocking(move || p.lock().unwrap().restart_exited()).await;
        }
        let live = procs.lock().unwrap().live();
        let down: Vec<HostId> = all.iter().copied().filter(|h| !live.contains(h)).collect();
        // The first fault is always a leader kill on a healthy cluster, so
        // that every campaign measures at least one failover.
        let action = if first { 0 } else { rng.random_range(0..6) };
        let was_first = std::mem::replace(&mut first, false);
        match action {
            0 if (down.len() as u64) < minority => {
                // Half of the kills go to the leader.
                let target_leader = was_first || rng.random_bool(0.5);
                let victim = if target_leader {
                    leader(&w.client, &live).await
                } else {
                    None
                }
                .unwrap_or_else(|| live[rng.random_range(0..live.len())]);
                let was_leader = leader(&w.client, &[victim]).await.is_some();
                let p = Arc::clone(&procs);
                // The kill's moment is when the process has been reaped.
                let (killed, at_unix_ms) = blocking(move || {
                    p.lock().unwrap().kill(victim);
                    (Instant::now(), unix_ms())
                })
                .await;
                {
                    let mut c = w.counts.lock().unwrap();
                    c.kills += 1;
                    c.leader_kills += u64::from(was_leader);
                }
                if was_leader {
                    let survivors: Vec<HostId> =
                        live.iter().copied().filter(|&h| h != victim).collect();
                    let clean = f.cut.is_empty() && f.lossy.is_none();
                    let timing = time_failover(
                        Arc::clone(&w),
                        survivors,
                        killed,
                        at_unix_ms,
                        clean,
                        probe_base,
                    );
                    probe_base += PROBES_PER_KILL;
                    if clean {
                        // The nemesis holds still until the cluster has
                        // failed over, so that nothing else disturbs it.
                        timing.await;
                    } else {
                        // Under a partition or loss the failover may wait
                        // for the next heal: time it without holding the
                        // nemesis back.
                        background.push(tokio::spawn(timing));
                    }
                }
            }
            1 if !down.is_empty() => {
                let back = down[rng.random_range(0..down.len())];
                let p = Arc::clone(&procs);
                blocking(move || p.lock().unwrap().spawn(back)).await;
                w.counts.lock().unwrap().restarts += 1;
            }
            2 if f.cut.is_empty() => {
                let cut = choose_partition(n, &mut rng);
                let (nt, c2) = (Arc::clone(&net), cut.clone());
                blocking(move || {
                    for (i, j) in c2 {
                        nt.set_pair(i, j, false);
                    }
                })
                .await;
                f.cut = cut;
                w.counts.lock().unwrap().partitions += 1;
            }
            3 if !f.cut.is_empty() => {
                let (nt, cut) = (Arc::clone(&net), std::mem::take(&mut f.cut));
                blocking(move || {
                    for (i, j) in cut {
                        nt.set_pair(i, j, true);
                    }
                })
                .await;
                w.counts.lock().unwrap().heals += 1;
            }
            4 if loss && f.lossy.is_none() => {
                let victim = rng.random_range(1..=n);
                let nt = Arc::clone(&net);
                blocking(move || nt.set_loss(victim, true)).await;
                f.lossy = Some(victim);
                w.counts.lock().unwrap().loss_on += 1;
            }
            5 if f.lossy.is_some() => {
                let (nt, victim) = (Arc::clone(&net), f.lossy.take().unwrap());
                blocking(move || nt.set_loss(victim, false)).await;
                w.counts.lock().unwrap().loss_off += 1;
            }
            _ => {}
        }
    }
    // Heal everything and bring every host back.
    let (nt, cut, lossy) = (Arc::clone(&net), std::mem::take(&mut f.cut), f.lossy.take());
    let healed = !cut.is_empty();
    blocking(move || {
        for (i, j) in cut {
            nt.set_pair(i, j, true);
        }
        if let Some(v) = lossy {
            nt.set_loss(v, false);
        }
    })
    .await;
    {
        let mut c = w.counts.lock().unwrap();
        c.heals += u64::from(healed);
        c.loss_off += u64::from(lossy.is_some());
    }
    let p = Arc::clone(&procs);
    let restarted = blocking(move || {
        let mut p = p.lock().unwrap();
        p.restart_exited();
        let live = p.live();
        let mut restarted = 0;
        for id in 1..=n {
            if !live.contains(&id) {
                p.spawn(id);
                restarted += 1;
            }
        }
        restarted
    })
    .await;
    w.counts.lock().unwrap().restarts += restarted;
    // Failovers timed in the background end once healed, before the final
    // reads (their probe writes belong to the history checked afterwards).
    for t in background {
        t.await.expect("failover timing task");
    }
}

/// The network namespace the calling thread is in (`net:[inode]`).
fn thread_netns() -> String {
    std::fs::read_link("/proc/thread-self/ns/net")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A runtime whose every thread runs in namespace `ns`.
fn runtime_in(ns: &str) -> tokio::runtime::Runtime {
    let file = Arc::new(File::open(format!("/run/netns/{ns}")).expect("open the namespace"));
    let enter = {
        let file = Arc::clone(&file);
        move || {
            // SAFETY: setns(2) takes two integers and touches no memory of
            // ours; the descriptor stays open as long as this closure (it
            // owns `file`), which the runtime keeps while it has threads.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        }
    };
    // Prove it works on a throwaway thread before any client thread needs
    // it (a failure there would let sockets escape into this namespace).
    let probe = enter.clone();
    if let Err(e) = std::thread::spawn(probe).join().unwrap() {
        panic!("setns into namespace {ns}: {e}");
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            if let Err(e) = enter() {
                eprintln!(
                    "setns into the clients' namespace failed: {e}; aborting so that no \
                     socket is opened outside it"
                );
                std::process::abort();
            }
        })
        .build()
        .expect("tokio runtime")
}

fn campaign(n: u64, loss: bool) {
    // Generous: ten times the fault phase plus two minutes to settle and check.
    let _watchdog = Watchdog::arm(
        &format!("netns campaign, {n} hosts"),
        Duration::from_secs_f64(10.0 * secs() + 120.0),
    );
    let seed = seed();
    let net = Arc::new(Net::create(n));
    let root = std::env::temp_dir().join(format!("noderep-raft-netns-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("campaign directory");
    let members = net.members();
    let member_list = members
        .iter()
        .map(|(i, a)| format!("{i}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    let procs = Arc::new(Mutex::new(Procs {
        root,
        members: member_list,
        children: BTreeMap::new(),
        namespaces: (1..=n).map(|i| (i, net.host_ns(i).to_string())).collect(),
        self_exits: 0,
    }));
    for id in 1..=n {
        procs.lock().unwrap().spawn(id);
    }
    let rt = runtime_in(&net.client);
    let expected_ns = format!(
        "net:[{}]",
        std::fs::metadata(format!("/run/netns/{}", net.client))
            .unwrap()
            .ino()
    );
    let all: Vec<HostId> = (1..=n).collect();
    let body = {
        let (net, procs) = (Arc::clone(&net), Arc::clone(&procs));
        let expected_ns = expected_ns.clone();
        async move {
            // Everything below runs in a spawned task, on the runtime's
            // workers (all inside the clients' namespace), never on the thread
            // that calls block_on (which stays in the test's own namespace).
            assert_eq!(
                thread_netns(),
                expected_ns,
                "client tasks run in the clients' namespace"
            );

            let first = wait_leader(
                &Client::new(CLUSTER, members.clone(), Duration::from_secs(2)),
                &all,
                Duration::from_secs(30),
            )
            .await;
            assert!(first.is_some(), "no leader elected within 30 s");
            let origin = Instant::now();
            let w = Arc::new(World {
                client: Client::new(CLUSTER, members, Duration::from_secs(2)),
                n,
                origin,
                end: origin + Duration::from_secs_f64(secs()),
                events: Mutex::new(Vec::new()),
                counts: Mutex::new(Counts::default()),
            });
            let mut tasks = Vec::new();
            for id in 0..CLIENTS {
                tasks.push(tokio::spawn(client(
                    Arc::clone(&w),
                    id,
                    seed.wrapping_add(id as u64 + 1),
                )));
            }
            let nem = tokio::spawn(nemesis(
                Arc::clone(&w),
                Arc::clone(&net),
                Arc::clone(&procs),
                seed,
                loss,
            ));
            for t in tasks {
                t.await.unwrap();
            }
            nem.await.unwrap();
            assert_eq!(
                procs.lock().unwrap().live().len() as u64,
                n,
                "every host is back"
            );
            let healed_at = Instant::now();
            assert!(
                wait_leader(&w.client, &all, Duration::from_secs(20))
                    .await
                    .is_some(),
                "a leader within 20 s of healing"
            );
            // Final reads, from every host, of every key (retried: a read has
            // no effect, and the cluster may still be settling).
            let mut finals: BTreeMap<u64, BTreeSet<Option<u64>>> = BTreeMap::new();
            for id in 1..=n {
                for key in 0..=PROBE_KEY {
                    let mut tries = 0;
                    let (call, v, returned) = loop {
                        let call = now_ns(origin);
                        match w
                            .client
                            .query_json(id, &key.to_string(), ReadMode::Linearizable)
                            .await
                        {
                            Ok(a) => {
                                let v: Option<u64> = serde_json::from_str(&a.value).unwrap();
                                break (call, v, now_ns(origin));
                            }
                            Err(e) => {
                                tries += 1;
                                assert!(tries < 100, "no read of key {key} on host {id}: {e}");
                                let p = Arc::clone(&procs);
                                blocking(move || p.lock().unwrap().restart_exited()).await;
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    };
                    finals.entry(key).or_default().insert(v);
                    w.events.lock().unwrap().push(Event {
                        key,
                        client: 1_000_000 + id as usize,
                        op: Op::Read,
                        ret: Ret::Value(v),
                        call,
                        returned,
                    });
                }
            }
            let settle_ms = healed_at.elapsed().as_millis();
            let events = w.events.lock().unwrap().clone();
            let counts = std::mem::take(&mut *w.counts.lock().unwrap());
            let self_exits = procs.lock().unwrap().self_exits;
            let mut lost = 0u64;
            let mut ops = 0;
            let mut checked = 0;
            for key in 0..=PROBE_KEY {
                ops += check_key(&events, key, seed);
                checked += 1;
                // Linearizable final reads after the last write agree (the
                // checker above would refuse a disagreement, too).
                let seen = &finals[&key];
                assert_eq!(seen.len(), 1, "hosts disagree on key {key}: {seen:?}");
                // An acknowledged write is lost unless the final value is its
                // own or that of a write that had not returned before it began.
                let last = *finals[&key].iter().next().unwrap();
                for v in lost_writes(&events, key, last) {
                    eprintln!("key {key}: acknowledged write of {v} lost (final value {last:?})");
                    lost += 1;
                }
            }
            report(&format!(
                "netns campaign hosts={n} secs={} seed={seed} kills={} \
                 leader_kills={} restarts={} self_exits={self_exits} partitions={} \
                 heals={} loss_on={} loss_off={} ops={ops} acked={} lost={lost} \
                 indeterminate={} refused={} reads={} stale_reads={} \
                 failed_reads={} histories={checked} non_linearizable=0 \
                 settle_ms={settle_ms}",
                secs(),
                counts.kills,
                counts.leader_kills,
                counts.restarts,
                counts.partitions,
                counts.heals,
                counts.loss_on,
                counts.loss_off,
                counts.acked,
                counts.indeterminate,
                counts.refused,
                counts.reads,
                counts.stale_reads,
                counts.failed_reads,
            ));
            report_failovers(n, &counts.failovers, &procs.lock().unwrap().root);
            assert_eq!(checked, PROBE_KEY as usize + 1, "every history was checked");
            for fo in counts.failovers.iter().filter(|f| f.clean) {
                assert!(
                    fo.resumed_ms.is_some(),
                    "writes did not resume within {FAILOVER_WAIT:?} of a clean kill of the \
                     leader: {fo:?}"
                );
            }
            assert_eq!(lost, 0, "acknowledged writes lost");
            assert!(counts.acked > 0, "some writes were acknowledged");
            assert!(
                counts.kills + counts.partitions > 0,
                "some faults were injected"
            );
        }
    };
    // The test thread stays where it was.
    assert_ne!(thread_netns(), expected_ns);
    let outcome = rt.block_on(async move { tokio::spawn(body).await });
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            Err(e) => panic!("the campaign task did not finish: {e}"),
        }
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    let p = Arc::clone(&procs);
    p.lock().unwrap().stop_all();
    drop(procs);
    drop(net);
}

#[test]
fn process_campaigns_in_network_namespaces() {
    if let Some(why) = skip_reason() {
        report(&format!(
            "SKIP netns campaign (tests/netns_campaign.rs): {why}"
        ));
        return;
    }
    sweep_stale_namespaces();
    let loss = match nft_works() {
        Ok(()) => true,
        Err(why) => {
            report(&format!(
                "netns campaign: no packet loss is injected, nft does not work here ({why}; \
                 Debian: apt-get install nftables); tc netem is not available on these kernels"
            ));
            false
        }
    };
    campaign(3, loss);
    campaign(5, loss);
}
