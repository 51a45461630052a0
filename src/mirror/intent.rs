//! Persistent metadata at run time: the superblock updates, the
//! write-intent bitmap (set before a region is written, cleared lazily) and
//! the sequence table (the expected `(sequence, crc)` of every block, so a
//! block rolled back or zeroed on every copy is caught after a restart).
//!
//! # How it works
//!
//! * **Before a write** (`mark_regions`): every region the batch touches is
//!   stamped with the current epoch; a region whose bit is clear gets its
//!   bit set in the bitmap blocks of every in-sync device *before* any data
//!   of the batch is written. The common case (bit already set) costs one
//!   load and one store per block and no I/O.
//! * **Sequence numbers** (`reserve_seqs`): the superblock records a limit
//!   below which every number handed out lies; it is raised (one superblock
//!   update) a million numbers at a time, so after a crash numbering resumes
//!   above anything ever used without scanning the devices.
//! * **Every `clean_interval` blocks written** (`pass`; 4096 by default),
//!   and on `checkpoint`: the
//!   table blocks holding the blocks acknowledged since the previous pass
//!   are rewritten from the expected state; then regions that were dirty but
//!   not written since the previous pass (their table is current) get their
//!   bits cleared. Bits are cleared only while every member is in sync, so a
//!   member that drops out can later be brought back by resyncing the dirty
//!   regions alone.
//! * **Superblock updates** (`commit_sb`): the generation (`events`) goes
//!   up by one and the copy holding the older generation is overwritten on
//!   every in-sync member, device after device. A member failure is
//!   committed this way before the write that revealed it is acknowledged,
//!   so after a restart the failed member is known to be stale.
//!
//! # Trade-offs
//!
//! A write is protected against rollback or zeroing of *every* copy once a
//! pass has recorded it in the table: within `clean_interval` blocks, at
//! [`Mirror::checkpoint`] or at [`Mirror::close`]. Before that, a restart
//! still finds its region dirty and compares the copies, and catches any
//! copy older than what the table recorded at the previous pass; an
//! identical rollback of every copy to a version written within the window
//! is not detectable. A pass costs a write per device of the table blocks
//! holding the blocks acknowledged since the last pass (253 entries per
//! 4 KiB table block: one block for a sequential run of up to 253 writes)
//! and, when regions go idle, one bitmap block write; the write path itself
//! only remembers each acknowledged address (one push).

use std::io;
use std::string::{String, ToString};
use std::vec::Vec;

use super::device::BlockWrite;
use super::superblock::{
    seal_meta, set_table_entry, Layout, MemberRecord, Superblock, BITMAP_MAGIC, META_HEADER,
    TABLE_ENTRY, TABLE_MAGIC,
};
use super::writer::{MemberState, Mirror};
use super::{DeviceId, MirrorError};
use crate::cost::PhaseClock;

/// Sequence numbers reserved per superblock update.
const SEQ_RESERVE: u64 = 1 << 20;

impl Mirror {
    /// Sets the write-intent bit of every region `lbas` touch (on disk on
    /// every in-sync device first) and stamps them with the current epoch.
    #[inline]
    pub(crate) fn mark_regions(
        &mut self,
        lbas: impl Iterator<Item = u64>,
    ) -> Result<(), MirrorError> {
        // Regions are stamped even without a bitmap (every region is then
        // dirty from assembly to close): the pass refreshes their table.
        let mut fresh = false;
        for lba in lbas {
            let r = (lba >> self.region_shift) as usize;
            if self.touched[r] != self.epoch {
                self.touched[r] = self.epoch;
                self.recent.push(r as u32);
                fresh |= !self.dirty[r];
            }
        }
        if fresh {
            self.set_fresh_bits()?;
        }
        Ok(())
    }

