//! One host of a cluster: the Raft engine, its log directory, its state
//! machine (a noderep `NodeReplicated<D>`), its TCP server, and the client
//! API (writes, linearizable reads, bounded-staleness reads, membership).
//!
//! # How it works
//!
//! * **Writes** are proposed to the local Raft engine when this host is the
//!   leader and forwarded to the leader otherwise. A write that was never
//!   proposed (no leader yet, link refused) is retried until the deadline;
//!   one whose outcome is unknown (leadership lost after proposing, a link
//!   failed mid-call) is reported as [`HostError::Indeterminate`], never
//!   retried behind the caller's back (a retried write could be applied
//!   twice).
//! * **Linearizable reads** use a read index: the leader confirms with a
//!   quorum that it is still the leader and returns its commit index; the
//!   reading host waits until it has applied that index and reads its own
//!   NUMA replica. Reads that wait at the same time share one confirmation
//!   (a round that starts *after* they arrived, so it covers every write
//!   they could have seen acknowledged). A follower asks the leader for the
//!   index over TCP; the leader batches those requests too.
//! * **Bounded-staleness reads** remember when the host was last proven
//!   fresh (the start of the last read-index round whose index it has
//!   applied). A read with bound `b` is served locally if that moment is at
//!   most `b` old, and otherwise first refreshes. Such a read sees every
//!   write acknowledged at least `b` before it began, and reports the
//!   applied index of the replica that served it.
//! * **Membership**: [`Host::add_host`] adds a learner, waits for it to catch
//!   up (by log or snapshot), then makes it a voter; [`Host::remove_host`]
//!   removes a voter. Both run on the leader (a follower forwards them).
//!
//! # Trade-offs
//!
//! Linearizable reads still cost the leader a round of heartbeats per
//! batch; bounded-staleness reads cost none but may miss the writes of the
//! last `b`. Only loopback addresses are accepted, and private IPv4 ones on
//! request ([`HostConfig::private_network`], for hosts in network namespaces
//! of the caller's own); the project tests on one machine, and a deployment
//! would lift this check and add authentication.

use crate::election::{ElectionClock, Elector, Timing};
use crate::error::HostError;
use crate::log_store::FileLogStore;
use crate::machine::{Machine, NrMachine, PlainKv, Replicated};
use crate::network::{definitely_not_sent, read_frame, write_frame, LinkCuts, NetFactory, Pool};
use crate::sm_store::SmStore;
use crate::types::{
    Command, Envelope, HostId, HostStatus, ReadAnswer, ReadMode, Reply, Request, Response,
    TypeConfig, WriteFailure,
};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::raft::AppendEntriesResponse;
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

/// How one host is set up: a builder of settings, checked by
/// [`Host::start`].
///
/// # Examples
///
/// ```
/// use noderep_raft::HostConfig;
/// use std::collections::BTreeMap;
/// use std::time::Duration;
///
/// let members = BTreeMap::from([
///     (1, "127.0.0.1:7101".parse()?),
///     (2, "127.0.0.1:7102".parse()?),
///     (3, "127.0.0.1:7103".parse()?),
/// ]);
/// let config = HostConfig::new("orders", 2, members[&2], "/var/lib/orders/host-2")
///     .members(members)
///     .election_timeout_ms(150, 300)
///     .heartbeat_ms(50)
///     .op_timeout(Duration::from_secs(2));
/// assert_eq!(config.election_timeout_max(), Duration::from_millis(300));
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
#[derive(Debug, Clone)]
pub struct HostConfig {
    cluster: String,
    id: HostId,
    addr: SocketAddr,
    dir: PathBuf,
    members: BTreeMap<HostId, SocketAddr>,
    election_ms: (u64, u64),
    heartbeat_ms: u64,
    snapshot_every: u64,
    keep_logs: u64,
    op_timeout: Duration,
    rpc_timeout: Duration,
    max_connections: usize,
    private_network: bool,
}

impl HostConfig {
    /// Host `id` of `cluster`, listening on `addr` (loopback), keeping its
    /// log in `dir`.
    pub fn new(cluster: &str, id: HostId, addr: SocketAddr, dir: impl Into<PathBuf>) -> Self {
        Self {
            cluster: cluster.to_string(),
            id,
            addr,
            dir: dir.into(),
            members: BTreeMap::new(),
            election_ms: (300, 600),
            heartbeat_ms: 100,
            snapshot_every: 5000,
            keep_logs: 1000,
            op_timeout: Duration::from_secs(5),
            rpc_timeout: Duration::from_millis(1000),
            max_connections: 256,
            private_network: false,
        }
    }

