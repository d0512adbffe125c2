//! Semel's storage port: what the rest of Semel asks of storage, as traits
//! every implementation provides the same way (the embedded store in
//! `semel-store`, PostgreSQL in `semel-postgres`), and the conformance
//! suite ([`conformance`]) that holds them to it.
//!
//! The port: the registry ([`RegistryStore`]), the persons directory,
//! consents and number replacements ([`PersonsStore`]), and the audit log
//! with its tree, proofs, queries, checkpoints and archive ([`AuditStore`]),
//! and the mutation queues ([`MutationStore`]);
//! [`Storage`] holds one of each, as a broker sees them.

mod audit;
pub mod cache;
pub mod conformance;
mod mutations;

pub use mutations::{Accepted, Acknowledged, Expired, MutationStore, QueueState, Queued, Routed};

pub use cache::{
    CacheStats, CachedPersons, DEFAULT_CAPACITY as PERSONS_CACHE_CAPACITY, WARM_PAGE, Warmed,
};

pub use audit::{
    ArchiveReport, ArchiveState, AuditPage, AuditQuery, AuditStats, DEFAULT_MAX_DURABILITY_WAIT,
    DEFAULT_SCRUB_RATE, MAX_APPEND_DELAY_MICROS, SignedCheckpoint, StoredEntry,
};

use std::sync::Arc;

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
    /// This store does not do that (yet): the archive on PostgreSQL, for
    /// one. The caller answers UNIMPLEMENTED.
    #[error("{0}")]
    Unsupported(String),
}

/// Everything a broker stores, seen through the port: the broker holds
/// this and never names an engine.
#[derive(Clone)]
pub struct Storage {
    pub registry: Arc<dyn RegistryStore>,
    pub persons: Arc<dyn PersonsStore>,
    pub audit: Arc<dyn AuditStore>,
    pub mutations: Arc<dyn MutationStore>,
}

/// A registry record as a change wrote it and as it was before, to put
/// back when the change's audit entry cannot be made durable. The record is
/// put back only while it is still the one written: a change made since
/// (through another broker) stands, and the undo is refused.
#[derive(Debug, Clone)]
pub enum RegistryUndo {
    /// The organisation written, and the one before it (`None`: created).
    Organisation(Box<Organisation>, Option<Box<Organisation>>),
    Dataset(Box<Dataset>, Option<Box<Dataset>>),
    Purpose(Box<Purpose>, Option<Box<Purpose>>),
    /// A revocation that did not exist before.
    Revocation(semel_core::CertificateId),
    /// The version written, and the one before it.
    Authorisation(Box<Authorisation>, Option<Box<Authorisation>>),
    /// An application for membership, as written and as it was.
    Membership(
        Box<semel_core::MembershipApplication>,
        Option<Box<semel_core::MembershipApplication>>,
    ),
    /// An application for an authorisation, as written and as it was.
    Application(
        Box<semel_core::AuthorisationApplication>,
        Option<Box<semel_core::AuthorisationApplication>>,
    ),
}

/// One write of a registry change, naming the record as the change read
/// it (`before`, `None`: absent). [`RegistryStore::commit`] writes `after`
/// only while the store still holds `before` (compare-and-set), so a change
/// made meanwhile through another broker is never silently undone.
#[derive(Debug, Clone)]
pub enum RegistryWrite {
    Organisation {
        after: Box<Organisation>,
        before: Option<Box<Organisation>>,
    },
    Dataset {
        after: Box<Dataset>,
        before: Option<Box<Dataset>>,
    },
    Purpose {
        after: Box<Purpose>,
        before: Option<Box<Purpose>>,
    },
    /// A new version; it must follow `before`'s (1 for a new one).
    Authorisation {
        after: Box<Authorisation>,
        before: Option<Box<Authorisation>>,
    },
    Application {
        after: Box<semel_core::AuthorisationApplication>,
        before: Option<Box<semel_core::AuthorisationApplication>>,
    },
    Membership {
        after: Box<semel_core::MembershipApplication>,
        before: Option<Box<semel_core::MembershipApplication>>,
    },
    /// A certificate revoked: a new revocation, written only while the
    /// certificate is not revoked yet (a revocation is never changed, and
    /// revoking again keeps the first record: the caller writes nothing).
    Revocation { after: Box<RevokedCertificate> },
}

