//! `[sources]`: how the broker reaches authentic sources.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::Config;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesSection {
    /// How long a source may take to answer one lookup, in milliseconds.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// CA bundle that sources' server certificates must chain to; by
    /// default `tls.client_ca`. Whatever the CA, a source's certificate
    /// must also name the dataset's owner (organizationIdentifier).
    pub ca: Option<PathBuf>,
    /// Addresses or CIDR networks where sources may be although they are
    /// loopback, link-local, private or unspecified (refused otherwise),
    /// e.g. `["127.0.0.1"]` for a demo, `["10.20.0.0/16"]` for sources on
    /// an internal network. The broker's own addresses stay refused.
    #[serde(default)]
    pub allowed_endpoints: Vec<String>,
    /// Certificate revocation lists (PEM or DER files) of the sources' CAs:
    /// a source whose certificate one of them lists is not called.
    /// Reloaded with the CA bundle.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// Lookups in flight to one source at most (default 1024).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Consecutive failures that open a source's circuit (default 5).
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open circuit fails fast, in milliseconds (default 5000).
    #[serde(default = "default_breaker_cooldown_ms")]
    pub breaker_cooldown_ms: u64,
    /// The dataset whose source is the register of persons: it is asked
    /// whether a national number exists before a file is opened on it, and
    /// its organisation may record replaced numbers (default
    /// `national_register.identity`).
    #[serde(default = "default_register_dataset")]
    pub register_dataset: String,
}

fn default_register_dataset() -> String {
    "national_register.identity".to_owned()
}

fn default_max_in_flight() -> usize {
    1024
}

fn default_breaker_failures() -> u32 {
    5
}

fn default_breaker_cooldown_ms() -> u64 {
    5000
}

fn default_deadline_ms() -> u64 {
    5000
}

impl Default for SourcesSection {
    fn default() -> Self {
        SourcesSection {
            deadline_ms: default_deadline_ms(),
            ca: None,
            allowed_endpoints: Vec::new(),
            crls: Vec::new(),
            max_in_flight: default_max_in_flight(),
            breaker_failures: default_breaker_failures(),
            breaker_cooldown_ms: default_breaker_cooldown_ms(),
            register_dataset: default_register_dataset(),
        }
    }
}

impl Config {
    pub fn source_deadline(&self) -> Duration {
        Duration::from_millis(self.sources.deadline_ms)
    }

    pub fn sources_ca(&self) -> &Path {
        self.sources.ca.as_deref().unwrap_or(&self.tls.client_ca)
    }
}
