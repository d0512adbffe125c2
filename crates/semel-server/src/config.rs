//! The broker's configuration file (TOML). Unknown keys are refused, and
//! every path is checked before any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use semel_core::Kbo;
use serde::Deserialize;

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

/// The HTTP/JSON face (docs/integration-guide.md, "HTTP/JSON"): the same
/// operations, identity, rules and audit as the gRPC port, on a port of its
/// own. It speaks HTTPS with mutual TLS only, with the `[tls]` files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Address of the HTTP/JSON port.
    pub listen: SocketAddr,
    /// Connections open at once, handshakes included (default 4096); one
    /// more is closed at once.
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one address (default 64; an IPv6
    /// address counts by its /64, which one host commonly holds whole).
    #[serde(default = "default_http_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Of those, connections without a client certificate (default 8): they
    /// are served only the console's files and a 401.
    #[serde(default = "default_http_max_connections_per_address_without_certificate")]
    pub max_connections_per_address_without_certificate: usize,
    /// Connections without a client certificate open at once from all
    /// addresses (default 1024): the rest is kept for organisations.
    #[serde(default = "default_http_max_connections_without_certificate")]
    pub max_connections_without_certificate: usize,
    /// TLS handshakes in progress at once (default 1024).
    #[serde(default = "default_http_max_handshakes")]
    pub max_handshakes: usize,
    /// How long a request's body may take to arrive, in milliseconds
    /// (default 30000); a slower one is refused (408). Also how long an
    /// answer may wait for the client to take any of it, after which the
    /// connection is closed.
    #[serde(default = "default_http_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// How long a client may take to send a request's headers, counted from
    /// the connection's start or the end of the previous answer, in
    /// milliseconds (default 75000): also how long an idle connection is
    /// kept open.
    #[serde(default = "default_http_header_timeout_ms")]
    pub header_timeout_ms: u64,
}

fn default_http_max_connections() -> usize {
    crate::http_settings::HttpSettings::default().max_connections
}

fn default_http_max_connections_per_address() -> usize {
    crate::http_settings::HttpSettings::default().max_connections_per_address
}

fn default_http_max_connections_per_address_without_certificate() -> usize {
    crate::http_settings::HttpSettings::default().max_connections_per_address_without_certificate
}

fn default_http_max_connections_without_certificate() -> usize {
    crate::http_settings::HttpSettings::default().max_connections_without_certificate
}

fn default_http_max_handshakes() -> usize {
    crate::http_settings::HttpSettings::default().max_handshakes
}

fn default_http_body_timeout_ms() -> u64 {
    crate::http_settings::HttpSettings::default()
        .body_timeout
        .as_millis() as u64
}

fn default_http_header_timeout_ms() -> u64 {
    crate::http_settings::HttpSettings::default()
        .header_timeout
        .as_millis() as u64
}

impl HttpSection {
    /// The face's limits and timeouts.
    pub fn settings(&self) -> crate::http_settings::HttpSettings {
        crate::http_settings::HttpSettings {
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            max_connections_per_address_without_certificate: self
                .max_connections_per_address_without_certificate,
            max_connections_without_certificate: self.max_connections_without_certificate,
            max_handshakes: self.max_handshakes,
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            header_timeout: Duration::from_millis(self.header_timeout_ms),
        }
    }

    /// Every problem with the values, each naming its key.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut ensure = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };
        ensure(
            (1..=1_000_000).contains(&self.max_connections),
            format!(
                "http.max_connections: must lie between 1 and 1000000, got {}",
                self.max_connections
            ),
        );
        ensure(
            (1..=self.max_connections.max(1)).contains(&self.max_connections_per_address),
            format!(
                "http.max_connections_per_address: must lie between 1 and http.max_connections ({}), got {}",
                self.max_connections, self.max_connections_per_address
            ),
        );
        ensure(
            self.max_connections_per_address_without_certificate
                <= self.max_connections_per_address,
            format!(
                "http.max_connections_per_address_without_certificate: at most http.max_connections_per_address ({}), got {}",
                self.max_connections_per_address,
                self.max_connections_per_address_without_certificate
            ),
        );
        ensure(
            self.max_connections_without_certificate <= self.max_connections,
            format!(
                "http.max_connections_without_certificate: at most http.max_connections ({}), got {}",
                self.max_connections, self.max_connections_without_certificate
            ),
        );
        ensure(
            (1..=self.max_connections.max(1)).contains(&self.max_handshakes),
            format!(
                "http.max_handshakes: must lie between 1 and http.max_connections ({}), got {}",
                self.max_connections, self.max_handshakes
            ),
        );
        ensure(
            (100..=600_000).contains(&self.body_timeout_ms),
            format!(
                "http.body_timeout_ms: must lie between 100 and 600000, got {}",
                self.body_timeout_ms
            ),
        );
        ensure(
            (100..=3_600_000).contains(&self.header_timeout_ms),
            format!(
                "http.header_timeout_ms: must lie between 100 and 3600000, got {}",
                self.header_timeout_ms
            ),
        );
        problems
    }
}

/// The gRPC port's limits (docs/operator-guide.md, "[grpc]"): anyone who
/// reaches the port may connect, and call health and reflection without a
/// certificate, so what one peer holds is bounded. Every key has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcSection {
    /// Connections open at once, handshakes included (default 4096).
    pub max_connections: usize,
    /// Connections open at once from one address (default 64; an IPv6
    /// address counts by its /64).
    pub max_connections_per_address: usize,
    /// Of those, connections without a client certificate (default 8).
    pub max_connections_per_address_without_certificate: usize,
    /// Connections without a client certificate from all addresses
    /// (default 256).
    pub max_connections_without_certificate: usize,
    /// TLS handshakes in progress at once (default 1024).
    pub max_handshakes: usize,
    /// HTTP/2 streams one connection may have open at once (default 256).
    pub max_concurrent_streams: u32,
    /// Calls one connection may have in progress before their answers
    /// start; more wait their turn (default 128).
    pub concurrency_limit_per_connection: usize,
    /// Calls open at once on one connection without a client certificate
    /// (default 16).
    pub max_calls_per_connection_without_certificate: usize,
    /// Calls open at once on all connections without a client certificate
    /// (default 1024).
    pub max_calls_without_certificate: usize,
    /// `grpc.health.v1.Health/Watch` streams open at once on one connection
    /// (default 8).
    pub max_health_watches_per_connection: usize,
    /// `grpc.health.v1.Health/Watch` streams open at once in all (default
    /// 1024).
    pub max_health_watches: usize,
    /// How long a unary call may take, in milliseconds (default 150000;
    /// more than `sources.deadline_ms` and than PullMutations' longest wait,
    /// 30 s). A stream's answer starts at once: the timeout covers only its
    /// request, never the stream.
    pub request_timeout_ms: u64,
    /// How often a silent connection is checked with an HTTP/2 PING, in
    /// milliseconds (default 30000).
    pub keepalive_interval_ms: u64,
    /// How long the PING's answer may take before the connection is closed,
    /// in milliseconds (default 20000).
    pub keepalive_timeout_ms: u64,
}

