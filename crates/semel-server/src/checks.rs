//! Filtered answers: yes/no questions about a field, answered by the broker
//! from the source's value, so the consumer gets the answer and never the
//! value ("does the main residence lie in commune 21004?", "was taxable
//! income for 2024 below 20,000 euros?").

use std::cmp::Ordering;

use semel_core::{Dataset, FieldName, FieldType};

use crate::error::ApiError;
use crate::proto::{self, CheckAnswer, CheckOperator, value::Kind};

/// The most checks one lookup may ask.
pub const MAX_CHECKS: usize = 16;

/// A check, validated against the dataset.
#[derive(Debug, Clone)]
pub struct Check {
    /// The field fetched from the source (and authorised for checks).
    pub field: FieldName,
    pub operator: CheckOperator,
    pub operand: Operand,
    pub element: Option<Element>,
}

/// Which record of a list field is tested, and which of its fields.
#[derive(Debug, Clone)]
pub struct Element {
    pub key_field: String,
    pub key: Operand,
    pub value_field: String,
}

/// A comparable value.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Text(String),
    Int(i64),
    Bool(bool),
    Date(String),
}

impl Operand {
    fn from_proto(field: &'static str, v: Option<proto::Value>) -> Result<Self, ApiError> {
        let bad = |m: &str| ApiError::invalid(field, "INVALID_CHECK", m.to_owned());
        match v.and_then(|v| v.kind) {
            Some(Kind::StringValue(s)) => Ok(Operand::Text(s)),
            Some(Kind::IntValue(i)) => Ok(Operand::Int(i)),
            Some(Kind::BoolValue(b)) => Ok(Operand::Bool(b)),
            Some(Kind::DateValue(d)) => {
                crate::convert::parse_date(field, &d)?;
                Ok(Operand::Date(d))
            }
            Some(_) => Err(bad(
                "a check compares with a string, int, bool or date value, not a record or a list",
            )),
            None => Err(bad("the check has no value to compare with")),
        }
    }

    fn of(v: &proto::Value) -> Option<Self> {
        match v.kind.as_ref()? {
            Kind::StringValue(s) => Some(Operand::Text(s.clone())),
            Kind::IntValue(i) => Some(Operand::Int(*i)),
            Kind::BoolValue(b) => Some(Operand::Bool(*b)),
            Kind::DateValue(d) => Some(Operand::Date(d.clone())),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Operand::Text(_) => "string",
            Operand::Int(_) => "int",
            Operand::Bool(_) => "bool",
            Operand::Date(_) => "date",
        }
    }

