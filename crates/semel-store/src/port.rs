//! The embedded audit log behind the storage port. Appends go through the
//! log's writer queue (entries appended at once share one `fdatasync`);
//! reads and proofs are synchronous and wait for the indexer as the log's
//! own methods do.

use semel_core::Hash;
use semel_storage::{Appended, AuditStore, StorageError};

use crate::audit::{AuditError, AuditLog};

impl From<AuditError> for StorageError {
    fn from(e: AuditError) -> Self {
        StorageError::Unavailable(e.to_string())
    }
}

#[async_trait::async_trait]
impl AuditStore for AuditLog {
    async fn append(&self, record: semel_core::AuditRecord) -> Result<Appended, StorageError> {
        let a = AuditLog::append(self, record).await?;
        Ok(Appended {
            sequence: a.sequence,
            hash: a.hash,
        })
    }

    async fn head(&self) -> Result<(u64, Hash), StorageError> {
        Ok(AuditLog::head(self))
    }

    async fn entry(&self, sequence: u64) -> Result<Vec<u8>, StorageError> {
        Ok(self.read_sequence(sequence)?.entry.to_bytes())
    }

    async fn root(&self, size: u64) -> Result<Hash, StorageError> {
        Ok(AuditLog::root(self, size)?)
    }

    async fn inclusion_proof(&self, sequence: u64, size: u64) -> Result<Vec<Hash>, StorageError> {
        Ok(AuditLog::inclusion_proof(self, sequence, size)?.1)
    }

    async fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StorageError> {
        Ok(AuditLog::consistency_proof(self, old, new)?)
    }
}

/// The whole embedded store answers for its audit log, so that one value
/// owns everything the log needs (tests, and the server later).
#[async_trait::async_trait]
impl AuditStore for crate::Store {
    async fn append(&self, record: semel_core::AuditRecord) -> Result<Appended, StorageError> {
        AuditStore::append(self.audit(), record).await
    }

    async fn head(&self) -> Result<(u64, Hash), StorageError> {
        AuditStore::head(self.audit()).await
    }

    async fn entry(&self, sequence: u64) -> Result<Vec<u8>, StorageError> {
        AuditStore::entry(self.audit(), sequence).await
    }

    async fn root(&self, size: u64) -> Result<Hash, StorageError> {
        AuditStore::root(self.audit(), size).await
    }

    async fn inclusion_proof(&self, sequence: u64, size: u64) -> Result<Vec<Hash>, StorageError> {
        AuditStore::inclusion_proof(self.audit(), sequence, size).await
    }

    async fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StorageError> {
        AuditStore::consistency_proof(self.audit(), old, new).await
    }
}
