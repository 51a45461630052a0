//! Building a mirror: [`MirrorBuilder`] creates a new array (fresh
//! superblocks, metadata and zeroed data areas) or assembles an existing one
//! from its devices, checking each device's superblock first.
//!
//! # How it works
//!
//! Assembly reads both superblock copies of every device and keeps the
//! newest valid one, then refuses — with an error that names the device,
//! says what was found and what to do — a device without a superblock, a
//! device of another array, the same device given twice (by device UUID
//! and by `(st_dev, st_ino)`), a device that is not (or no longer) the
//! holder of its role, a device smaller than the recorded layout, two
//! halves that each recorded the other as failed (split brain), and, unless
//! allowed, a missing member. The device with the highest event count
//! speaks for the array; a member with a lower count is *stale*: it is named
//! in the report and resynchronised, never trusted.
//!
//! The expected state of every block is then loaded from the sequence
//! table (the newest valid copy of each table block among the up-to-date
//! members). Regions whose write-intent bit is set on any up-to-date member
//! (or whose bitmap or table block is unreadable) are compared across the
//! devices: the newest valid copy that is not older than the table's record
//! wins and every other copy is rewritten from it; a block with no such copy
//! is reported lost (and rolled back, if valid copies exist but are all
//! older than the record). Clean regions are not read at all.
//!
//! # Trade-offs
//!
//! Assembly time is proportional to the metadata plus the dirty regions,
//! not to the device size (a full scan is available with
//! [`MirrorBuilder::full_scan`]). See `intent.rs` for the window in which a
//! rollback of every copy of a block is not detectable.

use std::io;
use std::string::{String, ToString};
use std::vec::Vec;

use uuid::Uuid;

use super::block::{AlignedBuf, BlockState, Corruption};
use super::device::{BlockDevice, BlockWrite, DeviceStats};
use super::scrub::{read_chunk, AssemblyReport, ScrubAction, ScrubFinding, StaleMember};
use super::superblock::{
    check_meta, le_u32, newest, table_entry, Layout, SbProblem, Superblock, BITMAP_MAGIC,
    MAX_CAPACITY, MEMORY_PER_BLOCK, META_HEADER, SB_MAGIC, TABLE_MAGIC,
};
use super::writer::{state_leaf, Member, MemberState, Meta, Mirror, Problem, WarningSink};
use super::{DeviceId, MirrorError};
use crate::cost::PhaseClock;

/// Blocks read per call while scanning.
const SCAN_CHUNK: u64 = 256;

/// Everything the builder can set (read by `Mirror::skeleton`).
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) warnings: WarningSink,
    pub(crate) account_phases: bool,
    pub(crate) region_blocks: u64,
    pub(crate) capacity: Option<u64>,
    pub(crate) bitmap: bool,
    pub(crate) clean_interval: u64,
    pub(crate) full_scan: bool,
    pub(crate) allow_missing: bool,
    pub(crate) min_events: u64,
}

/// Creates or assembles a [`Mirror`].
///
/// # Examples
///
/// ```
/// use noderep::mirror::{BlockDevice, FileDevice, Mirror, WarningSink};
/// # fn main() -> Result<(), noderep::mirror::MirrorError> {
/// # let dir = std::env::temp_dir().join(format!("noderep-mirror-builder-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).expect("temp dir");
/// let builder = Mirror::builder().region_blocks(64).warnings(WarningSink::Silent);
/// // Devices sized for exactly 1000 data blocks plus the metadata.
/// let cfg = FileDevice::builder().blocks(builder.device_blocks(1000, 4096)?);
/// let devs: Vec<Box<dyn BlockDevice>> = vec![
///     Box::new(cfg.open(dir.join("a"))?),
///     Box::new(cfg.open(dir.join("b"))?),
/// ];
/// let mirror = builder.clone().create(devs)?;
/// assert_eq!(mirror.capacity(), 1000);
/// let (mirror, report) = builder.assemble(mirror.into_devices())?;
/// assert!(report.lost.is_empty() && report.stale.is_empty());
/// # drop(mirror);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MirrorBuilder {
    opts: Options,
}

