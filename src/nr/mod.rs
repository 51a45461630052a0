//! Node replication: any sequential data structure becomes a linearizable
//! concurrent one, with one replica per NUMA node fed by one shared log.
//!
//! # How it works
//!
//! * Every replica holds a full copy of the structure `D` ([`Dispatch`]).
//! * A writer first tries its replica's combiner lock. If it gets it, it is
//!   the *flat combiner* and its own write goes straight into the batch;
//!   otherwise it stores the write in its thread slot and waits. The
//!   combiner collects every pending write of the replica, reserves that
//!   many log positions with one compare-and-swap, moves the writes into the
//!   log, applies the log to its replica up to the end of its batch, and
//!   hands each thread its response. A waiting thread keeps trying the
//!   combiner lock, so a write that arrives just after a batch was collected
//!   is picked up as soon as that combiner finishes — there is no timeout to
//!   wait out.
//! * With a single replica (one NUMA node) nobody else would replay the
//!   log, so there is none: the combiner applies the batch straight from
//!   the slots, and an uncontended write costs a try-lock, the write lock
//!   and the operation itself.
//! * A read runs on the caller's own replica under a distributed
//!   readers-writer lock, after the replica has applied the log up to the
//!   commit point observed when the read began (if it is behind, the reader
//!   catches it up itself or waits for the combiner that is doing so).
//! * When the log is full because some replica has fallen a whole log behind
//!   (its threads are idle or gone), the writer first catches up its own
//!   replica and then *helps*: it takes the lagging replica's combiner lock
//!   and applies the log to that replica on its behalf. node-replication
//!   0.1.1 waits for the lagging replica's own threads instead, and stalls
//!   forever if they never come back.
//! * A panicking write poisons the instance: the issuing thread sees the
//!   panic, every other call returns [`ExecError::Poisoned`]. (With several
//!   replicas, if a combiner of *another* replica runs the operation first,
//!   the issuing thread may get `Poisoned` instead of the panic.)
//!
//! # Linearizability
//!
//! Writes take effect in log order (the tail CAS); a write returns only after
//! its combiner advanced the commit point past it. A read waits for its
//! replica to reach the commit point it observed at its start, so it sees
//! every write that completed before it began; a combiner publishes the
//! commit point before releasing its write lock, so a read that sees a write
//! can never be followed by a read, on another replica, that misses it.
//!
//! # Trade-offs
//!
//! Memory grows with the number of replicas (one full copy each) and
//! the log; writes pay one log append and one application per replica;
//! reads are local and scale with cores. Structures that are mostly read and
//! whose operations are cheap and deterministic benefit most.
//!
//! # References
//!
//! Calciu, Sen, Balakrishnan, Aguilera: "Black-box Concurrent Data
//! Structures for NUMA Architectures", ASPLOS 2017; Hendler et al., "Flat
//! Combining and the Synchronization-Parallelism Tradeoff", SPAA 2010.
//!
//! The write and read paths step by step, and the poison protocol as a state
//! table: `docs/ARCHITECTURE.md` in the repository.

mod builder;
mod combine;
// Hidden: the limits are `NrBuilder`'s associated constants; the module's
// old public path is kept so that code written against it still compiles.
#[doc(hidden)]
pub mod config;
mod context;
mod dispatch;
mod error;
pub mod lanes;
pub(crate) mod log;
#[cfg(loom)]
#[doc(hidden)]
pub mod loom_api;
mod page_slice;
mod replica;
pub(crate) mod rwlock;

pub use builder::{NrBuilder, ReplicaPolicy};
pub use dispatch::Dispatch;
pub use error::{ExecError, NrError};

use crate::mutants;
use crate::sync::{Arc, AtomicBool, AtomicUsize, Backoff, CachePadded, Ordering};
use alloc::boxed::Box;
use alloc::vec::Vec;
use combine::Stop;
use context::Outcome;
use core::marker::PhantomData;
use core::ptr::NonNull;
use log::{Log, PARKED};
use replica::{PoisonedInstance, Replica, WaitingGuard};

/// Everything the instance's threads share.
pub(crate) struct Shared<D: Dispatch> {
    log: Log<D::WriteOperation>,
    replicas: Box<[Box<Replica<D>>]>,
    /// Set once, by the combiner that caught a panicking operation; read by
    /// every call.
    poisoned: AtomicBool,
    /// Number of live (not parked) replicas. Changed by parkers (holding the
    /// parked replica's lock) and wakers (holding a live source's lock);
    /// read by combiners, which run log-free while it is 1 (`combine.rs`).
    live: CachePadded<AtomicUsize>,
    /// Whether `D::snapshot` gives copies, so idle replicas may be parked
    /// and replicas added (probed once by the builder).
    can_snapshot: bool,
    /// For each replica, the OS CPUs it serves (its node or core); empty
    /// without a topology. Read by `register`.
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    homes: Vec<Vec<usize>>,
    /// Test-only counters that let tests watch helping happen.
    #[cfg(test)]
    pub(crate) stats: stats::Stats,
}

