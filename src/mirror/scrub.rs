//! Whole-device passes: assembly (reconcile after a restart or crash),
//! scrub (find and fix silent damage) and resync (bring a device back).

use std::io;
use std::string::ToString;
use std::vec::Vec;

use super::block::{self, AlignedBuf, BlockState};
use super::device::BlockDevice;
use super::merkle::{MerkleTree, BAD_LEAF};
use super::writer::{state_leaf, Member, MemberState, Meta, Mirror, MirrorEvent, Problem};
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
///
/// # Examples
///
/// A copy damaged behind the mirror's back is reported, then repaired:
///
/// ```
/// use noderep::cost::PhaseClock;
/// use noderep::mirror::{AlignedBuf, BlockDevice, BlockWrite, FileDevice, Mirror};
/// use noderep::mirror::{ScrubAction, ScrubMode, WarningSink};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = std::env::temp_dir().join(format!("noderep-scrubmode-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// let cfg = FileDevice::builder().blocks(64);
/// let devices: Vec<Box<dyn BlockDevice>> =
///     vec![Box::new(cfg.open(dir.join("a"))?), Box::new(cfg.open(dir.join("b"))?)];
/// let mut mirror = Mirror::builder().warnings(WarningSink::Silent).create(devices)?;
/// mirror.write(5, b"precious")?;
/// let first_data_block = mirror.data_start();
/// let mut devices = mirror.close()?;
/// // Garbage over block 5 of the second device.
/// let mut junk = AlignedBuf::zeroed(4096);
/// junk.fill(0xff);
/// let at = BlockWrite { lba: first_data_block + 5, data: &junk };
/// devices[1].write_blocks(&[at], &mut PhaseClock::disabled())?;
///
/// let (mut mirror, _) = Mirror::builder().warnings(WarningSink::Silent).assemble(devices)?;
/// let report = mirror.scrub(ScrubMode::ReportOnly)?;
/// assert_eq!(report.findings.len(), 1);
/// assert_eq!((report.findings[0].device, report.findings[0].lba), (1, 5));
/// assert_eq!(report.findings[0].action, ScrubAction::Reported);
/// let report = mirror.scrub(ScrubMode::Repair)?;
/// assert_eq!(report.repaired(), 1);
/// assert!(mirror.scrub(ScrubMode::ReportOnly)?.findings.is_empty());
/// # drop(mirror);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
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

/// A member whose superblock generation is behind the array's: it missed
/// updates (it was failed, absent, or a crash interrupted a superblock
/// update). Assembly resynchronised it instead of trusting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleMember {
    /// Its role.
    pub device: DeviceId,
    /// Its name.
    pub name: String,
    /// Its superblock generation.
    pub events: u64,
    /// The array's generation.
    pub current: u64,
    /// The array had recorded it as failed.
    pub recorded_failed: bool,
}

