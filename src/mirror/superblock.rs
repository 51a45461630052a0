//! The on-device metadata: where it lives ([`Layout`]), the superblock (two
//! checksummed copies), and the blocks of the write-intent bitmap and of the
//! sequence table. The format is described in `docs/MIRROR-FORMAT.md`.
//!
//! # How it works
//!
//! Every member device starts with the same metadata area:
//!
//! | physical blocks            | contents                                      |
//! |----------------------------|-----------------------------------------------|
//! | 0, 1                       | superblock copies A and B                     |
//! | 2 .. 2+b                   | write-intent bitmap (one bit per region)      |
//! | 2+b .. 2+b+t               | sequence table (16 bytes per data block)      |
//! | 2+b+t .. 2+b+t+capacity    | data blocks (logical address 0 is here)       |
//!
//! A superblock update writes only the copy holding the *older* generation
//! (`events` even → copy A, odd → copy B), so a crash can tear at most the
//! copy being written; the other copy still holds the generation before the
//! update. Reading takes the valid copy with the highest event count.
//!
//! Bitmap and table blocks share a 48-byte header: crc32c of bytes
//! `4..block_size`, a magic, the block's own physical address, a stamp (the
//! mirror's next sequence number when written) and the array UUID, so a
//! block left over from another array or another position is never taken
//! for ours. A metadata block that fails verification is treated
//! conservatively: its bitmap regions count as dirty, its table entries as
//! unknown.
//!
//! # Trade-offs
//!
//! The metadata costs `2 + ceil(regions / bits per block) + ceil(capacity /
//! entries per block)` blocks per device: 16 bytes of table per 4 KiB data
//! block (0.4 %). Keeping it at the start of the device (as md's 1.2
//! superblock does) means a truncated device still shows who it was and how
//! large it must be.

use std::string::{String, ToString};
use std::vec::Vec;

use uuid::Uuid;

use super::block::crc32c;

/// Magic of a superblock.
pub(crate) const SB_MAGIC: [u8; 4] = *b"NRSB";
/// Magic of a bitmap block.
pub(crate) const BITMAP_MAGIC: [u8; 4] = *b"NRBM";
/// Magic of a sequence-table block.
pub(crate) const TABLE_MAGIC: [u8; 4] = *b"NRST";
/// On-device metadata format version.
pub(crate) const SB_VERSION: u16 = 1;
/// Bytes of superblock before the member table.
const SB_FIXED: usize = 128;
/// Bytes per member record in the superblock.
const MEMBER_RECORD: usize = 32;
/// Bytes of header at the start of bitmap and table blocks.
pub(crate) const META_HEADER: usize = 48;
/// Bytes per sequence-table entry: sequence number (8), crc32c (4), zero (4).
pub(crate) const TABLE_ENTRY: usize = 16;
/// Physical block of superblock copy A (copy B follows it).
pub(crate) const SB_COPY_A: u64 = 0;
/// Most data blocks a mirror may have: 2^40 (4 PiB of 4 KiB blocks). Far
/// past what its in-memory state (about 56 bytes per block at its peak)
/// lets a machine hold, and small enough that no layout arithmetic can
/// overflow a `u64`.
pub(crate) const MAX_CAPACITY: u64 = 1 << 40;
/// Event counts and sequence limits at or above this are refused as damage
/// (at a billion updates a second they take 146 years to reach), so that
/// the `+ 1` and `+ n` of later updates never overflow.
pub(crate) const MAX_COUNTER: u64 = 1 << 62;
/// Peak bytes of memory per data block while a mirror is built: its
/// expected state (16), the Merkle leaves (8) and up to 32 for the tree.
pub(crate) const MEMORY_PER_BLOCK: u64 = 56;

/// Where each kind of block lives on a member device. All members of an
/// array share one layout (it is a function of block size, capacity and
/// region size only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Bytes per block.
    pub(crate) block_size: usize,
    /// Data blocks (logical addresses `0..capacity`).
    pub(crate) capacity: u64,
    /// Data blocks per bitmap region (a power of two).
    pub(crate) region_blocks: u64,
    /// First bitmap block.
    pub(crate) bitmap_start: u64,
    /// Bitmap blocks.
    pub(crate) bitmap_blocks: u64,
    /// First table block.
    pub(crate) table_start: u64,
    /// Table blocks.
    pub(crate) table_blocks: u64,
    /// Physical block of logical address 0.
    pub(crate) data_start: u64,
}

