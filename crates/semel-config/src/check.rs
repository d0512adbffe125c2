//! Checking a configuration before any port is bound: every problem with
//! the values and the files, each naming its key.

use super::Config;

impl Config {
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
            let least = crate::settings::MAX_PUBLISH as f64;
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
}
