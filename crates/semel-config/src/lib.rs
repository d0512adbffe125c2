//! The broker's configuration file (TOML): its sections, their defaults,
//! the environment's overrides, and the checks run before start. Unknown
//! keys are refused, and every path is checked before any port is bound.
//!
//! The sections become the plain settings of [`settings`], which the
//! broker's parts (in `semel-server`) take; what needs the broker's own
//! machinery (loading the TLS files and the signing key, the stores) is
//! `semel_server::config::ConfigExt`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

mod audit;
mod check;
mod grpc;
mod http;
mod limits;
mod load;
mod mutations;
mod persons;
pub mod settings;
mod sources;
mod store;
mod telemetry;
#[cfg(test)]
mod tests;
mod tls;
mod tokens;

pub use audit::{AuditSection, WitnessSection};
pub use grpc::GrpcSection;
pub use http::HttpSection;
pub use limits::LimitsSection;
pub use mutations::MutationsSection;
pub use persons::PersonsSection;
pub use sources::SourcesSection;
pub use store::{DEFAULT_MAX_STALENESS, DEFAULT_PERSONS_POLL, DEFAULT_REGISTRY_POLL, StoreSection};
pub use telemetry::TelemetrySection;
pub use tls::{OperatorSection, TlsSection};
pub use tokens::{IssuerSection, TokensSection};

/// `semel serve --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the gRPC port (mutual TLS only).
    pub listen: SocketAddr,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    pub tls: TlsSection,
    /// The organisation running the broker; registered at start if missing.
    pub operator: OperatorSection,
    #[serde(default)]
    pub sources: SourcesSection,
    /// Address of the Prometheus metrics port (plain HTTP, `/metrics`);
    /// none when absent.
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    pub limits: LimitsSection,
    /// End-user tokens: the audience and the trusted issuers.
    pub tokens: TokensSection,
    /// How often the certificate, key, CA bundle and issuers' keys are
    /// checked for changes, in milliseconds (0: only on SIGHUP).
    #[serde(default = "default_reload_poll_ms")]
    pub reload_poll_ms: u64,
    /// OpenTelemetry trace export; none when absent.
    pub telemetry: Option<TelemetrySection>,
    /// Signed checkpoints of the audit log.
    #[serde(default)]
    pub audit: AuditSection,
    /// The persons directory's rules for files.
    #[serde(default)]
    pub persons: PersonsSection,
    /// Where the registry, the persons directory and the audit log live:
    /// the embedded store in `data_dir` unless a PostgreSQL URL is given.
    #[serde(default)]
    pub store: StoreSection,
    /// The HTTP/JSON face; none when absent.
    pub http: Option<HttpSection>,
    /// The gRPC port's limits on connections and calls, and its timeouts.
    #[serde(default)]
    pub grpc: GrpcSection,
    /// The mutation queues.
    #[serde(default)]
    pub mutations: MutationsSection,
}

fn default_reload_poll_ms() -> u64 {
    5000
}

/// The environment variables `semel`'s command line reads itself (its
/// options' `env` and the log filter). They share the `SEMEL_` prefix with
/// the configuration's overrides, so these names are kept out of them; the
/// binary's tests check that every variable its options read is listed.
pub const COMMAND_LINE_VARIABLES: &[&str] = &[
    "SEMEL_LOG",
    "SEMEL_LOG_FORMAT",
    "SEMEL_DEMO_DIR",
    "SEMEL_TOKEN_FILE",
    "SEMEL_SERVER_NAME",
    // The tests' PostgreSQL (crates/semel-postgres/src/testing.rs), set
    // around tests that start `semel serve`.
    "SEMEL_TEST_DATABASE_URL",
    "SEMEL_REQUIRE_POSTGRES",
];
