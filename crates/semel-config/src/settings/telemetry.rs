//! Where traces are sent (`[telemetry]`).

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
