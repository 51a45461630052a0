//! A binary Merkle tree of 64-bit block digests, updated lazily and compared
//! top-down to locate the blocks where two trees differ.

use std::vec::Vec;

/// Leaf value of padding positions beyond the last block.
const PAD: u64 = 0;
/// Leaf of a copy that is unreadable or fails verification: never equal to
/// a [`leaf`] digest (those have the top bit clear).
pub const BAD_LEAF: u64 = u64::MAX;
/// Leaf the mirror expects for a block that has no good copy anywhere.
pub const LOST_LEAF: u64 = u64::MAX - 1;

/// The murmur3 64-bit finaliser: a fast, well-mixing bijection.
#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// Digest of a block's `(sequence number, crc32c)`: its leaf.
#[inline]
pub fn leaf(seq: u64, crc: u32) -> u64 {
    (fmix64(seq ^ fmix64(u64::from(crc) | 1 << 40)) >> 1).max(1)
}

/// Combines two children (order matters).
#[inline]
fn node(left: u64, right: u64) -> u64 {
    fmix64(left.rotate_left(29) ^ right.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x6a09_e667)
}

/// Where two trees differ.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TreeDiff {
    /// Leaf indices (block addresses) that differ, ascending.
    pub leaves: Vec<u64>,
    /// Node pairs compared to find them (about `2 · d · log2(n)` for `d`
    /// differences, instead of `n` for a linear walk).
    pub nodes_compared: u64,
}

/// A complete binary tree over `len` leaves stored in an array (root at 1,
/// leaves at `width..width + len`). Leaf updates are O(1); internal nodes
/// are recomputed on demand, only along the paths of changed leaves.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    len: u64,
    width: usize,
    nodes: Vec<u64>,
    /// Leaves changed since the last refresh.
    dirty: Vec<usize>,
    /// Too many changes: rebuild everything on refresh.
    rebuild: bool,
}

impl MerkleTree {
    /// A tree over `leaves`.
    pub fn from_leaves(leaves: &[u64]) -> Self {
        let width = leaves.len().next_power_of_two().max(1);
        let mut nodes = std::vec![PAD; 2 * width];
        nodes[width..width + leaves.len()].copy_from_slice(leaves);
        let mut t = Self {
            len: leaves.len() as u64,
            width,
            nodes,
            dirty: Vec::new(),
            rebuild: true,
        };
        t.refresh();
        t
    }

    /// True if the tree has no leaves.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets leaf `i` (`i < len`); parents are recomputed lazily.
    #[inline]
    pub fn set_leaf(&mut self, i: u64, value: u64) {
        let at = self.width + i as usize;
        if self.nodes[at] == value {
            return;
        }
        self.nodes[at] = value;
        if !self.rebuild {
            if self.dirty.len() >= self.width / 4 + 16 {
                self.rebuild = true;
                self.dirty.clear();
            } else {
                self.dirty.push(at);
            }
        }
    }

    /// Recomputes the internal nodes above changed leaves.
    pub fn refresh(&mut self) {
        if self.rebuild {
            for i in (1..self.width).rev() {
                self.nodes[i] = node(self.nodes[2 * i], self.nodes[2 * i + 1]);
            }
            self.rebuild = false;
            self.dirty.clear();
            return;
        }
        if self.dirty.is_empty() {
            return;
        }
        let mut level = std::mem::take(&mut self.dirty);
        level.sort_unstable();
        while level.first().is_some_and(|&i| i > 1) {
            for p in level.iter_mut() {
                *p /= 2;
            }
            level.dedup();
            for &p in &level {
                self.nodes[p] = node(self.nodes[2 * p], self.nodes[2 * p + 1]);
            }
        }
        level.clear();
        self.dirty = level;
    }

    /// The root digest.
    #[cfg(test)]
    pub fn root(&mut self) -> u64 {
        self.refresh();
        self.nodes[1]
    }

    /// Locates the leaves where `self` and `other` differ, descending only
    /// into subtrees whose digests differ. Both trees must have the same
    /// number of leaves (else every leaf is reported).
    pub fn diff(&mut self, other: &mut MerkleTree) -> TreeDiff {
        self.refresh();
        other.refresh();
        let mut out = TreeDiff::default();
        if self.len != other.len {
            out.leaves = (0..self.len.max(other.len)).collect();
            return out;
        }
        let mut stack = std::vec![1usize];
        while let Some(i) = stack.pop() {
            out.nodes_compared += 1;
            if self.nodes[i] == other.nodes[i] {
                continue;
            }
            if i >= self.width {
                out.leaves.push((i - self.width) as u64);
            } else {
                // Right first so the left subtree pops first: ascending output.
                stack.push(2 * i + 1);
                stack.push(2 * i);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_finds_exactly_the_changed_leaves_quickly() {
        let leaves: Vec<u64> = (0..1000).map(|i| leaf(i, i as u32 * 7)).collect();
        let mut a = MerkleTree::from_leaves(&leaves);
        let mut b = MerkleTree::from_leaves(&leaves);
        assert_eq!(a.root(), b.root());
        let d = a.diff(&mut b);
        assert!(d.leaves.is_empty());
        assert_eq!(d.nodes_compared, 1);
        b.set_leaf(3, BAD_LEAF);
        b.set_leaf(999, leaf(5, 5));
        b.set_leaf(512, leaf(1, 1));
        let d = a.diff(&mut b);
        assert_eq!(d.leaves, std::vec![3, 512, 999]);
        // Three root-to-leaf paths of depth 10, with siblings: far below 1000.
        assert!(d.nodes_compared <= 3 * 2 * 11, "{}", d.nodes_compared);
        // Putting the leaves back restores equality.
        b.set_leaf(3, leaves[3]);
        b.set_leaf(999, leaves[999]);
        b.set_leaf(512, leaves[512]);
        assert_eq!(a.root(), b.root());
    }

    #[test]
    fn lazy_refresh_equals_full_rebuild() {
        let mut leaves: Vec<u64> = (0..300).map(|i| leaf(i, 0)).collect();
        let mut t = MerkleTree::from_leaves(&leaves);
        for round in 0..5u64 {
            // Few changes (incremental path) and many (rebuild path).
            let step = if round % 2 == 0 { 37 } else { 2 };
            for i in (0..300).step_by(step) {
                leaves[i] = leaf(round * 1000 + i as u64, 9);
                t.set_leaf(i as u64, leaves[i]);
            }
            assert_eq!(t.root(), MerkleTree::from_leaves(&leaves).root());
        }
        assert_ne!(leaf(1, 2), leaf(2, 1));
        assert!(leaf(0, 0) < LOST_LEAF && leaf(u64::MAX, u32::MAX) < LOST_LEAF);
    }

    #[test]
    fn trees_of_different_sizes_differ_everywhere() {
        let mut a = MerkleTree::from_leaves(&[1, 2, 3]);
        let mut b = MerkleTree::from_leaves(&[1, 2]);
        assert_eq!(a.diff(&mut b).leaves, std::vec![0, 1, 2]);
        let mut e = MerkleTree::from_leaves(&[]);
        assert!(e.is_empty());
        assert_eq!(e.root(), 0);
    }
}
