//! The implementations measured side by side, behind one small interface.
//!
//! A [`System`] is a shared concurrent structure; each benchmark thread asks
//! it for a [`Worker`] (on the thread itself, after pinning, so that
//! node-aware implementations register with the replica of the thread's
//! node) and then calls [`Worker::exec`] in the timed loop. Everything is
//! monomorphised: the timed loop makes no virtual call.

use crate::workload::{Op, ReadOp, Seq, Shape, WriteOp, NONE};
use crossbeam_utils::CachePadded;
use noderep::nr::lanes::{Lane, LaneMap, LaneReplicated, LaneToken, LanesBuilder};
use noderep::topology::{Core, Topology};
use noderep::{NodeReplicated, ReplicaPolicy, ThreadToken};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;

/// A shared structure under test.
pub trait System: Sync {
    /// One thread's handle.
    type Worker<'a>: Worker
    where
        Self: 'a;
    /// Creates the calling thread's handle; `at` is the core it is pinned to.
    fn worker(&self, at: Core) -> Self::Worker<'_>;
}

/// One thread's handle on a [`System`].
pub trait Worker {
    /// Runs one operation and returns its response.
    fn exec(&mut self, op: Op) -> u64;
}

/// Every implementation the suite knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Impl {
    /// noderep, one replica per NUMA node (the default policy).
    NoderepNode,
    /// noderep, one replica per core.
    NoderepCore,
    /// noderep, a single replica.
    NoderepSingle,
    /// noderep on a simulated N-node topology (one replica per simulated node).
    NoderepSim,
    /// noderep on four simulated nodes (four replicas), threads spread over
    /// them: the oversubscribed cell (more threads and replicas than cores).
    NoderepSim4,
    /// noderep lanes (`--lanes` logs, keys hashed to lanes), one replica.
    NoderepLanes,
    /// noderep lanes, one replica per simulated node.
    NoderepLanesSim,
    /// One spinlock per lane over the same lane parts as noderep-lanes,
    /// nothing else: the ceiling of any design that runs the sequential
    /// operation under a per-lane lock.
    LaneLocks,
    /// noderep, one replica per NUMA node, `read_mostly`: fence-free reads,
    /// one `membarrier` per write batch.
    NoderepReadMostly,
    /// node-replication 0.1.1, one replica per NUMA node.
    NodeReplication,
    /// node-replication 0.1.1, one replica per simulated node.
    NodeReplicationSim,
    /// `std::sync::Mutex<D>`.
    Mutex,
    /// `std::sync::RwLock<D>`.
    Rwlock,
    /// `parking_lot::RwLock<D>`.
    ParkingLot,
    /// crossbeam's `ShardedLock<D>`.
    ShardedLock,
    /// left-right (not linearizable in general).
    LeftRight,
    /// dashmap (hashmap only).
    Dashmap,
    /// papaya (hashmap only).
    Papaya,
    /// scc (hashmap only).
    Scc,
    /// The bare sequential structure, one thread only: the cost floor.
    Bare,
}

impl Impl {
    /// Every implementation, in table order.
    pub const ALL: [Impl; 19] = [
        Impl::NoderepNode,
        Impl::NoderepReadMostly,
        Impl::NoderepCore,
        Impl::NoderepSingle,
        Impl::NoderepSim,
        Impl::NoderepLanes,
        Impl::NoderepLanesSim,
        Impl::LaneLocks,
        Impl::NodeReplication,
        Impl::NodeReplicationSim,
        Impl::Mutex,
        Impl::Rwlock,
        Impl::ParkingLot,
        Impl::ShardedLock,
        Impl::LeftRight,
        Impl::Dashmap,
        Impl::Papaya,
        Impl::Scc,
        Impl::Bare,
    ];

