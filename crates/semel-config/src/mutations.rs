//! `[mutations]`: how long a change waits for its consumer, and how often
//! a queue is read when no change woke it.

use std::time::Duration;

use serde::Deserialize;

use super::Config;

/// The mutation queues: how long a change waits for its consumer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MutationsSection {
    /// How long a change a consumer has not acknowledged is kept, in hours
    /// (default 168, a week; 1 to 8760). Older ones are dropped, and the
    /// consumer is told which positions it lost.
    #[serde(default = "default_retention_hours")]
    pub retention_hours: u64,
    /// How often, in milliseconds, a subscription or a pull reads its
    /// queue when nothing woke it, while the broker cannot hear the changes
    /// other brokers queue (PostgreSQL: its listener connection is down;
    /// default 250, 50 to 600000). While the listener is up, a change
    /// queued through any broker wakes them at once and there is no poll.
    #[serde(default)]
    pub fallback_poll_ms: Option<u64>,
}

impl Default for MutationsSection {
    fn default() -> Self {
        MutationsSection {
            retention_hours: default_retention_hours(),
            fallback_poll_ms: None,
        }
    }
}

fn default_retention_hours() -> u64 {
    168
}

impl Config {
    pub fn mutation_settings(&self) -> crate::settings::MutationSettings {
        crate::settings::MutationSettings {
            retention: std::time::Duration::from_secs(self.mutations.retention_hours * 3600),
            fallback_poll: self.mutations.fallback_poll_ms.map_or(
                crate::settings::DEFAULT_MUTATIONS_POLL,
                Duration::from_millis,
            ),
        }
    }
}
