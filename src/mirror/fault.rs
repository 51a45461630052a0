//! A fault-injecting wrapper around any [`BlockDevice`], for testing what a
//! mirror does when a device misbehaves (cargo feature `fault-injection`).

use std::io;
use std::string::String;

use super::device::{BlockDevice, BlockWrite, DeviceStats};
use crate::cost::PhaseClock;
use crate::sync::{Arc, AtomicBool, AtomicU64, Ordering};

/// "No fault armed" in the address / countdown slots.
const OFF: u64 = u64::MAX;

/// Shared fault switches; see [`FaultControl`].
///
/// Every field is an independent switch that carries no other data, so all
/// accesses are Relaxed: the test arms a switch and then drives the device
/// (usually from the same thread, where program order suffices); an
/// injector on another thread only needs the switch itself to become visible.
#[derive(Debug)]
struct Switches {
    /// Blocks still to be written before the next write fails (OFF = none).
    fail_write_in: AtomicU64,
    /// Blocks still to be written before the next write tears (OFF = none).
    tear_write_in: AtomicU64,
    /// Bytes of the torn block that do reach the device.
    tear_keep: AtomicU64,
    /// Address whose reads fail with EIO (OFF = none): a bad sector.
    bad_sector: AtomicU64,
    /// Address whose next read returns one flipped bit (OFF = none).
    flip_on_read: AtomicU64,
    /// Address whose next write is acknowledged but dropped (OFF = none).
    lose_write: AtomicU64,
    /// Physical block whose next write tears (OFF = none).
    tear_block: AtomicU64,
    /// A tear kills the whole process (SIGKILL) instead of failing the write.
    kill_on_tear: AtomicBool,
    /// The device has vanished: every operation fails with ENODEV.
    gone: AtomicBool,
    /// Faults that actually fired.
    fired: AtomicU64,
}

/// The handle that arms faults on a [`FaultyDevice`] (clone it freely).
#[derive(Debug, Clone)]
pub struct FaultControl {
    s: Arc<Switches>,
}

impl FaultControl {
    /// The next write fails with EIO after `after_blocks` more blocks have
    /// been written (those are written; the rest of that call is not).
    pub fn fail_write_after(&self, after_blocks: u64) {
        // Relaxed: independent switch, see `Switches`.
        self.s.fail_write_in.store(after_blocks, Ordering::Relaxed);
    }

    /// A crash in the middle of a write: after `after_blocks` more blocks,
    /// only the first `keep_bytes` of the next block reach the device, the
    /// write fails, and the device stays gone (as after a power loss) until
    /// [`FaultControl::revive`].
    pub fn tear_write_after(&self, after_blocks: u64, keep_bytes: usize) {
        // Relaxed: independent switches, see `Switches`.
        self.s.tear_keep.store(keep_bytes as u64, Ordering::Relaxed);
        self.s.tear_write_in.store(after_blocks, Ordering::Relaxed);
    }

    /// Tears the next write of physical block `lba` (only the first
    /// `keep_bytes` reach the device, then it is gone as after a power loss):
    /// aims a crash at one metadata block, e.g. a superblock copy.
    pub fn tear_write_of(&self, lba: u64, keep_bytes: usize) {
        // Relaxed: independent switches, see `Switches`.
        self.s.tear_keep.store(keep_bytes as u64, Ordering::Relaxed);
        self.s.tear_block.store(lba, Ordering::Relaxed);
    }

    /// A real crash: after `after_blocks` more blocks, the first
    /// `keep_bytes` of the next block are written and the process kills
    /// itself with SIGKILL (no unwinding, no destructors, no flush).
    pub fn kill_process_after(&self, after_blocks: u64, keep_bytes: usize) {
        // Relaxed: independent switches, see `Switches`.
        self.s.kill_on_tear.store(true, Ordering::Relaxed);
        self.tear_write_after(after_blocks, keep_bytes);
    }

    /// A real crash aimed at one block: the next write of physical block
    /// `lba` writes its first `keep_bytes` and the process kills itself with
    /// SIGKILL (e.g. in the middle of a superblock update).
    pub fn kill_process_at_write_of(&self, lba: u64, keep_bytes: usize) {
        // Relaxed: independent switches, see `Switches`.
        self.s.kill_on_tear.store(true, Ordering::Relaxed);
        self.tear_write_of(lba, keep_bytes);
    }

    /// Reads touching block `lba` fail with EIO until cleared.
    pub fn bad_sector(&self, lba: u64) {
        // Relaxed: independent switch, see `Switches`.
        self.s.bad_sector.store(lba, Ordering::Relaxed);
    }

    /// The next read of block `lba` returns its data with one bit flipped
    /// (corruption in transit; the stored copy is intact).
    pub fn flip_on_next_read(&self, lba: u64) {
        // Relaxed: independent switch, see `Switches`.
        self.s.flip_on_read.store(lba, Ordering::Relaxed);
    }

