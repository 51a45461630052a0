//! The objects under test, each twice: as a sequential [`Model`] for the
//! checker and as a [`Dispatch`] structure for noderep to replicate.
//!
//! The `Dispatch` structures are deliberately not the models: the map
//! replica is a `std::collections::HashMap`, the model a `BTreeMap`; both
//! sides are written independently and meet only through the recorded
//! responses.

use super::common::lincheck::Model;
use noderep::{Dispatch, ExecError, NodeReplicated, ThreadToken};
use rand::Rng;
use std::collections::{BTreeMap, HashMap};

/// A structure that the noderep campaigns can drive: how to make a replica,
/// draw a random operation, run it through noderep, and view a replica as
/// the model.
pub trait Subject:
    Dispatch<WriteOperation: Sync, Response: Send> + Send + Sync + Sized + 'static
{
    /// The sequential specification.
    type Model: Model<Op: Send, Ret: Send> + Default;

    /// A fresh, empty replica.
    fn new_replica() -> Self;

    /// A random operation for thread `thread`'s `i`-th step. Values written
    /// are unique per (thread, step) so that a response names its writer.
    fn random_op(rng: &mut impl Rng, thread: usize, i: usize) -> Op<Self>;

    /// Runs `op` through noderep (a read or a write as appropriate).
    fn execute(
        nr: &NodeReplicated<Self>,
        token: &ThreadToken<Self>,
        op: &Op<Self>,
    ) -> Result<Ret<Self>, ExecError>;

    /// A read that observes the whole state (recorded once per replica after
    /// the threads finish).
    fn snapshot_op() -> Op<Self>;

    /// This replica's contents as a model state.
    fn as_model(&self) -> Self::Model;
}

/// The model operation type of a subject.
pub type Op<S> = <<S as Subject>::Model as Model>::Op;
/// The model response type of a subject.
pub type Ret<S> = <<S as Subject>::Model as Model>::Ret;

/// Random pauses inside operations, so that operations overlap even when
/// the machine is loaded and few of the test's threads are on a CPU at once.
///
/// Without them, a thread often runs its whole run of operations within one
/// time slice and the recorded history is sequential. A pause inside
/// `dispatch_mut` stalls a combiner in the middle of a batch, holding its
/// replica's combiner and write locks, while other threads read, queue
/// writes, append to the log and help; a pause inside `dispatch` holds a
/// read lock while the combiner waits. Pauses never change a response:
/// the structures stay deterministic.
pub mod chaos {
    use std::cell::Cell;

    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }

    /// With probability about 1/`one_in`, yields the CPU; otherwise spins a
    /// few times.
    pub fn pause(one_in: u64) {
        let r = STATE.with(|s| {
            let mut x = s.get();
            if x == 0 {
                // Seed from the thread's stack address: distinct per thread.
                x = (&x as *const u64 as u64) | 1;
            }
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.set(x);
            x
        });
        if r % one_in == 0 {
            std::thread::yield_now();
        } else {
            for _ in 0..(r >> 60) {
                std::hint::spin_loop();
            }
        }
    }
}

/// How often an operation inside a replica yields (1 in this many).
const YIELD_ONE_IN: u64 = 4;

/// A value unique to (thread, step), never zero.
fn unique_value(thread: usize, i: usize) -> u64 {
    (thread as u64 + 1) * 1_000 + i as u64
}

// ---------------------------------------------------------------- register

/// A read/write register holding a `u64`; used by the checker's own tests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Register(pub u64);

/// Register operations.
#[derive(Clone, Debug, PartialEq)]
pub enum RegOp {
    /// Store a value.
    Write(u64),
    /// Load the value.
    Read,
}

impl Model for Register {
    type Op = RegOp;
    /// `None` for a write, the value for a read.
    type Ret = Option<u64>;
    fn is_read_only(op: &RegOp) -> bool {
        matches!(op, RegOp::Read)
    }
    fn step(&mut self, op: &RegOp) -> Option<u64> {
        match op {
            RegOp::Write(v) => {
                self.0 = *v;
                None
            }
            RegOp::Read => Some(self.0),
        }
    }
}

// --------------------------------------------------------------------- map

/// The map's key space: small, so that operations collide.
pub const KEYS: u64 = 4;

/// Map operations.
#[derive(Clone, Debug, PartialEq)]
pub enum MapOp {
    /// Look a key up.
    Get(u64),
    /// Insert or replace; returns the previous value.
    Put(u64, u64),
    /// Remove; returns the removed value.
    Remove(u64),
    /// Read every entry.
    Snapshot,
}

/// Map responses.
#[derive(Clone, Debug, PartialEq)]
pub enum MapRet {
    /// A single value (get, and the previous value for put and remove).
    Value(Option<u64>),
    /// Every entry, in key order.
    Entries(Vec<(u64, u64)>),
}