impl Default for MirrorBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl MirrorBuilder {
    /// Defaults: warnings on stderr, no phase accounting, 1024-block
    /// regions, write-intent bitmap on, a pass every 4096 blocks written, capacity
    /// from the devices (which must then be the same size).
    pub fn new() -> Self {
        Self {
            opts: Options {
                warnings: WarningSink::Stderr,
                account_phases: false,
                region_blocks: 1024,
                capacity: None,
                bitmap: true,
                clean_interval: 4096,
                full_scan: false,
                allow_missing: false,
                min_events: 0,
            },
        }
    }

    /// Where warnings (a device failed, a block was repaired) go.
    pub fn warnings(mut self, sink: WarningSink) -> Self {
        self.opts.warnings = sink;
        self
    }

    /// Record the time of each write phase (two clock reads per phase).
    pub fn account_phases(mut self, on: bool) -> Self {
        self.opts.account_phases = on;
        self
    }

    /// Data blocks per write-intent region (a power of two; at creation
    /// only: assembly uses the recorded value). Smaller regions mean less
    /// to compare after a crash and more bitmap updates.
    pub fn region_blocks(mut self, blocks: u64) -> Self {
        self.opts.region_blocks = blocks;
        self
    }

    /// Most data blocks a mirror may have: 2^40. The in-memory state
    /// (about 56 bytes per block while the mirror is built) is the
    /// practical bound: `create` and `assemble` return
    /// [`MirrorError::OutOfMemory`] before touching a device if it cannot be
    /// allocated.
    pub const MAX_CAPACITY: u64 = MAX_CAPACITY;

    /// Data blocks of a new mirror (at creation only), 1 to
    /// [`MAX_CAPACITY`](Self::MAX_CAPACITY). Without it every device must
    /// have the same size and the mirror uses all of it (up to
    /// [`MAX_CAPACITY`](Self::MAX_CAPACITY) blocks).
    pub fn capacity(mut self, blocks: u64) -> Self {
        self.opts.capacity = Some(blocks);
        self
    }

    /// Keep the write-intent bitmap (the default). Off: every region counts
    /// as dirty from assembly until [`Mirror::close`], so assembly after a
    /// crash compares every block (the behaviour of a mirror without one).
    pub fn write_intent_bitmap(mut self, on: bool) -> Self {
        self.opts.bitmap = on;
        self
    }

    /// Blocks written between passes that record the writes in the
    /// sequence table and clear idle regions' bits (default 4096: one pass
    /// costs a write of up to 17 table blocks per device, and bounds the
    /// window in which a rollback of every copy goes unnoticed).
    pub fn clean_interval(mut self, blocks: u64) -> Self {
        self.opts.clean_interval = blocks;
        self
    }

    /// Compare every block of every device at assembly, whatever the
    /// bitmap says (a consistency check; slow: O(device size)).
    pub fn full_scan(mut self, on: bool) -> Self {
        self.opts.full_scan = on;
        self
    }

    /// Assemble even when members are missing: their roles start failed
    /// (replace them with [`Mirror::replace`]).
    pub fn allow_missing(mut self, on: bool) -> Self {
        self.opts.allow_missing = on;
        self
    }

    /// Refuse to assemble devices whose newest superblock generation is
    /// below `events` (the value [`Mirror::events`] returned earlier, kept
    /// elsewhere): catches every device being rolled back to an older image.
    pub fn min_events(mut self, events: u64) -> Self {
        self.opts.min_events = events;
        self
    }

