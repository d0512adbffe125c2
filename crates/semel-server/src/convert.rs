//! Conversions between protobuf messages and `semel_core` types, at the
//! edge. Incoming messages are destructured exhaustively, so a new proto
//! field is a compile error here rather than a silent drop.

use std::collections::BTreeSet;

use semel_core::{
    AuditDecision, AuditEntry, Authorisation, AuthorisationRef, AuthorisationStatus, CapacityCode,
    CheckOp, CheckRule, Dataset, DatasetName, ElementPath, FieldDefinition, FieldName, FieldType,
    Kbo, Operand, Organisation, OrganisationStatus, Outcome, PurposeCode, Role,
};
use semel_store::StoredEntry;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use crate::error::ApiError;
use crate::proto::{self, CheckOperator, value::Kind};

pub const DATE_FORMAT: &[BorrowedFormatItem<'static>] = format_description!("[year]-[month]-[day]");

pub fn parse_date(field: &'static str, s: &str) -> Result<Date, ApiError> {
    Date::parse(s, DATE_FORMAT).map_err(|_| {
        ApiError::invalid(
            field,
            "INVALID_DATE",
            format!("{field} must be a date written YYYY-MM-DD"),
        )
    })
}

pub fn format_date(d: Date) -> String {
    d.format(DATE_FORMAT).unwrap_or_default()
}

/// Reads an operand sent by a client (`field` names it in errors).
pub fn operand_from_proto(
    field: &'static str,
    v: Option<proto::Value>,
) -> Result<Operand, ApiError> {
    let bad = |m: &str| ApiError::invalid(field, "INVALID_CHECK", m.to_owned());
    match v.and_then(|v| v.kind) {
        Some(Kind::StringValue(s)) => Ok(Operand::Text(s)),
        Some(Kind::IntValue(i)) => Ok(Operand::Int(i)),
        Some(Kind::BoolValue(b)) => Ok(Operand::Bool(b)),
        Some(Kind::DateValue(d)) => {
            parse_date(field, &d)?;
            Ok(Operand::Date(d))
        }
        Some(_) => Err(bad(
            "a check compares with a string, int, bool or date value, not a record or a list",
        )),
        None => Err(bad("the check has no value to compare with")),
    }
}

/// The operand as a protobuf value (for authorisations' named questions).
pub fn operand_to_proto(o: &Operand) -> proto::Value {
    proto::Value {
        kind: Some(match o {
            Operand::Text(s) => Kind::StringValue(s.clone()),
            Operand::Int(i) => Kind::IntValue(*i),
            Operand::Bool(b) => Kind::BoolValue(*b),
            Operand::Date(d) => Kind::DateValue(d.clone()),
        }),
    }
}

/// The core operator of a protobuf one.
pub fn op_from_proto(op: i32) -> Option<CheckOp> {
    Some(match CheckOperator::try_from(op).ok()? {
        CheckOperator::Unspecified => return None,
        CheckOperator::Equals => CheckOp::Equals,
        CheckOperator::NotEquals => CheckOp::NotEquals,
        CheckOperator::LessThan => CheckOp::LessThan,
        CheckOperator::LessOrEqual => CheckOp::LessOrEqual,
        CheckOperator::GreaterThan => CheckOp::GreaterThan,
        CheckOperator::GreaterOrEqual => CheckOp::GreaterOrEqual,
    })
}

pub fn op_to_proto(op: CheckOp) -> CheckOperator {
    match op {
        CheckOp::Equals => CheckOperator::Equals,
        CheckOp::NotEquals => CheckOperator::NotEquals,
        CheckOp::LessThan => CheckOperator::LessThan,
        CheckOp::LessOrEqual => CheckOperator::LessOrEqual,
        CheckOp::GreaterThan => CheckOperator::GreaterThan,
        CheckOp::GreaterOrEqual => CheckOperator::GreaterOrEqual,
    }
}

pub fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    }
}

pub fn timestamp_micros(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

pub fn micros(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(t.nanos / 1000))
}

