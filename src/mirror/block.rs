//! The on-device block format and the aligned buffers blocks live in.
//!
//! Every block starts with a 32-byte little-endian header:
//!
//! | bytes  | field                                                    |
//! |--------|----------------------------------------------------------|
//! | 0..4   | crc32c (Castagnoli) of bytes `4..block_size`             |
//! | 4..8   | magic `NRMB`                                             |
//! | 8..16  | logical block address the block was written for          |
//! | 16..24 | write sequence number (1, 2, …; 0 = never written)       |
//! | 24..28 | payload length in bytes                                  |
//! | 28..30 | format version (1)                                       |
//! | 30..32 | reserved, zero                                           |
//!
//! followed by `block_size - 32` payload bytes (zero-padded). A block of all
//! zeros is the *unwritten* block: what a freshly preallocated device holds.
//! The checksum covers the header too, so a flipped sequence number or
//! address is caught; the address catches misdirected writes and the
//! sequence number catches stale copies (a write the device acknowledged but
//! lost).

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Bytes of header at the start of every block.
pub const HEADER_SIZE: usize = 32;
/// Magic number at bytes 4..8.
pub const MAGIC: [u8; 4] = *b"NRMB";
/// The on-device format version.
pub const FORMAT_VERSION: u16 = 1;
/// Alignment of every I/O buffer: enough for `O_DIRECT` on 4 KiB-sector devices.
pub const IO_ALIGN: usize = 4096;

/// crc32c (Castagnoli polynomial, the iSCSI/ext4/Btrfs checksum), computed
/// with carry-less-multiply folding (SSE4.2/PCLMULQDQ/AVX-512 on x86-64,
/// PMULL on Arm) through the `crc-fast` crate.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(data)
}

/// What a block's header says once its checksum has been verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// An all-zero block: never written.
    Unwritten,
    /// A valid block.
    Written {
        /// Sequence number of the write that produced it.
        seq: u64,
        /// Its checksum.
        crc: u32,
        /// Payload length.
        len: u32,
    },
}

impl BlockState {
    /// The sequence number (0 for unwritten).
    pub fn seq(&self) -> u64 {
        match self {
            BlockState::Unwritten => 0,
            BlockState::Written { seq, .. } => *seq,
        }
    }
}

/// Why a block failed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// The stored checksum does not match the contents.
    Checksum {
        /// The checksum stored in the header.
        stored: u32,
        /// The checksum of the contents.
        computed: u32,
    },
    /// The checksum matches but the magic number or version is wrong: not a
    /// noderep block (or another format version).
    NotABlock,
    /// A valid block written for another address (a misdirected write).
    Misdirected {
        /// The address in the header.
        found: u64,
    },
    /// A valid block, but older (or newer) than the mirror's last
    /// acknowledged write of this address: a lost or phantom write.
    Stale {
        /// Sequence number found.
        found: u64,
        /// Sequence number expected.
        expected: u64,
    },
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Corruption::Checksum { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            Corruption::NotABlock => f.write_str("bad magic or format version"),
            Corruption::Misdirected { found } => {
                write!(f, "misdirected write (block is for address {found})")
            }
            Corruption::Stale { found: 0, expected } => write!(
                f,
                "stale copy: unwritten (all zeros) where sequence {expected} was acknowledged — the block was zeroed or lost"
            ),
            Corruption::Stale { found, expected } if found < expected => write!(
                f,
                "stale copy (sequence {found}, expected {expected}): an older version — a lost write or a rollback"
            ),
            Corruption::Stale { found, expected } => {
                write!(f, "stale copy (sequence {found}, expected {expected})")
            }
        }
    }
}

/// Fills `block`'s header (everything but the checksum) and payload.
/// `payload.len()` must be at most `block.len() - HEADER_SIZE`.
#[inline]
pub fn encode(block: &mut [u8], lba: u64, seq: u64, payload: &[u8]) {
    debug_assert!(payload.len() <= block.len() - HEADER_SIZE);
    block[0..4].fill(0);
    block[4..8].copy_from_slice(&MAGIC);
    block[8..16].copy_from_slice(&lba.to_le_bytes());
    block[16..24].copy_from_slice(&seq.to_le_bytes());
    block[24..28].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    block[28..30].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    block[30..32].fill(0);
    let end = HEADER_SIZE + payload.len();
    block[HEADER_SIZE..end].copy_from_slice(payload);
    block[end..].fill(0);
}

