//! Lanes: node replication with several logs, so that writes that commute
//! scale instead of queueing behind one combiner.
//!
//! With one log, every write of a replica goes through one flat combiner,
//! and writes of different replicas through one log tail: writes serialise
//! even when they touch unrelated keys. A [`LaneReplicated`] structure is
//! split into *lanes*: every replica holds one *shard* of the structure per
//! lane, and every lane has its own log, and per replica its own combiner,
//! readers-writer lock and thread slots. Two writers on different lanes
//! never wait for each other, on one replica or on several. This is the idea
//! of CNR (Bhardwaj et al., OSDI 2021), here for sequential structures on
//! stable Rust.
//!
//! The user says which lane an operation belongs to with a [`LaneMap`]:
//! [`Lane::One(key)`](Lane::One) (lane `key % lanes`; operations that
//! conflict must give the same key) or [`Lane::All`] for an operation that
//! must see or change every shard (`len`, `clear`, a range scan, a
//! snapshot). An all-lane operation runs on every shard of the replica and
//! the shards' responses are folded, in lane order, with
//! [`LaneMap::merge_responses`]. Nothing is allocated per single-lane
//! operation.
//!
//! # How it works
//!
//! * Each lane is an ordinary single-log instance ([`NodeReplicated`]) whose
//!   replicas hold the lane's shards; a [`LaneToken`] holds one thread token
//!   per lane, all on the same replica. Single-lane operations are exactly
//!   the single-log operations of their lane: combining, helping a lagging
//!   replica, the commit point, the one-replica path without a log.
//! * A single-lane read waits only for its own lane's commit point.
//! * An all-lane write, with one replica, takes every lane's combiner lock
//!   and then every lane's write lock, in lane order, and applies the
//!   operation to every shard while it holds them all.
//! * An all-lane write, with several replicas, is appended under one
//!   instance-wide lock as one *leaf* entry in every lane's log (so leaves
//!   appear in the same order in every lane), then its issuer drives its own
//!   replica's lanes to their leaves. On every replica, a lane that reaches
//!   its leaf stops there until every lane of that replica has reached its
//!   own; the last one raises every lane's commit point past its leaf and
//!   lets them go; each lane then applies the write to its shard. Lanes that
//!   wait help the others reach their leaves. The barrier and why it is
//!   linearizable and deadlock-free are in `shard.rs`.
//! * An all-lane read, with one replica, takes every lane's read lock in
//!   lane order and runs on every shard while it holds them all. With several
//!   replicas it catches its replica up to every lane's commit point, then
//!   *tries* every read lock (never blocking while it holds one: a lane
//!   stopped at an all-lane barrier holds its write lock while it waits for
//!   the other lanes, and those may need the locks we would hold), then
//!   checks that every lane's commit point, read again *now*, is still
//!   covered by the replica. If so, every write that completed before that
//!   check is in the state it reads and nothing it reads started after the
//!   locks were taken, so the read is linearizable at the first of these
//!   loads; otherwise it lets go and tries again, this time catching up to
//!   each lane's tail (ahead of the commit points).
//!
//! Poisoning: a panicking single-lane write poisons its lane as in the
//! single-log case and the instance as soon as the failing call returns (or
//! unwinds); every later call returns [`ExecError::Poisoned`]. A panicking
//! all-lane write poisons the instance; with several replicas its issuer
//! gets `Poisoned` rather than the panic.
//!
//! # Trade-offs
//!
//! * Only operations that commute may go to different lanes; the map is
//!   the user's contract and is not checked.
//! * Every lane has its own log and slots: memory is `lanes` times that of
//!   one log, and a registered thread holds one slot in every lane.
//! * An all-lane write stops every lane of every replica for a moment and
//!   costs one allocation; an all-lane read on several replicas may retry
//!   while other replicas keep committing (it succeeds as soon as its
//!   replica is not behind any lane's commit point when it looks); an
//!   operation that must not retry can be written as an all-lane write.
//! * The structure is a sequential one per shard; a structure that is
//!   itself concurrent (CNR's other mode) is not supported.
//! * Replicas are never parked (`Dispatch::snapshot` of a lane's shard is
//!   `None`, whatever the user's structure offers): each lane would park
//!   and rebuild its replica on its own, while the all-lane barrier needs
//!   every lane of a replica to replay in step. An idle replica is kept
//!   current by helping instead, in every lane, exactly as in the
//!   single-log case without snapshots; `add_replica`/`remove_replica` are
//!   not offered.
//!
//! # References
//!
//! Bhardwaj, Kulkarni, Achermann, Calciu, Kashyap, Stutsman, Tai, Zellweger:
//! "NrOS: Effective Replication and Sharing in an Operating System", OSDI
//! 2021 (concurrent node replication); Calciu et al., ASPLOS 2017.
//!
//! # Example
//!
//! ```
//! use noderep::nr::lanes::{Lane, LaneMap, LaneReplicated, LanesBuilder};
//! use noderep::{Dispatch, NrBuilder, ReplicaPolicy};
//! use std::collections::HashMap;
//!
//! #[derive(Default)]
//! struct Map(HashMap<u64, u64>);
//!
//! #[derive(Clone)]
//! enum Write { Put(u64, u64), Clear }
//! #[derive(Clone, Copy)]
//! enum Read { Get(u64), Len }
//!
//! impl Dispatch for Map {
//!     type ReadOperation<'a> = Read;
//!     type WriteOperation = Write;
//!     type Response = u64;
//!     fn dispatch(&self, op: Read) -> u64 {
//!         match op {
//!             Read::Get(k) => self.0.get(&k).copied().unwrap_or(0),
//!             Read::Len => self.0.len() as u64,
//!         }
//!     }
//!     fn dispatch_mut(&mut self, op: Write) -> u64 {
//!         match op {
//!             Write::Put(k, v) => self.0.insert(k, v).unwrap_or(0),
//!             Write::Clear => { self.0.clear(); 0 }
//!         }
//!     }
//! }
//!
//! impl LaneMap for Map {
//!     // A key's operations conflict only with the same key's.
//!     fn write_lane(op: &Write) -> Lane {
//!         match op { Write::Put(k, _) => Lane::One(*k), Write::Clear => Lane::All }
//!     }
//!     fn read_lane(op: &Read) -> Lane {
//!         match op { Read::Get(k) => Lane::One(*k), Read::Len => Lane::All }
//!     }
//!     // Len of the whole map: the sum over the shards.
//!     fn merge_responses(a: u64, b: u64) -> u64 { a + b }
//! }
//!
//! let map = LanesBuilder::new(NrBuilder::new().replicas(ReplicaPolicy::Fixed(2)))
//!     .lanes(4)
//!     .build(|_replica, _lane| Map::default())
//!     .unwrap();
//! let token = map.register().unwrap();
//! for k in 0..10 {
//!     map.execute_mut(Write::Put(k, k * k), &token).unwrap();
//! }
//! assert_eq!(map.execute(Read::Get(3), &token).unwrap(), 9);
//! assert_eq!(map.execute(Read::Len, &token).unwrap(), 10);
//! map.execute_mut(Write::Clear, &token).unwrap();
//! assert_eq!(map.execute(Read::Len, &token).unwrap(), 0);
//! ```

