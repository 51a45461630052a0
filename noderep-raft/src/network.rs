//! TCP between hosts: length-prefixed JSON frames, a small pool of
//! connections per peer, every call bounded in time, and a switch that cuts
//! links (for partition tests).
//!
//! # How it works
//!
//! A frame is a 4-byte big-endian length and that many bytes of JSON; frames
//! above [`MAX_FRAME`] are refused. A call takes an idle connection to the
//! peer (or opens one), writes the request, reads the answer, and puts the
//! connection back (at most [`IDLE_PER_PEER`] are kept); any error or
//! timeout drops the connection. The Raft engine talks through
//! `NetFactory`, which maps a failed call to `Unreachable` (the engine
//! retries with backoff) and a remote Raft error to `RemoteError`.
//!
//! # Trade-offs
//!
//! One request at a time per connection (no multiplexing): concurrency comes
//! from opening more connections, which is cheap on loopback. JSON costs CPU
//! but keeps the wire readable.

use crate::types::{Envelope, HostId, Request, Response, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest frame accepted, in bytes (a snapshot chunk or a batch of
/// entries must fit).
pub const MAX_FRAME: usize = 64 << 20;
/// Idle connections kept per peer.
pub const IDLE_PER_PEER: usize = 64;

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub(crate) async fn read_frame(s: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is above the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

/// Writes one frame.
pub(crate) async fn write_frame(s: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.len() > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "frame of {} bytes is above the {MAX_FRAME}-byte limit",
                bytes.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    s.write_all(&out).await
}

/// Links this host refuses to use, in both directions (partition tests);
/// each host has one, [`Host::links`](crate::Host::links).
///
/// # Examples
///
/// ```
/// use noderep_raft::network::LinkCuts;
///
/// let links = LinkCuts::default();
/// links.cut(2); // a partition between this host and host 2
/// assert!(links.is_cut(2) && !links.is_cut(3));
/// links.heal();
/// assert!(!links.is_cut(2));
/// ```
#[derive(Debug, Default)]
pub struct LinkCuts {
    cut: RwLock<HashSet<HostId>>,
}

impl LinkCuts {
    /// Cuts the link to `peer` (messages to and from it are dropped).
    pub fn cut(&self, peer: HostId) {
        self.cut
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer);
    }
    /// Restores every link.
    pub fn heal(&self) {
        self.cut.write().unwrap_or_else(|p| p.into_inner()).clear();
    }
    /// Whether the link to `peer` is cut.
    pub fn is_cut(&self, peer: HostId) -> bool {
        self.cut
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&peer)
    }
}

/// Marks an error that happened before any byte of a request was written
/// (the connection could not be made, or the link is cut), so that callers
/// can tell it from a failure after a request was sent, whose effect is
/// unknown. The error kind stays the original one.
#[derive(Debug)]
struct NotSent(std::io::Error);

impl std::fmt::Display for NotSent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for NotSent {}

fn not_connected(e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), NotSent(e))
}

/// Whether a failed call certainly never reached the peer: the connection
/// was refused or could not be made (no route, network down), the link is
/// cut, or the address was invalid.
pub(crate) fn definitely_not_sent(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<NotSent>())
        || matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::InvalidInput
        )
}