    /// Name used in tables, CSV and plots.
    pub fn name(self) -> &'static str {
        match self {
            Impl::NoderepNode => "noderep/node",
            Impl::NoderepCore => "noderep/core",
            Impl::NoderepSingle => "noderep/1",
            Impl::NoderepSim => "noderep/sim",
            Impl::NoderepSim4 => "noderep/sim4",
            Impl::NoderepLanes => "noderep-lanes/1",
            Impl::NoderepLanesSim => "noderep-lanes/sim",
            Impl::LaneLocks => "lane-locks",
            Impl::NoderepReadMostly => "noderep/node-rm",
            Impl::NodeReplication => "node-replication",
            Impl::NodeReplicationSim => "node-replication/sim",
            Impl::Mutex => "Mutex",
            Impl::Rwlock => "RwLock",
            Impl::ParkingLot => "parking_lot::RwLock",
            Impl::ShardedLock => "ShardedLock",
            Impl::LeftRight => "left-right*",
            Impl::Dashmap => "dashmap",
            Impl::Papaya => "papaya",
            Impl::Scc => "scc",
            Impl::Bare => "bare (1 thread)",
        }
    }

    /// A footnote for the table, where one is due.
    pub fn note(self) -> Option<&'static str> {
        match self {
            Impl::LeftRight => Some(
                "left-right*: not linearizable in general (readers see the last published copy); \
                 here every write is published before it returns, one writer at a time under a Mutex",
            ),
            Impl::Bare => Some("bare: the sequential structure with no synchronisation, one thread only"),
            Impl::NoderepLanes | Impl::NoderepLanesSim => Some(
                "noderep-lanes: nr::lanes with --lanes logs (key % lanes); len and range reads are all-lane, \
                 the stack uses one lane",
            ),
            Impl::LaneLocks => Some(
                "lane-locks: one spinlock per lane over noderep-lanes' shards and nothing else, \
                 the ceiling of a per-lane-lock design (all-lane reads lock every lane in order)",
            ),
            Impl::NoderepReadMostly => Some(
                "noderep/node-rm: noderep/node built with read_mostly(true): reads take no fence, \
                 each write batch pays a membarrier (an IPI per busy CPU)",
            ),
            Impl::NoderepSim | Impl::NodeReplicationSim => Some(
                "*/sim: one replica per simulated node; threads are pinned by the simulated topology",
            ),
            Impl::NoderepSim4 => Some(
                "noderep/sim4: four simulated nodes, four replicas, threads registered round-robin \
                 (run only in the oversubscribed cell: more threads than cores)",
            ),
            _ => None,
        }
    }

    /// Whether the implementation applies to the structure (the concurrent
    /// hashmaps only do hashmaps).
    pub fn supports(self, s: crate::workload::Structure) -> bool {
        match self {
            Impl::Dashmap | Impl::Papaya | Impl::Scc => s == crate::workload::Structure::HashMap,
            _ => true,
        }
    }

    /// Whether the implementation is noderep.
    pub fn is_noderep(self) -> bool {
        matches!(
            self,
            Impl::NoderepNode
                | Impl::NoderepCore
                | Impl::NoderepSingle
                | Impl::NoderepSim
                | Impl::NoderepSim4
                | Impl::NoderepReadMostly
                | Impl::NoderepLanes
                | Impl::NoderepLanesSim
        )
    }
}

// ---------------------------------------------------------------- noderep

/// A sequential structure as noderep's `Dispatch`.
pub struct NrD<S>(pub S);

impl<S: Seq> noderep::Dispatch for NrD<S> {
    type ReadOperation<'a>
        = ReadOp
    where
        Self: 'a;
    type WriteOperation = WriteOp;
    type Response = u64;

    #[inline]
    fn dispatch(&self, op: ReadOp) -> u64 {
        self.0.read(op)
    }
    #[inline]
    fn dispatch_mut(&mut self, op: WriteOp) -> u64 {
        self.0.write(op)
    }
    /// Copies, so that idle replicas are parked and cost writers nothing.
    fn snapshot(&self) -> Option<Self> {
        Some(NrD(self.0.clone()))
    }
}

