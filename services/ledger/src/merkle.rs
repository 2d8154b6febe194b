//! The RFC 6962 Merkle tree over the ledger (pure; no SQLite).
//!
//! Leaf *i* is `SHA-256(0x00 ‖ hash of seq i+1)` — the 32 bytes of the
//! row's `hash` column, which already commits to every column and to the
//! whole chain before it. Interior nodes are `SHA-256(0x01 ‖ left ‖ right)`
//! and the tree size is the head seq. So a signed checkpoint (size, root)
//! pins the whole history up to that seq, and anyone holding the row hashes
//! can check an inclusion proof or recompute a root.
//!
//! Two shapes, for two jobs:
//! - [`Frontier`]: the roots of the perfect subtrees so far (`log₂ n`
//!   hashes). The writer keeps one to sign a checkpoint every second with
//!   memory that stays flat; a verifier keeps one while it walks.
//! - [`Tree`]: every stored node (about `2n` hashes), for proofs. Built by
//!   `tes audit prove`, not by the daemon.
//!
//! The proof arithmetic is Go's `sumdb/tlog` as ported by Cloudflare's
//! `tlog_tiles` crate; the tests check [`Frontier`] against it.

use tlog_tiles::tlog::Error as TlogError;
use tlog_tiles::HashReader;

use crate::chain::Hash;

/// The root of the empty tree: SHA-256 of nothing (RFC 6962 §2.1).
pub const EMPTY_ROOT: Hash = tlog_tiles::EMPTY_HASH.0;

/// The leaf hash of a row: `SHA-256(0x00 ‖ row hash)`.
pub fn leaf(row_hash: &Hash) -> Hash {
    tlog_tiles::record_hash(row_hash).0
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node(left: &Hash, right: &Hash) -> Hash {
    tlog_tiles::node_hash(tlog_tiles::Hash(*left), tlog_tiles::Hash(*right)).0
}

/// The right edge of the tree: enough to extend it and to compute its root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Roots of the perfect subtrees, largest (leftmost) first; one per set
    /// bit of `size`.
    peaks: Vec<Hash>,
}

impl Frontier {
    /// Adds the row whose hash is `row_hash` as the next leaf.
    pub fn push(&mut self, row_hash: &Hash) {
        let mut h = leaf(row_hash);
        // Each trailing 1 bit of the old size is a perfect subtree of the
        // same height as the one being built: merge them.
        let mut n = self.size;
        while n & 1 == 1 {
            let left = self.peaks.pop().expect("a peak per set bit");
            h = node(&left, &h);
            n >>= 1;
        }
        self.peaks.push(h);
        self.size += 1;
    }

    /// The number of leaves (the head seq).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The tree's root hash.
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(last) = peaks.next() else {
            return EMPTY_ROOT;
        };
        // RFC 6962 splits at the largest power of two below n, so the root
        // folds the peaks from the right.
        peaks.fold(*last, |acc, left| node(left, &acc))
    }
}

/// Every stored node of the tree, for inclusion and consistency proofs.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    size: u64,
    stored: Vec<tlog_tiles::Hash>,
}

/// A proof could not be made or does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf {index} is not in a tree of size {size}")]
    OutOfRange { index: u64, size: u64 },
    #[error("a tree of size {size} cannot be proved from one of size {have}")]
    TooLarge { size: u64, have: u64 },
    #[error("the proof does not lead to the root")]
    Invalid,
}

impl HashReader for Tree {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog_tiles::Hash>, TlogError> {
        indexes
            .iter()
            .map(|&i| {
                self.stored
                    .get(i as usize)
                    .copied()
                    .ok_or(TlogError::IndexesNotInTree)
            })
            .collect()
    }
}

impl Tree {
    pub fn push(&mut self, row_hash: &Hash) {
        let new = tlog_tiles::stored_hashes_for_record_hash(
            self.size,
            tlog_tiles::Hash(leaf(row_hash)),
            self,
        )
        .expect("every earlier node is stored");
        self.stored.extend(new);
        self.size += 1;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root of the tree of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, ProofError> {
        self.check_size(size)?;
        Ok(tlog_tiles::tree_hash(size, self)
            .expect("stored nodes cover the size")
            .0)
    }

    /// The audit path of leaf `index` in the tree of the first `size` leaves.
    pub fn prove_inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(size)?;
        if index >= size {
            return Err(ProofError::OutOfRange { index, size });
        }
        let proof = tlog_tiles::prove_record(size, index, self).expect("stored nodes cover it");
        Ok(proof.into_iter().map(|h| h.0).collect())
    }

