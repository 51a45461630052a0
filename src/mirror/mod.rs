//! Mirrored block writes: every block goes to two (or N) devices with a
//! checksummed, sequence-numbered header; reads verify and repair from a good
//! copy; a scrub finds and fixes silent damage; a failed device degrades the
//! mirror to the survivors and can be re-added.
//!
//! A single disk loses data silently (bit rot, torn and lost writes) or all
//! at once (the device disappears). A mirror survives both — if every copy
//! can be *verified*, and if a write counts as done only once every healthy
//! copy has it. This module is that mirror, small enough to read, with the
//! CPU it costs made visible through [`crate::cost`].
//!
//! ```
//! use noderep::mirror::{BlockDevice, FileDevice, Mirror, ReadOutcome};
//!
//! # fn main() -> Result<(), noderep::mirror::MirrorError> {
//! let dir = std::env::temp_dir().join(format!("noderep-mirror-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).expect("temp dir");
//! let cfg = FileDevice::builder().blocks(256); // 256 × 4 KiB
//! let devices: Vec<Box<dyn BlockDevice>> = vec![
//!     Box::new(cfg.open(dir.join("a"))?),
//!     Box::new(cfg.open(dir.join("b"))?),
//! ];
//! let mut mirror = Mirror::builder().create(devices)?;
//! mirror.write_batch(&[(0, b"hello".as_slice()), (1, b"world".as_slice())])?;
//! let mut out = Vec::new();
//! assert!(matches!(mirror.read(1, &mut out)?, ReadOutcome::Clean { .. }));
//! assert_eq!(out, b"world");
//! assert!(mirror.scrub(Default::default())?.findings.is_empty());
//! // After a restart: assemble checks the superblocks and resyncs only
//! // what a crash could have left different.
//! let (mut mirror, report) = Mirror::builder().assemble(mirror.close()?)?;
//! assert!(report.was_clean && report.lost.is_empty());
//! mirror.read(0, &mut out)?;
//! assert_eq!(out, b"hello");
//! # drop(mirror);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```
//!
//! # How it works
//!
//! * **Devices** ([`BlockDevice`]): fixed-size blocks (4 KiB by default) on a
//!   preallocated file or a block device ([`FileDevice`]: `pread`, one
//!   `pwritev` per run of consecutive blocks, [`Durability`] none /
//!   `fdatasync` per batch / `O_DIRECT|O_DSYNC`), or through io_uring
//!   (`UringDevice`, cargo feature `io-uring`: one `io_uring_enter` per
//!   batch). `FaultyDevice` (cargo feature `fault-injection`) wraps any
//!   device to inject failures.
//! * **Blocks** (`block.rs`): a 32-byte header — crc32c, magic, address,
//!   sequence number, length — then the payload (`block_size - 32` bytes).
//! * **Writes** ([`Mirror::write_batch`]): stage the batch into one aligned
//!   buffer with fresh sequence numbers (bookkeeping), checksum each block,
//!   then hand the whole batch to each healthy device *in turn* with one
//!   call per device (submission), wait for it (completion) and acknowledge
//!   once every healthy device has it. Devices are written one after the
//!   other, never at once, so a crash can tear at most one copy of a block:
//!   the other still holds a complete old or new version.
//! * **Expected state**: the mirror remembers the `(sequence, crc)` of the
//!   last acknowledged write of every block (16 bytes per block) and a
//!   Merkle tree over them. A read checks the copy's checksum, address
//!   and that its sequence/crc match — so a stale copy (a write the device
//!   claimed but lost) is caught too — then returns the payload; a bad copy
//!   is rewritten from a good one ([`ReadOutcome::Repaired`]).
//! * **Scrub** ([`Mirror::scrub`]): reads each device once, digests every
//!   block into a leaf, builds that device's Merkle tree and compares it with
//!   the expected tree top-down; only the differing blocks are re-examined
//!   and repaired (or reported, or declared unrecoverable).
//! * **Failure**: a device whose write fails, or whose repair fails, is
//!   marked failed with a warning ([`MirrorEvent`], printed to stderr unless
//!   [`WarningSink::Silent`]); the mirror keeps serving from the survivors.
//!   [`Mirror::readd`] / [`Mirror::replace`] bring a device back: its blocks
//!   are digested, diffed against the expected tree, and only the differing
//!   blocks are copied (resync).
//! * **Metadata on every device** (`superblock.rs`, format in
//!   `docs/MIRROR-FORMAT.md`): two checksummed superblock copies (magic,
//!   version, array and device UUIDs, role, layout, generation `events`,
//!   clean flag, the member table), a write-intent bitmap (one bit per
//!   region of 1024 blocks by default) and a sequence table (the expected
//!   `(sequence, crc)` of every block, refreshed lazily).
//! * **Intent** (`intent.rs`): a region's bit is set on disk before the
//!   region is written; every 4096 blocks written a pass records them in the
//!   table and clears the bits of idle regions; a member failure is recorded
//!   in the survivors' superblocks before the write is acknowledged.
//! * **Creation and assembly** ([`MirrorBuilder`]): `create` writes fresh
//!   metadata; `assemble` checks every superblock (refusing foreign, repeated,
//!   replaced, truncated and missing devices, with errors that say what to
//!   do), resyncs stale members, loads the expected state from the table and
//!   compares the copies of the dirty regions only: the newest valid copy
//!   not older than the table's record wins, others are rewritten from it.
//!
//! # Trade-offs
//!
//! * Ordered mirroring (device after device) doubles write latency compared
//!   with writing the copies in parallel; in exchange no crash can destroy
//!   every copy of an *older*, acknowledged version of a block.
//! * The header costs 32 bytes of every block (payload 4064 of 4096 bytes);
//!   in exchange a block and its checksum are written in one I/O and can
//!   never disagree without being detected.
//! * Assembly reads the metadata (16 bytes per block) and the dirty regions
//!   only; a crash costs a comparison of the regions written in the last
//!   pass interval. Expected state lives in memory: about 32 bytes per
//!   block including the tree (32 MiB per million blocks, i.e. per 4 GiB).
//! * Rollback or zeroing of *every* copy of a block is detected once a pass
//!   (at most `clean_interval` blocks later, [`Mirror::checkpoint`] or
//!   [`Mirror::close`]) has recorded the write; not within that window, and
//!   not if every device, superblocks included, is replaced by an identical
//!   older image (keep [`Mirror::events`] elsewhere and use
//!   [`MirrorBuilder::min_events`] for that).
//! * The mirror is single-writer (`&mut self`): share it behind a lock.
//! * Durability [`Durability::None`] survives a process crash but not a
//!   power loss; the cost report uses it to isolate CPU cost from device
//!   latency.
//!
//! # References
//!
//! Linux md raid1 (superblocks and event counts, resync, write-intent
//! bitmaps, read repair); dm-integrity (per-sector tags); ZFS
//! self-healing reads and scrub; Merkle, "A Digital Signature Based on a
//! Conventional Encryption Function", CRYPTO 1987; crc32c: Castagnoli,
//! Bräuer, Herrmann, IEEE Trans. Communications 1993.
//!
//! The write path and the member states: `docs/ARCHITECTURE.md` in the
//! repository.

