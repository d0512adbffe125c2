//! `[audit]`: checkpoints of the audit log, their signing key, the
//! witnesses that cosign them, the archive and the scrub.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Config;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// The Ed25519 key (PKCS#8 PEM) that signs checkpoints; created if
    /// missing. Default: `<data_dir>/audit-signing.key`.
    pub signing_key: Option<PathBuf>,
    /// The log's name in its checkpoints; default
    /// `semel.brussels/audit/<operator enterprise number>`.
    pub origin: Option<String>,
    /// Sign a checkpoint after this many new entries (default 100000)...
    #[serde(default = "default_checkpoint_entries")]
    pub checkpoint_every_entries: u64,
    /// ...or this many milliseconds when there are new entries (default 10000).
    #[serde(default = "default_checkpoint_ms")]
    pub checkpoint_every_ms: u64,
    /// Report NOT_SERVING while the oldest entry no checkpoint covers is
    /// older than this many milliseconds, by its recorded time (default:
    /// five times `checkpoint_every_ms`; at least that interval).
    #[serde(default)]
    pub checkpoint_age_limit_ms: Option<u64>,
    /// Entries older than this many days move to archive files in
    /// `<data_dir>/audit/archive/` (default 183, six months; 0 keeps
    /// everything online).
    #[serde(default = "default_online_days")]
    pub online_days: u32,
    /// Witnesses that cosign each new checkpoint (c2sp.org/tlog-witness).
    #[serde(default)]
    pub witnesses: Vec<WitnessSection>,
    /// How many witnesses must confirm that the log is consistent with
    /// the newest checkpoint they cosigned, at start before the broker
    /// serves and at each checkpoint (default 1). Any witness that saw more
    /// or another history halts the log, whatever the quorum.
    #[serde(default = "default_witness_quorum")]
    pub witness_quorum: usize,
    /// How long a running broker serves while fewer than the quorum of
    /// witnesses can be reached (default 600000, ten minutes); then health
    /// is NOT_SERVING until they confirm the log again.
    #[serde(default = "default_witness_unreachable_ms")]
    pub witness_unreachable_ms: u64,
    /// How long witnesses may refuse the log's checkpoints before the log
    /// halts (default 0: the first refusal halts it).
    #[serde(default)]
    pub witness_refusal_grace_ms: u64,
    /// PostgreSQL store: how many entries a second the background scrub
    /// checks against their signed encoding (query columns, sequence, link,
    /// tree leaf), over the whole log again and again; a row that is not
    /// what was signed halts the log. Default 2000; 0 turns it off.
    #[serde(default = "default_scrub_rate")]
    pub scrub_entries_per_second: u64,
}

fn default_scrub_rate() -> u64 {
    semel_storage::DEFAULT_SCRUB_RATE
}

fn default_witness_quorum() -> usize {
    1
}

fn default_witness_unreachable_ms() -> u64 {
    600_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessSection {
    /// Its submission prefix, e.g. `http://witness.commission.brussels:8701`.
    pub url: String,
    /// Its verifier key (`name+hash+base64`, type 0x04), as its operator
    /// published it.
    pub key: String,
}

fn default_online_days() -> u32 {
    183
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            signing_key: None,
            origin: None,
            checkpoint_every_entries: default_checkpoint_entries(),
            checkpoint_every_ms: default_checkpoint_ms(),
            checkpoint_age_limit_ms: None,
            witnesses: Vec::new(),
            witness_quorum: default_witness_quorum(),
            witness_unreachable_ms: default_witness_unreachable_ms(),
            witness_refusal_grace_ms: 0,
            online_days: default_online_days(),
            scrub_entries_per_second: default_scrub_rate(),
        }
    }
}

fn default_checkpoint_entries() -> u64 {
    100_000
}

fn default_checkpoint_ms() -> u64 {
    10_000
}

impl Config {
    /// The log's name in its checkpoints.
    pub fn audit_origin(&self) -> anyhow::Result<String> {
        Ok(match &self.audit.origin {
            Some(o) => o.clone(),
            None => format!("semel.brussels/audit/{}", self.operator_kbo()?.as_str()),
        })
    }

    /// The checkpoint signing key's file.
    pub fn audit_signing_key(&self) -> PathBuf {
        self.audit
            .signing_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit-signing.key"))
    }

    /// How old the oldest unsigned audit entry may grow before the broker
    /// reports NOT_SERVING.
    pub fn checkpoint_age_limit(&self) -> Duration {
        Duration::from_millis(
            self.audit
                .checkpoint_age_limit_ms
                .unwrap_or(self.audit.checkpoint_every_ms.saturating_mul(5)),
        )
    }

    /// The witnesses to submit checkpoints to.
    pub fn witnesses(&self) -> anyhow::Result<Vec<crate::settings::WitnessTarget>> {
        self.audit
            .witnesses
            .iter()
            .map(|w| {
                anyhow::ensure!(
                    w.url.starts_with("http://") || w.url.starts_with("https://"),
                    "audit.witnesses: {} is not an http:// or https:// URL",
                    w.url
                );
                let key = semel_core::checkpoint::CosignatureVerifier::parse(&w.key)
                    .map_err(|e| anyhow::anyhow!("audit.witnesses: {}: {e}", w.url))?;
                Ok(crate::settings::WitnessTarget {
                    url: w.url.clone(),
                    key,
                })
            })
            .collect()
    }

    /// The witnesses and how the log is held to what they cosigned.
    pub fn witness_settings(&self) -> anyhow::Result<crate::settings::WitnessSettings> {
        let targets = self.witnesses()?;
        anyhow::ensure!(
            targets.is_empty() || (1..=targets.len()).contains(&self.audit.witness_quorum),
            "audit.witness_quorum: {} must be between 1 and the number of audit.witnesses ({})",
            self.audit.witness_quorum,
            targets.len()
        );
        Ok(crate::settings::WitnessSettings {
            quorum: if targets.is_empty() {
                0
            } else {
                self.audit.witness_quorum
            },
            targets,
            unconfirmed_bound: Duration::from_millis(self.audit.witness_unreachable_ms),
            refusal_grace: Duration::from_millis(self.audit.witness_refusal_grace_ms),
        })
    }
}
