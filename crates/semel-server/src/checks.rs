//! Filtered answers: yes/no questions about a field, answered by the broker
//! from the source's value, so the consumer gets the answer and never the
//! value ("does the main residence lie in commune 21004?", "was taxable
//! income for 2024 below 20,000 euros?").

use std::cmp::Ordering;

use semel_core::{CheckOp, Dataset, ElementPath, FieldName, FieldType, Operand, Question};

use crate::convert::{op_from_proto, operand_from_proto};
use crate::error::ApiError;
use crate::proto::{self, CheckAnswer, value::Kind};

/// The most checks one lookup may ask.
pub const MAX_CHECKS: usize = 16;

fn scalar(v: &proto::Value) -> Option<Operand> {
    match v.kind.as_ref()? {
        Kind::StringValue(s) => Some(Operand::Text(s.clone())),
        Kind::IntValue(i) => Some(Operand::Int(*i)),
        Kind::BoolValue(b) => Some(Operand::Bool(*b)),
        Kind::DateValue(d) => Some(Operand::Date(d.clone())),
        _ => None,
    }
}

/// Whether a scalar field of this type can hold the operand, after a code
/// such as a NIS code (text that reads as a number) is read as text.
fn fit(t: FieldType, operand: Operand) -> Result<Operand, Operand> {
    match (t, operand) {
        (FieldType::String, Operand::Int(i)) => Ok(Operand::Text(i.to_string())),
        (FieldType::String, o @ Operand::Text(_))
        | (FieldType::Int, o @ Operand::Int(_))
        | (FieldType::Bool, o @ Operand::Bool(_))
        | (FieldType::Date, o @ Operand::Date(_)) => Ok(o),
        (_, o) => Err(o),
    }
}

/// Validates a question's shape against the dataset: the field exists, a
/// list names its element, a scalar does not, and the operand fits. The
/// element's own fields are not described by the dataset, so they are
/// matched against the authorisation's named questions in `decide()`.
pub fn question(
    dataset: &Dataset,
    field: FieldName,
    element: Option<(ElementPath, Operand)>,
    op: CheckOp,
    operand: Operand,
) -> Result<Question, ApiError> {
    let bad = |m: String| ApiError::invalid("checks", "INVALID_CHECK", m);
    let def = dataset.field(field.as_str()).ok_or_else(|| {
        ApiError::invalid(
            "checks",
            "UNKNOWN_FIELD",
            format!("dataset {} has no field {field}", dataset.name),
        )
        .with("field", field.to_string())
    })?;
    let operand = match (def.field_type, &element) {
        (FieldType::List, Some(_)) => operand,
        (FieldType::List, None) => {
            return Err(bad(format!(
                "{field} is a list: say which element is tested (element.key_field, element.key, element.value_field)"
            )));
        }
        (FieldType::Record, _) => {
            return Err(bad(format!("{field} is a record; it cannot be checked")));
        }
        (_, Some(_)) => return Err(bad(format!("{field} is not a list: leave element out"))),
        (t, None) => fit(t, operand).map_err(|o| {
            bad(format!(
                "{field} cannot be compared with a {} value",
                o.type_name()
            ))
        })?,
    };
    if op.is_ordered() && !operand.is_ordered() {
        return Err(bad(format!(
            "a {} value compares for equality only (EQUALS, NOT_EQUALS)",
            operand.type_name()
        )));
    }
    Ok(Question {
        field,
        element,
        op,
        operand,
    })
}

/// Validates a lookup's checks against the dataset's fields.
pub fn validate(checks: Vec<proto::Check>, dataset: &Dataset) -> Result<Vec<Question>, ApiError> {
    if checks.len() > MAX_CHECKS {
        return Err(ApiError::invalid(
            "checks",
            "INVALID_ARGUMENT",
            format!("at most {MAX_CHECKS} checks per lookup"),
        ));
    }
    checks
        .into_iter()
        .map(|c| {
            let proto::Check {
                field,
                operator,
                operand,
                element,
            } = c;
            let name = FieldName::new(field).map_err(|e| {
                ApiError::invalid("checks", "INVALID_ARGUMENT", format!("checks: {e}"))
            })?;
            let op = op_from_proto(operator).ok_or_else(|| {
                ApiError::invalid(
                    "checks",
                    "INVALID_CHECK",
                    format!("the check on {name} names no known operator"),
                )
            })?;
            let operand = operand_from_proto("checks", operand)?;
            let element = element
                .map(|e| {
                    let path = |f: String| {
                        FieldName::new(f).map_err(|err| {
                            ApiError::invalid(
                                "checks",
                                "INVALID_CHECK",
                                format!("the element of the check on {name}: {err}"),
                            )
                        })
                    };
                    let key = operand_from_proto("checks", e.key)?;
                    Ok::<_, ApiError>((
                        ElementPath {
                            key_field: path(e.key_field)?,
                            value_field: path(e.value_field)?,
                        },
                        key,
                    ))
                })
                .transpose()?;
            question(dataset, name, element, op, operand)
        })
        .collect()
}