    /// Out of line: writes the bitmap blocks holding regions stamped in this
    /// epoch whose bit is clear, with those bits set.
    #[cold]
    fn set_fresh_bits(&mut self) -> Result<(), MirrorError> {
        let bpb = Layout::bits_per_block(self.block_size);
        let mut blocks: Vec<u64> = Vec::new();
        for i in 0..self.recent.len() {
            let r = self.recent[i] as usize;
            if !self.dirty[r] {
                self.dirty[r] = true;
                self.dirty_list.push(r as u32);
                blocks.push(r as u64 / bpb);
            }
        }
        blocks.sort_unstable();
        blocks.dedup();
        self.write_bitmap_blocks(&blocks, None)?;
        if self.in_sync().is_empty() {
            return Err(self.no_healthy());
        }
        Ok(())
    }

    /// Replaces the write-intent bits (in memory only).
    pub(crate) fn reset_dirty(&mut self, dirty: Vec<bool>) {
        self.dirty_list = (0..dirty.len() as u32)
            .filter(|&r| dirty[r as usize])
            .collect();
        self.dirty = dirty;
    }

    /// Makes sure `n` more sequence numbers lie below the persisted limit.
    #[inline]
    pub(crate) fn reserve_seqs(&mut self, n: u64) -> Result<(), MirrorError> {
        if self.next_seq + n <= self.seq_limit {
            return Ok(());
        }
        self.seq_limit = self.next_seq + n + SEQ_RESERVE;
        self.commit_sb(false)
    }

    /// Runs a pass once `clean_interval` blocks were written since the last.
    #[inline]
    pub(crate) fn after_batch(&mut self) {
        if self.written.len() as u64 >= self.clean_interval {
            self.pass(false);
        }
    }

    /// Records in the table every block written since the previous pass and
    /// clears the bits of regions idle since then (`all`: every dirty region,
    /// as at close). Failures take devices out; never an error. Costs
    /// O(dirty regions + regions written since the last pass).
    pub(crate) fn pass(&mut self, all: bool) {
        let epoch = self.epoch;
        // Table blocks of the blocks acknowledged since the previous pass
        // (and, for `all`, of every dirty region).
        let epb = Layout::entries_per_block(self.block_size);
        let mut tables: Vec<u64> = self.written.iter().map(|&lba| lba / epb).collect();
        self.written.clear();
        if all {
            let rb = self.layout.region_blocks;
            for &r in &self.dirty_list {
                let first = r as u64 * rb / epb;
                let last = ((r as u64 + 1) * rb).min(self.capacity).div_ceil(epb);
                tables.extend(first..last);
            }
        }
        self.recent.clear();
        self.epoch = self.epoch.wrapping_add(1).max(1);
        if !tables.is_empty() {
            tables.sort_unstable();
            tables.dedup();
            if self.write_table_blocks(&tables, None).is_err() {
                return;
            }
        }
        if !self.bitmap && !all {
            return;
        }
        if self.members.iter().any(|m| m.state != MemberState::InSync) {
            return; // keep every bit while a member is out (see module docs)
        }
        let bpb = Layout::bits_per_block(self.block_size);
        let mut blocks: Vec<u64> = Vec::new();
        let mut keep: Vec<u32> = Vec::new();
        for i in 0..self.dirty_list.len() {
            let r = self.dirty_list[i];
            if all || self.touched[r as usize] != epoch {
                self.dirty[r as usize] = false;
                blocks.push(r as u64 / bpb);
            } else {
                keep.push(r);
            }
        }
        self.dirty_list = keep;
        blocks.sort_unstable();
        blocks.dedup();
        let _ = self.write_bitmap_blocks(&blocks, None);
    }

