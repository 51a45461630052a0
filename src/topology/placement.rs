//! Where a thread runs and where memory lives: getcpu, pinning, the NUMA
//! node of an address (move_pages without target nodes), and moving pages to
//! a node.
//!
//! First touch places a page on the node of the thread that touches it, but
//! only a fresh page: an allocator may hand a thread memory that another
//! thread touched on another node (glibc gives a new thread the arena of an
//! exited one). [`release_free_heap_pages`] returns the allocator's free
//! pages to the kernel so that the next allocations get fresh ones, and
//! [`local_memory_node`] and [`move_to_node`] let a caller move memory that
//! is already placed to where its own first touch would have put it.

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

/// The NUMA node holding the page at address `addr`: `nodes_of_pages(&[addr])`
/// for one page, kept at this path for code written against it.
#[doc(hidden)]
pub fn node_of_address(addr: usize) -> Option<usize> {
    nodes_of_pages(&[addr]).and_then(|n| n[0])
}

/// The NUMA node of each page holding the given addresses (pass `ptr as
/// usize`), as the kernel reports it without touching them (move_pages(2)
/// with no target nodes): `Some(node)` for a page in memory, `None` for a
/// page never touched (or not mapped). Returns `None` altogether where the
/// kernel does not answer (no NUMA support, or a seccomp filter). For one
/// address: `nodes_of_pages(&[addr]).and_then(|n| n[0])`.
///
/// It does not use get_mempolicy(2) with `MPOL_F_NODE | MPOL_F_ADDR`: for a
/// page never touched, Linux 6.1 answers with a node anyway (node 0 in the
/// emulated 2-node guest of `scripts/numa-vm.sh`, while move_pages said the
/// page was not in memory), so a placement check could pass without the
/// page existing.
pub fn nodes_of_pages(addrs: &[usize]) -> Option<std::vec::Vec<Option<usize>>> {
    let pages: std::vec::Vec<usize> = addrs.to_vec();
    let status = move_pages(&pages, None)?;
    Some(
        status
            .into_iter()
            .map(|s| usize::try_from(s).ok())
            .collect(),
    )
}

/// move_pages(2) for this process: with `to == None` it only reports each
/// page's node (or a negative errno); with `Some(node)` it moves every page
/// there (`MPOL_MF_MOVE`: pages shared with another process stay put) and
/// reports where each page is afterwards. `None` where the kernel refuses.
fn move_pages(pages: &[usize], to: Option<libc::c_int>) -> Option<std::vec::Vec<libc::c_int>> {
    const MPOL_MF_MOVE: libc::c_int = 1 << 1;
    if pages.is_empty() {
        return Some(std::vec::Vec::new());
    }
    let ptrs: std::vec::Vec<*const libc::c_void> =
        pages.iter().map(|&a| a as *const libc::c_void).collect();
    let nodes: Option<std::vec::Vec<libc::c_int>> = to.map(|n| std::vec![n; pages.len()]);
    let mut status: std::vec::Vec<libc::c_int> = std::vec![-1; pages.len()];
    // SAFETY: `ptrs`, `status` and (if given) `nodes` all hold
    // `pages.len()` elements and live across the call; the kernel reads
    // `ptrs` and `nodes` and writes one c_int per page into `status`. The
    // addresses are lookup keys that the kernel checks; moving a page keeps
    // its contents and its virtual address, so no Rust reference is affected.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0 as libc::c_int,
            pages.len() as libc::c_ulong,
            ptrs.as_ptr(),
            nodes.as_ref().map_or(core::ptr::null(), |n| n.as_ptr()),
            status.as_mut_ptr(),
            if to.is_some() { MPOL_MF_MOVE } else { 0 },
        )
    };
    (rc >= 0).then_some(status)
}

/// The node on which the calling thread's first touch places memory: its
/// CPU's node, or, for a node without memory, the nearest node with memory
/// (or wherever the thread's memory policy says). Found by touching one
/// fresh anonymous page; `None` where the kernel does not say.
pub fn local_memory_node() -> Option<usize> {
    let page = page_size();
    // SAFETY: an anonymous private mapping of one page at an address of the
    // kernel's choosing; it aliases nothing and is unmapped below.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: `p` is a fresh, writable, page-sized mapping owned here.
    unsafe { core::ptr::write_volatile(p.cast::<u8>(), 1) };
    let node = nodes_of_pages(&[p as usize]).and_then(|n| n[0]);
    // SAFETY: unmaps exactly the mapping made above; nothing refers to it.
    unsafe { libc::munmap(p, page) };
    node
}

/// Moves every page overlapping the `(address, length in bytes)` ranges to
/// `node` (move_pages(2) with `MPOL_MF_MOVE`: pages shared with another
/// process stay put). Returns how many of those pages are on `node`
/// afterwards, or `None` where the kernel does not answer.
pub fn move_to_node(ranges: &[(usize, usize)], node: usize) -> Option<usize> {
    let page = page_size();
    let mut pages: std::vec::Vec<usize> = std::vec::Vec::new();
    for &(start, len) in ranges.iter().filter(|r| r.1 > 0) {
        let first = start & !(page - 1);
        let last = (start + len - 1) & !(page - 1);
        for p in (first..=last).step_by(page) {
            if !pages.contains(&p) {
                pages.push(p);
            }
        }
    }
    let node = libc::c_int::try_from(node).ok()?;
    let status = move_pages(&pages, Some(node))?;
    Some(status.iter().filter(|&&s| s == node).count())
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two())
        .unwrap_or(4096)
}

/// Gives the pages of the C allocator's free memory back to the kernel
/// (glibc `malloc_trim(0)`, which walks every arena), so that memory
/// allocated next is fresh and placed by the first touch of the thread that
/// allocates it, not where a previous owner of the arena touched it. Pages
/// that also hold live allocations keep their node. Does nothing on other
/// C libraries.
pub(crate) fn release_free_heap_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused allocator memory to the
    // kernel; it is thread-safe and invalidates no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}