/// The answer to a question, from the source's value of the field.
pub fn answer(q: &Question, value: Option<&proto::Value>) -> CheckAnswer {
    let value = match (&q.element, value) {
        (_, None) => return CheckAnswer::Unknown,
        (None, Some(v)) => scalar(v),
        (Some((path, key)), Some(v)) => element_value(path, key, v),
    };
    let Some(ordering) = value.as_ref().and_then(|v| v.compare(&q.operand)) else {
        return CheckAnswer::Unknown;
    };
    let yes = match q.op {
        CheckOp::Equals => ordering == Ordering::Equal,
        CheckOp::NotEquals => ordering != Ordering::Equal,
        CheckOp::LessThan => ordering == Ordering::Less,
        CheckOp::LessOrEqual => ordering != Ordering::Greater,
        CheckOp::GreaterThan => ordering == Ordering::Greater,
        CheckOp::GreaterOrEqual => ordering != Ordering::Less,
    };
    if yes {
        CheckAnswer::Yes
    } else {
        CheckAnswer::No
    }
}

/// The answer as the audit entry records it.
pub fn answer_word(a: CheckAnswer) -> &'static str {
    match a {
        CheckAnswer::Yes => "YES",
        CheckAnswer::No => "NO",
        CheckAnswer::Unknown | CheckAnswer::Unspecified => "UNKNOWN",
    }
}

/// The `value_field` of the first record of a list whose `key_field` equals
/// the key.
fn element_value(path: &ElementPath, key: &Operand, list: &proto::Value) -> Option<Operand> {
    let Some(Kind::ListValue(list)) = &list.kind else {
        return None;
    };
    list.values.iter().find_map(|item| {
        let Some(Kind::RecordValue(record)) = &item.kind else {
            return None;
        };
        let k = record
            .fields
            .get(path.key_field.as_str())
            .and_then(scalar)?;
        (&k == key)
            .then(|| {
                record
                    .fields
                    .get(path.value_field.as_str())
                    .and_then(scalar)
            })
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(i: i64) -> proto::Value {
        proto::Value {
            kind: Some(Kind::IntValue(i)),
        }
    }

    fn text(s: &str) -> proto::Value {
        proto::Value {
            kind: Some(Kind::StringValue(s.into())),
        }
    }

    fn record(pairs: &[(&str, proto::Value)]) -> proto::Value {
        proto::Value {
            kind: Some(Kind::RecordValue(proto::Record {
                fields: pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
            })),
        }
    }

    fn f(s: &str) -> FieldName {
        FieldName::new(s).expect("field")
    }

    #[test]
    fn scalar_and_element_answers() {
        let nis = Question {
            field: f("nis_code"),
            element: None,
            op: CheckOp::Equals,
            operand: Operand::Text("21004".into()),
        };
        assert_eq!(answer(&nis, Some(&text("21004"))), CheckAnswer::Yes);
        assert_eq!(answer(&nis, Some(&text("21015"))), CheckAnswer::No);
        assert_eq!(answer(&nis, None), CheckAnswer::Unknown);
        assert_eq!(answer(&nis, Some(&int(21004))), CheckAnswer::Unknown);

        let years = proto::Value {
            kind: Some(Kind::ListValue(proto::ValueList {
                values: vec![
                    record(&[
                        ("income_year", int(2023)),
                        ("taxable_income_cents", int(3_000_000)),
                    ]),
                    record(&[
                        ("income_year", int(2024)),
                        ("taxable_income_cents", int(1_500_000)),
                    ]),
                ],
            })),
        };
        let below = |year: i64, cents: i64| Question {
            field: f("income_years"),
            element: Some((
                ElementPath {
                    key_field: f("income_year"),
                    value_field: f("taxable_income_cents"),
                },
                Operand::Int(year),
            )),
            op: CheckOp::LessThan,
            operand: Operand::Int(cents),
        };
        assert_eq!(
            answer(&below(2024, 2_000_000), Some(&years)),
            CheckAnswer::Yes
        );
        assert_eq!(
            answer(&below(2023, 2_000_000), Some(&years)),
            CheckAnswer::No
        );
        assert_eq!(
            answer(&below(2024, 1_500_000), Some(&years)),
            CheckAnswer::No
        );
        assert_eq!(
            answer(&below(2019, 2_000_000), Some(&years)),
            CheckAnswer::Unknown
        );
    }
}
