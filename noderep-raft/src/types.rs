//! The Raft type configuration and the messages that travel between hosts.
//!
//! Commands and replies carry the application's operations as JSON text, so
//! one type configuration serves every replicated structure: the generic
//! part (`D::WriteOperation`, `D::Response`) is encoded at the edge, where
//! the host knows `D`, and the Raft log never needs to.
//!
//! # How it works
//!
//! Every TCP message is an [`Envelope`] naming the cluster, the sender and
//! the addressee, around a `Request`; the answer is a `Response`. Raft's own
//! messages travel inside them unchanged.
//!
//! # Trade-offs
//!
//! An operation is encoded twice on the wire (as JSON text inside the JSON
//! of the Raft message); that costs a little CPU per write but keeps the
//! Raft types independent of `D`.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, LogId};
use serde::{Deserialize, Serialize};
use std::io::Cursor;

openraft::declare_raft_types!(
    /// The Raft type configuration of every noderep-raft cluster.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = HostId,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A host's id in the cluster (the Raft node id).
pub type HostId = u64;

/// A write operation in the Raft log: the application's operation, encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The operation as JSON text.
    pub op: String,
}

/// The state machine's answer to a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Reply {
    /// The response as JSON text (empty for blank and membership entries).
    pub value: String,
    /// Why the operation could not be applied (it was committed but the
    /// state machine refused it).
    pub error: Option<String>,
}

/// What a message is sent to do.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<HostId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client write forwarded to the leader.
    Write(Command),
    /// A follower asks the leader for a read index (leadership confirmed by
    /// a quorum after the request arrived).
    ReadIndex,
    /// A client read, served by the receiving host.
    Query {
        query: String,
        mode: ReadMode,
    },
    /// Add a host (as learner, then voter); handled by the leader.
    AddHost {
        id: HostId,
        addr: String,
    },
    /// Remove a voter; handled by the leader.
    RemoveHost {
        id: HostId,
    },
    /// The receiving host's view of the cluster.
    Status,
    /// Would the receiver vote for the sender, whose last log id this is?
    /// (The pre-vote of `election.rs`; it changes no state.)
    PreVote {
        last_log_id: Option<LogId<HostId>>,
    },
}

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadMode {
    /// Read index (leadership confirmed by a quorum, batched with the
    /// other reads waiting), then a read of the local NUMA replica.
    Linearizable,
    /// The local replica, if it was known to be up to date at most
    /// `bound_ms` milliseconds before the read began (otherwise it is first
    /// refreshed as a linearizable read would be).
    Stale {
        /// The staleness bound, in milliseconds.
        bound_ms: u64,
    },
    /// What a plain Raft state machine does: the leader confirms its
    /// leadership for this read alone and reads its own state.
    LeaderOnly,
}

/// A read's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadAnswer {
    /// The response, as JSON text.
    pub value: String,
    /// The index of the last log entry applied to the replica that served
    /// the read, taken before it ran.
    pub applied: u64,
}

/// A host's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The host.
    pub id: HostId,
    /// The leader it knows of.
    pub leader: Option<HostId>,
    /// Its current term.
    pub term: u64,
    /// Index of its last applied entry.
    pub applied: u64,
    /// The voters of its effective membership.
    pub voters: Vec<HostId>,
}

/// Why a write failed, and whether it may still take effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFailure {
    /// `true`: the write was never proposed, it is safe to retry. `false`:
    /// it may or may not be committed (read back before retrying).
    pub definite: bool,
    /// What happened.
    pub why: String,
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    Append(Result<AppendEntriesResponse<HostId>, RaftError<HostId>>),
    Vote(Result<VoteResponse<HostId>, RaftError<HostId>>),
    Snapshot(Result<InstallSnapshotResponse<HostId>, RaftError<HostId, InstallSnapshotError>>),
    Write(Result<Reply, WriteFailure>),
    ReadIndex(Result<u64, String>),
    Read(Result<ReadAnswer, String>),
    Admin(Result<(), String>),
    Status(HostStatus),
    /// The answer to a pre-vote, with the receiver's last log id.
    PreVote {
        granted: bool,
        last_log_id: Option<LogId<HostId>>,
    },
    /// The request was refused before it was handled (wrong cluster or
    /// host id, shutting down).
    Refused(String),
}

/// Every message starts with who it is for, so that a host never acts on a
/// message meant for another cluster or another host.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub cluster: String,
    pub from: HostId,
    pub to: HostId,
    pub body: Request,
}
