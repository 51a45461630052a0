//! The state machines a host can run: [`NrMachine`] (a noderep
//! `NodeReplicated<D>`, one replica per NUMA node) and [`PlainKv`] (a
//! `Mutex<HashMap>`, the usual hand-written Raft state machine, kept for
//! comparison), behind one object-safe trait, [`Machine`].
//!
//! # How it works
//!
//! Raft hands committed entries to the host's state-machine task, which
//! applies them through [`Machine::apply`]. For [`NrMachine`] that is
//! `execute_mut` on the calling thread's token: a `ThreadToken` is bound to
//! its thread (it is `!Send`), so each thread keeps its own tokens in a
//! thread-local list, keyed by the generation of the instance they belong
//! to. Installing a snapshot builds a new `NodeReplicated` from the
//! snapshot (a new *generation*) and swaps it in; tokens of a dropped
//! generation are released the next time their thread misses its list.
//!
//! Local reads ([`NrMachine::read`]) run on the caller's NUMA replica
//! without any Raft involvement; the host decides *when* such a read is
//! allowed (after a read-index confirmation, or within a staleness bound).
//!
//! # Trade-offs
//!
//! A thread that stops calling keeps its token of an old generation (and so
//! that generation's memory) until it calls again. Every host thread that
//! touches the machine takes a thread slot of its replica: size
//! `max_threads_per_replica` for the runtime's worker threads plus the
//! application threads that read.

use crate::error::HostError;
use noderep::{Dispatch, NodeReplicated, NrBuilder, ThreadToken};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

/// A noderep structure that can be replicated across hosts: its operations,
/// responses and state travel as JSON, and reads that arrive over the
/// network name an owned [`Query`](Self::Query).
pub trait Replicated:
    Dispatch<
        WriteOperation: Serialize + DeserializeOwned + Sync,
        Response: Serialize + DeserializeOwned + Send,
    > + Serialize
    + DeserializeOwned
    + Default
    + Send
    + Sync
    + 'static
{
    /// An owned, serialisable read operation.
    type Query: Serialize + DeserializeOwned + Send + 'static;

    /// The read operation a query stands for.
    fn as_read(query: &Self::Query) -> Self::ReadOperation<'_>;
}

/// A state machine as the host drives it: operations, queries and state as
/// JSON text. Implemented by [`NrMachine`] and [`PlainKv`].
pub trait Machine: Send + Sync + 'static {
    /// Applies one committed write (JSON) and returns its response (JSON),
    /// or why it was refused.
    ///
    /// # Errors
    ///
    /// Why the write was refused (it does not decode, or the structure
    /// failed), as text.
    fn apply(&self, op: &str) -> Result<String, String>;
    /// Checks that `op` decodes as a write of this machine (before it is
    /// proposed, so that garbage never reaches the log).
    ///
    /// # Errors
    ///
    /// Why `op` does not decode, as text.
    fn check_write(&self, op: &str) -> Result<(), String>;
    /// Checks that `query` decodes as a read of this machine (before any
    /// read-index round is spent on it).
    ///
    /// # Errors
    ///
    /// Why `query` does not decode, as text.
    fn check_query(&self, query: &str) -> Result<(), String>;
    /// Runs a read (JSON query) on the local state.
    ///
    /// # Errors
    ///
    /// Why the read failed, as text.
    fn query(&self, query: &str) -> Result<String, String>;
    /// The whole state, as JSON text.
    ///
    /// # Errors
    ///
    /// Why the state could not be captured or encoded, as text.
    fn snapshot(&self) -> Result<String, String>;
    /// Replaces the whole state with a snapshot's.
    ///
    /// # Errors
    ///
    /// Why `state` was refused (it does not decode, or a new instance could
    /// not be built), as text; the old state is kept.
    fn restore(&self, state: &str) -> Result<(), String>;
}

/// One `NodeReplicated<D>` and the flag whose death tells threads to drop
/// their tokens of it.
struct Generation<D: Replicated> {
    nr: NodeReplicated<D>,
    uid: u64,
    alive: Arc<()>,
}

/// Unique ids of generations, across all machines of the process.
static NEXT_UID: AtomicU64 = AtomicU64::new(1);

type TokenList = Vec<(u64, Weak<()>, Box<dyn Any>)>;

thread_local! {
    /// This thread's tokens: (generation uid, its liveness, the token).
    static TOKENS: RefCell<TokenList> = const { RefCell::new(Vec::new()) };
}

