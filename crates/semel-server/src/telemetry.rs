//! Optional OpenTelemetry trace export: the broker's `tracing` spans (one
//! per lookup, with the source call and the audit append inside) are sent
//! to an OTLP collector over gRPC, and the trace context is passed to the
//! source in W3C `traceparent` metadata, so a trace follows a lookup from
//! the consumer through the broker to the authentic source.
//!
//! Spans carry request ids, enterprise numbers, dataset names and reason
//! codes: never a national number, like the logs.

use std::collections::HashMap;

use anyhow::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Where to send traces.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// The collector's OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of traces kept, 0 to 1.
    pub sample_ratio: f64,
}

/// Flushes and stops the exporter when dropped (at the end of `main`).
pub struct TelemetryGuard(SdkTracerProvider);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("warning: flush traces to the collector: {e}");
        }
    }
}

/// A `tracing` layer exporting spans to the collector, and the guard that
/// flushes them. Call from within the tokio runtime.
pub fn otlp_layer<S>(
    settings: &TelemetrySettings,
) -> anyhow::Result<(
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
    TelemetryGuard,
)>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.otlp_endpoint.clone())
        .build()
        .with_context(|| format!("OTLP exporter for {}", settings.otlp_endpoint))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("semel");
    Ok((
        tracing_opentelemetry::layer().with_tracer(tracer),
        TelemetryGuard(provider),
    ))
}

/// The W3C trace context of the current span, as metadata to send on.
/// Empty when no trace is exported.
pub fn trace_headers() -> HashMap<String, String> {
    let mut headers = HashMap::new();
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut headers);
    headers
}