/// noderep with some replica policy.
pub struct Noderep<S: Seq> {
    /// The instance.
    pub nr: NodeReplicated<NrD<S>>,
    /// Register each worker with its core's node's replica (`register_on`)
    /// instead of asking `register` (whose choice follows the CPU the
    /// thread runs on, which is not the simulated one when pinning fails).
    pub by_node: bool,
}

impl<S: Seq> Noderep<S> {
    /// Builds an instance whose replicas start as copies of `proto`.
    pub fn build(
        proto: &S,
        policy: ReplicaPolicy,
        topology: &Topology,
        threads: usize,
        log_entries: Option<usize>,
        read_mostly: bool,
    ) -> Result<Self, noderep::NrError> {
        let slots = threads.max(64);
        let mut b = noderep::NrBuilder::new()
            .topology(topology.clone())
            .replicas(policy)
            .max_threads_per_replica(slots)
            .read_mostly(read_mostly);
        // The library's default log unless asked (a log must hold one batch
        // per replica: slots x replicas, which the builder checks).
        if let Some(n) = log_entries {
            b = b.log_capacity(n);
        } else if slots > 64 {
            b = b.log_capacity(
                (1 << 16).max(slots.next_power_of_two() * topology.num_cores().max(1)),
            );
        }
        let nr = b.build(|_| NrD(proto.clone()))?;
        Ok(Self { nr, by_node: false })
    }
}

/// A registered noderep thread.
pub struct NoderepWorker<'a, S: Seq> {
    nr: &'a NodeReplicated<NrD<S>>,
    token: ThreadToken<NrD<S>>,
}

impl<S: Seq> System for Noderep<S> {
    type Worker<'a> = NoderepWorker<'a, S>;
    fn worker(&self, at: Core) -> NoderepWorker<'_, S> {
        let token = if self.by_node {
            self.nr.register_on(at.node)
        } else {
            self.nr.register()
        }
        .expect("a free noderep thread slot (slots = max(64, threads))");
        NoderepWorker {
            nr: &self.nr,
            token,
        }
    }
}

impl<S: Seq> Worker for NoderepWorker<'_, S> {
    #[inline]
    fn exec(&mut self, op: Op) -> u64 {
        match op {
            Op::Read(r) => self
                .nr
                .execute(r, &self.token)
                .expect("noderep read (instance poisoned?)"),
            Op::Write(w) => self
                .nr
                .execute_mut(w, &self.token)
                .expect("noderep write (instance poisoned?)"),
        }
    }
}

// ---------------------------------------------------------- noderep lanes

impl<S: Seq> LaneMap for NrD<S> {
    #[inline]
    fn write_lane(op: &WriteOp) -> Lane {
        match *op {
            WriteOp::Put(k, _) => Lane::One(k),
            // The stack is one sequence: one lane.
            WriteOp::Push(_) | WriteOp::Pop => Lane::One(0),
        }
    }
    #[inline]
    fn read_lane(op: &ReadOp) -> Lane {
        match *op {
            ReadOp::Get(k) => Lane::One(k),
            ReadOp::Peek => Lane::One(0),
            // A range spans keys of every lane; len counts every shard.
            ReadOp::Range(..) | ReadOp::Len => Lane::All,
        }
    }
    /// Range sums and lengths add up over the shards.
    #[inline]
    fn merge_responses(acc: u64, next: u64) -> u64 {
        acc.wrapping_add(next)
    }
}

/// noderep lanes: the structure split over `lanes` logs by key.
pub struct NoderepLanes<S: Seq> {
    /// The instance.
    pub map: LaneReplicated<NrD<S>>,
}

impl<S: Seq> NoderepLanes<S> {
    /// Builds an instance whose shards start as the parts of `proto` that
    /// belong to their lane (`split(proto, lanes, lane)`).
    pub fn build(
        proto: &S,
        policy: ReplicaPolicy,
        topology: &Topology,
        threads: usize,
        lanes: usize,
        log_entries: Option<usize>,
    ) -> Result<Self, noderep::nr::lanes::LanesError> {
        let slots = threads.max(64);
        let mut b = noderep::NrBuilder::new()
            .topology(topology.clone())
            .replicas(policy)
            .max_threads_per_replica(slots);
        if let Some(n) = log_entries {
            b = b.log_capacity(n);
        }
        let shards: Vec<S> = (0..lanes).map(|l| proto.lane_part(lanes, l)).collect();
        let map = LanesBuilder::new(b)
            .lanes(lanes)
            .build(|_, lane| NrD(shards[lane].clone()))?;
        Ok(Self { map })
    }
}

