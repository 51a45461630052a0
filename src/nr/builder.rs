//! Configuration of a [`NodeReplicated`] instance and where its replicas live.
//!
//! # How it works
//!
//! [`NrBuilder::build`] validates the settings (every mistake is an
//! [`NrError`] that says what to change), decides each replica's *home* — the
//! CPUs of its NUMA node, or its core — from the topology, and builds each
//! replica on a thread pinned to its home, so that the replica's memory is
//! first touched, and therefore placed by the kernel, on its own node. The
//! allocator may hand that thread pages another thread already touched
//! elsewhere (glibc gives a new thread the arena of an exited one), so the
//! builder first returns the allocator's free pages to the kernel, and
//! afterwards moves the replica's own pages (the replica with `D` inline,
//! its thread slots and reader flags) to the node where the thread's first
//! touch goes (move_pages). Those three are page-aligned and padded to whole
//! pages, so no other replica's memory shares a page with them and the
//! moves cannot undo each other. `scripts/numa-vm.sh` checks the result on
//! emulated nodes.
//!
//! # Trade-offs
//!
//! Placement is best effort: if pinning fails (a restricted cpuset), the
//! replica is still built, on whatever CPU the thread gets. Memory that `D`
//! allocates itself (a map's buckets) is placed by first touch only: the
//! builder cannot see it, and first touch is not enough. glibc's trim leaves
//! the top of a thread's arena mapped, so a buffer freed there keeps the
//! node of the thread that touched it, and the next build thread to get
//! that arena reuses it: in the emulated 2-node guest a 1 MiB buffer landed
//! on the wrong node in about half the builds. A `D` with a large heap
//! should move it from its `make` closure, which runs on the replica's
//! node:
//!
//! ```
//! # use noderep::{Dispatch, NrBuilder};
//! # struct Table(Vec<u64>);
//! # impl Dispatch for Table {
//! #     type ReadOperation<'a> = usize;
//! #     type WriteOperation = (usize, u64);
//! #     type Response = u64;
//! #     fn dispatch(&self, i: usize) -> u64 { self.0[i] }
//! #     fn dispatch_mut(&mut self, (i, v): (usize, u64)) -> u64 { std::mem::replace(&mut self.0[i], v) }
//! # }
//! use noderep::topology::{local_memory_node, move_to_node};
//! let nr = NrBuilder::new().build(|_replica| {
//!     let table = Table(vec![0; 1 << 20]);
//!     if let Some(node) = local_memory_node() {
//!         move_to_node(&[(table.0.as_ptr() as usize, table.0.len() * 8)], node);
//!     }
//!     table
//! })?;
//! let token = nr.register()?;
//! assert_eq!(nr.execute(12345, &token)?, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Trimming the allocator costs a walk of its arenas per build, and the
//! page alignment up to three partly empty pages per replica.

use super::config::{
    DEFAULT_LOG_CAPACITY, DEFAULT_THREADS_PER_REPLICA, MAX_LOG_CAPACITY, MAX_REPLICAS,
    MAX_THREADS_PER_REPLICA,
};
use super::log::Log;
use super::replica::Replica;
use super::{Dispatch, NodeReplicated, NrError};
use alloc::boxed::Box;
use alloc::vec::Vec;

/// How many replicas to make.
///
/// # Examples
///
/// ```
/// use noderep::{NodeReplicated, ReplicaPolicy};
/// use noderep::topology::Topology;
///
/// # #[derive(Default)]
/// # struct Counter(u64);
/// # impl noderep::Dispatch for Counter {
/// #     type ReadOperation<'a> = ();
/// #     type WriteOperation = u64;
/// #     type Response = u64;
/// #     fn dispatch(&self, _: ()) -> u64 { self.0 }
/// #     fn dispatch_mut(&mut self, n: u64) -> u64 { self.0 += n; self.0 }
/// # }
/// let two_nodes_of_two = Topology::simulated(2, 2)?;
/// let per_node = NodeReplicated::builder()
///     .topology(two_nodes_of_two.clone())
///     .replicas(ReplicaPolicy::PerNode)
///     .build(|_| Counter::default())?;
/// assert_eq!(per_node.num_replicas(), 2);
/// let per_core = NodeReplicated::builder()
///     .topology(two_nodes_of_two.clone())
///     .replicas(ReplicaPolicy::PerCore)
///     .build(|_| Counter::default())?;
/// assert_eq!(per_core.num_replicas(), 4);
/// let fixed = NodeReplicated::builder()
///     .topology(two_nodes_of_two)
///     .replicas(ReplicaPolicy::Fixed(3))
///     .build(|_| Counter::default())?;
/// assert_eq!(fixed.num_replicas(), 3);
/// assert_eq!(ReplicaPolicy::default(), ReplicaPolicy::PerNode);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplicaPolicy {
    /// One replica per NUMA node (the default).
    #[default]
    PerNode,
    /// One replica per core.
    PerCore,
    /// A fixed number, spread round-robin over the nodes.
    Fixed(usize),
}