/// Computes and stores `block`'s checksum; returns it.
#[inline]
pub fn seal(block: &mut [u8]) -> u32 {
    let crc = crc32c(&block[4..]);
    block[0..4].copy_from_slice(&crc.to_le_bytes());
    crc
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Verifies `block` as the copy of address `lba`: checksum, magic, address.
/// (Freshness against the mirror's sequence number is the caller's check.)
///
/// # Errors
///
/// The [`Corruption`] found.
pub fn verify(block: &[u8], lba: u64) -> Result<BlockState, Corruption> {
    let stored = le_u32(&block[0..4]);
    let computed = crc32c(&block[4..]);
    if stored != computed {
        if stored == 0 && block.iter().all(|&b| b == 0) {
            return Ok(BlockState::Unwritten);
        }
        return Err(Corruption::Checksum { stored, computed });
    }
    if block[4..8] != MAGIC || block[28..30] != FORMAT_VERSION.to_le_bytes() {
        return Err(Corruption::NotABlock);
    }
    let found = le_u64(&block[8..16]);
    if found != lba {
        return Err(Corruption::Misdirected { found });
    }
    let len = le_u32(&block[24..28]);
    if len as usize > block.len() - HEADER_SIZE {
        return Err(Corruption::NotABlock);
    }
    Ok(BlockState::Written {
        seq: le_u64(&block[16..24]),
        crc: stored,
        len,
    })
}

/// The payload of a verified block.
pub fn payload(block: &[u8], state: BlockState) -> &[u8] {
    match state {
        BlockState::Unwritten => &[],
        BlockState::Written { len, .. } => &block[HEADER_SIZE..HEADER_SIZE + len as usize],
    }
}

/// A zeroed heap buffer aligned to 4 KiB, usable for `O_DIRECT`.
///
/// # Examples
///
/// ```
/// use noderep::mirror::AlignedBuf;
/// let mut buf = AlignedBuf::zeroed(4096);
/// assert_eq!(buf.as_ptr() as usize % 4096, 0);
/// buf[0] = 1;
/// buf.resize(8192); // keeps the contents, zero-fills the rest
/// assert_eq!((buf[0], buf[8191]), (1, 0));
/// ```
pub struct AlignedBuf {
    /// Start of the allocation (dangling when `cap == 0`).
    ptr: NonNull<u8>,
    /// Bytes in use (`<= cap`).
    len: usize,
    /// Bytes allocated.
    cap: usize,
}

// SAFETY: AlignedBuf uniquely owns its allocation (like Vec<u8>); no pointer
// to it escapes except through borrows of the buffer itself.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8], which is Sync.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (`len` may be 0).
    pub fn zeroed(len: usize) -> Self {
        if len == 0 {
            return Self {
                ptr: NonNull::dangling(),
                len: 0,
                cap: 0,
            };
        }
        let layout = Self::layout(len);
        // SAFETY: layout has non-zero size (len > 0) and a power-of-two alignment.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        Self { ptr, len, cap: len }
    }

    fn layout(len: usize) -> Layout {
        match Layout::from_size_align(len, IO_ALIGN) {
            Ok(l) => l,
            // Only sizes near isize::MAX fail here; allocation would refuse them anyway.
            Err(_) => alloc::handle_alloc_error(Layout::new::<u8>()),
        }
    }

    /// Sets the length to `len` bytes; growing beyond the allocation
    /// reallocates, keeping the old contents and zero-filling the rest.
    pub fn resize(&mut self, len: usize) {
        if len > self.cap {
            let mut bigger = Self::zeroed(len);
            bigger[..self.len].copy_from_slice(self);
            *self = bigger;
        } else if len > self.len {
            let old = self.len;
            self.len = len;
            self[old..].fill(0);
        }
        self.len = len;
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.cap > 0 {
            // SAFETY: ptr came from alloc_zeroed with layout(cap) and is freed once.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
        }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len initialised (zeroed) bytes, or
        // dangling-but-aligned with len == 0, which from_raw_parts allows.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_seal_verify_round_trip_and_detect_damage() {
        let mut b = AlignedBuf::zeroed(4096);
        assert_eq!(b.as_ptr() as usize % IO_ALIGN, 0);
        assert_eq!(verify(&b, 7), Ok(BlockState::Unwritten));
        encode(&mut b, 7, 42, b"hello");
        let crc = seal(&mut b);
        let st = verify(&b, 7).expect("valid");
        assert_eq!(
            st,
            BlockState::Written {
                seq: 42,
                crc,
                len: 5
            }
        );
        assert_eq!(payload(&b, st), b"hello");
        assert_eq!(verify(&b, 8), Err(Corruption::Misdirected { found: 7 }));
        for bit in [0usize, 40, 8 * 20, 8 * 100, 8 * 4095 + 7] {
            let mut c = AlignedBuf::zeroed(4096);
            c.copy_from_slice(&b);
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(verify(&c, 7), Err(Corruption::Checksum { .. })),
                "flip of bit {bit} went unnoticed"
            );
        }
        // A checksum-valid block with the wrong magic is not ours.
        let mut d = AlignedBuf::zeroed(4096);
        d.copy_from_slice(&b);
        d[4] = b'X';
        seal(&mut d);
        assert_eq!(verify(&d, 7), Err(Corruption::NotABlock));
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn aligned_buf_resizes_keeping_contents() {
        let mut b = AlignedBuf::zeroed(0);
        assert!(b.is_empty());
        b.resize(8192);
        b[0] = 9;
        b.resize(3 * 4096);
        assert_eq!(b[0], 9);
        assert!(b[1..].iter().all(|&x| x == 0));
        assert_eq!(b.as_ptr() as usize % IO_ALIGN, 0);
        b.resize(10);
        b.resize(20);
        assert_eq!(b.len(), 20);
        assert!(b[10..].iter().all(|&x| x == 0));
    }
}
