//! The mirror itself: members, expected state, the write and read paths.

use std::fmt;
use std::io;
use std::string::{String, ToString};
use std::vec::Vec;

use uuid::Uuid;

use super::block::{self, AlignedBuf, BlockState, Corruption};
use super::device::{BlockDevice, BlockWrite, DeviceStats};
use super::merkle::{leaf, MerkleTree, LOST_LEAF};
use super::superblock::Layout;
use super::MirrorError;
use crate::cost::{PhaseClock, PhaseTimes, WritePhase};

/// A device's role in the mirror: its position when the mirror was created
/// (recorded in its superblock; assembly puts devices back in this order).
pub type DeviceId = usize;

/// Where warnings go (they are always kept for [`Mirror::take_events`] too).
///
/// # Examples
///
/// ```
/// use noderep::mirror::{BlockDevice, FileDevice, Mirror, MirrorEvent, WarningSink};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = std::env::temp_dir().join(format!("noderep-warnings-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// let cfg = FileDevice::builder().blocks(64);
/// let devices: Vec<Box<dyn BlockDevice>> =
///     vec![Box::new(cfg.open(dir.join("a"))?), Box::new(cfg.open(dir.join("b"))?)];
/// // Nothing on stderr: the events are only kept.
/// let mut mirror = Mirror::builder().warnings(WarningSink::Silent).create(devices)?;
/// mirror.fail_device(1, "pulled for the example")?;
/// let events = mirror.take_events();
/// assert!(matches!(events.as_slice(), [MirrorEvent::DeviceFailed { device: 1, .. }]));
/// # drop(mirror);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WarningSink {
    /// One line per warning on standard error (the default).
    #[default]
    Stderr,
    /// Nowhere but the event list.
    Silent,
}

/// A member's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberState {
    /// Holds every acknowledged write; receives writes and serves reads.
    InSync,
    /// Out of the mirror after an error; [`Mirror::readd`] or
    /// [`Mirror::replace`] brings it back.
    Failed {
        /// What happened.
        reason: String,
    },
}

/// What was wrong with one copy of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The device returned an error.
    ReadError(String),
    /// The copy was read but fails verification.
    Corrupt(Corruption),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::ReadError(e) => write!(f, "read error: {e}"),
            Problem::Corrupt(c) => c.fmt(f),
        }
    }
}

/// Something the mirror did on its own that its user should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorEvent {
    /// A device was taken out of the mirror.
    DeviceFailed {
        /// The device.
        device: DeviceId,
        /// Its name.
        name: String,
        /// The operation that failed.
        during: &'static str,
        /// The error.
        error: String,
        /// Devices still in sync.
        survivors: usize,
        /// Devices in the mirror.
        total: usize,
    },
    /// A bad copy of a block was rewritten from a good one.
    Repaired {
        /// The device whose copy was bad.
        device: DeviceId,
        /// The block.
        lba: u64,
        /// What was wrong.
        problem: Problem,
        /// The device the good copy came from.
        from: DeviceId,
    },
    /// A device was brought back in sync.
    Resynced {
        /// The device.
        device: DeviceId,
        /// Blocks copied to it.
        copied: u64,
    },
}

impl fmt::Display for MirrorEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MirrorEvent::DeviceFailed {
                device,
                name,
                during,
                error,
                survivors,
                total,
            } => write!(
                f,
                "device {device} ({name}) failed during {during}: {error}; the mirror is DEGRADED and continues on {survivors} of {total} devices — replace the device and call Mirror::replace({device}, new), or Mirror::readd({device}) once it is back"
            ),
            MirrorEvent::Repaired {
                device,
                lba,
                problem,
                from,
            } => write!(
                f,
                "repaired block {lba} on device {device} ({problem}) from device {from}"
            ),
            MirrorEvent::Resynced { device, copied } => write!(
                f,
                "device {device} is back in sync ({copied} blocks copied)"
            ),
        }
    }
}

/// How many copies a write reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redundancy {
    /// Every device of the mirror has it.
    Full,
    /// Only the surviving devices have it.
    Degraded {
        /// Devices without the write.
        missing: usize,
    },
}

/// An acknowledged write: every healthy device has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteAck {
    /// Sequence number of the batch's first block (the rest follow on).
    pub first_seq: u64,
    /// Blocks written.
    pub blocks: usize,
    /// Devices that hold the write.
    pub copies: usize,
    /// Whether that is all of them.
    pub redundancy: Redundancy,
}