/// Options for a [`NodeReplicated`] instance of `D`.
///
/// `D` is the replicated structure; it is inferred from the closure given to
/// [`build`](Self::build), so both `NrBuilder::new()` and
/// `NodeReplicated::builder()` work without annotations.
///
/// # Examples
///
/// ```
/// use noderep::{Dispatch, NodeReplicated, ReplicaPolicy};
/// use noderep::topology::Topology;
///
/// #[derive(Default, Clone)]
/// struct Counter(u64);
/// impl Dispatch for Counter {
///     type ReadOperation<'a> = ();
///     type WriteOperation = u64;
///     type Response = u64;
///     fn dispatch(&self, _: ()) -> u64 { self.0 }
///     fn dispatch_mut(&mut self, add: u64) -> u64 { self.0 += add; self.0 }
///     fn snapshot(&self) -> Option<Self> { Some(self.clone()) }
/// }
///
/// let nr = NodeReplicated::builder()
///     .topology(Topology::simulated(2, 1)?)
///     .replicas(ReplicaPolicy::PerNode)
///     .log_capacity(1024)
///     .max_replicas(3)
///     .build(|_replica| Counter::default())?;
/// assert_eq!(nr.num_replicas(), 3);
/// assert_eq!(nr.live_replicas(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct NrBuilder<D> {
    #[cfg(feature = "std")]
    topology: Option<crate::topology::Topology>,
    policy: ReplicaPolicy,
    /// `None`: [`DEFAULT_LOG_CAPACITY`](Self::DEFAULT_LOG_CAPACITY), raised to what the threads can have
    /// in flight.
    log_capacity: Option<usize>,
    threads_per_replica: usize,
    read_mostly: bool,
    max_replicas: Option<usize>,
    /// Rounds a writer spins for a busy combiner lock before it hands its
    /// operation to its slot (0: none; `nr::lanes` sets it, see
    /// [`spin_for_combiner`](Self::spin_for_combiner)).
    combiner_spin: u32,
    /// The structure the builder builds (`fn() -> D`: no ownership, and
    /// `Send + Sync` whatever `D` is).
    _structure: core::marker::PhantomData<fn() -> D>,
}

impl<D> Clone for NrBuilder<D> {
    fn clone(&self) -> Self {
        Self {
            #[cfg(feature = "std")]
            topology: self.topology.clone(),
            policy: self.policy,
            log_capacity: self.log_capacity,
            threads_per_replica: self.threads_per_replica,
            read_mostly: self.read_mostly,
            max_replicas: self.max_replicas,
            combiner_spin: self.combiner_spin,
            _structure: core::marker::PhantomData,
        }
    }
}

impl<D> core::fmt::Debug for NrBuilder<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut d = f.debug_struct("NrBuilder");
        #[cfg(feature = "std")]
        d.field("topology", &self.topology);
        d.field("policy", &self.policy)
            .field("log_capacity", &self.log_capacity)
            .field("threads_per_replica", &self.threads_per_replica)
            .field("read_mostly", &self.read_mostly)
            .field("max_replicas", &self.max_replicas)
            .finish()
    }
}

impl<D> NrBuilder<D> {
    /// The same settings for another structure type (`nr::lanes` builds one
    /// instance of its shard type per lane from the user's builder).
    pub(crate) fn retyped<E>(self) -> NrBuilder<E> {
        NrBuilder {
            #[cfg(feature = "std")]
            topology: self.topology,
            policy: self.policy,
            log_capacity: self.log_capacity,
            threads_per_replica: self.threads_per_replica,
            read_mostly: self.read_mostly,
            max_replicas: self.max_replicas,
            combiner_spin: self.combiner_spin,
            _structure: core::marker::PhantomData,
        }
    }

    /// Makes a writer that finds its replica's combiner lock busy spin up
    /// to `rounds` short waits for it before handing its operation to its
    /// slot. Worth it where the lock is rarely busy for long and combining
    /// rarely batches, as on a lane (each lane has its own lock, so two
    /// writers meet on one only when their keys fall in the same lane):
    /// taking the lock after a short wait costs one cache-line transfer,
    /// while the slot handshake costs several and makes the holder apply
    /// the waiter's operation too. Where many writers share one lock,
    /// combining is the better answer and this stays 0.
    pub(crate) fn spin_for_combiner(mut self, rounds: u32) -> Self {
        self.combiner_spin = rounds;
        self
    }