impl RegistryWrite {
    /// What takes this write back (while the record is still `after`).
    pub fn undo(&self) -> RegistryUndo {
        match self {
            RegistryWrite::Organisation { after, before } => {
                RegistryUndo::Organisation(after.clone(), before.clone())
            }
            RegistryWrite::Dataset { after, before } => {
                RegistryUndo::Dataset(after.clone(), before.clone())
            }
            RegistryWrite::Purpose { after, before } => {
                RegistryUndo::Purpose(after.clone(), before.clone())
            }
            RegistryWrite::Authorisation { after, before } => {
                RegistryUndo::Authorisation(after.clone(), before.clone())
            }
            RegistryWrite::Application { after, before } => {
                RegistryUndo::Application(after.clone(), before.clone())
            }
            RegistryWrite::Membership { after, before } => {
                RegistryUndo::Membership(after.clone(), before.clone())
            }
            RegistryWrite::Revocation { after } => RegistryUndo::Revocation(after.id.clone()),
        }
    }

    /// The record's kind and key, for messages (`organisation 0212345668`).
    pub fn name(&self) -> String {
        match self {
            RegistryWrite::Organisation { after, .. } => format!("organisation {}", after.kbo),
            RegistryWrite::Dataset { after, .. } => format!("dataset {}", after.name),
            RegistryWrite::Purpose { after, .. } => format!("purpose {}", after.code),
            RegistryWrite::Authorisation { after, .. } => {
                format!("authorisation {}", after.reference)
            }
            RegistryWrite::Application { after, .. } => format!("application {}", after.id),
            RegistryWrite::Membership { after, .. } => {
                format!("membership application {}", after.id)
            }
            RegistryWrite::Revocation { after } => format!("certificate {}", after.id.key()),
        }
    }
}

/// The message of a write refused because its record changed since it was
/// read: the same words on every store.
pub fn changed_since(what: &str) -> StorageError {
    StorageError::Conflict(format!(
        "{what} was changed by another change (through another broker, perhaps) since it was read: nothing was written; read it again and retry"
    ))
}

/// The registry's rules on applications, checked by every store against
/// the registry as a commit leaves it: one pending application per
/// reference and applicant, one pending membership application per
/// enterprise number.
pub fn second_pending_application(reference: &str, applicant: &Kbo) -> StorageError {
    StorageError::Conflict(format!(
        "an application of {applicant} for {reference} is already pending: one at a time per reference; nothing was written"
    ))
}

/// See [`second_pending_application`].
pub fn second_pending_membership(kbo: &Kbo) -> StorageError {
    StorageError::Conflict(format!(
        "an application for membership of {kbo} is already pending; nothing was written"
    ))
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

    /// For a persons directory that several brokers write: what changed
    /// after position `after` of its change feed, in commit order, and the
    /// feed's head. [`StorageError::Unsupported`] for a store with one
    /// writer (the embedded store), whose changes all pass through it.
    async fn changes_since(&self, _after: u64) -> Result<PersonsChanges, StorageError> {
        Err(StorageError::Unsupported(
            "this persons directory has one writer and keeps no change feed".into(),
        ))
    }

    /// Whether other brokers write this store too, so that it keeps a
    /// change feed ([`PersonsStore::changes_since`]).
    fn keeps_feed(&self) -> bool {
        false
    }

    /// The directory's files a page at a time, in (consumer, number)
    /// order, for warming a broker's memory at start
    /// ([`crate::cache::CachedPersons::warm`]): the files after the pair
    /// `after` (about `limit` of them, every file of each pair given), the
    /// consents under their numbers, and which of their numbers a number
    /// replacement names (their resolution is left to a lookup); only what
    /// the store honours. [`StorageError::Unsupported`] for a store whose
    /// reads are local and cheap (the embedded store), which has nothing to
    /// gain from it.
    async fn directory_page(
        &self,
        _after: Option<&(Kbo, Niss)>,
        _limit: usize,
    ) -> Result<DirectoryPage, StorageError> {
        Err(StorageError::Unsupported(
            "this persons directory is read locally and is not warmed".into(),
        ))
    }

    /// Seals files just stored as made by the audit entry `entry`, which
    /// recorded their change (no rule without its entry): in a store that
    /// others administer (PostgreSQL), a file is honoured only once sealed,
    /// and only while its seal verifies and its entry is in the log (see
    /// [`semel_core::seal`]). A file whose content changed since is left
    /// as it is. Nothing to do where only the broker writes.
    async fn seal_files(
        &self,
        _files: &[PersonFile],
        _entry: Appended,
    ) -> Result<(), StorageError> {
        Ok(())
    }

    /// Seals a consent just stored, as [`PersonsStore::seal_files`].
    async fn seal_consent(&self, _consent: &Consent, _entry: Appended) -> Result<(), StorageError> {
        Ok(())
    }

    /// Seals a number replacement just stored (as [`PersonsStore::replace`]
    /// returned it), as [`PersonsStore::seal_files`]: a replacement
    /// decides whose files count for a number, so one written outside a
    /// broker is not followed.
    async fn seal_replacement(
        &self,
        _replacement: &NumberReplacement,
        _entry: Appended,
    ) -> Result<(), StorageError> {
        Ok(())
    }

    /// Rows read since start that were not honoured because their seal did
    /// not verify or their entry is missing or differs: tampering, or a
    /// change whose entry failed (for metrics; zero where nothing is
    /// sealed).
    fn unsealed(&self) -> u64 {
        0
    }
}