/// A registered noderep-lanes thread.
pub struct LanesWorker<'a, S: Seq> {
    map: &'a LaneReplicated<NrD<S>>,
    token: LaneToken<NrD<S>>,
}

impl<S: Seq> System for NoderepLanes<S> {
    type Worker<'a> = LanesWorker<'a, S>;
    fn worker(&self, _at: Core) -> LanesWorker<'_, S> {
        let token = self
            .map
            .register()
            .expect("a free noderep-lanes thread slot (slots = max(64, threads))");
        LanesWorker {
            map: &self.map,
            token,
        }
    }
}

impl<S: Seq> Worker for LanesWorker<'_, S> {
    #[inline]
    fn exec(&mut self, op: Op) -> u64 {
        match op {
            Op::Read(r) => self
                .map
                .execute(r, &self.token)
                .expect("noderep-lanes read (instance poisoned?)"),
            Op::Write(w) => self
                .map
                .execute_mut(w, &self.token)
                .expect("noderep-lanes write (instance poisoned?)"),
        }
    }
}

// ------------------------------------------------------------ lane locks

/// One lane of [`LaneLocks`]: a spinlock and the shard it guards.
struct LockedShard<S> {
    busy: AtomicBool,
    shard: UnsafeCell<S>,
}

/// The per-lane-lock ceiling: the shards of noderep-lanes (`lane_part`),
/// each behind a bare test-and-test-and-set spinlock, with the same lane
/// map (key % lanes; the stack in lane 0; `len` and ranges over every
/// lane). No readers-writer lock, no slots, no log, no poisoning: what is
/// left is the cost of the operations and of the two threads meeting on a
/// lane, which no lane design with the same number of lanes avoids.
pub struct LaneLocks<S: Seq> {
    lanes: Vec<CachePadded<LockedShard<S>>>,
}

// SAFETY: a shard is reached only through `with`, which holds its lock, so
// it is used by one thread at a time (`S: Send` moves it between them).
unsafe impl<S: Seq> Sync for LaneLocks<S> {}

impl<S: Seq> LaneLocks<S> {
    /// `proto` split over `lanes` shards, as noderep-lanes splits it.
    pub fn build(proto: &S, lanes: usize) -> Self {
        Self {
            lanes: (0..lanes)
                .map(|l| {
                    CachePadded::new(LockedShard {
                        busy: AtomicBool::new(false),
                        shard: UnsafeCell::new(proto.lane_part(lanes, l)),
                    })
                })
                .collect(),
        }
    }

    /// Runs `f` on lane `lane`'s shard under its lock.
    #[inline]
    fn with<R>(&self, lane: usize, f: impl FnOnce(&mut S) -> R) -> R {
        let l = &self.lanes[lane];
        // Acquire: pairs with the Release below; the previous holder's
        // changes to the shard are visible to us.
        while l
            .busy
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // Relaxed: only a hint to try the CAS again.
            while l.busy.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        }
        // SAFETY: we hold the lane's lock (see the `Sync` impl).
        let out = f(unsafe { &mut *l.shard.get() });
        // Release: our changes happen before the next holder's.
        l.busy.store(false, Ordering::Release);
        out
    }

    fn lane_of(&self, key: u64) -> usize {
        (key % self.lanes.len() as u64) as usize
    }
}

