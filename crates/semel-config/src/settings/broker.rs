//! The mutation queues' settings (`[mutations]`) and the persons
//! directory's rules for files (`[persons]`).

use std::collections::BTreeMap;
use std::time::Duration;

/// The mutation queues' settings.
#[derive(Debug, Clone)]
pub struct MutationSettings {
    /// How long a change not acknowledged is kept.
    pub retention: Duration,
    /// How often a subscription or a pull reads its queue without being
    /// woken, while this broker cannot hear other brokers' changes (its
    /// PostgreSQL listener is down, or the store has none): the bound on
    /// how late a change published through another broker arrives then.
    pub fallback_poll: Duration,
}

/// The fallback poll when none is configured.
pub const DEFAULT_MUTATIONS_POLL: Duration = Duration::from_millis(250);

impl Default for MutationSettings {
    fn default() -> Self {
        MutationSettings {
            retention: Duration::from_secs(168 * 3600),
            fallback_poll: DEFAULT_MUTATIONS_POLL,
        }
    }
}

/// The persons directory's rules for files.
#[derive(Debug, Clone)]
pub struct PersonsSettings {
    /// How many days before its registration a file may begin.
    pub max_backdate_days: u32,
    /// The same, per capacity.
    pub max_backdate_days_by_capacity: BTreeMap<String, u32>,
}

impl Default for PersonsSettings {
    fn default() -> Self {
        PersonsSettings {
            max_backdate_days: 92,
            max_backdate_days_by_capacity: BTreeMap::new(),
        }
    }
}

impl PersonsSettings {
    /// How far back a file in this capacity may begin, in days.
    pub fn max_backdate(&self, capacity: &str) -> u32 {
        self.max_backdate_days_by_capacity
            .get(capacity)
            .copied()
            .unwrap_or(self.max_backdate_days)
    }
}
