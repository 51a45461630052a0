//! The io_uring backend (cargo feature `io-uring`): a whole batch is one
//! `io_uring_enter` per device.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::string::String;
use std::vec::Vec;

use io_uring::{opcode, squeue, types, IoUring};

use super::device::{
    check_block_range, BlockDevice, BlockWrite, DeviceBuilder, DeviceStats, Durability, FileDevice,
};
use super::MirrorError;
use crate::cost::{PhaseClock, WritePhase};

/// A file or block device written through io_uring: one `Writev` entry per
/// run of consecutive blocks, plus (for [`Durability::SyncPerBatch`]) one
/// draining `fdatasync` entry, all submitted and reaped with a single
/// `io_uring_enter` per batch. Reads use `pread` (they are off the hot path).
///
/// Buffered writes may be handed to io_uring's kernel worker threads; their
/// CPU time shows in `CLOCK_PROCESS_CPUTIME_ID`, not in the caller's thread
/// clock (see [`crate::cost`]). A short write is reported as an error (the
/// mirror then takes the device out): files and block devices only write
/// short when they run out of space.
pub struct UringDevice {
    file: File,
    ring: IoUring,
    name: String,
    block_size: usize,
    blocks: u64,
    durability: Durability,
    stats: DeviceStats,
    /// iovecs of the batch in flight: filled, submitted and fully reaped
    /// within one write_blocks call.
    iov: Vec<libc::iovec>,
    /// (first iovec, iovec count, bytes) of each run.
    runs: Vec<(usize, usize, usize)>,
}

// SAFETY: the iovec scratch holds raw pointers only during one write_blocks
// call (every entry is reaped before it returns); the ring and file are owned.
unsafe impl Send for UringDevice {}

impl std::fmt::Debug for UringDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringDevice")
            .field("name", &self.name)
            .field("blocks", &self.blocks)
            .finish()
    }
}

impl UringDevice {
    /// Opens `path` as `config` says and sets up a ring of `entries`
    /// submission entries; see [`super::DeviceBuilder::open_uring`].
    pub(crate) fn open_with(
        path: &Path,
        config: &DeviceBuilder,
        entries: u32,
    ) -> Result<Self, MirrorError> {
        let (file, name, block_size, blocks, durability) =
            FileDevice::open_with(path, config)?.into_parts();
        let ring = IoUring::new(entries.max(2)).map_err(|source| MirrorError::Open {
            path: path.into(),
            source: io::Error::new(
                source.kind(),
                std::format!("io_uring setup failed ({source}); the kernel may lack io_uring (Linux 5.6+) or a sandbox forbids it — use FileDevice instead"),
            ),
        })?;
        Ok(Self {
            file,
            ring,
            name,
            block_size,
            blocks,
            durability,
            stats: DeviceStats::default(),
            iov: Vec::new(),
            runs: Vec::new(),
        })
    }

    /// Pushes and completes entries for runs `runs[from..to]` (and a sync
    /// if `sync`); waits for every pushed entry before returning.
    fn submit_runs(
        &mut self,
        base_lba: &[u64],
        from: usize,
        to: usize,
        sync: bool,
        clock: &mut PhaseClock,
    ) -> io::Result<usize> {
        let fd = types::Fd(self.file.as_raw_fd());
        let mut pushed = 0usize;
        {
            let mut sq = self.ring.submission();
            for (r, &(first, count, _bytes)) in self.runs[from..to].iter().enumerate() {
                let offset = base_lba[from + r] * self.block_size as u64;
                // SAFETY: first..first+count are valid indices of self.iov,
                // which is not modified until every entry is reaped below.
                let iov = unsafe { self.iov.as_ptr().add(first) };
                let e = opcode::Writev::new(fd, iov, count as u32)
                    .offset(offset)
                    .build()
                    .user_data((from + r) as u64);
                // SAFETY: the iovecs and the buffers they point to (borrowed
                // by write_blocks' caller) stay valid until the entry is
                // reaped, which happens before write_blocks returns.
                unsafe { sq.push(&e) }
                    .map_err(|_| io::Error::other("io_uring submission queue full"))?;
                pushed += 1;
            }
            if sync {
                let e = opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
                    .flags(squeue::Flags::IO_DRAIN)
                    .user_data(u64::MAX);
                // SAFETY: an fsync entry references no memory.
                unsafe { sq.push(&e) }
                    .map_err(|_| io::Error::other("io_uring submission queue full"))?;
                pushed += 1;
            }
        }
        let mut done = 0usize;
        let mut first_err: Option<io::Error> = None;
        while done < pushed {
            match self.ring.submit_and_wait(pushed - done) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e),
            }
            self.stats.write_syscalls += 1;
            // The enter call submitted (and, for buffered files, performed)
            // the writes; reaping below is completion work.
            clock.mark(WritePhase::Submission);
            for cqe in self.ring.completion() {
                done += 1;
                let ud = cqe.user_data();
                let res = cqe.result();
                if ud == u64::MAX {
                    self.stats.syncs += 1;
                    if res < 0 && first_err.is_none() {
                        first_err = Some(io::Error::from_raw_os_error(-res));
                    }
                    continue;
                }
                let want = self.runs[ud as usize].2;
                if res < 0 {
                    first_err.get_or_insert(io::Error::from_raw_os_error(-res));
                } else if res as usize != want {
                    first_err.get_or_insert(io::Error::new(
                        io::ErrorKind::WriteZero,
                        std::format!("{}: short write ({res} of {want} bytes)", self.name),
                    ));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(pushed),
        }
    }
}

impl BlockDevice for UringDevice {
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
        check_block_range(&self.name, self.block_size, self.blocks, lba, buf.len())?;
        self.stats.read_syscalls += 1;
        self.file.read_exact_at(buf, lba * self.block_size as u64)
    }

    fn write_blocks(
        &mut self,
        writes: &[BlockWrite<'_>],
        clock: &mut PhaseClock,
    ) -> io::Result<()> {
        self.stats.write_batches += 1;
        self.iov.clear();
        self.runs.clear();
        let mut base: Vec<u64> = Vec::new();
        let mut next = u64::MAX;
        for w in writes {
            check_block_range(
                &self.name,
                self.block_size,
                self.blocks,
                w.lba,
                w.data.len(),
            )?;
            let n = (w.data.len() / self.block_size) as u64;
            if w.lba == next
                && self
                    .runs
                    .last()
                    .is_some_and(|r| r.1 < libc::UIO_MAXIOV as usize)
            {
                let r = self.runs.last_mut().expect("checked");
                r.1 += 1;
                r.2 += w.data.len();
            } else {
                self.runs.push((self.iov.len(), 1, w.data.len()));
                base.push(w.lba);
            }
            self.iov.push(libc::iovec {
                iov_base: w.data.as_ptr() as *mut libc::c_void,
                iov_len: w.data.len(),
            });
            self.stats.blocks_written += n;
            next = w.lba + n;
        }
        let room = (self.ring.params().sq_entries() as usize)
            .saturating_sub(1)
            .max(1);
        let sync = self.durability == Durability::SyncPerBatch && !writes.is_empty();
        let mut from = 0;
        let result = loop {
            let to = (from + room).min(self.runs.len());
            let last = to == self.runs.len();
            if let Err(e) = self.submit_runs(&base, from, to, sync && last, clock) {
                break Err(e);
            }
            if last {
                break Ok(());
            }
            from = to;
        };
        self.iov.clear();
        result
    }

    fn identity(&self) -> Option<(u64, u64)> {
        super::device::file_identity(&self.file)
    }

    fn stats(&self) -> DeviceStats {
        self.stats
    }
}