/// A `NodeReplicated<D>` as a Raft state machine.
///
/// # Examples
///
/// The host drives it with committed entries as JSON ([`Machine::apply`]);
/// every NUMA replica applies them, and reads run on the caller's replica.
///
/// ```
/// use noderep::{NrBuilder, ReplicaPolicy};
/// use noderep_raft::{KvMap, KvWrite, Machine, NrMachine};
///
/// let machine = NrMachine::<KvMap>::new(NrBuilder::new().replicas(ReplicaPolicy::Fixed(2)))?;
/// assert_eq!(machine.replicas(), 2);
/// let put = serde_json::to_string(&KvWrite::Put { key: 1, value: 10 })?;
/// assert_eq!(machine.apply(&put)?, "null"); // the value it replaced
/// assert_eq!(machine.read_local(1)?, Some(10));
/// assert_eq!(machine.query("1")?, "10");
/// // Garbage is refused before it could be proposed.
/// assert!(machine.check_write("{\"Put\": 3}").is_err());
/// // Both replicas hold the same map.
/// let maps = machine.inspect(|_replica, map| map.clone())?;
/// assert_eq!(maps[0], maps[1]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct NrMachine<D: Replicated> {
    /// Written by `restore` (write lock), read by every operation.
    current: RwLock<Arc<Generation<D>>>,
    builder: NrBuilder<D>,
}

impl<D: Replicated> NrMachine<D> {
    /// A machine holding `D::default()` in every replica, built by `builder`.
    ///
    /// # Errors
    ///
    /// [`HostError::Config`] if noderep refuses the builder's settings.
    pub fn new(builder: NrBuilder<D>) -> Result<Self, HostError> {
        let gen = Self::generation(&builder, |_| D::default())?;
        Ok(Self {
            current: RwLock::new(Arc::new(gen)),
            builder,
        })
    }

    fn generation(
        builder: &NrBuilder<D>,
        make: impl Fn(usize) -> D + Sync,
    ) -> Result<Generation<D>, HostError> {
        let nr = builder
            .clone()
            .build(make)
            .map_err(|e| HostError::Config(format!("noderep: {e}")))?;
        Ok(Generation {
            nr,
            // Relaxed: a unique number is all that is needed.
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            alive: Arc::new(()),
        })
    }

    fn current(&self) -> Arc<Generation<D>> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Number of NUMA replicas on this host.
    pub fn replicas(&self) -> usize {
        self.current().nr.num_replicas()
    }

    /// Runs `f` with this thread's token for generation `gen`, registering
    /// the thread on first use.
    fn with_token<R>(
        gen: &Generation<D>,
        f: impl FnOnce(&ThreadToken<D>) -> R,
    ) -> Result<R, String> {
        TOKENS.with(|cell| {
            let mut list = cell.borrow_mut();
            let pos = match list.iter().position(|(uid, _, _)| *uid == gen.uid) {
                Some(p) => p,
                None => {
                    list.retain(|(_, alive, _)| alive.strong_count() > 0);
                    let token = gen.nr.register().map_err(|e| e.to_string())?;
                    list.push((gen.uid, Arc::downgrade(&gen.alive), Box::new(token)));
                    list.len() - 1
                }
            };
            let token = list[pos]
                .2
                .downcast_ref::<ThreadToken<D>>()
                .ok_or("a generation id was reused by another type")?;
            Ok(f(token))
        })
    }

    /// Reads from this thread's NUMA replica, *without* any Raft check: the
    /// caller decides that the local state is fresh enough (see
    /// [`Host::read`](crate::Host::read) and
    /// [`Host::read_stale`](crate::Host::read_stale)).
    ///
    /// # Errors
    ///
    /// [`HostError::Apply`] if the thread cannot register with the instance
    /// (its replica is full) or the read fails (the instance is poisoned).
    pub fn read_local(&self, op: D::ReadOperation<'_>) -> Result<D::Response, HostError> {
        let gen = self.current();
        Self::with_token(&gen, |t| gen.nr.execute(op, t))
            .map_err(HostError::Apply)?
            .map_err(|e| HostError::Apply(e.to_string()))
    }

    /// Runs `f` on replica 0's state after bringing every replica up to
    /// date (for checks that all replicas agree, and for snapshots).
    ///
    /// # Errors
    ///
    /// [`HostError::Apply`], as for [`read_local`](Self::read_local).
    pub fn inspect<R>(&self, mut f: impl FnMut(usize, &D) -> R) -> Result<Vec<R>, HostError> {
        let gen = self.current();
        Self::with_token(&gen, |t| gen.nr.sync_and_inspect(t, |r, d| f(r, d)))
            .map_err(HostError::Apply)?
            .map_err(|e| HostError::Apply(e.to_string()))
    }
}

