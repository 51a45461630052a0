//! Whole-device passes: assembly (reconcile after a restart or crash),
//! scrub (find and fix silent damage) and resync (bring a device back).

use std::io;
use std::string::ToString;
use std::vec::Vec;

use super::block::{self, AlignedBuf, BlockState, Corruption};
use super::device::BlockDevice;
use super::merkle::{MerkleTree, BAD_LEAF};
use super::writer::{
    state_leaf, Member, MemberState, Meta, Mirror, MirrorConfig, MirrorEvent, Problem,
};
use super::{DeviceId, MirrorError};

/// Blocks read per call by the whole-device passes.
const SCAN_CHUNK: u64 = 256;

/// Is this the error of a device that is gone altogether (rather than one bad block)?
fn device_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENODEV) | Some(libc::ENXIO) | Some(libc::ESHUTDOWN) | Some(libc::EBADF)
    )
}

/// What scrub should do about each difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScrubMode {
    /// Rewrite bad copies from good ones (the default).
    #[default]
    Repair,
    /// Only report.
    ReportOnly,
}

/// What scrub (or assembly, or resync) did about one bad copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScrubAction {
    /// Rewritten from a good copy on device `from`.
    Repaired {
        /// Source of the good copy.
        from: DeviceId,
    },
    /// Left alone ([`ScrubMode::ReportOnly`]).
    Reported,
    /// No device holds a good copy: the block's data is lost.
    Unrecoverable,
    /// The rewrite failed, so the device was taken out of the mirror.
    DeviceFailed,
    /// The difference was gone when the block was read again (a transient
    /// read fault).
    ClearedOnReread,
}

/// One bad copy of one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubFinding {
    /// The device holding the bad copy.
    pub device: DeviceId,
    /// The block.
    pub lba: u64,
    /// What was wrong.
    pub problem: Problem,
    /// What was done.
    pub action: ScrubAction,
}

/// The result of [`Mirror::scrub`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Devices read end to end.
    pub devices_scanned: usize,
    /// Blocks read and digested (all devices).
    pub blocks_scanned: u64,
    /// Merkle-tree nodes compared to locate the differences.
    pub nodes_compared: u64,
    /// Every bad copy found, in device then block order.
    pub findings: Vec<ScrubFinding>,
}

impl ScrubReport {
    /// Findings that were repaired.
    pub fn repaired(&self) -> usize {
        self.count(|a| matches!(a, ScrubAction::Repaired { .. }))
    }

    /// Findings with no good copy anywhere.
    pub fn unrecoverable(&self) -> usize {
        self.count(|a| *a == ScrubAction::Unrecoverable)
    }

    fn count(&self, f: impl Fn(&ScrubAction) -> bool) -> usize {
        self.findings.iter().filter(|x| f(&x.action)).count()
    }
}

/// The result of [`Mirror::assemble`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssemblyReport {
    /// Blocks in the mirror.
    pub blocks: u64,
    /// Copies that were rewritten from the newest valid copy: torn or
    /// corrupt copies, and copies left behind by a crash between devices.
    pub repaired: Vec<ScrubFinding>,
    /// Of those, valid but older copies (a write that reached some devices
    /// but not all before a crash; it converges to the newest version).
    pub older_copies_replaced: u64,
    /// Blocks with no valid copy on any device: reads of them fail with
    /// [`MirrorError::Unrecoverable`] until they are rewritten.
    pub lost: Vec<u64>,
    /// The highest sequence number found.
    pub max_seq: u64,
}

/// The result of [`Mirror::readd`] and [`Mirror::replace`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResyncReport {
    /// The device brought back.
    pub device: DeviceId,
    /// Blocks read from it and digested.
    pub blocks_scanned: u64,
    /// Merkle-tree nodes compared.
    pub nodes_compared: u64,
    /// Blocks copied to it.
    pub blocks_copied: u64,
    /// Blocks that no in-sync device holds a good copy of.
    pub unrecoverable: Vec<u64>,
}

