//! Semel's storage port: what the rest of Semel asks of storage, as traits
//! every implementation provides the same way (the embedded store in
//! `semel-store`, PostgreSQL in `semel-postgres`), and the conformance
//! suite ([`conformance`]) that holds them to it.
//!
//! Built so far: the registry ([`RegistryStore`]), the persons directory,
//! consents and number replacements ([`PersonsStore`]), and the audit
//! log's append, head, entries and proofs ([`AuditStore`]); its queries,
//! checkpoints and archive follow (issue 16; `docs/storage-postgresql.md`).

pub mod conformance;

use async_trait::async_trait;
use semel_core::persons::Resolved;
use semel_core::{
    AuditRecord, Authorisation, Consent, Dataset, Hash, Kbo, Niss, NumberReplacement, Organisation,
    PersonFile, Purpose, RevokedCertificate,
};

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
    /// A request for something storage does not hold (yet): a tree size
    /// beyond the log's end, an entry past the head.
    #[error("{0}")]
    OutOfRange(String),
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

/// The registry: organisations, datasets, purposes, authorisations (with
/// every version) and revoked certificates. Lists come in key order (bytes
/// of the KBO number, name, code or reference). Every write is durable
/// when it returns.
#[async_trait]
pub trait RegistryStore: Send + Sync {
    /// Stores an organisation (insert or replace: a suspension, for one).
    async fn put_organisation(&self, org: &Organisation) -> Result<(), StorageError>;
    async fn organisations(&self) -> Result<Vec<Organisation>, StorageError>;

    /// Stores a dataset (insert or replace).
    async fn put_dataset(&self, dataset: &Dataset) -> Result<(), StorageError>;
    async fn datasets(&self) -> Result<Vec<Dataset>, StorageError>;

    /// Stores a purpose (insert or replace).
    async fn put_purpose(&self, purpose: &Purpose) -> Result<(), StorageError>;
    async fn purposes(&self) -> Result<Vec<Purpose>, StorageError>;

    /// Stores a new version of an authorisation; the version must follow
    /// the stored one ([`StorageError::Conflict`] otherwise), so two changes
    /// made at once cannot silently overwrite each other.
    async fn put_authorisation(&self, auth: &Authorisation) -> Result<(), StorageError>;
    /// The current version of every authorisation.
    async fn authorisations(&self) -> Result<Vec<Authorisation>, StorageError>;
    /// Every stored version of one authorisation, oldest first.
    async fn authorisation_history(
        &self,
        reference: &str,
    ) -> Result<Vec<Authorisation>, StorageError>;

    /// Records a revocation; revoking again keeps the first record, which
    /// is returned.
    async fn revoke_certificate(
        &self,
        revoked: &RevokedCertificate,
    ) -> Result<RevokedCertificate, StorageError>;
    async fn revoked_certificates(&self) -> Result<Vec<RevokedCertificate>, StorageError>;
}

/// Where an appended entry landed in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub sequence: u64,
    /// The entry's leaf hash, which the next entry chains to.
    pub hash: Hash,
}

/// The audit log: a hash chain of canonical entries under an RFC 6962
/// tree. Appends are durable when they return (nothing is answered before
/// its entry is), sequences are dense, and entries appended at once may
/// share one write.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Records an entry; returns once it is durable. On
    /// [`StorageError::Unavailable`] the entry has no place and the caller
    /// must refuse (fail closed).
    async fn append(&self, record: AuditRecord) -> Result<Appended, StorageError>;

    /// The number of durable entries and the hash of the last one (zeros
    /// for an empty log).
    async fn head(&self) -> Result<(u64, Hash), StorageError>;

    /// The canonical encoding of one entry, as hashed and verified.
    async fn entry(&self, sequence: u64) -> Result<Vec<u8>, StorageError>;

    /// The root of the tree of the first `size` entries; waits for the
    /// tree to hold them when they are durable.
    async fn root(&self, size: u64) -> Result<Hash, StorageError>;

    /// The inclusion proof of entry `sequence` in the tree of `size`.
    async fn inclusion_proof(&self, sequence: u64, size: u64) -> Result<Vec<Hash>, StorageError>;

    /// The proof that the tree of `old` entries (at least 1) is a prefix
    /// of the tree of `new`.
    async fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StorageError>;
}
