//! What the PostgreSQL store's tests share.

use semel_core::{AuditDecision, AuditRecord, Kbo, Niss, Outcome};

/// The `i`th test record: one citizen, two consumers alternating.
pub fn record(i: u64) -> AuditRecord {
    AuditRecord {
        request_id: [(i % 251) as u8; 16],
        time_micros: 1_700_000_000_000_000 + i as i64,
        operation: semel_core::LOOKUP_OPERATION.into(),
        consumer: Kbo::parse(if i.is_multiple_of(2) {
            "0566988259"
        } else {
            "0314595348"
        })
        .expect("kbo"),
        end_user: Some(format!("clerk-{i}")),
        citizen: Niss::parse("93051822361").ok(),
        dataset: "national_register.residence".into(),
        fields_requested: vec!["street".into()],
        fields_returned: vec!["street".into()],
        purpose: "RIS_ELIGIBILITY".into(),
        authorisation: Some("BSC/2024/017".into()),
        authorisation_version: None,
        decision: AuditDecision::Allowed,
        reason: None,
        outcome: Outcome::Answered,
        source: None,
        consumer_reference: String::new(),
        reference_date: None,
        citizen_as_given: None,
        checks: Vec::new(),
        detail: String::new(),
    }
}
