//! NUMA nodes and the cores on them: discovery, simulation, and placement.
//!
//! Node replication keeps one replica per NUMA node and the run-queue module
//! keeps one queue per core, so both need to know which cores share a node.
//! This module answers that and nothing else; it knows nothing about replicas.
//!
//! # How it works
//!
//! * [`Topology::detect`] honours the `NODEREP_TOPOLOGY` override first (for
//!   example `NODEREP_TOPOLOGY=2x4`: two simulated nodes of four cores), then
//!   reads Linux sysfs (`/sys/devices/system/node/node*/cpulist`) or, with the
//!   `hwloc` feature, asks hwloc (`Topology::from_hwloc`). Where sysfs has
//!   no node directory (containers, non-NUMA kernels) it falls back to one
//!   node holding every online CPU.
//! * [`Topology::simulated`] builds `nodes × cores_per_node` cores whose
//!   operating-system CPUs wrap around the machine's real CPUs, so a
//!   multi-node layout can be exercised on a one-node, two-core machine:
//!   simulated core `i` runs on real CPU `i % online_cpus`.
//! * [`current_cpu`] asks the kernel where the calling thread runs (getcpu),
//!   and [`pin_to_cpu`] pins it (through `core_affinity`).
//!
//! # Trade-offs
//!
//! A simulated topology reproduces the *protocol* of a many-node machine
//! (several replicas, a shared log, cross-replica helping), not its memory
//! latencies: every simulated node shares the one real memory controller.
//!
//! # References
//!
//! Linux `Documentation/ABI/stable/sysfs-devices-node`; getcpu(2);
//! move_pages(2).

mod cpulist;
#[cfg(feature = "hwloc")]
mod hwloc;
mod placement;

// Hidden: `Topology::parse_cpulist` and `Topology::format_cpulist` are the
// documented paths; these are kept for code written against them.
#[doc(hidden)]
pub use cpulist::{format_cpulist, parse_cpulist};
pub(crate) use placement::release_free_heap_pages;
pub use placement::{
    current_cpu, local_memory_node, move_to_node, nodes_of_pages, pin_to_cpu, CpuLocation,
};
// Hidden: `nodes_of_pages(&[addr])` asks the same for one page; this path is
// kept for code written against it.
#[doc(hidden)]
pub use placement::node_of_address;

use std::path::Path;
use std::string::String;
use std::vec::Vec;

/// Environment variable that replaces detection with a simulated topology,
/// written `NODESxCORES` (for example `2x1`).
#[doc(hidden)] // Public as `Topology::ENV_VAR`; this path is kept for code written against it.
pub const TOPOLOGY_ENV: &str = "NODEREP_TOPOLOGY";

/// What can go wrong while building a topology.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopologyError {
    /// A topology string was not of the form `NODESxCORES`.
    #[error("unknown topology {given:?}: write it as NODESxCORES_PER_NODE, for example \"2x4\" for two nodes of four cores")]
    BadSpec {
        /// The string as given.
        given: String,
    },
    /// Zero nodes or zero cores were asked for.
    #[error("a topology needs at least one node and one core per node (got {nodes} nodes of {cores_per_node} cores)")]
    Empty {
        /// Nodes asked for.
        nodes: usize,
        /// Cores per node asked for.
        cores_per_node: usize,
    },
    /// A sysfs cpulist could not be parsed.
    #[error(
        "cannot parse the CPU list {text:?} from {source_name}: expected ranges of CPU numbers below 65536, such as \"0-3,8\""
    )]
    BadCpuList {
        /// The text that failed.
        text: String,
        /// Where it came from.
        source_name: String,
    },
    /// A simulated topology larger than supported was asked for.
    #[error("a simulated topology of {nodes} nodes of {cores_per_node} cores is too large: use at most {max_nodes} nodes and {max_cores} cores in all (Linux itself stops at 1024 nodes and 8192 CPUs)")]
    TooLarge {
        /// Nodes asked for.
        nodes: usize,
        /// Cores per node asked for.
        cores_per_node: usize,
        /// [`Topology::MAX_NODES`].
        max_nodes: usize,
        /// [`Topology::MAX_CORES`].
        max_cores: usize,
    },
    /// hwloc could not be used.
    #[error("hwloc failed: {0}; build without the `hwloc` feature to read sysfs instead")]
    Hwloc(String),
    /// A directory of node information could not be read.
    #[error("cannot read {path}: {reason}; without sysfs node information use Topology::simulated or set NODEREP_TOPOLOGY (for example \"1x4\")")]
    Unreadable {
        /// The path.
        path: String,
        /// The operating system's error.
        reason: String,
    },
    /// Pinning a thread failed.
    #[error("cannot pin the thread to CPU {cpu}: it is not in this process's allowed CPU set (check taskset / cgroup cpusets)")]
    Pin {
        /// The operating-system CPU number.
        cpu: usize,
    },
}

