//! The audit log's Merkle tree on PostgreSQL: integration (one broker at a
//! time, under a transaction-level advisory lock), signed checkpoints, and
//! proofs read from the stored subtree hashes.
//!
//! Integration is idempotent: it reads the tree state and the entries past
//! it under the lock, so whichever broker integrates next starts where the
//! last one committed, and a broker that dies mid-way leaves nothing (its
//! transaction aborts and its lock goes with it).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use semel_core::checkpoint::{Checkpoint, NoteSigner};
use semel_core::merkle::{self, Subtrees, node_hash};
use semel_core::{AuditEntry, Hash, entry_hash};

use crate::{PgAudit, PgError};

mod lock;
mod proofs;

pub use lock::LockHolder;

/// The integration lock's key (any broker may integrate; one at a time).
/// In `pg_locks` it shows as an advisory lock with `classid` 115 and
/// `objid` 1969866093 (the key's high and low 32 bits).
pub const INTEGRATION_LOCK: i64 = 495_891_105_133;

/// The shortest time limits an integration transaction is given, however
/// short the checkpoint interval.
const MIN_INTEGRATION_LIMIT: Duration = Duration::from_secs(1);

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

/// What the integrator reads of one row: the keys queries use, next to
/// the encoding that is hashed.
struct Row {
    sequence: u64,
    encoding: Vec<u8>,
    citizen: Option<String>,
    citizen_as_given: Option<String>,
    consumer: String,
    time_micros: i64,
}

/// Checks one row before it enters the tree: its encoding decodes, carries
/// its key as sequence, chains to the entry before it (`previous`, the leaf
/// hash of entry `sequence - 1`), and every query column equals the
/// decoded record. Returns its leaf hash, computed from the encoding.
fn check_row(row: &Row, expected: u64, previous: &Hash) -> Result<Hash, PgError> {
    let sequence = row.sequence;
    if sequence != expected {
        return Err(PgError::Integrity(format!(
            "entry {expected} is missing (the next row is entry {sequence})"
        )));
    }
    let entry = AuditEntry::decode(&row.encoding).map_err(|e| {
        PgError::Integrity(format!("the row of entry {sequence} does not decode: {e}"))
    })?;
    if entry.sequence != sequence {
        return Err(PgError::Integrity(format!(
            "the row of entry {sequence} encodes entry {}",
            entry.sequence
        )));
    }
    if entry.previous_hash != *previous {
        return Err(PgError::Integrity(format!(
            "entry {sequence} does not chain to entry {} (its encoding or the one before it was altered)",
            sequence.wrapping_sub(1)
        )));
    }
    let r = &entry.record;
    let column = |name: &str| {
        PgError::Integrity(format!(
            "the {name} column of entry {sequence} differs from the entry's own record"
        ))
    };
    if row.citizen.as_deref() != r.citizen.as_ref().map(|c| c.as_str()) {
        return Err(column("citizen"));
    }
    if row.citizen_as_given.as_deref() != r.citizen_as_given.as_ref().map(|c| c.as_str()) {
        return Err(column("citizen_as_given"));
    }
    if row.consumer != r.consumer.as_str() {
        return Err(column("consumer"));
    }
    if row.time_micros != r.time_micros {
        return Err(column("time_micros"));
    }
    Ok(entry_hash(&row.encoding))
}

/// Checks a tree head or a checkpoint read from the database against
/// the newest this broker signed or saw confirmed: neither may be
/// smaller, and one of the same size must have the same root. What is
/// read is remembered only once a transaction that waited for the
/// synchronous standby confirms it (see [`PgAudit::integrate`]): a tree
/// committed on the primary but never replicated is forgotten with it
/// on a failover, and must not be held against the promoted database.
fn check_against(remembered: Option<TreeHead>, head: TreeHead, what: &str) -> Result<(), PgError> {
    if let Some(seen) = remembered {
        if head.size < seen.size {
            return Err(PgError::Integrity(format!(
                "the {what} holds {} entries, fewer than the {} this broker signed or saw: \
                 the audit tables were rolled back or restored",
                head.size, seen.size
            )));
        }
        if head.size == seen.size && head.root != seen.root {
            return Err(PgError::Integrity(format!(
                "the {what} at size {} has another root than the one this broker signed or saw: \
                 the audit tables were rewritten",
                head.size
            )));
        }
    }
    Ok(())
}

