//! An audit entry as a line of JSON: its readable fields and its canonical
//! encoding. The archive (written by the log, `audit.rs`) and the export
//! (written and checked by `verify/`) share this form, so an archive file
//! is checked as an export is.

use semel_core::checkpoint::b64;
use semel_core::{AuditDecision, AuditEntry};
use serde_json::{Value, json};

/// The first line of an archive file.
pub(crate) const ARCHIVE_FORMAT: &str = "semel-audit-archive/1";

/// An entry's JSON Lines form: readable fields and canonical encoding.
pub(crate) fn entry_line(entry: &AuditEntry, encoding: &[u8]) -> String {
    let mut v = readable(entry);
    v["type"] = json!("entry");
    v["encoding"] = json!(b64::encode(encoding));
    v.to_string()
}

/// The readable fields of an entry.
pub(crate) fn readable(e: &AuditEntry) -> Value {
    let r = &e.record;
    json!({
        "sequence": e.sequence,
        "time_micros": r.time_micros,
        "operation": r.operation,
        "consumer_kbo": r.consumer.as_str(),
        "end_user": r.end_user,
        "citizen": r.citizen.map(|n| n.as_str().to_owned()),
        "dataset": r.dataset,
        "fields_requested": r.fields_requested,
        "fields_returned": r.fields_returned,
        "purpose": r.purpose,
        "authorisation": r.authorisation,
        "authorisation_version": r.authorisation_version,
        "decision": match r.decision { AuditDecision::Allowed => "allowed", AuditDecision::Refused => "refused" },
        "reason": r.reason.map(|c| c.as_str()),
        "source_kbo": r.source.map(|k| k.as_str().to_owned()),
        "consumer_reference": r.consumer_reference,
        "reference_date": r.reference_date,
        "checks": r.checks,
        "detail": r.detail,
    })
}