#[cfg(test)]
pub(crate) mod stats {
    use crate::sync::{AtomicUsize, Ordering};

    /// Counters of internal events, for tests.
    #[derive(Default)]
    pub(crate) struct Stats {
        /// Times a thread applied the log to another replica.
        pub helped: AtomicUsize,
        /// Batches appended by combiners.
        pub batches: AtomicUsize,
        /// Operations appended by combiners.
        pub combined_ops: AtomicUsize,
        /// Rounds run without the log (one live replica of several).
        pub direct_rounds: AtomicUsize,
        /// Replicas parked by a writer that found the log full.
        pub parked: AtomicUsize,
        /// Parked replicas rebuilt from a live one.
        pub woken: AtomicUsize,
        /// Appenders that lined up because the log was full.
        pub waited_for_room: AtomicUsize,
        /// Writes of another replica's waiting threads that a helper
        /// appended and answered on their behalf.
        pub helped_through: AtomicUsize,
    }

    impl Stats {
        pub(crate) fn bump(c: &AtomicUsize, n: usize) {
            // Relaxed: test statistics only.
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// A data structure `D` replicated once per NUMA node (or per core, or a
/// fixed number of times), linearizable under concurrent use.
///
/// Threads [`register`](Self::register) to get a [`ThreadToken`], then call
/// [`execute`](Self::execute) (reads) and [`execute_mut`](Self::execute_mut)
/// (writes) with it. Share the instance by reference (scoped threads) or in
/// an `Arc`.
///
/// # Examples
///
/// A counter replicated on two (simulated) nodes, written by one thread per
/// replica and read back from both:
///
/// ```
/// use noderep::{Dispatch, NodeReplicated, ReplicaPolicy};
/// use noderep::topology::Topology;
///
/// #[derive(Default)]
/// struct Counter(u64);
/// impl Dispatch for Counter {
///     type ReadOperation<'a> = ();
///     type WriteOperation = u64;
///     type Response = u64;
///     fn dispatch(&self, _: ()) -> u64 { self.0 }
///     fn dispatch_mut(&mut self, add: u64) -> u64 { self.0 += add; self.0 }
/// }
///
/// let counter = NodeReplicated::builder()
///     .topology(Topology::simulated(2, 1)?)
///     .replicas(ReplicaPolicy::PerNode)
///     .build(|_replica| Counter::default())?;
/// assert_eq!(counter.num_replicas(), 2);
/// std::thread::scope(|s| {
///     for replica in 0..2 {
///         let counter = &counter;
///         s.spawn(move || {
///             let token = counter.register_on(replica).unwrap();
///             for _ in 0..100 {
///                 counter.execute_mut(1, &token).unwrap();
///             }
///         });
///     }
/// });
/// for replica in 0..2 {
///     let token = counter.register_on(replica)?;
///     assert_eq!(token.replica(), replica);
///     assert_eq!(counter.execute((), &token)?, 200);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct NodeReplicated<D: Dispatch> {
    shared: Arc<Shared<D>>,
}

/// A registered thread's right to operate on one [`NodeReplicated`]
/// instance, bound to one replica and one thread slot.
///
/// It is neither `Send` nor `Sync` (it names a slot that only its thread may
/// use): sending one to another thread, or sharing a reference to one, does
/// not compile, and rustc's error names `TokenStaysOnItsThread`. Each thread
/// registers for a token of its own. Using a token with another instance is
/// an error ([`ExecError::WrongInstance`]), not corruption. Dropping it frees
/// the slot for another thread.
///
/// ```compile_fail,E0277
/// # use noderep::{Dispatch, NodeReplicated};
/// # #[derive(Default)]
/// # struct Counter(u64);
/// # impl Dispatch for Counter {
/// #     type ReadOperation<'a> = ();
/// #     type WriteOperation = u64;
/// #     type Response = u64;
/// #     fn dispatch(&self, _: ()) -> u64 { self.0 }
/// #     fn dispatch_mut(&mut self, n: u64) -> u64 { self.0 += n; self.0 }
/// # }
/// let counter = NodeReplicated::new(|_| Counter::default()).unwrap();
/// let token = counter.register().unwrap();
/// std::thread::scope(|s| {
///     // error[E0277]: `*const TokenStaysOnItsThread` cannot be shared
///     // between threads safely
///     s.spawn(|| counter.execute_mut(1, &token));
/// });
/// ```
///
/// ```compile_fail,E0277
/// # use noderep::{Dispatch, NodeReplicated};
/// # #[derive(Default)]
/// # struct Counter(u64);
/// # impl Dispatch for Counter {
/// #     type ReadOperation<'a> = ();
/// #     type WriteOperation = u64;
/// #     type Response = u64;
/// #     fn dispatch(&self, _: ()) -> u64 { self.0 }
/// #     fn dispatch_mut(&mut self, n: u64) -> u64 { self.0 += n; self.0 }
/// # }
/// let counter = NodeReplicated::new(|_| Counter::default()).unwrap();
/// let token = counter.register().unwrap();
/// // error[E0277]: `*const TokenStaysOnItsThread` cannot be sent between
/// // threads safely
/// std::thread::spawn(move || drop(token));
/// ```
///
/// # Examples
///
/// Each thread registering its own token compiles (and is the way):
///
/// ```
/// # use noderep::{Dispatch, NodeReplicated};
/// # #[derive(Default)]
/// # struct Counter(u64);
/// # impl Dispatch for Counter {
/// #     type ReadOperation<'a> = ();
/// #     type WriteOperation = u64;
/// #     type Response = u64;
/// #     fn dispatch(&self, _: ()) -> u64 { self.0 }
/// #     fn dispatch_mut(&mut self, n: u64) -> u64 { self.0 += n; self.0 }
/// # }
/// let counter = NodeReplicated::new(|_| Counter::default()).unwrap();
/// std::thread::scope(|s| {
///     s.spawn(|| {
///         let token = counter.register().unwrap();
///         counter.execute_mut(1, &token).unwrap()
///     });
/// });
/// let token = counter.register().unwrap();
/// assert_eq!(counter.execute((), &token).unwrap(), 1);
/// ```
pub struct ThreadToken<D: Dispatch> {
    shared: Arc<Shared<D>>,
    replica: usize,
    slot: usize,
    /// The replica itself, cached to save two dependent loads per read.
    /// Points into `shared.replicas[replica]`, a `Box` that never moves and
    /// lives as long as `shared`, which this token keeps alive.
    replica_ptr: Cached<Replica<D>>,
    /// This slot's reader flag in that replica's lock, cached likewise (it
    /// lives in the same replica's boxed slice).
    flag_ptr: Cached<AtomicBool>,
    /// What makes the token `!Send + !Sync`; being the token's only field
    /// that is neither (for a `D` that is both), it is the type rustc's
    /// error names when a token is sent or shared.
    _stays: PhantomData<*const TokenStaysOnItsThread>,
}

/// A [`ThreadToken`] is used only by the thread that registered it; this
/// type's name is what rustc reports when one is sent to, or shared with,
/// another thread.
struct TokenStaysOnItsThread;

/// A pointer a [`ThreadToken`] caches into its replica, used as a `&T`
/// whose referent the token keeps alive (through its `Arc<Shared>`).
struct Cached<T>(NonNull<T>);

impl<T> Cached<T> {
    fn new(r: &T) -> Self {
        Self(NonNull::from(r))
    }