impl Layout {
    /// The layout of an array of `capacity` data blocks.
    pub(crate) fn new(block_size: usize, capacity: u64, region_blocks: u64) -> Self {
        let regions = capacity.div_ceil(region_blocks);
        let bitmap_blocks = regions.div_ceil(Self::bits_per_block(block_size)).max(1);
        let table_blocks = capacity.div_ceil(Self::entries_per_block(block_size));
        let bitmap_start = SB_COPY_A + 2;
        let table_start = bitmap_start + bitmap_blocks;
        Self {
            block_size,
            capacity,
            region_blocks,
            bitmap_start,
            bitmap_blocks,
            table_start,
            table_blocks,
            data_start: table_start + table_blocks,
        }
    }

    /// The largest layout of at most [`MAX_CAPACITY`] data blocks that fits
    /// in `device_blocks` blocks (None if not even one data block fits).
    pub(crate) fn fit(block_size: usize, device_blocks: u64, region_blocks: u64) -> Option<Self> {
        // The blocks a layout needs grow with its capacity, so the largest
        // capacity that fits is found by bisection: `lo` always fits (or is
        // 0), `hi + 1` never does. The metadata of `device_blocks` data
        // blocks bounds the metadata needed from above, so `lo` starts
        // close to the answer.
        let fits =
            |cap: u64| Self::new(block_size, cap, region_blocks).device_blocks() <= device_blocks;
        let over = Self::new(block_size, device_blocks.min(MAX_CAPACITY), region_blocks);
        let mut lo = device_blocks
            .checked_sub(over.data_start)?
            .min(MAX_CAPACITY);
        let mut hi = device_blocks.min(MAX_CAPACITY);
        if !fits(lo) {
            lo = 0;
        }
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        (lo > 0).then(|| Self::new(block_size, lo, region_blocks))
    }

    /// Blocks a device needs for this layout.
    pub(crate) fn device_blocks(&self) -> u64 {
        self.data_start + self.capacity
    }

    /// Bitmap regions.
    pub(crate) fn regions(&self) -> u64 {
        self.capacity.div_ceil(self.region_blocks)
    }

    /// Region bits per bitmap block.
    pub(crate) fn bits_per_block(block_size: usize) -> u64 {
        ((block_size - META_HEADER) * 8) as u64
    }

    /// Table entries per table block.
    pub(crate) fn entries_per_block(block_size: usize) -> u64 {
        ((block_size - META_HEADER) / TABLE_ENTRY) as u64
    }

    /// Largest member count a superblock of this block size can describe.
    pub(crate) fn max_members(block_size: usize) -> usize {
        ((block_size - SB_FIXED) / MEMBER_RECORD).min(u16::MAX as usize)
    }
}

/// A member's standing as the superblock records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemberRecord {
    /// The device UUID that holds this role.
    pub(crate) uuid: Uuid,
    /// Taken out of the array (failed, missing or being rebuilt).
    pub(crate) failed: bool,
}

/// One superblock copy, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Superblock {
    /// Cleanly closed: every region was clean and every member in sync.
    pub(crate) clean: bool,
    /// The array's UUID (the same on every member).
    pub(crate) array: Uuid,
    /// This device's UUID.
    pub(crate) device: Uuid,
    /// This device's role (its index in the mirror).
    pub(crate) role: u16,
    /// The layout (block size, capacity, region size and where things are).
    pub(crate) layout: Layout,
    /// Generation: bumped by every superblock update.
    pub(crate) events: u64,
    /// Every sequence number ever handed out is below this.
    pub(crate) seq_limit: u64,
    /// The role table: who holds each role and whether it is in sync.
    pub(crate) members: Vec<MemberRecord>,
}

/// Why a superblock copy was not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SbProblem {
    /// All zeros: never written.
    Blank,
    /// Not a superblock (no magic) or a damaged one.
    Damaged(String),
    /// A superblock of a format this build does not read.
    Version(u16),
}

fn le_u16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

pub(crate) fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn uuid_at(b: &[u8]) -> Uuid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Uuid::from_bytes(a)
}