/// How a verified read went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The first copy tried was good.
    Clean {
        /// The device read.
        device: DeviceId,
    },
    /// Some copies were bad; good data came from `from` and the bad copies
    /// were rewritten (devices whose rewrite failed were taken out).
    Repaired {
        /// The device the good copy came from.
        from: DeviceId,
        /// The bad copies and what was wrong with them.
        bad: Vec<(DeviceId, Problem)>,
    },
}

/// The mirror's overall health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Every device is in sync.
    Optimal {
        /// Devices in the mirror.
        devices: usize,
    },
    /// Some devices have failed; the rest serve.
    Degraded {
        /// Devices in sync.
        in_sync: Vec<DeviceId>,
        /// Devices out.
        failed: Vec<DeviceId>,
    },
    /// No device is in sync.
    Failed,
}

/// The expected state of one block: the last acknowledged write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Sequence number (0 = never written, LOST = no good copy survived).
    pub(crate) seq: u64,
    /// crc32c of that write's block.
    pub(crate) crc: u32,
}

impl Meta {
    /// Marks a block of which no good copy survived.
    pub(crate) const LOST: u64 = u64::MAX;
    pub(crate) const UNWRITTEN: Meta = Meta { seq: 0, crc: 0 };

    pub(crate) fn leaf(self) -> u64 {
        if self.seq == Self::LOST {
            LOST_LEAF
        } else {
            leaf(self.seq, self.crc)
        }
    }
}

/// The digest of a verified on-device block.
pub(crate) fn state_leaf(st: BlockState) -> u64 {
    match st {
        BlockState::Unwritten => Meta::UNWRITTEN.leaf(),
        BlockState::Written { seq, crc, .. } => leaf(seq, crc),
    }
}

/// One device of the mirror. Every field is written and read only by the
/// mirror's own `&mut self` methods (single writer, no sharing).
pub(crate) struct Member {
    /// The device.
    pub(crate) dev: Box<dyn BlockDevice>,
    /// In sync, or failed (set by `fail_member`, cleared by a resync).
    pub(crate) state: MemberState,
    /// The device UUID its superblock carries (set at create or replace).
    pub(crate) uuid: Uuid,
}