    /// # Safety
    ///
    /// The referent must be alive and unmoved while `self` is, and accessed
    /// only through shared references.
    unsafe fn get(&self) -> &T {
        // SAFETY: the caller's contract.
        unsafe { self.0.as_ref() }
    }
}

// SAFETY: a `Cached<T>` stands for a `&T` (shared access only, referent kept
// alive by its owner), and a `&T` is `Send` and `Sync` exactly when `T` is
// `Sync`. It does not keep the token on its thread: `_stays` does.
unsafe impl<T: Sync> Send for Cached<T> {}
// SAFETY: as for `Send`.
unsafe impl<T: Sync> Sync for Cached<T> {}

impl<D: Dispatch> ThreadToken<D> {
    /// The replica this token is bound to.
    #[inline]
    fn replica_ref(&self) -> &Replica<D> {
        // SAFETY: see `replica_ptr`: the boxed replica is alive and unmoved
        // while `self.shared` is, and it is only ever accessed through `&`.
        unsafe { self.replica_ptr.get() }
    }

    /// Whether the token's instance is poisoned (as
    /// [`NodeReplicated::is_poisoned`], reached through the token).
    #[inline(always)]
    pub(crate) fn instance_poisoned(&self) -> bool {
        // Acquire: pairs with the Release that poisons.
        self.shared.poisoned.load(Ordering::Acquire)
    }

    /// This slot's reader flag.
    #[inline]
    fn reader_flag(&self) -> &AtomicBool {
        // SAFETY: as for `replica_ref`: the flag lives in the replica's
        // boxed reader slice, alive and unmoved while `self.shared` is.
        unsafe { self.flag_ptr.get() }
    }

    /// The replica this thread reads from and combines for.
    pub fn replica(&self) -> usize {
        self.replica
    }

