//! `[persons]`: the persons directory's rules for files.

use serde::Deserialize;

use super::Config;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonsSection {
    /// How many days before its registration a file may begin (default 92):
    /// a file backdated further would open old data to the consumer.
    #[serde(default = "default_backdate_days")]
    pub max_backdate_days: u32,
    /// The same, per capacity (e.g. `RIS_APPLICANT = 31`).
    #[serde(default)]
    pub max_backdate_days_by_capacity: std::collections::BTreeMap<String, u32>,
}

impl Default for PersonsSection {
    fn default() -> Self {
        PersonsSection {
            max_backdate_days: default_backdate_days(),
            max_backdate_days_by_capacity: Default::default(),
        }
    }
}

fn default_backdate_days() -> u32 {
    92
}

impl Config {
    pub fn persons_settings(&self) -> crate::settings::PersonsSettings {
        crate::settings::PersonsSettings {
            max_backdate_days: self.persons.max_backdate_days,
            max_backdate_days_by_capacity: self.persons.max_backdate_days_by_capacity.clone(),
        }
    }
}