/// A page of the persons directory (see [`PersonsStore::directory_page`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectoryPage {
    /// Files in (consumer, number) order: every file of each (consumer,
    /// number) pair that appears.
    pub files: Vec<PersonFile>,
    /// Every consent under the numbers of `files`.
    pub consents: Vec<Consent>,
    /// The numbers of `files` that a number replacement names (as the old
    /// number or the new one).
    pub replaced: Vec<Niss>,
    /// Where the next page starts; `None` after the last.
    pub next: Option<(Kbo, Niss)>,
}

/// What changed in a shared persons directory (see
/// [`PersonsStore::changes_since`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersonsChanges {
    /// The feed's position after these changes.
    pub head: u64,
    /// Every change after the position asked for, when `complete`.
    pub changes: Vec<PersonsChange>,
    /// False when the changes could not all be listed (pruned from the
    /// feed, or too many): a reader must forget everything it holds.
    pub complete: bool,
}

/// One change of a shared persons directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersonsChange {
    /// A file or consent under this number changed.
    Citizen(Niss),
    /// A number replacement was made or taken back: resolutions changed.
    Replacements,
}

/// The registry: organisations, datasets, purposes, authorisations (with
/// every version) and revoked certificates. Lists come in key order (bytes
/// of the KBO number, name, code or reference). Every write is durable
/// when it returns.
#[async_trait]
pub trait RegistryStore: Send + Sync {
    /// Stores an organisation (insert or replace: a suspension, for one).
    async fn put_organisation(&self, org: &Organisation) -> Result<(), StorageError>;
    /// Stores a new organisation; [`StorageError::Conflict`] if one with
    /// its number exists (created at once through another broker, say).
    async fn insert_organisation(&self, org: &Organisation) -> Result<(), StorageError>;
    async fn organisation(&self, kbo: &Kbo) -> Result<Option<Organisation>, StorageError>;
    async fn organisations(&self) -> Result<Vec<Organisation>, StorageError>;

    /// Stores a dataset (insert or replace).
    async fn put_dataset(&self, dataset: &Dataset) -> Result<(), StorageError>;
    /// Stores a new dataset; [`StorageError::Conflict`] if its name is taken.
    async fn insert_dataset(&self, dataset: &Dataset) -> Result<(), StorageError>;
    async fn datasets(&self) -> Result<Vec<Dataset>, StorageError>;

    /// Stores a purpose (insert or replace).
    async fn put_purpose(&self, purpose: &Purpose) -> Result<(), StorageError>;
    /// Stores a new purpose; [`StorageError::Conflict`] if its code is taken.
    async fn insert_purpose(&self, purpose: &Purpose) -> Result<(), StorageError>;
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

    /// Stores an application for an authorisation (insert or replace, by
    /// id).
    async fn put_application(
        &self,
        application: &semel_core::AuthorisationApplication,
    ) -> Result<(), StorageError>;
    /// Every application, by id.
    async fn applications(&self)
    -> Result<Vec<semel_core::AuthorisationApplication>, StorageError>;

    /// Stores an application for membership (insert or replace, by id).
    async fn put_membership(
        &self,
        application: &semel_core::MembershipApplication,
    ) -> Result<(), StorageError>;
    /// Every application for membership, by id.
    async fn memberships(&self) -> Result<Vec<semel_core::MembershipApplication>, StorageError>;

    /// Records a revocation; revoking again keeps the first record, which
    /// is returned.
    async fn revoke_certificate(
        &self,
        revoked: &RevokedCertificate,
    ) -> Result<RevokedCertificate, StorageError>;
    async fn revoked_certificates(&self) -> Result<Vec<RevokedCertificate>, StorageError>;

