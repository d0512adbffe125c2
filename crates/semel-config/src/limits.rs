//! `[limits]`: rates, in-flight caps and budgets per organisation.

use std::time::Duration;

use serde::Deserialize;

use super::Config;

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

impl Config {
    pub fn limit_settings(&self) -> crate::settings::LimitSettings {
        crate::settings::LimitSettings {
            consumer_rate: Some(
                self.limits
                    .consumer_lookups_per_second
                    .unwrap_or(crate::settings::DEFAULT_LOOKUPS_PER_SECOND),
            ),
            consumer_burst: self
                .limits
                .consumer_burst
                .unwrap_or(crate::settings::DEFAULT_LOOKUP_BURST),
            consumer_daily_quota: Some(
                self.limits
                    .consumer_lookups_per_day
                    .unwrap_or(crate::settings::DEFAULT_LOOKUPS_PER_DAY),
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
                .unwrap_or(crate::settings::DEFAULT_PUBLICATIONS_PER_SECOND),
            source_publication_burst: self
                .limits
                .source_publication_burst
                .unwrap_or(crate::settings::DEFAULT_PUBLICATION_BURST),
            audit_scan_budget: self
                .limits
                .audit_scan_budget
                .unwrap_or(crate::settings::DEFAULT_AUDIT_SCAN_BUDGET),
            audit_calls_in_flight: self.limits.audit_calls_in_flight.unwrap_or(2),
            calls_per_second: self
                .limits
                .calls_per_second
                .unwrap_or(crate::settings::DEFAULT_CALLS_PER_SECOND),
            call_burst: self
                .limits
                .call_burst
                .unwrap_or(crate::settings::DEFAULT_CALL_BURST),
            calls_in_flight: self
                .limits
                .calls_in_flight
                .unwrap_or(crate::settings::DEFAULT_CALLS_IN_FLIGHT),
            ..crate::settings::LimitSettings::default()
        }
    }
}
