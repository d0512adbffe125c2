//! What a lookup leaves behind, allowed or refused: its audit entry
//! (appended, and waited on until durable), its span's marks, its log line
//! and its metrics; and what an entry keeps of the names a caller sent.

use std::sync::Arc;

use semel_core::{
    AuditDecision, AuditRecord, DatasetName, FieldName, LOOKUP_OPERATION, Organisation, PurposeCode,
};
use time::OffsetDateTime;
use tonic::Code;
use tracing::Instrument;

use super::{MAX_FIELDS, MAX_REFERENCE, Trace};
use crate::error::ApiError;
use crate::metrics::{DatasetLabel, LookupLabels};
use crate::proto::LookupRequest;
use crate::state::Broker;
use crate::tokens::EndUser;

/// The lookup's audit entry: what the path learnt, and of what the caller
/// sent only what is well formed.
pub(super) fn audit_record(
    received: OffsetDateTime,
    request_id: uuid::Uuid,
    org: &Organisation,
    user: Option<Arc<EndUser>>,
    msg: &LookupRequest,
    trace: Trace,
) -> AuditRecord {
    AuditRecord {
        request_id: *request_id.as_bytes(),
        time_micros: (received.unix_timestamp_nanos() / 1000) as i64,
        operation: LOOKUP_OPERATION.into(),
        consumer: org.kbo,
        end_user: user.map(|u| u.subject.clone()),
        citizen: trace.citizen,
        dataset: recorded_name(&msg.dataset, |s| DatasetName::new(s).is_ok()),
        fields_requested: msg
            .fields
            .iter()
            .take(MAX_FIELDS)
            .map(|f| recorded_name(f, |s| FieldName::new(s).is_ok()))
            .collect(),
        fields_returned: trace.fields_returned,
        purpose: recorded_name(&msg.purpose, |s| PurposeCode::new(s).is_ok()),
        authorisation: trace.authorisation,
        authorisation_version: trace.authorisation_version,
        decision: trace.decision,
        reason: trace.reason,
        outcome: trace.outcome,
        source: trace.source,
        consumer_reference: semel_core::redact_national_numbers(&bounded(
            &msg.consumer_reference.replace(char::is_control, " "),
            MAX_REFERENCE,
        ))
        .into_owned(),
        reference_date: trace.reference_date,
        citizen_as_given: trace.citizen_as_given,
        checks: if trace.checks.is_empty() {
            msg.checks
                .iter()
                .take(crate::checks::MAX_CHECKS)
                .map(|c| recorded_name(&c.field, |s| FieldName::new(s).is_ok()))
                .collect()
        } else {
            trace.checks
        },
        detail: trace.detail,
    }
}

/// The lookup's span gets its dataset (once known to exist), decision and
/// reason.
pub(super) fn mark_span(span: &tracing::Span, record: &AuditRecord, dataset: Option<&DatasetName>) {
    if let Some(d) = dataset {
        span.record("dataset", d.as_str());
    }
    span.record(
        "decision",
        match record.decision {
            AuditDecision::Allowed => "allowed",
            AuditDecision::Refused => "refused",
        },
    );
    if let Some(r) = record.reason {
        span.record("reason", r.as_str());
    }
}

/// Appends the lookup's entry and waits until it is durable; fails closed
/// when it cannot be.
pub(super) async fn append_entry(
    broker: &Broker,
    record: AuditRecord,
    span: &tracing::Span,
    request_id: uuid::Uuid,
) -> Result<(), ApiError> {
    if let Err(e) = broker
        .storage()
        .audit
        .append(record)
        .instrument(tracing::debug_span!("audit.append"))
        .await
    {
        // Fail closed: no answer leaves without its entry.
        broker.audit_unavailable(&e);
        crate::telemetry::set_error(span, "AUDIT_UNAVAILABLE");
        return Err(ApiError::retryable(
            Code::Unavailable,
            "AUDIT_UNAVAILABLE",
            "the broker cannot record lookups right now, so it answers none; try again later",
        )
        .with("request_id", request_id.to_string()));
    }
    broker.audit_recorded();
    Ok(())
}

/// Every lookup is in the audit log; the operator's log shows those that
/// did not get an answer (and, at debug level, the others).
pub(super) fn log_lookup(
    request_id: uuid::Uuid,
    org: &Organisation,
    dataset_label: &str,
    decision: AuditDecision,
    reason: Option<&'static str>,
    answered: bool,
) {
    if answered {
        tracing::debug!(request_id = %request_id, consumer = org.kbo.as_str(), dataset = %dataset_label, "lookup answered");
    } else {
        tracing::info!(
            request_id = %request_id,
            consumer = org.kbo.as_str(),
            dataset = %dataset_label,
            decision = ?decision,
            reason = reason.unwrap_or(""),
            "lookup not answered"
        );
    }
}

/// The metrics of one lookup, once its entry is recorded.
pub(super) fn count_lookup(
    broker: &Broker,
    org: &Organisation,
    dataset_label: &str,
    decision: AuditDecision,
    reason: Option<&'static str>,
    answered: bool,
    received: OffsetDateTime,
) {
    broker
        .metrics
        .lookups
        .get_or_create(&LookupLabels {
            consumer: org.kbo.as_str().to_owned(),
            dataset: dataset_label.to_owned(),
            // Allowed but not answered (the source failed, the answer was
            // unusable) is not counted as allowed: it did not happen.
            decision: match (decision, answered) {
                (AuditDecision::Allowed, true) => "allowed",
                (AuditDecision::Allowed, false) => "failed",
                (AuditDecision::Refused, _) => "refused",
            },
            reason: reason.unwrap_or(if answered { "" } else { "OTHER" }),
        })
        .inc();
    broker
        .metrics
        .lookup_seconds
        .get_or_create(&DatasetLabel {
            dataset: dataset_label.to_owned(),
        })
        .observe(
            (OffsetDateTime::now_utc() - received)
                .unsigned_abs()
                .as_secs_f64(),
        );
}

/// What an entry keeps of a name the caller sent: the name when it is well
/// formed (and holds nothing shaped like a national number), else a
/// placeholder. Raw caller text would otherwise stay in the log forever and
/// reach citizens' views and spreadsheets.
pub(crate) fn recorded_name(s: &str, valid: impl Fn(&str) -> bool) -> String {
    if s.is_empty() {
        String::new()
    } else if valid(s)
        && matches!(
            semel_core::redact_national_numbers(s),
            std::borrow::Cow::Borrowed(_)
        )
    {
        s.to_owned()
    } else {
        INVALID_NAME.to_owned()
    }
}

/// What an entry shows for a name that was not well formed.
const INVALID_NAME: &str = "(not a valid name)";

pub(super) fn bounded(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
