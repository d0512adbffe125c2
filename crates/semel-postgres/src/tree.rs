//! The audit log's Merkle tree on PostgreSQL: integration (one broker at a
//! time, under a transaction-level advisory lock), signed checkpoints, and
//! proofs read from the stored subtree hashes.
//!
//! Integration is idempotent: it reads the tree state and the entries past
//! it under the lock, so whichever broker integrates next starts where the
//! last one committed, and a broker that dies mid-way leaves nothing (its
//! transaction aborts and its lock goes with it).

use std::collections::{HashMap, HashSet};

use semel_core::checkpoint::{Checkpoint, NoteSigner};
use semel_core::merkle::{self, Subtrees, node_hash};
use semel_core::{Hash, entry_hash};

use crate::{PgAudit, PgError};

/// The integration lock's key (any broker may integrate; one at a time).
const INTEGRATION_LOCK: i64 = 495_891_105_133;

/// The tree's size and root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeHead {
    pub size: u64,
    pub root: Hash,
}

/// What one integration round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrated {
    /// Another broker holds the integration lock; nothing was done.
    Busy,
    /// The tree now holds `head.size` entries; `checkpoint` is the note
    /// signed for it when it grew.
    Done {
        head: TreeHead,
        checkpoint: Option<String>,
    },
}

fn hash_of(bytes: Vec<u8>, what: &str) -> Result<Hash, PgError> {
    bytes
        .try_into()
        .map_err(|_| PgError::Corrupt(format!("{what} is not 32 bytes")))
}

fn to_u64(n: i64, what: &str) -> Result<u64, PgError> {
    u64::try_from(n).map_err(|_| PgError::Corrupt(format!("{what} is negative")))
}

/// The largest power of two strictly below `n` (`n` > 1), where RFC 6962
/// splits a tree of `n` leaves.
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The complete subtrees whose hashes give the hash of leaves `start..end`
/// (`start` aligned as RFC 6962 recursion leaves it), as (level, index).
fn perfect_nodes(start: u64, end: u64, out: &mut Vec<(u8, u64)>) {
    let n = end - start;
    if n.is_power_of_two() && start.is_multiple_of(n) {
        out.push((n.trailing_zeros() as u8, start >> n.trailing_zeros()));
        return;
    }
    let k = split(n);
    perfect_nodes(start, start + k, out);
    perfect_nodes(start + k, end, out);
}

/// The peaks of a tree of `size` leaves: its complete subtrees, left to
/// right, as (level, index).
fn peaks(size: u64) -> Vec<(u8, u64)> {
    let mut out = Vec::new();
    if size > 0 {
        perfect_nodes(0, size, &mut out);
    }
    out
}

/// A proof builder's first pass: which ranges it asks for.
#[derive(Default)]
struct Asked(std::cell::RefCell<Vec<(u64, u64)>>);

impl Subtrees for Asked {
    type Error = std::convert::Infallible;
    fn subtree(&self, start: u64, end: u64) -> Result<Hash, Self::Error> {
        self.0.borrow_mut().push((start, end));
        Ok([0; 32])
    }
}

/// Subtree hashes from the nodes read for one proof.
struct Nodes(HashMap<(u8, u64), Hash>);

impl Subtrees for Nodes {
    type Error = PgError;
    fn subtree(&self, start: u64, end: u64) -> Result<Hash, PgError> {
        let mut parts = Vec::new();
        perfect_nodes(start, end, &mut parts);
        self.combine(&parts)
    }
}

impl Nodes {
    fn get(&self, node: (u8, u64)) -> Result<Hash, PgError> {
        self.0.get(&node).copied().ok_or_else(|| {
            PgError::Corrupt(format!(
                "tree node at level {} index {} is missing",
                node.0, node.1
            ))
        })
    }

    /// The hash of consecutive complete subtrees, as RFC 6962 combines
    /// them: right to left.
    fn combine(&self, parts: &[(u8, u64)]) -> Result<Hash, PgError> {
        let mut it = parts.iter().rev();
        let Some(last) = it.next() else {
            return Ok(merkle::empty_root());
        };
        let mut acc = self.get(*last)?;
        for p in it {
            acc = node_hash(&self.get(*p)?, &acc);
        }
        Ok(acc)
    }
}

