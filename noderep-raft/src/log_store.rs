//! A file-backed Raft log: one directory per host, every append fsynced
//! before Raft is told it is durable.
//!
//! # How it works
//!
//! * `identity.json` names the cluster and the host; a host refuses a
//!   directory written by another cluster or host.
//! * `log.jsonl` is an append-only file of records, one JSON object a line:
//!   an entry, a truncation point, or a purge point. Opening replays it into
//!   a map in memory (reads are served from memory) and rewrites it compacted
//!   (a torn last line, from a crash in the middle of a write, is dropped:
//!   it was never acknowledged, since the fsync had not returned).
//! * `vote.json` holds the vote, replaced atomically (write a temporary file,
//!   fsync, rename, fsync the directory).
//! * Appends are group-committed: written at once, then one flusher thread
//!   fsyncs everything written since its last fsync and only then tells
//!   Raft the entries are durable (openraft's `LogFlushed` callback), so a
//!   burst of writes costs one fsync, not one each.
//! * Purging (after a snapshot) rewrites `log.jsonl` the same atomic way
//!   without the purged entries: that is the log compaction.
//!
//! # Trade-offs
//!
//! Simple and obviously durable rather than fast: JSON text, one fsync per
//! group of appends, all live entries held in memory (compaction keeps that
//! bounded). A write error (full disk, read-only file system) is returned to
//! Raft, which stops the host; nothing unacknowledged is lost and nothing
//! acknowledged was unsynced.

use crate::error::HostError;
use crate::types::{HostId, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, RaftLogReader, StorageError, Vote};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

#[derive(Serialize, Deserialize, PartialEq, Eq, Debug)]
pub(crate) struct Identity {
    pub cluster: String,
    pub host: HostId,
}

#[derive(Serialize, Deserialize)]
enum Record {
    /// An entry (replacing any at its index).
    E(Entry<TypeConfig>),
    /// Entries from this index on are gone.
    T(u64),
    /// Entries up to and including this log id are purged.
    P(LogId<HostId>),
}

struct Inner {
    dir: PathBuf,
    file: File,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<HostId>>,
    vote: Option<Vote<HostId>>,
    /// Appends written but not yet synced, oldest first; the flusher
    /// completes them.
    pending: Vec<LogFlushed<TypeConfig>>,
}

struct Shared {
    /// Held while appends are being completed; taken before `inner`.
    order: Mutex<()>,
    inner: Mutex<Inner>,
    /// Signalled when `pending` becomes non-empty.
    wake: Condvar,
}

/// The log store of one host (cheap to clone: a shared handle).
/// [`Host::start`](crate::Host::start) opens it; it is public so that a
/// tool can check a directory before a host is started on it.
///
/// # Examples
///
/// A directory belongs to one host of one cluster; any other is refused.
///
/// ```
/// use noderep_raft::{FileLogStore, HostError};
///
/// let dir = std::env::temp_dir().join(format!("noderep-raft-log-doc-{}", std::process::id()));
/// drop(FileLogStore::open(&dir, "orders", 1)?); // creates the directory
/// FileLogStore::open(&dir, "orders", 1)?; // and opens it again
/// assert!(matches!(
///     FileLogStore::open(&dir, "orders", 2),
///     Err(HostError::ForeignData { .. })
/// ));
/// assert!(matches!(
///     FileLogStore::open(&dir, "billing", 1),
///     Err(HostError::ForeignData { .. })
/// ));
/// std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct FileLogStore {
    shared: Arc<Shared>,
}

