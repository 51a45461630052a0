//! Block devices: the [`BlockDevice`] trait and its file / block-device
//! implementation with positional I/O.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::string::String;
use std::vec::Vec;

use super::block::{HEADER_SIZE, IO_ALIGN};
use super::MirrorError;
use crate::cost::{PhaseClock, WritePhase};

/// How durable a write is when a device's [`BlockDevice::write_blocks`] returns.
///
/// # Examples
///
/// ```
/// use noderep::mirror::{Durability, FileDevice};
/// # fn main() -> Result<(), noderep::mirror::MirrorError> {
/// # let path = std::env::temp_dir().join(format!("noderep-durability-doc-{}", std::process::id()));
/// let dev = FileDevice::builder()
///     .blocks(8)
///     .durability(Durability::SyncPerBatch) // fdatasync once per batch
///     .open(&path)?;
/// assert_eq!(dev.durability(), Durability::SyncPerBatch);
/// assert_eq!(Durability::default(), Durability::None);
/// # drop(dev);
/// # std::fs::remove_file(&path).ok();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// In the page cache only: survives a process crash, not a power loss.
    /// The fastest; what the cost report measures by default.
    #[default]
    None,
    /// `fdatasync` once per batch, after the batch's writes: survives power
    /// loss once acknowledged; the sync is amortised over the batch.
    SyncPerBatch,
    /// `O_DIRECT | O_DSYNC`: bypasses the page cache, every write reaches
    /// stable storage (FUA or a cache flush) before it returns. Needs
    /// buffers, offsets and lengths aligned to the logical sector size; the
    /// mirror's buffers are aligned to 4 KiB.
    Direct,
}

/// One write: whole blocks starting at `lba`. `data.len()` is a multiple of
/// the block size; with [`Durability::Direct`] `data` must be 4 KiB-aligned
/// (the mirror's staging buffers are).
///
/// # Examples
///
/// ```
/// use noderep::mirror::{AlignedBuf, BlockDevice, BlockWrite, FileDevice};
/// use noderep::cost::PhaseClock;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let path = std::env::temp_dir().join(format!("noderep-blockwrite-doc-{}", std::process::id()));
/// let mut dev = FileDevice::builder().blocks(8).open(&path)?;
/// let data = AlignedBuf::zeroed(2 * 4096); // blocks 3 and 4
/// dev.write_blocks(&[BlockWrite { lba: 3, data: &data }], &mut PhaseClock::disabled())?;
/// # std::fs::remove_file(&path).ok();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct BlockWrite<'a> {
    /// First block written.
    pub lba: u64,
    /// Whole blocks of data.
    pub data: &'a [u8],
}

/// Operation counters of a device, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Calls of [`BlockDevice::write_blocks`].
    pub write_batches: u64,
    /// System calls that submitted writes (`pwritev`, or `io_uring_enter`).
    pub write_syscalls: u64,
    /// Blocks written.
    pub blocks_written: u64,
    /// Read system calls.
    pub read_syscalls: u64,
    /// `fdatasync` calls (or io_uring fsyncs).
    pub syncs: u64,
}

