//! The audit log's Merkle tree (RFC 6962 / RFC 9162): how proofs are built
//! from subtree hashes, and how a verifier checks them without trusting the
//! broker.
//!
//! Leaves are the entries' leaf hashes, [`crate::entry_hash`]:
//! `SHA-256(0x00 || encoding)`. An interior node is `SHA-256(0x01 || left ||
//! right)`. The tree of `n` leaves splits at the largest power of two below
//! `n`.

use sha2::{Digest, Sha256};

use crate::Hash;

/// The hash of the empty tree: `SHA-256()`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// An interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly below `n` (`n` > 1).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// Where subtree hashes come from: `subtree(start, end)` is the hash of
/// leaves `start..end`. Proof builders only ask for ranges a tree stores or
/// can compute.
pub trait Subtrees {
    type Error;
    fn subtree(&self, start: u64, end: u64) -> Result<Hash, Self::Error>;
}

/// The root of the first `size` leaves (RFC 6962 MTH).
pub fn root<S: Subtrees>(tree: &S, size: u64) -> Result<Hash, S::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    tree.subtree(0, size)
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves
/// (RFC 6962 PATH), leaf side first.
pub fn inclusion_proof<S: Subtrees>(
    tree: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, S::Error> {
    let mut proof = Vec::new();
    path(tree, index, 0, size, &mut proof)?;
    Ok(proof)
}

fn path<S: Subtrees>(
    tree: &S,
    m: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(tree, m, start, start + k, out)?;
        out.push(tree.subtree(start + k, end)?);
    } else {
        path(tree, m - k, start + k, end, out)?;
        out.push(tree.subtree(start, start + k)?);
    }
    Ok(())
}

/// The consistency proof from the tree of `old` leaves to the tree of `new`
/// leaves (RFC 6962 PROOF), `0 < old <= new`.
pub fn consistency_proof<S: Subtrees>(tree: &S, old: u64, new: u64) -> Result<Vec<Hash>, S::Error> {
    let mut proof = Vec::new();
    if old > 0 && old < new {
        subproof(tree, old, 0, new, true, &mut proof)?;
    }
    Ok(proof)
}

fn subproof<S: Subtrees>(
    tree: &S,
    m: u64,
    start: u64,
    end: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    let n = end - start;
    if m == n {
        if !whole {
            out.push(tree.subtree(start, end)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(tree, m, start, start + k, whole, out)?;
        out.push(tree.subtree(start + k, end)?);
    } else {
        subproof(tree, m - k, start + k, end, false, out)?;
        out.push(tree.subtree(start, start + k)?);
    }
    Ok(())
}

/// Checks that `leaf` is leaf `index` of the tree of `size` leaves whose
/// root is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// Checks that the tree of `old` leaves with root `old_root` is a prefix of
/// the tree of `new` leaves with root `new_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        return proof.is_empty();
    }
    let mut proof = proof.to_vec();
    if old.is_power_of_two() {
        proof.insert(0, *old_root);
    }
    let Some((first, rest)) = proof.split_first() else {
        return false;
    };
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && fr == *old_root && sr == *new_root
}

/// The roots of the perfect subtrees of a growing tree, left to right:
/// enough to append leaves and compute the root in O(log n) memory, as a
/// verifier recomputing a whole log does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    /// Roots of perfect subtrees, largest first.
    peaks: Vec<Hash>,
}

impl CompactRange {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        let mut size = self.size;
        while size & 1 == 1 {
            let left = self.peaks.pop().unwrap_or(node);
            node = node_hash(&left, &node);
            size >>= 1;
        }
        self.peaks.push(node);
        self.size += 1;
    }

    /// The root of the leaves pushed so far.
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(last) = peaks.next() else {
            return empty_root();
        };
        peaks.fold(*last, |acc, p| node_hash(p, &acc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leaves held in memory, subtrees computed by recursion.
    struct Leaves(Vec<Hash>);

    impl Subtrees for Leaves {
        type Error = ();
        fn subtree(&self, start: u64, end: u64) -> Result<Hash, ()> {
            let n = end - start;
            if n == 1 {
                return self.0.get(start as usize).copied().ok_or(());
            }
            let k = split(n);
            Ok(node_hash(
                &self.subtree(start, start + k)?,
                &self.subtree(start + k, end)?,
            ))
        }
    }

    fn leaves(n: u64) -> Leaves {
        Leaves(
            (0..n)
                .map(|i| crate::entry_hash(&i.to_be_bytes()))
                .collect(),
        )
    }

    #[test]
    fn proofs_verify_and_wrong_ones_do_not() {
        for n in 1..=40u64 {
            let t = leaves(n);
            let r = root(&t, n).expect("root");
            let mut c = CompactRange::new();
            for l in &t.0 {
                c.push(*l);
            }
            assert_eq!(c.root(), r, "compact range of {n}");
            for i in 0..n {
                let p = inclusion_proof(&t, i, n).expect("proof");
                assert!(
                    verify_inclusion(&t.0[i as usize], i, n, &p, &r),
                    "{i} in {n}"
                );
                assert!(!verify_inclusion(&t.0[i as usize], i, n, &p, &[0; 32]));
                if let Some(other) = t.0.get(i as usize + 1) {
                    assert!(!verify_inclusion(other, i, n, &p, &r));
                }
            }
            for old in 1..=n {
                let p = consistency_proof(&t, old, n).expect("proof");
                let old_root = root(&t, old).expect("root");
                assert!(verify_consistency(old, n, &old_root, &r, &p), "{old}->{n}");
                if old < n {
                    assert!(!verify_consistency(old, n, &r, &r, &p));
                }
            }
        }
    }
}
