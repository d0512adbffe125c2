//! Checking an audit log without trusting the broker: every entry decodes,
//! follows its predecessor in sequence and hash chain, and the Merkle tree
//! recomputed from the entries has, at every signed checkpoint, the root the
//! checkpoint signs. On failure the first entry (or checkpoint) that does
//! not match is named.
//!
//! Two inputs: a store's `audit/` directory (the log file and its
//! checkpoints), and an export written by [`export`] (JSON Lines, which an
//! outside auditor can check on their own machine).

mod excerpt;
mod export;
mod lines;
mod log;
mod store;
mod trust;

#[cfg(test)]
mod archiving;
#[cfg(test)]
mod tampering;

pub use excerpt::EXCERPT_FORMAT;
pub use export::{ExportFormat, export, export_entries};
pub use lines::{verify_export, verify_export_trusting};
pub use log::LogVerifier;
pub use store::{origin_of, own_verifier_key, verify_dir, verify_dir_trusting};
pub use trust::TrustPolicy;

use semel_core::Hash;

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub entries: u64,
    /// Signed checkpoints checked.
    pub checkpoints: usize,
    /// The size of the newest checkpoint, if any.
    pub last_checkpoint: Option<u64>,
    /// The root of all the entries.
    pub root: Hash,
    /// Trusted checkpoints (what auditors saw) the log reached and
    /// reproduced.
    pub trusted: usize,
    /// Set for an excerpt (some entries, each proven by its inclusion
    /// proof in one signed checkpoint), not the whole log.
    pub excerpt: bool,
    /// Where the log is a new epoch of an earlier one: the statement its
    /// first entry makes (see [`semel_core::epoch`]), checked.
    pub epoch: Option<EpochBoundary>,
}

/// The statement that opens a new epoch, as the verifier checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochBoundary {
    pub statement: semel_core::epoch::EpochStatement,
    /// Whether the previous checkpoint is signed by this log's key under
    /// the previous origin (false: another key signed it; check it with
    /// the previous verifier key).
    pub same_key: bool,
}

/// Where the log stops being what was signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyFailure {
    #[error("entry {sequence}: {why}")]
    Entry { sequence: u64, why: String },
    #[error("checkpoint of {size} entries: {why}")]
    Checkpoint { size: u64, why: String },
    /// The input does not say what it should (a line that is not JSON, an
    /// entry that cannot be decoded): an integrity failure, like the others.
    #[error("{0}")]
    Input(String),
    /// The input could not be checked at all (a file missing or unreadable,
    /// not an export, a check that does not apply to it): an operational
    /// error, not a verdict on the log.
    #[error("{0}")]
    NotChecked(String),
}

impl VerifyFailure {
    /// Whether this says the log or export is not what was signed (exit 4),
    /// rather than that it could not be read (exit 1).
    pub fn is_integrity(&self) -> bool {
        !matches!(self, VerifyFailure::NotChecked(_))
    }
}
