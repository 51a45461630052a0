//! Errors of noderep-raft: one enum, messages that say what to do.

use crate::types::HostId;
use std::path::PathBuf;

/// A host could not be started, or an operation on it failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The log directory cannot be created or written (read-only, full
    /// disk, no permission).
    #[error("log directory {dir}: {source}; give the host a writable directory with free space")]
    Unwritable {
        /// The directory.
        dir: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The log directory holds another cluster's or another host's data.
    #[error("log directory {dir} belongs to cluster {found_cluster:?} host {found_host}, not cluster {cluster:?} host {host}; use an empty directory or the one this host wrote")]
    ForeignData {
        /// The directory.
        dir: PathBuf,
        /// Cluster recorded in it.
        found_cluster: String,
        /// Host recorded in it.
        found_host: HostId,
        /// Cluster asked for.
        cluster: String,
        /// Host asked for.
        host: HostId,
    },
    /// A file in the log directory cannot be parsed.
    #[error("log directory {dir}: {what}; the directory is damaged: restore it or start the host on an empty one (it will catch up from the others)")]
    Corrupt {
        /// The directory.
        dir: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// The configuration is inconsistent.
    #[error("bad configuration: {0}")]
    Config(String),
    /// A host id that is not a member of the cluster.
    #[error("host {id} is not a member of this cluster (members: {members:?}); add it with add_host first")]
    UnknownHost {
        /// The id given.
        id: HostId,
        /// The members.
        members: Vec<HostId>,
    },
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}; pick a free port on an address of this host (or of its network namespace)")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// No leader could be reached in time; the cluster may have lost its
    /// quorum or be electing one.
    #[error("no leader reachable: {0}; retry after the election timeout, and check that a majority of hosts is up")]
    NoLeader(String),
    /// A write whose outcome is unknown: it may or may not be committed
    /// (the leader changed or a link failed after it was proposed).
    #[error("write outcome unknown: {0}; read back before retrying a non-idempotent write")]
    Indeterminate(String),
    /// The operation did not finish within its deadline; it may or may not
    /// have taken effect.
    #[error("timed out after {0:?}; the outcome is unknown, so read back before retrying a non-idempotent write")]
    Timeout(std::time::Duration),
    /// The local replica is further behind than the bound allows and could
    /// not be refreshed.
    #[error(
        "the local replica is staler than the {bound:?} bound and could not be refreshed: {why}"
    )]
    TooStale {
        /// The bound asked for.
        bound: std::time::Duration,
        /// Why refreshing failed.
        why: String,
    },
    /// An operation could not be encoded or decoded.
    #[error("encoding: {0}")]
    Codec(String),
    /// The state machine refused a committed operation.
    #[error("the state machine refused the operation: {0}")]
    Apply(String),
    /// The Raft engine stopped (a storage failure, or shutdown).
    #[error("raft stopped: {0}; check the log directory (disk full?) and restart the host")]
    Stopped(String),
    /// Anything else the Raft engine reported.
    #[error("raft: {0}")]
    Raft(String),
}