    /// The next write of block `lba` reports success but is dropped (a lost
    /// write: the device keeps the old, valid-looking copy).
    pub fn lose_next_write(&self, lba: u64) {
        // Relaxed: independent switch, see `Switches`.
        self.s.lose_write.store(lba, Ordering::Relaxed);
    }

    /// The device disappears: every operation fails with ENODEV.
    pub fn vanish(&self) {
        // Relaxed: independent switch, see `Switches`.
        self.s.gone.store(true, Ordering::Relaxed);
    }

    /// The device comes back and every armed fault is cleared.
    pub fn revive(&self) {
        // Relaxed: independent switches, see `Switches`.
        self.s.gone.store(false, Ordering::Relaxed);
        self.s.kill_on_tear.store(false, Ordering::Relaxed);
        for slot in [
            &self.s.fail_write_in,
            &self.s.tear_write_in,
            &self.s.tear_block,
            &self.s.bad_sector,
            &self.s.flip_on_read,
            &self.s.lose_write,
        ] {
            // Relaxed: an independent switch (see `Switches`).
            slot.store(OFF, Ordering::Relaxed);
        }
    }

    /// How many faults have fired so far (each failed or torn write, failed
    /// read, flipped read, lost write and refused operation counts once).
    pub fn fired(&self) -> u64 {
        // Relaxed: a statistic read after the operations it counts, on the same thread.
        self.s.fired.load(Ordering::Relaxed)
    }

    fn fire(&self) {
        // Relaxed: a statistic, see `fired`.
        self.s.fired.fetch_add(1, Ordering::Relaxed);
    }
}

/// A device that passes everything to `D` except the faults armed through
/// its [`FaultControl`]. Fault addresses are physical blocks of the device
/// (logical block `lba` of a mirror is at [`super::Mirror::data_start`]` + lba`).
///
/// # Examples
///
/// ```
/// use noderep::mirror::{BlockDevice, FaultyDevice, FileDevice, Mirror, WarningSink};
/// # fn main() -> Result<(), noderep::mirror::MirrorError> {
/// # let dir = std::env::temp_dir().join(format!("noderep-faulty-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).expect("temp dir");
/// let cfg = FileDevice::builder().blocks(64);
/// let (flaky, ctl) = FaultyDevice::new(cfg.open(dir.join("a"))?);
/// let good = cfg.open(dir.join("b"))?;
/// let devs: Vec<Box<dyn BlockDevice>> = vec![Box::new(flaky), Box::new(good)];
/// let mut m = Mirror::builder().warnings(WarningSink::Silent).create(devs)?;
/// ctl.vanish();
/// m.write(1, b"still acknowledged by the survivor")?;
/// assert_eq!(ctl.fired(), 1);
/// # drop(m);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FaultyDevice<D> {
    inner: D,
    ctl: FaultControl,
    name: String,
}

impl<D: BlockDevice> FaultyDevice<D> {
    /// Wraps `inner`; returns the device and the handle that arms its faults.
    pub fn new(inner: D) -> (Self, FaultControl) {
        let ctl = FaultControl {
            s: Arc::new(Switches {
                fail_write_in: AtomicU64::new(OFF),
                tear_write_in: AtomicU64::new(OFF),
                tear_keep: AtomicU64::new(0),
                bad_sector: AtomicU64::new(OFF),
                flip_on_read: AtomicU64::new(OFF),
                lose_write: AtomicU64::new(OFF),
                tear_block: AtomicU64::new(OFF),
                kill_on_tear: AtomicBool::new(false),
                gone: AtomicBool::new(false),
                fired: AtomicU64::new(0),
            }),
        };
        let name = std::format!("faulty({})", inner.name());
        (
            Self {
                inner,
                ctl: ctl.clone(),
                name,
            },
            ctl,
        )
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn gone_error(&self) -> io::Error {
        self.ctl.fire();
        io::Error::from_raw_os_error(libc::ENODEV)
    }

    /// Takes one armed countdown step for `blocks` blocks: returns how many
    /// blocks may pass before the fault fires, or None if it does not fire.
    fn countdown(slot: &AtomicU64, blocks: u64) -> Option<u64> {
        // Relaxed: independent switch, see `Switches`.
        let left = slot.load(Ordering::Relaxed);
        if left == OFF {
            return None;
        }
        if left < blocks {
            slot.store(OFF, Ordering::Relaxed);
            Some(left)
        } else {
            slot.store(left - blocks, Ordering::Relaxed);
            None
        }
    }
}

impl<D: BlockDevice> BlockDevice for FaultyDevice<D> {
    fn name(&self) -> &str {
        &self.name
    }

    fn block_size(&self) -> usize {
        self.inner.block_size()
    }