/// Stores the crc32c of `block[4..]` in `block[0..4]`.
fn seal(block: &mut [u8]) {
    let crc = crc32c(&block[4..]);
    block[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// Checks `block[0..4]` against the crc32c of `block[4..]`.
fn sealed(block: &[u8]) -> bool {
    le_u32(&block[0..4]) == crc32c(&block[4..])
}

impl Superblock {
    /// Writes this superblock into `block` (one whole block).
    pub(crate) fn encode(&self, block: &mut [u8]) {
        let l = &self.layout;
        block.fill(0);
        block[4..8].copy_from_slice(&SB_MAGIC);
        block[8..10].copy_from_slice(&SB_VERSION.to_le_bytes());
        block[10..12].copy_from_slice(&u16::from(self.clean).to_le_bytes());
        block[12..16].copy_from_slice(&(l.block_size as u32).to_le_bytes());
        block[16..32].copy_from_slice(self.array.as_bytes());
        block[32..48].copy_from_slice(self.device.as_bytes());
        block[48..50].copy_from_slice(&self.role.to_le_bytes());
        block[50..52].copy_from_slice(&(self.members.len() as u16).to_le_bytes());
        block[52..56].fill(0);
        block[56..64].copy_from_slice(&l.capacity.to_le_bytes());
        block[64..72].copy_from_slice(&l.data_start.to_le_bytes());
        block[72..80].copy_from_slice(&self.events.to_le_bytes());
        block[80..88].copy_from_slice(&self.seq_limit.to_le_bytes());
        block[88..96].copy_from_slice(&l.bitmap_start.to_le_bytes());
        block[96..104].copy_from_slice(&l.bitmap_blocks.to_le_bytes());
        block[104..112].copy_from_slice(&l.table_start.to_le_bytes());
        block[112..120].copy_from_slice(&l.table_blocks.to_le_bytes());
        block[120..128].copy_from_slice(&l.region_blocks.to_le_bytes());
        for (i, m) in self.members.iter().enumerate() {
            let at = SB_FIXED + i * MEMBER_RECORD;
            block[at..at + 16].copy_from_slice(m.uuid.as_bytes());
            block[at + 16] = u8::from(m.failed);
        }
        seal(block);
    }

    /// Decodes and verifies one superblock copy.
    pub(crate) fn decode(block: &[u8]) -> Result<Self, SbProblem> {
        if !sealed(block) {
            if block.iter().all(|&b| b == 0) {
                return Err(SbProblem::Blank);
            }
            return Err(SbProblem::Damaged(if block[4..8] == SB_MAGIC {
                "checksum mismatch".to_string()
            } else {
                "no superblock magic".to_string()
            }));
        }
        if block[4..8] != SB_MAGIC {
            return Err(SbProblem::Damaged("no superblock magic".to_string()));
        }
        let version = le_u16(&block[8..10]);
        if version != SB_VERSION {
            return Err(SbProblem::Version(version));
        }
        let bad = |what: &str| Err(SbProblem::Damaged(what.to_string()));
        let block_size = le_u32(&block[12..16]) as usize;
        if block_size != block.len() {
            return bad("block size differs from the device's");
        }
        let n = le_u16(&block[50..52]) as usize;
        let role = le_u16(&block[48..50]);
        if n > Layout::max_members(block_size) || role as usize >= n {
            return bad("member count or role out of range");
        }
        let capacity = le_u64(&block[56..64]);
        let region_blocks = le_u64(&block[120..128]);
        if capacity == 0 || capacity > MAX_CAPACITY || !region_blocks.is_power_of_two() {
            return bad("capacity or region size invalid");
        }
        let events = le_u64(&block[72..80]);
        let seq_limit = le_u64(&block[80..88]);
        if events >= MAX_COUNTER || seq_limit >= MAX_COUNTER {
            return bad("event count or sequence limit out of range");
        }
        let layout = Layout::new(block_size, capacity, region_blocks);
        if le_u64(&block[64..72]) != layout.data_start
            || le_u64(&block[88..96]) != layout.bitmap_start
            || le_u64(&block[96..104]) != layout.bitmap_blocks
            || le_u64(&block[104..112]) != layout.table_start
            || le_u64(&block[112..120]) != layout.table_blocks
        {
            return bad("layout fields disagree with capacity and region size");
        }
        let members = (0..n)
            .map(|i| {
                let at = SB_FIXED + i * MEMBER_RECORD;
                MemberRecord {
                    uuid: uuid_at(&block[at..]),
                    failed: block[at + 16] != 0,
                }
            })
            .collect();
        Ok(Self {
            clean: le_u16(&block[10..12]) & 1 == 1,
            array: uuid_at(&block[16..]),
            device: uuid_at(&block[32..]),
            role,
            layout,
            events,
            seq_limit,
            members,
        })
    }

    /// The physical block the next update (generation `events`) goes to:
    /// copy A for even generations, B for odd, so an update overwrites the
    /// older copy and never the newest one.
    pub(crate) fn copy_for(events: u64) -> u64 {
        SB_COPY_A + (events & 1)
    }
}

/// Picks the newest valid copy of two superblock copies; on failure says
/// what each copy was.
pub(crate) fn newest(a: &[u8], b: &[u8]) -> Result<Superblock, (SbProblem, SbProblem)> {
    match (Superblock::decode(a), Superblock::decode(b)) {
        (Ok(x), Ok(y)) => Ok(if y.events > x.events { y } else { x }),
        (Ok(x), Err(_)) | (Err(_), Ok(x)) => Ok(x),
        (Err(p), Err(q)) => Err((p, q)),
    }
}

/// Fills a bitmap or table block's header and seals it (the payload from
/// byte [`META_HEADER`] on must be in place).
pub(crate) fn seal_meta(block: &mut [u8], magic: [u8; 4], at: u64, stamp: u64, array: Uuid) {
    block[4..8].copy_from_slice(&magic);
    block[8..16].copy_from_slice(&at.to_le_bytes());
    block[16..24].copy_from_slice(&stamp.to_le_bytes());
    block[24..40].copy_from_slice(array.as_bytes());
    block[40..48].fill(0);
    seal(block);
}

/// Verifies a bitmap or table block read from physical block `at`: returns
/// its stamp, or None if it is not a valid block of this kind, place and array.
pub(crate) fn check_meta(block: &[u8], magic: [u8; 4], at: u64, array: Uuid) -> Option<u64> {
    (sealed(block)
        && block[4..8] == magic
        && le_u64(&block[8..16]) == at
        && uuid_at(&block[24..40]) == array)
        .then(|| le_u64(&block[16..24]))
}

/// Reads table entry `k` of a table block: (sequence number, crc32c).
pub(crate) fn table_entry(block: &[u8], k: usize) -> (u64, u32) {
    let at = META_HEADER + k * TABLE_ENTRY;
    (le_u64(&block[at..]), le_u32(&block[at + 8..]))
}

/// Fills one 16-byte table entry.
#[inline]
pub(crate) fn set_table_entry(entry: &mut [u8], seq: u64, crc: u32) {
    let mut e = [0u8; TABLE_ENTRY];
    e[..8].copy_from_slice(&seq.to_le_bytes());
    e[8..12].copy_from_slice(&crc.to_le_bytes());
    entry.copy_from_slice(&e);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb(events: u64) -> Superblock {
        Superblock {
            clean: events % 3 == 0,
            array: Uuid::from_u128(0x1234),
            device: Uuid::from_u128(0x5678),
            role: 1,
            layout: Layout::new(4096, 1000, 64),
            events,
            seq_limit: 1 << 20,
            members: std::vec![
                MemberRecord {
                    uuid: Uuid::from_u128(1),
                    failed: false
                },
                MemberRecord {
                    uuid: Uuid::from_u128(0x5678),
                    failed: true
                },
            ],
        }
    }

    #[test]
    fn superblock_round_trips_and_every_flipped_bit_is_caught() {
        let mut b = std::vec![0u8; 4096];
        assert_eq!(Superblock::decode(&b), Err(SbProblem::Blank));
        sb(7).encode(&mut b);
        assert_eq!(Superblock::decode(&b), Ok(sb(7)));
        for bit in (0..4096 * 8).step_by(61) {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(Superblock::decode(&c).is_err(), "flip of bit {bit}");
        }
        let mut old = std::vec![0u8; 4096];
        sb(6).encode(&mut old);
        assert_eq!(newest(&old, &b).map(|s| s.events), Ok(7));
        assert_eq!(newest(&b, &old).map(|s| s.events), Ok(7));
        assert_eq!(newest(&[0u8; 4096], &old).map(|s| s.events), Ok(6));
        assert_eq!(Superblock::copy_for(6), 0);
        assert_eq!(Superblock::copy_for(7), 1);
    }

    #[test]
    fn layout_fits_exactly_and_grows_with_capacity() {
        for bs in [512usize, 4096] {
            for cap in [1u64, 30, 253, 254, 5000, 262_144] {
                let l = Layout::new(bs, cap, 64);
                let f = Layout::fit(bs, l.device_blocks(), 64).expect("fits");
                assert_eq!(f, l, "bs {bs} cap {cap}");
                assert!(l.table_blocks * Layout::entries_per_block(bs) >= cap);
                assert!(l.bitmap_blocks * Layout::bits_per_block(bs) >= l.regions());
            }
        }
        assert!(Layout::fit(4096, 3, 64).is_none());
    }

    #[test]
    fn meta_blocks_are_tied_to_place_and_array() {
        let mut b = std::vec![0u8; 512];
        let at = META_HEADER + 3 * TABLE_ENTRY;
        set_table_entry(&mut b[at..at + TABLE_ENTRY], 99, 7);
        seal_meta(&mut b, TABLE_MAGIC, 5, 42, Uuid::from_u128(9));
        assert_eq!(check_meta(&b, TABLE_MAGIC, 5, Uuid::from_u128(9)), Some(42));
        assert_eq!(table_entry(&b, 3), (99, 7));
        assert_eq!(check_meta(&b, TABLE_MAGIC, 6, Uuid::from_u128(9)), None);
        assert_eq!(check_meta(&b, BITMAP_MAGIC, 5, Uuid::from_u128(9)), None);
        assert_eq!(check_meta(&b, TABLE_MAGIC, 5, Uuid::from_u128(8)), None);
    }
}
