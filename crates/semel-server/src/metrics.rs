//! Prometheus metrics, served over plain HTTP on their own port.
//!
//! Labels carry enterprise numbers, dataset names, decisions, reason codes
//! and RPC names: never a national number. A dataset name a consumer made up
//! is counted as `unknown`, and so is a method the broker does not serve, so
//! no client can grow the number of series.
//!
//! The format follows the scrape's `Accept` header: OpenMetrics 1.0 when it
//! asks for `application/openmetrics-text` (Prometheus does), the Prometheus
//! text format 0.0.4 otherwise (`curl`, `promtool check metrics`).
//!
//! This file holds the metrics and their labels; the exposition formats and
//! the endpoint are in `exposition`, the process metrics in `process`, and
//! the layer counting gRPC calls in `rpc`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use semel_store::AuditStats;

mod exposition;
mod process;
mod rpc;

pub use exposition::{Format, serve, to_prometheus_text};
use process::ProcessMetrics;
pub use rpc::{RpcMetrics, RpcMetricsLayer};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    pub consumer: String,
    pub dataset: String,
    pub decision: &'static str,
    pub reason: &'static str,
}

/// A published change's or a delivery's labels: registered names only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MutationLabels {
    /// The publishing source, or the receiving consumer (enterprise number).
    pub organisation: String,
    pub dataset: String,
    /// `queued`, `duplicate` (publications); `delivered`, `withheld` (deliveries).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
    pub dataset: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatasetLabel {
    pub dataset: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `semel.v1.LookupService/Lookup`, or `unknown` for a method not served.
    pub method: &'static str,
    /// The gRPC status code's name, e.g. `OK`, `PERMISSION_DENIED`.
    pub code: &'static str,
}

/// Why the HTTP/JSON face closed a connection at once.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedConnectionLabels {
    /// The cap it would have gone over: for a connection `per_address`,
    /// `per_address_without_certificate`, `without_certificate`,
    /// `handshakes` or `total`; for a gRPC call
    /// `per_connection_without_certificate`, `without_certificate`,
    /// `health_watches_per_connection` or `health_watches`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The broker's metrics.