    fn blocks(&self) -> u64 {
        self.inner.blocks()
    }

    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> io::Result<()> {
        let s = &self.ctl.s;
        // Relaxed: independent switches, see `Switches`.
        if s.gone.load(Ordering::Relaxed) {
            return Err(self.gone_error());
        }
        let bs = self.inner.block_size();
        let n = (buf.len() / bs) as u64;
        // Relaxed: an independent switch (see `Switches`).
        let bad = s.bad_sector.load(Ordering::Relaxed);
        if bad != OFF && (lba..lba + n).contains(&bad) {
            self.ctl.fire();
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.read_blocks(lba, buf)?;
        // Relaxed: an independent switch (see `Switches`).
        let flip = s.flip_on_read.load(Ordering::Relaxed);
        if flip != OFF && (lba..lba + n).contains(&flip) {
            // Relaxed: an independent switch (see `Switches`).
            s.flip_on_read.store(OFF, Ordering::Relaxed);
            let at = (flip - lba) as usize * bs + bs / 2;
            buf[at] ^= 0x10;
            self.ctl.fire();
        }
        Ok(())
    }

    fn write_blocks(
        &mut self,
        writes: &[BlockWrite<'_>],
        clock: &mut PhaseClock,
    ) -> io::Result<()> {
        let s = &self.ctl.s;
        // Relaxed: independent switches, see `Switches`.
        if s.gone.load(Ordering::Relaxed) {
            return Err(self.gone_error());
        }
        let bs = self.inner.block_size();
        let total: u64 = writes.iter().map(|w| (w.data.len() / bs) as u64).sum();
        // Relaxed: an independent switch (see `Switches`).
        let lost = s.lose_write.load(Ordering::Relaxed);
        let fail_at = Self::countdown(&s.fail_write_in, total);
        let tear_at = Self::countdown(&s.tear_write_in, total);
        let stop = match (fail_at, tear_at) {
            (Some(f), Some(t)) => Some(f.min(t)),
            (f, t) => f.or(t),
        };
        // Relaxed: an independent switch (see `Switches`).
        let tear_block = s.tear_block.load(Ordering::Relaxed);
        let aimed = tear_block != OFF && writes.iter().any(|w| covers(w, tear_block, bs));
        if stop.is_none() && !aimed && (lost == OFF || !writes.iter().any(|w| covers(w, lost, bs)))
        {
            return self.inner.write_blocks(writes, clock);
        }
        // Slow path: write block by block up to the fault.
        let limit = stop.unwrap_or(u64::MAX);
        let mut written = 0u64;
        for w in writes {
            for (k, block) in w.data.chunks_exact(bs).enumerate() {
                let lba = w.lba + k as u64;
                if written == limit || (aimed && lba == tear_block) {
                    let torn =
                        lba == tear_block || (tear_at == Some(limit) && fail_at != Some(limit));
                    if lba == tear_block {
                        // Relaxed: an independent switch (see `Switches`).
                        s.tear_block.store(OFF, Ordering::Relaxed);
                    }
                    if torn {
                        // Keep the first bytes, then the old rest of the block.
                        // Relaxed: an independent switch (see `Switches`).
                        let keep = (s.tear_keep.load(Ordering::Relaxed) as usize).min(bs);
                        let mut mix = super::block::AlignedBuf::zeroed(bs);
                        if self.inner.read_blocks(lba, &mut mix).is_ok() {
                            mix[..keep].copy_from_slice(&block[..keep]);
                            let part = [BlockWrite { lba, data: &mix }];
                            self.inner.write_blocks(&part, clock)?;
                        }
                        // Relaxed: an independent switch (see `Switches`).
                        if s.kill_on_tear.load(Ordering::Relaxed) {
                            // Says where the crash hit (for campaign tallies).
                            std::eprintln!(
                                "noderep fault injection: SIGKILL while writing block {lba} ({keep} of {bs} bytes written)"
                            );
                            // SAFETY: kill(2) on our own pid has no memory
                            // effects; SIGKILL ends the process here.
                            unsafe {
                                libc::kill(libc::getpid(), libc::SIGKILL);
                            }
                        }
                        // Relaxed: an independent switch (see `Switches`).
                        s.gone.store(true, Ordering::Relaxed);
                    }
                    self.ctl.fire();
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                if lba == lost {
                    // Relaxed: an independent switch (see `Switches`).
                    s.lose_write.store(OFF, Ordering::Relaxed);
                    self.ctl.fire();
                } else {
                    self.inner
                        .write_blocks(&[BlockWrite { lba, data: block }], clock)?;
                }
                written += 1;
            }
        }
        Ok(())
    }

    fn stats(&self) -> DeviceStats {
        self.inner.stats()
    }

    fn identity(&self) -> Option<(u64, u64)> {
        self.inner.identity()
    }

    fn zero_blocks(&mut self, lba: u64, count: u64) -> io::Result<()> {
        self.inner.zero_blocks(lba, count)
    }
}

/// True if `w` writes block `lba`.
fn covers(w: &BlockWrite<'_>, lba: u64, bs: usize) -> bool {
    lba >= w.lba && lba < w.lba + (w.data.len() / bs) as u64
}
