//! The audit log's values as every implementation of [`crate::AuditStore`]
//! hands them over: entries read back, queries, statistics, checkpoints
//! and the archive's state.

use std::time::Duration;

use semel_core::checkpoint::Checkpoint;
use semel_core::{AuditDecision, AuditEntry, Hash, Kbo, Niss};

/// The longest a lookup can take between arriving (its entry's time) and
/// being appended: far above the largest source deadline (120 s). Entries
/// follow the sequence in time to within this, so a newest-first query
/// with a lower time bound stops this far past it.
pub const MAX_APPEND_DELAY_MICROS: i64 = 10 * 60 * 1_000_000;

/// How long a batch of a PostgreSQL store's audit log may wait to be
/// durable (its commit waiting for the synchronous standby, or a later
/// transaction confirming it reached the standby) before its callers are refused and health says NOT_SERVING,
/// unless configured (`store.max_durability_wait_ms`).
pub const DEFAULT_MAX_DURABILITY_WAIT: Duration = Duration::from_secs(5);

/// The default scrub rate of a PostgreSQL store's audit log, in entries
/// checked a second (`audit.scrub_entries_per_second`): a log of ten
/// million entries is checked about every 80 minutes. Measured on the
/// development machine, a page of 1,000 rows costs PostgreSQL about 5 ms
/// (its query, EXPLAIN ANALYZE) and the broker about 6 ms of CPU (a debug
/// build): some 10 ms of each a second.
pub const DEFAULT_SCRUB_RATE: u64 = 2000;

/// An entry read back from the log, with its hash.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub entry: AuditEntry,
    pub hash: Hash,
}

/// A query over the log. Filters that are set must all match.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub citizen: Option<Niss>,
    pub consumer: Option<Kbo>,
    /// The person (the token's `sub`).
    pub end_user: Option<String>,
    /// The authorisation reference.
    pub authorisation: Option<String>,
    pub dataset: Option<String>,
    pub decision: Option<AuditDecision>,
    /// The reason code of a refusal or failure.
    pub reason: Option<semel_core::ReasonCode>,
    pub since_micros: Option<i64>,
    pub until_micros: Option<i64>,
    /// Only entries with a sequence below this (for paging, newest first).
    pub before_sequence: Option<u64>,
    pub limit: usize,
    /// The most entries the query reads (decodes and checks) to fill its
    /// page; `None` is no bound. A filter that no index serves (decision,
    /// reason, period) reads the log newest first, so without a bound one
    /// call may read all of it. When the bound is met before the page is
    /// full, [`AuditPage::resume_before`] says where to go on.
    pub scan_limit: Option<usize>,
}

/// What a query found, and how far it read.
#[derive(Debug, Clone, Default)]
pub struct AuditPage {
    /// The entries that match, newest first, at most the query's limit.
    pub entries: Vec<StoredEntry>,
    /// Entries read (decoded and checked) to find them.
    pub examined: usize,
    /// Set when the scan limit was met before the page was full and older
    /// entries remain unread: the sequence of the last entry read. The
    /// same query with `before_sequence` set to it goes on where this one
    /// stopped, so that followed to the end every match is found once.
    pub resume_before: Option<u64>,
}

impl AuditQuery {
    /// Whether an entry matches every filter but the sequence bound. The
    /// citizen matches the number recorded or the one the caller named.
    pub fn matches(&self, r: &semel_core::AuditRecord) -> bool {
        !(self.since_micros.is_some_and(|s| r.time_micros < s)
            || self.until_micros.is_some_and(|u| r.time_micros >= u)
            || self
                .citizen
                .is_some_and(|c| Some(c) != r.citizen && Some(c) != r.citizen_as_given)
            || self.consumer.is_some_and(|c| c != r.consumer)
            || self
                .end_user
                .as_ref()
                .is_some_and(|u| Some(u) != r.end_user.as_ref())
            || self
                .authorisation
                .as_ref()
                .is_some_and(|a| Some(a) != r.authorisation.as_ref())
            || self.dataset.as_ref().is_some_and(|d| *d != r.dataset)
            || self.decision.is_some_and(|d| d != r.decision)
            || self.reason.is_some_and(|c| Some(c) != r.reason))
    }

    /// The time from which no entry at or after a sequence can match the
    /// upper time bound: an entry at least [`MAX_APPEND_DELAY_MICROS`] past
    /// `until` is followed only by entries at or past `until` (times follow
    /// the sequence to within that delay). A query with `until` searches
    /// for the first such entry (by bisection over the sequence) and reads
    /// only what lies below it, instead of reading everything newer and
    /// filtering it out.
    pub fn until_seek_time(&self) -> Option<i64> {
        self.until_micros
            .map(|u| u.saturating_add(MAX_APPEND_DELAY_MICROS))
    }

    /// Whether, reading newest first, an entry this old means nothing
    /// older can match.
    pub fn past_since(&self, r: &semel_core::AuditRecord) -> bool {
        self.since_micros
            .is_some_and(|s| r.time_micros < s.saturating_sub(MAX_APPEND_DELAY_MICROS))
    }
}

/// What the audit log has done since this broker opened it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Entries durable in the log (all time).
    pub entries: u64,
    /// Entries waiting for the writer or its sync.
    pub queued: u64,
    /// Syncs (or commits) since opening, and the time they took.
    pub syncs: u64,
    pub sync_micros: u64,
    /// Entries the background scrub checked since opening, passes over the
    /// whole log it finished, and rows it found not to be what was signed
    /// (each halts the log).
    pub scrubbed: u64,
    pub scrub_passes: u64,
    pub scrub_findings: u64,
    /// Integrity failures found since opening (an entry, a query column,
    /// a tree or a checkpoint that disagrees with what the log proves).
    pub integrity_failures: u64,
}

/// How much of the log has moved to archive files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArchiveState {
    /// Entries `0..before` are archived, no longer in the live log.
    pub before: u64,
    /// The time of the newest archived entry (µs since the epoch).
    pub until_micros: i64,
    /// Where entry `before` starts in the log file (embedded store).
    pub offset: u64,
}

/// What one archiving run moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveReport {
    pub from: u64,
    /// The first entry left in the log.
    pub to: u64,
    pub file: std::path::PathBuf,
}

/// A checkpoint and its signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    /// The C2SP signed note, as served and exported.
    pub note: String,
}
