//! The bridge between openraft's state-machine interface and a [`Machine`]:
//! applies committed entries, builds, persists and installs snapshots, and
//! publishes the applied index that reads wait for.
//!
//! # How it works
//!
//! One lock (`meta`) covers a whole batch of applications and the capture of
//! a snapshot, so a snapshot's state and its last log id always agree. The
//! latest snapshot is kept in memory and in `snapshot.json` (written
//! atomically) in the host's directory: after the log is purged, the
//! snapshot is what a restarted host rebuilds its replicas from. The applied
//! index is published on a watch channel *after* the state is updated (and,
//! for an installed snapshot, after the new replicas are swapped in), so a
//! reader that sees index `i` reads a state that includes entry `i`.
//!
//! # Trade-offs
//!
//! The snapshot is the whole state as one JSON text, held in memory while it
//! is sent: fine for states of megabytes, not gigabytes.

use crate::log_store::write_atomic;
use crate::machine::Machine;
use crate::types::{HostId, Reply, TypeConfig};
use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<HostId, BasicNode>,
    state: String,
}

struct Meta {
    last_applied: Option<LogId<HostId>>,
    membership: StoredMembership<HostId, BasicNode>,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

pub(crate) struct SmShared {
    pub(crate) machine: Arc<dyn Machine>,
    meta: Mutex<Meta>,
    /// Index of the last applied entry; written after the state changes.
    pub(crate) applied: watch::Sender<u64>,
    dir: PathBuf,
}

/// openraft's handle on the state machine (a shared reference).
#[derive(Clone)]
pub(crate) struct SmStore(pub(crate) Arc<SmShared>);

fn sm_err(verb: ErrorVerb, what: impl ToString) -> StorageError<HostId> {
    StorageError::from_io_error(
        ErrorSubject::StateMachine,
        verb,
        std::io::Error::other(what.to_string()),
    )
}

impl SmStore {
    /// Opens the state machine of the host whose directory is `dir`,
    /// restoring the persisted snapshot if there is one.
    pub(crate) fn open(dir: &Path, machine: Arc<dyn Machine>) -> Result<Self, String> {
        let mut meta = Meta {
            last_applied: None,
            membership: StoredMembership::default(),
            snapshot: None,
            snapshots_built: 0,
        };
        match std::fs::read(dir.join("snapshot.json")) {
            Ok(bytes) => {
                let snap: StoredSnapshot =
                    serde_json::from_slice(&bytes).map_err(|e| format!("snapshot.json: {e}"))?;
                machine
                    .restore(&snap.state)
                    .map_err(|e| format!("snapshot.json: {e}"))?;
                meta.last_applied = snap.meta.last_log_id;
                meta.membership = snap.meta.last_membership.clone();
                meta.snapshot = Some(snap);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("snapshot.json: {e}")),
        }
        let applied = meta.last_applied.map_or(0, |l| l.index);
        Ok(Self(Arc::new(SmShared {
            machine,
            meta: Mutex::new(meta),
            applied: watch::channel(applied).0,
            dir: dir.to_path_buf(),
        })))
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, Meta> {
        // Every mutation under the lock is completed before it is released
        // or is a single assignment, so a poisoned lock holds a whole state.
        self.0.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    // The error type is openraft's, which every storage method returns.
    #[allow(clippy::result_large_err)]
    fn persist(&self, snap: &StoredSnapshot) -> Result<(), StorageError<HostId>> {
        let bytes = serde_json::to_vec(snap).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        write_atomic(&self.0.dir, "snapshot.json", &bytes).map_err(|e| {
            StorageError::from_io_error(
                ErrorSubject::Snapshot(Some(snap.meta.signature())),
                ErrorVerb::Write,
                e,
            )
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SmStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<HostId>> {
        let snap = {
            let mut meta = self.meta();
            let state = self
                .0
                .machine
                .snapshot()
                .map_err(|e| sm_err(ErrorVerb::Read, e))?;
            meta.snapshots_built += 1;
            let id = match meta.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, meta.snapshots_built),
                None => format!("none-{}", meta.snapshots_built),
            };
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: meta.last_applied,
                    last_membership: meta.membership.clone(),
                    snapshot_id: id,
                },
                state,
            }
        };
        // Persisted before Raft may purge the log it covers.
        self.persist(&snap)?;
        let out = Snapshot {
            meta: snap.meta.clone(),
            snapshot: Box::new(Cursor::new(snap.state.clone().into_bytes())),
        };
        self.meta().snapshot = Some(snap);
        Ok(out)
    }
}

impl RaftStateMachine<TypeConfig> for SmStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<HostId>>, StoredMembership<HostId, BasicNode>), StorageError<HostId>>
    {
        let meta = self.meta();
        Ok((meta.last_applied, meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError<HostId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        let mut last = None;
        {
            let mut meta = self.meta();
            for entry in entries {
                let reply = match entry.payload {
                    EntryPayload::Blank => Reply::default(),
                    EntryPayload::Normal(cmd) => match self.0.machine.apply(&cmd.op) {
                        Ok(value) => Reply { value, error: None },
                        Err(e) => Reply {
                            value: String::new(),
                            error: Some(e),
                        },
                    },
                    EntryPayload::Membership(m) => {
                        meta.membership = StoredMembership::new(Some(entry.log_id), m);
                        Reply::default()
                    }
                };
                meta.last_applied = Some(entry.log_id);
                last = Some(entry.log_id.index);
                out.push(reply);
            }
        }
        if let Some(i) = last {
            self.0.applied.send_replace(i);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<HostId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<HostId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<HostId>> {
        let state =
            String::from_utf8(snapshot.into_inner()).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let snap = StoredSnapshot {
            meta: meta.clone(),
            state,
        };
        self.persist(&snap)?;
        {
            let mut m = self.meta();
            self.0
                .machine
                .restore(&snap.state)
                .map_err(|e| sm_err(ErrorVerb::Write, e))?;
            m.last_applied = meta.last_log_id;
            m.membership = meta.last_membership.clone();
            m.snapshot = Some(snap);
        }
        self.0
            .applied
            .send_replace(meta.last_log_id.map_or(0, |l| l.index));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<HostId>> {
        Ok(self.meta().snapshot.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.state.clone().into_bytes())),
        }))
    }
}
