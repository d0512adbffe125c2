use super::*;
use semel_core::{CheckOp, FieldName, Niss, Operand, Question};

fn q(field: &str, value: i64) -> Question {
    Question {
        field: FieldName::new(field).expect("field"),
        element: None,
        op: CheckOp::Equals,
        operand: Operand::Int(value),
    }
}

#[test]
fn different_questions_about_one_citizen_are_bounded_per_field_and_day() {
    let limiter = QuestionLimiter::new(&LimitSettings::default());
    let cpas = Kbo::parse("0212345767").expect("kbo");
    let other = Kbo::parse("0212345668").expect("kbo");
    let karim = Niss::parse("93051822361").expect("niss");
    let jan = Niss::parse("85073003328").expect("niss");
    let day = time::macros::date!(2026 - 12 - 01);
    for v in 0..4 {
        assert!(
            limiter
                .admit(cpas, &karim, &[q("nis_code", v)], day)
                .is_ok()
        );
    }
    // The same questions again are free; a fifth is refused.
    assert!(
        limiter
            .admit(cpas, &karim, &[q("nis_code", 2)], day)
            .is_ok()
    );
    assert!(
        limiter
            .admit(cpas, &karim, &[q("nis_code", 9)], day)
            .is_err()
    );
    // A batch that would cross the bound records nothing.
    let limiter = QuestionLimiter::new(&LimitSettings::default());
    let five: Vec<Question> = (0..5).map(|v| q("nis_code", v)).collect();
    assert!(limiter.admit(cpas, &karim, &five, day).is_err());
    assert!(limiter.admit(cpas, &karim, &five[..4], day).is_ok());
    // Another field, citizen, consumer or day has its own count.
    assert!(limiter.admit(cpas, &karim, &[q("income", 1)], day).is_ok());
    assert!(limiter.admit(cpas, &jan, &[q("nis_code", 9)], day).is_ok());
    assert!(
        limiter
            .admit(other, &karim, &[q("nis_code", 9)], day)
            .is_ok()
    );
    assert!(
        limiter
            .admit(
                cpas,
                &karim,
                &[q("nis_code", 9)],
                day.next_day().expect("day")
            )
            .is_ok()
    );
}

#[test]
fn refusals_beyond_the_budget_are_counted_then_taken_once() {
    let budget = RefusalBudget::new(&LimitSettings {
        refusals_per_second: 1.0,
        ..LimitSettings::default()
    });
    let org = Kbo::parse("0212345767").expect("kbo");
    let now = Instant::now();
    let alone = (0..30)
        .filter(|i| budget.admit(org, now, "TOKEN_MISSING", *i))
        .count();
    assert_eq!(alone, 10, "the burst is ten seconds' worth");
    let floods = budget.take_floods();
    assert_eq!(floods.len(), 1);
    let (who, flood) = &floods[0];
    assert_eq!(*who, org);
    assert_eq!(flood.count, 20);
    assert_eq!((flood.first_micros, flood.last_micros), (10, 29));
    assert_eq!(flood.reasons["TOKEN_MISSING"], 20);
    assert!(budget.take_floods().is_empty(), "taken once");
    // A flood that could not be recorded is put back.
    budget.restore(floods);
    assert_eq!(budget.take_floods()[0].1.count, 20);
    // The bucket refills with time.
    assert!(budget.admit(org, now + Duration::from_secs(2), "TOKEN_MISSING", 40));
}