mod assemble;
pub(crate) mod block;
mod device;
#[cfg(feature = "fault-injection")]
mod fault;
mod intent;
mod merkle;
mod scrub;
mod superblock;
#[cfg(feature = "io-uring")]
mod uring;
mod writer;

#[cfg(test)]
mod tests;

pub use assemble::MirrorBuilder;
pub use block::{AlignedBuf, Corruption};
// Hidden: the block checksum is CRC-32C (`crc_fast::crc32_iscsi`, any
// CRC-32C gives the same value) and the header size is `Mirror::HEADER_SIZE`;
// these paths are kept for code written against them.
#[doc(hidden)]
pub use block::{crc32c, HEADER_SIZE};
pub use device::{BlockDevice, BlockWrite, DeviceBuilder, DeviceStats, Durability, FileDevice};
#[cfg(feature = "fault-injection")]
pub use fault::{FaultControl, FaultyDevice};
pub use scrub::{
    AssemblyReport, ResyncReport, ScrubAction, ScrubFinding, ScrubMode, ScrubReport, StaleMember,
};
#[cfg(feature = "io-uring")]
pub use uring::UringDevice;
pub use uuid::Uuid;
pub use writer::{
    DeviceId, Health, MemberState, Mirror, MirrorEvent, Problem, ReadOutcome, Redundancy,
    WarningSink, WriteAck,
};