/// A copy's verdict during assembly.
type Verdict = Result<BlockState, Problem>;

impl Mirror {
    /// Builds a mirror from `devices` (at least two, same block size; the
    /// capacity is the smallest device's), reconciling their contents.
    ///
    /// Every block of every device is read and verified. For each block the
    /// valid copy with the highest sequence number wins (an all-zero block
    /// counts as valid, sequence 0) and every other copy is rewritten from
    /// it. A device that cannot be read or repaired is taken out with a
    /// warning, as at run time. Fresh, zero-filled devices assemble into an
    /// empty mirror.
    pub fn assemble(
        devices: Vec<Box<dyn BlockDevice>>,
        config: MirrorConfig,
    ) -> Result<(Mirror, AssemblyReport), MirrorError> {
        let mut m = Mirror::skeleton(devices, &config)?;
        let bs = m.block_size;
        let n = m.members.len();
        let mut bufs: Vec<AlignedBuf> = (0..n).map(|_| AlignedBuf::zeroed(0)).collect();
        let mut report = AssemblyReport {
            blocks: m.capacity,
            ..AssemblyReport::default()
        };
        let mut verdicts: Vec<Vec<Verdict>> = std::vec![Vec::new(); n];
        let mut start = 0u64;
        while start < m.capacity {
            let count = SCAN_CHUNK.min(m.capacity - start);
            for d in 0..n {
                verdicts[d].clear();
                if m.members[d].state != MemberState::InSync {
                    continue;
                }
                bufs[d].resize(count as usize * bs);
                match read_chunk(&mut *m.members[d].dev, start, &mut bufs[d], bs) {
                    Ok(v) => verdicts[d] = v,
                    Err(e) => m.fail_member(d, "assembly", e.to_string()),
                }
            }
            for k in 0..count as usize {
                let lba = start + k as u64;
                let winner = (0..n)
                    .filter(|&d| m.members[d].state == MemberState::InSync)
                    .filter_map(|d| verdicts[d][k].as_ref().ok().map(|st| (st.seq(), d, *st)))
                    .max_by_key(|&(seq, d, _)| (seq, std::cmp::Reverse(d)));
                let Some((_, from, st)) = winner else {
                    if m.members.iter().any(|x| x.state == MemberState::InSync) {
                        report.lost.push(lba);
                        m.set_meta(
                            lba,
                            Meta {
                                seq: Meta::LOST,
                                crc: 0,
                            },
                        );
                    }
                    continue;
                };
                let meta = match st {
                    BlockState::Unwritten => Meta::UNWRITTEN,
                    BlockState::Written { seq, crc, .. } => Meta { seq, crc },
                };
                report.max_seq = report.max_seq.max(meta.seq);
                m.set_meta(lba, meta);
                for (d, theirs) in verdicts.iter().enumerate() {
                    if d == from || m.members[d].state != MemberState::InSync {
                        continue;
                    }
                    let problem = match &theirs[k] {
                        Ok(s) if state_leaf(*s) == meta.leaf() => continue,
                        Ok(s) => {
                            report.older_copies_replaced += 1;
                            Problem::Corrupt(Corruption::Stale {
                                found: s.seq(),
                                expected: meta.seq,
                            })
                        }
                        Err(p) => p.clone(),
                    };
                    m.scratch.resize(bs);
                    m.scratch.copy_from_slice(&bufs[from][k * bs..(k + 1) * bs]);
                    let action = match m.write_scratch(d, lba) {
                        Ok(()) => ScrubAction::Repaired { from },
                        Err(e) => {
                            m.fail_member(d, "an assembly repair", e.to_string());
                            ScrubAction::DeviceFailed
                        }
                    };
                    report.repaired.push(ScrubFinding {
                        device: d,
                        lba,
                        problem,
                        action,
                    });
                }
            }
            start += count;
        }
        if m.in_sync().is_empty() {
            return Err(m.no_healthy());
        }
        m.next_seq = report.max_seq + 1;
        m.tree.refresh();
        Ok((m, report))
    }