/// A device of fixed-size blocks addressed by block number.
///
/// The mirror owns its devices and calls them from one thread at a time.
/// Implementations report failures as `io::Error`; the mirror decides what a
/// failure means (repair, or degrade to the surviving devices).
pub trait BlockDevice: Send {
    /// A name for messages, e.g. the path.
    fn name(&self) -> &str;
    /// Bytes per block.
    fn block_size(&self) -> usize;
    /// Number of blocks.
    fn blocks(&self) -> u64;
    /// Reads `buf.len() / block_size` blocks starting at `lba` into `buf`
    /// (4 KiB-aligned, a whole number of blocks).
    ///
    /// # Errors
    ///
    /// The device's error; an out-of-range or misaligned request is
    /// `InvalidInput`.
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes every entry of `writes` (one call per batch: the point of
    /// batching) and returns once they are as durable as the device's
    /// [`Durability`] promises. Call `clock.mark(WritePhase::Submission)` once the
    /// writes are submitted; the caller attributes the rest to completion.
    ///
    /// # Errors
    ///
    /// The device's error (some of the writes may have reached it).
    fn write_blocks(&mut self, writes: &[BlockWrite<'_>], clock: &mut PhaseClock)
        -> io::Result<()>;
    /// Operation counters so far.
    fn stats(&self) -> DeviceStats {
        DeviceStats::default()
    }
    /// What identifies the underlying file or device, so that assembly can
    /// refuse one device given twice: `(st_dev, st_ino)` of a file,
    /// `(0, st_rdev)` of a block device; None if unknown.
    fn identity(&self) -> Option<(u64, u64)> {
        None
    }
    /// Makes `count` blocks from `lba` read as zeros (creating a mirror
    /// does this to the whole device). The default writes zeros, 1 MiB at a
    /// time; [`FileDevice`] asks the file system to zero the range instead.
    ///
    /// # Errors
    ///
    /// The device's error.
    fn zero_blocks(&mut self, lba: u64, count: u64) -> io::Result<()> {
        write_zeros(self, lba, count)
    }
}

/// Writes zeros over `count` blocks from `lba`, 256 blocks per call.
pub(crate) fn write_zeros<D: BlockDevice + ?Sized>(
    dev: &mut D,
    lba: u64,
    count: u64,
) -> io::Result<()> {
    const CHUNK: u64 = 256;
    let bs = dev.block_size();
    let zeros = super::block::AlignedBuf::zeroed(CHUNK.min(count.max(1)) as usize * bs);
    let mut at = lba;
    while at < lba + count {
        let n = CHUNK.min(lba + count - at);
        let w = [BlockWrite {
            lba: at,
            data: &zeros[..n as usize * bs],
        }];
        dev.write_blocks(&w, &mut PhaseClock::disabled())?;
        at += n;
    }
    Ok(())
}

impl<D: BlockDevice + ?Sized> BlockDevice for Box<D> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn block_size(&self) -> usize {
        (**self).block_size()
    }
    fn blocks(&self) -> u64 {
        (**self).blocks()
    }
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_blocks(lba, buf)
    }
    fn write_blocks(
        &mut self,
        writes: &[BlockWrite<'_>],
        clock: &mut PhaseClock,
    ) -> io::Result<()> {
        (**self).write_blocks(writes, clock)
    }
    fn stats(&self) -> DeviceStats {
        (**self).stats()
    }
    fn identity(&self) -> Option<(u64, u64)> {
        (**self).identity()
    }
    fn zero_blocks(&mut self, lba: u64, count: u64) -> io::Result<()> {
        (**self).zero_blocks(lba, count)
    }
}

/// Opens a [`FileDevice`] (or, with the `io-uring` feature, a
/// `UringDevice`): block size, number of blocks, durability.
///
/// # Examples
///
/// ```
/// use noderep::mirror::{BlockDevice, Durability, FileDevice};
/// # fn main() -> Result<(), noderep::mirror::MirrorError> {
/// # let path = std::env::temp_dir().join(format!("noderep-device-doc-{}", std::process::id()));
/// let dev = FileDevice::builder()
///     .blocks(128) // created and preallocated if missing
///     .durability(Durability::SyncPerBatch)
///     .open(&path)?;
/// assert_eq!((dev.blocks(), dev.block_size()), (128, 4096));
/// # drop(dev);
/// # std::fs::remove_file(&path).ok();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct DeviceBuilder {
    /// Bytes per block.
    block_size: usize,
    /// Blocks wanted (None: the existing size).
    blocks: Option<u64>,
    /// Durability of each batch.
    durability: Durability,
}

impl Default for DeviceBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceBuilder {
    /// 4 KiB blocks, the device's existing size, [`Durability::None`].
    pub fn new() -> Self {
        Self {
            block_size: 4096,
            blocks: None,
            durability: Durability::None,
        }
    }

    /// Bytes per block: a power of two from 512 to 1 MiB (4096 by default).
    pub fn block_size(mut self, bytes: usize) -> Self {
        self.block_size = bytes;
        self
    }

    /// Blocks wanted. A regular file is created if missing and preallocated
    /// (`fallocate`) to this size; without it the existing size is used (a
    /// block device: all of it).
    pub fn blocks(mut self, blocks: u64) -> Self {
        self.blocks = Some(blocks);
        self
    }