impl Default for GrpcSection {
    fn default() -> Self {
        let d = crate::grpc_limits::GrpcSettings::default();
        GrpcSection {
            max_connections: d.max_connections,
            max_connections_per_address: d.max_connections_per_address,
            max_connections_per_address_without_certificate: d
                .max_connections_per_address_without_certificate,
            max_connections_without_certificate: d.max_connections_without_certificate,
            max_handshakes: d.max_handshakes,
            max_concurrent_streams: d.max_concurrent_streams,
            concurrency_limit_per_connection: d.concurrency_limit_per_connection,
            max_calls_per_connection_without_certificate: d
                .max_calls_per_connection_without_certificate,
            max_calls_without_certificate: d.max_calls_without_certificate,
            max_health_watches_per_connection: d.max_health_watches_per_connection,
            max_health_watches: d.max_health_watches,
            request_timeout_ms: d.request_timeout.as_millis() as u64,
            keepalive_interval_ms: d.keepalive_interval.as_millis() as u64,
            keepalive_timeout_ms: d.keepalive_timeout.as_millis() as u64,
        }
    }
}

impl GrpcSection {
    /// The port's limits and timeouts.
    pub fn settings(&self) -> crate::grpc_limits::GrpcSettings {
        crate::grpc_limits::GrpcSettings {
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            max_connections_per_address_without_certificate: self
                .max_connections_per_address_without_certificate,
            max_connections_without_certificate: self.max_connections_without_certificate,
            max_handshakes: self.max_handshakes,
            max_concurrent_streams: self.max_concurrent_streams,
            concurrency_limit_per_connection: self.concurrency_limit_per_connection,
            max_calls_per_connection_without_certificate: self
                .max_calls_per_connection_without_certificate,
            max_calls_without_certificate: self.max_calls_without_certificate,
            max_health_watches_per_connection: self.max_health_watches_per_connection,
            max_health_watches: self.max_health_watches,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            keepalive_interval: Duration::from_millis(self.keepalive_interval_ms),
            keepalive_timeout: Duration::from_millis(self.keepalive_timeout_ms),
        }
    }

    /// Every problem with the values, each naming its key; `deadline_ms` is
    /// the sources' deadline, which a unary call's timeout must exceed.
    fn problems(&self, deadline_ms: u64) -> Vec<String> {
        let mut problems = Vec::new();
        let mut within = |key: &str, value: u64, low: u64, high: u64, bound: &str| {
            if !(low..=high).contains(&value) {
                problems.push(format!(
                    "grpc.{key}: must lie between {low} and {high}{bound}, got {value}"
                ));
            }
        };
        let streams = u64::from(self.max_concurrent_streams);
        let connections = self.max_connections as u64;
        let per_address = self.max_connections_per_address as u64;
        let calls_per_connection = self.max_calls_per_connection_without_certificate as u64;
        let watches_per_connection = self.max_health_watches_per_connection as u64;
        within("max_connections", connections, 1, 1_000_000, "");
        within(
            "max_connections_per_address",
            per_address,
            1,
            connections.max(1),
            " (grpc.max_connections)",
        );
        within(
            "max_connections_per_address_without_certificate",
            self.max_connections_per_address_without_certificate as u64,
            0,
            per_address,
            " (grpc.max_connections_per_address)",
        );
        within(
            "max_connections_without_certificate",
            self.max_connections_without_certificate as u64,
            0,
            connections,
            " (grpc.max_connections)",
        );
        within(
            "max_handshakes",
            self.max_handshakes as u64,
            1,
            connections.max(1),
            " (grpc.max_connections)",
        );
        within("max_concurrent_streams", streams, 1, 10_000, "");
        within(
            "concurrency_limit_per_connection",
            self.concurrency_limit_per_connection as u64,
            1,
            streams.max(1),
            " (grpc.max_concurrent_streams)",
        );
        within(
            "max_calls_per_connection_without_certificate",
            calls_per_connection,
            1,
            streams.max(1),
            " (grpc.max_concurrent_streams)",
        );
        within(
            "max_calls_without_certificate",
            self.max_calls_without_certificate as u64,
            calls_per_connection,
            1_000_000,
            "",
        );
        within(
            "max_health_watches_per_connection",
            watches_per_connection,
            0,
            streams,
            " (grpc.max_concurrent_streams)",
        );
        within(
            "max_health_watches",
            self.max_health_watches as u64,
            watches_per_connection,
            1_000_000,
            "",
        );
        // A lookup waits for its source; PullMutations waits for changes.
        within(
            "request_timeout_ms",
            self.request_timeout_ms,
            deadline_ms
                .max(crate::mutations::MAX_WAIT_MS)
                .saturating_add(1),
            3_600_000,
            " (more than sources.deadline_ms and PullMutations' longest wait)",
        );
        within(
            "keepalive_interval_ms",
            self.keepalive_interval_ms,
            1000,
            3_600_000,
            "",
        );
        within(
            "keepalive_timeout_ms",
            self.keepalive_timeout_ms,
            1000,
            600_000,
            "",
        );
        problems
    }
}

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
            semel_postgres::DEFAULT_MAX_DURABILITY_WAIT,
            Duration::from_millis,
        )
    }

    pub fn max_staleness(&self) -> Duration {
        self.max_staleness_ms
            .map_or(DEFAULT_MAX_STALENESS, Duration::from_millis)
    }
}

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
    semel_postgres::DEFAULT_SCRUB_RATE
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    /// The collector's OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`.
    pub otlp_endpoint: String,
    /// `service.name` of the spans (default "semel").
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Share of traces exported, 0 to 1 (default 1).
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

