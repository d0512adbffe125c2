//! The witnesses that cosign the audit log's checkpoints, and how the log
//! is held to what they cosigned (`[audit]`).

use std::time::Duration;

use semel_core::checkpoint::CosignatureVerifier;

/// A witness the broker submits its checkpoints to.
#[derive(Debug, Clone)]
pub struct WitnessTarget {
    /// The submission prefix, e.g. `http://witness.example:8701`.
    pub url: String,
    pub key: CosignatureVerifier,
}

/// How the broker holds its log to what its witnesses cosigned
/// (`audit.witness_quorum`, `audit.witness_unreachable_ms`,
/// `audit.witness_refusal_grace_ms`).
#[derive(Debug, Clone)]
pub struct WitnessSettings {
    pub targets: Vec<WitnessTarget>,
    /// How many witnesses must confirm the log before the broker serves
    /// (at start) and keeps serving (afterwards).
    pub quorum: usize,
    /// How long a running broker serves while fewer than `quorum`
    /// witnesses confirm its newest checkpoint (none answering): then its
    /// health is NOT_SERVING until they do.
    pub unconfirmed_bound: Duration,
    /// How long witnesses may refuse the log's checkpoints before the log
    /// halts (zero: the first refusal halts it).
    pub refusal_grace: Duration,
}

impl WitnessSettings {
    /// No witnesses: nothing is asked.
    pub fn none() -> WitnessSettings {
        WitnessSettings {
            targets: Vec::new(),
            quorum: 0,
            unconfirmed_bound: Duration::from_secs(600),
            refusal_grace: Duration::ZERO,
        }
    }

    /// These witnesses, with the defaults: one must confirm, ten minutes
    /// unconfirmed before NOT_SERVING, the first refusal halts the log.
    pub fn new(targets: Vec<WitnessTarget>) -> WitnessSettings {
        WitnessSettings {
            quorum: usize::from(!targets.is_empty()),
            targets,
            ..WitnessSettings::none()
        }
    }
}
