//! Parser for the kernel's CPU list format (`"0-3,8,10-11"`), as found in
//! sysfs `cpulist` files.

use std::vec::Vec;

/// Why a CPU list did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CpuListError;

/// Parses a kernel CPU list such as `"0-3,8"` into ascending CPU numbers.
/// An empty (or all-whitespace) list is a node without CPUs and yields `[]`.
pub(crate) fn parse_cpulist(text: &str) -> Result<Vec<usize>, CpuListError> {
    let mut cpus = Vec::new();
    for part in text
        .trim()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let lo: usize = lo.trim().parse().map_err(|_| CpuListError)?;
                let hi: usize = hi.trim().parse().map_err(|_| CpuListError)?;
                if hi < lo {
                    return Err(CpuListError);
                }
                cpus.extend(lo..=hi);
            }
            None => cpus.push(part.parse().map_err(|_| CpuListError)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}