impl PgAudit {
    /// Reads the given tree nodes.
    async fn nodes(
        client: &impl tokio_postgres::GenericClient,
        wanted: &[(u8, u64)],
    ) -> Result<Nodes, PgError> {
        let wanted: HashSet<(u8, u64)> = wanted.iter().copied().collect();
        let (levels, indexes): (Vec<i16>, Vec<i64>) = wanted
            .iter()
            .map(|&(l, i)| (i16::from(l), i as i64))
            .unzip();
        let rows = client
            .query(
                "SELECT t.level, t.index, t.hash FROM audit_tree t \
                 JOIN unnest($1::smallint[], $2::bigint[]) AS w(level, index) \
                 ON t.level = w.level AND t.index = w.index",
                &[&levels, &indexes],
            )
            .await?;
        let mut map = HashMap::with_capacity(rows.len());
        for r in rows {
            let level = u8::try_from(r.get::<_, i16>(0))
                .map_err(|_| PgError::Corrupt("a tree level out of range".into()))?;
            let index = to_u64(r.get(1), "a tree index")?;
            map.insert((level, index), hash_of(r.get(2), "a tree node")?);
        }
        Ok(Nodes(map))
    }

    /// The tree's integrated size and root.
    pub async fn tree_head(&self) -> Result<TreeHead, PgError> {
        let row = self
            .conn
            .client
            .query_one("SELECT size, root FROM audit_tree_state WHERE id = 0", &[])
            .await?;
        Ok(TreeHead {
            size: to_u64(row.get(0), "the tree size")?,
            root: hash_of(row.get(1), "the tree root")?,
        })
    }

    /// Extends the tree by up to `max_entries` sequenced entries and, when
    /// it grew, signs a checkpoint for it: one transaction under the
    /// integration lock, or [`Integrated::Busy`] if another broker holds
    /// it. Before signing, the tree must still reproduce the last signed
    /// root; if it does not, nothing is signed and the error says so (fail
    /// closed: a checkpoint is never signed over a tree that changed).
    pub async fn integrate(
        &mut self,
        max_entries: u64,
        signer: &NoteSigner,
    ) -> Result<Integrated, PgError> {
        let result = self.integrate_round(max_entries, signer).await;
        self.conn.suspect = result.is_err();
        result
    }

