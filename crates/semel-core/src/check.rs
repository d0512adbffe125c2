//! Yes/no questions about a field ("filtered answers"), and the questions an
//! authorisation names.
//!
//! A consumer that may not read a value may still be allowed to ask about
//! it: "does the pupil live in commune 21015?", "was taxable income for 2024
//! below the social-housing ceiling?". Asked freely, ordered comparisons
//! give the value away by bisection, and equality on a short list by
//! enumeration. So, as the CBSS's filtered services do, the authorisation
//! names the questions ([`CheckRule`]): the field (and for a list of
//! records, which key selects the element and which of its fields is
//! compared), the operator, and the threshold. Only equality may leave the
//! operand to the consumer, and the broker bounds how many different
//! questions one consumer asks about one citizen.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::FieldName;

/// How a value is compared with the operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckOp {
    Equals,
    NotEquals,
    LessThan,
    LessOrEqual,
    GreaterThan,
    GreaterOrEqual,
}

impl CheckOp {
    /// Whether the operator compares in order (and so needs an ordered operand).
    pub fn is_ordered(self) -> bool {
        !matches!(self, CheckOp::Equals | CheckOp::NotEquals)
    }

    /// The operator as written in audit entries and on the command line.
    pub fn symbol(self) -> &'static str {
        match self {
            CheckOp::Equals => "=",
            CheckOp::NotEquals => "!=",
            CheckOp::LessThan => "<",
            CheckOp::LessOrEqual => "<=",
            CheckOp::GreaterThan => ">",
            CheckOp::GreaterOrEqual => ">=",
        }
    }
}

/// A value compared with: a scalar.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Operand {
    Text(String),
    Int(i64),
    Bool(bool),
    /// An ISO 8601 date (`YYYY-MM-DD`), which orders as text.
    Date(String),
}

impl Operand {
    pub fn type_name(&self) -> &'static str {
        match self {
            Operand::Text(_) => "string",
            Operand::Int(_) => "int",
            Operand::Bool(_) => "bool",
            Operand::Date(_) => "date",
        }
    }

    /// Compares two values of the same type; `None` across types.
    pub fn compare(&self, other: &Operand) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Operand::Text(a), Operand::Text(b)) => Some(a.cmp(b)),
            (Operand::Int(a), Operand::Int(b)) => Some(a.cmp(b)),
            (Operand::Bool(a), Operand::Bool(b)) => Some(a.cmp(b)),
            (Operand::Date(a), Operand::Date(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    /// Whether the operand may be compared in order.
    pub fn is_ordered(&self) -> bool {
        matches!(self, Operand::Int(_) | Operand::Date(_))
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Quoted, so "21015" (text) and 21015 (int) read differently.
            Operand::Text(s) => write!(f, "{s:?}"),
            Operand::Int(i) => write!(f, "{i}"),
            Operand::Bool(b) => write!(f, "{b}"),
            Operand::Date(d) => write!(f, "{d}"),
        }
    }
}

/// For a list of records: the field that selects the element, and the field
/// of that element that is compared.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ElementPath {
    pub key_field: FieldName,
    pub value_field: FieldName,
}

/// A question a consumer asks, validated against the dataset.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Question {
    pub field: FieldName,
    /// For a list of records: the path, and the key of the element tested.
    pub element: Option<(ElementPath, Operand)>,
    pub op: CheckOp,
    pub operand: Operand,
}

impl Question {
    /// The question in words, as the audit entry records it, e.g.
    /// `income_years[income_year=2024].taxable_income_cents < 2500000`.
    pub fn describe(&self) -> String {
        let mut s = self.field.to_string();
        if let Some((path, key)) = &self.element {
            s = format!("{s}[{}={key}].{}", path.key_field, path.value_field);
        }
        format!("{s} {} {}", self.op.symbol(), self.operand)
    }

    /// The field a question is about, from its description (or from an
    /// older entry, which recorded the field name alone).
    pub fn field_of(description: &str) -> &str {
        let end = description.find(['[', ' ']).unwrap_or(description.len());
        &description[..end]
    }
}