    /// Reads `device` end to end and digests every block into a Merkle leaf
    /// (unreadable or invalid copies get [`BAD_LEAF`]).
    fn digest_device(&mut self, device: DeviceId) -> io::Result<Vec<u64>> {
        let bs = self.block_size;
        let mut leaves = Vec::with_capacity(self.capacity as usize);
        let mut start = 0u64;
        while start < self.capacity {
            let count = SCAN_CHUNK.min(self.capacity - start);
            self.chunk.resize(count as usize * bs);
            let verdicts = read_chunk(&mut *self.members[device].dev, start, &mut self.chunk, bs)?;
            leaves.extend(verdicts.iter().map(|v| match v {
                Ok(st) => state_leaf(*st),
                Err(_) => BAD_LEAF,
            }));
            start += count;
        }
        Ok(leaves)
    }

    /// Finds an in-sync device other than `not` holding a good copy of
    /// `lba`; leaves that copy in `scratch`.
    fn find_good_copy(&mut self, lba: u64, not: DeviceId) -> Option<DeviceId> {
        let candidates: Vec<DeviceId> = self.in_sync().into_iter().filter(|&s| s != not).collect();
        candidates
            .into_iter()
            .find(|&s| self.examine(s, lba).is_ok())
    }

    /// Reads every in-sync device end to end and compares each, through
    /// Merkle trees, with the mirror's expected state; every difference is
    /// re-examined and then repaired from a good copy, reported
    /// ([`ScrubMode::ReportOnly`]) or declared unrecoverable.
    pub fn scrub(&mut self, mode: ScrubMode) -> Result<ScrubReport, MirrorError> {
        let devices = self.in_sync();
        if devices.is_empty() {
            return Err(self.no_healthy());
        }
        let mut report = ScrubReport::default();
        for d in devices {
            if self.members[d].state != MemberState::InSync {
                continue;
            }
            let leaves = match self.digest_device(d) {
                Ok(l) => l,
                Err(e) => {
                    self.fail_member(d, "a scrub", e.to_string());
                    continue;
                }
            };
            report.devices_scanned += 1;
            report.blocks_scanned += leaves.len() as u64;
            let mut disk = MerkleTree::from_leaves(&leaves);
            let diff = self.tree.diff(&mut disk);
            report.nodes_compared += diff.nodes_compared;
            for lba in diff.leaves {
                if self.members[d].state != MemberState::InSync {
                    break;
                }
                let problem = match self.examine(d, lba) {
                    Ok(_) => {
                        report.findings.push(ScrubFinding {
                            device: d,
                            lba,
                            problem: Problem::ReadError(
                                "differed during the scan, good when read again".to_string(),
                            ),
                            action: ScrubAction::ClearedOnReread,
                        });
                        continue;
                    }
                    Err(p) => p,
                };
                let action = if self.meta[lba as usize].seq == Meta::LOST {
                    ScrubAction::Unrecoverable
                } else if mode == ScrubMode::ReportOnly {
                    ScrubAction::Reported
                } else if let Some(from) = self.find_good_copy(lba, d) {
                    match self.write_scratch(d, lba) {
                        Ok(()) => {
                            self.emit(MirrorEvent::Repaired {
                                device: d,
                                lba,
                                problem: problem.clone(),
                                from,
                            });
                            ScrubAction::Repaired { from }
                        }
                        Err(e) => {
                            self.fail_member(d, "a scrub repair", e.to_string());
                            ScrubAction::DeviceFailed
                        }
                    }
                } else {
                    ScrubAction::Unrecoverable
                };
                report.findings.push(ScrubFinding {
                    device: d,
                    lba,
                    problem,
                    action,
                });
            }
        }
        Ok(report)
    }

