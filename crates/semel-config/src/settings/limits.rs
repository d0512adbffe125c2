//! The limits that keep one consumer or one source from hurting the others
//! (`[limits]`), and their defaults.

use std::time::Duration;

/// The limits' settings.
#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    /// Lookups per second each consumer may make; `None` is unlimited.
    pub consumer_rate: Option<f64>,
    /// How many lookups a consumer may make at once above the rate.
    pub consumer_burst: f64,
    /// Lookups in flight to one source at most.
    pub source_max_in_flight: usize,
    /// Consecutive failures (unreachable or too slow) that open a source's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit fails fast before one probe is let through.
    pub breaker_cooldown: Duration,
    /// Lookups each consumer may make per calendar day (Brussels time);
    /// `None` is unlimited.
    pub consumer_daily_quota: Option<u64>,
    /// Items of one LookupBatch call in flight at once.
    pub batch_in_flight: usize,
    /// Different yes/no questions one consumer may ask about one citizen's
    /// field per calendar day (asking the same one again is free).
    pub distinct_checks_per_citizen: usize,
    /// Refused calls per second an organisation may have recorded one by
    /// one (with a burst of ten times that); beyond, they are counted and
    /// recorded as one summary entry.
    pub refusals_per_second: f64,
    /// Changes per second each source may publish: a source that floods
    /// fills every consumer's queue and the audit log.
    pub source_publications_per_second: f64,
    /// Changes a source may publish at once above that rate (at least one
    /// request of the largest size).
    pub source_publication_burst: f64,
    /// Entries one audit query reads at most: a ListAuditEntries page or a
    /// SummariseAuditEntries call. A page cut short by it carries a token
    /// to go on; a summary says where it stopped.
    pub audit_scan_budget: usize,
    /// Audit calls (ListAuditEntries, SummariseAuditEntries, an auditor's
    /// ListCitizenAccesses) one organisation may have in flight at once.
    pub audit_calls_in_flight: usize,
    /// Summaries per second one organisation may ask for, and how many at
    /// once above that rate.
    pub audit_summaries_per_second: f64,
    pub audit_summary_burst: f64,
    /// Calls per second each organisation may make to every RPC but the
    /// lookups (which have their own rate above).
    pub calls_per_second: f64,
    /// Such calls an organisation may make at once above that rate.
    pub call_burst: f64,
    /// Such calls of one organisation being handled at once.
    pub calls_in_flight: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            consumer_rate: Some(DEFAULT_LOOKUPS_PER_SECOND),
            consumer_burst: DEFAULT_LOOKUP_BURST,
            source_max_in_flight: 1024,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(5),
            consumer_daily_quota: Some(DEFAULT_LOOKUPS_PER_DAY),
            batch_in_flight: 16,
            distinct_checks_per_citizen: 4,
            refusals_per_second: 5.0,
            source_publications_per_second: DEFAULT_PUBLICATIONS_PER_SECOND,
            source_publication_burst: DEFAULT_PUBLICATION_BURST,
            audit_scan_budget: DEFAULT_AUDIT_SCAN_BUDGET,
            audit_calls_in_flight: 2,
            audit_summaries_per_second: 0.5,
            audit_summary_burst: 10.0,
            calls_per_second: DEFAULT_CALLS_PER_SECOND,
            call_burst: DEFAULT_CALL_BURST,
            calls_in_flight: DEFAULT_CALLS_IN_FLIGHT,
        }
    }
}

/// Entries one audit query reads at most unless configured: a setting,
/// not a constant, because what one call may cost depends on the machine.
/// Reading an entry is decoding a few hundred bytes and comparing fields,
/// so this many keep one call to a fraction of a second of one core, while
/// a page of an organisation's own entries, a citizen's or a period's (each
/// found through an index or a seek) is found in one call for all but the
/// busiest. A filter no index serves goes on with the page token.
pub const DEFAULT_AUDIT_SCAN_BUDGET: usize = 100_000;
impl LimitSettings {
    /// These settings without budgets per organisation, for lookups or
    /// other calls: for the load generators and the test suite, which
    /// measure or exercise the broker from one organisation, not the
    /// budgets (tests of the budgets set them).
    pub fn without_organisation_budgets(self) -> Self {
        LimitSettings {
            consumer_rate: None,
            consumer_daily_quota: None,
            calls_per_second: 1e9,
            call_burst: 1e9,
            calls_in_flight: 1 << 20,
            ..self
        }
    }
}

/// Lookups per second each consumer may make unless configured: far more
/// than an administration's case workers and batch jobs make, far fewer
/// than one consumer needs to take a broker's capacity from the others.
pub const DEFAULT_LOOKUPS_PER_SECOND: f64 = 200.0;
/// Lookups a consumer may make at once above that rate unless configured.
pub const DEFAULT_LOOKUP_BURST: f64 = 1000.0;
/// Lookups each consumer may make per calendar day unless configured.
pub const DEFAULT_LOOKUPS_PER_DAY: u64 = 1_000_000;
/// Calls per second to the other RPCs each organisation may make unless
/// configured: registering files, consents, reading the registry, pulling
/// changes are a person's or a batch's pace, not a flood's.
pub const DEFAULT_CALLS_PER_SECOND: f64 = 50.0;
/// Such calls an organisation may make at once unless configured.
pub const DEFAULT_CALL_BURST: f64 = 200.0;
/// Such calls of one organisation handled at once unless configured.
pub const DEFAULT_CALLS_IN_FLIGHT: usize = 64;

/// Changes per second a source may publish unless configured: about five
/// times what one broker stores (docs/benchmarks.md), so that no honest
/// source meets it and a flooding one is held to it.
pub const DEFAULT_PUBLICATIONS_PER_SECOND: f64 = 500.0;
/// Changes a source may publish at once unless configured: five requests
/// of the largest size.
pub const DEFAULT_PUBLICATION_BURST: f64 = 5000.0;