/// A mirror of N ≥ 2 block devices; see the [module docs](super).
///
/// # Examples
///
/// ```
/// use noderep::mirror::{BlockDevice, FileDevice, Mirror};
/// # fn main() -> Result<(), noderep::mirror::MirrorError> {
/// # let dir = std::env::temp_dir().join(format!("noderep-mirror-ty-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).expect("temp dir");
/// let cfg = FileDevice::builder().blocks(64);
/// let open = |name: &str| -> Result<Box<dyn BlockDevice>, _> {
///     Ok(Box::new(cfg.open(dir.join(name))?))
/// };
/// let mut mirror = Mirror::builder().create(vec![open("a")?, open("b")?])?;
/// mirror.write(3, b"kept across restarts")?;
/// let devices = mirror.close()?; // clean shutdown
/// let (mut mirror, report) = Mirror::builder().assemble(devices)?;
/// assert_eq!(report.regions_scanned, 0); // clean: nothing to resync
/// let mut out = Vec::new();
/// mirror.read(3, &mut out)?;
/// assert_eq!(out, b"kept across restarts");
/// # drop(mirror);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
pub struct Mirror {
    // Every field is written and read only through `&mut self` / `&self`
    // methods of the mirror: one owner, no interior sharing.
    /// The devices, in role order (writes go to them in this order).
    pub(crate) members: Vec<Member>,
    /// Bytes per block (the same on every device).
    pub(crate) block_size: usize,
    /// Blocks in the mirror (logical addresses `0..capacity`).
    pub(crate) capacity: u64,
    /// Where metadata and data live on every member.
    pub(crate) layout: Layout,
    /// The array's UUID.
    pub(crate) array: Uuid,
    /// Superblock generation last written.
    pub(crate) events: u64,
    /// Every sequence number handed out is below this (persisted in the
    /// superblock before a number at or above the old limit is used).
    pub(crate) seq_limit: u64,
    /// Write-intent bits as they are on the in-sync devices: set (on disk
    /// first) before a region is written, cleared lazily by `clean_pass`.
    pub(crate) dirty: Vec<bool>,
    /// The regions whose bit is set in `dirty` (no repeats).
    pub(crate) dirty_list: Vec<u32>,
    /// Clean-pass epoch in which each region was last written.
    pub(crate) touched: Vec<u32>,
    /// The regions stamped in the current epoch (no repeats).
    pub(crate) recent: Vec<u32>,
    /// Blocks acknowledged since the last pass (their table entries are due).
    pub(crate) written: Vec<u64>,
    /// The current clean-pass epoch.
    pub(crate) epoch: u32,
    /// `log2(region_blocks)`.
    pub(crate) region_shift: u32,
    /// Blocks written between passes.
    pub(crate) clean_interval: u64,
    /// False: every region stays dirty until `close` (no write-intent
    /// bitmap; a crash means a full scan at the next assembly).
    pub(crate) bitmap: bool,
    /// Staging buffer of metadata writes (superblock, bitmap, table).
    pub(crate) meta_buf: AlignedBuf,
    /// Expected state per block: written by acknowledged writes, repair and
    /// assembly; read by reads, scrub and resync.
    pub(crate) meta: Vec<Meta>,
    /// Merkle tree over `meta` (leaves updated with it, parents lazily).
    pub(crate) tree: MerkleTree,
    /// Next sequence number to hand out.
    pub(crate) next_seq: u64,
    /// Staging buffer of the write path (one batch of blocks).
    stage: AlignedBuf,
    /// One-block buffer of the read path.
    pub(crate) scratch: AlignedBuf,
    /// Chunk buffer of scans.
    pub(crate) chunk: AlignedBuf,
    /// Write-path scratch: sorted addresses (duplicate check).
    sorted: Vec<u64>,
    /// Write-path scratch: the checksum of each staged block.
    crcs: Vec<u32>,
    /// Write-path scratch: runs of consecutive blocks as (first address,
    /// first staged block, block count).
    runs: Vec<(u64, usize, usize)>,
    /// Events not yet taken by the user.
    events_out: Vec<MirrorEvent>,
    /// Phase accounting of the write path (a no-op unless enabled).
    clock: PhaseClock,
    /// Where warnings are printed.
    warnings: WarningSink,
    /// Rotates the device reads start on.
    read_cursor: usize,
    /// The last device failure, for the all-failed error.
    last_failure: String,
}

impl fmt::Debug for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mirror")
            .field("devices", &self.members.len())
            .field("block_size", &self.block_size)
            .field("capacity", &self.capacity)
            .field("array", &self.array)
            .field("events", &self.events)
            .field("dirty_regions", &self.dirty_list.len())
            .field("health", &self.health())
            .finish()
    }
}

impl Mirror {
    /// Builds the mirror around `members` (no I/O): expected state all
    /// unwritten, every region clean.
    pub(crate) fn skeleton(
        members: Vec<Member>,
        layout: Layout,
        array: Uuid,
        opts: &super::assemble::Options,
    ) -> Self {
        let capacity = layout.capacity;
        let regions = layout.regions() as usize;
        let leaves = std::vec![Meta::UNWRITTEN.leaf(); capacity as usize];
        Self {
            members,
            block_size: layout.block_size,
            capacity,
            layout,
            array,
            events: 0,
            seq_limit: 1,
            dirty: std::vec![false; regions],
            dirty_list: Vec::new(),
            touched: std::vec![0; regions],
            recent: Vec::new(),
            written: Vec::new(),
            epoch: 1,
            region_shift: layout.region_blocks.trailing_zeros(),
            clean_interval: opts.clean_interval.max(1),
            bitmap: opts.bitmap,
            meta_buf: AlignedBuf::zeroed(0),
            meta: std::vec![Meta::UNWRITTEN; capacity as usize],
            tree: MerkleTree::from_leaves(&leaves),
            next_seq: 1,
            stage: AlignedBuf::zeroed(layout.block_size),
            scratch: AlignedBuf::zeroed(layout.block_size),
            chunk: AlignedBuf::zeroed(0),
            sorted: Vec::new(),
            crcs: Vec::new(),
            runs: Vec::new(),
            events_out: Vec::new(),
            clock: if opts.account_phases {
                PhaseClock::enabled()
            } else {
                PhaseClock::disabled()
            },
            warnings: opts.warnings,
            read_cursor: 0,
            last_failure: String::from("none recorded"),
        }
    }