    /// Whether [`max_replicas`](Self::max_replicas) was set (`nr::lanes`
    /// refuses spare replicas: they start parked).
    pub(crate) fn has_max_replicas(&self) -> bool {
        self.max_replicas.is_some()
    }
}

impl<D> Default for NrBuilder<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D> NrBuilder<D> {
    /// Default log capacity in entries, raised to one entry per thread slot
    /// of every replica when that is more and rounded up to a power of two
    /// ([`log_capacity`](Self::log_capacity) overrides it). Loom models use
    /// 4.
    pub const DEFAULT_LOG_CAPACITY: usize = DEFAULT_LOG_CAPACITY;
    /// Default thread slots per replica
    /// ([`max_threads_per_replica`](Self::max_threads_per_replica) overrides
    /// it). Loom models use 2.
    pub const DEFAULT_THREADS_PER_REPLICA: usize = DEFAULT_THREADS_PER_REPLICA;
    /// Most thread slots per replica: the writer side of the readers-writer
    /// lock scans one flag per slot, so a very large replica should be split
    /// (more replicas) rather than grown. Above it `build` returns
    /// [`NrError::TooManySlots`].
    pub const MAX_THREADS_PER_REPLICA: usize = MAX_THREADS_PER_REPLICA;
    /// Largest log capacity accepted (2^28 entries: gigabytes of log, far
    /// past any useful size). Above it `build` returns [`NrError::TooLarge`].
    pub const MAX_LOG_CAPACITY: usize = MAX_LOG_CAPACITY;
    /// Most replicas (or replica places) accepted. Above it `build` returns
    /// [`NrError::TooLarge`].
    pub const MAX_REPLICAS: usize = MAX_REPLICAS;

    /// Defaults: detected topology, one replica per node, a log of
    /// [`DEFAULT_LOG_CAPACITY`](Self::DEFAULT_LOG_CAPACITY) entries (or one
    /// operation per thread slot of every replica, if that is more),
    /// [`DEFAULT_THREADS_PER_REPLICA`](Self::DEFAULT_THREADS_PER_REPLICA)
    /// thread slots per replica.
    pub fn new() -> Self {
        Self {
            #[cfg(feature = "std")]
            topology: None,
            policy: ReplicaPolicy::PerNode,
            log_capacity: None,
            threads_per_replica: DEFAULT_THREADS_PER_REPLICA,
            read_mostly: false,
            max_replicas: None,
            combiner_spin: 0,
            _structure: core::marker::PhantomData,
        }
    }

    /// Uses this topology instead of detecting one (for example
    /// `Topology::simulated(2, 1)` for two replicas on a one-node machine).
    #[cfg(feature = "std")]
    pub fn topology(mut self, topology: crate::topology::Topology) -> Self {
        self.topology = Some(topology);
        self
    }

