//! NUMA discovery through hwloc (the `hwloc` feature, via `hwlocality`).
//!
//! hwloc knows about machines whose sysfs is incomplete and about non-Linux
//! systems; noderep only needs the node → CPU sets from it.

use super::{Topology, TopologyError, TopologySource};
use hwlocality::object::types::ObjectType;
use std::vec::Vec;

impl Topology {
    /// Asks hwloc for the NUMA nodes and the CPUs of each (their cpusets).
    ///
    /// # Errors
    ///
    /// [`TopologyError::Hwloc`] if hwloc cannot load the topology or reports
    /// no NUMA node with CPUs.
    pub fn from_hwloc() -> Result<Self, TopologyError> {
        let topo = hwlocality::Topology::new().map_err(|e| TopologyError::Hwloc(e.to_string()))?;
        let mut layout: Vec<(usize, Vec<usize>)> = Vec::new();
        for node in topo.objects_with_type(ObjectType::NUMANode) {
            let os_node = node.os_index().unwrap_or(layout.len());
            let cpus: Vec<usize> = node
                .cpuset()
                .map(|set| set.iter_set().map(usize::from).collect())
                .unwrap_or_default();
            if !cpus.is_empty() {
                layout.push((os_node, cpus));
            }
        }
        if layout.is_empty() {
            return Err(TopologyError::Hwloc(
                "hwloc reported no NUMA node with CPUs".into(),
            ));
        }
        layout.sort();
        Ok(Self::from_layout(layout, TopologySource::Hwloc))
    }
}