use std::io;
use std::path::PathBuf;
use std::string::String;

/// Everything that can go wrong in a mirror.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// Block size not a power of two in 512 ..= 1 MiB.
    #[error("block size {block_size} is not supported: use a power of two from 512 to 1048576 bytes (4096 is typical)")]
    BadBlockSize {
        /// The size given.
        block_size: usize,
    },
    /// A device could not be opened or sized.
    #[error("cannot open device {path:?}: {source}; check the path and permissions (block devices need root)")]
    Open {
        /// The path.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The file system refused `O_DIRECT`.
    #[error("{path:?} does not support O_DIRECT (its file system refused it); use Durability::SyncPerBatch there, or put the device on a file system or block device that supports direct I/O")]
    DirectUnsupported {
        /// The path.
        path: PathBuf,
    },
    /// A device is smaller than asked for.
    #[error("device {path:?} has {have} blocks but {want} were asked for; use a bigger device or ask for fewer blocks")]
    TooSmall {
        /// The path.
        path: PathBuf,
        /// Blocks asked for.
        want: u64,
        /// Blocks available.
        have: u64,
    },
    /// A mirror needs at least two devices.
    #[error("a mirror needs at least 2 devices, got {given}; add another device (to assemble a degraded mirror from fewer members, use MirrorBuilder::allow_missing(true), which still needs 1)")]
    TooFewDevices {
        /// Devices given.
        given: usize,
    },
    /// Devices with different block sizes.
    #[error("device {device} ({name}) has {found}-byte blocks but device 0 has {expected}-byte blocks; open every device with the same block size")]
    BlockSizeMismatch {
        /// The odd device.
        device: DeviceId,
        /// Its name.
        name: String,
        /// Its block size.
        found: usize,
        /// Device 0's block size.
        expected: usize,
    },
    /// A replacement device is smaller than the mirror.
    #[error("replacement device {name} has {have} blocks but each member needs {need} (data and metadata); use a device at least as large")]
    ReplacementTooSmall {
        /// Its name.
        name: String,
        /// Blocks it has.
        have: u64,
        /// Blocks the mirror has.
        need: u64,
    },
    /// An address beyond the end of the mirror.
    #[error("block {lba} is out of range: the mirror has {capacity} blocks (0..{capacity})")]
    OutOfRange {
        /// The address given.
        lba: u64,
        /// Blocks in the mirror.
        capacity: u64,
    },
    /// A payload larger than a block's payload area.
    #[error("payload of {len} bytes for block {lba} does not fit: a block holds at most {max} payload bytes (block size minus the 32-byte header); split it")]
    PayloadTooLarge {
        /// The address.
        lba: u64,
        /// Bytes given.
        len: usize,
        /// Payload bytes per block.
        max: usize,
    },
    /// The same address twice in one batch.
    #[error(
        "block {lba} appears twice in one batch; merge the writes or put them in separate batches"
    )]
    DuplicateInBatch {
        /// The address.
        lba: u64,
    },
    /// An empty batch.
    #[error("write_batch was given no blocks; pass at least one (lba, data) pair")]
    EmptyBatch,
    /// A device index out of range.
    #[error("there is no device {device}: the mirror has devices 0..{count}")]
    NoSuchDevice {
        /// The index given.
        device: DeviceId,
        /// Devices in the mirror.
        count: usize,
    },
    /// Re-adding a device that is in sync.
    #[error("device {device} is in sync already; only a failed device can be re-added or replaced (call fail_device first to take it out)")]
    AlreadyInSync {
        /// The device.
        device: DeviceId,
    },
    /// Every device has failed.
    #[error("no healthy device is left in the mirror (all {devices} failed; last error: {last}); this call did not complete (a write was not acknowledged) — bring the devices back and assemble them again (Mirror::into_devices, then Mirror::builder().assemble), which recovers every acknowledged write they hold")]
    NoHealthyDevice {
        /// Devices in the mirror.
        devices: usize,
        /// The most recent failure.
        last: String,
    },
    /// No copy of a block could be read and verified.
    #[error("block {lba} is unrecoverable: no device holds a good copy ({details}); restore it from a backup or rewrite it")]
    Unrecoverable {
        /// The address.
        lba: u64,
        /// What went wrong on each device.
        details: String,
    },
    /// A device being re-added could not be read or written.
    #[error("resync of device {device} ({name}) failed: {source}; it stays failed — fix or replace it and try again")]
    ResyncFailed {
        /// The device.
        device: DeviceId,
        /// Its name.
        name: String,
        /// The error.
        source: io::Error,
    },
    /// A write-intent region size that is not a power of two.
    #[error("region size {region_blocks} blocks is not supported: use a power of two up to 2^30 (1024 is the default)")]
    BadRegionSize {
        /// The size given.
        region_blocks: u64,
    },
    /// More devices than a superblock can describe.
    #[error("{given} devices are more than a superblock of this block size can describe ({max}); use fewer devices or larger blocks")]
    TooManyDevices {
        /// Devices given.
        given: usize,
        /// The limit.
        max: usize,
    },
    /// One device given twice.
    #[error("{first} and {second} are the same device: {how}; pass each member once (a mirror of one physical copy protects nothing)")]
    SameDeviceTwice {
        /// The first name.
        first: String,
        /// The second name.
        second: String,
        /// How that was established (device UUID, or st_dev/st_ino).
        how: String,
    },
    /// Creating a mirror on a device that already belongs to one.
    #[error("{name} already belongs to mirror {array} (role {role}); assemble it with Mirror::builder().assemble(..), or, to reuse it for a new mirror, zero its first two blocks first")]
    AlreadyMember {
        /// The device.
        name: String,
        /// Its array.
        array: uuid::Uuid,
        /// Its role there.
        role: usize,
    },
    /// Devices of different sizes and no capacity given.
    #[error("the devices differ in size ({sizes}); a mirror uses the same number of blocks on each, so pass MirrorBuilder::capacity(blocks) to say how many (see MirrorBuilder::device_blocks), or use devices of one size")]
    SizeMismatch {
        /// Each device's size.
        sizes: String,
    },
    /// A device could not be initialised at creation.
    #[error("creating the mirror failed on {name}: {source}; nothing usable was created — fix or replace the device and create again")]
    Create {
        /// The device.
        name: String,
        /// The error.
        source: io::Error,
    },
    /// A device without a usable superblock.
    #[error("{name} is not a member of a mirror: found {found}; if it is a new or wiped device, assemble without it (MirrorBuilder::allow_missing) and add it with Mirror::replace; if it never was a member, remove it from the list")]
    NotAMember {
        /// The device.
        name: String,
        /// What was found instead.
        found: String,
    },
    /// A superblock of an unknown format version.
    #[error("{name} has a mirror superblock of format version {version}, which this version of noderep does not read; use the noderep version that created it")]
    UnsupportedFormat {
        /// The device.
        name: String,
        /// Its format version.
        version: u16,
    },
    /// A device of another array.
    #[error("{name} belongs to another mirror (array {found}), not to array {expected} of {expected_from}; remove it from the list (or assemble the arrays separately)")]
    ForeignDevice {
        /// The device.
        name: String,
        /// Its array.
        found: uuid::Uuid,
        /// The array being assembled.
        expected: uuid::Uuid,
        /// The device that array was taken from.
        expected_from: String,
    },
    /// A device whose role now belongs to another device.
    #[error("{name} (device {uuid}) claims role {role}, but the array records device {holder} in that role: it was replaced and is no longer a member; remove it from the list, or wipe it and add it with Mirror::replace")]
    Replaced {
        /// The device.
        name: String,
        /// Its role.
        role: usize,
        /// Its device UUID.
        uuid: uuid::Uuid,
        /// The UUID recorded for the role.
        holder: uuid::Uuid,
    },
    /// A device smaller than the recorded layout.
    #[error("{name} has {have} blocks but the mirror's superblock records {capacity} data blocks, {need} blocks with metadata: the device was truncated or is the wrong device; restore its size (or give it explicitly), or assemble without it (MirrorBuilder::allow_missing) and Mirror::replace it")]
    TooSmallForArray {
        /// The device.
        name: String,
        /// Blocks it has.
        have: u64,
        /// Blocks each member needs.
        need: u64,
        /// Data blocks of the mirror.
        capacity: u64,
    },
    /// A member is not among the devices.
    #[error("role {role} of {devices} (device {uuid}) is missing; pass every member, or assemble degraded with MirrorBuilder::allow_missing(true) and replace it")]
    MissingMember {
        /// The role.
        role: usize,
        /// Its device UUID.
        uuid: uuid::Uuid,
        /// Members of the array.
        devices: usize,
    },
    /// Two halves that each went on without the other.
    #[error("split brain: {a} (generation {a_events}) and {b} (generation {b_events}) each recorded the other as failed and went on alone, so their contents diverged; assemble the one you trust alone (MirrorBuilder::allow_missing) and add a wiped other with Mirror::replace")]
    SplitBrain {
        /// One device.
        a: String,
        /// Its generation.
        a_events: u64,
        /// The other.
        b: String,
        /// Its generation.
        b_events: u64,
    },
    /// A data capacity of zero blocks or above the supported maximum.
    #[error("a capacity of {capacity} data blocks is not supported: use 1 to {max} blocks (MirrorBuilder::capacity)")]
    BadCapacity {
        /// The capacity asked for.
        capacity: u64,
        /// [`MirrorBuilder::MAX_CAPACITY`].
        max: u64,
    },
    /// The mirror's in-memory state could not be allocated; nothing was
    /// written to any device.
    #[error("a mirror of {capacity} data blocks needs about {bytes} bytes of memory for its expected state (56 bytes per block while it is built), which could not be allocated; nothing was written — use MirrorBuilder::capacity to mirror part of the devices, or larger blocks")]
    OutOfMemory {
        /// Data blocks of the mirror.
        capacity: u64,
        /// Bytes of memory asked for.
        bytes: u64,
    },
    /// A device holds a mirror superblock written with another block size
    /// than the one it was opened with.
    #[error("{name} holds a mirror superblock written with {recorded}-byte blocks but was opened with {opened}-byte blocks; open it with the same block size (FileDevice::builder().block_size({recorded})) — do not create a mirror on it, that would erase the one it holds")]
    OtherBlockSize {
        /// The device.
        name: String,
        /// The block size the superblock records.
        recorded: usize,
        /// The block size the device was opened with.
        opened: usize,
    },
    /// Every device is older than the generation the caller expects.
    #[error("the newest superblock is generation {events}, older than the generation {min} expected: every device was rolled back to an older image (or these are the wrong devices); restore the current images")]
    OlderThanExpected {
        /// The newest generation found.
        events: u64,
        /// The generation expected at least.
        min: u64,
    },
}