/// A question an authorisation allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRule {
    /// What the deliberation calls it, e.g. `INCOME_BELOW_HOUSING_CEILING`.
    pub name: String,
    pub field: FieldName,
    /// For a list of records: which element (the consumer gives the key) and
    /// which of its fields.
    #[serde(default)]
    pub element: Option<ElementPath>,
    pub op: CheckOp,
    /// The threshold or value the authorisation fixes. `None`: the consumer
    /// gives it, which only equality allows.
    #[serde(default)]
    pub operand: Option<Operand>,
}

impl CheckRule {
    /// Whether this rule allows the question.
    pub fn allows(&self, q: &Question) -> bool {
        self.field == q.field
            && self.element.as_ref() == q.element.as_ref().map(|(path, _)| path)
            && self.op == q.op
            && self.operand.as_ref().is_none_or(|o| o == &q.operand)
    }

    /// Why the rule cannot be: an ordered comparison with an operand the
    /// consumer chooses gives the value away, and an ordered comparison of
    /// text or booleans means nothing.
    pub fn problem(&self) -> Option<String> {
        if self.name.trim().is_empty() {
            return Some(format!("the question on {} needs a name", self.field));
        }
        match &self.operand {
            None if self.op.is_ordered() => Some(format!(
                "question {}: an ordered comparison ({}) needs the threshold fixed by the authorisation",
                self.name,
                self.op.symbol()
            )),
            Some(o) if self.op.is_ordered() && !o.is_ordered() => Some(format!(
                "question {}: a {} value compares for equality only",
                self.name,
                o.type_name()
            )),
            _ => None,
        }
    }

    /// The rule in words, for error messages and listings.
    pub fn describe(&self) -> String {
        let mut s = self.field.to_string();
        if let Some(path) = &self.element {
            s = format!("{s}[{}=…].{}", path.key_field, path.value_field);
        }
        let operand = self
            .operand
            .as_ref()
            .map_or_else(|| "…".to_owned(), ToString::to_string);
        format!("{} ({s} {} {operand})", self.name, self.op.symbol())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> FieldName {
        FieldName::new(s).expect("field")
    }

    fn income_rule() -> CheckRule {
        CheckRule {
            name: "INCOME_BELOW_CEILING".into(),
            field: f("income_years"),
            element: Some(ElementPath {
                key_field: f("income_year"),
                value_field: f("taxable_income_cents"),
            }),
            op: CheckOp::LessThan,
            operand: Some(Operand::Int(2_500_000)),
        }
    }

    fn income_question(key: i64, value_field: &str, cents: i64) -> Question {
        Question {
            field: f("income_years"),
            element: Some((
                ElementPath {
                    key_field: f("income_year"),
                    value_field: f(value_field),
                },
                Operand::Int(key),
            )),
            op: CheckOp::LessThan,
            operand: Operand::Int(cents),
        }
    }

    #[test]
    fn a_rule_allows_its_question_and_no_other() {
        let rule = income_rule();
        assert!(rule.allows(&income_question(2024, "taxable_income_cents", 2_500_000)));
        assert!(rule.allows(&income_question(2023, "taxable_income_cents", 2_500_000)));
        // Another threshold (bisection), another field of the element.
        assert!(!rule.allows(&income_question(2024, "taxable_income_cents", 2_499_999)));
        assert!(!rule.allows(&income_question(2024, "benefit_cents", 2_500_000)));
        let mut ge = income_question(2024, "taxable_income_cents", 2_500_000);
        ge.op = CheckOp::GreaterOrEqual;
        assert!(!rule.allows(&ge));
        assert_eq!(
            income_question(2024, "taxable_income_cents", 2_500_000).describe(),
            "income_years[income_year=2024].taxable_income_cents < 2500000"
        );
        assert_eq!(
            Question::field_of("income_years[income_year=2024].x < 1"),
            "income_years"
        );
        assert_eq!(Question::field_of("nis_code"), "nis_code");
    }

    #[test]
    fn ordered_questions_need_a_fixed_threshold() {
        let mut rule = income_rule();
        assert_eq!(rule.problem(), None);
        rule.operand = None;
        assert!(rule.problem().is_some_and(|p| p.contains("threshold")));
        rule.op = CheckOp::Equals;
        assert_eq!(rule.problem(), None);
        rule.op = CheckOp::LessThan;
        rule.operand = Some(Operand::Text("a".into()));
        assert!(rule.problem().is_some());
    }
}