pub fn parse_kbo(field: &'static str, s: &str) -> Result<Kbo, ApiError> {
    Kbo::parse(s)
        .map_err(|e| ApiError::invalid(field, "INVALID_ENTERPRISE_NUMBER", format!("{field}: {e}")))
}

fn name<T>(field: &'static str, r: Result<T, semel_core::NameError>) -> Result<T, ApiError> {
    r.map_err(|e| ApiError::invalid(field, "INVALID_ARGUMENT", format!("{field}: {e}")))
}

pub(crate) fn text(field: &'static str, s: String, max: usize) -> Result<String, ApiError> {
    let t = s.trim();
    if t.is_empty() || t.chars().count() > max || t.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "INVALID_ARGUMENT",
            format!("{field} must be 1 to {max} characters of text"),
        ));
    }
    Ok(t.to_owned())
}

// ---- organisations ----

pub(crate) fn role_from_proto(r: i32) -> Result<Role, ApiError> {
    match proto::OrganisationRole::try_from(r) {
        Ok(proto::OrganisationRole::Source) => Ok(Role::Source),
        Ok(proto::OrganisationRole::Consumer) => Ok(Role::Consumer),
        Ok(proto::OrganisationRole::Operator) => Ok(Role::Operator),
        Ok(proto::OrganisationRole::Auditor) => Ok(Role::Auditor),
        Ok(proto::OrganisationRole::CitizenPortal) => Ok(Role::CitizenPortal),
        _ => Err(ApiError::invalid(
            "organisation.roles",
            "INVALID_ARGUMENT",
            "roles must be SOURCE, CONSUMER or OPERATOR",
        )),
    }
}

pub(crate) fn role_to_proto(r: Role) -> i32 {
    (match r {
        Role::Source => proto::OrganisationRole::Source,
        Role::Consumer => proto::OrganisationRole::Consumer,
        Role::Operator => proto::OrganisationRole::Operator,
        Role::Auditor => proto::OrganisationRole::Auditor,
        Role::CitizenPortal => proto::OrganisationRole::CitizenPortal,
    }) as i32
}

/// A new organisation from a create request.
pub fn organisation_from_proto(
    p: proto::Organisation,
    now: OffsetDateTime,
) -> Result<Organisation, ApiError> {
    let proto::Organisation {
        kbo,
        name,
        roles,
        status: _,
        created_at: _,
    } = p;
    let roles: BTreeSet<Role> = roles
        .into_iter()
        .map(role_from_proto)
        .collect::<Result<_, _>>()?;
    if roles.is_empty() {
        return Err(ApiError::invalid(
            "organisation.roles",
            "INVALID_ARGUMENT",
            "an organisation needs at least one role",
        ));
    }
    Ok(Organisation {
        kbo: parse_kbo("organisation.kbo", &kbo)?,
        name: text("organisation.name", name, 200)?,
        roles,
        status: OrganisationStatus::Active,
        created_at: now,
    })
}

pub fn organisation_to_proto(o: &Organisation) -> proto::Organisation {
    proto::Organisation {
        kbo: o.kbo.as_str().to_owned(),
        name: o.name.clone(),
        roles: o.roles.iter().map(|r| role_to_proto(*r)).collect(),
        status: match o.status {
            OrganisationStatus::Active => proto::OrganisationStatus::Active,
            OrganisationStatus::Suspended => proto::OrganisationStatus::Suspended,
        } as i32,
        created_at: Some(timestamp(o.created_at)),
    }
}

// ---- datasets ----

fn field_type_from_proto(t: i32) -> Result<FieldType, ApiError> {
    use proto::FieldType as P;
    Ok(match P::try_from(t) {
        Ok(P::String) => FieldType::String,
        Ok(P::Int) => FieldType::Int,
        Ok(P::Bool) => FieldType::Bool,
        Ok(P::Date) => FieldType::Date,
        Ok(P::Record) => FieldType::Record,
        Ok(P::List) => FieldType::List,
        _ => {
            return Err(ApiError::invalid(
                "dataset.fields.type",
                "INVALID_ARGUMENT",
                "each field needs a type",
            ));
        }
    })
}