    /// The thread slot within the replica.
    pub fn slot(&self) -> usize {
        self.slot
    }
}

impl<D: Dispatch> core::fmt::Debug for ThreadToken<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ThreadToken")
            .field("replica", &self.replica)
            .field("slot", &self.slot)
            .finish()
    }
}

impl<D: Dispatch> Drop for ThreadToken<D> {
    fn drop(&mut self) {
        let replica = &self.shared.replicas[self.replica];
        // Relaxed: a placement hint only.
        replica.registered.fetch_sub(1, Ordering::Relaxed);
        replica.contexts[self.slot].release();
    }
}

impl<D: Dispatch> core::fmt::Debug for NodeReplicated<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Relaxed: a snapshot for display; nothing is read through it.
        f.debug_struct("NodeReplicated")
            .field("replicas", &self.shared.replicas.len())
            .field(
                "log_capacity",
                &if self.shared.log.is_single() {
                    0
                } else {
                    self.shared.log.capacity()
                },
            )
            .field("poisoned", &self.shared.poisoned.load(Ordering::Relaxed))
            .finish()
    }
}

impl<D> NodeReplicated<D>
where
    D: Dispatch + Send + Sync,
    D::WriteOperation: Send + Sync,
    D::Response: Send,
{
    /// One replica per NUMA node of the detected topology (with `std`), each
    /// built by `make(replica_index)`. See [`NrBuilder`] for the options.
    ///
    /// # Errors
    ///
    /// As [`NrBuilder::build`] (for example, a topology that cannot be
    /// detected).
    ///
    /// # Panics
    ///
    /// If `make` panics, the panic is resumed in the caller and nothing is
    /// built.
    pub fn new(make: impl Fn(usize) -> D + Sync) -> Result<Self, NrError> {
        NrBuilder::new().build(make)
    }

    /// A builder for the options (topology, replicas, log capacity, slots).
    pub fn builder() -> NrBuilder<D> {
        NrBuilder::new()
    }

    pub(crate) fn from_parts(
        log: Log<D::WriteOperation>,
        replicas: Vec<Box<Replica<D>>>,
        homes: Vec<Vec<usize>>,
        live: usize,
        can_snapshot: bool,
    ) -> Self {
        for rep in &replicas[live..] {
            // Relaxed: not shared yet.
            rep.removed.store(true, Ordering::Relaxed);
        }
        Self {
            shared: Arc::new(Shared {
                log,
                replicas: replicas.into_boxed_slice(),
                poisoned: AtomicBool::new(false),
                live: CachePadded::new(AtomicUsize::new(live)),
                can_snapshot,
                homes,
                #[cfg(test)]
                stats: stats::Stats::default(),
            }),
        }
    }

    /// Number of replica places: replicas in service plus removed ones that
    /// [`add_replica`](Self::add_replica) may bring back.
    pub fn num_replicas(&self) -> usize {
        self.shared.replicas.len()
    }

    /// Number of replicas that are live right now (not parked, not removed).
    /// Idle replicas are parked by writers elsewhere and come back on their
    /// threads' next operation, so this changes under load.
    pub fn live_replicas(&self) -> usize {
        // Relaxed: a statistic.
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Whether replica `r` is in service (not removed).
    pub fn is_replica_active(&self, r: usize) -> bool {
        self.shared
            .replicas
            .get(r)
            // Acquire: pairs with the Release in `remove_replica`.
            .is_some_and(|rep| !rep.removed.load(Ordering::Acquire))
    }

    /// Takes replica `r` out of service at run time. Its memory stays
    /// reserved; its threads' next operation fails with
    /// [`ExecError::ReplicaRemoved`] and they should
    /// [`register`](Self::register) again, which places them on a replica in
    /// service. Registration on `r` fails until it is added back.
    ///
    /// # Errors
    ///
    /// [`NrError::NoSuchReplica`] for an index out of range,
    /// [`NrError::ReplicaRemoved`] if `r` is already out of service,
    /// [`NrError::LastReplica`] if every other replica is removed too (or
    /// the instance has a single replica), [`NrError::Poisoned`].
    pub fn remove_replica(&self, r: usize) -> Result<(), NrError> {
        let shared = &*self.shared;
        let replicas = shared.replicas.len();
        let rep = shared.replicas.get(r).ok_or(NrError::NoSuchReplica {
            replica: r,
            replicas,
        })?;
        if shared.log.is_single() {
            return Err(NrError::LastReplica { replica: r });
        }
        if self.is_poisoned() {
            return Err(NrError::Poisoned);
        }
        let mut backoff = Backoff::new();
        loop {
            let guard = lock_combiner(shared, rep).ok_or(NrError::Poisoned)?;
            // Relaxed: written only under this lock, which we hold.
            if rep.removed.load(Ordering::Relaxed) {
                return Err(NrError::ReplicaRemoved { replica: r });
            }
            // Acquire: pairs with the Release stores of `removed` in
            // `remove_replica` and `add_replica`.
            let Some(q) = (0..replicas)
                .find(|&q| q != r && !shared.replicas[q].removed.load(Ordering::Acquire))
            else {
                return Err(NrError::LastReplica { replica: r });
            };
            if shared.log.ltail(r) == PARKED || shared.park(r, &guard) {
                // Release: pairs with the Acquire loads in `wake` and
                // `is_replica_active`, after the replica is parked (under
                // its lock, which we hold).
                rep.removed.store(true, Ordering::Release);
                return Ok(());
            }
            // `r` is the last live replica: bring `q` back first. `wake`
            // copies from a live replica under that replica's lock, and the
            // only live one is `r`, so ours is released before: holding it
            // here would leave `wake` spinning on it for ever. The checks
            // above are made again under the lock on the next round.
            drop(guard);
            let other = &shared.replicas[q];
            let Some(g) = other.try_combine() else {
                if self.is_poisoned() {
                    return Err(NrError::Poisoned);
                }
                backoff.snooze();
                continue;
            };
            if shared.log.ltail(q) == PARKED {
                match shared.wake(q, &g) {
                    Ok(()) | Err(combine::Stop::Removed) => {}
                    Err(combine::Stop::Poisoned) => return Err(NrError::Poisoned),
                }
            }
        }
    }

    /// Brings a removed replica place back into service at run time, rebuilt
    /// from a live replica (with [`Dispatch::snapshot`]); returns its index.
    /// Places that no thread is registered with are preferred. The copy is
    /// made on the calling thread, so its memory is first touched on the
    /// caller's node: call it from a thread running on the new replica's
    /// node (a parked replica woken by its own thread is rebuilt there).
    /// The builder's [`max_replicas`](NrBuilder::max_replicas) reserves
    /// places for replicas added later.
    ///
    /// # Errors
    ///
    /// [`NrError::NoSpareReplica`] if every place is in service,
    /// [`NrError::SnapshotUnsupported`] if `D::snapshot` returns `None`,
    /// [`NrError::Poisoned`].
    pub fn add_replica(&self) -> Result<usize, NrError> {
        let shared = &*self.shared;
        if !shared.can_snapshot {
            return Err(NrError::SnapshotUnsupported);
        }
        // Places without registered threads first: threads still holding a
        // token of a removed replica keep getting `ReplicaRemoved` until
        // they register again, rather than silently resuming on it.
        let mut order: Vec<usize> = (0..shared.replicas.len()).collect();
        // Relaxed: a placement hint.
        order.sort_by_key(|&r| shared.replicas[r].registered.load(Ordering::Relaxed) > 0);
        for r in order {
            let rep = &shared.replicas[r];
            // Acquire: pairs with the Release in `remove_replica`.
            if !rep.removed.load(Ordering::Acquire) {
                continue;
            }
            let guard = lock_combiner(shared, rep).ok_or(NrError::Poisoned)?;
            // Relaxed: written only under this lock.
            if !rep.removed.load(Ordering::Relaxed) {
                continue;
            }
            rep.removed.store(false, Ordering::Relaxed);
            if let Err(stop) = shared.wake(r, &guard) {
                rep.removed.store(true, Ordering::Release);
                return Err(match stop {
                    Stop::Poisoned => NrError::Poisoned,
                    Stop::Removed => NrError::ReplicaRemoved { replica: r },
                });
            }
            return Ok(r);
        }
        Err(NrError::NoSpareReplica {
            replicas: shared.replicas.len(),
        })
    }

    /// Capacity of the shared log, in operations; 0 with a single replica,
    /// which applies writes without a log.
    pub fn log_capacity(&self) -> usize {
        if self.shared.log.is_single() {
            0
        } else {
            self.shared.log.capacity()
        }
    }

    /// Whether reads run without a memory fence (the
    /// [`read_mostly`](NrBuilder::read_mostly) setting, where the platform
    /// supports it).
    pub fn reads_are_fence_free(&self) -> bool {
        self.shared.replicas[0].rwlock.is_asymmetric()
    }

    /// Whether a write operation has panicked and poisoned the instance.
    pub fn is_poisoned(&self) -> bool {
        // Acquire: pairs with the Release that poisons.
        self.shared.poisoned.load(Ordering::Acquire)
    }

    /// Registers the calling thread with the replica of the node it runs on
    /// (the least loaded one if several serve its CPU; the least loaded of
    /// all if none does, or without `std`).
    ///
    /// # Errors
    ///
    /// [`NrError::ReplicaFull`] when every replica in service has all its
    /// thread slots taken (drop unused tokens, or build with more
    /// [`max_threads_per_replica`](NrBuilder::max_threads_per_replica));
    /// [`NrError::Poisoned`] once an operation has panicked;
    /// [`NrError::ReplicaRemoved`] if the chosen replica was removed
    /// meanwhile.
    pub fn register(&self) -> Result<ThreadToken<D>, NrError> {
        let replicas = &self.shared.replicas;
        #[cfg(feature = "std")]
        let cpu = crate::topology::current_cpu().map(|l| l.cpu);
        #[cfg(not(feature = "std"))]
        let cpu: Option<usize> = None;
        let serves = |r: usize| {
            cpu.is_some_and(|c| self.shared.homes.get(r).is_some_and(|h| h.contains(&c)))
        };
        // Relaxed: a placement hint; a stale count only picks a busier
        // replica.
        let load = |r: &usize| replicas[*r].registered.load(Ordering::Relaxed);
        // Local replicas first, least loaded first; then every other one, so
        // that a full local replica does not fail the registration while
        // another has room ([`ThreadToken::replica`] says where it landed).
        let mut order: Vec<usize> = (0..replicas.len())
            .filter(|&r| self.is_replica_active(r))
            .collect();
        order.sort_by_key(|r| (!serves(*r), load(r)));
        let mut last = Err(NrError::NoSpareReplica {
            replicas: replicas.len(),
        });
        for r in order {
            match self.register_on(r) {
                Ok(token) => return Ok(token),
                Err(e @ NrError::ReplicaFull { .. }) => last = Err(e),
                Err(e) => return Err(e),
            }
        }
        last
    }

    /// Registers the calling thread with replica `replica`.
    ///
    /// # Errors
    ///
    /// [`NrError::NoSuchReplica`] if `replica` is not below
    /// [`num_replicas`](Self::num_replicas); [`NrError::ReplicaRemoved`] if
    /// it is not in service; [`NrError::ReplicaFull`] if all its thread
    /// slots are taken; [`NrError::Poisoned`] once an operation has
    /// panicked.
    pub fn register_on(&self, replica: usize) -> Result<ThreadToken<D>, NrError> {
        if self.is_poisoned() {
            return Err(NrError::Poisoned);
        }
        let replicas = self.shared.replicas.len();
        let rep = self
            .shared
            .replicas
            .get(replica)
            .ok_or(NrError::NoSuchReplica { replica, replicas })?;
        if !self.is_replica_active(replica) {
            return Err(NrError::ReplicaRemoved { replica });
        }
        for (slot, ctx) in rep.contexts.iter().enumerate() {
            if ctx.claim() {
                // Mutant `register_no_note_slot` (loom model 6): the slot
                // stays invisible to the combiner and the writer side.
                if !mutants::skip!("register_no_note_slot") {
                    rep.rwlock.note_slot(slot);
                }
                // Relaxed: a placement hint only.
                rep.registered.fetch_add(1, Ordering::Relaxed);
                return Ok(ThreadToken {
                    shared: Arc::clone(&self.shared),
                    replica,
                    slot,
                    replica_ptr: Cached::new(&**rep),
                    flag_ptr: Cached::new(rep.rwlock.reader_flag(slot)),
                    _stays: PhantomData,
                });
            }
        }
        Err(NrError::ReplicaFull {
            replica,
            slots: rep.contexts.len(),
        })
    }

    #[inline(always)]
    fn check(&self, token: &ThreadToken<D>) -> Result<(), ExecError> {
        if !Arc::ptr_eq(&self.shared, &token.shared) {
            return Err(ExecError::WrongInstance);
        }
        if self.is_poisoned() {
            return Err(ExecError::Poisoned);
        }
        Ok(())
    }

    /// Runs a read-only operation on the caller's replica, linearizably.
    ///
    /// # Errors
    ///
    /// [`ExecError::Poisoned`] after a write panicked,
    /// [`ExecError::WrongInstance`] for a token of another instance,
    /// [`ExecError::ReplicaRemoved`] if the token's replica was removed.
    /// The `Result` wraps your `D::Response`: write `nr.execute(op, &t)?`
    /// to get the response (code ported from node-replication 0.1.1, where
    /// `.unwrap()` unwrapped the response itself, needs `?.unwrap()`).
    #[inline(always)]
    pub fn execute<'r>(
        &self,
        op: D::ReadOperation<'r>,
        token: &ThreadToken<D>,
    ) -> Result<D::Response, ExecError>
    where
        D: 'r,
    {
        self.check(token)?;
        Self::read_checked(op, token)
    }

    /// The body of [`execute`](Self::execute) once the token is known to be
    /// this instance's and the instance not poisoned: it reaches the instance
    /// through the token alone. A lane of a `LaneReplicated` calls it
    /// directly after checking the token and the poison flags itself, which
    /// saves a read the load of the lane's instance.
    #[inline(always)]
    pub(crate) fn read_checked<'r>(
        op: D::ReadOperation<'r>,
        token: &ThreadToken<D>,
    ) -> Result<D::Response, ExecError>
    where
        D: 'r,
    {
        let shared = &*token.shared;
        let replica = token.replica_ref();
        // With one replica every completed write is already applied to it:
        // no commit point to wait for (see `Log::ctail`).
        if !shared.log.is_single() {
            let commit = shared.log.ctail();
            // Mutant `read_skips_sync` (loom model 2): read whatever the
            // replica holds without catching it up to the commit point.
            // (A parked replica counts as behind: `Log::is_behind`.)
            if !mutants::skip!("read_skips_sync") && shared.log.is_behind(token.replica, commit) {
                shared.sync_replica(token.replica, commit)?;
            }
        }
        Ok(replica.read(token.reader_flag(), op))
    }

    /// Runs a write operation: appends it to the shared log (combined with
    /// the replica's other pending writes) and returns its response once it
    /// has been applied to the caller's replica.
    ///
    /// With several replicas, a panicking operation that a combiner of
    /// another replica runs first makes this call return
    /// [`ExecError::Poisoned`] instead of resuming the panic.
    ///
    /// If the operation panics, the panic resumes in the caller and the
    /// instance is poisoned.
    ///
    /// A `dispatch_mut` (or `dispatch`) must not call back into its own
    /// instance: the combiner lock it holds is not reentrant, and such a
    /// call waits for itself forever.
    ///
    /// # Errors
    ///
    /// As for [`execute`](Self::execute); with
    /// [`ExecError::ReplicaRemoved`] the operation was not applied.
    #[inline]
    pub fn execute_mut(
        &self,
        op: D::WriteOperation,
        token: &ThreadToken<D>,
    ) -> Result<D::Response, ExecError> {
        self.check(token)?;
        let shared = &*self.shared;
        let replica = token.replica_ref();
        // Fast path: the combiner lock is free, so we combine right away and
        // our own operation goes straight into the batch, never through our
        // slot (no slot handshake; with one replica, no log either).
        // Mutant `no_combine_retry` (loom model 4) skips it, so that the
        // mutant's single try is the one in the loop below.
        // On a lane the lock is rarely busy for long, and the writer spins
        // for it a moment rather than use its slot (`try_combine_spinning`).
        let fast = if mutants::skip!("no_combine_retry") {
            None
        } else {
            match replica.try_combine() {
                None if replica.combiner_spin > 0 => replica.try_combine_spinning(),
                taken => taken,
            }
        };
        if let Some(guard) = fast {
            if shared.log.is_single() || shared.runs_alone(token.replica) {
                // A panic of our operation unwinds from here (the instance
                // is poisoned on the way, see `Replica::combine_direct`).
                return match shared.combine_alone(token.replica, &guard, Some(op)) {
                    Ok(Some(r)) => Ok(r),
                    Ok(None) | Err(PoisonedInstance) => Err(ExecError::Poisoned),
                };
            }
            let round = shared.combine(token.replica, &guard, 0, Some((token.slot, op)), true);
            drop(guard);
            return match round {
                Ok(Some(r)) => Ok(r),
                // Our operation panicked (its payload is in our slot), or
                // the round stopped; the poll reports what happened to ours.
                Ok(None) | Err(_) => match replica.contexts[token.slot].poll() {
                    Some(out) => Self::deliver(out, shared),
                    None => Err(round
                        .err()
                        .map_or(ExecError::Poisoned, |s| s.into_exec_error(token.replica))),
                },
            };
        }
        let ctx = &replica.contexts[token.slot];
        ctx.submit(op);
        let mut backoff = Backoff::new();
        let mut waiting = None;
        // Mutant `no_combine_retry` (loom model 4): try the combiner lock
        // only once, then wait for some other combiner forever.
        let mut tried = false;
        loop {
            // Load the poison flag *before* polling: a combiner publishes
            // every outcome of its batch before it poisons (replica.rs), so
            // once we see the flag, our outcome — if our operation ran — is
            // visible to the poll below, and the thread whose operation
            // panicked gets its panic when its own replica ran it.
            let poisoned = self.is_poisoned();
            if let Some(out) = ctx.poll() {
                return Self::deliver(out, shared);
            }
            if poisoned {
                return Err(ExecError::Poisoned);
            }
            if mutants::skip!("no_combine_retry") && core::mem::replace(&mut tried, true) {
                backoff.snooze();
                continue;
            }
            if let Some(guard) = replica.try_combine() {
                drop(waiting.take());
                // Poisoned is reported by the next iteration, after
                // collecting our own outcome if there is one. A removed
                // replica serves nobody: take our operation back.
                if let Err(Stop::Removed) = shared.combine(token.replica, &guard, 0, None, true) {
                    // SAFETY: our own slot, and we hold its replica's lock.
                    if unsafe { ctx.withdraw() } {
                        return Err(ExecError::ReplicaRemoved {
                            replica: token.replica,
                        });
                    }
                }
                backoff.reset();
            } else {
                waiting.get_or_insert_with(|| WaitingGuard::new(&replica.waiting));
                // Someone is combining. Watch the combiner lock, not our own
                // slot, until it is released: the combiner publishes our
                // outcome (if it took our operation) before it releases, and
                // not polling the slot meanwhile keeps its cache line with
                // the combiner while it takes the operation and writes the
                // response (fewer line transfers per write).
                replica.wait_while_combining(&mut backoff);
            }
        }
    }

    /// Hands a write's outcome to its caller: the response, or the panic of
    /// the operation, resumed.
    #[inline]
    fn deliver(out: Outcome<D::Response>, shared: &Shared<D>) -> Result<D::Response, ExecError> {
        // Without `std` no panic is caught, so the shared state is not needed.
        #[cfg(not(feature = "std"))]
        let _ = shared;
        match out {
            Outcome::Response(r) => Ok(r),
            #[cfg(feature = "std")]
            Outcome::Panicked(payload) => {
                // The combiner raises the flag only after publishing the
                // outcomes; raise it here too so that the instance is
                // poisoned by the time the panic reaches our caller.
                // Release: pairs with the Acquire loads of the flag.
                shared.poisoned.store(true, Ordering::Release);
                std::panic::resume_unwind(payload)
            }
        }
    }

    /// Brings every replica in service up to date with the log (rebuilding
    /// parked ones) and runs `f` on each, in replica order, while holding it
    /// exclusively (for checks at quiescence, such as "all replicas are
    /// equal"). Removed replicas are skipped. Like `dispatch`, `f` must not
    /// call back into this instance (`execute`, `execute_mut`,
    /// `remove_replica`, ...): it runs under the replica's locks, so such a
    /// call waits for itself for ever.
    ///
    /// # Errors
    ///
    /// [`ExecError::WrongInstance`] if `token` belongs to another instance;
    /// [`ExecError::Poisoned`] once an operation has panicked.
    pub fn sync_and_inspect<R>(
        &self,
        token: &ThreadToken<D>,
        mut f: impl FnMut(usize, &D) -> R,
    ) -> Result<Vec<R>, ExecError> {
        self.check(token)?;
        let shared = &*self.shared;
        let tail = shared.log.tail();
        let mut out = Vec::with_capacity(shared.replicas.len());
        for (r, rep) in shared.replicas.iter().enumerate() {
            if !self.is_replica_active(r) {
                continue;
            }
            let guard = lock_combiner(shared, rep).ok_or(ExecError::Poisoned)?;
            match shared.combine(r, &guard, tail, None, false) {
                Ok(_) => {}
                Err(Stop::Removed) => continue,
                Err(Stop::Poisoned) => return Err(ExecError::Poisoned),
            }
            out.push(rep.inspect_exclusive(&guard, |d| f(r, d)));
        }
        Ok(out)
    }

    /// Address of replica `r`'s data, for NUMA placement checks (feature
    /// `fault-injection`: the project's placement tests).
    #[cfg(feature = "fault-injection")]
    pub fn replica_data_addr(&self, r: usize) -> Option<*const u8> {
        self.shared.replicas.get(r).map(|rep| rep.data_addr())
    }

    /// Address of replica `r`'s thread slots (one contiguous array), for
    /// NUMA placement checks (feature `fault-injection`, as above).
    #[cfg(feature = "fault-injection")]
    pub fn replica_slots_addr(&self, r: usize) -> Option<*const u8> {
        self.shared
            .replicas
            .get(r)
            .map(|rep| rep.contexts.as_ptr().cast::<u8>())
    }

    #[cfg(test)]
    pub(crate) fn stats(&self) -> &stats::Stats {
        &self.shared.stats
    }
}

/// Takes `rep`'s combiner lock, waiting as long as it takes; `None` if the
/// instance is poisoned meanwhile.
fn lock_combiner<'a, D: Dispatch>(
    shared: &Shared<D>,
    rep: &'a Replica<D>,
) -> Option<replica::CombinerGuard<'a>> {
    let mut backoff = Backoff::new();
    loop {
        if let Some(g) = rep.try_combine() {
            return Some(g);
        }
        // Acquire: pairs with the Release that poisons.
        if shared.poisoned.load(Ordering::Acquire) {
            return None;
        }
        rep.wait_while_combining(&mut backoff);
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_multi;