mod hooks;
mod shard;

use super::replica::CombinerGuard;
use super::rwlock::{ReadGuard, WriteGuard};
use super::{Dispatch, ExecError, NodeReplicated, NrBuilder, NrError, ThreadToken};
use crate::mutants;
use crate::sync::{Arc, AtomicBool, Backoff, CachePadded, Ordering};
use alloc::boxed::Box;
use alloc::vec::Vec;
use shard::{AllDesc, LaneOp, Shard};

/// Rounds a lane's writer spins for the lane's busy combiner lock before it
/// hands its operation over (`NrBuilder::spin_for_combiner`): about a
/// microsecond, the length of a few single-lane writes. Two writers meet on
/// a lane's lock only when their keys fall in the same lane; then taking the
/// lock after the other's write beat the slot handshake 1.2-1.5x with two
/// threads, two lanes and random keys (`examples/lanes_probe`).
const LANE_COMBINER_SPIN: u32 = 64;

/// The most lanes an instance may have (the all-lane paths keep one guard
/// per lane on the stack).
#[doc(hidden)] // Public as `LanesBuilder::MAX_LANES`; this path is kept for code written against it.
pub const MAX_LANES: usize = 32;

/// Which lane an operation belongs to.
///
/// # Examples
///
/// A map's [`LaneMap`]: a key's operations go to the key's lane, operations
/// on the whole map to every lane.
///
/// ```
/// use noderep::Dispatch;
/// use noderep::nr::lanes::{Lane, LaneMap, LaneReplicated};
/// use std::collections::BTreeMap;
///
/// #[derive(Default)]
/// struct Map(BTreeMap<u64, u64>);
/// #[derive(Clone)]
/// enum Write { Put(u64, u64), Clear }
/// #[derive(Clone, Copy)]
/// enum Read { Get(u64), Len }
/// # impl Dispatch for Map {
/// #     type ReadOperation<'a> = Read;
/// #     type WriteOperation = Write;
/// #     type Response = u64;
/// #     fn dispatch(&self, op: Read) -> u64 {
/// #         match op {
/// #             Read::Get(k) => self.0.get(&k).copied().unwrap_or(0),
/// #             Read::Len => self.0.len() as u64,
/// #         }
/// #     }
/// #     fn dispatch_mut(&mut self, op: Write) -> u64 {
/// #         match op {
/// #             Write::Put(k, v) => self.0.insert(k, v).unwrap_or(0),
/// #             Write::Clear => { self.0.clear(); 0 }
/// #         }
/// #     }
/// # }
///
/// impl LaneMap for Map {
///     fn write_lane(op: &Write) -> Lane {
///         match op { Write::Put(k, _) => Lane::One(*k), Write::Clear => Lane::All }
///     }
///     fn read_lane(op: &Read) -> Lane {
///         match op { Read::Get(k) => Lane::One(*k), Read::Len => Lane::All }
///     }
///     fn merge_responses(a: u64, b: u64) -> u64 { a + b }
/// }
///
/// assert_eq!(Map::write_lane(&Write::Put(7, 1)), Lane::One(7));
/// assert_eq!(Map::read_lane(&Read::Len), Lane::All);
/// let map = LaneReplicated::new(4, |_replica, _lane| Map::default())?;
/// assert_eq!(map.lane_index(Lane::One(7)), Some(3)); // 7 % 4
/// assert_eq!(map.lane_index(Lane::All), None);
/// # Ok::<(), noderep::nr::lanes::LanesError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Lane `key % lanes` only. Operations that do not commute must give
    /// the same key (for a map: a hash of the key, or the key itself);
    /// return a number below the lane count to pick a lane explicitly.
    One(u64),
    /// Every lane: the operation runs on every shard and the responses are
    /// folded with [`LaneMap::merge_responses`].
    All,
}

/// How a [`Dispatch`] structure is partitioned into lanes.
///
/// The contract: two operations mapped to different lanes commute and touch
/// different parts of the structure (each lane's shard only ever sees the
/// operations of its lane and the all-lane ones). Conflicting operations
/// must map to the same lane. The functions are called on every operation,
/// so they should be cheap; they must not allocate to be useful. The
/// structure and its operations are shared between threads, hence the
/// `Send`/`Sync` bounds (the same as [`NodeReplicated`] needs).
pub trait LaneMap: Dispatch<WriteOperation: Sync, Response: Send> + Send + Sync {
    /// The lane of a write.
    fn write_lane(op: &Self::WriteOperation) -> Lane;

