//! The JSON the command line prints, one function per message, and the
//! times it reads and writes (RFC 3339).

use std::collections::BTreeMap;

use semel_proto::{self as proto, value::Kind};
use serde_json::{Value as Json, json};

use crate::checks::question_text;
use crate::error::{CallError, usage};

// The JSON the command line prints is the whole answer: each message is
// destructured without `..`, so a field added to the proto is a compile
// error here rather than a field `--json` silently leaves out.

pub(crate) fn revoked_json(r: &proto::RevokedCertificate) -> Json {
    let proto::RevokedCertificate {
        sha256_fingerprint,
        serial_number,
        reason,
        revoked_at,
        issuer_name_sha256,
    } = r;
    json!({
        "sha256_fingerprint": sha256_fingerprint,
        "serial_number": serial_number,
        "issuer_name_sha256": issuer_name_sha256,
        "reason": reason,
        "revoked_at": revoked_at.as_ref().map(timestamp_text),
    })
}

pub(crate) fn purpose_json(p: &proto::Purpose) -> Json {
    let proto::Purpose {
        code,
        description,
        legal_basis,
    } = p;
    json!({"code": code, "description": description, "legal_basis": legal_basis})
}

/// An answer's object with the call's request id beside its fields.
pub(crate) fn with_request_id(mut v: Json, request_id: String) -> Json {
    if let Json::Object(m) = &mut v {
        m.insert("request_id".into(), Json::String(request_id));
    }
    v
}

pub(crate) fn sorted(m: serde_json::Map<String, Json>) -> Json {
    let b: BTreeMap<String, Json> = m.into_iter().collect();
    json!(b)
}

/// A source value as JSON.
pub fn value_json(v: &proto::Value) -> Json {
    match &v.kind {
        None => Json::Null,
        Some(Kind::StringValue(s)) | Some(Kind::DateValue(s)) => json!(s),
        Some(Kind::IntValue(i)) => json!(i),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::RecordValue(r)) => sorted(
            r.fields
                .iter()
                .map(|(k, v)| (k.clone(), value_json(v)))
                .collect(),
        ),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value_json).collect()),
    }
}

pub(crate) fn enum_name(name: Option<&str>, prefix: &str) -> String {
    name.map(|n| n.trim_start_matches(prefix).to_lowercase())
        .unwrap_or_default()
}

pub(crate) fn mutation_event_json(e: &proto::MutationEvent) -> Json {
    let proto::MutationEvent {
        position,
        source_kbo,
        source_event_id,
        dataset,
        citizen,
        kind,
        effective_date,
        fields,
        checked_fields,
        authorisation_reference,
        file_id,
        published_at,
    } = e;
    json!({
        "position": position,
        "source_kbo": source_kbo,
        "source_event_id": source_event_id,
        "dataset": dataset,
        "citizen": citizen,
        "kind": enum_name(proto::MutationKind::try_from(*kind).ok().map(|k| k.as_str_name()), "MUTATION_KIND_"),
        "effective_date": effective_date,
        "fields": sorted(fields.iter().map(|(k, v)| (k.clone(), value_json(v))).collect()),
        "checked_fields": checked_fields,
        "authorisation_reference": authorisation_reference,
        "file_id": file_id,
        "published_at": published_at.as_ref().map(timestamp_text),
    })
}

pub(crate) fn lost_json(l: &proto::MutationsLost) -> Json {
    json!({"lost": {"first_position": l.first_position, "last_position": l.last_position}})
}

pub(crate) fn file_json(f: &proto::PersonFile) -> Json {
    let proto::PersonFile {
        id,
        consumer_kbo,
        citizen,
        capacity,
        phase,
        begin_date,
        end_date,
        consumer_reference,
        registered_by,
        registered_at,
        closed_at,
    } = f;
    json!({
        "id": id,
        "consumer_kbo": consumer_kbo,
        "citizen": citizen,
        "capacity": capacity,
        "phase": enum_name(proto::FilePhase::try_from(*phase).ok().map(|p| p.as_str_name()), "FILE_PHASE_"),
        "begin_date": begin_date,
        "end_date": end_date,
        "consumer_reference": consumer_reference,
        "registered_by": registered_by,
        "registered_at": registered_at.as_ref().map(timestamp_text),
        "closed_at": closed_at.as_ref().map(timestamp_text),
    })
}

pub(crate) fn consent_json(c: &proto::Consent) -> Json {
    let proto::Consent {
        id,
        citizen,
        consumer_kbo,
        purpose,
        datasets,
        given_at,
        channel,
        registered_through_kbo,
        registered_by,
        evidence,
        expires_at,
        withdrawn_at,
    } = c;
    json!({
        "id": id,
        "citizen": citizen,
        "consumer_kbo": consumer_kbo,
        "purpose": purpose,
        "datasets": datasets,
        "channel": enum_name(proto::ConsentChannel::try_from(*channel).ok().map(|p| p.as_str_name()), "CONSENT_CHANNEL_"),
        "registered_through_kbo": registered_through_kbo,
        "registered_by": registered_by,
        "evidence": evidence,
        "given_at": given_at.as_ref().map(timestamp_text),
        "expires_at": expires_at.as_ref().map(timestamp_text),
        "withdrawn_at": withdrawn_at.as_ref().map(timestamp_text),
    })
}