    /// Also accept private IPv4 addresses (10.0.0.0/8, 172.16.0.0/12,
    /// 192.168.0.0/16) for this host and its members, not only loopback
    /// ones: for hosts that each run in a network namespace of their own,
    /// linked by veth pairs the caller set up (the process-level campaign
    /// does this). Default `false`: loopback only.
    pub fn private_network(mut self, allow: bool) -> Self {
        self.private_network = allow;
        self
    }

    /// Whether `a` is an address this host may listen on or talk to.
    fn address_allowed(&self, a: &SocketAddr) -> bool {
        address_allowed(self.private_network, a)
    }

    /// The initial voters (this host among them). A host started with no
    /// members waits to be added by [`Host::add_host`].
    pub fn members(mut self, members: BTreeMap<HostId, SocketAddr>) -> Self {
        self.members = members;
        self
    }

    /// Election timeout range, in milliseconds (default 300..600).
    pub fn election_timeout_ms(mut self, min: u64, max: u64) -> Self {
        self.election_ms = (min, max);
        self
    }

    /// Heartbeat interval, in milliseconds (default 100).
    pub fn heartbeat_ms(mut self, ms: u64) -> Self {
        self.heartbeat_ms = ms;
        self
    }

    /// Build a snapshot (and compact the log) every `entries` applied
    /// entries (default 5000); keep `keep` entries before it for slow
    /// followers (default 1000).
    pub fn snapshot_every(mut self, entries: u64, keep: u64) -> Self {
        self.snapshot_every = entries;
        self.keep_logs = keep;
        self
    }

    /// Deadline of one client operation (default 5 s).
    pub fn op_timeout(mut self, t: Duration) -> Self {
        self.op_timeout = t;
        self
    }

    /// The election timeout's upper bound.
    pub fn election_timeout_max(&self) -> Duration {
        Duration::from_millis(self.election_ms.1)
    }

    fn validate(&self) -> Result<(), HostError> {
        let allowed = if self.private_network {
            "a loopback or private (10/8, 172.16/12, 192.168/16) IPv4 address"
        } else {
            "a loopback address (use HostConfig::private_network(true) for hosts in \
             network namespaces of your own)"
        };
        if !self.address_allowed(&self.addr) {
            return Err(HostError::Config(format!(
                "address {} is not {allowed}; noderep-raft only listens there",
                self.addr
            )));
        }
        if let Some((id, a)) = self.members.iter().find(|(_, a)| !self.address_allowed(a)) {
            return Err(HostError::Config(format!(
                "host {id} has address {a}, not {allowed}"
            )));
        }
        if !self.members.is_empty() && !self.members.contains_key(&self.id) {
            return Err(HostError::UnknownHost {
                id: self.id,
                members: self.members.keys().copied().collect(),
            });
        }
        if self.members.get(&self.id).is_some_and(|a| *a != self.addr) {
            return Err(HostError::Config(format!(
                "host {} listens on {} but the member list gives {}",
                self.id, self.addr, self.members[&self.id]
            )));
        }
        if self.cluster.is_empty() {
            return Err(HostError::Config("the cluster name is empty".into()));
        }
        Ok(())
    }
}

/// Loopback always; private IPv4 ranges too when `private` is set.
fn address_allowed(private: bool, a: &SocketAddr) -> bool {
    a.ip().is_loopback()
        || (private && matches!(a.ip(), std::net::IpAddr::V4(v4) if v4.is_private()))
}

/// A read's result when served within a staleness bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale<R> {
    /// The response.
    pub value: R,
    /// The applied index of the replica that served it.
    pub applied: u64,
}

/// Readers waiting for the next read-index round.
#[derive(Default)]
struct Gate {
    running: bool,
    waiting: Vec<oneshot::Sender<Result<u64, String>>>,
}

