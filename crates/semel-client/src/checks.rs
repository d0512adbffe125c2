//! The syntax of a yes/no check (`--check`) and of an authorisation's named
//! questions: parsed into their protobuf form and written back.

use semel_proto as proto;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

/// Parses a named question of an authorisation, `NAME: check`, where the
/// check is written as for `--check` and `*` stands for what the consumer
/// gives (an element's key, or the value of an equality):
/// `INCOME_BELOW_CEILING: income_years[income_year=*].taxable_income_cents<2500000`.
pub fn parse_question(text: &str) -> anyhow::Result<proto::CheckRule> {
    let (name, expression) = text
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("question {text:?}: write NAME: check"))?;
    let check = parse_check(expression.trim())?;
    let given = |v: &Option<proto::Value>| matches!(v.as_ref().and_then(|v| v.kind.as_ref()), Some(proto::value::Kind::StringValue(s)) if s == "*");
    let (key_field, value_field) = check
        .element
        .as_ref()
        .map_or((String::new(), String::new()), |e| {
            (e.key_field.clone(), e.value_field.clone())
        });
    Ok(proto::CheckRule {
        name: name.trim().to_owned(),
        field: check.field,
        element_key_field: key_field,
        element_value_field: value_field,
        operator: check.operator,
        operand: if given(&check.operand) {
            None
        } else {
            check.operand
        },
    })
}

/// A named question in the form `parse_question` reads.
pub(crate) fn question_text(r: &proto::CheckRule) -> String {
    let value = |v: &Option<proto::Value>| match v.as_ref().and_then(|v| v.kind.as_ref()) {
        None => "*".to_owned(),
        // Text that would read back as something else is quoted.
        Some(proto::value::Kind::StringValue(s))
            if s == "*"
                || !matches!(
                    check_value(s).kind,
                    Some(proto::value::Kind::StringValue(_))
                ) =>
        {
            format!("\"{s}\"")
        }
        Some(proto::value::Kind::StringValue(s)) => s.clone(),
        Some(proto::value::Kind::IntValue(i)) => i.to_string(),
        Some(proto::value::Kind::BoolValue(b)) => b.to_string(),
        Some(proto::value::Kind::DateValue(d)) => d.clone(),
        Some(_) => "?".to_owned(),
    };
    let op = match proto::CheckOperator::try_from(r.operator) {
        Ok(proto::CheckOperator::Equals) => "=",
        Ok(proto::CheckOperator::NotEquals) => "!=",
        Ok(proto::CheckOperator::LessThan) => "<",
        Ok(proto::CheckOperator::LessOrEqual) => "<=",
        Ok(proto::CheckOperator::GreaterThan) => ">",
        Ok(proto::CheckOperator::GreaterOrEqual) => ">=",
        _ => "?",
    };
    let mut lhs = r.field.clone();
    if !r.element_key_field.is_empty() {
        lhs = format!("{lhs}[{}=*].{}", r.element_key_field, r.element_value_field);
    }
    format!("{}: {lhs}{op}{}", r.name, value(&r.operand))
}

/// Parses a check written `field OP value`, or for a list of records
/// `field[key_field=key].value_field OP value`, where OP is one of
/// `=`, `!=`, `<`, `<=`, `>`, `>=`; e.g. `nis_code=21004` or
/// `income_years[income_year=2024].taxable_income_cents<2000000`. A value
/// that reads as a whole number is an int, `YYYY-MM-DD` a date,
/// `true`/`false` a bool, anything else a string.
pub fn parse_check(text: &str) -> anyhow::Result<proto::Check> {
    use proto::CheckOperator::*;
    let (at, op, len) = ["!=", "<=", ">=", "=", "<", ">"]
        .iter()
        .filter_map(|op| {
            // The first operator outside the element's brackets.
            let outside = text.find(']').map_or(0, |i| i + 1);
            text[outside..]
                .find(op)
                .map(|i| (outside + i, *op, op.len()))
        })
        .min_by_key(|(i, _, len)| (*i, std::cmp::Reverse(*len)))
        .ok_or_else(|| anyhow::anyhow!("check {text:?}: no operator (=, !=, <, <=, >, >=)"))?;
    let operator = match op {
        "=" => Equals,
        "!=" => NotEquals,
        "<" => LessThan,
        "<=" => LessOrEqual,
        ">" => GreaterThan,
        _ => GreaterOrEqual,
    };
    let (lhs, value) = (&text[..at], &text[at + len..]);
    let (field, element) = match lhs.split_once('[') {
        None => (lhs.to_owned(), None),
        Some((field, rest)) => {
            let (selector, value_field) = rest.split_once("].").ok_or_else(|| {
                anyhow::anyhow!("check {text:?}: write field[key_field=key].value_field")
            })?;
            let (key_field, key) = selector.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("check {text:?}: write field[key_field=key].value_field")
            })?;
            (
                field.to_owned(),
                Some(proto::ElementSelector {
                    key_field: key_field.to_owned(),
                    key: Some(check_value(key)),
                    value_field: value_field.to_owned(),
                }),
            )
        }
    };
    Ok(proto::Check {
        field,
        operator: operator as i32,
        operand: Some(check_value(value)),
        element,
    })
}

/// A date as the broker reads one (`semel_server::convert::DATE_FORMAT`).
const DATE_FORMAT: &[BorrowedFormatItem<'static>] = format_description!("[year]-[month]-[day]");

fn check_value(text: &str) -> proto::Value {
    use proto::value::Kind;
    // "21015" in quotes is text, not a number.
    let quoted = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|_| text.len() >= 2);
    let kind = if let Some(t) = quoted {
        Kind::StringValue(t.to_owned())
    } else if let Ok(i) = text.parse::<i64>() {
        Kind::IntValue(i)
    } else if let Ok(b) = text.parse::<bool>() {
        Kind::BoolValue(b)
    } else if time::Date::parse(text, DATE_FORMAT).is_ok() {
        Kind::DateValue(text.to_owned())
    } else {
        Kind::StringValue(text.to_owned())
    };
    proto::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::value::Kind;

    #[test]
    fn checks_parse_with_their_operator_and_element() {
        let c = parse_check("nis_code=21015").expect("check");
        assert_eq!(
            (c.field.as_str(), c.operator),
            ("nis_code", proto::CheckOperator::Equals as i32)
        );
        let c = parse_check("income_years[income_year=2024].taxable_income_cents<=2500000")
            .expect("check");
        assert_eq!(c.field, "income_years");
        assert_eq!(c.operator, proto::CheckOperator::LessOrEqual as i32);
        let e = c.element.expect("element");
        assert_eq!(
            (e.key_field.as_str(), e.value_field.as_str()),
            ("income_year", "taxable_income_cents")
        );
        assert_eq!(e.key.and_then(|v| v.kind), Some(Kind::IntValue(2024)));
        assert_eq!(
            c.operand.and_then(|v| v.kind),
            Some(Kind::IntValue(2_500_000))
        );
        let c = parse_check("birth_date>=2010-01-01").expect("check");
        assert_eq!(c.operator, proto::CheckOperator::GreaterOrEqual as i32);
        assert_eq!(
            c.operand.and_then(|v| v.kind),
            Some(Kind::DateValue("2010-01-01".into()))
        );
        assert_eq!(
            parse_check("sex!=M").map(|c| c.operator).ok(),
            Some(proto::CheckOperator::NotEquals as i32)
        );
        assert!(parse_check("nis_code").is_err());
        assert!(parse_check("income_years[income_year].x<3").is_err());
    }
}