    /// Bytes of header at the start of every block (checksum, magic,
    /// address, sequence number, length, format version; the layout is in
    /// `docs/MIRROR-FORMAT.md`): a block of `bs` bytes carries `bs -
    /// HEADER_SIZE` bytes of payload ([`payload_size`](Self::payload_size)).
    pub const HEADER_SIZE: usize = block::HEADER_SIZE;

    /// Bytes per block on the devices.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Payload bytes per block (block size minus the 32-byte header).
    pub fn payload_size(&self) -> usize {
        self.block_size - block::HEADER_SIZE
    }

    /// Blocks in the mirror (the smallest device's).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Devices in the mirror, in sync or not.
    pub fn devices(&self) -> usize {
        self.members.len()
    }

    /// A device's standing.
    ///
    /// # Errors
    ///
    /// [`MirrorError::NoSuchDevice`] for an unknown device.
    pub fn member_state(&self, device: DeviceId) -> Result<&MemberState, MirrorError> {
        self.check_device(device)?;
        Ok(&self.members[device].state)
    }

    /// A device's name.
    ///
    /// # Errors
    ///
    /// [`MirrorError::NoSuchDevice`] for an unknown device.
    pub fn device_name(&self, device: DeviceId) -> Result<&str, MirrorError> {
        self.check_device(device)?;
        Ok(self.members[device].dev.name())
    }

    /// A device's operation counters.
    ///
    /// # Errors
    ///
    /// [`MirrorError::NoSuchDevice`] for an unknown device.
    pub fn device_stats(&self, device: DeviceId) -> Result<DeviceStats, MirrorError> {
        self.check_device(device)?;
        Ok(self.members[device].dev.stats())
    }

    /// The mirror's health.
    pub fn health(&self) -> Health {
        let in_sync: Vec<DeviceId> = self.in_sync();
        if in_sync.is_empty() {
            Health::Failed
        } else if in_sync.len() == self.members.len() {
            Health::Optimal {
                devices: in_sync.len(),
            }
        } else {
            Health::Degraded {
                failed: (0..self.members.len())
                    .filter(|d| !in_sync.contains(d))
                    .collect(),
                in_sync,
            }
        }
    }

    /// Events since the last call (failures, repairs, resyncs).
    pub fn take_events(&mut self) -> Vec<MirrorEvent> {
        std::mem::take(&mut self.events_out)
    }

    /// Time per write phase so far (zero unless `account_phases` is on).
    pub fn phase_times(&self) -> PhaseTimes {
        self.clock.times()
    }

    /// Clears the phase times.
    pub fn reset_phase_times(&mut self) {
        self.clock.reset();
    }

    /// A builder: the one way to create a mirror or assemble one again.
    pub fn builder() -> super::MirrorBuilder {
        super::MirrorBuilder::new()
    }

    /// Shuts the mirror down cleanly and returns its devices in role order:
    /// every block written is recorded in the sequence table, every
    /// write-intent bit is cleared (when every member is in sync) and the
    /// superblocks are marked clean, so the next assembly reads nothing but
    /// metadata.
    ///
    /// # Errors
    ///
    /// [`MirrorError::NoHealthyDevice`] if no device took the final
    /// superblock update (the devices are dropped; reassemble them once
    /// they are back: nothing acknowledged is lost).
    pub fn close(mut self) -> Result<Vec<Box<dyn BlockDevice>>, MirrorError> {
        self.pass(true);
        let clean = self.members.iter().all(|m| m.state == MemberState::InSync);
        self.commit_sb(clean)?;
        Ok(self.members.into_iter().map(|m| m.dev).collect())
    }

    /// Takes the mirror apart *without* a clean shutdown, as a crash would
    /// leave it, returning its devices in role order. The next assembly
    /// compares the copies of the regions still marked dirty. Use
    /// [`Mirror::close`] for an orderly shutdown.
    pub fn into_devices(self) -> Vec<Box<dyn BlockDevice>> {
        self.members.into_iter().map(|m| m.dev).collect()
    }

    /// Records every write so far in the persistent sequence table now
    /// (rather than at the next automatic pass) and clears the write-intent
    /// bits of idle regions. After it returns, a rollback or zeroing of all
    /// copies of any block written before the call is detected after a
    /// restart. Device failures are handled as on the write path.
    pub fn checkpoint(&mut self) {
        self.pass(false);
    }