/// The newer of what is remembered and `head` (checked by
/// [`check_against`] first).
fn newest(remembered: Option<TreeHead>, head: TreeHead) -> Option<TreeHead> {
    match remembered {
        Some(seen) if seen.size >= head.size => Some(seen),
        _ => Some(head),
    }
}

/// The settings that bound one integration transaction (see
/// [`PgAudit::set_integration_limits`]).
fn limits_sql(every: Duration) -> String {
    let twice = (every * 2).as_millis();
    let idle = every.as_millis();
    format!(
        "SET LOCAL lock_timeout = {twice}; SET LOCAL statement_timeout = {twice}; \
         SET LOCAL idle_in_transaction_session_timeout = {idle}"
    )
}

impl PgAudit {
    /// The newest tree head this connection signed or saw, if any.
    pub fn seen_head(&self) -> Option<TreeHead> {
        self.seen
    }

    /// The leaf hashes of the given entries, as the tree holds them.
    pub async fn leaves(&self, sequences: &[u64]) -> Result<HashMap<u64, Hash>, PgError> {
        let wanted: Vec<i64> = sequences.iter().map(|&s| s as i64).collect();
        let rows = self
            .conn
            .client
            .query(
                "SELECT index, hash FROM audit_tree WHERE level = 0 AND index = ANY($1)",
                &[&wanted],
            )
            .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            out.insert(
                to_u64(r.get(0), "a leaf index")?,
                hash_of(r.get(1), "a leaf")?,
            );
        }
        Ok(out)
    }

    /// Checks entries this broker committed against the tree once it
    /// covers them: each must be there with the hash it was committed
    /// with. Returns the tree head read (checked against the newest
    /// remembered, see [`check_against`]); `own` keeps the entries the
    /// tree does not cover yet. The head is read by a transaction that
    /// rewrites the tree's state row as it is, so that its commit waits
    /// for the synchronous standby: the head is remembered only when the
    /// server confirms it replicated (WAL is replayed in order, so the
    /// standby then holds the tree read too).
    pub async fn check_own(&mut self, own: &mut Vec<(u64, Hash)>) -> Result<TreeHead, PgError> {
        let head = self.confirmed_tree_head().await?;
        check_against(self.seen, head.0, "tree")?;
        if head.1 {
            self.seen = newest(self.seen, head.0);
        }
        let head = head.0;
        let covered: Vec<(u64, Hash)> = own
            .iter()
            .copied()
            .filter(|(s, _)| *s < head.size)
            .collect();
        if covered.is_empty() {
            return Ok(head);
        }
        let sequences: Vec<u64> = covered.iter().map(|(s, _)| *s).collect();
        let leaves = self.leaves(&sequences).await?;
        for (sequence, hash) in covered {
            match leaves.get(&sequence) {
                Some(leaf) if *leaf == hash => {}
                Some(_) => {
                    return Err(PgError::Integrity(format!(
                        "entry {sequence}, committed by this broker, is in the tree with another hash: \
                         it was altered before it was signed"
                    )));
                }
                None => {
                    return Err(PgError::Integrity(format!(
                        "entry {sequence}, committed by this broker, is missing from a tree of {} entries",
                        head.size
                    )));
                }
            }
        }
        own.retain(|(s, _)| *s >= head.size);
        Ok(head)
    }

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

    /// The tree's integrated size and root, read in a transaction whose
    /// commit waits for the synchronous standby, and whether the server
    /// confirmed that commit replicated (no "canceling wait" warning).
    async fn confirmed_tree_head(&mut self) -> Result<(TreeHead, bool), PgError> {
        self.conn.client().await?;
        let notices = self.conn.unreplicated();
        let result = async {
            let tx = self.conn.client.transaction().await?;
            let row = tx
                .query_one(
                    "UPDATE audit_tree_state SET size = size WHERE id = 0 RETURNING size, root",
                    &[],
                )
                .await?;
            tx.commit().await?;
            Ok::<_, PgError>(TreeHead {
                size: to_u64(row.get(0), "the tree size")?,
                root: hash_of(row.get(1), "the tree root")?,
            })
        }
        .await;
        match result {
            Ok(head) => Ok((head, self.conn.unreplicated() == notices)),
            Err(e) => {
                self.conn.suspect = true;
                Err(e)
            }
        }
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
        self.integrate_knowing(max_entries, signer, &[]).await
    }

    /// [`Self::integrate`], with the (sequence, hash) of entries this
    /// broker committed, in sequence order: each one the round integrates
    /// must have that hash, so that an entry altered after its commit is
    /// not signed even when it is the newest (which no later entry's chain
    /// vouches for yet).
    pub async fn integrate_knowing(
        &mut self,
        max_entries: u64,
        signer: &NoteSigner,
        known: &[(u64, Hash)],
    ) -> Result<Integrated, PgError> {
        let result = self.integrate_round(max_entries, signer, known).await;
        self.conn.suspect = result.is_err();
        result
    }

    /// What a round commits is remembered (and its checkpoint returned,
    /// to be shown and given to witnesses) only when the server confirms
    /// the commit replicated: a round whose wait for the synchronous
    /// standby was cancelled committed on the primary alone, and a
    /// failover forgets it with the entries it covered, which are then
    /// sequenced again. `NotReplicated` says so; the next round, once the
    /// standby answers again, confirms the tree as it then stands.
    fn confirmed(&mut self, notices: u64, head: TreeHead, what: &str) -> Result<(), PgError> {
        if self.conn.unreplicated() != notices {
            return Err(PgError::NotReplicated(format!(
                "the audit {what} at size {} is committed but PostgreSQL does not confirm it reached the synchronous standby: it is not signed out or remembered until a later round confirms it",
                head.size
            )));
        }
        self.seen = newest(self.seen, head);
        Ok(())
    }

    async fn integrate_round(
        &mut self,
        max_entries: u64,
        signer: &NoteSigner,
        known: &[(u64, Hash)],
    ) -> Result<Integrated, PgError> {
        let limit = self.integration_limit;
        self.conn.client().await?;
        let notices = self.conn.unreplicated();
        let tx = self.conn.client.transaction().await?;
        if let Some(every) = limit {
            // For this transaction only: whoever holds the lock and stops
            // answering loses it (see `set_integration_limits`).
            tx.batch_execute(&limits_sql(every)).await?;
        }
        let locked: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&INTEGRATION_LOCK])
            .await?
            .get(0);
        if !locked {
            return Ok(Integrated::Busy);
        }
        let state = tx
            .query_one(
                "SELECT size, root FROM audit_tree_state WHERE id = 0 FOR UPDATE",
                &[],
            )
            .await?;
        let from = to_u64(state.get(0), "the tree size")?;
        let stored_root = hash_of(state.get(1), "the tree root")?;
        let last = tx
            .query_opt(
                "SELECT size, root FROM audit_checkpoints ORDER BY size DESC LIMIT 1",
                &[],
            )
            .await?
            .map(|r| {
                Ok::<_, PgError>(TreeHead {
                    size: to_u64(r.get(0), "a checkpoint size")?,
                    root: hash_of(r.get(1), "a checkpoint root")?,
                })
            })
            .transpose()?;
        // The head row holds the newest entry's hash as its writer chained
        // it: the newest entry read must still have it.
        let log_head = tx
            .query_one(
                "SELECT next_sequence, last_hash FROM audit_head WHERE id = 0",
                &[],
            )
            .await?;
        let log_size = to_u64(log_head.get(0), "the log size")?;
        let log_last = hash_of(log_head.get(1), "the last hash")?;
        let rows = tx
            .query(
                "SELECT sequence, encoding, citizen, citizen_as_given, consumer, time_micros \
                 FROM audit_entries WHERE sequence >= $1 ORDER BY sequence LIMIT $2",
                &[&(from as i64), &(max_entries.min(i64::MAX as u64) as i64)],
            )
            .await?;
        // The left siblings new nodes need are the current peaks; the
        // last leaf is what the first new entry must chain to.
        let mut wanted = peaks(from);
        if from > 0 {
            wanted.push((0, from - 1));
        }
        let mut nodes = Self::nodes(&tx, &wanted).await?;
        // The tree as stored must be the tree this broker signed or saw,
        // and the newest checkpoint must be its head: a head that moved
        // back or changed its root is a rewritten database.
        let start = TreeHead {
            size: from,
            root: nodes.combine(&peaks(from))?,
        };
        if start.root != stored_root {
            return Err(PgError::Integrity(format!(
                "the tree's stored root at size {from} is not the one its nodes give"
            )));
        }
        check_against(self.seen, start, "tree")?;
        if last.is_none() && from > 0 {
            return Err(PgError::Integrity(format!(
                "the tree holds {from} entries but no checkpoint is kept: the checkpoints were deleted"
            )));
        }
        if let Some(last) = last {
            check_against(self.seen, last, "newest checkpoint")?;
            if last.size < from {
                return Err(PgError::Integrity(format!(
                    "the tree holds {from} entries but the newest checkpoint {}: \
                     a checkpoint was deleted",
                    last.size
                )));
            }
            if last.size > from {
                return Err(PgError::Integrity(format!(
                    "a checkpoint is signed for {} entries, but the tree holds {from}: \
                     the tree was rolled back",
                    last.size
                )));
            }
            // The last signed root must still be what the tree gives.
            let again = Self::nodes(&tx, &peaks(last.size))
                .await?
                .combine(&peaks(last.size))?;
            if again != last.root {
                return Err(PgError::Integrity(format!(
                    "the tree no longer gives the root signed at size {}: \
                     refusing to sign a checkpoint",
                    last.size
                )));
            }
        }
        let mut previous = if from == 0 {
            [0u8; 32]
        } else {
            nodes.get((0, from - 1))?
        };
        if let Some((at, leaf)) = self.last_leaf
            && at + 1 == from
            && leaf != previous
        {
            return Err(PgError::Integrity(format!(
                "the tree's leaf of entry {at} is not the one this broker integrated"
            )));
        }
        let mut new: Vec<(i16, i64, Vec<u8>)> = Vec::new();
        let mut size = from;
        for r in rows {
            let row = Row {
                sequence: to_u64(r.get(0), "a sequence")?,
                encoding: r.get(1),
                citizen: r.get(2),
                citizen_as_given: r.get(3),
                consumer: r.get(4),
                time_micros: r.get(5),
            };
            let mut node = check_row(&row, size, &previous)?;
            if size + 1 == log_size && node != log_last {
                return Err(PgError::Integrity(format!(
                    "entry {size}, the newest, is not the entry its writer committed (the log head holds another hash)"
                )));
            }
            if let Ok(i) = known.binary_search_by_key(&size, |(s, _)| *s)
                && known[i].1 != node
            {
                return Err(PgError::Integrity(format!(
                    "entry {size}, committed by this broker, was altered after its commit"
                )));
            }
            previous = node;
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
            // Written as it is, so that the commit waits for the standby
            // and confirms the tree read (see `confirmed`).
            tx.execute("UPDATE audit_tree_state SET size = size WHERE id = 0", &[])
                .await?;
            tx.commit().await?;
            self.confirmed(notices, head, "tree")?;
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
        self.confirmed(notices, head, "checkpoint")?;
        self.last_leaf = Some((size - 1, previous));
        Ok(Integrated::Done {
            head,
            checkpoint: Some(note),
        })
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
