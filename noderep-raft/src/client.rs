//! A client that talks to hosts over TCP, for programs outside the hosts'
//! processes (such as the three-process example).
//!
//! # How it works
//!
//! Each call goes to the host it names, over the same framed TCP as the
//! hosts use between themselves (sender id [`CLIENT_ID`]). That host
//! forwards a write to the leader and serves a read itself, in the mode
//! asked for.
//!
//! # Trade-offs
//!
//! The client does not look for the leader or retry: a write whose call
//! failed after it was sent is reported as [`HostError::Indeterminate`], and
//! picking another host is the caller's choice.

use crate::error::HostError;
use crate::network::{definitely_not_sent, LinkCuts, Pool};
use crate::types::{Command, HostId, HostStatus, ReadAnswer, ReadMode, Reply, Request, Response};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Host id that clients use as their sender id (never a host's id).
pub const CLIENT_ID: HostId = 0;

/// A TCP client of a cluster. Each call goes to the host named; that host
/// forwards writes to the leader and serves reads itself.
///
/// # Examples
///
/// [`Host`](crate::Host)'s example runs a host and reads from it through a
/// client. A call to a host the client does not know is refused before
/// anything is sent:
///
/// ```
/// use noderep_raft::{Client, HostError};
/// use std::collections::BTreeMap;
/// use std::time::Duration;
///
/// let hosts = BTreeMap::from([(1, "127.0.0.1:7101".parse()?), (2, "127.0.0.1:7102".parse()?)]);
/// let client = Client::new("orders", hosts, Duration::from_secs(1));
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// match rt.block_on(client.status(9)) {
///     Err(HostError::UnknownHost { id, members }) => {
///         assert_eq!((id, members), (9, vec![1, 2]));
///     }
///     other => panic!("host 9 is not a member: {other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Client {
    pool: Pool,
    hosts: BTreeMap<HostId, SocketAddr>,
}

impl Client {
    /// A client of `cluster`, whose hosts listen on `hosts`; each call waits
    /// at most `timeout`.
    pub fn new(cluster: &str, hosts: BTreeMap<HostId, SocketAddr>, timeout: Duration) -> Self {
        Self {
            pool: Pool::new(
                cluster.to_string(),
                CLIENT_ID,
                Arc::new(LinkCuts::default()),
                timeout,
            ),
            hosts,
        }
    }

    async fn call(&self, host: HostId, req: Request) -> Result<Response, HostError> {
        let addr = self
            .hosts
            .get(&host)
            .ok_or_else(|| HostError::UnknownHost {
                id: host,
                members: self.hosts.keys().copied().collect(),
            })?;
        match self.pool.call(host, &addr.to_string(), req, None).await {
            Ok(Response::Refused(why)) => Err(HostError::Config(why)),
            Ok(r) => Ok(r),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                Err(HostError::Indeterminate(e.to_string()))
            }
            // Never sent (refused, no route): it can have had no effect.
            Err(e) if definitely_not_sent(&e) => {
                Err(HostError::NoLeader(format!("host {host}: {e}")))
            }
            Err(e) => Err(HostError::Indeterminate(format!("host {host}: {e}"))),
        }
    }

    /// Sends an encoded write (JSON) through host `host`.
    ///
    /// # Errors
    ///
    /// [`HostError::UnknownHost`] if `host` is not in the client's list;
    /// [`HostError::Indeterminate`] if the call failed after the write was
    /// sent; otherwise what the host answered (as for
    /// [`Host::write_json`](crate::Host::write_json)).
    pub async fn write_json(&self, host: HostId, op: String) -> Result<Reply, HostError> {
        match self.call(host, Request::Write(Command { op })).await? {
            Response::Write(Ok(r)) => match r.error {
                Some(e) => Err(HostError::Apply(e)),
                None => Ok(r),
            },
            Response::Write(Err(f)) if f.definite => Err(HostError::NoLeader(f.why)),
            Response::Write(Err(f)) => Err(HostError::Indeterminate(f.why)),
            _ => Err(HostError::Raft("mismatched answer to a write".into())),
        }
    }

    /// Runs an encoded read (JSON query) on host `host`.
    ///
    /// # Errors
    ///
    /// [`HostError::UnknownHost`] if `host` is not in the client's list;
    /// [`HostError::NoLeader`] if the host refused the connection;
    /// [`HostError::Indeterminate`] if the call failed or timed out;
    /// [`HostError::Config`] if the host refused the request; otherwise what
    /// the host answered (as for [`Host::query_json`](crate::Host::query_json)).
    pub async fn query_json(
        &self,
        host: HostId,
        query: &str,
        mode: ReadMode,
    ) -> Result<ReadAnswer, HostError> {
        let req = Request::Query {
            query: query.to_string(),
            mode,
        };
        match self.call(host, req).await {
            Ok(Response::Read(r)) => r.map_err(HostError::NoLeader),
            Ok(_) => Err(HostError::Raft("mismatched answer to a read".into())),
            // A read has no effect: whatever failed, it simply failed.
            Err(e) => Err(HostError::NoLeader(e.to_string())),
        }
    }

    /// Host `host`'s view of the cluster.
    ///
    /// # Errors
    ///
    /// [`HostError::UnknownHost`] if `host` is not in the client's list;
    /// [`HostError::NoLeader`] if the host refused the connection;
    /// [`HostError::Indeterminate`] if the call failed or timed out;
    /// [`HostError::Config`] if the host refused the request.
    pub async fn status(&self, host: HostId) -> Result<HostStatus, HostError> {
        match self.call(host, Request::Status).await? {
            Response::Status(s) => Ok(s),
            _ => Err(HostError::Raft("mismatched answer to status".into())),
        }
    }
}