    /// The lane of a read.
    fn read_lane(op: &Self::ReadOperation<'_>) -> Lane;

    /// Folds the responses of the shards to an all-lane operation, called
    /// with the fold so far (lane 0 first) and the next lane's response.
    /// Never called for single-lane operations.
    fn merge_responses(acc: Self::Response, next: Self::Response) -> Self::Response;
}

/// A lane-partitioned instance could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LanesError {
    /// Zero lanes were asked for.
    #[error("the number of lanes must be at least 1 (use 1 for a single log; for writers with unrelated keys, a few lanes per thread that writes at once)")]
    ZeroLanes,
    /// More lanes than supported.
    #[error("{asked} lanes asked for, above the supported {max}; use at most {max} lanes (a few per thread that writes at once is enough)")]
    TooManyLanes {
        /// Lanes asked for.
        asked: usize,
        /// The limit.
        max: usize,
    },
    /// The lanes got different numbers of replicas (the topology changed
    /// while they were built).
    #[error("lane {lane} has {got} replicas but lane 0 has {expected}; pass a fixed topology or ReplicaPolicy::Fixed to the NrBuilder")]
    ReplicaMismatch {
        /// The lane.
        lane: usize,
        /// Its replicas.
        got: usize,
        /// Lane 0's replicas.
        expected: usize,
    },
    /// `NrBuilder::max_replicas` was set.
    #[error("max_replicas is not supported with lanes: spare replicas start parked, and a lane-partitioned replica cannot be parked or added; leave max_replicas unset")]
    SpareReplicas,
    /// The per-lane configuration was refused.
    #[error(transparent)]
    Nr(#[from] NrError),
}

/// Options for a [`LaneReplicated`] instance: the lane count, and the
/// single-log options (topology, replicas, log capacity, slots) that every
/// lane uses.
///
/// # Examples
///
/// ```
/// # use noderep::Dispatch;
/// # use noderep::nr::lanes::{Lane, LaneMap};
/// # use std::collections::HashMap;
/// # #[derive(Default)]
/// # struct Map(HashMap<u64, u64>);
/// # #[derive(Clone)]
/// # enum Write { Put(u64, u64), Clear }
/// # #[derive(Clone, Copy)]
/// # enum Read { Get(u64), Len }
/// # impl Dispatch for Map {
/// #     type ReadOperation<'a> = Read;
/// #     type WriteOperation = Write;
/// #     type Response = u64;
/// #     fn dispatch(&self, op: Read) -> u64 {
/// #         match op {
/// #             Read::Get(k) => self.0.get(&k).copied().unwrap_or(0),
/// #             Read::Len => self.0.len() as u64,
/// #         }
/// #     }
/// #     fn dispatch_mut(&mut self, op: Write) -> u64 {
/// #         match op {
/// #             Write::Put(k, v) => self.0.insert(k, v).unwrap_or(0),
/// #             Write::Clear => { let n = self.0.len() as u64; self.0.clear(); n }
/// #         }
/// #     }
/// # }
/// # impl LaneMap for Map {
/// #     fn write_lane(op: &Write) -> Lane {
/// #         match op { Write::Put(k, _) => Lane::One(*k), Write::Clear => Lane::All }
/// #     }
/// #     fn read_lane(op: &Read) -> Lane {
/// #         match op { Read::Get(k) => Lane::One(*k), Read::Len => Lane::All }
/// #     }
/// #     fn merge_responses(a: u64, b: u64) -> u64 { a + b }
/// # }
/// use noderep::nr::lanes::{LanesBuilder, LanesError};
/// use noderep::{NrBuilder, ReplicaPolicy};
///
/// let nr = NrBuilder::new()
///     .replicas(ReplicaPolicy::Fixed(2))
///     .log_capacity(256);
/// let map = LanesBuilder::new(nr.clone())
///     .lanes(4)
///     .build(|_replica, _lane| Map::default())?;
/// assert_eq!((map.num_lanes(), map.num_replicas()), (4, 2));
/// assert_eq!(map.log_capacity(), 256); // per lane
///
/// // Bad settings are errors that say what to do.
/// let zero = LanesBuilder::new(nr).lanes(0).build(|_, _| Map::default());
/// assert_eq!(zero.unwrap_err(), LanesError::ZeroLanes);
/// # Ok::<(), LanesError>(())
/// ```
#[derive(Debug, Clone)]
pub struct LanesBuilder<D> {
    nr: NrBuilder<D>,
    lanes: usize,
}

impl<D> LanesBuilder<D> {
    /// The most lanes an instance may have (the all-lane paths keep one
    /// guard per lane on the stack). Above it `build` returns
    /// [`LanesError::TooManyLanes`].
    pub const MAX_LANES: usize = MAX_LANES;

    /// Two lanes, each configured by `nr` (its log capacity is per lane).
    /// `max_replicas` is not supported (see [`LanesError::SpareReplicas`]).
    pub fn new(nr: NrBuilder<D>) -> Self {
        Self { nr, lanes: 2 }
    }

    /// Number of lanes (1..=[`MAX_LANES`](Self::MAX_LANES)).
    ///
    /// Two writers whose keys are unrelated meet on one lane, and one
    /// waits, with probability 1/`lanes`; a few lanes per thread that
    /// writes at once keep that rare. Measured with two writers and random
    /// keys on one replica (`examples/lanes_probe`, docs/RESULTS.md): 2
    /// lanes ran 0.92x one log, 8 lanes 1.58x. Writers whose keys fall in
    /// lanes of their own need only one lane each. Each lane costs a log
    /// per instance with several replicas, a slot per registered thread,
    /// and a step of every all-lane operation.
    pub fn lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes;
        self
    }

