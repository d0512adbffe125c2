//! The verifier itself: entry by entry, the hash chain, the Merkle tree, the
//! signed checkpoints it reaches, and the statement opening a new epoch.

use semel_core::checkpoint::{Checkpoint, NoteVerifier};
use semel_core::merkle::CompactRange;
use semel_core::{AuditEntry, Hash, ZERO_HASH, entry_hash};

use super::trust::first_number;
use super::{EpochBoundary, VerifyFailure, VerifyReport};

/// Recomputes the chain and the tree entry by entry.
pub struct LogVerifier {
    /// Trusted checkpoints among `checkpoints`.
    trusted: usize,
    checkpoints: Vec<Checkpoint>,
    next_checkpoint: usize,
    /// A checkpoint reached, with the root the entries gave at its size:
    /// compared once the next entry's link has been checked, so an altered
    /// entry is named by the chain rather than by the checkpoint.
    reached: Option<(Checkpoint, u64, Hash)>,
    pub(super) expected: u64,
    previous: Hash,
    range: CompactRange,
    key: NoteVerifier,
    epoch: Option<EpochBoundary>,
}

impl LogVerifier {
    /// Checks every note's signature with `key`, and that the checkpoints
    /// grow.
    pub fn new(notes: &[String], key: &NoteVerifier) -> Result<LogVerifier, VerifyFailure> {
        Self::trusting(notes, key, &[])
    }

    /// Like [`LogVerifier::new`], and the log must also reach and reproduce
    /// each of `trusted` (checkpoints an auditor saw), whether or not the
    /// log still holds them: removing checkpoints cannot hide a change.
    pub fn trusting(
        notes: &[String],
        key: &NoteVerifier,
        trusted: &[Checkpoint],
    ) -> Result<LogVerifier, VerifyFailure> {
        let mut checkpoints: Vec<Checkpoint> = Vec::new();
        for note in notes {
            let c = key.verify(note).map_err(|e| VerifyFailure::Checkpoint {
                size: first_number(note),
                why: e.to_string(),
            })?;
            if let Some(last) = checkpoints.last()
                && c.size <= last.size
            {
                return Err(VerifyFailure::Checkpoint {
                    size: c.size,
                    why: format!(
                        "it follows a checkpoint of {} entries: checkpoints must grow",
                        last.size
                    ),
                });
            }
            checkpoints.push(c);
        }
        for t in trusted {
            match checkpoints.iter().find(|c| c.size == t.size) {
                Some(c) if c.root == t.root => {}
                Some(_) => {
                    return Err(VerifyFailure::Checkpoint {
                        size: t.size,
                        why: "the log's own checkpoint at this size has another root than the trusted one: the log shows auditors different histories".into(),
                    });
                }
                None => {
                    let at = checkpoints.partition_point(|c| c.size < t.size);
                    checkpoints.insert(at, t.clone());
                }
            }
        }
        Ok(LogVerifier {
            trusted: trusted.len(),
            checkpoints,
            next_checkpoint: 0,
            reached: None,
            expected: 0,
            previous: ZERO_HASH,
            range: CompactRange::new(),
            key: key.clone(),
            epoch: None,
        })
    }

    /// Takes the next entry's canonical encoding.
    pub fn push(&mut self, encoding: &[u8]) -> Result<AuditEntry, VerifyFailure> {
        let n = self.expected;
        let entry = AuditEntry::decode(encoding).map_err(|e| VerifyFailure::Entry {
            sequence: n,
            why: format!("cannot be decoded: {e}"),
        })?;
        if entry.sequence != n {
            return Err(VerifyFailure::Entry {
                sequence: n,
                why: format!(
                    "the entry in its place carries sequence {}: entries were removed or reordered",
                    entry.sequence
                ),
            });
        }
        if entry.previous_hash != self.previous {
            return Err(match n {
                0 => VerifyFailure::Entry {
                    sequence: 0,
                    why: "the first entry links to a previous one: the log's beginning was removed"
                        .into(),
                },
                _ => VerifyFailure::Entry {
                    sequence: n - 1,
                    why: format!(
                        "it does not match the hash entry {n} records for it: it was altered"
                    ),
                },
            });
        }
        self.check_reached()?;
        if entry.record.operation == semel_core::epoch::NEW_EPOCH_OPERATION {
            self.epoch = Some(self.epoch_boundary(&entry)?);
        }
        let leaf = entry_hash(encoding);
        self.range.push(leaf);
        self.previous = leaf;
        self.expected += 1;
        while let Some(c) = self.checkpoints.get(self.next_checkpoint) {
            if c.size != self.expected {
                break;
            }
            let from = self
                .next_checkpoint
                .checked_sub(1)
                .and_then(|i| self.checkpoints.get(i))
                .map_or(0, |p| p.size);
            self.reached = Some((c.clone(), from, self.range.root()));
            self.next_checkpoint += 1;
        }
        Ok(entry)
    }

    /// Checks a new-epoch statement: only a log's first entry makes one,
    /// about another origin, and it holds together (its note carries the
    /// checkpoint it states; a note signed by this log's key verifies).
    fn epoch_boundary(&self, entry: &AuditEntry) -> Result<EpochBoundary, VerifyFailure> {
        let failure = |why: String| VerifyFailure::Entry {
            sequence: entry.sequence,
            why,
        };
        if entry.sequence != 0 {
            return Err(failure(
                "it states a new epoch, which only a log's first entry may: a log goes on under its origin or begins anew".into(),
            ));
        }
        let statement = semel_core::epoch::EpochStatement::parse(&entry.record.detail)
            .map_err(|e| failure(e.to_string()))?;
        if statement.previous.origin == self.key.name() {
            return Err(failure(format!(
                "it states a new epoch after {}, this log's own origin: a new epoch has a new origin",
                statement.previous.origin
            )));
        }
        let same_key = statement
            .signed_by_same_key(&self.key)
            .map_err(|e| failure(e.to_string()))?;
        Ok(EpochBoundary {
            statement,
            same_key,
        })
    }

    fn check_reached(&mut self) -> Result<(), VerifyFailure> {
        if let Some((c, from, root)) = self.reached.take()
            && root != c.root
        {
            return Err(VerifyFailure::Checkpoint {
                size: c.size,
                why: format!(
                    "the entries do not produce its signed root: an entry from {from} to {} was altered",
                    c.size - 1
                ),
            });
        }
        Ok(())
    }

    /// Checks that no checkpoint covers entries the log no longer has.
    pub fn finish(mut self) -> Result<VerifyReport, VerifyFailure> {
        self.check_reached()?;
        if let Some(c) = self.checkpoints.get(self.next_checkpoint) {
            return Err(VerifyFailure::Checkpoint {
                size: c.size,
                why: format!(
                    "the log ends after {} entries but this checkpoint covers {}: entries were removed from the end",
                    self.expected, c.size
                ),
            });
        }
        Ok(VerifyReport {
            entries: self.expected,
            checkpoints: self.checkpoints.len(),
            last_checkpoint: self.checkpoints.last().map(|c| c.size),
            root: self.range.root(),
            trusted: self.trusted,
            excerpt: false,
            epoch: self.epoch,
        })
    }
}