/// The map's sequential specification.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MapModel(pub BTreeMap<u64, u64>);

impl Model for MapModel {
    type Op = MapOp;
    type Ret = MapRet;
    fn is_read_only(op: &MapOp) -> bool {
        matches!(op, MapOp::Get(_) | MapOp::Snapshot)
    }
    fn step(&mut self, op: &MapOp) -> MapRet {
        match *op {
            MapOp::Get(k) => MapRet::Value(self.0.get(&k).copied()),
            MapOp::Put(k, v) => MapRet::Value(self.0.insert(k, v)),
            MapOp::Remove(k) => MapRet::Value(self.0.remove(&k)),
            MapOp::Snapshot => MapRet::Entries(self.0.iter().map(|(&k, &v)| (k, v)).collect()),
        }
    }
}

/// The replicated map: a plain `HashMap`.
#[derive(Debug, Default, Clone)]
pub struct NrMap(HashMap<u64, u64>);

/// The same map, copyable ([`Dispatch::snapshot`]): its idle replicas are
/// parked and rebuilt, and replicas can be added at run time.
#[derive(Debug, Default, Clone)]
pub struct NrCopyMap(NrMap);

impl Dispatch for NrCopyMap {
    type ReadOperation<'a> = MapRead;
    type WriteOperation = MapWrite;
    type Response = MapRet;

    fn dispatch(&self, op: MapRead) -> MapRet {
        self.0.dispatch(op)
    }

    fn dispatch_mut(&mut self, op: MapWrite) -> MapRet {
        self.0.dispatch_mut(op)
    }

    fn snapshot(&self) -> Option<Self> {
        chaos::pause(YIELD_ONE_IN);
        Some(self.clone())
    }
}

impl Subject for NrCopyMap {
    type Model = MapModel;

    fn new_replica() -> Self {
        NrCopyMap::default()
    }

    fn random_op(rng: &mut impl Rng, thread: usize, i: usize) -> MapOp {
        NrMap::random_op(rng, thread, i)
    }

    fn execute(
        nr: &NodeReplicated<Self>,
        token: &ThreadToken<Self>,
        op: &MapOp,
    ) -> Result<MapRet, ExecError> {
        match *op {
            MapOp::Get(k) => nr.execute(MapRead::Get(k), token),
            MapOp::Put(k, v) => nr.execute_mut(MapWrite::Put(k, v), token),
            MapOp::Remove(k) => nr.execute_mut(MapWrite::Remove(k), token),
            MapOp::Snapshot => nr.execute(MapRead::Snapshot, token),
        }
    }

    fn snapshot_op() -> MapOp {
        MapOp::Snapshot
    }

    fn as_model(&self) -> MapModel {
        self.0.as_model()
    }
}

/// Reads of [`NrMap`].
#[derive(Debug, Clone, Copy)]
pub enum MapRead {
    /// Look a key up.
    Get(u64),
    /// Read every entry.
    Snapshot,
}

/// Writes of [`NrMap`].
#[derive(Debug, Clone)]
pub enum MapWrite {
    /// Insert or replace.
    Put(u64, u64),
    /// Remove.
    Remove(u64),
}

impl Dispatch for NrMap {
    type ReadOperation<'a> = MapRead;
    type WriteOperation = MapWrite;
    type Response = MapRet;

    fn dispatch(&self, op: MapRead) -> MapRet {
        chaos::pause(YIELD_ONE_IN);
        match op {
            MapRead::Get(k) => MapRet::Value(self.0.get(&k).copied()),
            MapRead::Snapshot => {
                let mut entries: Vec<(u64, u64)> = self.0.iter().map(|(&k, &v)| (k, v)).collect();
                entries.sort_unstable();
                MapRet::Entries(entries)
            }
        }
    }

    fn dispatch_mut(&mut self, op: MapWrite) -> MapRet {
        chaos::pause(YIELD_ONE_IN);
        match op {
            MapWrite::Put(k, v) => MapRet::Value(self.0.insert(k, v)),
            MapWrite::Remove(k) => MapRet::Value(self.0.remove(&k)),
        }
    }
}

impl Subject for NrMap {
    type Model = MapModel;

    fn new_replica() -> Self {
        NrMap::default()
    }

    fn random_op(rng: &mut impl Rng, thread: usize, i: usize) -> MapOp {
        let k = rng.random_range(0..KEYS);
        match rng.random_range(0..100) {
            0..40 => MapOp::Get(k),
            40..75 => MapOp::Put(k, unique_value(thread, i)),
            75..95 => MapOp::Remove(k),
            _ => MapOp::Snapshot,
        }
    }