    /// Builds the instance; `make(replica, lane)` builds that replica's
    /// shard for that lane (on a thread pinned to the replica's node, with
    /// `std`).
    ///
    /// # Errors
    ///
    /// [`LanesError::ZeroLanes`], [`LanesError::TooManyLanes`] for a bad lane
    /// count; [`LanesError::SpareReplicas`] if `max_replicas` was set;
    /// [`LanesError::ReplicaMismatch`] if the lanes got different replica
    /// counts (a topology that changed during the build);
    /// [`LanesError::Nr`] when the single-log options are refused (as
    /// [`NrBuilder::build`] would refuse them).
    pub fn build(
        self,
        make: impl Fn(usize, usize) -> D + Sync,
    ) -> Result<LaneReplicated<D>, LanesError>
    where
        D: LaneMap,
    {
        if self.nr.has_max_replicas() {
            return Err(LanesError::SpareReplicas);
        }
        if self.lanes == 0 {
            return Err(LanesError::ZeroLanes);
        }
        if self.lanes > MAX_LANES {
            return Err(LanesError::TooManyLanes {
                asked: self.lanes,
                max: MAX_LANES,
            });
        }
        let mut lanes = Vec::with_capacity(self.lanes);
        for lane in 0..self.lanes {
            let nr = self
                .nr
                .clone()
                .retyped::<Shard<D>>()
                .spin_for_combiner(LANE_COMBINER_SPIN)
                .build(|r| Shard::new(make(r, lane), r, lane))?;
            let expected = lanes
                .first()
                .map_or(nr.num_replicas(), NodeReplicated::num_replicas);
            if nr.num_replicas() != expected {
                return Err(LanesError::ReplicaMismatch {
                    lane,
                    got: nr.num_replicas(),
                    expected,
                });
            }
            lanes.push(nr);
        }
        let mask = self.lanes.is_power_of_two().then(|| self.lanes as u64 - 1);
        Ok(LaneReplicated {
            shared: Arc::new(LanesShared {
                lanes: lanes.into_boxed_slice(),
                mask,
                all_lock: CachePadded::new(AtomicBool::new(false)),
                poisoned: CachePadded::new(AtomicBool::new(false)),
            }),
        })
    }
}

/// What every thread of a lane-partitioned instance shares.
pub(crate) struct LanesShared<D: LaneMap> {
    /// One single-log instance per lane, over that lane's shards.
    lanes: Box<[NodeReplicated<Shard<D>>]>,
    /// `lanes - 1` when the lane count is a power of two (lane = key & mask).
    mask: Option<u64>,
    /// Orders all-lane writes: held while one appends its leaves, so that
    /// leaves appear in the same order in every lane. CAS by appenders.
    all_lock: CachePadded<AtomicBool>,
    /// Instance-wide poison flag: set (Release) by a call that saw a lane
    /// poisoned or unwound through a panic; read (Acquire) by every call.
    poisoned: CachePadded<AtomicBool>,
}

impl<D: LaneMap> LanesShared<D> {
    /// Whether the instance or any lane is poisoned.
    fn any_poisoned(&self) -> bool {
        // Acquire: pairs with the Release that poisons.
        self.poisoned.load(Ordering::Acquire) || self.lanes.iter().any(hooks::lane_poisoned)
    }

    /// Marks the instance poisoned.
    fn poison(&self) {
        // Release: pairs with the Acquire loads of the flag.
        self.poisoned.store(true, Ordering::Release);
    }

    /// The lane of `key`.
    #[inline(always)]
    fn lane_of(&self, key: u64) -> usize {
        match self.mask {
            Some(mask) => (key & mask) as usize,
            None => (key % self.lanes.len() as u64) as usize,
        }
    }
}

/// Poisons the instance if dropped while a panic unwinds through a call;
/// defused with `mem::forget` on the normal path.
struct PoisonOnUnwind<'a>(&'a AtomicBool);

impl Drop for PoisonOnUnwind<'_> {
    fn drop(&mut self) {
        // Release: pairs with the Acquire loads of the flag.
        self.0.store(true, Ordering::Release);
    }
}

/// Releases the all-lane append lock on drop.
struct AllLockGuard<'a>(&'a AtomicBool);

impl Drop for AllLockGuard<'_> {
    fn drop(&mut self) {
        // Release: our appends happen before the next appender's (Acquire
        // CAS in `write_all_logged`), so its leaves come after ours in every
        // lane.
        self.0.store(false, Ordering::Release);
    }
}

