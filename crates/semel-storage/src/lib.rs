//! Semel's storage port: what the rest of Semel asks of storage, as traits
//! every implementation provides the same way (the embedded store in
//! `semel-store`, PostgreSQL in `semel-postgres`), and the conformance
//! suite ([`conformance`]) that holds them to it.
//!
//! Built so far: the persons directory, consents and number replacements
//! ([`PersonsStore`]). The registry and the audit log follow (issue 16;
//! `docs/storage-postgresql.md`).

pub mod conformance;

use async_trait::async_trait;
use semel_core::persons::Resolved;
use semel_core::{Consent, Kbo, Niss, NumberReplacement, PersonFile};

/// Why storage failed, the same for every implementation.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The change contradicts what is stored (a stale version, a second
    /// replacement of a number, a loop); nothing was written.
    #[error("{0}")]
    Conflict(String),
    /// Storage holds a value it cannot read: a defect or tampering.
    #[error("storage holds a damaged value: {0}")]
    Corrupt(String),
    /// Storage cannot be reached or did not confirm the write; nothing may
    /// be assumed written (fail closed).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// The persons directory, the consent register and replaced national
/// numbers. Every write is durable when it returns.
#[async_trait]
pub trait PersonsStore: Send + Sync {
    /// Stores files (insert or replace), all durable together.
    async fn put_files(&self, files: &[PersonFile]) -> Result<(), StorageError>;

    /// Removes a file (undoing a registration whose audit entry failed).
    async fn delete_file(&self, file: &PersonFile) -> Result<(), StorageError>;

    /// One file of a consumer on a citizen, under the number it was
    /// registered with.
    async fn file(
        &self,
        consumer: &Kbo,
        citizen: &Niss,
        id: &str,
    ) -> Result<Option<PersonFile>, StorageError>;

    /// Every file of a consumer on a citizen, under any of the citizen's
    /// numbers.
    async fn files_of(
        &self,
        consumer: &Kbo,
        citizen: &Resolved,
    ) -> Result<Vec<PersonFile>, StorageError>;

    /// Stores a consent (insert or replace).
    async fn put_consent(&self, consent: &Consent) -> Result<(), StorageError>;

    /// Removes a consent (undoing a registration whose audit entry failed).
    async fn delete_consent(&self, consent: &Consent) -> Result<(), StorageError>;

    /// Every consent of a citizen, under any of their numbers.
    async fn consents_of(&self, citizen: &Resolved) -> Result<Vec<Consent>, StorageError>;

    /// Records that `old` was replaced by `new`; the same replacement again
    /// returns the stored one. [`StorageError::Conflict`] when a number
    /// would replace itself, `old` is already replaced by another number,
    /// or the replacement would make a loop.
    async fn replace(&self, r: &NumberReplacement) -> Result<NumberReplacement, StorageError>;

    /// Takes back a replacement (a wrong one would merge two people): the
    /// old number stands on its own again. Returns what was removed.
    async fn unreplace(&self, old: &Niss) -> Result<Option<NumberReplacement>, StorageError>;

    /// Follows replacements from `given` to the number in force (at most
    /// [`semel_core::persons::MAX_REPLACEMENT_CHAIN`] steps), and finds the
    /// numbers that one replaced.
    async fn resolve(&self, given: &Niss) -> Result<Resolved, StorageError>;
}