struct Inner<M: Machine> {
    cfg: HostConfig,
    raft: Raft<TypeConfig>,
    machine: Arc<M>,
    sm: SmStore,
    pool: Arc<Pool>,
    cuts: Arc<LinkCuts>,
    gate: Mutex<Gate>,
    /// Nanoseconds since `epoch` of the latest moment at which this host was
    /// proven up to date; only grows (fetch_max).
    fresh_ns: AtomicU64,
    epoch: Instant,
    /// Decides when this host calls an election and answers pre-votes;
    /// the server tells its clock when a leader was heard from and when a
    /// vote was granted.
    elector: Arc<Elector>,
    stop: watch::Sender<bool>,
    server: Mutex<Option<JoinHandle<()>>>,
}

/// One host of a cluster, running state machine `M` (usually an
/// [`NrMachine`]). Cheap to clone.
///
/// # Examples
///
/// A cluster of one host on loopback: it elects itself, commits a write,
/// answers a linearizable read from its own NUMA replica, and serves a
/// [`Client`](crate::Client) over TCP.
///
/// ```
/// use noderep::{NrBuilder, ReplicaPolicy};
/// use noderep_raft::{Client, Host, HostConfig, HostError, KvMap, KvWrite, NrMachine, ReadMode};
/// use std::collections::BTreeMap;
/// use std::time::Duration;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = tokio::runtime::Builder::new_multi_thread()
///     .worker_threads(2)
///     .enable_all()
///     .build()?;
/// rt.block_on(async {
///     let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
///     let dir = std::env::temp_dir().join(format!("noderep-raft-doc-{}", std::process::id()));
///     let config = HostConfig::new("doc", 1, addr, &dir).members(BTreeMap::from([(1, addr)]));
///     let machine = NrMachine::<KvMap>::new(NrBuilder::new().replicas(ReplicaPolicy::Fixed(2)))?;
///     let host = Host::start(config, machine).await?;
///
///     // Until the host has elected itself, a write is refused unproposed.
///     let deadline = std::time::Instant::now() + Duration::from_secs(30);
///     let mut previous = host.write(KvWrite::Put { key: 7, value: 70 }).await;
///     while let Err(HostError::NoLeader(_)) = previous {
///         assert!(std::time::Instant::now() < deadline, "a one-host cluster elects itself");
///         tokio::time::sleep(Duration::from_millis(20)).await;
///         previous = host.write(KvWrite::Put { key: 7, value: 70 }).await;
///     }
///     assert_eq!(previous?, None); // a put returns the value it replaced
///     assert_eq!(host.read(7).await?, Some(70));
///
///     // The same host through TCP, as another process would reach it.
///     let client = Client::new("doc", BTreeMap::from([(1, addr)]), Duration::from_secs(5));
///     let answer = client.query_json(1, "7", ReadMode::Linearizable).await?;
///     assert_eq!(answer.value, "70");
///
///     host.shutdown().await;
///     std::fs::remove_dir_all(&dir)?;
///     Ok::<(), Box<dyn std::error::Error>>(())
/// })
/// # }
/// ```
pub struct Host<M: Machine> {
    inner: Arc<Inner<M>>,
}

impl<M: Machine> Clone for Host<M> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

fn raft_err<E: std::fmt::Display>(e: E) -> HostError {
    HostError::Raft(e.to_string())
}

