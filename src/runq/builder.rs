//! The builder of a [`RunQueues`] scheduler: the one way to construct one.

use alloc::vec::Vec;
use core::time::Duration;

use super::{Config, Replication, RunQueues, RunqError};

/// Where the cores come from.
#[derive(Clone, Debug)]
enum Layout {
    /// Not set yet.
    Unset,
    /// `n` cores on one node.
    Cores(usize),
    /// `nodes[i]` = the core ids of node `i`.
    Nodes(Vec<Vec<usize>>),
}

/// Builds a [`RunQueues`]: the cores (a count, a node layout or a
/// [`crate::topology::Topology`]) and the configuration, every value checked
/// by [`RunqBuilder::build`].
///
/// # Examples
///
/// ```
/// use noderep::runq::{Replication, RunQueues};
/// use std::time::Duration;
///
/// let rq = RunQueues::builder()
///     .layout(vec![vec![0, 1], vec![2, 3]]) // 2 nodes of 2 cores
///     .replication(Replication::Sync)
///     .backups(2) // a core and its first backup may fail together
///     .lease(Duration::from_millis(20))
///     .skew_margin(Duration::from_millis(5))
///     .build()?;
/// assert_eq!(rq.queues(), 4);
/// assert_eq!(rq.backups_of(0)?, vec![1, 2]);
///
/// // A bad value is an error that says what to change, never a panic.
/// let err = RunQueues::builder().cores(2).skew_margin(Duration::MAX).build();
/// assert!(err.unwrap_err().to_string().contains("skew_margin"));
/// # Ok::<(), noderep::runq::RunqError>(())
/// ```
#[derive(Clone, Debug)]
pub struct RunqBuilder {
    layout: Layout,
    config: Config,
}

impl Default for RunqBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl RunqBuilder {
    /// Most cores (queues) a scheduler can have: a task word names its
    /// queue in 12 bits.
    pub const MAX_QUEUES: usize = super::MAX_QUEUES;
    /// Most backups a queue can have ([`backups`](Self::backups)).
    pub const MAX_BACKUPS: usize = super::MAX_BACKUPS;
    /// Longest lease, skew margin or asynchronous lag accepted: an hour. Far
    /// beyond any scheduler's need, and small enough that `lease +
    /// skew_margin` in nanoseconds never overflows a `u64`.
    pub const MAX_DURATION: Duration = super::MAX_DURATION;
    /// Largest replication ring: 2^24 slots (256 MiB per ring).
    pub const MAX_RING_CAPACITY: usize = super::MAX_RING_CAPACITY;
    /// Largest task table: 2^32 - 1 slots (task ids hold 32-bit slots).
    pub const MAX_TASK_CAPACITY: usize = super::MAX_TASK_CAPACITY;

    /// A builder with the default configuration ([`Config::default`]) and no
    /// cores yet.
    pub fn new() -> Self {
        Self {
            layout: Layout::Unset,
            config: Config::default(),
        }
    }

    /// `n` cores on one (simulated) node; backups in ring order.
    pub fn cores(mut self, n: usize) -> Self {
        self.layout = Layout::Cores(n);
        self
    }

    /// Cores laid out as `nodes[i]` = the core ids of node `i` (ids `0..n`,
    /// each once). Backups: the rest of the core's node in ring order, then
    /// the following nodes' cores.
    pub fn layout(mut self, nodes: Vec<Vec<usize>>) -> Self {
        self.layout = Layout::Nodes(nodes);
        self
    }

    /// One queue per core of `topology`.
    #[cfg(not(loom))]
    pub fn topology(self, topology: &crate::topology::Topology) -> Self {
        let nodes: Vec<Vec<usize>> = topology
            .nodes()
            .iter()
            .map(|n| n.cores.iter().map(|c| c.id).collect())
            .collect();
        self.layout(nodes)
    }

    /// Starts from `config` (e.g. [`RunQueues::config`] of another scheduler).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Replication mode (default [`Replication::Sync`]).
    pub fn replication(mut self, replication: Replication) -> Self {
        self.config.replication = replication;
        self
    }

    /// Backups per queue, `k` in `1..=`[`MAX_BACKUPS`](Self::MAX_BACKUPS) and below the
    /// number of cores (default 1).
    pub fn backups(mut self, k: usize) -> Self {
        self.config.backups = k;
        self
    }

    /// Lease of an owner, in `(0, `[`MAX_DURATION`](Self::MAX_DURATION)`]`
    /// (default 20 ms).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// Extra wait before a takeover for clock skew, at most 1 h (default 5 ms).
    pub fn skew_margin(mut self, margin: Duration) -> Self {
        self.config.skew_margin = margin;
        self
    }

    /// Slots per replication ring: a power of two in `4..=2^24` (default 2^14).
    pub fn ring_capacity(mut self, slots: usize) -> Self {
        self.config.ring_capacity = slots;
        self
    }

    /// Task slots, `1..=2^32-1` (default 2^16).
    pub fn task_capacity(mut self, slots: usize) -> Self {
        self.config.task_capacity = slots;
        self
    }

    /// Checks every value and builds the scheduler.
    ///
    /// # Errors
    ///
    /// [`RunqError::BadConfig`] (saying what to change) when no cores were
    /// given, fewer than 2 or more than [`MAX_QUEUES`](Self::MAX_QUEUES), core ids that
    /// are not `0..n` each once, a value out of its range, or rings and table
    /// that would need more than half of the machine's memory;
    /// [`RunqError::OutOfMemory`] when an allocation fails anyway.
    pub fn build(self) -> Result<RunQueues, RunqError> {
        let nodes = match self.layout {
            Layout::Unset => {
                return Err(RunqError::BadConfig(
                    "no cores given: call RunqBuilder::cores, layout or topology".into(),
                ))
            }
            Layout::Cores(n) => {
                if n > super::MAX_QUEUES {
                    return Err(RunqError::BadConfig(format!(
                        "at most {} cores are supported (got {n})",
                        super::MAX_QUEUES
                    )));
                }
                alloc::vec![(0..n).collect()]
            }
            Layout::Nodes(nodes) => nodes,
        };
        RunQueues::with_layout(&nodes, self.config)
    }
}