pub struct Metrics {
    registry: Registry,
    /// Calls by RPC and the gRPC code they ended with.
    pub rpcs: Family<RpcLabels, Counter>,
    process: ProcessMetrics,
    pub lookups: Family<LookupLabels, Counter>,
    pub lookup_seconds: Family<DatasetLabel, Histogram>,
    pub source_calls: Family<SourceLabels, Counter>,
    pub source_seconds: Family<DatasetLabel, Histogram>,
    audit_entries: Gauge,
    audit_queued: Gauge,
    audit_syncs: Counter,
    audit_sync_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// The background scrub of the audit log (PostgreSQL).
    audit_scrubbed: Counter,
    audit_scrub_passes: Counter,
    audit_scrub_findings: Counter,
    /// Calls refused because their entry could not be made durable.
    pub audit_unavailable: Counter,
    audit_integrity_failures: Counter,
    audit_checkpoint_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    persons_hits: Counter,
    persons_misses: Counter,
    persons_fresh: Gauge,
    persons_unsealed: Counter,
    registry_unsealed: Counter,
    /// Changes published, by source, dataset and outcome.
    pub mutations_published: Family<MutationLabels, Counter>,
    /// Changes delivered (or withheld), by consumer, dataset and outcome.
    pub mutations_delivered: Family<MutationLabels, Counter>,
    /// The HTTP/JSON face's connections open (TLS handshakes included).
    pub http_connections: Gauge,
    /// Connections the HTTP/JSON face closed at once, by the cap they
    /// would have gone over.
    pub http_connections_refused: Family<RefusedConnectionLabels, Counter>,
    /// The gRPC port's connections open (TLS handshakes included).
    pub grpc_connections: Gauge,
    /// Connections the gRPC port closed at once, by the cap they would
    /// have gone over.
    pub grpc_connections_refused: Family<RefusedConnectionLabels, Counter>,
    /// Calls the gRPC port refused at once (RESOURCE_EXHAUSTED,
    /// `STREAMS_EXCEEDED`), by the cap they would have gone over.
    pub grpc_calls_refused: Family<RefusedConnectionLabels, Counter>,
    /// `grpc.health.v1.Health/Watch` streams open.
    pub grpc_health_watches: Gauge,
    /// 1 while changes queued through other brokers wake this broker's
    /// subscriptions (its PostgreSQL listener is up); 0 while they poll.
    pub mutations_listener_up: Gauge,
    /// Brokers alive on the store, this one included: each holds its
    /// share (1/n) of every organisation's limits.
    pub live_brokers: Gauge,
    /// The persons directory in memory, whose counters each scrape reads.
    persons: std::sync::OnceLock<semel_storage::CachedPersons>,
    /// The registry store, for its count of rules not honoured.
    rules: std::sync::OnceLock<std::sync::Arc<dyn semel_storage::RegistryStore>>,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 16 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let process = ProcessMetrics::register(&mut root);
        let registry = root.sub_registry_with_prefix("semel");
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The running version of Semel", build);
        let rpcs = Family::<RpcLabels, Counter>::default();
        registry.register(
            "grpc_server_handled",
            "gRPC calls by method and the status code they ended with",
            rpcs.clone(),
        );
        let lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "lookups",
            "Lookups by consumer, dataset, decision and reason code",
            lookups.clone(),
        );
        let lookup_seconds = Family::<DatasetLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "lookup_duration_seconds",
            "Time from receiving a lookup to its durable audit entry",
            lookup_seconds.clone(),
        );
        let source_calls = Family::<SourceLabels, Counter>::default();
        registry.register(
            "source_calls",
            "Calls to authentic sources by outcome",
            source_calls.clone(),
        );
        let source_seconds = Family::<DatasetLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "source_duration_seconds",
            "Time authentic sources take to answer",
            source_seconds.clone(),
        );
        let audit_entries = Gauge::default();
        registry.register(
            "audit_entries",
            "Entries in the audit log",
            audit_entries.clone(),
        );
        let audit_queued = Gauge::default();
        registry.register(
            "audit_queue_depth",
            "Audit entries waiting to be made durable",
            audit_queued.clone(),
        );
        let audit_syncs = Counter::default();
        registry.register(
            "audit_syncs",
            "Syncs of the audit log (one per batch of entries)",
            audit_syncs.clone(),
        );
        let audit_sync_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "audit_sync_seconds",
            "Time spent writing and syncing the audit log",
            audit_sync_seconds.clone(),
        );
        let audit_scrubbed = Counter::default();
        registry.register(
            "audit_scrub_entries",
            "Audit entries the background scrub checked against their signed encoding (PostgreSQL)",
            audit_scrubbed.clone(),
        );
        let audit_scrub_passes = Counter::default();
        registry.register(
            "audit_scrub_passes",
            "Passes of the background scrub over the whole audit log",
            audit_scrub_passes.clone(),
        );
        let audit_scrub_findings = Counter::default();
        registry.register(
            "audit_scrub_findings",
            "Audit rows the scrub found not to be what was signed (each halts the log)",
            audit_scrub_findings.clone(),
        );
        let audit_integrity_failures = Counter::default();
        registry.register(
            "audit_integrity_failures",
            "Integrity failures the audit log found (an entry, a query column, a tree or a checkpoint the database altered); the log halts at the first",
            audit_integrity_failures.clone(),
        );
        let audit_checkpoint_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "audit_checkpoint_age_seconds",
            "How long the oldest audit entry no signed checkpoint covers has waited, by its recorded time (0: every entry is covered)",
            audit_checkpoint_age.clone(),
        );
        let audit_unavailable = Counter::default();
        registry.register(
            "audit_unavailable_refusals",
            "Calls refused because their audit entry could not be made durable",
            audit_unavailable.clone(),
        );
        let persons_hits = Counter::default();
        registry.register(
            "persons_memory_hits",
            "Reads of the persons directory (resolutions, files, consents) answered from memory",
            persons_hits.clone(),
        );
        let persons_misses = Counter::default();
        registry.register(
            "persons_memory_misses",
            "Reads of the persons directory that went to the store",
            persons_misses.clone(),
        );
        let persons_fresh = Gauge::default();
        registry.register(
            "persons_memory_fresh",
            "1 while memory may answer persons reads; 0 while the store's change feed could not be read in time (every read then goes to the store)",
            persons_fresh.clone(),
        );
        let persons_unsealed = Counter::default();
        registry.register(
            "persons_unsealed_rows",
            "Files and consents read from the store and not honoured: no seal that verifies, or their audit entry is missing or differs (a row written by SQL; alert on any)",
            persons_unsealed.clone(),
        );
        let registry_unsealed = Counter::default();
        registry.register(
            "registry_unsealed_rows",
            "Organisations, datasets, purposes and authorisations read from the store and not honoured: no seal that verifies, or their audit entry is missing or differs (a rule written or edited by SQL; alert on any)",
            registry_unsealed.clone(),
        );
        let mutations_published = Family::<MutationLabels, Counter>::default();
        registry.register(
            "mutations_published",
            "Changes published by sources, by source, dataset and outcome (queued, duplicate)",
            mutations_published.clone(),
        );
        let mutations_delivered = Family::<MutationLabels, Counter>::default();
        registry.register(
            "mutations_delivered",
            "Changes sent to consumers (delivered) or dropped because the authorisation or file no longer allowed them (withheld), by consumer and dataset",
            mutations_delivered.clone(),
        );
        let http_connections = Gauge::default();
        registry.register(
            "http_connections",
            "Connections to the HTTP/JSON face open now, TLS handshakes included",
            http_connections.clone(),
        );
        let http_connections_refused = Family::<RefusedConnectionLabels, Counter>::default();
        registry.register(
            "http_connections_refused",
            "Connections the HTTP/JSON face closed at once, by the cap they would have gone over (per_address, per_address_without_certificate, without_certificate, handshakes, total)",
            http_connections_refused.clone(),
        );
        let grpc_connections = Gauge::default();
        registry.register(
            "grpc_connections",
            "Connections to the gRPC port open now, TLS handshakes included",
            grpc_connections.clone(),
        );
        let grpc_connections_refused = Family::<RefusedConnectionLabels, Counter>::default();
        registry.register(
            "grpc_connections_refused",
            "Connections the gRPC port closed at once, by the cap they would have gone over (per_address, per_address_without_certificate, without_certificate, handshakes, total)",
            grpc_connections_refused.clone(),
        );
        let grpc_calls_refused = Family::<RefusedConnectionLabels, Counter>::default();
        registry.register(
            "grpc_calls_refused",
            "Calls the gRPC port refused at once with STREAMS_EXCEEDED, by the cap they would have gone over (per_connection_without_certificate, without_certificate, health_watches_per_connection, health_watches)",
            grpc_calls_refused.clone(),
        );
        let grpc_health_watches = Gauge::default();
        registry.register(
            "grpc_health_watches",
            "grpc.health.v1.Health/Watch streams open now",
            grpc_health_watches.clone(),
        );
        let mutations_listener_up = Gauge::default();
        registry.register(
            "mutations_listener_up",
            "1 while changes published through other brokers wake this broker's subscriptions at once (PostgreSQL LISTEN); 0 while they are found by polling (mutations.fallback_poll_ms)",
            mutations_listener_up.clone(),
        );
        let live_brokers = Gauge::default();
        registry.register(
            "live_brokers",
            "Brokers alive on this broker's store, itself included; each holds its share (1/n) of every organisation's limits",
            live_brokers.clone(),
        );
        live_brokers.set(1);
        Metrics {
            mutations_listener_up,
            live_brokers,
            grpc_connections,
            grpc_connections_refused,
            grpc_calls_refused,
            grpc_health_watches,
            http_connections,
            http_connections_refused,
            mutations_published,
            mutations_delivered,
            persons_hits,
            persons_misses,
            persons_fresh,
            persons_unsealed,
            registry_unsealed,
            persons: std::sync::OnceLock::new(),
            rules: std::sync::OnceLock::new(),
            audit_unavailable,
            audit_integrity_failures,
            audit_checkpoint_age,
            registry: root,
            rpcs,
            process,
            lookups,
            lookup_seconds,
            source_calls,
            source_seconds,
            audit_entries,
            audit_queued,
            audit_syncs,
            audit_sync_seconds,
            audit_scrubbed,
            audit_scrub_passes,
            audit_scrub_findings,
        }
    }
}