/// The result of [`super::MirrorBuilder::assemble`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssemblyReport {
    /// Blocks in the mirror.
    pub blocks: u64,
    /// The array's UUID.
    pub array: uuid::Uuid,
    /// The superblock generation after assembly.
    pub events: u64,
    /// Every member present was closed cleanly.
    pub was_clean: bool,
    /// Write-intent regions in the mirror.
    pub regions_total: u64,
    /// Regions compared across the devices (dirty ones, or all with a full scan).
    pub regions_scanned: u64,
    /// Block addresses compared (each on every device).
    pub blocks_scanned: u64,
    /// Members behind the array's generation, resynchronised.
    pub stale: Vec<StaleMember>,
    /// Roles with no device (only with `allow_missing`): they start failed.
    pub missing: Vec<DeviceId>,
    /// Copies that were rewritten from the newest valid copy: torn or
    /// corrupt copies, copies left behind by a crash between devices, and
    /// stale members' copies.
    pub repaired: Vec<ScrubFinding>,
    /// Of those, valid but older copies.
    pub older_copies_replaced: u64,
    /// Blocks with no acceptable copy on any device: reads of them fail with
    /// [`MirrorError::Unrecoverable`] until they are rewritten.
    pub lost: Vec<u64>,
    /// Of those, blocks whose only valid copies are *older* than the
    /// sequence table's record (rolled back, or zeroed, on every copy).
    pub rolled_back: Vec<u64>,
    /// The highest sequence number found in the compared regions.
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
    /// Reads `device` end to end and digests every block into a Merkle leaf
    /// (unreadable or invalid copies get [`BAD_LEAF`]).
    fn digest_device(&mut self, device: DeviceId) -> io::Result<Vec<u64>> {
        let bs = self.block_size;
        let mut leaves = Vec::with_capacity(self.capacity as usize);
        let mut start = 0u64;
        while start < self.capacity {
            let count = SCAN_CHUNK.min(self.capacity - start);
            self.chunk.resize(count as usize * bs);
            let at = self.layout.data_start + start;
            let verdicts = read_chunk(
                &mut *self.members[device].dev,
                at,
                start,
                &mut self.chunk,
                bs,
            )?;
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
    ///
    /// # Errors
    ///
    /// [`MirrorError::NoHealthyDevice`]; damage is reported in the
    /// [`ScrubReport`], not as an error.
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
    /// only the differing blocks are copied from a good copy, it gets the
    /// current bitmap and sequence table, and the array's superblocks record
    /// it in sync again.
    ///
    /// # Errors
    ///
    /// [`MirrorError::NoSuchDevice`], [`MirrorError::AlreadyInSync`],
    /// [`MirrorError::ResyncFailed`] (it stays failed),
    /// [`MirrorError::NoHealthyDevice`].
    pub fn readd(&mut self, device: DeviceId) -> Result<ResyncReport, MirrorError> {
        self.check_device(device)?;
        if self.members[device].state == MemberState::InSync {
            return Err(MirrorError::AlreadyInSync { device });
        }
        self.resync(device)
    }

    /// Replaces failed `device` with `new` (same block size, at least as many
    /// blocks as the other members need) and resynchronises it: it gets a
    /// new device UUID in `device`'s role, and the old device is no longer a
    /// member (assembling it later is refused).
    ///
    /// # Errors
    ///
    /// As [`Mirror::readd`], and [`MirrorError::BlockSizeMismatch`],
    /// [`MirrorError::ReplacementTooSmall`], [`MirrorError::SameDeviceTwice`]
    /// (`new` is another member's file or device),
    /// [`MirrorError::AlreadyMember`] (`new` belongs to another mirror),
    /// [`MirrorError::OtherBlockSize`]. Every error leaves the mirror as it
    /// was: `device` keeps its old device.
    pub fn replace(
        &mut self,
        device: DeviceId,
        mut new: Box<dyn BlockDevice>,
    ) -> Result<ResyncReport, MirrorError> {
        self.check_device(device)?;
        if self.members[device].state == MemberState::InSync {
            return Err(MirrorError::AlreadyInSync { device });
        }
        // Without a device in sync there is nothing to copy from: refuse
        // before the role changes hands.
        if self.in_sync().is_empty() {
            return Err(self.no_healthy());
        }
        if new.block_size() != self.block_size {
            return Err(MirrorError::BlockSizeMismatch {
                device,
                name: new.name().to_string(),
                found: new.block_size(),
                expected: self.block_size,
            });
        }
        let need = self.layout.device_blocks();
        if new.blocks() < need {
            return Err(MirrorError::ReplacementTooSmall {
                name: new.name().to_string(),
                have: new.blocks(),
                need,
            });
        }
        if let Some(id) = new.identity() {
            if let Some(m) = self
                .members
                .iter()
                .enumerate()
                .find(|(d, m)| *d != device && m.dev.identity() == Some(id))
            {
                return Err(MirrorError::SameDeviceTwice {
                    first: m.1.dev.name().to_string(),
                    second: new.name().to_string(),
                    how: "the replacement is the same file or device as a member".to_string(),
                });
            }
        }
        // A device that holds another mirror is not overwritten (as
        // `create` refuses it); one that held this mirror's role before
        // (the same device, back) or nothing may be.
        match super::assemble::read_superblock(&mut *new, self.block_size) {
            Ok((sb, _)) if sb.array != self.array => {
                return Err(MirrorError::AlreadyMember {
                    name: new.name().to_string(),
                    array: sb.array,
                    role: sb.role as usize,
                });
            }
            Err(e @ MirrorError::OtherBlockSize { .. }) => return Err(e),
            _ => {}
        }
        let reason = std::format!("replaced by {}", new.name());
        self.members[device] = Member {
            dev: new,
            state: MemberState::Failed { reason },
            uuid: uuid::Uuid::new_v4(),
        };
        // The new holder of the role is recorded (still failed) first, so
        // the old device is refused from now on.
        self.commit_sb(false)?;
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
        self.write_all_metadata(device)?;
        self.write_sb_to(device)?;
        self.members[device].state = MemberState::InSync;
        self.commit_sb(false)?;
        self.emit(MirrorEvent::Resynced {
            device,
            copied: report.blocks_copied,
        });
        Ok(report)
    }
}

/// Reads `buf.len() / bs` blocks at physical block `at` (logical address
/// `start`) and verifies each copy (address and checksum). A failed
/// multi-block read is retried block by block so one bad sector does not
/// condemn its neighbours; a device that is gone altogether fails the whole
/// call.
pub(crate) fn read_chunk(
    dev: &mut dyn BlockDevice,
    at: u64,
    start: u64,
    buf: &mut AlignedBuf,
    bs: usize,
) -> io::Result<Vec<Verdict>> {
    let count = buf.len() / bs;
    let whole = dev.read_blocks(at, buf);
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
                out.push(match dev.read_blocks(at + k as u64, one) {
                    Ok(()) => block::verify(one, lba).map_err(Problem::Corrupt),
                    Err(e) if device_gone(&e) => return Err(e),
                    Err(e) => Err(Problem::ReadError(e.to_string())),
                });
            }
        }
    }
    Ok(out)
}
