//! The audit log's Merkle tree on disk, maintained incrementally: starting
//! the broker reads no entry that the tree already holds.
//!
//! ```text
//! audit/tree/level-00   leaf hashes, 32 bytes each, by entry sequence
//! audit/tree/level-01   hashes of complete subtrees of 2 leaves
//! audit/tree/level-kk   hashes of complete subtrees of 2^k leaves
//! ```
//!
//! Node `i` of level `k` covers leaves `i·2^k .. (i+1)·2^k`. Every level is
//! append-only and derived from level 0, which is derived from the log: the
//! whole tree can be rebuilt from the log, and levels that lag behind level
//! 0 after a crash are completed at start. Any subtree hash, hence any root
//! and proof, takes O(log n) reads.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use semel_core::Hash;
use semel_core::merkle::{Subtrees, node_hash};

use crate::{StoreError, io_err};

const NODE: u64 = 32;

struct Level {
    file: File,
    /// Written since the last sync.
    dirty: bool,
    /// Nodes on disk.
    len: u64,
    /// Nodes appended since the last flush, following `len`.
    pending: Vec<u8>,
}

/// The Merkle tree of the audit log.
pub struct Tree {
    dir: PathBuf,
    levels: Vec<Level>,
    /// For each level, the last complete node when it is a left child
    /// still waiting for its sibling.
    frontier: Vec<Option<Hash>>,
    size: u64,
}

impl Tree {
    /// Opens the tree in `dir`, completing levels that lag behind the
    /// leaves (an interrupted flush) and dropping partial nodes.
    pub fn open(dir: &Path) -> Result<Tree, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let mut tree = Tree {
            dir: dir.to_path_buf(),
            levels: Vec::new(),
            frontier: Vec::new(),
            size: 0,
        };
        let leaves = tree.level(0)?;
        let size = leaves.len;
        tree.size = size;
        let mut k = 1;
        loop {
            let expected = size >> k;
            if expected == 0 && !tree.dir.join(level_name(k)).exists() {
                break;
            }
            let level = tree.level(k)?;
            if level.len > expected {
                level
                    .file
                    .set_len(expected * NODE)
                    .map_err(io_err("truncate a tree level"))?;
                level.len = expected;
            }
            for i in tree.levels[k].len..expected {
                let left = tree.read(k - 1, 2 * i)?;
                let right = tree.read(k - 1, 2 * i + 1)?;
                tree.levels[k]
                    .pending
                    .extend_from_slice(&node_hash(&left, &right));
            }
            tree.flush_level(k)?;
            k += 1;
        }
        // The frontier: at each level, a last node with no sibling yet.
        let mut frontier = Vec::new();
        for k in 0..64 {
            let count = size >> k;
            if count == 0 {
                break;
            }
            frontier.push(if count & 1 == 1 {
                Some(tree.read(k, count - 1)?)
            } else {
                None
            });
        }
        tree.frontier = frontier;
        Ok(tree)
    }

    fn level(&mut self, k: usize) -> Result<&mut Level, StoreError> {
        while self.levels.len() <= k {
            let path = self.dir.join(level_name(self.levels.len()));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err(format!("open {}", path.display())))?;
            let bytes = file
                .metadata()
                .map_err(io_err(format!("stat {}", path.display())))?
                .len();
            let len = bytes / NODE;
            if bytes % NODE != 0 {
                file.set_len(len * NODE)
                    .map_err(io_err("drop a partial tree node"))?;
            }
            self.levels.push(Level {
                file,
                dirty: false,
                len,
                pending: Vec::new(),
            });
        }
        Ok(&mut self.levels[k])
    }

    /// Leaf `i`'s hash.
    pub fn leaf(&self, i: u64) -> Result<Hash, StoreError> {
        self.read(0, i)
    }

    /// Leaves in the tree.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf (an entry's leaf hash). Written by [`Tree::flush`].
    pub fn push(&mut self, leaf: Hash) -> Result<(), StoreError> {
        let mut node = leaf;
        let mut k = 0;
        loop {
            self.level(k)?.pending.extend_from_slice(&node);
            if self.frontier.len() <= k {
                self.frontier.push(None);
            }
            match self.frontier[k].take() {
                None => {
                    self.frontier[k] = Some(node);
                    break;
                }
                Some(left) => {
                    node = node_hash(&left, &node);
                    k += 1;
                }
            }
        }
        self.size += 1;
        Ok(())
    }

    /// Writes appended nodes.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        for k in 0..self.levels.len() {
            self.flush_level(k)?;
        }
        Ok(())
    }

    fn flush_level(&mut self, k: usize) -> Result<(), StoreError> {
        let level = &mut self.levels[k];
        if level.pending.is_empty() {
            return Ok(());
        }
        level
            .file
            .write_all_at(&level.pending, level.len * NODE)
            .map_err(io_err("write the audit tree"))?;
        level.len += level.pending.len() as u64 / NODE;
        level.pending.clear();
        level.dirty = true;
        Ok(())
    }

    /// Makes the written nodes durable. Only levels written since the last
    /// sync are synced: level k changes every 2^k leaves, so most of the
    /// upper levels are untouched between two checkpoints.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        for level in self.levels.iter_mut().filter(|l| l.dirty) {
            level
                .file
                .sync_data()
                .map_err(io_err("fsync the audit tree"))?;
            level.dirty = false;
        }
        Ok(())
    }

    fn read(&self, k: usize, i: u64) -> Result<Hash, StoreError> {
        let level = self
            .levels
            .get(k)
            .ok_or_else(|| StoreError::Corrupt(format!("tree level {k} is missing")))?;
        let mut h = [0u8; 32];
        if i < level.len {
            level
                .file
                .read_exact_at(&mut h, i * NODE)
                .map_err(io_err("read the audit tree"))?;
        } else {
            let at = usize::try_from((i - level.len) * NODE).unwrap_or(usize::MAX);
            let bytes = level
                .pending
                .get(at..at + 32)
                .ok_or_else(|| StoreError::Corrupt(format!("tree node {k}/{i} is missing")))?;
            h.copy_from_slice(bytes);
        }
        Ok(h)
    }
}