/// Group commit: one fsync for every append written while the previous
/// fsync ran, then their callbacks, in order. Holds the store only while it
/// works or waits a bounded time, so it ends soon after the store is dropped.
fn flusher(store: Weak<Shared>) {
    loop {
        let Some(shared) = store.upgrade() else {
            return;
        };
        {
            let g = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
            if g.pending.is_empty() {
                let _ = shared
                    .wake
                    .wait_timeout(g, Duration::from_millis(100))
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        // `order` first, then `inner` (the order truncate and purge use):
        // callbacks run in append order even when those complete the
        // appends themselves.
        let order = shared.order.lock().unwrap_or_else(|p| p.into_inner());
        let (done, file) = {
            let mut g = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
            if g.pending.is_empty() {
                continue;
            }
            (std::mem::take(&mut g.pending), g.file.try_clone())
        };
        let result = file.and_then(|f| f.sync_data());
        for cb in done {
            cb.log_io_completed(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            });
        }
        drop(order);
    }
}

fn unwritable(dir: &Path, source: std::io::Error) -> HostError {
    HostError::Unwritable {
        dir: dir.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `dir/name` atomically: temporary file, fsync, rename,
/// fsync of the directory.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

impl FileLogStore {
    /// The id of the last entry written (synced or not), or of the last
    /// purged one when none is left.
    pub(crate) fn last_log_id(&self) -> Option<LogId<HostId>> {
        let inner = self.lock();
        inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.last_purged)
    }

    /// Opens (or creates) the log directory of host `host` of `cluster`.
    ///
    /// # Errors
    ///
    /// [`HostError::Unwritable`] if the directory cannot be created or
    /// written; [`HostError::ForeignData`] if it belongs to another cluster
    /// or host; [`HostError::Corrupt`] if a file in it cannot be parsed.
    pub fn open(dir: &Path, cluster: &str, host: HostId) -> Result<Self, HostError> {
        fs::create_dir_all(dir).map_err(|e| unwritable(dir, e))?;
        // Probe that the directory takes a synced write, so that a
        // read-only or full file system is reported now, not at the first
        // Raft write.
        write_atomic(dir, ".probe", b"probe").map_err(|e| unwritable(dir, e))?;
        let _ = fs::remove_file(dir.join(".probe"));
        let me = Identity {
            cluster: cluster.to_string(),
            host,
        };
        let id_path = dir.join("identity.json");
        match fs::read(&id_path) {
            Ok(bytes) => {
                let found: Identity =
                    serde_json::from_slice(&bytes).map_err(|e| HostError::Corrupt {
                        dir: dir.to_path_buf(),
                        what: format!("identity.json: {e}"),
                    })?;
                if found != me {
                    return Err(HostError::ForeignData {
                        dir: dir.to_path_buf(),
                        found_cluster: found.cluster,
                        found_host: found.host,
                        cluster: me.cluster,
                        host,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes = serde_json::to_vec(&me).map_err(|e| HostError::Codec(e.to_string()))?;
                write_atomic(dir, "identity.json", &bytes).map_err(|e| unwritable(dir, e))?;
            }
            Err(e) => return Err(unwritable(dir, e)),
        }
        let vote = match fs::read(dir.join("vote.json")) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes).map_err(|e| HostError::Corrupt {
                    dir: dir.to_path_buf(),
                    what: format!("vote.json: {e}"),
                })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(unwritable(dir, e)),
        };
        let (entries, last_purged) = Self::replay(dir)?;
        let file = Self::rewrite(dir, &entries, last_purged).map_err(|e| unwritable(dir, e))?;
        let shared = Arc::new(Shared {
            order: Mutex::new(()),
            inner: Mutex::new(Inner {
                dir: dir.to_path_buf(),
                file,
                entries,
                last_purged,
                vote,
                pending: Vec::new(),
            }),
            wake: Condvar::new(),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name(format!("log-flush-{host}"))
            .spawn(move || flusher(weak))
            .map_err(|e| unwritable(dir, e))?;
        Ok(Self { shared })
    }

    #[allow(clippy::type_complexity)]
    fn replay(
        dir: &Path,
    ) -> Result<(BTreeMap<u64, Entry<TypeConfig>>, Option<LogId<HostId>>), HostError> {
        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        let f = match File::open(dir.join("log.jsonl")) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((entries, None)),
            Err(e) => return Err(unwritable(dir, e)),
        };
        let lines: Vec<String> = BufReader::new(f)
            .lines()
            .collect::<Result<_, _>>()
            .map_err(|e| unwritable(dir, e))?;
        let n = lines.len();
        for (i, line) in lines.iter().enumerate() {
            let rec: Record = match serde_json::from_str(line) {
                Ok(r) => r,
                // A torn last line: its fsync never returned, so it was
                // never acknowledged.
                Err(_) if i + 1 == n => break,
                Err(e) => {
                    return Err(HostError::Corrupt {
                        dir: dir.to_path_buf(),
                        what: format!("log.jsonl line {}: {e}", i + 1),
                    })
                }
            };
            match rec {
                Record::E(e) => {
                    entries.insert(e.log_id.index, e);
                }
                Record::T(from) => {
                    entries.split_off(&from);
                }
                Record::P(id) => {
                    entries = entries.split_off(&(id.index + 1));
                    last_purged = Some(id);
                }
            }
        }
        Ok((entries, last_purged))
    }

    /// Writes the live log as a fresh file and returns it opened for
    /// appending.
    fn rewrite(
        dir: &Path,
        entries: &BTreeMap<u64, Entry<TypeConfig>>,
        last_purged: Option<LogId<HostId>>,
    ) -> std::io::Result<File> {
        let mut buf = Vec::new();
        if let Some(p) = last_purged {
            serde_json::to_writer(&mut buf, &Record::P(p))?;
            buf.push(b'\n');
        }
        for e in entries.values() {
            serde_json::to_writer(&mut buf, &Record::E(e.clone()))?;
            buf.push(b'\n');
        }
        write_atomic(dir, "log.jsonl", &buf)?;
        OpenOptions::new().append(true).open(dir.join("log.jsonl"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the in-memory map as it was
        // between two whole operations (every mutation is one call), so the
        // poison can be ignored.
        self.shared.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn write_records(file: &mut File, recs: &[Record]) -> std::io::Result<()> {
    let mut buf = Vec::new();
    for r in recs {
        serde_json::to_writer(&mut buf, r)?;
        buf.push(b'\n');
    }
    file.write_all(&buf)
}

fn append_records(file: &mut File, recs: &[Record]) -> std::io::Result<()> {
    write_records(file, recs)?;
    file.sync_data()
}

/// Syncs and completes the appends still waiting for the flusher, so that
/// Raft hears of them before a truncation or purge changes the log (the
/// order it would see with synchronous appends).
fn complete_pending(inner: &mut Inner) {
    if inner.pending.is_empty() {
        return;
    }
    let result = inner.file.sync_data();
    for cb in std::mem::take(&mut inner.pending) {
        cb.log_io_completed(match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        });
    }
}

fn io_err(
    subject: ErrorSubject<HostId>,
    verb: ErrorVerb,
    e: std::io::Error,
) -> StorageError<HostId> {
    StorageError::from_io_error(subject, verb, e)
}

impl RaftLogReader<TypeConfig> for FileLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<HostId>> {
        let inner = self.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for FileLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<HostId>> {
        let last = self.last_log_id();
        Ok(LogState {
            last_purged_log_id: self.lock().last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<HostId>) -> Result<(), StorageError<HostId>> {
        let mut inner = self.lock();
        let bytes = serde_json::to_vec(vote)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e.into()))?;
        write_atomic(&inner.dir, "vote.json", &bytes)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<HostId>>, StorageError<HostId>> {
        Ok(self.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<HostId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.lock();
        let recs: Vec<Record> = entries.into_iter().map(Record::E).collect();
        // Written now, synced by the flusher (together with the appends
        // that arrive meanwhile); Raft counts the entries as durable only
        // when the callback runs.
        match write_records(&mut inner.file, &recs) {
            Ok(()) => {
                for r in recs {
                    if let Record::E(e) = r {
                        inner.entries.insert(e.log_id.index, e);
                    }
                }
                inner.pending.push(callback);
                self.shared.wake.notify_one();
                Ok(())
            }
            Err(e) => {
                let kind = e.kind();
                let msg = e.to_string();
                callback.log_io_completed(Err(std::io::Error::new(kind, msg)));
                Err(io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<HostId>) -> Result<(), StorageError<HostId>> {
        let _order = self.shared.order.lock().unwrap_or_else(|p| p.into_inner());
        let mut inner = self.lock();
        complete_pending(&mut inner);
        append_records(&mut inner.file, &[Record::T(log_id.index)])
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        inner.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<HostId>) -> Result<(), StorageError<HostId>> {
        let _order = self.shared.order.lock().unwrap_or_else(|p| p.into_inner());
        let mut guard = self.lock();
        let inner = &mut *guard;
        complete_pending(inner);
        let kept = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = kept;
        inner.last_purged = Some(log_id);
        inner.file = Self::rewrite(&inner.dir, &inner.entries, inner.last_purged)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        Ok(())
    }
}