impl<M: Machine> Host<M> {
    /// Opens the host's directory, starts Raft and the TCP server, and (for
    /// a new cluster) proposes the initial membership. Must run inside a
    /// multi-threaded tokio runtime.
    ///
    /// # Errors
    ///
    /// [`HostError::Config`] for an inconsistent configuration (an address
    /// that is not allowed, a member list without this host);
    /// [`HostError::Unwritable`], [`HostError::ForeignData`] or
    /// [`HostError::Corrupt`] from the log directory; [`HostError::Listen`]
    /// if the address cannot be bound; [`HostError::Raft`] if the engine
    /// does not start.
    pub async fn start(cfg: HostConfig, machine: M) -> Result<Self, HostError> {
        cfg.validate()?;
        let log = FileLogStore::open(&cfg.dir, &cfg.cluster, cfg.id)?;
        let machine = Arc::new(machine);
        let sm =
            SmStore::open(&cfg.dir, Arc::clone(&machine) as Arc<dyn Machine>).map_err(|what| {
                HostError::Corrupt {
                    dir: cfg.dir.clone(),
                    what,
                }
            })?;
        let raft_cfg = Config {
            cluster_name: cfg.cluster.clone(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_ms.0,
            election_timeout_max: cfg.election_ms.1,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.keep_logs,
            ..Default::default()
        }
        .validate()
        .map_err(|e| HostError::Config(e.to_string()))?;
        let listener = TcpListener::bind(cfg.addr)
            .await
            .map_err(|source| HostError::Listen {
                addr: cfg.addr,
                source,
            })?;
        let cuts = Arc::new(LinkCuts::default());
        let pool = Arc::new(Pool::new(
            cfg.cluster.clone(),
            cfg.id,
            Arc::clone(&cuts),
            cfg.rpc_timeout,
        ));
        let raft = Raft::new(
            cfg.id,
            Arc::new(raft_cfg),
            NetFactory(Arc::clone(&pool)),
            log.clone(),
            sm.clone(),
        )
        .await
        .map_err(raft_err)?;
        let elector = Arc::new(Elector {
            id: cfg.id,
            raft: raft.clone(),
            log,
            pool: Arc::clone(&pool),
            clock: Arc::new(ElectionClock::new()),
            timing: Timing {
                lease: cfg.election_timeout_max(),
                heartbeat: Duration::from_millis(cfg.heartbeat_ms.max(1)),
            },
        });
        let inner = Arc::new(Inner {
            cfg,
            raft,
            machine,
            sm,
            pool,
            cuts,
            gate: Mutex::new(Gate::default()),
            fresh_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            elector: Arc::clone(&elector),
            stop: watch::channel(false).0,
            server: Mutex::new(None),
        });
        let server = tokio::spawn(serve(Arc::clone(&inner), listener));
        *inner.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(server);
        tokio::spawn(Arc::clone(&inner.elector).run(inner.stop.subscribe()));
        let host = Self { inner };
        if !host.inner.cfg.members.is_empty()
            && !host.inner.raft.is_initialized().await.map_err(raft_err)?
        {
            let members: BTreeMap<HostId, BasicNode> = host
                .inner
                .cfg
                .members
                .iter()
                .map(|(id, a)| {
                    (
                        *id,
                        BasicNode {
                            addr: a.to_string(),
                        },
                    )
                })
                .collect();
            // Every initial member proposes the same membership; the ones
            // that lose the race are told "not allowed", which is fine.
            let _ = host.inner.raft.initialize(members).await;
        }
        Ok(host)
    }

    /// This host's id.
    pub fn id(&self) -> HostId {
        self.inner.cfg.id
    }

    /// The state machine.
    pub fn machine(&self) -> &M {
        &self.inner.machine
    }

    /// The Raft engine (for metrics and tests).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.inner.raft
    }

    /// Switch for cutting this host's links (partition tests).
    pub fn links(&self) -> &LinkCuts {
        &self.inner.cuts
    }

    /// Index of the last entry applied to the local state.
    pub fn applied(&self) -> u64 {
        *self.inner.sm.0.applied.borrow()
    }

    /// Why the Raft engine stopped (a storage failure, or shutdown), or
    /// `None` while it runs. A stopped host answers every call with
    /// [`HostError::Stopped`]; restart it on its directory.
    pub fn stopped(&self) -> Option<String> {
        self.inner.running().err().map(|e| e.to_string())
    }

    /// This host's view of the cluster.
    pub fn status(&self) -> HostStatus {
        self.inner.status()
    }

    /// Proposes an encoded write (JSON of the machine's write operation)
    /// and returns the state machine's reply.
    ///
    /// # Errors
    ///
    /// [`HostError::Codec`] if `op` does not decode as a write of the
    /// machine (nothing is proposed); [`HostError::NoLeader`] or
    /// [`HostError::Timeout`] if no leader took it before the deadline;
    /// [`HostError::Indeterminate`] when the write may or may not have been
    /// committed; [`HostError::Apply`] if the state machine refused it;
    /// [`HostError::Stopped`] once the engine stopped.
    pub async fn write_json(&self, op: String) -> Result<Reply, HostError> {
        self.inner
            .machine
            .check_write(&op)
            .map_err(HostError::Codec)?;
        self.inner.running()?;
        let r = self.inner.write(Command { op }).await;
        self.inner.running()?;
        match r {
            Ok(r) => match r.error {
                Some(e) => Err(HostError::Apply(e)),
                None => Ok(r),
            },
            Err(f) if f.definite => Err(HostError::NoLeader(f.why)),
            Err(f) => Err(HostError::Indeterminate(f.why)),
        }
    }