impl<S: Seq> Shared for LaneLocks<S> {
    #[inline]
    fn read(&self, op: ReadOp) -> u64 {
        match op {
            ReadOp::Get(k) => self.with(self.lane_of(k), |s| s.read(op)),
            ReadOp::Peek => self.with(0, |s| s.read(op)),
            // Every lane, one after the other, each under its lock (the
            // ceiling's all-lane read is not atomic across lanes: it is an
            // upper bound, not a peer).
            ReadOp::Range(..) | ReadOp::Len => (0..self.lanes.len())
                .map(|l| self.with(l, |s| s.read(op)))
                .fold(0, u64::wrapping_add),
        }
    }
    #[inline]
    fn write(&self, op: WriteOp) -> u64 {
        let lane = match op {
            WriteOp::Put(k, _) => self.lane_of(k),
            WriteOp::Push(_) | WriteOp::Pop => 0,
        };
        self.with(lane, |s| s.write(op))
    }
}

// ------------------------------------------------------- node-replication

/// A sequential structure as node-replication 0.1.1's `Dispatch`.
pub struct OldD<S>(pub S);

impl<S: Seq> node_replication::Dispatch for OldD<S> {
    type ReadOperation = ReadOp;
    type WriteOperation = WriteOp;
    type Response = u64;

    #[inline]
    fn dispatch(&self, op: ReadOp) -> u64 {
        self.0.read(op)
    }
    #[inline]
    fn dispatch_mut(&mut self, op: WriteOp) -> u64 {
        self.0.write(op)
    }
}

/// node-replication 0.1.1's default log size (32 MiB, from its source).
pub const OLD_LOG_BYTES: usize = 32 * 1024 * 1024;

/// node-replication 0.1.1 with `replicas` replicas sharing one log.
pub struct OldNr<S: Seq> {
    /// Kept alive for the replicas.
    _log: Arc<node_replication::Log<'static, WriteOp>>,
    replicas: Vec<Arc<node_replication::Replica<'static, OldD<S>>>>,
}

impl<S: Seq> OldNr<S> {
    /// `replicas` replicas, each a copy of `proto` (its `with_data`).
    pub fn build(proto: &S, replicas: usize) -> Self {
        let log = Arc::new(node_replication::Log::<WriteOp>::new(OLD_LOG_BYTES));
        let replicas = (0..replicas.max(1))
            .map(|_| node_replication::Replica::with_data(&log, OldD(proto.clone())))
            .collect();
        Self {
            _log: log,
            replicas,
        }
    }
}

/// A registered node-replication thread.
pub struct OldWorker<'a, S: Seq> {
    replica: &'a node_replication::Replica<'static, OldD<S>>,
    token: node_replication::ReplicaToken,
}

impl<S: Seq> System for OldNr<S> {
    type Worker<'a> = OldWorker<'a, S>;
    fn worker(&self, at: Core) -> OldWorker<'_, S> {
        let replica = &self.replicas[at.node % self.replicas.len()];
        let token = replica
            .register()
            .expect("a free node-replication thread slot (256 per replica)");
        OldWorker { replica, token }
    }
}

impl<S: Seq> Worker for OldWorker<'_, S> {
    #[inline]
    fn exec(&mut self, op: Op) -> u64 {
        match op {
            Op::Read(r) => self.replica.execute(r, self.token),
            Op::Write(w) => self.replica.execute_mut(w, self.token),
        }
    }
}

// ------------------------------------------- structures shared by reference

/// A structure every thread uses through `&self`.
pub trait Shared: Sync {
    /// A read.
    fn read(&self, op: ReadOp) -> u64;
    /// A write.
    fn write(&self, op: WriteOp) -> u64;
}

/// Any [`Shared`] structure as a [`System`].
pub struct ByRef<T>(pub T);

/// A thread's handle on a [`ByRef`]: just the reference.
pub struct RefWorker<'a, T>(&'a T);

impl<T: Shared> System for ByRef<T> {
    type Worker<'a>
        = RefWorker<'a, T>
    where
        T: 'a;
    fn worker(&self, _at: Core) -> RefWorker<'_, T> {
        RefWorker(&self.0)
    }
}

impl<T: Shared> Worker for RefWorker<'_, T> {
    #[inline]
    fn exec(&mut self, op: Op) -> u64 {
        match op {
            Op::Read(r) => self.0.read(r),
            Op::Write(w) => self.0.write(w),
        }
    }
}