/// Whether an idle connection is still open at the peer's end: nothing is
/// due on it (answers come only after requests), so anything readable, an
/// end of stream or an error means it is closed or out of step.
fn still_open(s: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Connections from one host to its peers.
pub(crate) struct Pool {
    pub(crate) cluster: String,
    pub(crate) me: HostId,
    pub(crate) cuts: Arc<LinkCuts>,
    pub(crate) timeout: Duration,
    idle: Mutex<HashMap<SocketAddr, Vec<TcpStream>>>,
}

impl Pool {
    pub(crate) fn new(cluster: String, me: HostId, cuts: Arc<LinkCuts>, timeout: Duration) -> Self {
        Self {
            cluster,
            me,
            cuts,
            timeout,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `body` to host `to` at `addr` and waits (at most `timeout`)
    /// for its answer.
    pub(crate) async fn call(
        &self,
        to: HostId,
        addr: &str,
        body: Request,
        timeout: Option<Duration>,
    ) -> std::io::Result<Response> {
        if self.cuts.is_cut(to) {
            return Err(not_connected(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("link {} -> {to} is cut", self.me),
            )));
        }
        let addr: SocketAddr = addr.parse().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("host {to} address {addr:?}: {e}"),
            )
        })?;
        let env = Envelope {
            cluster: self.cluster.clone(),
            from: self.me,
            to,
            body,
        };
        let bytes = serde_json::to_vec(&env)?;
        let limit = timeout.unwrap_or(self.timeout);
        let work = async {
            // An idle connection the peer has closed meanwhile (it
            // restarted, or was killed) is dropped here rather than used: a
            // request written to it would fail after it was sent, and a
            // write's outcome would then be unknown although the peer never
            // saw it.
            let idle = loop {
                let s = self
                    .idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(&addr)
                    .and_then(Vec::pop);
                match s {
                    Some(s) if !still_open(&s) => continue,
                    s => break s,
                }
            };
            let mut s = match idle {
                Some(s) => s,
                None => {
                    let s = TcpStream::connect(addr).await.map_err(not_connected)?;
                    s.set_nodelay(true)?;
                    s
                }
            };
            write_frame(&mut s, &bytes).await?;
            let answer = read_frame(&mut s).await?.ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "peer closed")
            })?;
            let resp: Response = serde_json::from_slice(&answer)?;
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let list = idle.entry(addr).or_default();
            if list.len() < IDLE_PER_PEER {
                list.push(s);
            }
            Ok(resp)
        };
        match tokio::time::timeout(limit, work).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("host {to} did not answer within {limit:?}"),
            )),
        }
    }
}

/// openraft's factory of per-peer clients.
#[derive(Clone)]
pub(crate) struct NetFactory(pub(crate) Arc<Pool>);

/// openraft's client for one peer.
pub(crate) struct NetClient {
    pool: Arc<Pool>,
    target: HostId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for NetFactory {
    type Network = NetClient;

    async fn new_client(&mut self, target: HostId, node: &BasicNode) -> NetClient {
        NetClient {
            pool: Arc::clone(&self.0),
            target,
            addr: node.addr.clone(),
        }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<HostId, BasicNode, RaftError<HostId, E>>;

impl NetClient {
    async fn call(&self, body: Request, option: &RPCOption) -> Result<Response, std::io::Error> {
        self.pool
            .call(self.target, &self.addr, body, Some(option.hard_ttl()))
            .await
    }
}

fn unreachable<E: std::error::Error>(e: std::io::Error) -> RPCError<HostId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&e))
}

fn unexpected<E: std::error::Error>(what: &str) -> RPCError<HostId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(what.to_string())))
}

impl RaftNetwork<TypeConfig> for NetClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<HostId>, RpcErr> {
        match self.call(Request::Append(rpc), &option).await {
            Ok(Response::Append(Ok(r))) => Ok(r),
            Ok(Response::Append(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(Response::Refused(why)) => Err(unexpected(&why)),
            Ok(_) => Err(unexpected("mismatched answer to append_entries")),
            Err(e) => Err(unreachable(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<HostId>, RpcErr<InstallSnapshotError>> {
        match self.call(Request::Snapshot(rpc), &option).await {
            Ok(Response::Snapshot(Ok(r))) => Ok(r),
            Ok(Response::Snapshot(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(Response::Refused(why)) => Err(unexpected(&why)),
            Ok(_) => Err(unexpected("mismatched answer to install_snapshot")),
            Err(e) => Err(unreachable(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<HostId>,
        option: RPCOption,
    ) -> Result<VoteResponse<HostId>, RpcErr> {
        match self.call(Request::Vote(rpc), &option).await {
            Ok(Response::Vote(Ok(r))) => Ok(r),
            Ok(Response::Vote(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(Response::Refused(why)) => Err(unexpected(&why)),
            Ok(_) => Err(unexpected("mismatched answer to vote")),
            Err(e) => Err(unreachable(e)),
        }
    }
}
