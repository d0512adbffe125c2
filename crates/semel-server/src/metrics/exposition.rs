//! The exposition of the metrics: the format a scrape asks for, the Prometheus 0.0.4 rewrite of OpenMetrics text, and the `/metrics` endpoint.

use std::sync::Arc;

use semel_store::AuditStats;

use super::Metrics;

/// The exposition formats a scrape may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// The format for a request's `Accept` header: OpenMetrics only when
    /// asked for, since every Prometheus-compatible reader takes 0.0.4.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a)
                if a.split(',').any(|part| {
                    let mut params = part.split(';').map(str::trim);
                    let media = params.next().unwrap_or("");
                    media.eq_ignore_ascii_case("application/openmetrics-text")
                        && !params.any(|p| p.replace(' ', "") == "q=0")
                }) =>
            {
                Format::OpenMetrics
            }
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Rewrites OpenMetrics text (as prometheus-client encodes it) into the
/// Prometheus text format 0.0.4: a counter's family takes its samples'
/// `_total` name, `# UNIT` and `# EOF` go, `unknown` becomes `untyped`.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        let rewritten = if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            // 0.0.4 escapes only backslashes and newlines in help text.
            let help = help.replace("\\\"", "\"");
            if counters.contains(name) {
                format!("# HELP {name}_total {help}")
            } else {
                format!("# HELP {name} {help}")
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            match rest.split_once(' ') {
                Some((name, "counter")) => format!("# TYPE {name}_total counter"),
                Some((name, "unknown")) => format!("# TYPE {name} untyped"),
                Some((name, "info" | "stateset")) => format!("# TYPE {name} gauge"),
                Some((name, "gaugehistogram")) => format!("# TYPE {name} histogram"),
                _ => line.to_owned(),
            }
        } else if line.starts_with('#') {
            continue;
        } else {
            // Exemplars (` # {...}`) are OpenMetrics only.
            match line.split_once(" # ") {
                Some((sample, _)) => sample.to_owned(),
                None => line.to_owned(),
            }
        };
        out.push_str(&rewritten);
        out.push('\n');
    }
    out
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
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let metrics = metrics.clone();
            let audit = audit.clone();
            async move {
                let format = Format::negotiate(
                    headers
                        .get(axum::http::header::ACCEPT)
                        .and_then(|v| v.to_str().ok()),
                );
                (
                    [(axum::http::header::CONTENT_TYPE, format.content_type())],
                    metrics.render(audit(), format),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