    /// The superblock generation (event count): it grows with every
    /// superblock update. Keep it somewhere else too and pass it to
    /// [`super::MirrorBuilder::min_events`] to detect a rollback of every
    /// device (superblocks included) to an older image.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The array's UUID (the same in every member's superblock).
    pub fn array_uuid(&self) -> uuid::Uuid {
        self.array
    }

    /// The physical block on each device where logical block 0 is stored
    /// (blocks before it hold the superblocks, bitmap and sequence table).
    pub fn data_start(&self) -> u64 {
        self.layout.data_start
    }

    /// Data blocks per write-intent region.
    pub fn region_blocks(&self) -> u64 {
        self.layout.region_blocks
    }

    /// Regions whose write-intent bit is set now (what a crash at this
    /// moment would make the next assembly compare).
    pub fn dirty_regions(&self) -> usize {
        self.dirty_list.len()
    }

    /// Takes a device out of the mirror by hand (for example before
    /// replacing it); the change is recorded in the other members'
    /// superblocks.
    ///
    /// # Errors
    ///
    /// [`MirrorError::NoSuchDevice`] for an unknown device.
    pub fn fail_device(&mut self, device: DeviceId, reason: &str) -> Result<(), MirrorError> {
        self.check_device(device)?;
        if self.members[device].state == MemberState::InSync {
            self.fail_member(device, "an administrative removal", reason.to_string());
        }
        Ok(())
    }

    pub(crate) fn check_device(&self, device: DeviceId) -> Result<(), MirrorError> {
        if device >= self.members.len() {
            return Err(MirrorError::NoSuchDevice {
                device,
                count: self.members.len(),
            });
        }
        Ok(())
    }