    /// Compares two values of the same type; `None` across types.
    fn compare(&self, other: &Operand) -> Option<Ordering> {
        match (self, other) {
            (Operand::Text(a), Operand::Text(b)) => Some(a.cmp(b)),
            (Operand::Int(a), Operand::Int(b)) => Some(a.cmp(b)),
            (Operand::Bool(a), Operand::Bool(b)) => Some(a.cmp(b)),
            // ISO 8601 dates order as text.
            (Operand::Date(a), Operand::Date(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

fn ordered(op: CheckOperator) -> bool {
    !matches!(op, CheckOperator::Equals | CheckOperator::NotEquals)
}

/// Validates a lookup's checks against the dataset's fields.
pub fn validate(checks: Vec<proto::Check>, dataset: &Dataset) -> Result<Vec<Check>, ApiError> {
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
            let bad = |m: String| ApiError::invalid("checks", "INVALID_CHECK", m);
            let name = FieldName::new(field)
                .map_err(|e| ApiError::invalid("checks", "INVALID_ARGUMENT", format!("checks: {e}")))?;
            let def = dataset.field(name.as_str()).ok_or_else(|| {
                ApiError::invalid(
                    "checks",
                    "UNKNOWN_FIELD",
                    format!("dataset {} has no field {name}", dataset.name),
                )
                .with("field", name.to_string())
            })?;
            let operator = match CheckOperator::try_from(operator) {
                Ok(CheckOperator::Unspecified) | Err(_) => {
                    return Err(bad(format!("the check on {name} names no known operator")));
                }
                Ok(op) => op,
            };
            let mut operand = Operand::from_proto("checks", operand)?;
            // A code such as a NIS code is text that reads as a number.
            if let (FieldType::String, Operand::Int(i)) = (def.field_type, &operand) {
                operand = Operand::Text(i.to_string());
            }
            let element = match (def.field_type, element) {
                (FieldType::List, Some(e)) => {
                    let key = Operand::from_proto("checks", e.key)?;
                    for f in [&e.key_field, &e.value_field] {
                        FieldName::new(f.clone()).map_err(|err| {
                            bad(format!("the element of the check on {name}: {err}"))
                        })?;
                    }
                    Some(Element {
                        key_field: e.key_field,
                        key,
                        value_field: e.value_field,
                    })
                }
                (FieldType::List, None) => {
                    return Err(bad(format!(
                        "{name} is a list: say which element is tested (element.key_field, element.key, element.value_field)"
                    )));
                }
                (FieldType::Record, _) => {
                    return Err(bad(format!("{name} is a record; it cannot be checked")));
                }
                (_, Some(_)) => {
                    return Err(bad(format!(
                        "{name} is not a list: leave element out"
                    )));
                }
                (t, None) => {
                    let fits = matches!(
                        (t, &operand),
                        (FieldType::String, Operand::Text(_))
                            | (FieldType::Int, Operand::Int(_))
                            | (FieldType::Bool, Operand::Bool(_))
                            | (FieldType::Date, Operand::Date(_))
                    );
                    if !fits {
                        return Err(bad(format!(
                            "{name} cannot be compared with a {} value",
                            operand.type_name()
                        )));
                    }
                    None
                }
            };
            if ordered(operator) && matches!(operand, Operand::Text(_) | Operand::Bool(_)) {
                return Err(bad(format!(
                    "a {} value compares for equality only (EQUALS, NOT_EQUALS)",
                    operand.type_name()
                )));
            }
            Ok(Check {
                field: name,
                operator,
                operand,
                element,
            })
        })
        .collect()
}

impl Check {
    /// The answer, from the source's value of the field.
    pub fn answer(&self, value: Option<&proto::Value>) -> CheckAnswer {
        let value = match (&self.element, value) {
            (_, None) => return CheckAnswer::Unknown,
            (None, Some(v)) => Operand::of(v),
            (Some(e), Some(v)) => element_value(e, v),
        };
        let Some(ordering) = value.as_ref().and_then(|v| v.compare(&self.operand)) else {
            return CheckAnswer::Unknown;
        };
        let yes = match self.operator {
            CheckOperator::Equals => ordering == Ordering::Equal,
            CheckOperator::NotEquals => ordering != Ordering::Equal,
            CheckOperator::LessThan => ordering == Ordering::Less,
            CheckOperator::LessOrEqual => ordering != Ordering::Greater,
            CheckOperator::GreaterThan => ordering == Ordering::Greater,
            CheckOperator::GreaterOrEqual => ordering != Ordering::Less,
            CheckOperator::Unspecified => return CheckAnswer::Unknown,
        };
        if yes {
            CheckAnswer::Yes
        } else {
            CheckAnswer::No
        }
    }
}

/// The `value_field` of the first record of a list whose `key_field` equals
/// the key.
fn element_value(e: &Element, list: &proto::Value) -> Option<Operand> {
    let Some(Kind::ListValue(list)) = &list.kind else {
        return None;
    };
    list.values.iter().find_map(|item| {
        let Some(Kind::RecordValue(record)) = &item.kind else {
            return None;
        };
        let key = record.fields.get(&e.key_field).and_then(Operand::of)?;
        (key == e.key)
            .then(|| record.fields.get(&e.value_field).and_then(Operand::of))
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

    #[test]
    fn scalar_and_element_answers() {
        let nis = Check {
            field: FieldName::new("nis_code").expect("f"),
            operator: CheckOperator::Equals,
            operand: Operand::Text("21004".into()),
            element: None,
        };
        assert_eq!(nis.answer(Some(&text("21004"))), CheckAnswer::Yes);
        assert_eq!(nis.answer(Some(&text("21015"))), CheckAnswer::No);
        assert_eq!(nis.answer(None), CheckAnswer::Unknown);
        assert_eq!(nis.answer(Some(&int(21004))), CheckAnswer::Unknown);

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
        let below = |year: i64, cents: i64| Check {
            field: FieldName::new("income_years").expect("f"),
            operator: CheckOperator::LessThan,
            operand: Operand::Int(cents),
            element: Some(Element {
                key_field: "income_year".into(),
                key: Operand::Int(year),
                value_field: "taxable_income_cents".into(),
            }),
        };
        assert_eq!(
            below(2024, 2_000_000).answer(Some(&years)),
            CheckAnswer::Yes
        );
        assert_eq!(below(2023, 2_000_000).answer(Some(&years)), CheckAnswer::No);
        assert_eq!(below(2024, 1_500_000).answer(Some(&years)), CheckAnswer::No);
        assert_eq!(
            below(2019, 2_000_000).answer(Some(&years)),
            CheckAnswer::Unknown
        );
    }
}