/// One core: its index in the topology, its node and the OS CPU it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Core {
    /// Dense index of this core in [`Topology::cores`] (0..number of cores).
    pub id: usize,
    /// Dense index of its node in [`Topology::nodes`].
    pub node: usize,
    /// The operating-system CPU number threads are pinned to.
    pub os_cpu: usize,
}

/// One NUMA node and its cores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Dense index of the node (0..number of nodes).
    pub id: usize,
    /// The kernel's node number (equal to `id` for simulated topologies).
    pub os_node: usize,
    /// Its cores, in ascending core id.
    pub cores: Vec<Core>,
}

/// Where a topology came from, so reports can say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologySource {
    /// Linux sysfs node directories.
    Sysfs,
    /// hwloc (the `hwloc` feature).
    Hwloc,
    /// No node information: one node holding every online CPU.
    SingleNodeFallback,
    /// [`Topology::simulated`] or `NODEREP_TOPOLOGY`.
    Simulated,
}

/// NUMA nodes and cores of a (real or simulated) machine.
///
/// # Examples
///
/// ```
/// use noderep::topology::Topology;
///
/// let machine = Topology::detect()?;            // NODEREP_TOPOLOGY, hwloc, sysfs, or one node
/// println!("{machine}");
///
/// let sim = Topology::simulated(2, 4)?;          // 2 nodes of 4 cores, on the real CPUs
/// assert_eq!((sim.num_nodes(), sim.num_cores()), (2, 8));
/// assert_eq!(sim.nodes()[1].cores[0].id, 4);    // cores are numbered node by node
/// assert_eq!(Topology::parse_simulated("2x4")?, sim);
/// # Ok::<(), noderep::topology::TopologyError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    nodes: Vec<Node>,
    cores: Vec<Core>,
    source: TopologySource,
}

impl Topology {
    /// The environment variable that replaces detection with a simulated
    /// topology, `NODEREP_TOPOLOGY`, written `NODESxCORES_PER_NODE` (for
    /// example `2x4`); [`detect`](Self::detect) reads it first.
    pub const ENV_VAR: &'static str = TOPOLOGY_ENV;
    /// Most nodes of a simulated topology: Linux's own limit
    /// (`MAX_NUMNODES` with `NODES_SHIFT` = 10).
    pub const MAX_NODES: usize = 1024;
    /// Most cores of a simulated topology, all nodes together; also the
    /// bound on CPU numbers in a CPU list (eight times Linux's largest
    /// `NR_CPUS`, 8192).
    pub const MAX_CORES: usize = cpulist::MAX_CPUS;

    /// Parses a kernel CPU list such as `"0-3,8"` (the format of sysfs
    /// `cpulist` files and of `taskset -c`) into ascending CPU numbers,
    /// without duplicates. An empty (or all-whitespace) list is a node
    /// without CPUs and yields `[]`.
    ///
    /// # Errors
    ///
    /// [`TopologyError::BadCpuList`] when a part is not a number or a range
    /// `lo-hi` with `lo <= hi`, or names a CPU at or above
    /// [`MAX_CORES`](Self::MAX_CORES).
    ///
    /// # Examples
    ///
    /// ```
    /// use noderep::topology::Topology;
    ///
    /// assert_eq!(Topology::parse_cpulist("0-3,8")?, [0, 1, 2, 3, 8]);
    /// assert_eq!(Topology::parse_cpulist(" \n")?, Vec::<usize>::new());
    /// assert!(Topology::parse_cpulist("3-1").is_err());
    /// assert_eq!(Topology::format_cpulist(&[0, 1, 2, 5]), "0-2,5");
    /// # Ok::<(), noderep::topology::TopologyError>(())
    /// ```
    pub fn parse_cpulist(text: &str) -> Result<Vec<usize>, TopologyError> {
        cpulist::parse_cpulist(text).map_err(|_| TopologyError::BadCpuList {
            text: text.into(),
            source_name: "the text given to Topology::parse_cpulist".into(),
        })
    }