    /// Writes a change all or nothing, in one transaction every other
    /// broker sees whole or not at all: each write only while its record
    /// is still as the change read it, and only if the registry it leaves
    /// keeps the rules on applications. [`StorageError::Conflict`] (nothing
    /// written) otherwise. Durable when it returns.
    async fn commit(&self, writes: &[RegistryWrite]) -> Result<(), StorageError>;

    /// Records that a registry apply is under way (its marker, not yet
    /// committed), before its change entries are written: a broker that
    /// stops before [`RegistryStore::commit_apply`] leaves the marker, and
    /// [`RegistryStore::unsettled_applies`] finds it.
    async fn open_apply(&self, marker: &ApplyMarker) -> Result<(), StorageError>;

    /// [`RegistryStore::commit`], and in the same transaction the apply's
    /// marker turned committed with the words of its closing entry: the
    /// registry changes exactly when the marker says committed. Refused
    /// with [`StorageError::Conflict`] (nothing written) if the marker is
    /// gone or already committed (another broker settled the apply as not
    /// applied, finding its broker stopped).
    ///
    /// `entries` holds, for each write, the audit entry that recorded it,
    /// durable before this is called: a store that seals its rows seals
    /// each with its own entry in the same transaction.
    async fn commit_apply(
        &self,
        writes: &[RegistryWrite],
        entries: &[Appended],
        apply: &str,
        closing: &str,
    ) -> Result<(), StorageError>;

    /// The markers of applies whose closing entry may be missing: those
    /// of this broker (left by a broker that stopped, or not yet removed)
    /// and, on a shared database, those of brokers no longer alive. The
    /// caller settles them under the lock its own applies take.
    async fn unsettled_applies(&self) -> Result<Vec<ApplyMarker>, StorageError>;

    /// Removes an apply's marker if it is still `committed` as given;
    /// `false` if it was not (another broker settled it first).
    async fn close_apply(&self, apply: &str, committed: bool) -> Result<bool, StorageError>;

    /// Takes back committed writes (given in the order written) all or
    /// nothing, last first, each only while its record is still as
    /// written; [`StorageError::Conflict`] (nothing taken back) otherwise.
    async fn undo_all(&self, undos: &[RegistryUndo]) -> Result<(), StorageError>;

    /// Stores a change the way [`RegistryStore::commit`] checks it, but in
    /// force only once its audit entry is durable (no rule without its
    /// entry). A store that others administer (PostgreSQL) keeps the writes
    /// in a transaction still open, which no reader sees, and commits them
    /// with each row sealed by that entry ([`Staged::Open`]); one where
    /// only the broker writes commits at once and is taken back if the
    /// entry fails ([`Staged::Committed`], the default).
    async fn stage(&self, writes: &[RegistryWrite]) -> Result<Staged, StorageError> {
        self.commit(writes).await?;
        Ok(Staged::Committed(
            writes.iter().map(RegistryWrite::undo).collect(),
        ))
    }

    /// Rows read since start that were not honoured because their seal did
    /// not verify or their entry is missing or differs (for metrics; zero
    /// where nothing is sealed).
    fn unsealed(&self) -> u64 {
        0
    }

    /// Rules stored before this store sealed them, to adopt once, as they
    /// stand: a change left open that seals them all with the entry that
    /// records the adoption, and that entry's words (counts and a digest of
    /// the rows). `None` when no adoption is due (always, where nothing is
    /// sealed).
    async fn adoption(&self) -> Result<Option<(Box<dyn OpenChange>, String)>, StorageError> {
        Ok(None)
    }

    /// Takes back a change whose audit entry could not be made durable:
    /// the record is put back as it was (or removed if it did not exist).
    /// The broker serialises its registry changes and appends the entry
    /// under the same lock, so nothing else changed the record meanwhile
    /// on this broker.
    async fn undo(&self, undo: &RegistryUndo) -> Result<(), StorageError>;
}

/// A registry change stored but not yet in force (see
/// [`RegistryStore::stage`]).
pub enum Staged {
    /// Written and in force already; these take it back, last first, if
    /// its entry cannot be made durable.
    Committed(Vec<RegistryUndo>),
    /// Written in a transaction still open: in force once sealed with its
    /// entry, and never if dropped (the transaction rolls back).
    Open(Box<dyn OpenChange>),
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Staged::Committed(u) => f.debug_tuple("Committed").field(u).finish(),
            Staged::Open(_) => f.write_str("Open(..)"),
        }
    }
}