pub(crate) fn org_json(o: &proto::Organisation) -> Json {
    let proto::Organisation {
        kbo,
        name,
        roles,
        status,
        created_at,
    } = o;
    json!({
        "kbo": kbo,
        "name": name,
        "roles": roles.iter().map(|r| enum_name(proto::OrganisationRole::try_from(*r).ok().map(|r| r.as_str_name()), "ORGANISATION_ROLE_")).collect::<Vec<_>>(),
        "status": enum_name(proto::OrganisationStatus::try_from(*status).ok().map(|s| s.as_str_name()), "ORGANISATION_STATUS_"),
        "created_at": created_at.as_ref().map(timestamp_text),
    })
}

fn field_json(f: &proto::FieldDefinition) -> Json {
    let proto::FieldDefinition {
        name,
        description,
        r#type,
    } = f;
    json!({
        "name": name,
        "type": enum_name(proto::FieldType::try_from(*r#type).ok().map(|t| t.as_str_name()), "FIELD_TYPE_"),
        "description": description,
    })
}

pub(crate) fn dataset_json(d: &proto::Dataset) -> Json {
    let proto::Dataset {
        name,
        source_kbo,
        description,
        fields,
        endpoint,
        keeps_history,
        withdrawn,
    } = d;
    json!({
        "name": name,
        "source_kbo": source_kbo,
        "description": description,
        "endpoint": endpoint,
        "keeps_history": keeps_history,
        "withdrawn": withdrawn,
        "fields": fields.iter().map(field_json).collect::<Vec<_>>(),
    })
}

pub(crate) fn catalogue_entry_json(e: &proto::CatalogueEntry) -> Json {
    let proto::CatalogueEntry {
        dataset,
        dataset_description,
        source_kbo,
        source_name,
        consumer_kbo,
        consumer_name,
        authorisation_reference,
        authorisation_version,
        fields,
        check_fields,
        checks,
        purpose,
        purpose_description,
        capacities,
        consent_required,
        valid_from,
        valid_until,
        legal_basis,
        issuing_body,
        receives_mutations,
        keeps_history,
        state,
        confidential_until,
    } = e;
    json!({
        "dataset": dataset,
        "dataset_description": dataset_description,
        "source_kbo": source_kbo,
        "source_name": source_name,
        "consumer_kbo": consumer_kbo,
        "consumer_name": consumer_name,
        "authorisation_reference": authorisation_reference,
        "authorisation_version": authorisation_version,
        "fields": fields.iter().map(field_json).collect::<Vec<_>>(),
        "check_fields": check_fields.iter().map(field_json).collect::<Vec<_>>(),
        "questions": checks.iter().map(question_text).collect::<Vec<_>>(),
        "purpose": purpose,
        "purpose_description": purpose_description,
        "capacities": capacities,
        "consent_required": consent_required,
        "valid_from": valid_from,
        "valid_until": valid_until,
        "legal_basis": legal_basis,
        "issuing_body": issuing_body,
        "receives_mutations": receives_mutations,
        "keeps_history": keeps_history,
        "state": enum_name(proto::CatalogueState::try_from(*state).ok().map(|s| s.as_str_name()), "CATALOGUE_STATE_"),
        "confidential_until": confidential_until,
    })
}

pub(crate) fn membership_json(a: &proto::MembershipApplication) -> Json {
    let role = |r: &i32| {
        enum_name(
            proto::OrganisationRole::try_from(*r)
                .ok()
                .map(|s| s.as_str_name()),
            "ORGANISATION_ROLE_",
        )
    };
    json!({
        "id": a.id,
        "state": enum_name(proto::ApplicationState::try_from(a.state).ok().map(|s| s.as_str_name()), "APPLICATION_STATE_"),
        "kbo": a.kbo,
        "name": a.name,
        "roles": a.roles.iter().map(role).collect::<Vec<_>>(),
        "contact": a.contact,
        "note": a.note,
        "certificate": a.certificate,
        "applied_at": a.applied_at.as_ref().map(timestamp_text).unwrap_or_default(),
        "decided_by": a.decided_by,
        "decided_at": a.decided_at.as_ref().map(timestamp_text).unwrap_or_default(),
        "decision_note": a.decision_note,
    })
}

pub(crate) fn application_json(a: &proto::AuthorisationApplication) -> Json {
    let p = a.proposed.as_ref();
    json!({
        "id": a.id,
        "state": enum_name(proto::ApplicationState::try_from(a.state).ok().map(|s| s.as_str_name()), "APPLICATION_STATE_"),
        "reference": p.map(|p| p.reference.clone()).unwrap_or_default(),
        "applicant_kbo": a.applicant_kbo,
        "applied_by": a.applied_by,
        "applied_at": a.applied_at.as_ref().map(timestamp_text).unwrap_or_default(),
        "dataset": p.map(|p| p.dataset.clone()).unwrap_or_default(),
        "fields": p.map(|p| p.fields.clone()).unwrap_or_default(),
        "purpose": p.map(|p| p.purpose.clone()).unwrap_or_default(),
        "justification": a.justification,
        "decided_by_kbo": a.decided_by_kbo,
        "decided_by": a.decided_by,
        "decided_at": a.decided_at.as_ref().map(timestamp_text).unwrap_or_default(),
        "decision_note": a.decision_note,
        "approved_version": a.approved_version,
        "proposed": p.map(auth_json).unwrap_or(Json::Null),
    })
}

pub(crate) fn auth_json(a: &proto::Authorisation) -> Json {
    let proto::Authorisation {
        reference,
        consumer_kbo,
        dataset,
        fields,
        purpose,
        legal_basis,
        issuing_body,
        valid_from,
        valid_until,
        status,
        version,
        updated_at,
        confidential_until,
        check_fields,
        capacities,
        consent_required,
        checks,
        receives_mutations,
    } = a;
    json!({
        "reference": reference,
        "consumer_kbo": consumer_kbo,
        "dataset": dataset,
        "fields": fields,
        "purpose": purpose,
        "legal_basis": legal_basis,
        "issuing_body": issuing_body,
        "valid_from": valid_from,
        "valid_until": valid_until,
        "status": enum_name(proto::AuthorisationStatus::try_from(*status).ok().map(|s| s.as_str_name()), "AUTHORISATION_STATUS_"),
        "version": version,
        "updated_at": updated_at.as_ref().map(timestamp_text),
        "check_fields": check_fields,
        "questions": checks.iter().map(question_text).collect::<Vec<_>>(),
        "capacities": capacities,
        "consent_required": consent_required,
        "receives_mutations": receives_mutations,
        "confidential_until": confidential_until,
    })
}

/// An RFC 3339 time (e.g. 2026-11-01T00:00:00Z) as a protobuf timestamp.
pub(crate) fn parse_time(text: &str) -> Result<prost_types::Timestamp, CallError> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            usage(format!(
                "{text}: not an RFC 3339 time such as 2026-11-01T00:00:00Z: {e}"
            ))
        })?;
    Ok(prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    })
}