impl<S: Seq> Shared for Mutex<S> {
    #[inline]
    fn read(&self, op: ReadOp) -> u64 {
        self.lock().expect("no benchmark thread panics").read(op)
    }
    #[inline]
    fn write(&self, op: WriteOp) -> u64 {
        self.lock().expect("no benchmark thread panics").write(op)
    }
}

impl<S: Seq> Shared for std::sync::RwLock<S> {
    #[inline]
    fn read(&self, op: ReadOp) -> u64 {
        self.read().expect("no benchmark thread panics").read(op)
    }
    #[inline]
    fn write(&self, op: WriteOp) -> u64 {
        self.write().expect("no benchmark thread panics").write(op)
    }
}

impl<S: Seq> Shared for parking_lot::RwLock<S> {
    #[inline]
    fn read(&self, op: ReadOp) -> u64 {
        parking_lot::RwLock::read(self).read(op)
    }
    #[inline]
    fn write(&self, op: WriteOp) -> u64 {
        parking_lot::RwLock::write(self).write(op)
    }
}

impl<S: Seq> Shared for crossbeam_utils::sync::ShardedLock<S> {
    #[inline]
    fn read(&self, op: ReadOp) -> u64 {
        crossbeam_utils::sync::ShardedLock::read(self)
            .expect("no benchmark thread panics")
            .read(op)
    }
    #[inline]
    fn write(&self, op: WriteOp) -> u64 {
        crossbeam_utils::sync::ShardedLock::write(self)
            .expect("no benchmark thread panics")
            .write(op)
    }
}

/// dashmap with the std hasher (SipHash, as every other peer).
pub struct Dash(pub dashmap::DashMap<u64, u64>);

impl Shared for Dash {
    #[inline]
    fn read(&self, op: ReadOp) -> u64 {
        match op {
            ReadOp::Get(k) => self.0.get(&k).map_or(NONE, |v| *v),
            ReadOp::Len => self.0.len() as u64,
            _ => NONE,
        }
    }
    #[inline]
    fn write(&self, op: WriteOp) -> u64 {
        match op {
            WriteOp::Put(k, v) => self.0.insert(k, v).unwrap_or(NONE),
            _ => NONE,
        }
    }
}

/// papaya with the std hasher; one `pin()` per operation, as its docs show.
pub struct Papaya(pub papaya::HashMap<u64, u64>);

impl Shared for Papaya {
    #[inline]
    fn read(&self, op: ReadOp) -> u64 {
        match op {
            ReadOp::Get(k) => self.0.pin().get(&k).copied().unwrap_or(NONE),
            ReadOp::Len => self.0.len() as u64,
            _ => NONE,
        }
    }
    #[inline]
    fn write(&self, op: WriteOp) -> u64 {
        match op {
            WriteOp::Put(k, v) => self.0.pin().insert(k, v).copied().unwrap_or(NONE),
            _ => NONE,
        }
    }
}

/// scc's `HashMap` with the std hasher (its synchronous API).
pub struct Scc(pub scc::HashMap<u64, u64>);

impl Shared for Scc {
    #[inline]
    fn read(&self, op: ReadOp) -> u64 {
        match op {
            ReadOp::Get(k) => self.0.read_sync(&k, |_, v| *v).unwrap_or(NONE),
            ReadOp::Len => self.0.len() as u64,
            _ => NONE,
        }
    }
    #[inline]
    fn write(&self, op: WriteOp) -> u64 {
        match op {
            WriteOp::Put(k, v) => self.0.upsert_sync(k, v).unwrap_or(NONE),
            _ => NONE,
        }
    }
}

/// The three concurrent hashmaps, prefilled like the sequential one.
pub fn dash(shape: Shape) -> ByRef<Dash> {
    let m = dashmap::DashMap::with_capacity(shape.keys as usize);
    for k in 0..shape.prefill {
        m.insert(k, k);
    }
    ByRef(Dash(m))
}