    /// Durability of each batch ([`Durability::None`] by default).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Opens (creating and preallocating a regular file if needed) `path`.
    ///
    /// # Errors
    ///
    /// [`MirrorError::BadBlockSize`], [`MirrorError::Open`],
    /// [`MirrorError::DirectUnsupported`], [`MirrorError::TooSmall`].
    pub fn open(&self, path: impl AsRef<Path>) -> Result<FileDevice, MirrorError> {
        FileDevice::open_with(path.as_ref(), self)
    }

    /// Opens `path` as [`DeviceBuilder::open`] does and sets up an io_uring
    /// of `entries` submission entries (a power of two, e.g. 128).
    ///
    /// # Errors
    ///
    /// As [`DeviceBuilder::open`], and [`MirrorError::Open`] when the
    /// kernel or a sandbox refuses io_uring.
    #[cfg(feature = "io-uring")]
    pub fn open_uring(
        &self,
        path: impl AsRef<Path>,
        entries: u32,
    ) -> Result<super::UringDevice, MirrorError> {
        super::UringDevice::open_with(path.as_ref(), self, entries)
    }
}

/// Checks a block size: a power of two, 512 ..= 1 MiB (so that it holds a
/// header and payload, and `O_DIRECT` alignment works).
pub(crate) fn check_block_size(block_size: usize) -> Result<(), MirrorError> {
    if !block_size.is_power_of_two() || !(512..=1 << 20).contains(&block_size) {
        return Err(MirrorError::BadBlockSize { block_size });
    }
    debug_assert!(block_size > HEADER_SIZE);
    Ok(())
}

/// A regular file or a block device (`/dev/...`) used through positional
/// I/O: `pread`, `pwritev` (one per run of consecutive blocks) and
/// `fdatasync` per batch, or `O_DIRECT | O_DSYNC`. Opened through
/// [`FileDevice::builder`].
///
/// # Examples
///
/// ```
/// use noderep::cost::PhaseClock;
/// use noderep::mirror::{AlignedBuf, BlockDevice, BlockWrite, FileDevice};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let path = std::env::temp_dir().join(format!("noderep-filedevice-doc-{}", std::process::id()));
/// let mut dev = FileDevice::builder().block_size(512).blocks(16).open(&path)?;
/// assert_eq!((dev.blocks(), dev.block_size()), (16, 512));
/// let mut data = AlignedBuf::zeroed(512);
/// data.fill(0x5a);
/// dev.write_blocks(&[BlockWrite { lba: 7, data: &data }], &mut PhaseClock::disabled())?;
/// let mut back = AlignedBuf::zeroed(2 * 512);
/// dev.read_blocks(6, &mut back)?; // blocks 6 and 7
/// assert!(back[..512].iter().all(|&b| b == 0)); // never written
/// assert!(back[512..].iter().all(|&b| b == 0x5a));
/// assert_eq!(dev.stats().blocks_written, 1);
/// # drop(dev);
/// # std::fs::remove_file(&path).ok();
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    name: String,
    block_size: usize,
    blocks: u64,
    durability: Durability,
    stats: DeviceStats,
    iov: Vec<libc::iovec>,
    identity: Option<(u64, u64)>,
}

// SAFETY: the iovec scratch holds raw pointers only during one write_blocks
// call (it is cleared before returning); File and the rest are Send.
unsafe impl Send for FileDevice {}

/// `BLKGETSIZE64`: size of a block device in bytes (linux/fs.h).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

impl FileDevice {
    /// How to open one: see [`DeviceBuilder`].
    pub fn builder() -> DeviceBuilder {
        DeviceBuilder::new()
    }