    fn execute(
        nr: &NodeReplicated<Self>,
        token: &ThreadToken<Self>,
        op: &MapOp,
    ) -> Result<MapRet, ExecError> {
        match *op {
            MapOp::Get(k) => nr.execute(MapRead::Get(k), token),
            MapOp::Put(k, v) => nr.execute_mut(MapWrite::Put(k, v), token),
            MapOp::Remove(k) => nr.execute_mut(MapWrite::Remove(k), token),
            MapOp::Snapshot => nr.execute(MapRead::Snapshot, token),
        }
    }

    fn snapshot_op() -> MapOp {
        MapOp::Snapshot
    }

    fn as_model(&self) -> MapModel {
        MapModel(self.0.iter().map(|(&k, &v)| (k, v)).collect())
    }
}

// ------------------------------------------------------------------- stack

/// Stack operations.
#[derive(Clone, Debug, PartialEq)]
pub enum StackOp {
    /// Push a value.
    Push(u64),
    /// Pop the top value.
    Pop,
    /// Read the top value.
    Peek,
    /// Read the whole stack, bottom first.
    Snapshot,
}

/// Stack responses.
#[derive(Clone, Debug, PartialEq)]
pub enum StackRet {
    /// A push completed.
    Pushed,
    /// The popped or peeked value (`None`: the stack was empty).
    Value(Option<u64>),
    /// The whole stack, bottom first.
    Contents(Vec<u64>),
}

/// The stack's sequential specification.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct StackModel(pub Vec<u64>);

impl Model for StackModel {
    type Op = StackOp;
    type Ret = StackRet;
    fn is_read_only(op: &StackOp) -> bool {
        matches!(op, StackOp::Peek | StackOp::Snapshot)
    }
    fn step(&mut self, op: &StackOp) -> StackRet {
        match *op {
            StackOp::Push(v) => {
                self.0.push(v);
                StackRet::Pushed
            }
            StackOp::Pop => StackRet::Value(self.0.pop()),
            StackOp::Peek => StackRet::Value(self.0.last().copied()),
            StackOp::Snapshot => StackRet::Contents(self.0.clone()),
        }
    }
}

/// The replicated stack: a `VecDeque` used from its back (a different
/// container from the model's `Vec`, on purpose).
#[derive(Debug, Default)]
pub struct NrStack(std::collections::VecDeque<u64>);

/// Reads of [`NrStack`].
#[derive(Debug, Clone, Copy)]
pub enum StackRead {
    /// Read the top value.
    Peek,
    /// Read the whole stack.
    Snapshot,
}

/// Writes of [`NrStack`].
#[derive(Debug, Clone)]
pub enum StackWrite {
    /// Push a value.
    Push(u64),
    /// Pop the top value.
    Pop,
}

impl Dispatch for NrStack {
    type ReadOperation<'a> = StackRead;
    type WriteOperation = StackWrite;
    type Response = StackRet;

    fn dispatch(&self, op: StackRead) -> StackRet {
        chaos::pause(YIELD_ONE_IN);
        match op {
            StackRead::Peek => StackRet::Value(self.0.back().copied()),
            StackRead::Snapshot => StackRet::Contents(self.0.iter().copied().collect()),
        }
    }

    fn dispatch_mut(&mut self, op: StackWrite) -> StackRet {
        chaos::pause(YIELD_ONE_IN);
        match op {
            StackWrite::Push(v) => {
                self.0.push_back(v);
                StackRet::Pushed
            }
            StackWrite::Pop => StackRet::Value(self.0.pop_back()),
        }
    }
}

impl Subject for NrStack {
    type Model = StackModel;

    fn new_replica() -> Self {
        NrStack::default()
    }

    fn random_op(rng: &mut impl Rng, thread: usize, i: usize) -> StackOp {
        match rng.random_range(0..100) {
            0..40 => StackOp::Push(unique_value(thread, i)),
            40..80 => StackOp::Pop,
            80..92 => StackOp::Peek,
            _ => StackOp::Snapshot,
        }
    }

    fn execute(
        nr: &NodeReplicated<Self>,
        token: &ThreadToken<Self>,
        op: &StackOp,
    ) -> Result<StackRet, ExecError> {
        match *op {
            StackOp::Push(v) => nr.execute_mut(StackWrite::Push(v), token),
            StackOp::Pop => nr.execute_mut(StackWrite::Pop, token),
            StackOp::Peek => nr.execute(StackRead::Peek, token),
            StackOp::Snapshot => nr.execute(StackRead::Snapshot, token),
        }
    }

    fn snapshot_op() -> StackOp {
        StackOp::Snapshot
    }

    fn as_model(&self) -> StackModel {
        StackModel(self.0.iter().copied().collect())
    }
}