impl Metrics {
    /// Reports the persons directory in memory from now on.
    pub fn watch_persons(&self, persons: semel_storage::CachedPersons) {
        let _ = self.persons.set(persons);
    }

    /// Reports the registry store's count of rules not honoured.
    pub fn watch_registry(&self, registry: std::sync::Arc<dyn semel_storage::RegistryStore>) {
        let _ = self.rules.set(registry);
    }

    /// How long the oldest unsigned audit entry has waited, in seconds.
    pub fn set_checkpoint_age(&self, seconds: f64) {
        self.audit_checkpoint_age.set(seconds);
    }

    /// The exposition in `format`, with the audit log's counters as they are now.
    pub fn render(&self, audit: AuditStats, format: Format) -> String {
        self.audit_integrity_failures.inc_by(
            audit
                .integrity_failures
                .saturating_sub(self.audit_integrity_failures.get()),
        );
        self.audit_entries.set(audit.entries as i64);
        self.audit_queued.set(audit.queued as i64);
        // Counters only go up: add what happened since the last scrape.
        let syncs = audit.syncs.saturating_sub(self.audit_syncs.get());
        self.audit_syncs.inc_by(syncs);
        let seconds = audit.sync_micros as f64 / 1e6 - self.audit_sync_seconds.get();
        if seconds > 0.0 {
            self.audit_sync_seconds.inc_by(seconds);
        }
        for (counter, total) in [
            (&self.audit_scrubbed, audit.scrubbed),
            (&self.audit_scrub_passes, audit.scrub_passes),
            (&self.audit_scrub_findings, audit.scrub_findings),
        ] {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        if let Some(persons) = self.persons.get() {
            let stats = persons.stats();
            self.persons_hits
                .inc_by(stats.hits.saturating_sub(self.persons_hits.get()));
            self.persons_misses
                .inc_by(stats.misses.saturating_sub(self.persons_misses.get()));
            self.persons_fresh.set(i64::from(persons.fresh()));
            self.persons_unsealed.inc_by(
                semel_storage::PersonsStore::unsealed(persons)
                    .saturating_sub(self.persons_unsealed.get()),
            );
        }
        if let Some(rules) = self.rules.get() {
            self.registry_unsealed.inc_by(
                rules
                    .unsealed()
                    .saturating_sub(self.registry_unsealed.get()),
            );
        }
        self.process.update();
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        match format {
            Format::OpenMetrics => out,
            Format::Prometheus => to_prometheus_text(&out),
        }
    }
}

#[cfg(test)]
mod tests;