    /// Blocks each device needs for a mirror of `capacity` data blocks of
    /// `block_size` bytes with this builder's region size (metadata
    /// included): the size to give [`super::DeviceBuilder::blocks`].
    ///
    /// # Errors
    ///
    /// [`MirrorError::BadBlockSize`], [`MirrorError::BadRegionSize`],
    /// [`MirrorError::BadCapacity`] (0 or above
    /// [`MAX_CAPACITY`](Self::MAX_CAPACITY)).
    pub fn device_blocks(&self, capacity: u64, block_size: usize) -> Result<u64, MirrorError> {
        super::device::check_block_size(block_size)?;
        self.check_region()?;
        check_capacity(capacity)?;
        Ok(Layout::new(block_size, capacity, self.opts.region_blocks).device_blocks())
    }

    fn check_region(&self) -> Result<(), MirrorError> {
        let r = self.opts.region_blocks;
        if !r.is_power_of_two() || r > 1 << 30 {
            return Err(MirrorError::BadRegionSize { region_blocks: r });
        }
        Ok(())
    }

    /// Creates a new mirror on `devices` (at least two, same block size):
    /// zeroes their metadata and data areas, writes fresh superblocks
    /// (a new array UUID, a device UUID and role per device, in the order
    /// given), an empty bitmap and an empty sequence table.
    ///
    /// # Errors
    ///
    /// [`MirrorError::TooFewDevices`], [`MirrorError::TooManyDevices`],
    /// [`MirrorError::BlockSizeMismatch`], [`MirrorError::SameDeviceTwice`],
    /// [`MirrorError::AlreadyMember`] (a device holds a mirror superblock:
    /// assemble it instead), [`MirrorError::SizeMismatch`] (devices differ in
    /// size and no [`MirrorBuilder::capacity`] was given),
    /// [`MirrorError::TooSmall`], [`MirrorError::Create`] (a device could
    /// not be written).
    pub fn create(self, mut devices: Vec<Box<dyn BlockDevice>>) -> Result<Mirror, MirrorError> {
        self.check_region()?;
        let bs = common_block_size(&devices, 2)?;
        check_identities(&devices)?;
        for d in devices.iter_mut() {
            match read_superblock(&mut **d, bs) {
                Ok((sb, _)) => {
                    return Err(MirrorError::AlreadyMember {
                        name: d.name().to_string(),
                        array: sb.array,
                        role: sb.role as usize,
                    })
                }
                Err(e @ MirrorError::OtherBlockSize { .. }) => return Err(e),
                Err(_) => {}
            }
        }
        let region = self.opts.region_blocks;
        let layout = match self.opts.capacity {
            Some(cap) => {
                check_capacity(cap)?;
                Layout::new(bs, cap, region)
            }
            None => {
                let sizes: Vec<u64> = devices.iter().map(|d| d.blocks()).collect();
                if sizes.iter().any(|&s| s != sizes[0]) {
                    return Err(MirrorError::SizeMismatch {
                        sizes: devices
                            .iter()
                            .map(|d| std::format!("{} has {} blocks", d.name(), d.blocks()))
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
                Layout::fit(bs, sizes[0], region).ok_or_else(|| MirrorError::TooSmall {
                    path: devices[0].name().into(),
                    want: Layout::new(bs, 1, region).device_blocks(),
                    have: sizes[0],
                })?
            }
        };
        for d in &devices {
            if d.blocks() < layout.device_blocks() {
                return Err(MirrorError::TooSmall {
                    path: d.name().into(),
                    want: layout.device_blocks(),
                    have: d.blocks(),
                });
            }
        }
        check_memory(layout.capacity)?;
        let array = Uuid::new_v4();
        let mut members = Vec::with_capacity(devices.len());
        for mut dev in devices {
            dev.zero_blocks(0, layout.device_blocks())
                .map_err(|source| MirrorError::Create {
                    name: dev.name().to_string(),
                    source,
                })?;
            members.push(Member {
                dev,
                state: MemberState::InSync,
                uuid: Uuid::new_v4(),
            });
        }
        let mut m = Mirror::skeleton(members, layout, array, &self.opts);
        m.events = 1;
        if !m.bitmap {
            m.reset_dirty(std::vec![true; layout.regions() as usize]);
        }
        for d in 0..m.members.len() {
            m.write_all_metadata(d)
                .and_then(|()| m.write_sb_to(d))
                .map_err(|e| MirrorError::Create {
                    name: m.members[d].dev.name().to_string(),
                    source: io::Error::other(e.to_string()),
                })?;
        }
        Ok(m)
    }

    /// Assembles an existing mirror from its devices (in any order; they
    /// are put back in role order), checking every superblock, resyncing
    /// stale members and the dirty regions (see the [module docs](super)).
    ///
    /// # Errors
    ///
    /// [`MirrorError::NotAMember`] (no or damaged superblock),
    /// [`MirrorError::UnsupportedFormat`], [`MirrorError::ForeignDevice`],
    /// [`MirrorError::SameDeviceTwice`], [`MirrorError::Replaced`],
    /// [`MirrorError::TooSmallForArray`], [`MirrorError::MissingMember`],
    /// [`MirrorError::SplitBrain`], [`MirrorError::OlderThanExpected`],
    /// [`MirrorError::BlockSizeMismatch`], [`MirrorError::TooFewDevices`],
    /// [`MirrorError::NoHealthyDevice`] (no device could be read).
    pub fn assemble(
        self,
        mut devices: Vec<Box<dyn BlockDevice>>,
    ) -> Result<(Mirror, AssemblyReport), MirrorError> {
        let min_devices = if self.opts.allow_missing { 1 } else { 2 };
        let bs = common_block_size(&devices, min_devices)?;
        check_identities(&devices)?;
        let mut sbs: Vec<Superblock> = Vec::with_capacity(devices.len());
        for d in devices.iter_mut() {
            let (sb, _) = read_superblock(&mut **d, bs)?;
            sbs.push(sb);
        }
        // Two devices claiming one device UUID: a copy, or one device twice.
        for i in 0..sbs.len() {
            for j in 0..i {
                if sbs[i].device == sbs[j].device {
                    return Err(MirrorError::SameDeviceTwice {
                        first: devices[j].name().to_string(),
                        second: devices[i].name().to_string(),
                        how: std::format!(
                            "both carry device UUID {} (one is a block-for-block copy of the other, or the same device under two names)",
                            sbs[i].device
                        ),
                    });
                }
            }
        }
        // The newest superblock speaks for the array.
        let r = (0..sbs.len())
            .max_by_key(|&i| (sbs[i].events, std::cmp::Reverse(sbs[i].role)))
            .unwrap_or(0);
        let reference = sbs[r].clone();
        let ref_name = devices[r].name().to_string();
        if reference.events < self.opts.min_events {
            return Err(MirrorError::OlderThanExpected {
                events: reference.events,
                min: self.opts.min_events,
            });
        }
        let layout = reference.layout;
        let n = reference.members.len();
        let mut slots: Vec<Option<(Box<dyn BlockDevice>, Superblock)>> =
            (0..n).map(|_| None).collect();
        for (dev, sb) in devices.into_iter().zip(sbs) {
            if sb.array != reference.array {
                return Err(MirrorError::ForeignDevice {
                    name: dev.name().to_string(),
                    found: sb.array,
                    expected: reference.array,
                    expected_from: ref_name,
                });
            }
            let role = sb.role as usize;
            if sb.members.len() != n || reference.members[role].uuid != sb.device {
                return Err(MirrorError::Replaced {
                    name: dev.name().to_string(),
                    role,
                    uuid: sb.device,
                    holder: reference
                        .members
                        .get(role)
                        .map(|m| m.uuid)
                        .unwrap_or_default(),
                });
            }
            if dev.blocks() < layout.device_blocks() {
                return Err(MirrorError::TooSmallForArray {
                    name: dev.name().to_string(),
                    have: dev.blocks(),
                    need: layout.device_blocks(),
                    capacity: layout.capacity,
                });
            }
            // Split brain: each side recorded the other as failed and went on.
            if role != reference.role as usize
                && sb.members[reference.role as usize].failed
                && reference.members[role].failed
            {
                return Err(MirrorError::SplitBrain {
                    a: ref_name,
                    a_events: reference.events,
                    b: dev.name().to_string(),
                    b_events: sb.events,
                });
            }
            slots[role] = Some((dev, sb));
        }
        let mut report = AssemblyReport {
            blocks: layout.capacity,
            array: reference.array,
            regions_total: layout.regions(),
            was_clean: true,
            ..AssemblyReport::default()
        };
        let mut members = Vec::with_capacity(n);
        let mut fresh: Vec<DeviceId> = Vec::new();
        let mut stale: Vec<DeviceId> = Vec::new();
        for (role, slot) in slots.into_iter().enumerate() {
            let uuid = reference.members[role].uuid;
            match slot {
                None if !self.opts.allow_missing => {
                    return Err(MirrorError::MissingMember {
                        role,
                        uuid,
                        devices: n,
                    })
                }
                None => {
                    report.missing.push(role);
                    members.push(Member {
                        dev: Box::new(Missing {
                            name: std::format!("missing role {role} ({uuid})"),
                            block_size: bs,
                            blocks: layout.device_blocks(),
                        }),
                        state: MemberState::Failed {
                            reason: "missing at assembly".to_string(),
                        },
                        uuid,
                    });
                }
                Some((dev, sb)) => {
                    report.was_clean &= sb.clean;
                    if sb.events < reference.events || reference.members[role].failed {
                        report.stale.push(StaleMember {
                            device: role,
                            name: dev.name().to_string(),
                            events: sb.events,
                            current: reference.events,
                            recorded_failed: reference.members[role].failed,
                        });
                        stale.push(role);
                    } else {
                        fresh.push(role);
                    }
                    members.push(Member {
                        dev,
                        state: MemberState::InSync,
                        uuid,
                    });
                }
            }
        }
        check_memory(layout.capacity)?;
        let mut m = Mirror::skeleton(members, layout, reference.array, &self.opts);
        m.events = reference.events;
        m.seq_limit = reference.seq_limit;
        m.next_seq = reference.seq_limit.max(1);
        let mut dirty = load_bitmap(&mut m, &fresh);
        let bound = load_table(&mut m, &fresh, &mut dirty);
        if self.opts.full_scan {
            dirty.fill(true);
        }
        for (lba, meta) in bound.iter().enumerate() {
            m.set_meta(lba as u64, *meta);
        }
        scan_dirty(&mut m, &fresh, &stale, &dirty, &bound, &mut report);
        if m.in_sync().is_empty() {
            return Err(m.no_healthy());
        }
        m.next_seq = m.next_seq.max(report.max_seq + 1);
        // Dirty regions stay dirty (in memory and on disk) until the pass
        // below has recorded their table.
        m.reset_dirty(dirty);
        for &d in &stale {
            if m.members[d].state == MemberState::InSync {
                if let Err(e) = m.write_all_metadata(d) {
                    m.mark_failed(d, "assembly", e.to_string());
                }
            }
        }
        m.commit_sb(false)?;
        // Record what was compared and clear the bits (without a bitmap,
        // set them all again: every region stays dirty until close).
        m.pass(true);
        if !m.bitmap {
            let all: Vec<u64> = (0..layout.bitmap_blocks).collect();
            m.reset_dirty(std::vec![true; layout.regions() as usize]);
            m.write_bitmap_blocks(&all, None)?;
        }
        m.tree.refresh();
        report.events = m.events;
        Ok((m, report))
    }
}

/// Checks there are at least `min` devices with one valid block size.
fn common_block_size(devices: &[Box<dyn BlockDevice>], min: usize) -> Result<usize, MirrorError> {
    if devices.len() < min.max(1) {
        return Err(MirrorError::TooFewDevices {
            given: devices.len(),
        });
    }
    let bs = devices[0].block_size();
    super::device::check_block_size(bs)?;
    for (i, d) in devices.iter().enumerate() {
        if d.block_size() != bs {
            return Err(MirrorError::BlockSizeMismatch {
                device: i,
                name: d.name().to_string(),
                found: d.block_size(),
                expected: bs,
            });
        }
    }
    if devices.len() > Layout::max_members(bs) {
        return Err(MirrorError::TooManyDevices {
            given: devices.len(),
            max: Layout::max_members(bs),
        });
    }
    Ok(bs)
}

/// Refuses a capacity of 0 or above [`MAX_CAPACITY`].
fn check_capacity(capacity: u64) -> Result<(), MirrorError> {
    if capacity == 0 || capacity > MAX_CAPACITY {
        return Err(MirrorError::BadCapacity {
            capacity,
            max: MAX_CAPACITY,
        });
    }
    Ok(())
}

/// Checks that the in-memory state of a mirror of `capacity` data blocks
/// can be allocated, before any device is written: the allocation is tried
/// (and given back) so that a mirror too large for the machine is an error
/// rather than an abort halfway through `create`.
fn check_memory(capacity: u64) -> Result<(), MirrorError> {
    let bytes = capacity.saturating_mul(MEMORY_PER_BLOCK);
    let fits = usize::try_from(bytes)
        .ok()
        .is_some_and(|n| Vec::<u8>::new().try_reserve_exact(n).is_ok());
    if fits {
        Ok(())
    } else {
        Err(MirrorError::OutOfMemory { capacity, bytes })
    }
}

/// Refuses the same file or block device twice (by `(st_dev, st_ino)`).
pub(crate) fn check_identities(devices: &[Box<dyn BlockDevice>]) -> Result<(), MirrorError> {
    for i in 0..devices.len() {
        let Some(a) = devices[i].identity() else {
            continue;
        };
        for j in 0..i {
            if devices[j].identity() == Some(a) {
                return Err(MirrorError::SameDeviceTwice {
                    first: devices[j].name().to_string(),
                    second: devices[i].name().to_string(),
                    how: std::format!(
                        "both are the same file or device (st_dev {:#x}, st_ino {})",
                        a.0,
                        a.1
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Reads a device's newest valid superblock (and its copies' raw blocks).
pub(crate) fn read_superblock(
    dev: &mut dyn BlockDevice,
    bs: usize,
) -> Result<(Superblock, AlignedBuf), MirrorError> {
    let name = dev.name().to_string();
    if dev.blocks() < 2 {
        return Err(MirrorError::NotAMember {
            name,
            found: std::format!(
                "a device of {} block(s), too small for a superblock",
                dev.blocks()
            ),
        });
    }
    let mut buf = AlignedBuf::zeroed(2 * bs);
    dev.read_blocks(0, &mut buf)
        .map_err(|e| MirrorError::NotAMember {
            name: name.clone(),
            found: std::format!("its superblocks could not be read ({e})"),
        })?;
    // A superblock written with another block size fails its checksum at
    // this one, but its magic and recorded size sit in the first 16 bytes
    // of block 0 whatever the size: name the size rather than call the
    // device blank or damaged (whose advice would lose its data).
    let recorded = le_u32(&buf[12..16]) as usize;
    let other_size = buf[4..8] == SB_MAGIC
        && recorded != bs
        && super::device::check_block_size(recorded).is_ok();
    match newest(&buf[..bs], &buf[bs..]) {
        Ok(sb) => Ok((sb, buf)),
        Err(_) if other_size => Err(MirrorError::OtherBlockSize {
            name,
            recorded,
            opened: bs,
        }),
        Err((SbProblem::Version(v), _)) | Err((_, SbProblem::Version(v))) => {
            Err(MirrorError::UnsupportedFormat { name, version: v })
        }
        Err((SbProblem::Blank, SbProblem::Blank)) => Err(MirrorError::NotAMember {
            name,
            found: "no superblock (the first two blocks are zero): a blank device".to_string(),
        }),
        Err((a, b)) => Err(MirrorError::NotAMember {
            name,
            found: std::format!(
                "no valid superblock (copy A: {}, copy B: {})",
                describe(&a),
                describe(&b)
            ),
        }),
    }
}

fn describe(p: &SbProblem) -> String {
    match p {
        SbProblem::Blank => "blank".to_string(),
        SbProblem::Damaged(w) => w.clone(),
        SbProblem::Version(v) => std::format!("format version {v}"),
    }
}

/// The union of the bitmaps of the up-to-date members (an unreadable or
/// invalid bitmap block counts as all dirty).
fn load_bitmap(m: &mut Mirror, fresh: &[DeviceId]) -> Vec<bool> {
    let bs = m.block_size;
    let l = m.layout;
    let bpb = Layout::bits_per_block(bs) as usize;
    let regions = l.regions() as usize;
    let mut dirty = std::vec![false; regions];
    let mut buf = AlignedBuf::zeroed(bs);
    for &d in fresh {
        for k in 0..l.bitmap_blocks {
            let at = l.bitmap_start + k;
            let first = k as usize * bpb;
            let end = (first + bpb).min(regions);
            let ok = m.members[d].dev.read_blocks(at, &mut buf).is_ok()
                && check_meta(&buf, BITMAP_MAGIC, at, m.array).is_some();
            for (i, bit) in dirty[first..end].iter_mut().enumerate() {
                *bit |= !ok || buf[META_HEADER + i / 8] & (1 << (i % 8)) != 0;
            }
        }
    }
    dirty
}

/// The expected state recorded in the sequence table (newest valid copy of
/// each table block among the up-to-date members). Regions of a table block
/// no member holds a valid copy of are marked dirty.
fn load_table(m: &mut Mirror, fresh: &[DeviceId], dirty: &mut [bool]) -> Vec<Meta> {
    let bs = m.block_size;
    let l = m.layout;
    let epb = Layout::entries_per_block(bs);
    let mut bound = std::vec![Meta::UNWRITTEN; l.capacity as usize];
    let mut best: Vec<Option<u64>> = std::vec![None; l.table_blocks as usize];
    let mut buf = AlignedBuf::zeroed(0);
    for &d in fresh {
        let mut t = 0u64;
        while t < l.table_blocks {
            let count = SCAN_CHUNK.min(l.table_blocks - t);
            buf.resize(count as usize * bs);
            if m.members[d]
                .dev
                .read_blocks(l.table_start + t, &mut buf)
                .is_err()
            {
                t += count;
                continue;
            }
            for k in 0..count {
                let blk = &buf[k as usize * bs..(k as usize + 1) * bs];
                let idx = t + k;
                let Some(stamp) = check_meta(blk, TABLE_MAGIC, l.table_start + idx, m.array) else {
                    continue;
                };
                if best[idx as usize].is_some_and(|s| s >= stamp) {
                    continue;
                }
                best[idx as usize] = Some(stamp);
                let first = idx * epb;
                for lba in first..(first + epb).min(l.capacity) {
                    let (seq, crc) = table_entry(blk, (lba - first) as usize);
                    bound[lba as usize] = Meta { seq, crc };
                }
            }
            t += count;
        }
    }
    for (idx, b) in best.iter().enumerate() {
        if b.is_none() {
            let first = idx as u64 * epb;
            let last = ((idx as u64 + 1) * epb).min(l.capacity);
            for lba in first..last {
                bound[lba as usize] = Meta::UNWRITTEN;
                dirty[(lba / l.region_blocks) as usize] = true;
            }
        }
    }
    bound
}

/// Compares every block of the dirty regions across the devices: the
/// newest valid copy on an up-to-date member that is not older than the
/// table's record wins; every other copy (stale members' too) is rewritten
/// from it.
fn scan_dirty(
    m: &mut Mirror,
    fresh: &[DeviceId],
    stale: &[DeviceId],
    dirty: &[bool],
    bound: &[Meta],
    report: &mut AssemblyReport,
) {
    let bs = m.block_size;
    let n = m.members.len();
    let rb = m.layout.region_blocks;
    let mut bufs: Vec<AlignedBuf> = (0..n).map(|_| AlignedBuf::zeroed(0)).collect();
    let mut verdicts: Vec<Vec<Result<BlockState, Problem>>> = std::vec![Vec::new(); n];
    let readers: Vec<DeviceId> = fresh.iter().chain(stale).copied().collect();
    for (r, &is_dirty) in dirty.iter().enumerate() {
        if !is_dirty {
            continue;
        }
        report.regions_scanned += 1;
        let end = ((r as u64 + 1) * rb).min(m.capacity);
        let mut start = r as u64 * rb;
        while start < end {
            let count = SCAN_CHUNK.min(end - start);
            report.blocks_scanned += count;
            for &d in &readers {
                verdicts[d].clear();
                if m.members[d].state != MemberState::InSync {
                    continue;
                }
                bufs[d].resize(count as usize * bs);
                let at = m.layout.data_start + start;
                match read_chunk(&mut *m.members[d].dev, at, start, &mut bufs[d], bs) {
                    Ok(v) => verdicts[d] = v,
                    Err(e) => m.mark_failed(d, "assembly", e.to_string()),
                }
            }
            for k in 0..count as usize {
                let lba = start + k as u64;
                let floor = bound[lba as usize];
                let winner = fresh
                    .iter()
                    .filter(|&&d| m.members[d].state == MemberState::InSync)
                    .filter_map(|&d| verdicts[d][k].as_ref().ok().map(|st| (st.seq(), d, *st)))
                    .filter(|&(seq, _, _)| floor.seq == Meta::LOST || seq >= floor.seq)
                    .max_by_key(|&(seq, d, _)| (seq, std::cmp::Reverse(d)));
                let Some((_, from, st)) = winner else {
                    let valid_older = fresh.iter().any(|&d| {
                        m.members[d].state == MemberState::InSync && verdicts[d][k].is_ok()
                    });
                    if valid_older && floor.seq != Meta::LOST {
                        report.rolled_back.push(lba);
                    }
                    report.lost.push(lba);
                    m.set_meta(
                        lba,
                        Meta {
                            seq: Meta::LOST,
                            crc: 0,
                        },
                    );
                    continue;
                };
                let meta = match st {
                    BlockState::Unwritten => Meta::UNWRITTEN,
                    BlockState::Written { seq, crc, .. } => Meta { seq, crc },
                };
                report.max_seq = report.max_seq.max(meta.seq);
                m.set_meta(lba, meta);
                for &d in &readers {
                    if d == from || m.members[d].state != MemberState::InSync {
                        continue;
                    }
                    let problem = match &verdicts[d][k] {
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
                            m.mark_failed(d, "an assembly repair", e.to_string());
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
    }
}

/// The stand-in for a member that was not given to assembly: every
/// operation fails with ENODEV until [`Mirror::replace`] swaps it out.
struct Missing {
    name: String,
    block_size: usize,
    blocks: u64,
}

impl BlockDevice for Missing {
    fn name(&self) -> &str {
        &self.name
    }
    fn block_size(&self) -> usize {
        self.block_size
    }
    fn blocks(&self) -> u64 {
        self.blocks
    }
    fn read_blocks(&mut self, _lba: u64, _buf: &mut [u8]) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENODEV))
    }
    fn write_blocks(&mut self, _w: &[BlockWrite<'_>], _c: &mut PhaseClock) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENODEV))
    }
    fn stats(&self) -> DeviceStats {
        DeviceStats::default()
    }
}