    async fn integrate_round(
        &mut self,
        max_entries: u64,
        signer: &NoteSigner,
    ) -> Result<Integrated, PgError> {
        let tx = self.conn.client().await?.transaction().await?;
        let locked: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&INTEGRATION_LOCK])
            .await?
            .get(0);
        if !locked {
            return Ok(Integrated::Busy);
        }
        let state = tx
            .query_one(
                "SELECT size FROM audit_tree_state WHERE id = 0 FOR UPDATE",
                &[],
            )
            .await?;
        let from = to_u64(state.get(0), "the tree size")?;
        let rows = tx
            .query(
                "SELECT sequence, encoding FROM audit_entries \
                 WHERE sequence >= $1 ORDER BY sequence LIMIT $2",
                &[&(from as i64), &(max_entries.min(i64::MAX as u64) as i64)],
            )
            .await?;
        // The left siblings new nodes need are the current peaks.
        let mut nodes = Self::nodes(&tx, &peaks(from)).await?;
        let mut new: Vec<(i16, i64, Vec<u8>)> = Vec::new();
        let mut size = from;
        for r in rows {
            let sequence = to_u64(r.get(0), "a sequence")?;
            if sequence != size {
                return Err(PgError::Corrupt(format!(
                    "entry {size} is missing (found {sequence})"
                )));
            }
            let mut node = entry_hash(r.get::<_, &[u8]>(1));
            let (mut level, mut index) = (0u8, size);
            nodes.0.insert((level, index), node);
            new.push((0, index as i64, node.to_vec()));
            while index & 1 == 1 {
                node = node_hash(&nodes.get((level, index - 1))?, &node);
                level += 1;
                index >>= 1;
                nodes.0.insert((level, index), node);
                new.push((i16::from(level), index as i64, node.to_vec()));
            }
            size += 1;
        }
        let root = nodes.combine(&peaks(size))?;
        let head = TreeHead { size, root };
        if size == from {
            tx.commit().await?;
            return Ok(Integrated::Done {
                head,
                checkpoint: None,
            });
        }
        let (levels, indexes, hashes): (Vec<i16>, Vec<i64>, Vec<Vec<u8>>) = new.into_iter().fold(
            (Vec::new(), Vec::new(), Vec::new()),
            |(mut l, mut i, mut h), (a, b, c)| {
                l.push(a);
                i.push(b);
                h.push(c);
                (l, i, h)
            },
        );
        tx.execute(
            "INSERT INTO audit_tree (level, index, hash) \
             SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])",
            &[&levels, &indexes, &hashes],
        )
        .await?;
        tx.execute(
            "UPDATE audit_tree_state SET size = $1, root = $2 WHERE id = 0",
            &[&(size as i64), &root.to_vec()],
        )
        .await?;
        // The last signed root must still be what the tree gives.
        if let Some(last) = tx
            .query_opt(
                "SELECT size, root FROM audit_checkpoints ORDER BY size DESC LIMIT 1",
                &[],
            )
            .await?
        {
            let last_size = to_u64(last.get(0), "a checkpoint size")?;
            let signed = hash_of(last.get(1), "a checkpoint root")?;
            let again = Self::nodes(&tx, &peaks(last_size))
                .await?
                .combine(&peaks(last_size))?;
            if again != signed {
                return Err(PgError::Corrupt(format!(
                    "the tree no longer gives the root signed at size {last_size}: \
                     refusing to sign a checkpoint"
                )));
            }
        }
        let note = signer.sign(&Checkpoint {
            origin: signer.name().to_owned(),
            size,
            root,
        });
        tx.execute(
            "INSERT INTO audit_checkpoints (size, root, note) VALUES ($1, $2, $3)",
            &[&(size as i64), &root.to_vec(), &note],
        )
        .await?;
        tx.commit().await?;
        Ok(Integrated::Done {
            head,
            checkpoint: Some(note),
        })
    }

    /// The root of the tree of the first `size` entries (integrated).
    pub async fn root(&self, size: u64) -> Result<Hash, PgError> {
        self.integrated(size).await?;
        let parts = peaks(size);
        Self::nodes(&self.conn.client, &parts)
            .await?
            .combine(&parts)
    }

    /// The latest signed checkpoint's note, if any.
    pub async fn latest_checkpoint(&self) -> Result<Option<String>, PgError> {
        Ok(self
            .conn
            .client
            .query_opt(
                "SELECT note FROM audit_checkpoints ORDER BY size DESC LIMIT 1",
                &[],
            )
            .await?
            .map(|r| r.get(0)))
    }

    /// Checks a proof's tree size against what is integrated.
    async fn integrated(&self, size: u64) -> Result<(), PgError> {
        let head = self.tree_head().await?;
        if size > head.size {
            return Err(PgError::NotIntegrated {
                asked: size,
                integrated: head.size,
            });
        }
        Ok(())
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries
    /// (RFC 6962), read in one query.
    pub async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, PgError> {
        if index >= size {
            return Err(PgError::OutOfRange(format!(
                "entry {index} is not in a tree of {size}"
            )));
        }
        self.integrated(size).await?;
        let asked = Asked::default();
        let Ok(_) = merkle::inclusion_proof(&asked, index, size);
        let nodes = self.nodes_for(asked).await?;
        merkle::inclusion_proof(&nodes, index, size)
    }

    /// The consistency proof from the tree of `old` entries to the tree of
    /// `new` (RFC 6962), read in one query.
    pub async fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, PgError> {
        if old == 0 || old > new {
            return Err(PgError::OutOfRange(format!(
                "no consistency proof from {old} to {new} entries: the first size must be between 1 and the second"
            )));
        }
        self.integrated(new).await?;
        let asked = Asked::default();
        let Ok(_) = merkle::consistency_proof(&asked, old, new);
        let nodes = self.nodes_for(asked).await?;
        merkle::consistency_proof(&nodes, old, new)
    }

    async fn nodes_for(&self, asked: Asked) -> Result<Nodes, PgError> {
        let mut wanted = Vec::new();
        for (start, end) in asked.0.into_inner() {
            perfect_nodes(start, end, &mut wanted);
        }
        Self::nodes(&self.conn.client, &wanted).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_are_the_set_bits_of_the_size() {
        assert_eq!(peaks(0), vec![]);
        assert_eq!(peaks(1), vec![(0, 0)]);
        assert_eq!(peaks(6), vec![(2, 0), (1, 2)]);
        assert_eq!(peaks(7), vec![(2, 0), (1, 2), (0, 6)]);
        assert_eq!(peaks(8), vec![(3, 0)]);
    }
}