    /// How many replicas to make.
    pub fn replicas(mut self, policy: ReplicaPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Log capacity in operations (rounded up to a power of two).
    pub fn log_capacity(mut self, entries: usize) -> Self {
        self.log_capacity = Some(entries);
        self
    }

    /// Thread slots per replica: how many threads may register with one
    /// replica at the same time.
    pub fn max_threads_per_replica(mut self, threads: usize) -> Self {
        self.threads_per_replica = threads;
        self
    }

    /// For structures that are read far more often than written: reads take
    /// their replica's read lock without a memory fence, and every write
    /// round (one per batch of writes) makes the kernel run a memory barrier
    /// on every CPU that runs a thread of this process (Linux
    /// `membarrier`, expedited private). A read then costs a flag store and
    /// a load, about as much as the bare structure; a batch of writes costs
    /// one inter-processor interrupt per busy CPU (measured on the 2-vCPU
    /// development VM: 0.35 µs with no other thread running, 10.8 µs with one
    /// spinning on the other CPU). Where `membarrier` is not available (not
    /// Linux, a kernel before 4.14, no `std`) this setting is ignored and
    /// [`NodeReplicated::reads_are_fence_free`] says so. Off by default.
    pub fn read_mostly(mut self, yes: bool) -> Self {
        self.read_mostly = yes;
        self
    }

    /// Checks the settings and returns each replica's home CPUs and the log
    /// capacity.
    /// Reserves places for up to `replicas` replicas in all, so that
    /// [`NodeReplicated::add_replica`] can bring more into service at run
    /// time (the places beyond the policy's replicas start out of service;
    /// their homes continue round-robin over the nodes). The default is the
    /// policy's count. An instance with room for two or more replicas keeps
    /// a log even while only one serves, so it can grow.
    pub fn max_replicas(mut self, replicas: usize) -> Self {
        self.max_replicas = Some(replicas);
        self
    }

    fn plan(&self) -> Result<(Vec<Vec<usize>>, usize, usize), NrError> {
        if self.threads_per_replica == 0 {
            return Err(NrError::ZeroSize {
                what: "max_threads_per_replica",
            });
        }
        if self.threads_per_replica > MAX_THREADS_PER_REPLICA {
            return Err(NrError::TooManySlots {
                asked: self.threads_per_replica,
                max: MAX_THREADS_PER_REPLICA,
            });
        }
        if self.log_capacity == Some(0) {
            return Err(NrError::ZeroLogCapacity);
        }
        if self.policy == ReplicaPolicy::Fixed(0) {
            return Err(NrError::ZeroSize {
                what: "the number of replicas (ReplicaPolicy::Fixed)",
            });
        }
        for (what, asked) in [
            (
                "ReplicaPolicy::Fixed replicas",
                match self.policy {
                    ReplicaPolicy::Fixed(n) => n,
                    _ => 0,
                },
            ),
            ("max_replicas", self.max_replicas.unwrap_or(0)),
        ] {
            if asked > MAX_REPLICAS {
                return Err(NrError::TooLarge {
                    what,
                    asked,
                    max: MAX_REPLICAS,
                    hint: "one replica per NUMA node (ReplicaPolicy::PerNode) is the usual choice",
                });
            }
        }
        if let Some(asked) = self.log_capacity {
            if asked > MAX_LOG_CAPACITY {
                return Err(NrError::TooLarge {
                    what: "log_capacity",
                    asked,
                    max: MAX_LOG_CAPACITY,
                    hint: "a few thousand entries per replica suffice (the default is 4096)",
                });
            }
        }
        let mut homes = self.homes()?;
        let serving = homes.len();
        // PerCore (or PerNode) on a large topology: one replica, and one
        // building thread, per core is bounded like Fixed(n).
        if serving > MAX_REPLICAS {
            return Err(NrError::TooLarge {
                what: "replicas that the topology and ReplicaPolicy ask for",
                asked: serving,
                max: MAX_REPLICAS,
                hint: "use ReplicaPolicy::PerNode, or ReplicaPolicy::Fixed with fewer replicas",
            });
        }
        if let Some(max) = self.max_replicas {
            if max < serving {
                return Err(NrError::TooFewPlaces {
                    max_replicas: max,
                    replicas: serving,
                });
            }
            for r in serving..max {
                let home = homes[r % serving].clone();
                homes.push(home);
            }
        }
        // Both factors are bounded (MAX_REPLICAS, MAX_THREADS_PER_REPLICA).
        let in_flight = homes.len() * self.threads_per_replica;
        // The default stays small enough to live in the L2 cache (appends
        // touch a fresh line per few entries; a 64 Ki-entry log measured 37%
        // slower single-thread writes than a 256-entry one), but never below
        // what the threads can have in flight.
        let capacity = self
            .log_capacity
            .unwrap_or(DEFAULT_LOG_CAPACITY.max(in_flight))
            .next_power_of_two();
        if capacity < in_flight {
            return Err(NrError::LogTooSmall {
                capacity,
                in_flight,
                replicas: homes.len(),
                threads_per_replica: self.threads_per_replica,
            });
        }
        Ok((homes, capacity, serving))
    }

    #[cfg(feature = "std")]
    fn homes(&self) -> Result<Vec<Vec<usize>>, NrError> {
        let topology = match &self.topology {
            Some(t) => t.clone(),
            None => crate::topology::Topology::detect()
                .map_err(|e| NrError::Topology(alloc::string::ToString::to_string(&e)))?,
        };
        let node_cpus = |n: usize| -> Vec<usize> {
            topology.nodes()[n].cores.iter().map(|c| c.os_cpu).collect()
        };
        Ok(match self.policy {
            ReplicaPolicy::PerNode => (0..topology.num_nodes()).map(node_cpus).collect(),
            ReplicaPolicy::PerCore => topology
                .cores()
                .iter()
                .map(|c| alloc::vec![c.os_cpu])
                .collect(),
            ReplicaPolicy::Fixed(n) => (0..n)
                .map(|r| node_cpus(r % topology.num_nodes()))
                .collect(),
        })
    }

    #[cfg(not(feature = "std"))]
    fn homes(&self) -> Result<Vec<Vec<usize>>, NrError> {
        match self.policy {
            ReplicaPolicy::Fixed(n) => Ok((0..n).map(|_| Vec::new()).collect()),
            _ => Err(NrError::Topology(
                "without the `std` feature there is no topology discovery: use ReplicaPolicy::Fixed(n)".into(),
            )),
        }
    }

    /// Builds the instance; `make(r)` builds replica `r`'s data structure
    /// (it runs on a thread pinned to that replica's node, with `std`).
    ///
    /// # Errors
    ///
    /// Every setting that cannot work is an [`NrError`] that says what to
    /// change: zero or too large sizes, a log smaller than what the threads
    /// can have in flight, `max_replicas` below the policy's count, a
    /// topology that cannot be detected, a log that cannot be allocated.
    ///
    /// # Panics
    ///
    /// If `make` panics, the panic is resumed in the caller and nothing is
    /// built (with `std`, `make` runs on one thread per replica, pinned to
    /// the replica's home).
    pub fn build(self, make: impl Fn(usize) -> D + Sync) -> Result<NodeReplicated<D>, NrError>
    where
        D: Dispatch + Send + Sync,
        D::WriteOperation: Send + Sync,
        D::Response: Send,
    {
        let (homes, capacity, serving) = self.plan()?;
        let slots = self.threads_per_replica;
        // With one replica nobody replays the log: writes are applied
        // straight from the thread slots (`Replica::combine_direct`), so
        // the log is a one-entry placeholder that is never written.
        let log = if homes.len() == 1 {
            Log::new(1, 1)
        } else {
            Log::try_with_live(capacity, homes.len(), serving).ok_or(NrError::OutOfMemory {
                what: "the shared log",
                bytes: capacity.saturating_mul(Log::<D::WriteOperation>::entry_size()),
            })?
        };
        let asymmetric = self.read_mostly && crate::sync::asymmetric_fences();
        let spin = self.combiner_spin;
        let build_one = |r: usize| {
            let mut replica = Box::new(Replica::new(r, make(r), slots, asymmetric));
            replica.combiner_spin = spin;
            replica
        };
        let replicas = Self::place(&homes, &build_one);
        // Asked once, of a freshly built replica (the answer must not change).
        let can_snapshot = replicas.len() > 1 && replicas[0].probe_snapshot();
        Ok(NodeReplicated::from_parts(
            log,
            replicas,
            homes,
            serving,
            can_snapshot,
        ))
    }

    /// Builds each replica on a thread pinned to its home (first touch).
    #[cfg(all(feature = "std", not(loom)))]
    fn place(
        homes: &[Vec<usize>],
        build_one: &(dyn Fn(usize) -> Box<Replica<D>> + Sync),
    ) -> Vec<Box<Replica<D>>>
    where
        D: Dispatch + Send,
        D::WriteOperation: Send,
        D::Response: Send,
    {
        // Free allocator pages that other threads touched would keep their
        // nodes when the build threads reuse them (module docs).
        crate::topology::release_free_heap_pages();
        std::thread::scope(|s| {
            let handles: Vec<_> = homes
                .iter()
                .enumerate()
                .map(|(r, home)| {
                    let cpu = home.first().copied();
                    // Mutant `replicas_on_node0` (scripts/numa-vm-mutant.sh):
                    // every replica is built, and first touched, on the
                    // first replica's home.
                    let cpu = if crate::mutants::skip!("replicas_on_node0") {
                        homes[0].first().copied()
                    } else {
                        cpu
                    };
                    s.spawn(move || {
                        if let Some(cpu) = cpu {
                            // Best effort (module docs): an unpinned build
                            // still works, just without placement.
                            let _ = crate::topology::pin_to_cpu(cpu);
                        }
                        let replica = build_one(r);
                        if cpu.is_some() {
                            // First touch placed only the fresh pages; the
                            // allocator may have recycled pages that an
                            // exited thread touched on another node (seen
                            // in the emulated-NUMA guest): move the
                            // replica's own pages to where this thread's
                            // first touch goes.
                            if let Some(node) = crate::topology::local_memory_node() {
                                let _ =
                                    crate::topology::move_to_node(&replica.owned_ranges(), node);
                            }
                        }
                        replica
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    }

    /// Builds the replicas on the calling thread (no pinning available).
    #[cfg(any(not(feature = "std"), loom))]
    fn place(
        homes: &[Vec<usize>],
        build_one: &dyn Fn(usize) -> Box<Replica<D>>,
    ) -> Vec<Box<Replica<D>>>
    where
        D: Dispatch,
    {
        (0..homes.len()).map(build_one).collect()
    }
}
