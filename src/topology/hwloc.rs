//! NUMA discovery through hwloc (the `hwloc` feature, via `hwlocality`).
//!
//! hwloc knows about machines whose sysfs is incomplete and about non-Linux
//! systems; noderep only needs the node → CPU sets from it.
//!
//! # How it works
//!
//! hwloc attaches each NUMA node to an object of the CPU tree (a package,
//! a group, the machine) and gives the node that object's CPU set: its
//! *locality*, not the CPUs the operating system assigns to it. A node
//! without CPUs of its own (memory only, such as a memory expander) gets its
//! neighbours' CPUs that way; the emulated-NUMA guest with a memory-only node
//! (`scripts/numa-vm.sh memoryless`) showed it as a fourth node holding
//! CPUs 0-2 a second time. So each CPU (PU) is given to the nearest node
//! above it instead: the NUMA node attached to its deepest ancestor that has
//! one (the lowest OS index if several are attached there). Nodes that get
//! no CPU are left out, as in sysfs.

use super::{Topology, TopologyError, TopologySource};
use hwlocality::object::types::ObjectType;
use hwlocality::object::TopologyObject;
use std::collections::BTreeMap;
use std::vec::Vec;

/// The NUMA nodes among `obj`'s memory children, looking through
/// memory-side caches.
fn attached_nodes(obj: &TopologyObject, out: &mut Vec<usize>) {
    for child in obj.memory_children() {
        if child.object_type() == ObjectType::NUMANode {
            if let Some(os) = child.os_index() {
                out.push(os);
            }
        } else {
            attached_nodes(child, out);
        }
    }
}

impl Topology {
    /// Asks hwloc for the NUMA nodes and the CPUs of each (module docs).
    pub fn from_hwloc() -> Result<Self, TopologyError> {
        let topo = hwlocality::Topology::new().map_err(|e| TopologyError::Hwloc(e.to_string()))?;
        let mut nodes: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for pu in topo.objects_with_type(ObjectType::PU) {
            let Some(cpu) = pu.os_index() else { continue };
            let home = pu.ancestors().find_map(|a| {
                let mut here = Vec::new();
                attached_nodes(a, &mut here);
                here.into_iter().min()
            });
            if let Some(node) = home {
                nodes.entry(node).or_default().push(cpu);
            }
        }
        if nodes.is_empty() {
            return Err(TopologyError::Hwloc(
                "hwloc reported no NUMA node with CPUs".into(),
            ));
        }
        let layout = nodes
            .into_iter()
            .map(|(node, mut cpus)| {
                cpus.sort_unstable();
                (node, cpus)
            })
            .collect();
        Ok(Self::from_layout(layout, TopologySource::Hwloc))
    }
}