    /// Writes CPU numbers in the kernel's CPU list format, ranges for runs
    /// of consecutive numbers: `[0, 1, 2, 5]` becomes `"0-2,5"` (the
    /// inverse of [`parse_cpulist`](Self::parse_cpulist) for ascending
    /// lists).
    pub fn format_cpulist(cpus: &[usize]) -> String {
        cpulist::format_cpulist(cpus)
    }

    /// The machine's topology: `NODEREP_TOPOLOGY` if set, else hwloc (with the
    /// `hwloc` feature), else sysfs, else one node of every online CPU.
    ///
    /// # Errors
    ///
    /// Only when `NODEREP_TOPOLOGY` is set to something that is not
    /// `NODESxCORES` ([`TopologyError::BadSpec`], [`TopologyError::Empty`]);
    /// a machine without node information is one node, not an error.
    pub fn detect() -> Result<Self, TopologyError> {
        if let Ok(spec) = std::env::var(TOPOLOGY_ENV) {
            return Self::parse_simulated(&spec);
        }
        #[cfg(feature = "hwloc")]
        {
            if let Ok(t) = Self::from_hwloc() {
                return Ok(t);
            }
        }
        Ok(Self::from_sysfs(Path::new("/sys/devices/system/node"))
            .unwrap_or_else(|_| Self::single_node(online_cpus())))
    }

    /// Parses `"NODESxCORES"` (for example `"2x4"`) into a simulated topology.
    ///
    /// # Errors
    ///
    /// [`TopologyError::BadSpec`] if `spec` is not two numbers around an
    /// `x`; [`TopologyError::Empty`] if either is 0;
    /// [`TopologyError::TooLarge`] as for [`simulated`](Self::simulated).
    pub fn parse_simulated(spec: &str) -> Result<Self, TopologyError> {
        let bad = || TopologyError::BadSpec { given: spec.into() };
        let (n, c) = spec.trim().split_once(['x', 'X']).ok_or_else(bad)?;
        let nodes = n.trim().parse::<usize>().map_err(|_| bad())?;
        let cores = c.trim().parse::<usize>().map_err(|_| bad())?;
        Self::simulated(nodes, cores)
    }

    /// `nodes` simulated nodes of `cores_per_node` cores each; simulated core
    /// `i` runs on the `(i % n)`-th of the `n` online CPUs (see the module docs).
    ///
    /// # Errors
    ///
    /// [`TopologyError::Empty`] if `nodes` or `cores_per_node` is 0;
    /// [`TopologyError::TooLarge`] above [`MAX_NODES`](Self::MAX_NODES)
    /// nodes or [`MAX_CORES`](Self::MAX_CORES) cores in all.
    pub fn simulated(nodes: usize, cores_per_node: usize) -> Result<Self, TopologyError> {
        if nodes == 0 || cores_per_node == 0 {
            return Err(TopologyError::Empty {
                nodes,
                cores_per_node,
            });
        }
        let too_large = nodes > Self::MAX_NODES
            || nodes
                .checked_mul(cores_per_node)
                .is_none_or(|cores| cores > Self::MAX_CORES);
        if too_large {
            return Err(TopologyError::TooLarge {
                nodes,
                cores_per_node,
                max_nodes: Self::MAX_NODES,
                max_cores: Self::MAX_CORES,
            });
        }
        let real = online_cpus();
        let layout = (0..nodes)
            .map(|n| {
                let cpus = (0..cores_per_node).map(|c| real[(n * cores_per_node + c) % real.len()]);
                (n, cpus.collect())
            })
            .collect();
        Ok(Self::from_layout(layout, TopologySource::Simulated))
    }

    /// One node holding the given OS CPUs.
    pub fn single_node(os_cpus: Vec<usize>) -> Self {
        Self::from_layout(vec![(0, os_cpus)], TopologySource::SingleNodeFallback)
    }