    /// Waits until this host's state includes every write acknowledged
    /// before the call (a read index), and returns that index.
    ///
    /// # Errors
    ///
    /// [`HostError::NoLeader`] if no leader confirmed a read index;
    /// [`HostError::Timeout`] if this host did not apply it before the
    /// deadline; [`HostError::Stopped`] once the engine stopped.
    pub async fn barrier(&self) -> Result<u64, HostError> {
        self.inner.running()?;
        self.inner.barrier().await
    }

    /// Runs an encoded read (JSON of the machine's query) in `mode`.
    ///
    /// # Errors
    ///
    /// [`HostError::Codec`] if `query` does not decode as a read of the
    /// machine; as for [`barrier`](Self::barrier) when a read index is
    /// needed; [`HostError::TooStale`] when a bounded-staleness read could
    /// not refresh; [`HostError::Apply`] if the local read failed.
    pub async fn query_json(&self, query: &str, mode: ReadMode) -> Result<ReadAnswer, HostError> {
        self.inner.query(query, mode).await
    }

    /// Adds host `id` at `addr`: as a learner first (it catches up by log
    /// or snapshot), then as a voter.
    ///
    /// # Errors
    ///
    /// [`HostError::Config`] for an address that is not allowed;
    /// [`HostError::NoLeader`] or [`HostError::Timeout`] if no leader
    /// completed the change in time; [`HostError::Raft`] when the engine
    /// refused it.
    pub async fn add_host(&self, id: HostId, addr: SocketAddr) -> Result<(), HostError> {
        if !self.inner.cfg.address_allowed(&addr) {
            return Err(HostError::Config(format!(
                "{addr} is not a loopback address{}",
                if self.inner.cfg.private_network {
                    " or a private IPv4 address"
                } else {
                    ""
                }
            )));
        }
        self.inner
            .admin(Request::AddHost {
                id,
                addr: addr.to_string(),
            })
            .await
    }

    /// Removes voter `id`.
    ///
    /// # Errors
    ///
    /// As for [`add_host`](Self::add_host) (without the address check).
    pub async fn remove_host(&self, id: HostId) -> Result<(), HostError> {
        self.inner.admin(Request::RemoveHost { id }).await
    }

    /// Stops the server and the Raft engine. The log directory stays as it
    /// is; a host started on it later resumes.
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let _ = self.inner.raft.shutdown().await;
        let server = self
            .inner
            .server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(s) = server {
            s.abort();
            let _ = s.await;
        }
    }
}

impl<D: Replicated> Host<NrMachine<D>> {
    /// Proposes a write and returns its response once committed and applied.
    ///
    /// # Errors
    ///
    /// As for [`write_json`](Self::write_json).
    pub async fn write(&self, op: D::WriteOperation) -> Result<D::Response, HostError> {
        let op = serde_json::to_string(&op).map_err(|e| HostError::Codec(e.to_string()))?;
        let reply = self.write_json(op).await?;
        serde_json::from_str(&reply.value).map_err(|e| HostError::Codec(e.to_string()))
    }

    /// A linearizable read served by this host's NUMA replica, after a
    /// (batched) read-index confirmation.
    ///
    /// # Errors
    ///
    /// As for [`barrier`](Self::barrier); [`HostError::Apply`] if the local
    /// read failed.
    pub async fn read(&self, op: D::ReadOperation<'_>) -> Result<D::Response, HostError> {
        self.inner.barrier().await?;
        self.inner.machine.read_local(op)
    }

    /// A read served by the local replica if it was proven up to date at
    /// most `bound` before this call (refreshing first otherwise).
    ///
    /// # Errors
    ///
    /// [`HostError::TooStale`] if the host was not proven fresh within
    /// `bound` and could not refresh; [`HostError::Apply`] if the local
    /// read failed.
    pub async fn read_stale(
        &self,
        op: D::ReadOperation<'_>,
        bound: Duration,
    ) -> Result<Stale<D::Response>, HostError> {
        self.inner.ensure_fresh(bound).await?;
        let applied = *self.inner.sm.0.applied.borrow();
        let value = self.inner.machine.read_local(op)?;
        Ok(Stale { value, applied })
    }
}

impl Host<PlainKv> {
    /// The baseline's read: the leader confirms its leadership for this read
    /// alone (openraft's `ensure_linearizable`) and reads its map.
    ///
    /// # Errors
    ///
    /// [`HostError::NoLeader`] if this host is not the leader or could not
    /// confirm its leadership; [`HostError::Stopped`] once the engine
    /// stopped.
    pub async fn read_leader_only(&self, key: u64) -> Result<Option<u64>, HostError> {
        let a = self
            .query_json(&key.to_string(), ReadMode::LeaderOnly)
            .await?;
        serde_json::from_str(&a.value).map_err(|e| HostError::Codec(e.to_string()))
    }
}

