//! Where a thread runs and where memory lives: getcpu, pinning, and the NUMA
//! node of an address (get_mempolicy with `MPOL_F_NODE | MPOL_F_ADDR`).

use super::TopologyError;

/// The CPU and NUMA node the calling thread was running on when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuLocation {
    /// Operating-system CPU number.
    pub cpu: usize,
    /// The kernel's NUMA node number.
    pub node: usize,
}

/// Asks the kernel where the calling thread runs (getcpu(2)). The answer can
/// be stale as soon as it returns unless the thread is pinned.
pub fn current_cpu() -> Option<CpuLocation> {
    let mut cpu: libc::c_uint = 0;
    let mut node: libc::c_uint = 0;
    // SAFETY: getcpu writes two c_uints through the valid pointers we pass;
    // the third argument (tcache) is unused by the kernel and may be null.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_getcpu,
            &mut cpu as *mut libc::c_uint,
            &mut node as *mut libc::c_uint,
            core::ptr::null_mut::<libc::c_void>(),
        )
    };
    (rc == 0).then_some(CpuLocation {
        cpu: cpu as usize,
        node: node as usize,
    })
}

/// Pins the calling thread to the operating-system CPU `os_cpu`.
///
/// # Errors
///
/// [`TopologyError::Pin`] if `os_cpu` is not in the process's allowed CPU
/// set (or does not exist).
///
/// # Examples
///
/// ```
/// use noderep::topology::{current_cpu, pin_to_cpu, Topology};
///
/// let cpu = Topology::detect()?.cores()[0].os_cpu;
/// std::thread::spawn(move || -> Result<(), noderep::topology::TopologyError> {
///     pin_to_cpu(cpu)?;
///     if let Some(here) = current_cpu() {
///         assert_eq!(here.cpu, cpu);
///     }
///     Ok(())
/// })
/// .join()
/// .expect("no panic")?;
/// # Ok::<(), noderep::topology::TopologyError>(())
/// ```
pub fn pin_to_cpu(os_cpu: usize) -> Result<(), TopologyError> {
    if core_affinity::set_for_current(core_affinity::CoreId { id: os_cpu }) {
        Ok(())
    } else {
        Err(TopologyError::Pin { cpu: os_cpu })
    }
}

/// The kernel's NUMA node of the page holding address `addr`
/// (get_mempolicy(2) with `MPOL_F_NODE | MPOL_F_ADDR`), or `None` where the
/// kernel does not say (no NUMA support, or the page is not yet faulted in).
///
/// The address is only a lookup key (pass `ptr as usize`): nothing is read
/// through it, so any value is safe.
///
/// # Examples
///
/// ```
/// let buf = vec![1u8; 1 << 16]; // written, so its pages exist
/// if let Some(node) = noderep::topology::node_of_address(buf.as_ptr() as usize) {
///     println!("the buffer lives on node {node}");
/// }
/// ```
pub fn node_of_address(addr: usize) -> Option<usize> {
    const MPOL_F_NODE: libc::c_ulong = 1;
    const MPOL_F_ADDR: libc::c_ulong = 2;
    let mut node: libc::c_int = -1;
    // SAFETY: get_mempolicy only writes one c_int through `node` (the mode
    // pointer); with a null nodemask and maxnode 0 it writes nothing else, and
    // `addr` is only a lookup key for the kernel, which checks it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut node as *mut libc::c_int,
            core::ptr::null_mut::<libc::c_ulong>(),
            0 as libc::c_ulong,
            addr,
            MPOL_F_NODE | MPOL_F_ADDR,
        )
    };
    (rc == 0 && node >= 0).then_some(node as usize)
}