    /// Writes bitmap blocks `blocks` (indices within the bitmap, ascending)
    /// from `dirty` to `only` or to every in-sync device.
    pub(crate) fn write_bitmap_blocks(
        &mut self,
        blocks: &[u64],
        only: Option<DeviceId>,
    ) -> Result<(), MirrorError> {
        if blocks.is_empty() {
            return Ok(());
        }
        let bs = self.block_size;
        let bpb = Layout::bits_per_block(bs) as usize;
        let mut buf = std::mem::replace(&mut self.meta_buf, super::block::AlignedBuf::zeroed(0));
        buf.resize(blocks.len() * bs);
        for (i, &b) in blocks.iter().enumerate() {
            let blk = &mut buf[i * bs..(i + 1) * bs];
            blk.fill(0);
            let first = b as usize * bpb;
            let end = (first + bpb).min(self.dirty.len());
            for r in first..end {
                if self.dirty[r] {
                    let k = r - first;
                    blk[META_HEADER + k / 8] |= 1 << (k % 8);
                }
            }
            let at = self.layout.bitmap_start + b;
            seal_meta(blk, BITMAP_MAGIC, at, self.next_seq, self.array);
        }
        let start = self.layout.bitmap_start;
        let r = self.write_meta(&buf, blocks, start, only, "a bitmap update");
        self.meta_buf = buf;
        r
    }

    /// Writes table blocks `tables` (indices within the table, ascending)
    /// from the expected state to `only` or to every in-sync device.
    pub(crate) fn write_table_blocks(
        &mut self,
        tables: &[u64],
        only: Option<DeviceId>,
    ) -> Result<(), MirrorError> {
        if tables.is_empty() {
            return Ok(());
        }
        let bs = self.block_size;
        let epb = Layout::entries_per_block(bs);
        let mut buf = std::mem::replace(&mut self.meta_buf, super::block::AlignedBuf::zeroed(0));
        buf.resize(tables.len() * bs);
        for (i, &t) in tables.iter().enumerate() {
            let blk = &mut buf[i * bs..(i + 1) * bs];
            let first = t * epb;
            let end = (first + epb).min(self.capacity);
            let n = (end - first) as usize;
            let entries = &mut blk[META_HEADER..META_HEADER + n * TABLE_ENTRY];
            let metas = &self.meta[first as usize..end as usize];
            for (e, m) in entries.chunks_exact_mut(TABLE_ENTRY).zip(metas) {
                set_table_entry(e, m.seq, m.crc);
            }
            // The header is written by seal_meta; zero what no entry covers.
            blk[META_HEADER + (end - first) as usize * TABLE_ENTRY..].fill(0);
            let at = self.layout.table_start + t;
            seal_meta(blk, TABLE_MAGIC, at, self.next_seq, self.array);
        }
        let start = self.layout.table_start;
        let r = self.write_meta(&buf, tables, start, only, "a table update");
        self.meta_buf = buf;
        r
    }

    /// Writes every bitmap and table block to `device` (a member coming
    /// back in sync gets the current metadata).
    pub(crate) fn write_all_metadata(&mut self, device: DeviceId) -> Result<(), MirrorError> {
        let bitmap: Vec<u64> = (0..self.layout.bitmap_blocks).collect();
        self.write_bitmap_blocks(&bitmap, Some(device))?;
        let tables: Vec<u64> = (0..self.layout.table_blocks).collect();
        self.write_table_blocks(&tables, Some(device))
    }