impl<D: Replicated> Machine for NrMachine<D> {
    fn apply(&self, op: &str) -> Result<String, String> {
        let op: D::WriteOperation = serde_json::from_str(op).map_err(|e| e.to_string())?;
        let gen = self.current();
        let resp =
            Self::with_token(&gen, |t| gen.nr.execute_mut(op, t))?.map_err(|e| e.to_string())?;
        serde_json::to_string(&resp).map_err(|e| e.to_string())
    }

    fn check_write(&self, op: &str) -> Result<(), String> {
        serde_json::from_str::<D::WriteOperation>(op)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn check_query(&self, query: &str) -> Result<(), String> {
        serde_json::from_str::<D::Query>(query)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn query(&self, query: &str) -> Result<String, String> {
        let q: D::Query = serde_json::from_str(query).map_err(|e| e.to_string())?;
        let resp = self.read_local(D::as_read(&q)).map_err(|e| e.to_string())?;
        serde_json::to_string(&resp).map_err(|e| e.to_string())
    }

    fn snapshot(&self) -> Result<String, String> {
        let states = self
            .inspect(|r, d| (r == 0).then(|| serde_json::to_string(d)))
            .map_err(|e| e.to_string())?;
        match states.into_iter().flatten().next() {
            Some(s) => s.map_err(|e| e.to_string()),
            None => Err("no replica to snapshot".into()),
        }
    }

    fn restore(&self, state: &str) -> Result<(), String> {
        // Decode once to validate; each replica then decodes its own copy
        // (D need not be Clone), which cannot fail after this check.
        serde_json::from_str::<D>(state).map_err(|e| e.to_string())?;
        let gen = Self::generation(&self.builder, |_| {
            serde_json::from_str(state).unwrap_or_default()
        })
        .map_err(|e| e.to_string())?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(gen);
        Ok(())
    }
}

/// The structure the examples, tests and benchmarks replicate: a map from
/// `u64` to `u64`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvMap(pub HashMap<u64, u64>);

/// A write to a [`KvMap`] (or a [`PlainKv`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvWrite {
    /// Sets `key` to `value`; responds with the previous value.
    Put {
        /// The key.
        key: u64,
        /// The value.
        value: u64,
    },
}

impl Dispatch for KvMap {
    type ReadOperation<'a> = u64;
    type WriteOperation = KvWrite;
    type Response = Option<u64>;

    fn dispatch(&self, key: u64) -> Option<u64> {
        self.0.get(&key).copied()
    }

    fn dispatch_mut(&mut self, op: KvWrite) -> Option<u64> {
        match op {
            KvWrite::Put { key, value } => self.0.insert(key, value),
        }
    }
}

impl Replicated for KvMap {
    type Query = u64;
    fn as_read(query: &u64) -> u64 {
        *query
    }
}

/// The usual hand-written Raft state machine: a `HashMap` under a `Mutex`,
/// with the same operations as [`KvMap`]. Kept as the baseline the
/// benchmarks compare [`NrMachine`] with.
///
/// # Examples
///
/// ```
/// use noderep_raft::{Machine, PlainKv};
///
/// let kv = PlainKv::default();
/// assert_eq!(kv.apply(r#"{"Put":{"key":1,"value":10}}"#)?, "null");
/// assert_eq!(kv.get(1), Some(10));
/// assert_eq!(kv.query("1")?, "10");
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Default)]
pub struct PlainKv {
    map: Mutex<HashMap<u64, u64>>,
}

impl PlainKv {
    /// The value of `key` in the local state.
    pub fn get(&self, key: u64) -> Option<u64> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied()
    }
}

impl Machine for PlainKv {
    fn apply(&self, op: &str) -> Result<String, String> {
        let KvWrite::Put { key, value } = serde_json::from_str(op).map_err(|e| e.to_string())?;
        let prev = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, value);
        serde_json::to_string(&prev).map_err(|e| e.to_string())
    }

    fn check_write(&self, op: &str) -> Result<(), String> {
        serde_json::from_str::<KvWrite>(op)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn check_query(&self, query: &str) -> Result<(), String> {
        serde_json::from_str::<u64>(query)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn query(&self, query: &str) -> Result<String, String> {
        let key: u64 = serde_json::from_str(query).map_err(|e| e.to_string())?;
        serde_json::to_string(&self.get(key)).map_err(|e| e.to_string())
    }

    fn snapshot(&self) -> Result<String, String> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::to_string(&*map).map_err(|e| e.to_string())
    }

    fn restore(&self, state: &str) -> Result<(), String> {
        let map: HashMap<u64, u64> = serde_json::from_str(state).map_err(|e| e.to_string())?;
        *self.map.lock().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(())
    }
}
