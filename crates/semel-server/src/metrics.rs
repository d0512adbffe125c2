//! Prometheus metrics, served over plain HTTP on their own port.
//!
//! Labels carry enterprise numbers, dataset names, decisions and reason
//! codes: never a national number. A dataset name a consumer made up is
//! counted as `unknown`, so no client can grow the number of series.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use semel_store::AuditStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    pub consumer: String,
    pub dataset: String,
    pub decision: &'static str,
    pub reason: &'static str,
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

/// The broker's metrics.
pub struct Metrics {
    registry: Registry,
    pub lookups: Family<LookupLabels, Counter>,
    pub lookup_seconds: Family<DatasetLabel, Histogram>,
    pub source_calls: Family<SourceLabels, Counter>,
    pub source_seconds: Family<DatasetLabel, Histogram>,
    audit_entries: Gauge,
    audit_queued: Gauge,
    audit_syncs: Counter,
    audit_sync_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Calls refused because their entry could not be made durable.
    pub audit_unavailable: Counter,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 16 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("semel");
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
        let audit_unavailable = Counter::default();
        registry.register(
            "audit_unavailable_refusals",
            "Calls refused because their audit entry could not be made durable",
            audit_unavailable.clone(),
        );
        Metrics {
            audit_unavailable,
            registry,
            lookups,
            lookup_seconds,
            source_calls,
            source_seconds,
            audit_entries,
            audit_queued,
            audit_syncs,
            audit_sync_seconds,
        }
    }
}

impl Metrics {
    /// The text exposition, with the audit log's counters as they are now.
    pub fn render(&self, audit: AuditStats) -> String {
        self.audit_entries.set(audit.entries as i64);
        self.audit_queued.set(audit.queued as i64);
        // Counters only go up: add what happened since the last scrape.
        let syncs = audit.syncs.saturating_sub(self.audit_syncs.get());
        self.audit_syncs.inc_by(syncs);
        let seconds = audit.sync_micros as f64 / 1e6 - self.audit_sync_seconds.get();
        if seconds > 0.0 {
            self.audit_sync_seconds.inc_by(seconds);
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    audit: impl Fn() -> AuditStats + Send + Sync + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let audit = Arc::new(audit);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            let audit = audit.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(audit()),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