    /// Opens `path` as `config` says.
    pub(crate) fn open_with(path: &Path, config: &DeviceBuilder) -> Result<Self, MirrorError> {
        check_block_size(config.block_size)?;
        let open_err = |source: io::Error| MirrorError::Open {
            path: PathBuf::from(path),
            source,
        };
        let mut flags = libc::O_CLOEXEC;
        if config.durability == Durability::Direct {
            flags |= libc::O_DIRECT | libc::O_DSYNC;
        }
        let existing = std::fs::metadata(path);
        let existed = existing.is_ok();
        let is_block = existing
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(!is_block && config.blocks.is_some())
            .truncate(false)
            .custom_flags(flags)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EINVAL) && config.durability == Durability::Direct
                {
                    MirrorError::DirectUnsupported {
                        path: PathBuf::from(path),
                    }
                } else {
                    open_err(e)
                }
            })?;
        let bs = config.block_size as u64;
        let blocks = if is_block {
            let mut bytes: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which
            // points to a live, writable u64.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut bytes as *mut u64) };
            if rc != 0 {
                return Err(open_err(io::Error::last_os_error()));
            }
            let have = bytes / bs;
            match config.blocks {
                Some(want) if want > have => {
                    return Err(MirrorError::TooSmall {
                        path: PathBuf::from(path),
                        want,
                        have,
                    })
                }
                Some(want) => want,
                None => have,
            }
        } else {
            let len = file.metadata().map_err(open_err)?.len();
            match config.blocks {
                Some(want) => {
                    let bytes = want.checked_mul(bs).ok_or(MirrorError::TooSmall {
                        path: PathBuf::from(path),
                        want,
                        have: len / bs,
                    })?;
                    if len < bytes {
                        if let Err(e) = preallocate(&file, bytes) {
                            // A file this call created is not left behind,
                            // empty, by a size the file system refused.
                            if !existed {
                                let _ = std::fs::remove_file(path);
                            }
                            return Err(open_err(io::Error::new(
                                e.kind(),
                                std::format!(
                                    "cannot make it {want} blocks ({bytes} bytes): {e}; ask for fewer blocks or use a file system with room for them"
                                ),
                            )));
                        }
                    }
                    want
                }
                None => len / bs,
            }
        };
        if blocks == 0 {
            if !existed {
                let _ = std::fs::remove_file(path);
            }
            if !is_block && config.blocks.is_none() {
                return Err(open_err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    std::format!(
                        "it holds less than one {bs}-byte block; to create a device file, give its size with DeviceBuilder::blocks (MirrorBuilder::device_blocks says how many)"
                    ),
                )));
            }
            return Err(MirrorError::TooSmall {
                path: PathBuf::from(path),
                want: 1,
                have: 0,
            });
        }
        let identity = file_identity(&file);
        Ok(Self {
            identity,
            file,
            name: path.display().to_string(),
            block_size: config.block_size,
            blocks,
            durability: config.durability,
            stats: DeviceStats::default(),
            iov: Vec::new(),
        })
    }

    /// Splits the device into its open file, name, block size, block count
    /// and durability (for other backends built on the same opening logic).
    #[cfg_attr(not(feature = "io-uring"), allow(dead_code))]
    pub(crate) fn into_parts(self) -> (File, String, usize, u64, Durability) {
        (
            self.file,
            self.name,
            self.block_size,
            self.blocks,
            self.durability,
        )
    }

    /// The durability this device was opened with.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Buffer alignment O_DIRECT needs here: the block size, at most 4 KiB.
    fn direct_align(&self) -> usize {
        self.block_size.min(IO_ALIGN)
    }

    fn check_range(&self, lba: u64, len: usize) -> io::Result<()> {
        check_block_range(&self.name, self.block_size, self.blocks, lba, len)
    }

    /// Writes `iov` at `offset` completely (retrying short writes and EINTR).
    fn pwritev_all(&mut self, mut offset: u64, count: usize) -> io::Result<()> {
        let mut first = 0usize;
        while first < count {
            let n = (count - first).min(libc::UIO_MAXIOV as usize);
            // SAFETY: iov[first..first+n] are iovecs built from live &[u8]
            // borrowed for the duration of write_blocks; pwritev only reads them.
            let rc = unsafe {
                libc::pwritev(
                    self.file.as_raw_fd(),
                    self.iov.as_ptr().add(first),
                    n as libc::c_int,
                    offset as libc::off_t,
                )
            };
            self.stats.write_syscalls += 1;
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if rc == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "pwritev wrote nothing",
                ));
            }
            let mut done = rc as usize;
            offset += done as u64;
            while done > 0 {
                let v = &mut self.iov[first];
                if done >= v.iov_len {
                    done -= v.iov_len;
                    first += 1;
                } else {
                    // SAFETY: advancing within the same buffer, done < iov_len.
                    v.iov_base = unsafe { (v.iov_base as *mut u8).add(done) } as *mut libc::c_void;
                    v.iov_len -= done;
                    done = 0;
                }
            }
        }
        Ok(())
    }
}