    /// Writes the staged blocks `buf` (block `i` goes to `start + idx[i]`,
    /// consecutive indices coalesced) to `only` or to every in-sync device;
    /// a device that fails is taken out (and the failure committed).
    /// `Err` only when no in-sync device is left (or `only` failed).
    fn write_meta(
        &mut self,
        buf: &[u8],
        idx: &[u64],
        start: u64,
        only: Option<DeviceId>,
        during: &'static str,
    ) -> Result<(), MirrorError> {
        let bs = self.block_size;
        let mut list: Vec<BlockWrite<'_>> = Vec::new();
        let mut i = 0;
        while i < idx.len() {
            let mut j = i + 1;
            while j < idx.len() && idx[j] == idx[j - 1] + 1 {
                j += 1;
            }
            list.push(BlockWrite {
                lba: start + idx[i],
                data: &buf[i * bs..j * bs],
            });
            i = j;
        }
        let targets: Vec<DeviceId> = match only {
            Some(d) => std::vec![d],
            None => self.in_sync(),
        };
        let mut failures: Vec<(DeviceId, String)> = Vec::new();
        for d in targets {
            if let Err(e) = self.members[d]
                .dev
                .write_blocks(&list, &mut PhaseClock::disabled())
            {
                failures.push((d, e.to_string()));
            }
        }
        drop(list);
        if let Some(d) = only {
            if let Some((_, e)) = failures.pop() {
                return Err(MirrorError::ResyncFailed {
                    device: d,
                    name: self.members[d].dev.name().to_string(),
                    source: io::Error::other(e),
                });
            }
            return Ok(());
        }
        if !failures.is_empty() {
            self.fail_members(failures, during);
        }
        if self.in_sync().is_empty() {
            return Err(self.no_healthy());
        }
        Ok(())
    }

    /// Takes `failed` out of the mirror (warnings), then commits the new
    /// member table to the survivors.
    pub(crate) fn fail_members(&mut self, failed: Vec<(DeviceId, String)>, during: &'static str) {
        for (d, e) in failed {
            self.mark_failed(d, during, e);
        }
        let _ = self.commit_sb(false);
    }

    /// The superblock of member `d` at the current generation.
    pub(crate) fn superblock_for(&self, d: DeviceId, clean: bool) -> Superblock {
        Superblock {
            clean,
            array: self.array,
            device: self.members[d].uuid,
            role: d as u16,
            layout: self.layout,
            events: self.events,
            seq_limit: self.seq_limit,
            members: self
                .members
                .iter()
                .map(|m| MemberRecord {
                    uuid: m.uuid,
                    failed: m.state != MemberState::InSync,
                })
                .collect(),
        }
    }

    /// A superblock update: the generation goes up by one and is written,
    /// device after device, to every in-sync member (overwriting its older
    /// copy). A member whose write fails is taken out and the update is
    /// repeated for the rest. `Err` when no member took it.
    pub(crate) fn commit_sb(&mut self, clean: bool) -> Result<(), MirrorError> {
        loop {
            let targets = self.in_sync();
            if targets.is_empty() {
                return Err(self.no_healthy());
            }
            self.events += 1;
            let at = Superblock::copy_for(self.events);
            let bs = self.block_size;
            let mut buf =
                std::mem::replace(&mut self.meta_buf, super::block::AlignedBuf::zeroed(0));
            buf.resize(bs);
            let mut failures: Vec<(DeviceId, String)> = Vec::new();
            for d in targets {
                self.superblock_for(d, clean).encode(&mut buf);
                let w = [BlockWrite {
                    lba: at,
                    data: &buf,
                }];
                if let Err(e) = self.members[d]
                    .dev
                    .write_blocks(&w, &mut PhaseClock::disabled())
                {
                    failures.push((d, e.to_string()));
                }
            }
            self.meta_buf = buf;
            if failures.is_empty() {
                return Ok(());
            }
            for (d, e) in failures {
                self.mark_failed(d, "a superblock update", e);
            }
        }
    }

    /// Writes the superblock of generation `self.events` to `device` alone
    /// (a member joining: it gets both copies so no older copy of another
    /// array or generation remains).
    pub(crate) fn write_sb_to(&mut self, device: DeviceId) -> Result<(), MirrorError> {
        let bs = self.block_size;
        let mut buf = std::mem::replace(&mut self.meta_buf, super::block::AlignedBuf::zeroed(0));
        buf.resize(2 * bs);
        let sb = self.superblock_for(device, false);
        sb.encode(&mut buf[..bs]);
        sb.encode(&mut buf[bs..]);
        let r = self.write_meta(&buf, &[0, 1], 0, Some(device), "a superblock update");
        self.meta_buf = buf;
        r
    }
}
