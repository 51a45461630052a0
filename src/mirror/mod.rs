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
//! use noderep::mirror::{BlockDevice, DeviceConfig, FileDevice, Mirror, MirrorConfig, ReadOutcome};
//!
//! # fn main() -> Result<(), noderep::mirror::MirrorError> {
//! let dir = std::env::temp_dir().join(format!("noderep-mirror-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).expect("temp dir");
//! let cfg = DeviceConfig { blocks: Some(256), ..DeviceConfig::default() }; // 256 × 4 KiB
//! let devices: Vec<Box<dyn BlockDevice>> = vec![
//!     Box::new(FileDevice::open(dir.join("a"), &cfg)?),
//!     Box::new(FileDevice::open(dir.join("b"), &cfg)?),
//! ];
//! let (mut mirror, _report) = Mirror::assemble(devices, MirrorConfig::default())?;
//! mirror.write_batch(&[(0, b"hello".as_slice()), (1, b"world".as_slice())])?;
//! let mut out = Vec::new();
//! assert!(matches!(mirror.read(1, &mut out)?, ReadOutcome::Clean { .. }));
//! assert_eq!(out, b"world");
//! assert!(mirror.scrub(Default::default())?.findings.is_empty());
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
//!   batch). [`FaultyDevice`] wraps any device to inject failures.
//! * **Blocks** ([`block`]): a 32-byte header — crc32c, magic, address,
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
//!   [`MerkleTree`] over them. A read checks the copy's checksum, address
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
//! * **Assembly** ([`Mirror::assemble`]): scans every device, adopts the
//!   newest valid copy of every block (so a write torn by a crash between
//!   the devices converges to one version), rewrites the other copies, and
//!   rebuilds the expected state.
//!
//! # Trade-offs
//!
//! * Ordered mirroring (device after device) doubles write latency compared
//!   with writing the copies in parallel; in exchange no crash can destroy
//!   every copy of an *older*, acknowledged version of a block.
//! * The header costs 32 bytes of every block (payload 4064 of 4096 bytes);
//!   in exchange a block and its checksum are written in one I/O and can
//!   never disagree without being detected.
//! * Assembly scans the whole of every device (O(size)); a persistent
//!   write-intent bitmap (as Linux md has) would bound it to recently
//!   written regions. Expected state lives in memory: about 32 bytes per
//!   block including the tree (32 MiB per million blocks, i.e. per 4 GiB).
//! * The mirror is single-writer (`&mut self`): share it behind a lock.
//! * Durability [`Durability::None`] survives a process crash but not a
//!   power loss; the cost report uses it to isolate CPU cost from device
//!   latency.
//!
//! # References
//!
//! Linux md raid1 (resync, write-intent bitmaps, read repair); ZFS
//! self-healing reads and scrub; Merkle, "A Digital Signature Based on a
//! Conventional Encryption Function", CRYPTO 1987; crc32c: Castagnoli,
//! Bräuer, Herrmann, IEEE Trans. Communications 1993.
//!
//! The write path and the member states: `docs/ARCHITECTURE.md` in the
//! repository.

pub mod block;
mod device;
mod fault;
mod merkle;
mod scrub;
#[cfg(feature = "io-uring")]
mod uring;
mod writer;

#[cfg(test)]
mod tests;

pub use block::{AlignedBuf, BlockState, Corruption, HEADER_SIZE};
pub use device::{
    check_block_size, BlockDevice, BlockWrite, DeviceConfig, DeviceStats, Durability, FileDevice,
};
pub use fault::{FaultControl, FaultyDevice};
pub use merkle::{MerkleTree, TreeDiff};
pub use scrub::{AssemblyReport, ResyncReport, ScrubAction, ScrubFinding, ScrubMode, ScrubReport};
#[cfg(feature = "io-uring")]
pub use uring::UringDevice;
pub use writer::{
    DeviceId, Health, MemberState, Mirror, MirrorConfig, MirrorEvent, Problem, ReadOutcome,
    Redundancy, WarningSink, WriteAck,
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
    #[error("a mirror needs at least 2 devices, got {given}; add another device")]
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
    #[error("replacement device {name} has {have} blocks but the mirror needs {need}; use a device at least as large")]
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
    #[error("no healthy device is left in the mirror (all {devices} failed; last error: {last}); nothing was acknowledged — bring the devices back and assemble them again (Mirror::into_devices, then Mirror::assemble), which recovers every acknowledged write they hold")]
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
}