/// A structure `D` split into lanes and replicated, linearizable under
/// concurrent use (module docs).
///
/// # Examples
///
/// ```
/// # use noderep::Dispatch;
/// # use noderep::nr::lanes::{Lane, LaneMap};
/// # use std::collections::HashMap;
/// # #[derive(Default)]
/// # struct Map(HashMap<u64, u64>);
/// # #[derive(Clone)]
/// # enum Write { Put(u64, u64), Clear }
/// # #[derive(Clone, Copy)]
/// # enum Read { Get(u64), Len }
/// # impl Dispatch for Map {
/// #     type ReadOperation<'a> = Read;
/// #     type WriteOperation = Write;
/// #     type Response = u64;
/// #     fn dispatch(&self, op: Read) -> u64 {
/// #         match op {
/// #             Read::Get(k) => self.0.get(&k).copied().unwrap_or(0),
/// #             Read::Len => self.0.len() as u64,
/// #         }
/// #     }
/// #     fn dispatch_mut(&mut self, op: Write) -> u64 {
/// #         match op {
/// #             Write::Put(k, v) => self.0.insert(k, v).unwrap_or(0),
/// #             Write::Clear => { let n = self.0.len() as u64; self.0.clear(); n }
/// #         }
/// #     }
/// # }
/// # impl LaneMap for Map {
/// #     fn write_lane(op: &Write) -> Lane {
/// #         match op { Write::Put(k, _) => Lane::One(*k), Write::Clear => Lane::All }
/// #     }
/// #     fn read_lane(op: &Read) -> Lane {
/// #         match op { Read::Get(k) => Lane::One(*k), Read::Len => Lane::All }
/// #     }
/// #     fn merge_responses(a: u64, b: u64) -> u64 { a + b }
/// # }
/// use noderep::nr::lanes::LaneReplicated;
/// use noderep::topology::Topology;
/// use noderep::{NrBuilder, ReplicaPolicy};
///
/// // Two replicas (two simulated nodes) of a map in two lanes.
/// let nr = NrBuilder::new()
///     .topology(Topology::simulated(2, 1)?)
///     .replicas(ReplicaPolicy::PerNode);
/// let map = noderep::nr::lanes::LanesBuilder::new(nr)
///     .lanes(2)
///     .build(|_replica, _lane| Map::default())?;
/// std::thread::scope(|s| {
///     for replica in 0..2u64 {
///         let map = &map;
///         s.spawn(move || {
///             let token = map.register_on(replica as usize).unwrap();
///             // Even keys go to lane 0, odd keys to lane 1.
///             for k in (replica * 100)..(replica * 100 + 50) {
///                 map.execute_mut(Write::Put(k, k), &token).unwrap();
///             }
///         });
///     }
/// });
/// let token = map.register()?;
/// assert_eq!(map.execute(Read::Get(120), &token)?, 120);
/// assert_eq!(map.execute(Read::Len, &token)?, 100); // all lanes, summed
/// // An all-lane write answers on every shard: 100 entries cleared.
/// assert_eq!(map.execute_mut(Write::Clear, &token)?, 100);
/// assert_eq!(map.execute(Read::Len, &token)?, 0);
/// let _: &LaneReplicated<Map> = &map;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LaneReplicated<D: LaneMap> {
    shared: Arc<LanesShared<D>>,
}

/// A registered thread's right to operate on one [`LaneReplicated`]
/// instance: one thread slot in every lane, all on one replica. Neither
/// `Send` nor `Sync`; dropping it frees the slots.
///
/// # Examples
///
/// ```
/// # use noderep::Dispatch;
/// # use noderep::nr::lanes::{Lane, LaneMap};
/// # use std::collections::HashMap;
/// # #[derive(Default)]
/// # struct Map(HashMap<u64, u64>);
/// # #[derive(Clone)]
/// # enum Write { Put(u64, u64), Clear }
/// # #[derive(Clone, Copy)]
/// # enum Read { Get(u64), Len }
/// # impl Dispatch for Map {
/// #     type ReadOperation<'a> = Read;
/// #     type WriteOperation = Write;
/// #     type Response = u64;
/// #     fn dispatch(&self, op: Read) -> u64 {
/// #         match op {
/// #             Read::Get(k) => self.0.get(&k).copied().unwrap_or(0),
/// #             Read::Len => self.0.len() as u64,
/// #         }
/// #     }
/// #     fn dispatch_mut(&mut self, op: Write) -> u64 {
/// #         match op {
/// #             Write::Put(k, v) => self.0.insert(k, v).unwrap_or(0),
/// #             Write::Clear => { let n = self.0.len() as u64; self.0.clear(); n }
/// #         }
/// #     }
/// # }
/// # impl LaneMap for Map {
/// #     fn write_lane(op: &Write) -> Lane {
/// #         match op { Write::Put(k, _) => Lane::One(*k), Write::Clear => Lane::All }
/// #     }
/// #     fn read_lane(op: &Read) -> Lane {
/// #         match op { Read::Get(k) => Lane::One(*k), Read::Len => Lane::All }
/// #     }
/// #     fn merge_responses(a: u64, b: u64) -> u64 { a + b }
/// # }
/// use noderep::nr::lanes::{LaneReplicated, LaneToken};
/// use noderep::ExecError;
///
/// let map = LaneReplicated::new(2, |_replica, _lane| Map::default())?;
/// let token: LaneToken<Map> = map.register()?;
/// assert!(token.replica() < map.num_replicas());
/// map.execute_mut(Write::Put(1, 10), &token)?;
/// // A token works only with the instance it was registered with.
/// let other = LaneReplicated::new(2, |_replica, _lane| Map::default())?;
/// assert_eq!(other.execute_mut(Write::Clear, &token), Err(ExecError::WrongInstance));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LaneToken<D: LaneMap> {
    shared: Arc<LanesShared<D>>,
    /// One token per lane, all registered with `replica`.
    tokens: Box<[ThreadToken<Shard<D>>]>,
    replica: usize,
}

impl<D: LaneMap> LaneToken<D> {
    /// The replica this token is bound to.
    pub fn replica(&self) -> usize {
        self.replica
    }
}

impl<D: LaneMap> core::fmt::Debug for LaneToken<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LaneToken")
            .field("replica", &self.replica)
            .field("lanes", &self.tokens.len())
            .finish()
    }
}

impl<D: LaneMap> core::fmt::Debug for LaneReplicated<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Relaxed: a snapshot for display; nothing is read through it.
        f.debug_struct("LaneReplicated")
            .field("lanes", &self.shared.lanes.len())
            .field("replicas", &self.shared.lanes[0].num_replicas())
            .field("poisoned", &self.shared.poisoned.load(Ordering::Relaxed))
            .finish()
    }
}

