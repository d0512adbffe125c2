//! `[store]`: the embedded store or PostgreSQL, and how fresh a broker on
//! PostgreSQL keeps what it shares with others.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The store. Without `url`, the embedded store (sled and the audit log
/// file in `data_dir`) for one broker; with a `postgresql://` URL, the
/// PostgreSQL store any number of brokers share (docs/storage-postgresql.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `postgresql://user@host:port/database`. Keep a password out of the
    /// file: `url_file` names a file holding the URL (a mounted secret), or
    /// `SEMEL_STORE__URL` in the environment replaces this key.
    pub url: Option<String>,
    /// A file (readable by the broker only) whose first line is the URL,
    /// password included; instead of `url`.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// How often a broker reads the registry's version when no change was
    /// announced to it (NOTIFY lost with a dropped connection): the bound
    /// on how late another broker's registry change takes effect here.
    #[serde(default)]
    pub registry_poll_ms: Option<u64>,
    /// How often a broker reads the persons directory's change feed: a
    /// file closed or a consent withdrawn through another broker stops
    /// counting here within this interval. Memory stops answering after
    /// five intervals without a successful read.
    #[serde(default)]
    pub persons_poll_ms: Option<u64>,
    /// How long an audit batch may wait to be durable (its commit waiting
    /// for the synchronous standby, or a later transaction confirming it
    /// reached the standby after PostgreSQL reported it perhaps not
    /// replicated) before its callers are refused (AUDIT_UNAVAILABLE) and
    /// health says NOT_SERVING. Default 5000.
    #[serde(default)]
    pub max_durability_wait_ms: Option<u64>,
    /// How long a broker on PostgreSQL answers from its registry snapshot
    /// (organisations, authorisations, datasets, revoked certificates)
    /// after a read of the database last confirmed it current (default
    /// 5000). Beyond it every call is refused with `UNAVAILABLE` /
    /// `REGISTRY_STALE` and health says NOT_SERVING until a read confirms
    /// it again. Must exceed `registry_poll_ms` at least threefold. The
    /// embedded store has one writer: its snapshot is always current.
    #[serde(default)]
    pub max_staleness_ms: Option<u64>,
}

/// The registry's freshness bound when none is configured.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(5);

/// The registry poll when none is configured.
pub const DEFAULT_REGISTRY_POLL: Duration = Duration::from_secs(1);

/// The persons feed's poll when none is configured.
pub const DEFAULT_PERSONS_POLL: Duration = Duration::from_millis(100);

impl StoreSection {
    /// The PostgreSQL URL, when the store is PostgreSQL.
    pub fn postgresql(&self) -> Option<&str> {
        self.url.as_deref().filter(|u| !u.trim().is_empty())
    }

    pub fn registry_poll(&self) -> Duration {
        self.registry_poll_ms
            .map_or(DEFAULT_REGISTRY_POLL, Duration::from_millis)
    }

    pub fn persons_poll(&self) -> Duration {
        self.persons_poll_ms
            .map_or(DEFAULT_PERSONS_POLL, Duration::from_millis)
    }

    pub fn max_durability_wait(&self) -> Duration {
        self.max_durability_wait_ms.map_or(
            semel_storage::DEFAULT_MAX_DURABILITY_WAIT,
            Duration::from_millis,
        )
    }

    pub fn max_staleness(&self) -> Duration {
        self.max_staleness_ms
            .map_or(DEFAULT_MAX_STALENESS, Duration::from_millis)
    }
}