/// A registry change written in a transaction still open.
#[async_trait]
pub trait OpenChange: Send {
    /// Seals every row the change wrote with `entry`, the audit entry that
    /// recorded it (durable), and commits: the change is then in force on
    /// every broker. An error leaves it not in force (rolled back, or its
    /// commit's outcome unknown).
    async fn seal(self: Box<Self>, entry: Appended) -> Result<(), StorageError>;
}

/// A registry apply under way, stored beside the registry (issue 30): opened
/// before the apply's change entries are written, turned committed in the
/// registry's own transaction, removed once the closing entry is durable.
/// A marker that outlives its broker says what the closing entry must say:
/// not applied (still open) or applied (committed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApplyMarker {
    /// The apply's id, as its change entries name it (`apply <uuid>`).
    pub id: String,
    /// The broker that opened it (on the embedded store: the process).
    pub broker: String,
    /// The organisation and the person who applied, for the closing entry.
    pub organisation: semel_core::Kbo,
    pub end_user: String,
    /// Whether the registry commit took place.
    pub committed: bool,
    /// The closing entry's words, once committed.
    pub closing: String,
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

    /// Entries matching `query`, newest first, at most `query.limit`. Sees
    /// every entry durable when it was called (a caller sees its own
    /// lookups); archived entries are not searched.
    async fn query(&self, query: &AuditQuery) -> Result<Vec<StoredEntry>, StorageError> {
        Ok(self.query_page(query).await?.entries)
    }

    /// [`AuditStore::query`] within the query's scan limit: the page may be
    /// short and say where to go on. A query with `until` starts at the
    /// newest entry that can match it (found by bisection over the
    /// sequence), not at the head of the log.
    async fn query_page(&self, query: &AuditQuery) -> Result<AuditPage, StorageError>;

    /// The newest signed checkpoint, if any.
    async fn latest_checkpoint(&self) -> Result<Option<SignedCheckpoint>, StorageError>;
    /// Every signed checkpoint kept, oldest first.
    async fn checkpoints(&self) -> Result<Vec<SignedCheckpoint>, StorageError>;
    /// Keeps a checkpoint's note with its witnesses' cosignatures (checked
    /// by the caller) as the newest cosigned checkpoint.
    async fn set_cosigned(&self, note: &str) -> Result<(), StorageError>;
    /// The newest cosigned checkpoint's note.
    async fn cosigned(&self) -> Result<Option<String>, StorageError>;
    /// The key that verifies this log's checkpoints (`name+hash+key`).
    fn verifier_key(&self) -> Option<String>;

    /// The oldest entry no signed checkpoint covers, as its sequence and
    /// its recorded time (µs since the epoch): the entry at the newest
    /// checkpoint's size. `None` when every durable entry is covered.
    /// Read from the log itself, so that how long an entry has waited for
    /// a signature does not restart with the process.
    async fn oldest_uncovered(&self) -> Result<Option<(u64, i64)>, StorageError> {
        let covered = self
            .latest_checkpoint()
            .await?
            .map_or(0, |c| c.checkpoint.size);
        let (size, _) = self.head().await?;
        if size <= covered {
            return Ok(None);
        }
        let encoding = self.entry(covered).await?;
        let entry = semel_core::AuditEntry::decode(&encoding)
            .map_err(|e| StorageError::Corrupt(format!("entry {covered}: {e}")))?;
        Ok(Some((covered, entry.record.time_micros)))
    }

    /// What this broker's writer has done; cheap, for metrics.
    fn stats(&self) -> AuditStats;
    /// Why the log cannot take entries now, if it cannot (for health).
    fn failure(&self) -> Option<String>;

    /// Stops taking entries until the broker restarts: an integrity
    /// failure found outside the store (a witness that saw a longer or
    /// another history, say). Every later append is refused with `why`, and
    /// [`AuditStore::failure`] reports it; nothing clears it but a restart.
    fn halt(&self, why: String);

    /// How much of the log is archived.
    fn archived(&self) -> ArchiveState;
    /// Moves entries older than the cutoff (µs since the epoch) out of the
    /// live log; `None` when there was nothing to move.
    async fn archive_before(
        &self,
        cutoff_micros: i64,
    ) -> Result<Option<ArchiveReport>, StorageError>;

    /// Stops taking entries once every accepted one is durable, and makes
    /// the rest of the store durable too; called once, at shutdown.
    async fn close(&self) -> Result<(), StorageError>;
}