/// Folds lane `next`'s response into an all-lane response (lanes in order).
#[inline]
fn fold<D: LaneMap>(acc: Option<D::Response>, next: D::Response) -> Option<D::Response> {
    Some(match acc {
        None => next,
        Some(a) => D::merge_responses(a, next),
    })
}

/// The response of a lane's call, with the instance poisoned on failure.
#[inline(always)]
fn settle<D: LaneMap>(
    shared: &LanesShared<D>,
    out: Result<Option<D::Response>, ExecError>,
) -> Result<D::Response, ExecError> {
    match out {
        Ok(Some(r)) => Ok(r),
        // A single-lane operation always has a response; a lane only
        // answers `None` for an all-lane leaf, which no slot waits for.
        Ok(None) => Err(ExecError::Poisoned),
        Err(e) => {
            if e == ExecError::Poisoned {
                shared.poison();
            }
            Err(e)
        }
    }
}

impl<D: LaneMap> LaneReplicated<D> {
    /// `lanes` lanes, one replica per NUMA node; see [`LanesBuilder`].
    ///
    /// # Errors
    ///
    /// As for [`LanesBuilder::build`].
    pub fn new(lanes: usize, make: impl Fn(usize, usize) -> D + Sync) -> Result<Self, LanesError> {
        LanesBuilder::new(NrBuilder::new()).lanes(lanes).build(make)
    }

    /// Number of lanes.
    pub fn num_lanes(&self) -> usize {
        self.shared.lanes.len()
    }

    /// Number of replicas.
    pub fn num_replicas(&self) -> usize {
        self.shared.lanes[0].num_replicas()
    }

    /// Capacity of each lane's log (0 with a single replica: no logs).
    pub fn log_capacity(&self) -> usize {
        self.shared.lanes[0].log_capacity()
    }

    /// Whether an operation has panicked and poisoned the instance.
    pub fn is_poisoned(&self) -> bool {
        self.shared.any_poisoned()
    }

    /// The lane index that `lane` selects in this instance (`None` for
    /// [`Lane::All`]).
    pub fn lane_index(&self, lane: Lane) -> Option<usize> {
        match lane {
            Lane::One(key) => Some(self.shared.lane_of(key)),
            Lane::All => None,
        }
    }

    /// Registers the calling thread with the replica of the node it runs on
    /// (as [`NodeReplicated::register`]), in every lane.
    ///
    /// # Errors
    ///
    /// As for [`NodeReplicated::register`]: [`NrError::Poisoned`] once an
    /// operation has panicked; [`NrError::ReplicaFull`] when the slots of
    /// the replica are taken in some lane.
    pub fn register(&self) -> Result<LaneToken<D>, NrError> {
        if self.is_poisoned() {
            return Err(NrError::Poisoned);
        }
        let first = self.shared.lanes[0].register()?;
        let replica = first.replica();
        self.register_rest(first, replica)
    }

    /// Registers the calling thread with replica `replica`, in every lane.
    ///
    /// # Errors
    ///
    /// As for [`NodeReplicated::register_on`]: [`NrError::NoSuchReplica`],
    /// [`NrError::ReplicaFull`], [`NrError::Poisoned`].
    pub fn register_on(&self, replica: usize) -> Result<LaneToken<D>, NrError> {
        if self.is_poisoned() {
            return Err(NrError::Poisoned);
        }
        let first = self.shared.lanes[0].register_on(replica)?;
        self.register_rest(first, replica)
    }

    fn register_rest(
        &self,
        first: ThreadToken<Shard<D>>,
        replica: usize,
    ) -> Result<LaneToken<D>, NrError> {
        let mut tokens = Vec::with_capacity(self.shared.lanes.len());
        tokens.push(first);
        for lane in &self.shared.lanes[1..] {
            // On error the tokens taken so far are dropped: slots freed.
            tokens.push(lane.register_on(replica)?);
        }
        Ok(LaneToken {
            shared: Arc::clone(&self.shared),
            tokens: tokens.into_boxed_slice(),
            replica,
        })
    }

