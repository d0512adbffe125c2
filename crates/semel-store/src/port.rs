//! The embedded store behind the storage port. Appends go through the
//! log's writer queue (entries appended at once share one `fdatasync`);
//! reads that wait for the indexer or the tree, and writes, run on tokio's
//! blocking threads.

use std::sync::Arc;

use semel_core::Hash;
use semel_storage::{
    Appended, ArchiveReport, ArchiveState, AuditPage, AuditQuery, AuditStats, AuditStore,
    SignedCheckpoint, Storage, StorageError,
};

use crate::Store;
use crate::audit::AuditError;
use crate::blocking;

impl From<AuditError> for StorageError {
    fn from(e: AuditError) -> Self {
        StorageError::Unavailable(e.to_string())
    }
}

/// The embedded store as a broker sees it: its registry, its persons
/// directory and its audit log, behind the port.
pub fn storage(store: Arc<Store>) -> Storage {
    Storage {
        registry: Arc::new(store.registry().clone()),
        persons: Arc::new(store.persons().clone()),
        mutations: Arc::new(store.mutations().clone()),
        audit: Arc::new(EmbeddedAudit(store)),
    }
}

/// The embedded audit log behind the port (it holds the whole store, which
/// owns the log's threads and files).
pub struct EmbeddedAudit(pub Arc<Store>);

#[async_trait::async_trait]
impl AuditStore for EmbeddedAudit {
    async fn append(&self, record: semel_core::AuditRecord) -> Result<Appended, StorageError> {
        let a = self.0.audit().append(record).await?;
        Ok(Appended {
            sequence: a.sequence,
            hash: a.hash,
        })
    }

    async fn head(&self) -> Result<(u64, Hash), StorageError> {
        Ok(self.0.audit().head())
    }

    async fn entry(&self, sequence: u64) -> Result<Vec<u8>, StorageError> {
        let s = self.0.clone();
        blocking(move || Ok(s.audit().read_sequence(sequence)?.entry.to_bytes())).await
    }

    async fn root(&self, size: u64) -> Result<Hash, StorageError> {
        let s = self.0.clone();
        blocking(move || s.audit().root(size)).await
    }

    async fn inclusion_proof(&self, sequence: u64, size: u64) -> Result<Vec<Hash>, StorageError> {
        let s = self.0.clone();
        blocking(move || Ok(s.audit().inclusion_proof(sequence, size)?.1)).await
    }

    async fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StorageError> {
        let s = self.0.clone();
        blocking(move || s.audit().consistency_proof(old, new)).await
    }

    async fn query_page(&self, query: &AuditQuery) -> Result<AuditPage, StorageError> {
        let (s, query) = (self.0.clone(), query.clone());
        blocking(move || s.audit().query_page(&query)).await
    }

    async fn latest_checkpoint(&self) -> Result<Option<SignedCheckpoint>, StorageError> {
        Ok(self.0.audit().latest_checkpoint())
    }

    async fn checkpoints(&self) -> Result<Vec<SignedCheckpoint>, StorageError> {
        let s = self.0.clone();
        blocking(move || s.audit().checkpoints()).await
    }

    async fn set_cosigned(&self, note: &str) -> Result<(), StorageError> {
        let (s, note) = (self.0.clone(), note.to_owned());
        blocking(move || s.audit().set_cosigned(&note)).await
    }

    async fn cosigned(&self) -> Result<Option<String>, StorageError> {
        Ok(self.0.audit().cosigned())
    }

    fn verifier_key(&self) -> Option<String> {
        self.0.audit().verifier_key().map(str::to_owned)
    }

    fn stats(&self) -> AuditStats {
        self.0.audit().stats()
    }

    fn failure(&self) -> Option<String> {
        self.0.audit().failure()
    }

    fn halt(&self, why: String) {
        self.0.audit().halt(why)
    }

    fn archived(&self) -> ArchiveState {
        self.0.audit().archived()
    }

    async fn archive_before(
        &self,
        cutoff_micros: i64,
    ) -> Result<Option<ArchiveReport>, StorageError> {
        let s = self.0.clone();
        blocking(move || s.audit().archive_before(cutoff_micros)).await
    }

    async fn close(&self) -> Result<(), StorageError> {
        let s = self.0.clone();
        blocking(move || {
            s.audit().close()?;
            s.registry().sync()
        })
        .await
    }
}
