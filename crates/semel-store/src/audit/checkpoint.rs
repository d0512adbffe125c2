//! Checkpoints and proofs: the indexer's checkpointer signs the tree's
//! root every so many entries or so much time into `audit/checkpoints`;
//! the log answers inclusion and consistency proofs from the tree.

use super::*;

impl AuditLog {
    /// The key that verifies this log's checkpoints (`name+hash+key`), when
    /// checkpoints are signed.
    pub fn verifier_key(&self) -> Option<&str> {
        self.verifier_key.as_deref()
    }

    /// The newest signed checkpoint.
    pub fn latest_checkpoint(&self) -> Option<SignedCheckpoint> {
        lock(&self.shared.checkpoint).clone()
    }

    /// A checkpoint's note with its witnesses' cosignature lines added, once
    /// the broker has checked them: kept (durably) as the newest cosigned
    /// checkpoint.
    pub fn set_cosigned(&self, note: &str) -> Result<(), StoreError> {
        write_durably(&self.dir.join("cosigned"), note.as_bytes())?;
        *lock(&self.cosigned) = Some(note.to_owned());
        Ok(())
    }

    /// The newest cosigned checkpoint's note, if any.
    pub fn cosigned(&self) -> Option<String> {
        lock(&self.cosigned).clone()
    }

    /// Every signed checkpoint, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<SignedCheckpoint>, StoreError> {
        read_checkpoints(&self.checkpoints_path)
    }

    /// Waits until the tree holds `size` leaves, or says it never will.
    fn tree_of(&self, size: u64) -> Result<std::sync::RwLockReadGuard<'_, Tree>, StoreError> {
        let durable = self.wait_indexed()?;
        if size > durable {
            return Err(StoreError::OutOfRange(format!(
                "the log holds {durable} entries, not {size}"
            )));
        }
        Ok(self.tree.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The root of the tree of the first `size` entries.
    pub fn root(&self, size: u64) -> Result<Hash, StoreError> {
        let tree = self.tree_of(size)?;
        semel_core::merkle::root(&TreeReader(&tree), size)
    }

    /// Entry `sequence` and its inclusion proof in the tree of `size`
    /// entries.
    pub fn inclusion_proof(
        &self,
        sequence: u64,
        size: u64,
    ) -> Result<(StoredEntry, Vec<Hash>), StoreError> {
        if sequence >= size {
            return Err(StoreError::OutOfRange(format!(
                "entry {sequence} is not in a tree of {size} entries"
            )));
        }
        let proof = {
            let tree = self.tree_of(size)?;
            semel_core::merkle::inclusion_proof(&TreeReader(&tree), sequence, size)?
        };
        Ok((self.read_sequence(sequence)?, proof))
    }

    /// The proof that the tree of `old` entries is a prefix of the tree of
    /// `new` entries.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StoreError> {
        if old == 0 || old > new {
            return Err(StoreError::OutOfRange(format!(
                "no consistency proof from {old} to {new} entries: the first size must be between 1 and the second"
            )));
        }
        let tree = self.tree_of(new)?;
        semel_core::merkle::consistency_proof(&TreeReader(&tree), old, new)
    }
}

/// Signs checkpoints every so many entries or so much time.
pub(super) struct Checkpointer {
    pub(super) settings: CheckpointSettings,
    pub(super) file: File,
    pub(super) last_size: u64,
    /// The root the last checkpoint signed, at `last_size`.
    pub(super) last_root: Option<Hash>,
    /// When the oldest entry no checkpoint covers yet was indexed: the
    /// time cadence runs from it, so an entry waits at most `every` for a
    /// signature, whether it is the first of the log or of a quiet hour.
    pub(super) first_unsigned: Option<std::time::Instant>,
}

impl Checkpointer {
    pub(super) fn due(&mut self, size: u64, closing: bool) -> bool {
        if size <= self.last_size {
            return false;
        }
        let since = *self
            .first_unsigned
            .get_or_insert_with(std::time::Instant::now);
        closing
            || size - self.last_size >= self.settings.every_entries
            || since.elapsed() >= self.settings.every
    }

    /// How long the indexer may wait for entries before a checkpoint is due.
    pub(super) fn wait(&self) -> std::time::Duration {
        self.first_unsigned.map_or(self.settings.every, |since| {
            self.settings
                .every
                .saturating_sub(since.elapsed())
                .max(std::time::Duration::from_millis(1))
        })
    }

    /// Signs the tree as it is, after making its nodes durable, and only if
    /// it still reproduces the root signed before: a new checkpoint is
    /// always consistent with the previous one.
    pub(super) fn sign(&mut self, tree: &mut Tree, shared: &Shared) -> Result<(), StoreError> {
        tree.sync()?;
        if let Some(signed) = self.last_root
            && semel_core::merkle::root(&TreeReader(tree), self.last_size)? != signed
        {
            return Err(StoreError::Corrupt(format!(
                "audit log: the tree no longer reproduces the root signed at size {}; no checkpoint is signed over it",
                self.last_size
            )));
        }
        let size = tree.size();
        let checkpoint = Checkpoint {
            origin: self.settings.signer.name().to_owned(),
            size,
            root: semel_core::merkle::root(&TreeReader(tree), size)?,
        };
        let note = self.settings.signer.sign(&checkpoint);
        let mut frame = (note.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(note.as_bytes());
        self.file
            .write_all(&frame)
            .and_then(|()| self.file.sync_data())
            .map_err(io_err("write an audit checkpoint"))?;
        self.last_size = size;
        self.last_root = Some(checkpoint.root);
        self.first_unsigned = None;
        *lock(&shared.checkpoint) = Some(SignedCheckpoint { checkpoint, note });
        Ok(())
    }
}

/// Reads the signed notes of `audit/checkpoints`, oldest first. A partial
/// last record (an interrupted write) is ignored.
pub(crate) fn read_checkpoints(path: &Path) -> Result<Vec<SignedCheckpoint>, StoreError> {
    Ok(read_checkpoint_records(path)?.0)
}

/// Cuts a partial last record off `audit/checkpoints` (durably), so that
/// what is appended next starts a record of its own.
pub(super) fn cut_torn_checkpoint(path: &Path) -> Result<(), StoreError> {
    let (_, whole, len) = read_checkpoint_records(path)?;
    if whole == len {
        return Ok(());
    }
    tracing::warn!(
        dropped_bytes = len - whole,
        "the last audit checkpoint record was only partly written; cut off (its checkpoint is signed again)"
    );
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))?;
    f.set_len(whole as u64)
        .and_then(|()| f.sync_all())
        .map_err(io_err(format!("cut {}", path.display())))
}

/// The whole records of `audit/checkpoints`, the length they take, and the
/// file's length.
fn read_checkpoint_records(
    path: &Path,
) -> Result<(Vec<SignedCheckpoint>, usize, usize), StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0, 0)),
        Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
    };
    let mut out = Vec::new();
    let mut rest = bytes.as_slice();
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(note) = rest.get(4..4 + len) else {
            break;
        };
        let note = String::from_utf8(note.to_vec())
            .map_err(|_| corrupt("an audit checkpoint is not UTF-8"))?;
        let checkpoint = Checkpoint::of_note(&note)
            .map_err(|e| corrupt(&format!("an audit checkpoint: {e}")))?;
        out.push(SignedCheckpoint { checkpoint, note });
        rest = &rest[4 + len..];
    }
    Ok((out, bytes.len() - rest.len(), bytes.len()))
}