    /// The lane of `key` and the token's thread token for it, once the
    /// token is known to be this instance's: it then holds one thread token
    /// per lane of this instance, in lane order (`register`).
    #[inline(always)]
    fn lane_token<'a>(
        &self,
        key: u64,
        token: &'a LaneToken<D>,
    ) -> Result<(usize, &'a ThreadToken<Shard<D>>), ExecError> {
        let lane = self.shared.lane_of(key);
        match token.tokens.get(lane) {
            Some(tok) if Arc::ptr_eq(&self.shared, &token.shared) => Ok((lane, tok)),
            _ => Err(ExecError::WrongInstance),
        }
    }

    /// The instance check of the all-lane paths (single-lane calls make it
    /// in `lane_token`).
    fn check(&self, token: &LaneToken<D>) -> Result<(), ExecError> {
        if !Arc::ptr_eq(&self.shared, &token.shared) {
            return Err(ExecError::WrongInstance);
        }
        if self.shared.any_poisoned() {
            self.shared.poison();
            return Err(ExecError::Poisoned);
        }
        Ok(())
    }

    /// Runs a read: on its lane (waiting only for that lane's commit
    /// point), or, for [`Lane::All`], on every shard of the caller's
    /// replica at one linearizable instant.
    ///
    /// # Errors
    ///
    /// [`ExecError::WrongInstance`] if `token` belongs to another instance;
    /// [`ExecError::Poisoned`] once an operation has panicked (then every
    /// later call fails too: build a new instance).
    #[inline(always)]
    pub fn execute<'r>(
        &self,
        op: D::ReadOperation<'r>,
        token: &LaneToken<D>,
    ) -> Result<D::Response, ExecError>
    where
        D: 'r,
        D::ReadOperation<'r>: Clone,
    {
        let shared = &*self.shared;
        // Acquire: pairs with the Release that poisons.
        if shared.poisoned.load(Ordering::Acquire) {
            return Err(ExecError::Poisoned);
        }
        match D::read_lane(&op) {
            Lane::One(key) => {
                // The lane need not check the token again: the read goes
                // through the token alone, without loading the lane's
                // instance.
                let (_, tok) = self.lane_token(key, token)?;
                if tok.instance_poisoned() {
                    shared.poison();
                    return Err(ExecError::Poisoned);
                }
                settle(shared, NodeReplicated::read_checked(op, tok))
            }
            Lane::All => self.read_all(op, token),
        }
    }

    /// Runs a write: on its lane, or, for [`Lane::All`], on every shard of
    /// every replica at one linearizable instant; returns the response of
    /// the caller's replica (folded over the lanes for an all-lane write).
    ///
    /// If a single-lane operation panics, the panic resumes in the caller
    /// (as for [`NodeReplicated::execute_mut`]) and the instance is
    /// poisoned.
    ///
    /// # Errors
    ///
    /// [`ExecError::WrongInstance`] if `token` belongs to another instance;
    /// [`ExecError::Poisoned`] once an operation has panicked, including an
    /// all-lane write of this call that panicked on several replicas (the
    /// instance is then poisoned for good).
    #[inline(always)]
    pub fn execute_mut(
        &self,
        op: D::WriteOperation,
        token: &LaneToken<D>,
    ) -> Result<D::Response, ExecError> {
        let shared = &*self.shared;
        // Acquire: pairs with the Release that poisons.
        if shared.poisoned.load(Ordering::Acquire) {
            return Err(ExecError::Poisoned);
        }
        match D::write_lane(&op) {
            Lane::One(key) => {
                let (lane, tok) = self.lane_token(key, token)?;
                let nr = &shared.lanes[lane];
                let unwind = PoisonOnUnwind(&shared.poisoned);
                let out = nr.execute_mut(LaneOp::One(op), tok);
                core::mem::forget(unwind);
                settle(shared, out)
            }
            Lane::All => {
                self.check(token)?;
                let out = if hooks::is_single(&shared.lanes[0]) {
                    self.write_all_direct(op)
                } else {
                    self.write_all_logged(op, token)
                };
                if out.is_err() {
                    shared.poison();
                }
                out
            }
        }
    }

    /// An all-lane write on the only replica: every combiner lock, then
    /// every write lock, in lane order; the operation runs on every shard
    /// while all are held.
    #[cold]
    #[inline(never)]
    fn write_all_direct(&self, op: D::WriteOperation) -> Result<D::Response, ExecError> {
        let shared = &*self.shared;
        let lanes = &shared.lanes;
        let mut combiners: [Option<CombinerGuard<'_>>; MAX_LANES] = core::array::from_fn(|_| None);
        for (j, lane) in lanes.iter().enumerate() {
            let rep = hooks::replica(lane, 0);
            let mut backoff = Backoff::new();
            combiners[j] = Some(loop {
                if let Some(g) = rep.try_combine() {
                    break g;
                }
                if shared.any_poisoned() {
                    return Err(ExecError::Poisoned);
                }
                backoff.snooze();
            });
        }
        if shared.any_poisoned() {
            return Err(ExecError::Poisoned);
        }
        if mutants::skip!("lane_write_all_lane_by_lane") {
            let mut acc = None;
            for (j, lane) in lanes.iter().enumerate() {
                let Some(c) = &combiners[j] else {
                    unreachable!("every lane's combiner lock was taken above");
                };
                let rep = hooks::replica(lane, 0);
                let w = rep.rwlock.write();
                acc = fold::<D>(
                    acc,
                    rep.with_data_mut(c, &w, |s| s.data.dispatch_mut(op.clone())),
                );
                drop(w);
                drop(combiners[j].take());
            }
            return acc.ok_or(ExecError::Poisoned);
        }
        let mut writes: [Option<WriteGuard<'_>>; MAX_LANES] = core::array::from_fn(|_| None);
        for (j, lane) in lanes.iter().enumerate() {
            writes[j] = Some(hooks::replica(lane, 0).rwlock.write());
        }
        let unwind = PoisonOnUnwind(&shared.poisoned);
        let mut acc = None;
        for (j, lane) in lanes.iter().enumerate() {
            let (Some(c), Some(w)) = (&combiners[j], &writes[j]) else {
                unreachable!("every lane's locks were taken above");
            };
            let r =
                hooks::replica(lane, 0).with_data_mut(c, w, |s| s.data.dispatch_mut(op.clone()));
            acc = fold::<D>(acc, r);
        }
        core::mem::forget(unwind);
        drop(writes);
        drop(combiners);
        acc.ok_or(ExecError::Poisoned)
    }

    /// An all-lane write with several replicas: leaves in every lane, then
    /// the caller's replica driven to them (module docs, `shard.rs`).
    #[cold]
    #[inline(never)]
    fn write_all_logged(
        &self,
        op: D::WriteOperation,
        token: &LaneToken<D>,
    ) -> Result<D::Response, ExecError> {
        let shared = &*self.shared;
        let lanes = &shared.lanes;
        let r = token.replica;
        let mut backoff = Backoff::new();
        // Acquire on success: pairs with the Release in `AllLockGuard::drop`.
        while shared
            .all_lock
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            if shared.any_poisoned() {
                return Err(ExecError::Poisoned);
            }
            backoff.snooze();
        }
        let unlock = AllLockGuard(&shared.all_lock);
        let desc = Arc::new(AllDesc::new(
            op,
            r,
            shared,
            lanes.len(),
            self.num_replicas(),
        ));
        for (j, lane) in lanes.iter().enumerate() {
            hooks::append_detached(lane, r, |pos| {
                // Release: the position is visible to whoever acquires the
                // leaf (the entry's publication comes after this store).
                desc.leaves[j].store(pos, Ordering::Release);
                LaneOp::All(Arc::clone(&desc))
            })?;
        }
        drop(unlock);
        for (j, lane) in lanes.iter().enumerate() {
            // Relaxed: we stored it ourselves.
            let leaf = desc.leaves[j].load(Ordering::Relaxed);
            backoff.reset();
            while !hooks::try_exec(lane, r, leaf + 1) {
                if shared.any_poisoned() {
                    return Err(ExecError::Poisoned);
                }
                backoff.snooze();
            }
        }
        // Every lane of our replica is past its leaf: `try_exec` returned
        // true after an Acquire load of its applied position.
        let mut acc = None;
        for j in 0..lanes.len() {
            // SAFETY: we are the issuer, lane j of our replica is past its
            // leaf (Acquire, see above), and each response is taken once.
            let r = unsafe { desc.take_response(j) }.ok_or(ExecError::Poisoned)?;
            acc = fold::<D>(acc, r);
        }
        acc.ok_or(ExecError::Poisoned)
    }

    /// An all-lane read (module docs).
    #[cold]
    #[inline(never)]
    fn read_all<'r>(
        &self,
        op: D::ReadOperation<'r>,
        token: &LaneToken<D>,
    ) -> Result<D::Response, ExecError>
    where
        D: 'r,
        D::ReadOperation<'r>: Clone,
    {
        self.check(token)?;
        let shared = &*self.shared;
        let lanes = &shared.lanes;
        let r = token.replica;
        let fold = |guards: &[Option<ReadGuard<'_>>]| {
            let mut acc = None;
            for (j, lane) in lanes.iter().enumerate() {
                let Some(g) = &guards[j] else {
                    unreachable!("every lane's read lock is held");
                };
                let resp =
                    hooks::replica(lane, r).with_data_read(g, |s| s.data.dispatch(op.clone()));
                acc = fold::<D>(acc, resp);
            }
            acc.ok_or(ExecError::Poisoned)
        };
        if hooks::is_single(&lanes[0]) {
            // No barriers with one replica: nobody holds a write lock while
            // waiting for another lane, so blocking in lane order is safe.
            if mutants::skip!("lane_read_all_lane_by_lane") {
                let mut acc = None;
                for (j, lane) in lanes.iter().enumerate() {
                    let rep = hooks::replica(lane, 0);
                    let g = rep.rwlock.read_with(token.tokens[j].reader_flag());
                    let resp = rep.with_data_read(&g, |s| s.data.dispatch(op.clone()));
                    drop(g);
                    acc = self::fold::<D>(acc, resp);
                }
                return acc.ok_or(ExecError::Poisoned);
            }
            let mut guards: [Option<ReadGuard<'_>>; MAX_LANES] = core::array::from_fn(|_| None);
            for (j, lane) in lanes.iter().enumerate() {
                let rep = hooks::replica(lane, 0);
                guards[j] = Some(rep.rwlock.read_with(token.tokens[j].reader_flag()));
            }
            return fold(&guards[..lanes.len()]);
        }
        let mut backoff = Backoff::new();
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            for lane in lanes.iter() {
                // First up to the commit point; after a failed check, up to
                // the tail, which runs ahead of the commit point that other
                // replicas keep raising, so the next check is likelier to
                // pass.
                let target = if attempt == 1 {
                    hooks::ctail(lane)
                } else {
                    hooks::tail(lane)
                };
                lane.lane_sync(r, target).inspect_err(|_| shared.poison())?;
            }
            let mut guards: [Option<ReadGuard<'_>>; MAX_LANES] = core::array::from_fn(|_| None);
            let mut all = true;
            for (j, lane) in lanes.iter().enumerate() {
                let rep = hooks::replica(lane, r);
                match rep.rwlock.try_read(token.tokens[j].reader_flag()) {
                    Some(g) => guards[j] = Some(g),
                    None => {
                        all = false;
                        break;
                    }
                }
            }
            // With every read lock held the replica cannot move; it must
            // cover every lane's commit point as of now.
            if all
                && (mutants::skip!("lane_read_all_no_recheck")
                    || lanes.iter().all(|l| hooks::ltail(l, r) >= hooks::ctail(l)))
            {
                return fold(&guards[..lanes.len()]);
            }
            drop(guards);
            if shared.any_poisoned() {
                shared.poison();
                return Err(ExecError::Poisoned);
            }
            backoff.snooze();
        }
    }

    /// Brings every replica of every lane up to date and runs `f(replica,
    /// lane, shard)` on each shard while holding it exclusively (for checks
    /// at quiescence); results in lane-major order. `f` must not call back
    /// into this instance: it runs under the shard's locks, so such a call
    /// waits for itself for ever.
    ///
    /// # Errors
    ///
    /// [`ExecError::WrongInstance`] if `token` belongs to another instance;
    /// [`ExecError::Poisoned`] once an operation has panicked.
    pub fn sync_and_inspect<R>(
        &self,
        token: &LaneToken<D>,
        mut f: impl FnMut(usize, usize, &D) -> R,
    ) -> Result<Vec<R>, ExecError> {
        self.check(token)?;
        let mut out = Vec::new();
        for (j, lane) in self.shared.lanes.iter().enumerate() {
            let got = lane
                .sync_and_inspect(&token.tokens[j], |r, s| f(r, j, &s.data))
                .inspect_err(|_| self.shared.poison())?;
            out.extend(got);
        }
        Ok(out)
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