    pub(crate) fn check_lba(&self, lba: u64) -> Result<(), MirrorError> {
        if lba >= self.capacity {
            return Err(MirrorError::OutOfRange {
                lba,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    pub(crate) fn in_sync(&self) -> Vec<DeviceId> {
        (0..self.members.len())
            .filter(|&d| self.members[d].state == MemberState::InSync)
            .collect()
    }

    pub(crate) fn no_healthy(&self) -> MirrorError {
        MirrorError::NoHealthyDevice {
            devices: self.members.len(),
            last: self.last_failure.clone(),
        }
    }

    pub(crate) fn emit(&mut self, event: MirrorEvent) {
        if self.warnings == WarningSink::Stderr {
            match &event {
                MirrorEvent::DeviceFailed { .. } => {
                    std::eprintln!("noderep mirror: WARNING: {event}")
                }
                _ => std::eprintln!("noderep mirror: {event}"),
            }
        }
        self.events_out.push(event);
    }

    /// Takes `device` out of the mirror with a warning and records that in
    /// the survivors' superblocks.
    pub(crate) fn fail_member(&mut self, device: DeviceId, during: &'static str, error: String) {
        self.mark_failed(device, during, error);
        let _ = self.commit_sb(false);
    }

    /// Takes `device` out of the mirror with a warning (no metadata I/O).
    pub(crate) fn mark_failed(&mut self, device: DeviceId, during: &'static str, error: String) {
        let m = &mut self.members[device];
        m.state = MemberState::Failed {
            reason: std::format!("{during}: {error}"),
        };
        let name = m.dev.name().to_string();
        self.last_failure = std::format!("device {device} ({name}) during {during}: {error}");
        let survivors = self.in_sync().len();
        self.emit(MirrorEvent::DeviceFailed {
            device,
            name,
            during,
            error,
            survivors,
            total: self.members.len(),
        });
    }

    /// Sets the expected state of `lba`.
    pub(crate) fn set_meta(&mut self, lba: u64, meta: Meta) {
        self.meta[lba as usize] = meta;
        self.tree.set_leaf(lba, meta.leaf());
    }

    /// Reads `lba` from `device` into `scratch` and checks it against the
    /// expected state.
    pub(crate) fn examine(&mut self, device: DeviceId, lba: u64) -> Result<BlockState, Problem> {
        let bs = self.block_size;
        self.scratch.resize(bs);
        self.members[device]
            .dev
            .read_blocks(self.layout.data_start + lba, &mut self.scratch)
            .map_err(|e| Problem::ReadError(e.to_string()))?;
        let st = block::verify(&self.scratch, lba).map_err(Problem::Corrupt)?;
        let meta = self.meta[lba as usize];
        let (seq, crc) = match st {
            BlockState::Unwritten => (0, 0),
            BlockState::Written { seq, crc, .. } => (seq, crc),
        };
        if seq != meta.seq || crc != meta.crc {
            let expected = if meta.seq == Meta::LOST { 0 } else { meta.seq };
            return Err(Problem::Corrupt(Corruption::Stale {
                found: seq,
                expected,
            }));
        }
        Ok(st)
    }

    /// Writes the block in `scratch` to `device` at `lba`.
    pub(crate) fn write_scratch(&mut self, device: DeviceId, lba: u64) -> io::Result<()> {
        let w = [BlockWrite {
            lba: self.layout.data_start + lba,
            data: &self.scratch,
        }];
        self.members[device]
            .dev
            .write_blocks(&w, &mut PhaseClock::disabled())
    }

    /// Rewrites the bad copies listed in `bad` from the good block in
    /// `scratch` (read from `from`); a device whose rewrite fails is taken out.
    pub(crate) fn repair_from_scratch(
        &mut self,
        lba: u64,
        from: DeviceId,
        bad: &[(DeviceId, Problem)],
    ) {
        for (d, problem) in bad {
            if self.members[*d].state != MemberState::InSync {
                continue;
            }
            match self.write_scratch(*d, lba) {
                Ok(()) => self.emit(MirrorEvent::Repaired {
                    device: *d,
                    lba,
                    problem: problem.clone(),
                    from,
                }),
                Err(e) => self.fail_member(*d, "a repair write", e.to_string()),
            }
        }
    }

    /// Writes one block; see [`Mirror::write_batch`].
    ///
    /// # Errors
    ///
    /// As [`Mirror::write_batch`].
    pub fn write(&mut self, lba: u64, data: &[u8]) -> Result<WriteAck, MirrorError> {
        self.write_batch(&[(lba, data)])
    }

    /// Writes a batch of blocks to every healthy device, with one device
    /// call per device, and acknowledges once each healthy device has all
    /// of it (as durably as its [`super::Durability`] says).
    ///
    /// A device whose write fails is taken out of the mirror (a warning,
    /// [`MirrorEvent::DeviceFailed`]); the write is still acknowledged if at
    /// least one device has it, with [`Redundancy::Degraded`]. If no device
    /// has it, the batch is *not* acknowledged:
    /// [`MirrorError::NoHealthyDevice`].
    ///
    /// Each `data` may be shorter than [`Mirror::payload_size`]; reads return
    /// exactly what was written. Addresses may not repeat within a batch.
    ///
    /// Before any data is written, the write-intent bits of the regions the
    /// batch touches are set on disk (only for regions not dirty already).
    ///
    /// # Errors
    ///
    /// [`MirrorError::EmptyBatch`], [`MirrorError::OutOfRange`],
    /// [`MirrorError::PayloadTooLarge`], [`MirrorError::DuplicateInBatch`]
    /// for bad requests (nothing is written); [`MirrorError::NoHealthyDevice`]
    /// when no device took the write (it is not acknowledged).
    pub fn write_batch(&mut self, writes: &[(u64, &[u8])]) -> Result<WriteAck, MirrorError> {
        self.clock.restart();
        // Bookkeeping: validate, number, stage.
        if writes.is_empty() {
            return Err(MirrorError::EmptyBatch);
        }
        if !self.members.iter().any(|m| m.state == MemberState::InSync) {
            return Err(self.no_healthy());
        }
        let max = self.payload_size();
        self.sorted.clear();
        for &(lba, data) in writes {
            self.check_lba(lba)?;
            if data.len() > max {
                return Err(MirrorError::PayloadTooLarge {
                    lba,
                    len: data.len(),
                    max,
                });
            }
            self.sorted.push(lba);
        }
        self.sorted.sort_unstable();
        if let Some(w) = self.sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(MirrorError::DuplicateInBatch { lba: w[0] });
        }
        let n = writes.len();
        self.mark_regions(writes.iter().map(|w| w.0))?;
        self.reserve_seqs(n as u64)?;
        let bs = self.block_size;
        let first_seq = self.next_seq;
        self.next_seq += n as u64;
        self.stage.resize(n * bs);
        self.runs.clear();
        for (i, &(lba, data)) in writes.iter().enumerate() {
            block::encode(
                &mut self.stage[i * bs..(i + 1) * bs],
                lba,
                first_seq + i as u64,
                data,
            );
            match self.runs.last_mut() {
                Some((start, _, count)) if *start + *count as u64 == lba => *count += 1,
                _ => self.runs.push((lba, i, 1)),
            }
        }
        self.clock.mark(WritePhase::Bookkeeping);

        // Checksum.
        self.crcs.clear();
        for blk in self.stage.chunks_exact_mut(bs) {
            self.crcs.push(block::seal(blk));
        }
        self.clock.mark(WritePhase::Checksum);

        // Submission and completion, device after device.
        let stage = &self.stage;
        let base = self.layout.data_start;
        let list: Vec<BlockWrite<'_>> = self
            .runs
            .iter()
            .map(|&(lba, i, count)| BlockWrite {
                lba: base + lba,
                data: &stage[i * bs..(i + count) * bs],
            })
            .collect();
        let mut copies = 0usize;
        let mut failures: Vec<(DeviceId, String)> = Vec::new();
        for (d, m) in self.members.iter_mut().enumerate() {
            if m.state != MemberState::InSync {
                continue;
            }
            match m.dev.write_blocks(&list, &mut self.clock) {
                Ok(()) => copies += 1,
                Err(e) => failures.push((d, e.to_string())),
            }
            self.clock.mark(WritePhase::Completion);
        }
        drop(list);
        let failed = !failures.is_empty();
        if failed {
            // Committed to the survivors' superblocks before the ack.
            self.fail_members(failures, "a write");
        }
        let copies = if failed {
            // A superblock update may have taken out more devices.
            copies.min(self.in_sync().len())
        } else {
            copies
        };
        if copies == 0 {
            return Err(self.no_healthy());
        }
        for (i, &(lba, _)) in writes.iter().enumerate() {
            let meta = Meta {
                seq: first_seq + i as u64,
                crc: self.crcs[i],
            };
            self.set_meta(lba, meta);
            self.written.push(lba);
        }
        let missing = self.members.len() - copies;
        let ack = WriteAck {
            first_seq,
            blocks: n,
            copies,
            redundancy: if missing == 0 {
                Redundancy::Full
            } else {
                Redundancy::Degraded { missing }
            },
        };
        self.after_batch();
        self.clock.mark(WritePhase::Completion);
        Ok(ack)
    }

    /// Reads block `lba` into `out` (replacing its contents with exactly the
    /// bytes last written; empty if never written), verifying the copy and
    /// repairing bad copies from a good one.
    ///
    /// # Errors
    ///
    /// [`MirrorError::Unrecoverable`] when no device holds a good copy (the
    /// message lists what was wrong with each), never bad data;
    /// [`MirrorError::OutOfRange`]; [`MirrorError::NoHealthyDevice`].
    pub fn read(&mut self, lba: u64, out: &mut Vec<u8>) -> Result<ReadOutcome, MirrorError> {
        self.check_lba(lba)?;
        let mut order = self.in_sync();
        if order.is_empty() {
            return Err(self.no_healthy());
        }
        let k = self.read_cursor % order.len();
        order.rotate_left(k);
        self.read_cursor = self.read_cursor.wrapping_add(1);
        let mut bad: Vec<(DeviceId, Problem)> = Vec::new();
        let mut good = None;
        for &d in &order {
            match self.examine(d, lba) {
                Ok(st) => {
                    good = Some((d, st));
                    break;
                }
                Err(p) => bad.push((d, p)),
            }
        }
        let Some((from, st)) = good else {
            let details = bad
                .iter()
                .map(|(d, p)| std::format!("device {d}: {p}"))
                .collect::<Vec<_>>()
                .join("; ");
            let details = if self.meta[lba as usize].seq == Meta::LOST {
                std::format!("{details}; no good copy survived the last assembly")
            } else {
                details
            };
            return Err(MirrorError::Unrecoverable { lba, details });
        };
        out.clear();
        out.extend_from_slice(block::payload(&self.scratch, st));
        if bad.is_empty() {
            return Ok(ReadOutcome::Clean { device: from });
        }
        self.repair_from_scratch(lba, from, &bad);
        Ok(ReadOutcome::Repaired { from, bad })
    }
}