    /// Brings failed `device` back (after its fault cleared): its blocks are
    /// digested and compared with the expected state through Merkle trees,
    /// and only the differing blocks are copied from a good copy.
    pub fn readd(&mut self, device: DeviceId) -> Result<ResyncReport, MirrorError> {
        self.check_device(device)?;
        if self.members[device].state == MemberState::InSync {
            return Err(MirrorError::AlreadyInSync { device });
        }
        self.resync(device)
    }

    /// Replaces failed `device` with `new` (same block size, at least the
    /// mirror's capacity) and resynchronises it.
    pub fn replace(
        &mut self,
        device: DeviceId,
        new: Box<dyn BlockDevice>,
    ) -> Result<ResyncReport, MirrorError> {
        self.check_device(device)?;
        if self.members[device].state == MemberState::InSync {
            return Err(MirrorError::AlreadyInSync { device });
        }
        if new.block_size() != self.block_size {
            return Err(MirrorError::BlockSizeMismatch {
                device,
                name: new.name().to_string(),
                found: new.block_size(),
                expected: self.block_size,
            });
        }
        if new.blocks() < self.capacity {
            return Err(MirrorError::ReplacementTooSmall {
                name: new.name().to_string(),
                have: new.blocks(),
                need: self.capacity,
            });
        }
        let reason = std::format!("replaced by {}", new.name());
        self.members[device] = Member {
            dev: new,
            state: MemberState::Failed { reason },
        };
        self.resync(device)
    }

    fn resync(&mut self, device: DeviceId) -> Result<ResyncReport, MirrorError> {
        if self.in_sync().is_empty() {
            return Err(self.no_healthy());
        }
        let name = self.members[device].dev.name().to_string();
        let failed = |source: io::Error| MirrorError::ResyncFailed {
            device,
            name: name.clone(),
            source,
        };
        let leaves = self.digest_device(device).map_err(failed)?;
        let mut disk = MerkleTree::from_leaves(&leaves);
        let diff = self.tree.diff(&mut disk);
        let mut report = ResyncReport {
            device,
            blocks_scanned: leaves.len() as u64,
            nodes_compared: diff.nodes_compared,
            ..ResyncReport::default()
        };
        for lba in diff.leaves {
            if self.meta[lba as usize].seq != Meta::LOST
                && self.find_good_copy(lba, device).is_some()
            {
                self.write_scratch(device, lba).map_err(failed)?;
                report.blocks_copied += 1;
            } else {
                report.unrecoverable.push(lba);
            }
        }
        self.members[device].state = MemberState::InSync;
        self.emit(MirrorEvent::Resynced {
            device,
            copied: report.blocks_copied,
        });
        Ok(report)
    }
}

/// Reads `buf.len() / bs` blocks at `start` and verifies each copy (address
/// and checksum). A failed multi-block read is retried block by block so one
/// bad sector does not condemn its neighbours; a device that is gone
/// altogether fails the whole call.
fn read_chunk(
    dev: &mut dyn BlockDevice,
    start: u64,
    buf: &mut AlignedBuf,
    bs: usize,
) -> io::Result<Vec<Verdict>> {
    let count = buf.len() / bs;
    let whole = dev.read_blocks(start, buf);
    let mut out = Vec::with_capacity(count);
    match whole {
        Ok(()) => {
            for k in 0..count {
                let lba = start + k as u64;
                out.push(block::verify(&buf[k * bs..(k + 1) * bs], lba).map_err(Problem::Corrupt));
            }
        }
        Err(e) if device_gone(&e) => return Err(e),
        Err(_) => {
            for k in 0..count {
                let lba = start + k as u64;
                let one = &mut buf[k * bs..(k + 1) * bs];
                out.push(match dev.read_blocks(lba, one) {
                    Ok(()) => block::verify(one, lba).map_err(Problem::Corrupt),
                    Err(e) if device_gone(&e) => return Err(e),
                    Err(e) => Err(Problem::ReadError(e.to_string())),
                });
            }
        }
    }
    Ok(out)
}