pub(crate) fn timestamp_text(t: &prost_types::Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp(t.seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub(crate) fn audit_json(e: &proto::AuditEntry) -> Json {
    let proto::AuditEntry {
        sequence,
        request_id,
        time,
        consumer_kbo,
        citizen,
        dataset,
        fields_requested,
        fields_returned,
        purpose,
        authorisation_reference,
        decision,
        reason,
        outcome,
        source_kbo,
        consumer_reference,
        reference_date,
        end_user,
        previous_hash,
        entry_hash,
        operation,
        encoding,
        citizen_as_given,
        checks,
        detail,
        authorisation_version,
    } = e;
    json!({
        "sequence": sequence,
        "request_id": request_id,
        "time": time.as_ref().map(timestamp_text).unwrap_or_default(),
        "operation": operation,
        "consumer_kbo": consumer_kbo,
        "end_user": end_user,
        "citizen": citizen,
        "citizen_as_given": citizen_as_given,
        "dataset": dataset,
        "fields_requested": fields_requested,
        "fields_returned": fields_returned,
        "checks": checks,
        "purpose": purpose,
        "authorisation_reference": authorisation_reference,
        "authorisation_version": authorisation_version,
        "reference_date": reference_date,
        "decision": enum_name(proto::AuditDecision::try_from(*decision).ok().map(|s| s.as_str_name()), "AUDIT_DECISION_"),
        "reason": reason,
        "detail": detail,
        "outcome": enum_name(proto::AuditOutcome::try_from(*outcome).ok().map(|s| s.as_str_name()), "AUDIT_OUTCOME_"),
        "source_kbo": source_kbo,
        "consumer_reference": consumer_reference,
        "previous_hash": hex(previous_hash),
        "entry_hash": hex(entry_hash),
        "encoding": hex(encoding),
    })
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_keep_every_field_the_api_returns() {
        let d = dataset_json(&proto::Dataset {
            name: "x.y".into(),
            fields: vec![proto::FieldDefinition {
                name: "age".into(),
                description: "in years".into(),
                r#type: proto::FieldType::Int as i32,
            }],
            ..Default::default()
        });
        assert_eq!(d["fields"][0]["type"], "int", "{d}");
        let a = auth_json(&proto::Authorisation {
            reference: "BSC/1".into(),
            check_fields: vec!["nis_code".into()],
            capacities: vec!["RIS_APPLICANT".into()],
            consent_required: true,
            version: 3,
            updated_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        });
        assert_eq!(a["check_fields"][0], "nis_code", "{a}");
        assert_eq!(a["capacities"][0], "RIS_APPLICANT", "{a}");
        assert_eq!(a["consent_required"], true, "{a}");
        assert_eq!(a["version"], 3, "{a}");
        assert_eq!(a["updated_at"], "1970-01-01T00:00:00Z", "{a}");
        let o = org_json(&proto::Organisation {
            created_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        });
        assert_eq!(o["created_at"], "1970-01-01T00:00:00Z", "{o}");
    }
}