/// Read access to a tree's stored nodes, for roots and proofs.
pub struct TreeReader<'a>(pub &'a Tree);

impl Subtrees for TreeReader<'_> {
    type Error = StoreError;

    fn subtree(&self, start: u64, end: u64) -> Result<Hash, StoreError> {
        let n = end - start;
        if end > self.0.size || n == 0 {
            return Err(StoreError::Corrupt(format!(
                "subtree {start}..{end} lies outside the tree of {}",
                self.0.size
            )));
        }
        if n.is_power_of_two() && start.is_multiple_of(n) {
            return self.0.read(n.trailing_zeros() as usize, start / n);
        }
        let k = 1 << (63 - (n - 1).leading_zeros());
        Ok(node_hash(
            &self.subtree(start, start + k)?,
            &self.subtree(start + k, end)?,
        ))
    }
}

fn level_name(k: usize) -> String {
    format!("level-{k:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use semel_core::merkle::{CompactRange, consistency_proof, inclusion_proof, root};

    fn leaf(i: u64) -> Hash {
        semel_core::entry_hash(&i.to_be_bytes())
    }

    #[test]
    fn roots_match_a_compact_range_across_reopen_and_lost_levels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut tree = Tree::open(dir.path()).expect("open");
        let mut c = CompactRange::new();
        for i in 0..77 {
            tree.push(leaf(i)).expect("push");
            c.push(leaf(i));
            if i % 10 == 3 {
                tree.flush().expect("flush");
            }
            assert_eq!(root(&TreeReader(&tree), i + 1).expect("root"), c.root());
        }
        tree.flush().expect("flush");
        drop(tree);
        // Lose two upper levels and half a node: they are rebuilt.
        std::fs::remove_file(dir.path().join("level-03")).expect("rm");
        std::fs::remove_file(dir.path().join("level-05")).expect("rm");
        let l1 = dir.path().join("level-01");
        let len = std::fs::metadata(&l1).expect("stat").len();
        let f = OpenOptions::new().write(true).open(&l1).expect("open");
        f.set_len(len - 40).expect("truncate");
        let mut tree = Tree::open(dir.path()).expect("reopen");
        assert_eq!(tree.size(), 77);
        assert_eq!(root(&TreeReader(&tree), 77).expect("root"), c.root());
        for i in 77..100 {
            tree.push(leaf(i)).expect("push");
            c.push(leaf(i));
        }
        tree.flush().expect("flush");
        let r = TreeReader(&tree);
        assert_eq!(root(&r, 100).expect("root"), c.root());
        let p = inclusion_proof(&r, 42, 100).expect("proof");
        assert!(semel_core::merkle::verify_inclusion(
            &leaf(42),
            42,
            100,
            &p,
            &c.root()
        ));
        let old = root(&r, 77).expect("old root");
        let p = consistency_proof(&r, 77, 100).expect("proof");
        assert!(semel_core::merkle::verify_consistency(
            77,
            100,
            &old,
            &c.root(),
            &p
        ));
    }
}