fn default_service_name() -> String {
    "semel".into()
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_reload_poll_ms() -> u64 {
    5000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensSection {
    /// The `aud` every token must carry (default "semel").
    #[serde(default = "default_audience")]
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (default 30, at most 300).
    #[serde(default = "default_leeway_s")]
    pub leeway_s: u64,
    /// The identity providers whose tokens are accepted.
    pub issuers: Vec<IssuerSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSection {
    /// The issuer's `iss`, exactly.
    pub issuer: String,
    /// Its public keys, a JWKS file.
    pub jwks: PathBuf,
    /// The enterprise numbers it may speak for; any when absent.
    #[serde(default)]
    pub organisations: Vec<String>,
    /// The roles it may grant; absent: admin, consumer, source and auditor,
    /// never citizen. A token claiming another role is refused.
    pub roles: Option<Vec<String>>,
    /// The authentication levels (`acr`) its tokens must carry one of;
    /// required when `roles` lists citizen.
    #[serde(default)]
    pub required_acr: Vec<String>,
    /// The longest its tokens may live, in seconds (default 43200, 12 h,
    /// when it grants the citizen role; 86400 otherwise).
    pub max_lifetime_s: Option<u64>,
}

fn default_audience() -> String {
    "semel".into()
}

fn default_leeway_s() -> u64 {
    30
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Lookups per second each consumer may make (default 200).
    pub consumer_lookups_per_second: Option<f64>,
    /// Lookups a consumer may make at once above that rate (default 1000).
    pub consumer_burst: Option<f64>,
    /// Lookups each consumer may make per calendar day (Brussels time;
    /// default 1000000).
    pub consumer_lookups_per_day: Option<u64>,
    /// Items of one LookupBatch call in flight at once (default 16, at most 1024).
    pub batch_in_flight: Option<usize>,
    /// Different yes/no questions one consumer may ask about one citizen's
    /// field per day (default 4).
    pub distinct_checks_per_citizen: Option<usize>,
    /// Refused calls per second recorded one by one per organisation
    /// (default 5, burst ten times that); the rest are recorded as counted
    /// summaries.
    pub refusals_per_second: Option<f64>,
    /// Changes per second each source may publish (default 500).
    pub source_publications_per_second: Option<f64>,
    /// Changes a source may publish at once above that rate (default
    /// 5000; at least 1000, one request of the largest size).
    pub source_publication_burst: Option<f64>,
    /// Entries one audit call reads at most (default 100,000, between
    /// 1000 and 10,000,000): a ListAuditEntries page, a summary.
    pub audit_scan_budget: Option<usize>,
    /// Audit calls one organisation may have in flight at once (default 2,
    /// between 1 and 64).
    pub audit_calls_in_flight: Option<usize>,
    /// Calls per second each organisation may make to every RPC but the
    /// lookups (default 50).
    pub calls_per_second: Option<f64>,
    /// Such calls an organisation may make at once above that rate
    /// (default 200).
    pub call_burst: Option<f64>,
    /// Such calls of one organisation handled at once (default 64, at most
    /// 4096).
    pub calls_in_flight: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The broker's certificate chain (PEM). It also identifies the broker to sources.
    pub cert: PathBuf,
    /// The broker's private key (PEM).
    pub key: PathBuf,
    /// CA bundle that organisations' client certificates must chain to.
    pub client_ca: PathBuf,
    /// Certificate revocation lists (PEM or DER files) of those CAs and
    /// their intermediates: a client certificate one of them lists fails
    /// the handshake. Reloaded with the CA bundle.
    #[serde(default)]
    pub client_crls: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorSection {
    pub kbo: String,
    pub name: String,
}

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

impl Config {
    /// Reads, resolves (relative paths are relative to the file) and checks.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Reads and resolves, without [`Config::check`]: for
    /// `semel serve --check-config`, which reports every problem at once.
    pub fn read(path: &Path) -> anyhow::Result<Config> {
        Self::read_with_env(path, std::env::vars())
    }

    /// [`Config::read_with_env`], then [`Config::check`].
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let config = Self::read_with_env(path, env)?;
        config.check()?;
        Ok(config)
    }

    /// Like [`Config::load`], with the environment given: each
    /// `SEMEL_<KEY>` or `SEMEL_<SECTION>__<KEY>` (e.g. `SEMEL_LISTEN`,
    /// `SEMEL_SOURCES__DEADLINE_MS`) replaces that key of the file, before
    /// any check. A value is read as TOML if it parses as a number or a
    /// boolean, as text otherwise. The command line's own variables
    /// ([`COMMAND_LINE_VARIABLES`]) are not overrides and are skipped.
    pub fn read_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read config {}", path.display()))?;
        let mut table: toml::Table =
            toml::from_str(&text).with_context(|| format!("parse config {}", path.display()))?;
        let mut applied = Vec::new();
        for (name, value) in env {
            let Some(key) = name.strip_prefix("SEMEL_") else {
                continue;
            };
            if COMMAND_LINE_VARIABLES.contains(&name.as_str()) {
                continue;
            }
            let path: Vec<String> = key.split("__").map(str::to_lowercase).collect();
            let parsed = value
                .parse::<i64>()
                .map(toml::Value::Integer)
                .or_else(|_| value.parse::<f64>().map(toml::Value::Float))
                .or_else(|_| value.parse::<bool>().map(toml::Value::Boolean))
                .unwrap_or_else(|_| toml::Value::String(value.clone()));
            let (last, sections) = path.split_last().context("empty variable name")?;
            let mut t = &mut table;
            for section in sections {
                t = t
                    .entry(section.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .with_context(|| format!("{name}: {section} is not a section"))?;
            }
            t.insert(last.clone(), parsed);
            applied.push(name);
        }
        let mut config: Config = toml::Value::Table(table).try_into().with_context(|| {
            if applied.is_empty() {
                format!("parse config {}", path.display())
            } else {
                format!(
                    "parse config {} with {}",
                    path.display(),
                    applied.join(", ")
                )
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.data_dir,
            &mut config.tls.cert,
            &mut config.tls.key,
            &mut config.tls.client_ca,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(ca) = config.sources.ca.as_mut().filter(|p| p.is_relative()) {
            *ca = base.join(&*ca);
        }
        for p in config
            .tls
            .client_crls
            .iter_mut()
            .chain(config.sources.crls.iter_mut())
            .filter(|p| p.is_relative())
        {
            *p = base.join(&*p);
        }
        if let Some(mut file) = config.store.url_file.take() {
            if file.is_relative() {
                file = base.join(&file);
            }
            anyhow::ensure!(
                config.store.postgresql().is_none(),
                "store.url and store.url_file both name the database: give one"
            );
            // Read once, here: the URL (and its password) then lives in
            // memory only, never in the process's arguments or environment.
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("store.url_file: read {}", file.display()))?;
            let url = text.lines().next().unwrap_or_default().trim().to_owned();
            anyhow::ensure!(
                !url.is_empty(),
                "store.url_file: {} holds no URL on its first line",
                file.display()
            );
            config.store.url = Some(url);
            config.store.url_file = Some(file);
        }
        if let Some(k) = config
            .audit
            .signing_key
            .as_mut()
            .filter(|p| p.is_relative())
        {
            *k = base.join(&*k);
        }
        for issuer in &mut config.tokens.issuers {
            if issuer.jwks.is_relative() {
                issuer.jwks = base.join(&issuer.jwks);
            }
        }
        Ok(config)
    }

    /// Checks values that parsing cannot, and that the files exist; fails
    /// with every problem found, not only the first.
    pub fn check(&self) -> anyhow::Result<()> {
        let problems = self.problems();
        anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
        Ok(())
    }

    /// Every problem with the values (ranges, names) and the files' presence,
    /// each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut ensure = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };
        if let Err(e) = self.operator_kbo() {
            ensure(false, e.to_string());
        }
        ensure(
            !self.operator.name.trim().is_empty(),
            "operator.name: must not be empty".into(),
        );
        if let Some(url) = self.store.postgresql() {
            ensure(
                url.starts_with("postgresql://") || url.starts_with("postgres://"),
                "store.url: must be a postgresql:// URL (leave it out for the embedded store)"
                    .into(),
            );
        }
        ensure(
            self.store
                .registry_poll_ms
                .is_none_or(|ms| (50..=60_000).contains(&ms)),
            "store.registry_poll_ms: must lie between 50 and 60000".into(),
        );
        ensure(
            self.store
                .max_staleness_ms
                .is_none_or(|ms| (500..=600_000).contains(&ms))
                && self.store.max_staleness() >= self.store.registry_poll() * 3,
            format!(
                "store.max_staleness_ms: must lie between 500 and 600000 and be at least three registry polls ({} ms), got {}",
                self.store.registry_poll().as_millis() * 3,
                self.store.max_staleness().as_millis()
            ),
        );
        if let Some(http) = &self.http {
            ensure(
                http.listen != self.listen && Some(http.listen) != self.metrics_listen,
                format!(
                    "http.listen: {} is already the gRPC or the metrics port",
                    http.listen
                ),
            );
            for problem in http.problems() {
                ensure(false, problem);
            }
        }
        for problem in self.grpc.problems(self.sources.deadline_ms) {
            ensure(false, problem);
        }
        ensure(
            self.mutations
                .fallback_poll_ms
                .is_none_or(|ms| (50..=600_000).contains(&ms)),
            "mutations.fallback_poll_ms: must lie between 50 and 600000".into(),
        );
        ensure(
            (1..=8760).contains(&self.mutations.retention_hours),
            format!(
                "mutations.retention_hours: must lie between 1 and 8760, got {}",
                self.mutations.retention_hours
            ),
        );
        ensure(
            self.store
                .persons_poll_ms
                .is_none_or(|ms| (10..=10_000).contains(&ms)),
            "store.persons_poll_ms: must lie between 10 and 10000".into(),
        );
        ensure(
            self.store
                .max_durability_wait_ms
                .is_none_or(|ms| (100..=600_000).contains(&ms)),
            "store.max_durability_wait_ms: must lie between 100 and 600000".into(),
        );
        ensure(
            (10..=120_000).contains(&self.sources.deadline_ms),
            format!(
                "sources.deadline_ms: must lie between 10 and 120000, got {}",
                self.sources.deadline_ms
            ),
        );
        let mut files = vec![
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("tls.client_ca", &self.tls.client_ca),
        ];
        if let Some(ca) = &self.sources.ca {
            files.push(("sources.ca", ca));
        }
        for (key, p) in files {
            ensure(
                p.is_file(),
                format!("{key}: {} is not a readable file", p.display()),
            );
        }
        for (key, crls) in [
            ("tls.client_crls", &self.tls.client_crls),
            ("sources.crls", &self.sources.crls),
        ] {
            for (i, p) in crls.iter().enumerate() {
                ensure(
                    p.is_file(),
                    format!("{key}[{i}]: {} is not a readable file", p.display()),
                );
            }
        }
        for (i, issuer) in self.tokens.issuers.iter().enumerate() {
            ensure(
                issuer.jwks.is_file(),
                format!(
                    "tokens.issuers[{i}].jwks: {} is not a readable file",
                    issuer.jwks.display()
                ),
            );
        }
        if let Some(r) = self.limits.consumer_lookups_per_second {
            ensure(
                r > 0.0 && r.is_finite(),
                format!("limits.consumer_lookups_per_second: must be a positive number, got {r}"),
            );
        }
        if let Some(b) = self.limits.consumer_burst {
            ensure(
                (0.0..=1e9).contains(&b),
                format!(
                    "limits.consumer_burst: must lie between 0 and 1000000000 lookups, got {b}"
                ),
            );
        }
        ensure(
            self.limits.consumer_lookups_per_day != Some(0),
            "limits.consumer_lookups_per_day: must be at least 1".into(),
        );
        if let Some(n) = self.limits.batch_in_flight {
            ensure(
                (1..=1024).contains(&n),
                format!("limits.batch_in_flight: must lie between 1 and 1024, got {n}"),
            );
        }
        if let Some(n) = self.limits.distinct_checks_per_citizen {
            ensure(
                (1..=64).contains(&n),
                format!("limits.distinct_checks_per_citizen: must lie between 1 and 64, got {n}"),
            );
        }
        if let Some(n) = self.limits.audit_scan_budget {
            ensure(
                (1000..=10_000_000).contains(&n),
                format!("limits.audit_scan_budget: must lie between 1000 and 10000000, got {n}"),
            );
        }
        if let Some(n) = self.limits.audit_calls_in_flight {
            ensure(
                (1..=64).contains(&n),
                format!("limits.audit_calls_in_flight: must lie between 1 and 64, got {n}"),
            );
        }
        if let Some(r) = self.limits.source_publications_per_second {
            ensure(
                r > 0.0 && r.is_finite(),
                format!(
                    "limits.source_publications_per_second: must be a positive number, got {r}"
                ),
            );
        }
        if let Some(b) = self.limits.source_publication_burst {
            let least = crate::mutations::MAX_PUBLISH as f64;
            ensure(
                (least..=1e9).contains(&b),
                format!(
                    "limits.source_publication_burst: must lie between {least} (one request of the largest size) and 1000000000 changes, got {b}"
                ),
            );
        }
        if let Some(r) = self.limits.calls_per_second {
            ensure(
                r > 0.0 && r.is_finite(),
                format!("limits.calls_per_second: must be a positive number, got {r}"),
            );
        }
        if let Some(b) = self.limits.call_burst {
            ensure(
                (1.0..=1e9).contains(&b),
                format!("limits.call_burst: must lie between 1 and 1000000000 calls, got {b}"),
            );
        }
        if let Some(n) = self.limits.calls_in_flight {
            ensure(
                (1..=4096).contains(&n),
                format!("limits.calls_in_flight: must lie between 1 and 4096, got {n}"),
            );
        }
        if let Some(r) = self.limits.refusals_per_second {
            ensure(
                r > 0.0 && r.is_finite(),
                format!("limits.refusals_per_second: must be a positive number, got {r}"),
            );
        }
        for capacity in self.persons.max_backdate_days_by_capacity.keys() {
            if let Err(e) = semel_core::CapacityCode::new(capacity.clone()) {
                ensure(
                    false,
                    format!("persons.max_backdate_days_by_capacity: {capacity}: {e}"),
                );
            }
        }
        ensure(
            (1..=1_000_000).contains(&self.sources.max_in_flight),
            format!(
                "sources.max_in_flight: must lie between 1 and 1000000, got {}",
                self.sources.max_in_flight
            ),
        );
        ensure(
            self.sources.breaker_failures >= 1,
            "sources.breaker_failures: must be at least 1".into(),
        );
        ensure(
            (1..=3_600_000).contains(&self.sources.breaker_cooldown_ms),
            format!(
                "sources.breaker_cooldown_ms: must lie between 1 and 3600000, got {}",
                self.sources.breaker_cooldown_ms
            ),
        );
        if let Err(e) = semel_core::DatasetName::new(self.sources.register_dataset.clone()) {
            ensure(false, format!("sources.register_dataset: {e}"));
        }
        ensure(
            !self.tokens.audience.trim().is_empty(),
            "tokens.audience: must not be empty".into(),
        );
        ensure(
            self.tokens.leeway_s <= 300,
            format!(
                "tokens.leeway_s: at most 300 seconds, got {}",
                self.tokens.leeway_s
            ),
        );
        ensure(
            !self.tokens.issuers.is_empty(),
            "tokens.issuers: configure at least one trusted issuer ([[tokens.issuers]]); without one no call can be authorised".into(),
        );
        if let Err(e) = self.token_settings() {
            ensure(false, format!("{e:#}"));
        }
        ensure(
            self.audit.checkpoint_every_entries >= 1,
            "audit.checkpoint_every_entries: must be at least 1".into(),
        );
        ensure(
            self.audit.checkpoint_every_ms >= 100,
            "audit.checkpoint_every_ms: must be at least 100".into(),
        );
        if let Some(limit) = self.audit.checkpoint_age_limit_ms {
            ensure(
                limit >= self.audit.checkpoint_every_ms,
                format!(
                    "audit.checkpoint_age_limit_ms: must be at least audit.checkpoint_every_ms ({}), got {limit}",
                    self.audit.checkpoint_every_ms
                ),
            );
        }
        if let Ok(origin) = self.audit_origin() {
            ensure(
                !origin.is_empty()
                    && !origin.contains(char::is_whitespace)
                    && !origin.contains('+'),
                format!("audit.origin: must be a name without spaces or '+', got {origin:?}"),
            );
        }
        if let Err(e) = self.witness_settings() {
            ensure(false, format!("{e:#}"));
        }
        if let Some(t) = &self.telemetry {
            ensure(
                t.otlp_endpoint.starts_with("http://") || t.otlp_endpoint.starts_with("https://"),
                format!(
                    "telemetry.otlp_endpoint: must be an http:// or https:// URL, got {:?}",
                    t.otlp_endpoint
                ),
            );
            ensure(
                (0.0..=1.0).contains(&t.sample_ratio),
                format!(
                    "telemetry.sample_ratio: must lie between 0 and 1, got {}",
                    t.sample_ratio
                ),
            );
        }
        problems
    }

    /// Every problem with the files' contents: each certificate, key, CA
    /// bundle and JWKS is loaded as `serve` will load it (a key file that
    /// holds a certificate fails here), and the audit signing key is read
    /// if it exists. `semel serve --check-config` reports these with
    /// [`Config::problems`].
    pub fn file_problems(&self) -> Vec<String> {
        use crate::tls;
        let mut problems = Vec::new();
        let certs = |key: &str, p: &Path, problems: &mut Vec<String>| {
            tls::load_certs(p)
                .map_err(|e| problems.push(format!("{key}: {e:#}")))
                .is_ok()
        };
        let cert_ok = certs("tls.cert", &self.tls.cert, &mut problems);
        let key_ok = tls::load_private_key(&self.tls.key)
            .map_err(|e| problems.push(format!("tls.key: {e:#}")))
            .is_ok();
        let ca_ok = certs("tls.client_ca", &self.tls.client_ca, &mut problems);
        if let Some(ca) = &self.sources.ca {
            certs("sources.ca", ca, &mut problems);
        }
        if let Err(e) = crate::source_channel::EndpointPolicy::new(&self.sources.allowed_endpoints)
        {
            problems.push(format!("{e:#}"));
        }
        for (key, crls) in [
            ("tls.client_crls", &self.tls.client_crls),
            ("sources.crls", &self.sources.crls),
        ] {
            for (i, p) in crls.iter().enumerate() {
                if let Err(e) = tls::load_crls(std::slice::from_ref(p)) {
                    problems.push(format!("{key}[{i}]: {e:#}"));
                }
            }
        }
        if cert_ok && key_ok && ca_ok {
            // The key must be the certificate's.
            if let Err(e) = tls::server_config(&tls::TlsFiles {
                cert: &self.tls.cert,
                key: &self.tls.key,
                client_ca: &self.tls.client_ca,
                client_crls: &[],
            }) {
                problems.push(format!("tls: {e:#}"));
            }
        }
        if let Ok(settings) = self.token_settings() {
            for (i, issuer) in settings.issuers.iter().enumerate() {
                let one = crate::tokens::TokenSettings {
                    issuers: vec![issuer.clone()],
                    ..settings.clone()
                };
                if let Err(e) = crate::tokens::TokenVerifier::load(&one) {
                    problems.push(format!("tokens.issuers[{i}]: {e:#}"));
                }
            }
        }
        let key = self.audit_signing_key();
        if let Err(e) = semel_store::read_signing_key(&key) {
            problems.push(format!("audit.signing_key: {e}"));
        }
        problems
    }
    /// The token settings, with enterprise numbers parsed.
    pub fn token_settings(&self) -> anyhow::Result<crate::tokens::TokenSettings> {
        let mut issuers = Vec::new();
        for (i, s) in self.tokens.issuers.iter().enumerate() {
            let organisations = s
                .organisations
                .iter()
                .map(|k| {
                    Kbo::parse(k)
                        .map_err(|e| anyhow::anyhow!("tokens.issuers[{i}].organisations: {k}: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let roles = match &s.roles {
                None => crate::tokens::default_issuer_roles(),
                Some(names) => names
                    .iter()
                    .map(|r| {
                        semel_core::UserRole::parse(r).ok_or_else(|| {
                            anyhow::anyhow!(
                                "tokens.issuers[{i}].roles: {r:?} is not one of admin, consumer, source, auditor, citizen"
                            )
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
            };
            // A citizen's token names a person by national number alone:
            // only with a checked authentication level.
            anyhow::ensure!(
                !roles.contains(semel_core::UserRole::Citizen) || !s.required_acr.is_empty(),
                "tokens.issuers[{i}]: an issuer that grants the citizen role needs required_acr, the authentication levels its citizens' tokens must carry (e.g. [\"http://eidas.europa.eu/LoA/high\"])"
            );
            anyhow::ensure!(
                s.required_acr.iter().all(|a| !a.trim().is_empty()),
                "tokens.issuers[{i}].required_acr: an empty level"
            );
            let max_lifetime_s = s
                .max_lifetime_s
                .unwrap_or_else(|| crate::tokens::IssuerSettings::default_max_lifetime_s(roles));
            anyhow::ensure!(
                (60..=7 * 24 * 3600).contains(&max_lifetime_s),
                "tokens.issuers[{i}].max_lifetime_s: from 60 seconds to 7 days (604800), got {max_lifetime_s}"
            );
            issuers.push(crate::tokens::IssuerSettings {
                issuer: s.issuer.clone(),
                jwks: s.jwks.clone(),
                organisations,
                roles,
                required_acr: s.required_acr.clone(),
                max_lifetime_s,
            });
        }
        Ok(crate::tokens::TokenSettings {
            audience: self.tokens.audience.clone(),
            leeway_s: self.tokens.leeway_s,
            issuers,
        })
    }

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

    /// Checkpoint settings, with the signing key loaded (or created).
    pub fn checkpoint_settings(&self) -> anyhow::Result<semel_store::CheckpointSettings> {
        Ok(semel_store::CheckpointSettings {
            signer: self.checkpoint_signer()?,
            every_entries: self.audit.checkpoint_every_entries,
            every: Duration::from_millis(self.audit.checkpoint_every_ms),
        })
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

    /// How a broker runs on PostgreSQL, from `[store]` and `[audit]`.
    pub fn pg_settings(&self) -> crate::stores::PgSettings {
        crate::stores::PgSettings {
            checkpoint_every: Duration::from_millis(self.audit.checkpoint_every_ms),
            registry_poll: self.store.registry_poll(),
            persons_poll: self.store.persons_poll(),
            scrub: semel_postgres::ScrubSettings {
                entries_per_second: self.audit.scrub_entries_per_second,
            },
            max_durability_wait: self.store.max_durability_wait(),
        }
    }

    /// The key that signs the log's checkpoints, created at its path if
    /// missing. Brokers sharing a PostgreSQL store share this key (one log,
    /// one identity).
    pub fn checkpoint_signer(&self) -> anyhow::Result<semel_core::checkpoint::NoteSigner> {
        let path = self.audit_signing_key();
        let key = semel_store::load_or_create_signing_key(&path)
            .with_context(|| format!("audit.signing_key {}", path.display()))?;
        Ok(semel_core::checkpoint::NoteSigner::new(
            &self.audit_origin()?,
            key,
        ))
    }

    /// The witnesses to submit checkpoints to.
    pub fn witnesses(&self) -> anyhow::Result<Vec<crate::witness::WitnessTarget>> {
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
                Ok(crate::witness::WitnessTarget {
                    url: w.url.clone(),
                    key,
                })
            })
            .collect()
    }

    /// The witnesses and how the log is held to what they cosigned.
    pub fn witness_settings(&self) -> anyhow::Result<crate::witness::WitnessSettings> {
        let targets = self.witnesses()?;
        anyhow::ensure!(
            targets.is_empty() || (1..=targets.len()).contains(&self.audit.witness_quorum),
            "audit.witness_quorum: {} must be between 1 and the number of audit.witnesses ({})",
            self.audit.witness_quorum,
            targets.len()
        );
        Ok(crate::witness::WitnessSettings {
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

    /// Where traces go, if anywhere.
    pub fn telemetry_settings(&self) -> Option<crate::telemetry::TelemetrySettings> {
        self.telemetry
            .as_ref()
            .map(|t| crate::telemetry::TelemetrySettings {
                otlp_endpoint: t.otlp_endpoint.clone(),
                service_name: t.service_name.clone(),
                sample_ratio: t.sample_ratio,
            })
    }

    /// The files reloaded on change or SIGHUP.
    pub fn reload_poll(&self) -> Option<Duration> {
        (self.reload_poll_ms > 0).then(|| Duration::from_millis(self.reload_poll_ms))
    }

    pub fn operator_kbo(&self) -> anyhow::Result<Kbo> {
        Kbo::parse(&self.operator.kbo).map_err(|e| anyhow::anyhow!("operator.kbo: {e}"))
    }

    pub fn source_deadline(&self) -> Duration {
        Duration::from_millis(self.sources.deadline_ms)
    }

    pub fn limit_settings(&self) -> crate::limits::LimitSettings {
        crate::limits::LimitSettings {
            consumer_rate: Some(
                self.limits
                    .consumer_lookups_per_second
                    .unwrap_or(crate::limits::DEFAULT_LOOKUPS_PER_SECOND),
            ),
            consumer_burst: self
                .limits
                .consumer_burst
                .unwrap_or(crate::limits::DEFAULT_LOOKUP_BURST),
            consumer_daily_quota: Some(
                self.limits
                    .consumer_lookups_per_day
                    .unwrap_or(crate::limits::DEFAULT_LOOKUPS_PER_DAY),
            ),
            source_max_in_flight: self.sources.max_in_flight,
            breaker_failures: self.sources.breaker_failures,
            breaker_cooldown: Duration::from_millis(self.sources.breaker_cooldown_ms),
            batch_in_flight: self.limits.batch_in_flight.unwrap_or(16),
            distinct_checks_per_citizen: self.limits.distinct_checks_per_citizen.unwrap_or(4),
            refusals_per_second: self.limits.refusals_per_second.unwrap_or(5.0),
            source_publications_per_second: self
                .limits
                .source_publications_per_second
                .unwrap_or(crate::limits::DEFAULT_PUBLICATIONS_PER_SECOND),
            source_publication_burst: self
                .limits
                .source_publication_burst
                .unwrap_or(crate::limits::DEFAULT_PUBLICATION_BURST),
            audit_scan_budget: self
                .limits
                .audit_scan_budget
                .unwrap_or(crate::limits::DEFAULT_AUDIT_SCAN_BUDGET),
            audit_calls_in_flight: self.limits.audit_calls_in_flight.unwrap_or(2),
            calls_per_second: self
                .limits
                .calls_per_second
                .unwrap_or(crate::limits::DEFAULT_CALLS_PER_SECOND),
            call_burst: self
                .limits
                .call_burst
                .unwrap_or(crate::limits::DEFAULT_CALL_BURST),
            calls_in_flight: self
                .limits
                .calls_in_flight
                .unwrap_or(crate::limits::DEFAULT_CALLS_IN_FLIGHT),
            ..crate::limits::LimitSettings::default()
        }
    }

    pub fn persons_settings(&self) -> crate::state::PersonsSettings {
        crate::state::PersonsSettings {
            max_backdate_days: self.persons.max_backdate_days,
            max_backdate_days_by_capacity: self.persons.max_backdate_days_by_capacity.clone(),
        }
    }

    pub fn mutation_settings(&self) -> crate::state::MutationSettings {
        crate::state::MutationSettings {
            retention: std::time::Duration::from_secs(self.mutations.retention_hours * 3600),
            fallback_poll: self
                .mutations
                .fallback_poll_ms
                .map_or(crate::state::DEFAULT_MUTATIONS_POLL, Duration::from_millis),
        }
    }

    pub fn sources_ca(&self) -> &Path {
        self.sources.ca.as_deref().unwrap_or(&self.tls.client_ca)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A public Ed25519 key (RFC 8037's example).
    const TEST_JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"EdDSA","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = toml::from_str::<Config>(
            "listen = \"127.0.0.1:1\"\ndata_dir = \"d\"\nlisten_port = 3\n[tls]\ncert=\"c\"\nkey=\"k\"\nclient_ca=\"a\"\n[operator]\nkbo=\"0566988259\"\nname=\"x\"\n",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("listen_port"), "{err}");
    }

    /// `audit.witness_quorum` is between 1 and the number of witnesses,
    /// and defaults to one of them.
    #[test]
    fn the_witness_quorum_is_checked() {
        let text = include_str!("../../../deploy/semel.example.toml");
        let mut config: Config = toml::from_str(text).expect("example parses");
        let dir = tempfile::tempdir().expect("tempdir");
        let witness = semel_core::checkpoint::Cosigner::new(
            "witness.test/w1",
            semel_store::load_or_create_signing_key(&dir.path().join("w.key")).expect("key"),
        );
        config.audit.witnesses = vec![WitnessSection {
            url: "http://127.0.0.1:8701".into(),
            key: witness.verifier_key(),
        }];
        let settings = config.witness_settings().expect("the default quorum");
        assert_eq!(settings.quorum, 1);
        assert_eq!(settings.unconfirmed_bound, Duration::from_secs(600));
        assert_eq!(settings.refusal_grace, Duration::ZERO);
        for bad in [0, 2] {
            config.audit.witness_quorum = bad;
            let problems = config.problems().join("; ");
            assert!(
                problems.contains("audit.witness_quorum"),
                "{bad}: {problems}"
            );
        }
    }

    #[test]
    fn the_example_in_deploy_parses_and_names_a_valid_operator() {
        let text = include_str!("../../../deploy/semel.example.toml");
        let config: Config = toml::from_str(text).expect("example parses");
        assert!(config.operator_kbo().is_ok());
        assert_eq!(config.source_deadline(), Duration::from_secs(5));
    }

    /// The database's URL, password included, from a file of its own (a
    /// mounted secret), never in the configuration, the arguments or the
    /// environment; not both ways at once.
    #[test]
    fn the_database_url_can_come_from_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("semel.toml");
        let text = include_str!("../../../deploy/semel.example.toml");
        for f in ["broker.crt", "broker.key", "clients-ca.crt"] {
            std::fs::write(dir.path().join(f), "x").expect("write");
        }
        std::fs::write(dir.path().join("cpas-anderlecht.jwks.json"), TEST_JWKS).expect("write");
        let text = text
            .replace("/etc/semel/tls/", "")
            .replace("/etc/semel/issuers/", "")
            .replace("/var/lib/semel", "data");
        std::fs::write(&path, &text).expect("write");
        std::fs::write(
            dir.path().join("database-url"),
            "postgresql://semel:s3cret@db.example:5432/semel\n",
        )
        .expect("write");
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>()
        };
        let config =
            Config::read_with_env(&path, env(&[("SEMEL_STORE__URL_FILE", "database-url")]))
                .expect("reads");
        assert_eq!(
            config.store.postgresql(),
            Some("postgresql://semel:s3cret@db.example:5432/semel")
        );
        let err = Config::read_with_env(
            &path,
            env(&[
                ("SEMEL_STORE__URL_FILE", "database-url"),
                ("SEMEL_STORE__URL", "postgresql://other/semel"),
            ]),
        )
        .expect_err("both");
        assert!(format!("{err:#}").contains("give one"), "{err:#}");
        let err = Config::read_with_env(&path, env(&[("SEMEL_STORE__URL_FILE", "missing")]))
            .expect_err("no such file");
        assert!(format!("{err:#}").contains("store.url_file"), "{err:#}");
    }

    #[test]
    fn the_environment_overrides_keys_and_unknown_names_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("semel.toml");
        let text = include_str!("../../../deploy/semel.example.toml");
        for f in ["broker.crt", "broker.key", "clients-ca.crt"] {
            std::fs::write(dir.path().join(f), "x").expect("write");
        }
        std::fs::write(dir.path().join("cpas-anderlecht.jwks.json"), TEST_JWKS).expect("write");
        let text = text
            .replace("/etc/semel/tls/", "")
            .replace("/etc/semel/issuers/", "")
            .replace("/var/lib/semel", "data");
        std::fs::write(&path, text).expect("write");
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>()
        };
        let config = Config::load_with_env(
            &path,
            env(&[
                ("SEMEL_LISTEN", "127.0.0.1:1234"),
                ("SEMEL_SOURCES__DEADLINE_MS", "250"),
                ("SEMEL_LIMITS__CONSUMER_LOOKUPS_PER_SECOND", "50.5"),
                ("SEMEL_LOG", "debug"),
                ("SEMEL_TOKEN_FILE", "/run/secrets/token"),
                ("PATH", "/bin"),
            ]),
        )
        .expect("loads");
        assert_eq!(config.listen, "127.0.0.1:1234".parse().expect("addr"));
        assert_eq!(config.source_deadline(), Duration::from_millis(250));
        assert_eq!(config.limits.consumer_lookups_per_second, Some(50.5));
        // The HTTP/JSON face's limits: the defaults when left out, as the
        // example leaves them, and each key settable.
        let http = config.http.as_ref().expect("the example serves HTTP/JSON");
        let defaults = crate::http_settings::HttpSettings::default();
        let settings = http.settings();
        assert_eq!(settings.max_connections, defaults.max_connections);
        assert_eq!(
            settings.max_connections_per_address_without_certificate,
            defaults.max_connections_per_address_without_certificate
        );
        assert_eq!(settings.body_timeout, defaults.body_timeout);
        assert_eq!(settings.header_timeout, defaults.header_timeout);
        assert_eq!(settings.max_handshakes, defaults.max_handshakes);
        // The gRPC port's limits: the example names every key, commented
        // out, so the defaults apply; each is settable.
        let grpc = config.grpc.settings();
        let defaults = crate::grpc_limits::GrpcSettings::default();
        assert_eq!(grpc.max_concurrent_streams, defaults.max_concurrent_streams);
        assert_eq!(
            grpc.max_connections_without_certificate,
            defaults.max_connections_without_certificate
        );
        assert_eq!(grpc.request_timeout, defaults.request_timeout);
        let config = Config::load_with_env(
            &path,
            env(&[
                ("SEMEL_GRPC__MAX_CONCURRENT_STREAMS", "64"),
                ("SEMEL_GRPC__CONCURRENCY_LIMIT_PER_CONNECTION", "32"),
                ("SEMEL_GRPC__MAX_HEALTH_WATCHES_PER_CONNECTION", "0"),
                ("SEMEL_GRPC__REQUEST_TIMEOUT_MS", "60000"),
            ]),
        )
        .expect("loads");
        let grpc = config.grpc.settings();
        assert_eq!(grpc.max_concurrent_streams, 64);
        assert_eq!(grpc.concurrency_limit_per_connection, 32);
        assert_eq!(grpc.max_health_watches_per_connection, 0);
        assert_eq!(grpc.request_timeout, Duration::from_secs(60));
        let err = format!(
            "{:#}",
            Config::load_with_env(
                &path,
                env(&[
                    ("SEMEL_SOURCES__DEADLINE_MS", "90000"),
                    ("SEMEL_GRPC__REQUEST_TIMEOUT_MS", "90000"),
                ]),
            )
            .expect_err("a unary call's timeout no longer than the sources' deadline")
        );
        assert!(err.contains("grpc.request_timeout_ms"), "{err}");
        let config = Config::load_with_env(
            &path,
            env(&[
                ("SEMEL_HTTP__MAX_CONNECTIONS_PER_ADDRESS", "16"),
                (
                    "SEMEL_HTTP__MAX_CONNECTIONS_PER_ADDRESS_WITHOUT_CERTIFICATE",
                    "0",
                ),
                ("SEMEL_HTTP__BODY_TIMEOUT_MS", "1500"),
                ("SEMEL_HTTP__HEADER_TIMEOUT_MS", "20000"),
            ]),
        )
        .expect("loads");
        let settings = config.http.as_ref().expect("http").settings();
        assert_eq!(settings.max_connections_per_address, 16);
        assert_eq!(settings.max_connections_per_address_without_certificate, 0);
        assert_eq!(settings.body_timeout, Duration::from_millis(1500));
        assert_eq!(settings.header_timeout, Duration::from_secs(20));
        let err = format!(
            "{:#}",
            Config::load_with_env(&path, env(&[("SEMEL_LISTEN_PORT", "1")])).expect_err("unknown")
        );
        assert!(
            err.contains("listen_port") && err.contains("SEMEL_LISTEN_PORT"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            Config::load_with_env(&path, env(&[("SEMEL_SOURCES__DEADLINE_MS", "1")]))
                .expect_err("too small")
        );
        assert!(err.contains("sources.deadline_ms"), "{err}");
        // Limits out of range are named, before anything is built with them
        // (a huge batch_in_flight made the channel allocation panic).
        for (key, value, named) in [
            (
                "SEMEL_LIMITS__BATCH_IN_FLIGHT",
                "18446744073709551615",
                "limits.batch_in_flight",
            ),
            (
                "SEMEL_LIMITS__BATCH_IN_FLIGHT",
                "0",
                "limits.batch_in_flight",
            ),
            (
                "SEMEL_LIMITS__DISTINCT_CHECKS_PER_CITIZEN",
                "0",
                "limits.distinct_checks_per_citizen",
            ),
            (
                "SEMEL_LIMITS__REFUSALS_PER_SECOND",
                "-1",
                "limits.refusals_per_second",
            ),
            (
                "SEMEL_LIMITS__CONSUMER_BURST",
                "-1",
                "limits.consumer_burst",
            ),
            (
                "SEMEL_LIMITS__CALLS_PER_SECOND",
                "0",
                "limits.calls_per_second",
            ),
            ("SEMEL_LIMITS__CALL_BURST", "0.5", "limits.call_burst"),
            (
                "SEMEL_LIMITS__CALLS_IN_FLIGHT",
                "0",
                "limits.calls_in_flight",
            ),
            (
                "SEMEL_SOURCES__BREAKER_COOLDOWN_MS",
                "0",
                "sources.breaker_cooldown_ms",
            ),
            ("SEMEL_HTTP__MAX_CONNECTIONS", "0", "http.max_connections"),
            (
                "SEMEL_HTTP__MAX_CONNECTIONS_PER_ADDRESS",
                "5000",
                "http.max_connections_per_address",
            ),
            (
                "SEMEL_HTTP__MAX_CONNECTIONS_PER_ADDRESS_WITHOUT_CERTIFICATE",
                "65",
                "http.max_connections_per_address_without_certificate",
            ),
            (
                "SEMEL_HTTP__MAX_CONNECTIONS_WITHOUT_CERTIFICATE",
                "5000",
                "http.max_connections_without_certificate",
            ),
            ("SEMEL_HTTP__BODY_TIMEOUT_MS", "0", "http.body_timeout_ms"),
            ("SEMEL_HTTP__MAX_HANDSHAKES", "0", "http.max_handshakes"),
            ("SEMEL_GRPC__MAX_CONNECTIONS", "0", "grpc.max_connections"),
            (
                "SEMEL_GRPC__MAX_CONNECTIONS_PER_ADDRESS",
                "5000",
                "grpc.max_connections_per_address",
            ),
            (
                "SEMEL_GRPC__MAX_CONNECTIONS_PER_ADDRESS_WITHOUT_CERTIFICATE",
                "65",
                "grpc.max_connections_per_address_without_certificate",
            ),
            (
                "SEMEL_GRPC__MAX_CONNECTIONS_WITHOUT_CERTIFICATE",
                "5000",
                "grpc.max_connections_without_certificate",
            ),
            ("SEMEL_GRPC__MAX_HANDSHAKES", "0", "grpc.max_handshakes"),
            (
                "SEMEL_GRPC__MAX_CONCURRENT_STREAMS",
                "0",
                "grpc.max_concurrent_streams",
            ),
            (
                "SEMEL_GRPC__CONCURRENCY_LIMIT_PER_CONNECTION",
                "257",
                "grpc.concurrency_limit_per_connection",
            ),
            (
                "SEMEL_GRPC__MAX_CALLS_PER_CONNECTION_WITHOUT_CERTIFICATE",
                "0",
                "grpc.max_calls_per_connection_without_certificate",
            ),
            (
                "SEMEL_GRPC__MAX_CALLS_WITHOUT_CERTIFICATE",
                "2",
                "grpc.max_calls_without_certificate",
            ),
            (
                "SEMEL_GRPC__MAX_HEALTH_WATCHES_PER_CONNECTION",
                "300",
                "grpc.max_health_watches_per_connection",
            ),
            (
                "SEMEL_GRPC__MAX_HEALTH_WATCHES",
                "-1",
                "grpc.max_health_watches",
            ),
            (
                "SEMEL_GRPC__REQUEST_TIMEOUT_MS",
                "100",
                "grpc.request_timeout_ms",
            ),
            (
                "SEMEL_GRPC__KEEPALIVE_INTERVAL_MS",
                "10",
                "grpc.keepalive_interval_ms",
            ),
            (
                "SEMEL_GRPC__KEEPALIVE_TIMEOUT_MS",
                "0",
                "grpc.keepalive_timeout_ms",
            ),
            ("SEMEL_GRPC__MAX_WATCHES", "1", "max_watches"),
            (
                "SEMEL_HTTP__HEADER_TIMEOUT_MS",
                "50",
                "http.header_timeout_ms",
            ),
        ] {
            let err = format!(
                "{:#}",
                Config::load_with_env(&path, env(&[(key, value)])).expect_err(key)
            );
            assert!(err.contains(named), "{key}={value}: {err}");
        }
    }

    #[test]
    fn an_issuer_grants_the_citizen_role_only_when_told_and_with_an_acr() {
        let example = include_str!("../../../deploy/semel.example.toml");
        let settings = |extra: &str| {
            let text = example.replace(
                "max_lifetime_s = 28800\n",
                &format!("max_lifetime_s = 28800\n{extra}"),
            );
            toml::from_str::<Config>(&text)
                .expect("parses")
                .token_settings()
        };
        let default = settings("").expect("settings");
        let issuer = &default.issuers[0];
        assert_eq!(issuer.roles, crate::tokens::default_issuer_roles());
        assert!(!issuer.roles.contains(semel_core::UserRole::Citizen));
        assert!(issuer.required_acr.is_empty());
        assert_eq!(issuer.max_lifetime_s, 28800);
        let err = format!(
            "{:#}",
            settings("roles = [\"citizen\"]\n").expect_err("no acr")
        );
        assert!(err.contains("required_acr"), "{err}");
        let err = format!(
            "{:#}",
            settings("roles = [\"mayor\"]\n").expect_err("unknown")
        );
        assert!(
            err.contains("tokens.issuers[0].roles") && err.contains("mayor"),
            "{err}"
        );
        let citizen =
            settings("roles = [\"citizen\"]\nrequired_acr = [\"high\"]\n").expect("settings");
        assert_eq!(citizen.issuers[0].required_acr, ["high"]);
        // Without max_lifetime_s: 12 hours for citizens' tokens, 24 for others.
        let text = example.replace("max_lifetime_s = 28800\n", "");
        let config: Config = toml::from_str(&text).expect("parses");
        assert_eq!(
            config.token_settings().expect("settings").issuers[0].max_lifetime_s,
            24 * 3600
        );
        let text = example.replace(
            "max_lifetime_s = 28800\n",
            "roles = [\"citizen\"]\nrequired_acr = [\"high\"]\n",
        );
        let config: Config = toml::from_str(&text).expect("parses");
        assert_eq!(
            config.token_settings().expect("settings").issuers[0].max_lifetime_s,
            12 * 3600
        );
        let text = example.replace("max_lifetime_s = 28800\n", "max_lifetime_s = 31536000\n");
        let config: Config = toml::from_str(&text).expect("parses");
        let err = format!("{:#}", config.token_settings().expect_err("a year"));
        assert!(err.contains("max_lifetime_s"), "{err}");
    }

    #[test]
    fn a_bad_value_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("semel.toml");
        std::fs::write(
            &path,
            include_str!("../../../deploy/semel.example.toml").replace("0087654346", "0087654347"),
        )
        .expect("write");
        // The enterprise number is checked before any file.
        let err = format!("{:#}", Config::load(&path).expect_err("bad kbo"));
        assert!(err.contains("operator.kbo"), "{err}");
    }
}
