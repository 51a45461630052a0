//! Errors of node replication: bad configuration ([`NrError`]) and failed
//! operations ([`ExecError`]).

/// A node-replicated instance could not be built, or a thread could not
/// register with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NrError {
    /// The log capacity was zero.
    #[error("the log capacity must be at least 1 entry; use the default (NrBuilder::log_capacity is optional) or a power of two such as 65536")]
    ZeroLogCapacity,
    /// The log cannot hold one batch from every replica's threads.
    #[error("a log of {capacity} entries is smaller than the {in_flight} operations the registered threads can have in flight ({replicas} replicas x {threads_per_replica} threads); raise log_capacity to at least {in_flight} or lower max_threads_per_replica")]
    LogTooSmall {
        /// Capacity asked for.
        capacity: usize,
        /// Operations that can be in flight at once.
        in_flight: usize,
        /// Replicas configured.
        replicas: usize,
        /// Thread slots per replica.
        threads_per_replica: usize,
    },
    /// Zero replicas or zero threads per replica were asked for.
    #[error("{what} must be at least 1")]
    ZeroSize {
        /// Which setting was zero.
        what: &'static str,
    },
    /// More threads per replica than this build supports.
    #[error("max_threads_per_replica is {asked}, above the supported {max}; use more replicas (ReplicaPolicy::PerCore or Fixed) instead")]
    TooManySlots {
        /// Slots asked for.
        asked: usize,
        /// The limit.
        max: usize,
    },
    /// Every thread slot of the replica is taken.
    #[error("all {slots} thread slots of replica {replica} are in use; drop an unused ThreadToken or build with a larger max_threads_per_replica")]
    ReplicaFull {
        /// The replica.
        replica: usize,
        /// Its number of slots.
        slots: usize,
    },
    /// A replica index out of range was given to `register_on`.
    #[error(
        "replica {replica} does not exist: this instance has {replicas} replicas (0..{replicas})"
    )]
    NoSuchReplica {
        /// Index given.
        replica: usize,
        /// Replicas that exist.
        replicas: usize,
    },
    /// The topology could not be detected or parsed.
    #[error("topology: {0}")]
    Topology(alloc::string::String),
    /// The instance is poisoned: an operation panicked.
    #[error("the instance is poisoned: a write panicked inside dispatch_mut (or merge_responses), or Dispatch::snapshot panicked or returned None while a replica was rebuilt, so the replicas may be inconsistent; build a new instance")]
    Poisoned,
    /// The replica is out of service (removed, or a spare place never added).
    #[error("replica {replica} is not in service (removed, or a spare place from max_replicas); register with NodeReplicated::register, or bring a place back with add_replica")]
    ReplicaRemoved {
        /// The replica.
        replica: usize,
    },
    /// Removing the replica would leave no replica in service.
    #[error("replica {replica} is the last replica in service and cannot be removed; add another replica first (add_replica, with spare places from NrBuilder::max_replicas)")]
    LastReplica {
        /// The replica.
        replica: usize,
    },
    /// `max_replicas` is below the number of replicas the policy builds.
    #[error("max_replicas is {max_replicas} but the replica policy builds {replicas} replicas; raise max_replicas to at least {replicas} or leave it unset")]
    TooFewPlaces {
        /// The `max_replicas` setting.
        max_replicas: usize,
        /// Replicas the policy builds.
        replicas: usize,
    },
    /// Every replica place is in service.
    #[error("all {replicas} replica places are in service; build with a larger NrBuilder::max_replicas to add replicas at run time")]
    NoSpareReplica {
        /// Replica places of the instance.
        replicas: usize,
    },
    /// The structure cannot be copied, so no replica can be built at run time.
    #[error("Dispatch::snapshot returns None for this structure, so replicas cannot be added or rebuilt at run time; implement Dispatch::snapshot (for a Clone type: Some(self.clone()))")]
    SnapshotUnsupported,
    /// A size or count is beyond what can be represented or allocated.
    #[error("{what} of {asked} is too large (at most {max}); {hint}")]
    TooLarge {
        /// What was asked for.
        what: &'static str,
        /// The value given.
        asked: usize,
        /// The largest accepted value.
        max: usize,
        /// What to do instead.
        hint: &'static str,
    },
    /// Memory for the log or the replicas could not be allocated.
    #[error(
        "could not allocate {bytes} bytes for {what}; use a smaller log_capacity or fewer replicas"
    )]
    OutOfMemory {
        /// What was being allocated.
        what: &'static str,
        /// How many bytes.
        bytes: usize,
    },
}

/// An operation could not be executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// The instance is poisoned: an earlier write operation panicked.
    #[error("the instance is poisoned: a write panicked inside dispatch_mut (or merge_responses), or Dispatch::snapshot panicked or returned None while a replica was rebuilt, so the replicas may be inconsistent; build a new instance")]
    Poisoned,
    /// The token was registered with a different instance.
    #[error("this token belongs to another instance (a ThreadToken of another NodeReplicated, or a LaneToken of another LaneReplicated); register the thread with this instance and use that token")]
    WrongInstance,
    /// The token's replica was taken out of service with `remove_replica`;
    /// the operation was not applied.
    #[error("replica {replica} was removed from service and the operation was not applied; drop this token and register the thread again (NodeReplicated::register)")]
    ReplicaRemoved {
        /// The removed replica.
        replica: usize,
    },
}