impl<M: Machine> Inner<M> {
    /// `Err` once the Raft engine has stopped (a storage failure or
    /// shutdown), with its reason.
    fn running(&self) -> Result<(), HostError> {
        match &self.raft.metrics().borrow().running_state {
            Ok(()) => Ok(()),
            Err(fatal) => Err(HostError::Stopped(fatal.to_string())),
        }
    }

    fn status(&self) -> HostStatus {
        let m = self.raft.metrics().borrow().clone();
        HostStatus {
            id: self.cfg.id,
            leader: m.current_leader,
            term: m.current_term,
            applied: m.last_applied.map_or(0, |l| l.index),
            voters: m.membership_config.membership().voter_ids().collect(),
        }
    }

    fn leader(&self) -> Option<(HostId, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?;
        Some((id, node.addr.clone()))
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.cfg.op_timeout
    }

    async fn pause() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    async fn write(&self, cmd: Command) -> Result<Reply, WriteFailure> {
        let deadline = self.deadline();
        let mut last = String::from("no leader known");
        while Instant::now() < deadline {
            if self.is_leader() {
                return match self.raft.client_write(cmd).await {
                    Ok(r) => Ok(r.data),
                    // Proposed (or maybe proposed) and then leadership was
                    // lost or the engine stopped: the outcome is unknown.
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                        Err(WriteFailure {
                            definite: false,
                            why: format!("leadership moved to {:?} during the write", f.leader_id),
                        })
                    }
                    Err(e) => Err(WriteFailure {
                        definite: false,
                        why: e.to_string(),
                    }),
                };
            }
            if let Some((leader, addr)) = self.leader().filter(|(l, _)| *l != self.cfg.id) {
                let left = deadline.saturating_duration_since(Instant::now());
                match self
                    .pool
                    .call(leader, &addr, Request::Write(cmd.clone()), Some(left))
                    .await
                {
                    Ok(Response::Write(r)) => match r {
                        Err(f) if f.definite => last = f.why,
                        other => return other,
                    },
                    Ok(Response::Refused(why)) => last = why,
                    Ok(_) => last = "mismatched answer to a write".into(),
                    Err(e) if definitely_not_sent(&e) => last = e.to_string(),
                    Err(e) => {
                        return Err(WriteFailure {
                            definite: false,
                            why: format!("forwarding to leader {leader}: {e}"),
                        })
                    }
                }
            }
            Self::pause().await;
        }
        Err(WriteFailure {
            definite: true,
            why: format!(
                "no leader accepted the write within {:?}: {last}",
                self.cfg.op_timeout
            ),
        })
    }

    /// One read-index round: asks the leader (itself or over TCP) for an
    /// index that covers every write acknowledged before the round began.
    async fn confirm(&self) -> Result<u64, String> {
        let deadline = self.deadline();
        let mut last = String::from("no leader known");
        while Instant::now() < deadline {
            if self.is_leader() {
                match self.raft.get_read_log_id().await {
                    Ok((read, _)) => return Ok(read.map_or(0, |l| l.index)),
                    Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                        last = "leadership moved".into()
                    }
                    Err(e) => last = e.to_string(),
                }
            } else if let Some((leader, addr)) = self.leader().filter(|(l, _)| *l != self.cfg.id) {
                let left = deadline.saturating_duration_since(Instant::now());
                match self
                    .pool
                    .call(leader, &addr, Request::ReadIndex, Some(left))
                    .await
                {
                    Ok(Response::ReadIndex(Ok(i))) => return Ok(i),
                    Ok(Response::ReadIndex(Err(e))) | Ok(Response::Refused(e)) => last = e,
                    Ok(_) => last = "mismatched answer to read index".into(),
                    Err(e) => last = e.to_string(),
                }
            }
            Self::pause().await;
        }
        Err(format!(
            "no read index within {:?}: {last}",
            self.cfg.op_timeout
        ))
    }

    /// A read index from the next round that starts after this call
    /// (rounds are shared by every caller waiting for one).
    async fn read_index(self: &Arc<Self>) -> Result<u64, String> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut g = self.gate.lock().unwrap_or_else(|p| p.into_inner());
            g.waiting.push(tx);
            !std::mem::replace(&mut g.running, true)
        };
        if start {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut g = me.gate.lock().unwrap_or_else(|p| p.into_inner());
                        if g.waiting.is_empty() {
                            g.running = false;
                            break;
                        }
                        std::mem::take(&mut g.waiting)
                    };
                    let r = me.confirm().await;
                    for tx in batch {
                        let _ = tx.send(r.clone());
                    }
                }
            });
        }
        rx.await
            .map_err(|_| "read-index round abandoned".to_string())?
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), HostError> {
        let mut rx = self.sm.0.applied.subscribe();
        let left = deadline.saturating_duration_since(Instant::now());
        let waited = tokio::time::timeout(left, rx.wait_for(|a| *a >= index))
            .await
            .map(|r| r.map(drop));
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(HostError::Stopped("state machine closed".into())),
            Err(_) => Err(HostError::Timeout(self.cfg.op_timeout)),
        }
    }

    async fn barrier(self: &Arc<Self>) -> Result<u64, HostError> {
        let start = self.epoch.elapsed().as_nanos() as u64;
        let deadline = self.deadline();
        let index = self.read_index().await.map_err(HostError::NoLeader)?;
        self.wait_applied(index, deadline).await?;
        // Relaxed: a freshness hint compared against the clock; the state
        // it vouches for was published by the `applied` watch (a lock).
        self.fresh_ns.fetch_max(start, Ordering::Relaxed);
        Ok(index)
    }

    async fn ensure_fresh(self: &Arc<Self>, bound: Duration) -> Result<(), HostError> {
        let now = self.epoch.elapsed().as_nanos() as u64;
        // Relaxed: see `barrier`.
        let fresh = self.fresh_ns.load(Ordering::Relaxed);
        if fresh > 0 && now.saturating_sub(fresh) <= bound.as_nanos() as u64 {
            return Ok(());
        }
        self.barrier()
            .await
            .map(drop)
            .map_err(|e| HostError::TooStale {
                bound,
                why: e.to_string(),
            })
    }

    async fn query(self: &Arc<Self>, query: &str, mode: ReadMode) -> Result<ReadAnswer, HostError> {
        self.machine.check_query(query).map_err(HostError::Codec)?;
        match mode {
            ReadMode::Linearizable => {
                self.barrier().await?;
            }
            ReadMode::Stale { bound_ms } => {
                self.ensure_fresh(Duration::from_millis(bound_ms)).await?;
            }
            ReadMode::LeaderOnly => {
                if !self.is_leader() {
                    let (leader, addr) = self
                        .leader()
                        .ok_or_else(|| HostError::NoLeader("no leader known".into()))?;
                    let body = Request::Query {
                        query: query.to_string(),
                        mode,
                    };
                    return match self.pool.call(leader, &addr, body, None).await {
                        Ok(Response::Read(r)) => r.map_err(HostError::NoLeader),
                        Ok(Response::Refused(e)) => Err(HostError::NoLeader(e)),
                        Ok(_) => Err(HostError::Raft("mismatched answer to a read".into())),
                        Err(e) => Err(HostError::NoLeader(e.to_string())),
                    };
                }
                self.raft
                    .ensure_linearizable()
                    .await
                    .map_err(|e| HostError::NoLeader(e.to_string()))?;
            }
        }
        let applied = *self.sm.0.applied.borrow();
        let value = self.machine.query(query).map_err(HostError::Codec)?;
        Ok(ReadAnswer { value, applied })
    }

    async fn admin(&self, req: Request) -> Result<(), HostError> {
        if !self.is_leader() {
            let (leader, addr) = self
                .leader()
                .ok_or_else(|| HostError::NoLeader("no leader known".into()))?;
            return match self
                .pool
                .call(leader, &addr, req, Some(Duration::from_secs(60)))
                .await
            {
                Ok(Response::Admin(r)) => r.map_err(HostError::Raft),
                Ok(Response::Refused(e)) => Err(HostError::NoLeader(e)),
                Ok(_) => Err(HostError::Raft("mismatched answer".into())),
                Err(e) => Err(HostError::NoLeader(e.to_string())),
            };
        }
        let voters: BTreeSet<HostId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        match req {
            Request::AddHost { id, addr } => {
                self.raft
                    .add_learner(id, BasicNode { addr }, true)
                    .await
                    .map_err(raft_err)?;
                let mut v = voters;
                v.insert(id);
                self.raft
                    .change_membership(v, false)
                    .await
                    .map_err(raft_err)?;
                Ok(())
            }
            Request::RemoveHost { id } => {
                if !voters.contains(&id) {
                    return Err(HostError::UnknownHost {
                        id,
                        members: voters.into_iter().collect(),
                    });
                }
                let mut v = voters;
                v.remove(&id);
                if v.is_empty() {
                    return Err(HostError::Config("cannot remove the last voter".into()));
                }
                self.raft
                    .change_membership(v, false)
                    .await
                    .map_err(raft_err)?;
                Ok(())
            }
            _ => Err(HostError::Config("not an administrative request".into())),
        }
    }

    async fn handle(self: &Arc<Self>, env: Envelope) -> Response {
        if env.cluster != self.cfg.cluster {
            return Response::Refused(format!(
                "this is cluster {:?}, not {:?}",
                self.cfg.cluster, env.cluster
            ));
        }
        if env.to != self.cfg.id {
            return Response::Refused(format!(
                "this is host {}, not host {}; check the member addresses",
                self.cfg.id, env.to
            ));
        }
        match env.body {
            Request::Append(r) => {
                let resp = self.raft.append_entries(r).await;
                if matches!(resp, Ok(ref a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
                    self.elector.clock.heard_leader();
                }
                Response::Append(resp)
            }
            Request::Vote(r) => {
                let resp = self.raft.vote(r).await;
                if matches!(resp, Ok(ref v) if v.vote_granted) {
                    self.elector.clock.granted_vote();
                }
                Response::Vote(resp)
            }
            Request::Snapshot(r) => {
                let resp = self.raft.install_snapshot(r).await;
                if resp.is_ok() {
                    self.elector.clock.heard_leader();
                }
                Response::Snapshot(resp)
            }
            Request::PreVote { last_log_id } => {
                let (granted, last_log_id) = self.elector.answer_pre_vote(last_log_id);
                Response::PreVote {
                    granted,
                    last_log_id,
                }
            }
            Request::Write(cmd) => {
                if let Err(why) = self.machine.check_write(&cmd.op) {
                    return Response::Write(Err(WriteFailure {
                        definite: true,
                        why: format!("undecodable write: {why}"),
                    }));
                }
                Response::Write(self.write(cmd).await)
            }
            Request::ReadIndex => {
                if !self.is_leader() {
                    return Response::ReadIndex(Err(format!(
                        "host {} is not the leader",
                        self.cfg.id
                    )));
                }
                Response::ReadIndex(self.read_index().await)
            }
            Request::Query { query, mode } => {
                Response::Read(self.query(&query, mode).await.map_err(|e| e.to_string()))
            }
            r @ (Request::AddHost { .. } | Request::RemoveHost { .. }) => {
                Response::Admin(self.admin(r).await.map_err(|e| e.to_string()))
            }
            Request::Status => Response::Status(self.status()),
        }
    }
}