    /// That the tree of `old` leaves is a prefix of the tree of `new` leaves.
    pub fn prove_consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(new)?;
        if old == 0 || old > new {
            return Err(ProofError::OutOfRange {
                index: old,
                size: new,
            });
        }
        let proof = tlog_tiles::prove_tree(new, old, self).expect("stored nodes cover it");
        Ok(proof.into_iter().map(|h| h.0).collect())
    }

    fn check_size(&self, size: u64) -> Result<(), ProofError> {
        if size > self.size {
            return Err(ProofError::TooLarge {
                size,
                have: self.size,
            });
        }
        Ok(())
    }
}

/// Checks that `proof` shows the row with hash `row_hash` at leaf `index` of
/// the tree of `size` leaves whose root is `root`.
pub fn verify_inclusion(
    proof: &[Hash],
    size: u64,
    root: &Hash,
    index: u64,
    row_hash: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange { index, size });
    }
    let proof: Vec<_> = proof.iter().map(|h| tlog_tiles::Hash(*h)).collect();
    tlog_tiles::check_record(
        &proof,
        size,
        tlog_tiles::Hash(*root),
        index,
        tlog_tiles::Hash(leaf(row_hash)),
    )
    .map_err(|_| ProofError::Invalid)
}

/// Checks that the tree (`old`, `old_root`) is a prefix of (`new`, `new_root`).
pub fn verify_consistency(
    proof: &[Hash],
    old: u64,
    old_root: &Hash,
    new: u64,
    new_root: &Hash,
) -> Result<(), ProofError> {
    let proof: Vec<_> = proof.iter().map(|h| tlog_tiles::Hash(*h)).collect();
    tlog_tiles::check_tree(
        &proof,
        new,
        tlog_tiles::Hash(*new_root),
        old,
        tlog_tiles::Hash(*old_root),
    )
    .map_err(|_| ProofError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rows(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| {
                let mut h = [0u8; 32];
                h[..8].copy_from_slice(&(i as u64).to_be_bytes());
                h[31] = 0xAB;
                h
            })
            .collect()
    }

    /// RFC 6962 §2.1 written out directly: MTH(D[n]) splits at the largest
    /// power of two below n.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => EMPTY_ROOT,
            1 => leaf(&leaves[0]),
            n => {
                let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
                node(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn empty_and_single() {
        assert_eq!(Frontier::default().root(), EMPTY_ROOT);
        let r = rows(1);
        let mut f = Frontier::default();
        f.push(&r[0]);
        assert_eq!(f.root(), leaf(&r[0]));
    }

    proptest! {
        /// The frontier, the stored tree and the RFC's recursion agree at
        /// every size; every inclusion and consistency proof checks, and a
        /// proof for another leaf or another root does not.
        #[test]
        fn frontier_tree_and_rfc_agree(n in 1usize..70) {
            let r = rows(n);
            let mut f = Frontier::default();
            let mut t = Tree::default();
            for (i, h) in r.iter().enumerate() {
                f.push(h);
                t.push(h);
                let size = i as u64 + 1;
                prop_assert_eq!(f.root(), mth(&r[..=i]));
                prop_assert_eq!(t.root(size).unwrap(), f.root());
            }
            let size = n as u64;
            let root = f.root();
            for i in 0..size {
                let p = t.prove_inclusion(i, size).unwrap();
                prop_assert!(verify_inclusion(&p, size, &root, i, &r[i as usize]).is_ok());
                let other = (i + 1) % size;
                if other != i {
                    prop_assert!(verify_inclusion(&p, size, &root, i, &r[other as usize]).is_err());
                }
            }
            for old in 1..=size {
                let p = t.prove_consistency(old, size).unwrap();
                let old_root = t.root(old).unwrap();
                prop_assert!(verify_consistency(&p, old, &old_root, size, &root).is_ok());
                let mut wrong = old_root;
                wrong[0] ^= 1;
                prop_assert!(verify_consistency(&p, old, &wrong, size, &root).is_err());
            }
        }
    }
}