fn field_type_to_proto(t: FieldType) -> i32 {
    use proto::FieldType as P;
    (match t {
        FieldType::String => P::String,
        FieldType::Int => P::Int,
        FieldType::Bool => P::Bool,
        FieldType::Date => P::Date,
        FieldType::Record => P::Record,
        FieldType::List => P::List,
    }) as i32
}

pub fn dataset_from_proto(p: proto::Dataset) -> Result<Dataset, ApiError> {
    let proto::Dataset {
        name: ds_name,
        source_kbo,
        description,
        fields,
        endpoint,
        keeps_history,
        withdrawn,
    } = p;
    let mut seen = BTreeSet::new();
    let fields = fields
        .into_iter()
        .map(|f| {
            let proto::FieldDefinition {
                name: n,
                description,
                r#type,
            } = f;
            let n = name("dataset.fields.name", FieldName::new(n))?;
            if !seen.insert(n.clone()) {
                return Err(ApiError::invalid(
                    "dataset.fields",
                    "INVALID_ARGUMENT",
                    format!("field {n} is listed twice"),
                ));
            }
            Ok(FieldDefinition {
                name: n,
                description: text("dataset.fields.description", description, 500)?,
                field_type: field_type_from_proto(r#type)?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if fields.is_empty() {
        return Err(ApiError::invalid(
            "dataset.fields",
            "INVALID_ARGUMENT",
            "a dataset needs at least one field",
        ));
    }
    if !endpoint.starts_with("https://") {
        return Err(ApiError::invalid(
            "dataset.endpoint",
            "INVALID_ENDPOINT",
            "the source endpoint must be an https:// address (sources are called over mutual TLS)",
        ));
    }
    // An address the broker cannot dial would fail every reload of the
    // registry, on every broker: refused here, where it is given.
    let usable = endpoint.len() <= 500
        && endpoint
            .parse::<tonic::codegen::http::Uri>()
            .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()))
        && tonic::transport::Endpoint::from_shared(endpoint.clone()).is_ok();
    if !usable {
        return Err(ApiError::invalid(
            "dataset.endpoint",
            "INVALID_ENDPOINT",
            "the source endpoint is not a valid address: write https://host:port",
        ));
    }
    Ok(Dataset {
        name: name("dataset.name", DatasetName::new(ds_name))?,
        source: parse_kbo("dataset.source_kbo", &source_kbo)?,
        description: text("dataset.description", description, 500)?,
        fields,
        endpoint,
        keeps_history,
        withdrawn,
    })
}

pub fn dataset_to_proto(d: &Dataset) -> proto::Dataset {
    proto::Dataset {
        name: d.name.to_string(),
        source_kbo: d.source.as_str().to_owned(),
        description: d.description.clone(),
        fields: d.fields.iter().map(field_to_proto).collect(),
        endpoint: d.endpoint.clone(),
        keeps_history: d.keeps_history,
        withdrawn: d.withdrawn,
    }
}

pub fn field_to_proto(f: &semel_core::FieldDefinition) -> proto::FieldDefinition {
    proto::FieldDefinition {
        name: f.name.to_string(),
        description: f.description.clone(),
        r#type: field_type_to_proto(f.field_type),
    }
}

// ---- authorisations ----

pub fn authorisation_from_proto(
    p: proto::Authorisation,
    now: OffsetDateTime,
) -> Result<Authorisation, ApiError> {
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
        status: _,
        version: _,
        updated_at: _,
        confidential_until,
        check_fields,
        capacities,
        consent_required,
        checks,
        receives_mutations,
    } = p;
    let confidential_until = if confidential_until.is_empty() {
        None
    } else {
        Some(parse_date(
            "authorisation.confidential_until",
            &confidential_until,
        )?)
    };
    let fields: BTreeSet<FieldName> = fields
        .into_iter()
        .map(|f| name("authorisation.fields", FieldName::new(f)))
        .collect::<Result<_, _>>()?;
    let check_fields: BTreeSet<FieldName> = check_fields
        .into_iter()
        .map(|f| name("authorisation.check_fields", FieldName::new(f)))
        .collect::<Result<_, _>>()?;
    let checks = checks
        .into_iter()
        .map(check_rule_from_proto)
        .collect::<Result<Vec<_>, _>>()?;
    if fields.is_empty() && check_fields.is_empty() && checks.is_empty() {
        return Err(ApiError::invalid(
            "authorisation.fields",
            "INVALID_ARGUMENT",
            "an authorisation allows at least one field, to read or to check",
        ));
    }
    let capacities: BTreeSet<CapacityCode> = capacities
        .into_iter()
        .map(|c| name("authorisation.capacities", CapacityCode::new(c)))
        .collect::<Result<_, _>>()?;
    let valid_from = parse_date("authorisation.valid_from", &valid_from)?;
    let valid_until = if valid_until.is_empty() {
        None
    } else {
        Some(parse_date("authorisation.valid_until", &valid_until)?)
    };
    if valid_until.is_some_and(|u| u < valid_from) {
        return Err(ApiError::invalid(
            "authorisation.valid_until",
            "INVALID_ARGUMENT",
            "valid_until is before valid_from",
        ));
    }
    Ok(Authorisation {
        reference: name("authorisation.reference", AuthorisationRef::new(reference))?,
        consumer: parse_kbo("authorisation.consumer_kbo", &consumer_kbo)?,
        dataset: name("authorisation.dataset", DatasetName::new(dataset))?,
        fields,
        purpose: name("authorisation.purpose", PurposeCode::new(purpose))?,
        legal_basis: text("authorisation.legal_basis", legal_basis, 500)?,
        issuing_body: text("authorisation.issuing_body", issuing_body, 200)?,
        valid_from,
        valid_until,
        status: AuthorisationStatus::Active,
        version: 1,
        updated_at: now,
        confidential_until,
        check_fields,
        checks,
        capacities,
        consent_required,
        receives_mutations,
    })
}

fn check_rule_from_proto(r: proto::CheckRule) -> Result<CheckRule, ApiError> {
    let proto::CheckRule {
        name: rule_name,
        field,
        element_key_field,
        element_value_field,
        operator,
        operand,
    } = r;
    let bad = |m: String| ApiError::invalid("authorisation.checks", "INVALID_CHECK", m);
    let field = name("authorisation.checks", FieldName::new(field))?;
    let element = match (element_key_field.is_empty(), element_value_field.is_empty()) {
        (true, true) => None,
        (false, false) => Some(ElementPath {
            key_field: name("authorisation.checks", FieldName::new(element_key_field))?,
            value_field: name("authorisation.checks", FieldName::new(element_value_field))?,
        }),
        _ => {
            return Err(bad(format!(
                "the question on {field} names the element's key field or value field, not both"
            )));
        }
    };
    let op = op_from_proto(operator)
        .ok_or_else(|| bad(format!("the question on {field} names no known operator")))?;
    let operand = operand
        .map(|v| operand_from_proto("authorisation.checks", Some(v)))
        .transpose()?;
    let rule = CheckRule {
        name: text("authorisation.checks", rule_name, 100)?,
        field,
        element,
        op,
        operand,
    };
    if let Some(problem) = rule.problem() {
        return Err(bad(problem));
    }
    Ok(rule)
}

fn check_rule_to_proto(r: &CheckRule) -> proto::CheckRule {
    let (key, value) = r
        .element
        .as_ref()
        .map_or((String::new(), String::new()), |e| {
            (e.key_field.to_string(), e.value_field.to_string())
        });
    proto::CheckRule {
        name: r.name.clone(),
        field: r.field.to_string(),
        element_key_field: key,
        element_value_field: value,
        operator: op_to_proto(r.op) as i32,
        operand: r.operand.as_ref().map(operand_to_proto),
    }
}

pub fn authorisation_to_proto(a: &Authorisation) -> proto::Authorisation {
    proto::Authorisation {
        reference: a.reference.to_string(),
        consumer_kbo: a.consumer.as_str().to_owned(),
        dataset: a.dataset.to_string(),
        fields: a.fields.iter().map(ToString::to_string).collect(),
        purpose: a.purpose.to_string(),
        legal_basis: a.legal_basis.clone(),
        issuing_body: a.issuing_body.clone(),
        valid_from: format_date(a.valid_from),
        valid_until: a.valid_until.map(format_date).unwrap_or_default(),
        status: match a.status {
            AuthorisationStatus::Active => proto::AuthorisationStatus::Active,
            AuthorisationStatus::Suspended => proto::AuthorisationStatus::Suspended,
            AuthorisationStatus::Revoked => proto::AuthorisationStatus::Revoked,
        } as i32,
        version: a.version,
        updated_at: Some(timestamp(a.updated_at)),
        confidential_until: a.confidential_until.map(format_date).unwrap_or_default(),
        check_fields: a.check_fields.iter().map(ToString::to_string).collect(),
        capacities: a.capacities.iter().map(ToString::to_string).collect(),
        consent_required: a.consent_required,
        checks: a.checks.iter().map(check_rule_to_proto).collect(),
        receives_mutations: a.receives_mutations,
    }
}

// ---- audit ----

pub fn decision_to_proto(d: AuditDecision) -> i32 {
    let d = match d {
        AuditDecision::Allowed => proto::AuditDecision::Allowed,
        AuditDecision::Refused => proto::AuditDecision::Refused,
    };
    d as i32
}

pub fn audit_entry_to_proto(s: &StoredEntry) -> proto::AuditEntry {
    let AuditEntry {
        sequence,
        previous_hash,
        record: r,
        format: _,
    } = &s.entry;
    proto::AuditEntry {
        sequence: *sequence,
        request_id: uuid::Uuid::from_bytes(r.request_id).to_string(),
        time: Some(timestamp_micros(r.time_micros)),
        consumer_kbo: r.consumer.as_str().to_owned(),
        citizen: r.citizen.map(|n| n.as_str().to_owned()).unwrap_or_default(),
        dataset: r.dataset.clone(),
        fields_requested: r.fields_requested.clone(),
        fields_returned: r.fields_returned.clone(),
        purpose: r.purpose.clone(),
        authorisation_reference: r.authorisation.clone().unwrap_or_default(),
        decision: decision_to_proto(r.decision),
        reason: r.reason.map(|c| c.as_str().to_owned()).unwrap_or_default(),
        outcome: match r.outcome {
            Outcome::Answered => proto::AuditOutcome::Answered,
            Outcome::NoData => proto::AuditOutcome::NoData,
            Outcome::NotForwarded => proto::AuditOutcome::NotForwarded,
            Outcome::SourceUnavailable => proto::AuditOutcome::SourceUnavailable,
            Outcome::SourceTimeout => proto::AuditOutcome::SourceTimeout,
            Outcome::SourceError => proto::AuditOutcome::SourceError,
        } as i32,
        source_kbo: r.source.map(|k| k.as_str().to_owned()).unwrap_or_default(),
        consumer_reference: r.consumer_reference.clone(),
        reference_date: r.reference_date.clone().unwrap_or_default(),
        end_user: r.end_user.clone().unwrap_or_default(),
        previous_hash: previous_hash.to_vec(),
        entry_hash: s.hash.to_vec(),
        operation: r.operation.to_string(),
        encoding: Vec::new(),
        citizen_as_given: r
            .citizen_as_given
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default(),
        checks: r.checks.clone(),
        detail: r.detail.clone(),
        authorisation_version: r.authorisation_version.unwrap_or(0),
    }
}

// ---- purposes ----

pub fn purpose_from_proto(p: proto::Purpose) -> Result<semel_core::Purpose, ApiError> {
    let proto::Purpose {
        code,
        description,
        legal_basis,
    } = p;
    Ok(semel_core::Purpose {
        code: name("purpose.code", PurposeCode::new(code))?,
        description: text("purpose.description", description, 500)?,
        legal_basis: text("purpose.legal_basis", legal_basis, 500)?,
    })
}

pub fn purpose_to_proto(p: &semel_core::Purpose) -> proto::Purpose {
    proto::Purpose {
        code: p.code.to_string(),
        description: p.description.clone(),
        legal_basis: p.legal_basis.clone(),
    }
}