/// See [`dash`].
pub fn papaya(shape: Shape) -> ByRef<Papaya> {
    let m = papaya::HashMap::with_capacity(shape.keys as usize);
    {
        let g = m.pin();
        for k in 0..shape.prefill {
            g.insert(k, k);
        }
    }
    ByRef(Papaya(m))
}

/// See [`dash`].
pub fn scc(shape: Shape) -> ByRef<Scc> {
    let m = scc::HashMap::with_capacity(shape.keys as usize);
    for k in 0..shape.prefill {
        let _ = m.upsert_sync(k, k);
    }
    ByRef(Scc(m))
}

// ------------------------------------------------------------ left-right

/// A sequential structure as a left-right copy.
#[derive(Clone)]
pub struct LrD<S>(pub S);

impl<S: Seq> left_right::Absorb<WriteOp> for LrD<S> {
    fn absorb_first(&mut self, op: &mut WriteOp, _other: &Self) {
        self.0.write(*op);
    }
    fn sync_with(&mut self, first: &Self) {
        *self = first.clone();
    }
}

/// left-right: one writer at a time (a Mutex around the write handle),
/// every write published before it returns; readers use their own handle.
pub struct LeftRight<S: Seq> {
    writer: Mutex<left_right::WriteHandle<LrD<S>, WriteOp>>,
    readers: left_right::ReadHandleFactory<LrD<S>>,
}

impl<S: Seq> LeftRight<S> {
    /// Both copies start as `proto`.
    pub fn build(proto: &S) -> Self {
        let (w, r) = left_right::new_from_empty::<LrD<S>, WriteOp>(LrD(proto.clone()));
        Self {
            writer: Mutex::new(w),
            readers: r.factory(),
        }
    }
}

/// A left-right thread: its own read handle, the shared writer.
pub struct LrWorker<'a, S: Seq> {
    sys: &'a LeftRight<S>,
    reader: left_right::ReadHandle<LrD<S>>,
}

impl<S: Seq> System for LeftRight<S> {
    type Worker<'a> = LrWorker<'a, S>;
    fn worker(&self, _at: Core) -> LrWorker<'_, S> {
        LrWorker {
            sys: self,
            reader: self.readers.handle(),
        }
    }
}

impl<S: Seq> Worker for LrWorker<'_, S> {
    #[inline]
    fn exec(&mut self, op: Op) -> u64 {
        match op {
            Op::Read(r) => self.reader.enter().map_or(NONE, |d| d.0.read(r)),
            Op::Write(w) => {
                let mut wh = self.sys.writer.lock().expect("no benchmark thread panics");
                // The response is what the write returns on the published
                // copy, which holds every earlier write (all are published).
                let resp = wh.enter().map_or(NONE, |d| d.0.respond(w));
                wh.append(w);
                wh.publish();
                resp
            }
        }
    }
}

// ------------------------------------------------------------------ bare

/// The sequential structure with no synchronisation; one worker at a time
/// (it takes the structure and gives it back when dropped).
pub struct Bare<S>(pub Mutex<Option<S>>);

/// The single bare worker.
pub struct BareWorker<'a, S: Seq> {
    home: &'a Mutex<Option<S>>,
    data: S,
}

impl<S: Seq> System for Bare<S> {
    type Worker<'a> = BareWorker<'a, S>;
    fn worker(&self, _at: Core) -> BareWorker<'_, S> {
        let data = self.0.lock().expect("no benchmark thread panics").take();
        BareWorker {
            home: &self.0,
            data: data.expect("the bare structure runs with one thread only"),
        }
    }
}

impl<S: Seq> Worker for BareWorker<'_, S> {
    #[inline]
    fn exec(&mut self, op: Op) -> u64 {
        match op {
            Op::Read(r) => self.data.read(r),
            Op::Write(w) => self.data.write(w),
        }
    }
}

impl<S: Seq> Drop for BareWorker<'_, S> {
    fn drop(&mut self) {
        if let Ok(mut home) = self.home.lock() {
            *home = Some(std::mem::take(&mut self.data));
        }
    }
}