    /// Reads `node*/cpulist` below `root` (normally `/sys/devices/system/node`).
    /// Nodes without CPUs (memory-only nodes) are left out.
    ///
    /// # Errors
    ///
    /// [`TopologyError::Unreadable`] if `root` cannot be read or holds no
    /// node with CPUs; [`TopologyError::BadCpuList`] if a `cpulist` file
    /// does not parse.
    pub fn from_sysfs(root: &Path) -> Result<Self, TopologyError> {
        let mut layout: Vec<(usize, Vec<usize>)> = Vec::new();
        let entries = std::fs::read_dir(root).map_err(|e| TopologyError::Unreadable {
            path: root.display().to_string(),
            reason: e.to_string(),
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(num) = name.to_str().and_then(|s| s.strip_prefix("node")) else {
                continue;
            };
            let Ok(os_node) = num.parse::<usize>() else {
                continue;
            };
            let path = entry.path().join("cpulist");
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let cpus = cpulist::parse_cpulist(&text).map_err(|_| TopologyError::BadCpuList {
                text: text.trim().into(),
                source_name: path.display().to_string(),
            })?;
            if !cpus.is_empty() {
                layout.push((os_node, cpus));
            }
        }
        if layout.is_empty() {
            return Err(TopologyError::Unreadable {
                path: root.display().to_string(),
                reason: "no node directory with CPUs".into(),
            });
        }
        layout.sort();
        Ok(Self::from_layout(layout, TopologySource::Sysfs))
    }

    /// Builds a topology from `(os_node, os_cpus)` pairs, numbering nodes and
    /// cores densely in the given order.
    pub(crate) fn from_layout(layout: Vec<(usize, Vec<usize>)>, source: TopologySource) -> Self {
        let mut nodes = Vec::with_capacity(layout.len());
        let mut cores = Vec::new();
        for (id, (os_node, os_cpus)) in layout.into_iter().enumerate() {
            let mut node_cores = Vec::with_capacity(os_cpus.len());
            for os_cpu in os_cpus {
                let core = Core {
                    id: cores.len(),
                    node: id,
                    os_cpu,
                };
                cores.push(core);
                node_cores.push(core);
            }
            nodes.push(Node {
                id,
                os_node,
                cores: node_cores,
            });
        }
        Self {
            nodes,
            cores,
            source,
        }
    }

    /// The nodes, in dense id order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Every core, in dense id order (node 0's cores first).
    pub fn cores(&self) -> &[Core] {
        &self.cores
    }

    /// Number of nodes.
    pub fn num_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Number of cores.
    pub fn num_cores(&self) -> usize {
        self.cores.len()
    }

    /// Where this topology came from.
    pub fn source(&self) -> TopologySource {
        self.source
    }

    /// The dense node of an OS CPU, if the CPU belongs to this topology. In a
    /// simulated topology several cores share an OS CPU; the first one wins.
    pub fn node_of_os_cpu(&self, os_cpu: usize) -> Option<usize> {
        self.cores
            .iter()
            .find(|c| c.os_cpu == os_cpu)
            .map(|c| c.node)
    }

    /// The core a thread running on `os_cpu` belongs to (first match).
    pub fn core_of_os_cpu(&self, os_cpu: usize) -> Option<&Core> {
        self.cores.iter().find(|c| c.os_cpu == os_cpu)
    }

    /// Cores ordered to fill one node before the next (`interleave == false`)
    /// or round-robin across nodes (`interleave == true`), for thread placement.
    pub fn placement_order(&self, interleave: bool) -> Vec<Core> {
        if !interleave {
            return self.cores.clone();
        }
        let widest = self.nodes.iter().map(|n| n.cores.len()).max().unwrap_or(0);
        (0..widest)
            .flat_map(|i| {
                self.nodes
                    .iter()
                    .filter_map(move |n| n.cores.get(i).copied())
            })
            .collect()
    }
}

impl core::fmt::Display for Topology {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} node(s), {} core(s) ({:?})",
            self.nodes.len(),
            self.cores.len(),
            self.source
        )?;
        for n in &self.nodes {
            let cpus: Vec<String> = n.cores.iter().map(|c| c.os_cpu.to_string()).collect();
            write!(f, "; node {} -> cpus [{}]", n.os_node, cpus.join(","))?;
        }
        Ok(())
    }
}

/// The OS CPUs this process may run on (at least CPU 0).
pub(crate) fn online_cpus() -> Vec<usize> {
    let ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    if ids.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        (0..n).collect()
    } else {
        ids
    }
}

#[cfg(test)]
mod tests;