/// `(st_dev, st_ino)` of a file, `(0, st_rdev)` of a block device.
pub(super) fn file_identity(file: &File) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata().ok()?;
    Some(if m.file_type().is_block_device() {
        (0, m.rdev())
    } else {
        (m.dev(), m.ino())
    })
}

/// Checks that `len` bytes at block `lba` are whole blocks inside a device
/// of `blocks` blocks of `block_size` bytes (shared by every backend).
pub(super) fn check_block_range(
    name: &str,
    block_size: usize,
    blocks: u64,
    lba: u64,
    len: usize,
) -> io::Result<()> {
    let n = (len / block_size) as u64;
    if len % block_size != 0 || lba.checked_add(n).is_none_or(|end| end > blocks) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            std::format!(
                "{name}: {len} bytes at block {lba} is not a whole number of blocks inside the device's {blocks} blocks"
            ),
        ));
    }
    Ok(())
}

/// Reserves `bytes` of disk for `file` (falling back to `set_len` where the
/// file system cannot preallocate).
fn preallocate(file: &File, bytes: u64) -> io::Result<()> {
    // SAFETY: fallocate on an owned, open descriptor; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => file.set_len(bytes),
        _ => Err(e),
    }
}

impl BlockDevice for FileDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn block_size(&self) -> usize {
        self.block_size
    }

    fn blocks(&self) -> u64 {
        self.blocks
    }

    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check_range(lba, buf.len())?;
        if self.durability == Durability::Direct && buf.as_ptr() as usize % self.direct_align() != 0
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "O_DIRECT needs a buffer aligned to the block size (use mirror::AlignedBuf)",
            ));
        }
        let mut done = 0usize;
        let base = lba * self.block_size as u64;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: rest is a live, writable buffer of rest.len() bytes.
            let rc = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    rest.as_mut_ptr() as *mut libc::c_void,
                    rest.len(),
                    (base + done as u64) as libc::off_t,
                )
            };
            self.stats.read_syscalls += 1;
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if rc == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    std::format!("{}: device ended at byte {}", self.name, base + done as u64),
                ));
            }
            done += rc as usize;
        }
        Ok(())
    }

    fn write_blocks(
        &mut self,
        writes: &[BlockWrite<'_>],
        clock: &mut PhaseClock,
    ) -> io::Result<()> {
        self.stats.write_batches += 1;
        let mut i = 0;
        while i < writes.len() {
            // Gather a run of writes that continue each other into one pwritev.
            self.iov.clear();
            let start = writes[i].lba;
            let mut next = start;
            while i < writes.len() && writes[i].lba == next {
                let w = writes[i];
                self.check_range(w.lba, w.data.len())?;
                if self.durability == Durability::Direct
                    && w.data.as_ptr() as usize % self.direct_align() != 0
                {
                    self.iov.clear();
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "O_DIRECT needs buffers aligned to the block size (use mirror::AlignedBuf)",
                    ));
                }
                self.iov.push(libc::iovec {
                    iov_base: w.data.as_ptr() as *mut libc::c_void,
                    iov_len: w.data.len(),
                });
                next += (w.data.len() / self.block_size) as u64;
                i += 1;
            }
            let count = self.iov.len();
            let r = self.pwritev_all(start * self.block_size as u64, count);
            self.iov.clear();
            r?;
            self.stats.blocks_written += next - start;
        }
        clock.mark(WritePhase::Submission);
        if self.durability == Durability::SyncPerBatch && !writes.is_empty() {
            self.file.sync_data()?;
            self.stats.syncs += 1;
        }
        Ok(())
    }

    fn stats(&self) -> DeviceStats {
        self.stats
    }

    fn identity(&self) -> Option<(u64, u64)> {
        self.identity
    }

    fn zero_blocks(&mut self, lba: u64, count: u64) -> io::Result<()> {
        self.check_range(lba, (count as usize).saturating_mul(self.block_size))?;
        if self.identity.is_some_and(|(dev, _)| dev != 0) {
            let bs = self.block_size as u64;
            // SAFETY: fallocate on an owned, open descriptor; no memory is passed.
            let rc = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                    (lba * bs) as libc::off_t,
                    (count * bs) as libc::off_t,
                )
            };
            if rc == 0 {
                return Ok(());
            }
        }
        // Block devices, and file systems without FALLOC_FL_ZERO_RANGE.
        write_zeros(self, lba, count)
    }
}
