use super::*;

/// Checks text against the Prometheus 0.0.4 format as `promtool check
/// metrics` reads it: every sample belongs to the family its `# TYPE`
/// line names (histograms: `_bucket`, `_sum`, `_count`), counters are
/// named `_total`, each family is typed once, and no OpenMetrics-only
/// line is left.
fn check_prometheus_text(text: &str) -> Result<usize, String> {
    let mut families = std::collections::HashSet::new();
    let mut current: Option<(String, String)> = None;
    let mut samples = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE: {line}"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(format!("type {kind} is not 0.0.4: {line}"));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(format!("counter without _total: {line}"));
            }
            if !families.insert(name.to_owned()) {
                return Err(format!("{name} typed twice"));
            }
            current = Some((name.to_owned(), kind.to_owned()));
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if families.contains(name) {
                return Err(format!("HELP after TYPE for {name}"));
            }
        } else if line.starts_with('#') {
            return Err(format!("not a 0.0.4 line: {line}"));
        } else if !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            let (family, kind) = current.as_ref().ok_or(format!("untyped: {line}"))?;
            let fits = name == family
                || (kind == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(family.as_str())));
            if !fits {
                return Err(format!("{name} outside its family {family}"));
            }
            let value = line.rsplit(' ').next().unwrap_or("");
            value
                .parse::<f64>()
                .map_err(|_| format!("bad value: {line}"))?;
            samples += 1;
        }
    }
    Ok(samples)
}

const STATS: AuditStats = AuditStats {
    entries: 3,
    queued: 0,
    syncs: 2,
    sync_micros: 1500,
    scrubbed: 0,
    scrub_passes: 0,
    scrub_findings: 0,
    integrity_failures: 0,
};

fn sample_metrics() -> Metrics {
    let m = Metrics::default();
    m.lookups
        .get_or_create(&LookupLabels {
            consumer: "0212345668".into(),
            dataset: "national_register.residence".into(),
            decision: "allowed",
            reason: "",
        })
        .inc();
    m.lookup_seconds
        .get_or_create(&DatasetLabel {
            dataset: "national_register.residence".into(),
        })
        .observe(0.002);
    m.rpcs
        .get_or_create(&RpcLabels {
            method: "semel.v1.LookupService/Lookup",
            code: "OK",
        })
        .inc();
    m
}

#[test]
fn the_prometheus_text_format_is_served_unless_openmetrics_is_asked_for() {
    assert_eq!(Format::negotiate(None), Format::Prometheus);
    assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
    assert_eq!(
        Format::negotiate(Some("text/plain;version=0.0.4;q=0.3,*/*;q=0.2")),
        Format::Prometheus
    );
    // What Prometheus sends.
    assert_eq!(
        Format::negotiate(Some(
            "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        )),
        Format::OpenMetrics
    );
    assert_eq!(
        Format::negotiate(Some("application/openmetrics-text; q=0, text/plain")),
        Format::Prometheus
    );

    let m = sample_metrics();
    let text = m.render(STATS, Format::Prometheus);
    let samples = check_prometheus_text(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(samples > 10, "{text}");
    for line in [
        "# TYPE semel_lookups_total counter",
        "# TYPE semel_grpc_server_handled_total counter",
        "semel_grpc_server_handled_total{method=\"semel.v1.LookupService/Lookup\",code=\"OK\"} 1",
        "semel_build_info{version=\"",
        "# TYPE process_cpu_seconds_total counter",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    // The same registry in OpenMetrics is not valid 0.0.4: the check can fail.
    let om = m.render(STATS, Format::OpenMetrics);
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(check_prometheus_text(&om).is_err());
}