async fn serve<M: Machine>(inner: Arc<Inner<M>>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(inner.cfg.max_connections));
    let mut stop = inner.stop.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            // Out of file descriptors or similar: back off, keep serving.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            continue; // too many connections: drop this one
        };
        let _ = stream.set_nodelay(true);
        let inner = Arc::clone(&inner);
        tokio::spawn(async move {
            connection(inner, stream).await;
            drop(permit);
        });
    }
}

/// Idle connections are closed after this long.
const IDLE: Duration = Duration::from_secs(30);

async fn connection<M: Machine>(inner: Arc<Inner<M>>, mut s: TcpStream) {
    let mut stop = inner.stop.subscribe();
    loop {
        let frame = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            f = tokio::time::timeout(IDLE, read_frame(&mut s)) => f,
        };
        let Ok(Ok(Some(bytes))) = frame else { return };
        let resp = match serde_json::from_slice::<Envelope>(&bytes) {
            Ok(env) if inner.cuts.is_cut(env.from) => return,
            Ok(env) => inner.handle(env).await,
            Err(e) => Response::Refused(format!("undecodable request: {e}")),
        };
        let Ok(out) = serde_json::to_vec(&resp) else {
            return;
        };
        if write_frame(&mut s, &out).await.is_err() {
            return;
        }
    }
}
