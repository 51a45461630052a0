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
    #[error("the instance is poisoned: a write operation panicked inside dispatch_mut, so the replicas may be inconsistent; build a new instance")]
    Poisoned,
}

/// An operation could not be executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// The instance is poisoned: an earlier write operation panicked.
    #[error("the instance is poisoned: a write operation panicked inside dispatch_mut, so the replicas may be inconsistent; build a new instance")]
    Poisoned,
    /// The token was registered with a different instance.
    #[error("this ThreadToken belongs to another NodeReplicated instance; register the thread with this instance and use that token")]
    WrongInstance,
}
