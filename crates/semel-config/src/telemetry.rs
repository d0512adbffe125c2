//! `[telemetry]`: OpenTelemetry trace export.

use serde::Deserialize;

use super::Config;

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

impl Config {
    /// Where traces go, if anywhere.
    pub fn telemetry_settings(&self) -> Option<crate::settings::TelemetrySettings> {
        self.telemetry
            .as_ref()
            .map(|t| crate::settings::TelemetrySettings {
                otlp_endpoint: t.otlp_endpoint.clone(),
                service_name: t.service_name.clone(),
                sample_ratio: t.sample_ratio,
            })
    }
}
