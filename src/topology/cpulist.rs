//! The kernel's CPU list format (`"0-3,8,10-11"`), as found in sysfs
//! `cpulist` files: parsing and writing.

use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

/// CPU numbers a list may name: 0 to 65535, eight times Linux's largest
/// `NR_CPUS` (8192).
pub const MAX_CPUS: usize = 1 << 16;

/// Why a CPU list did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuListError;

/// Parses a kernel CPU list such as `"0-3,8"` into ascending CPU numbers.
/// An empty (or all-whitespace) list is a node without CPUs and yields `[]`.
/// Users call it as `Topology::parse_cpulist`, whose error names the text.
///
/// # Errors
///
/// `CpuListError` when a part is not a number or a range `lo-hi` with
/// `lo <= hi`, or names a CPU at or above `MAX_CPUS`.
pub fn parse_cpulist(text: &str) -> Result<Vec<usize>, CpuListError> {
    // One flag per CPU number seen: however many (overlapping) ranges the
    // text holds, the work and the memory stay bounded by MAX_CPUS.
    let mut seen: Vec<bool> = Vec::new();
    let number = |s: &str| match s.trim().parse::<usize>() {
        Ok(n) if n < MAX_CPUS => Ok(n),
        _ => Err(CpuListError),
    };
    for part in text
        .trim()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (number(lo)?, number(hi)?),
            None => {
                let n = number(part)?;
                (n, n)
            }
        };
        if hi < lo {
            return Err(CpuListError);
        }
        if seen.len() <= hi {
            seen.resize(hi + 1, false);
        }
        seen[lo..=hi].fill(true);
    }
    Ok(seen
        .iter()
        .enumerate()
        .filter_map(|(cpu, &on)| on.then_some(cpu))
        .collect())
}

/// Writes CPU numbers in the kernel's CPU list format, ranges for runs of
/// consecutive numbers: `[0, 1, 2, 5]` becomes `"0-2,5"` (the inverse of
/// [`parse_cpulist`] for ascending lists). Users call it as
/// `Topology::format_cpulist`.
pub fn format_cpulist(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if j > i {
            format!("{}-{}", cpus[i], cpus[j])
        } else {
            cpus[i].to_string()
        });
        i = j + 1;
    }
    parts.join(",")
}
