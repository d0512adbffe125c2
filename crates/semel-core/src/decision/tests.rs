//! The decision's tests: a table of cases, each condition's refusal, and
//! properties against an independent statement of the rules.

use super::*;
use crate::Niss;
use crate::persons::ConsentChannel;
use time::macros::{date, datetime};

fn kbo(s: &str) -> Kbo {
    Kbo::parse(s).expect("kbo")
}

fn auth(reference: &str, consumer: &str, purpose: &str, fields: &[&str]) -> Authorisation {
    Authorisation {
        reference: AuthorisationRef::new(reference).expect("ref"),
        consumer: kbo(consumer),
        dataset: DatasetName::new("national_register.residence").expect("ds"),
        fields: fields
            .iter()
            .map(|f| FieldName::new(*f).expect("field"))
            .collect(),
        purpose: PurposeCode::new(purpose).expect("purpose"),
        legal_basis: "test".into(),
        issuing_body: "test".into(),
        valid_from: date!(2024 - 01 - 01),
        valid_until: Some(date!(2026 - 12 - 31)),
        status: AuthorisationStatus::Active,
        version: 1,
        updated_at: datetime!(2024-01-01 0:00 UTC),
        confidential_until: None,
        check_fields: BTreeSet::new(),
        checks: Vec::new(),
        capacities: BTreeSet::new(),
        consent_required: false,
        receives_mutations: false,
    }
}

fn file(consumer: &str, capacity: &str) -> PersonFile {
    PersonFile {
        id: format!("file-{capacity}"),
        consumer: kbo(consumer),
        citizen: Niss::parse("93051822361").expect("niss"),
        capacity: CapacityCode::new(capacity).expect("capacity"),
        phase: FilePhase::Definitive,
        begins: date!(2020 - 01 - 01),
        ends: None,
        consumer_reference: String::new(),
        registered_by: "clerk".into(),
        registered_at: datetime!(2020-01-01 0:00 UTC),
        closed_at: None,
    }
}

const CPAS: &str = "0566988259";
const OTHER: &str = "0314595348";

struct Case {
    name: &'static str,
    auths: Vec<Authorisation>,
    consumer: &'static str,
    dataset: &'static str,
    purpose: &'static str,
    fields: &'static [&'static str],
    today: Date,
    want: Result<&'static str, (RefusalReason, Option<&'static str>)>,
}

#[test]
fn decide_table() {
    let base = || {
        auth(
            "BSC/2024/017",
            CPAS,
            "RIS_ELIGIBILITY",
            &["street", "postal_code", "nis_code"],
        )
    };
    let suspended = {
        let mut a = base();
        a.status = AuthorisationStatus::Suspended;
        a
    };
    let open_ended = {
        let mut a = base();
        a.valid_until = None;
        a
    };
    let today = date!(2025 - 06 - 01);
    let cases = vec![
        Case {
            name: "allowed, exact fields",
            auths: vec![base()],
            consumer: CPAS,
            dataset: "national_register.residence",
            purpose: "RIS_ELIGIBILITY",
            fields: &["street", "postal_code"],
            today,
            want: Ok("BSC/2024/017"),
        },
        Case {
            name: "no authorisations at all",
            auths: vec![],
            consumer: CPAS,
            dataset: "national_register.residence",
            purpose: "RIS_ELIGIBILITY",
            fields: &["street"],
            today,
            want: Err((RefusalReason::NoAuthorisation, None)),
        },
        Case {
            name: "another consumer's authorisation",
            auths: vec![base()],
            consumer: OTHER,
            dataset: "national_register.residence",
            purpose: "RIS_ELIGIBILITY",
            fields: &["street"],
            today,
            want: Err((RefusalReason::NoAuthorisation, None)),
        },
        Case {
            name: "another dataset",
            auths: vec![base()],
            consumer: CPAS,
            dataset: "national_register.household",
            purpose: "RIS_ELIGIBILITY",
            fields: &["street"],
            today,
            want: Err((RefusalReason::NoAuthorisation, None)),
        },
        Case {
            name: "other purpose",
            auths: vec![base()],
            consumer: CPAS,
            dataset: "national_register.residence",
            purpose: "SCHOOL_ENROLMENT",
            fields: &["street"],
            today,
            want: Err((RefusalReason::PurposeNotAllowed, None)),
        },
        Case {
            name: "field not covered",
            auths: vec![base()],
            consumer: CPAS,
            dataset: "national_register.residence",
            purpose: "RIS_ELIGIBILITY",
            fields: &["street", "house_number"],
            today,
            want: Err((RefusalReason::FieldNotAllowed, Some("BSC/2024/017"))),
        },
        Case {
            name: "not yet valid",
            auths: vec![base()],
            consumer: CPAS,
            dataset: "national_register.residence",
            purpose: "RIS_ELIGIBILITY",
            fields: &["street"],
            today: date!(2023 - 12 - 31),
            want: Err((
                RefusalReason::AuthorisationNotYetValid,
                Some("BSC/2024/017"),
            )),
        },
        Case {
            name: "first valid day",
            auths: vec![base()],
            consumer: CPAS,
            dataset: "national_register.residence",
            purpose: "RIS_ELIGIBILITY",
            fields: &["street"],
            today: date!(2024 - 01 - 01),
            want: Ok("BSC/2024/017"),
        },
        Case {
            name: "last valid day",
            auths: vec![base()],
            consumer: CPAS,
            dataset: "national_register.residence",
            purpose: "RIS_ELIGIBILITY",
            fields: &["street"],
            today: date!(2026 - 12 - 31),
            want: Ok("BSC/2024/017"),
        },
        Case {
            name: "expired",
            auths: vec![base()],
            consumer: CPAS,
            dataset: "national_register.residence",
            purpose: "RIS_ELIGIBILITY",
            fields: &["street"],
            today: date!(2027 - 01 - 01),
            want: Err((RefusalReason::AuthorisationExpired, Some("BSC/2024/017"))),
        },
        Case {
            name: "open-ended",
            auths: vec![open_ended],
            consumer: CPAS,
            dataset: "national_register.residence",
            purpose: "RIS_ELIGIBILITY",
            fields: &["street"],
            today: date!(2090 - 01 - 01),
            want: Ok("BSC/2024/017"),
        },
        Case {
            name: "suspended",
            auths: vec![suspended.clone()],
            consumer: CPAS,
            dataset: "national_register.residence",
            purpose: "RIS_ELIGIBILITY",
            fields: &["street"],
            today,
            want: Err((RefusalReason::AuthorisationSuspended, Some("BSC/2024/017"))),
        },
        Case {
            name: "revoked, even within its validity",
            auths: vec![{
                let mut a = base();
                a.status = AuthorisationStatus::Revoked;
                a
            }],
            consumer: CPAS,
            dataset: "national_register.residence",
            purpose: "RIS_ELIGIBILITY",
            fields: &["street"],
            today,
            want: Err((RefusalReason::AuthorisationRevoked, Some("BSC/2024/017"))),
        },
        Case {
            name: "a second, active authorisation allows despite a suspended one",
            auths: vec![
                suspended,
                auth("BSC/2025/002", CPAS, "RIS_ELIGIBILITY", &["street"]),
            ],
            consumer: CPAS,
            dataset: "national_register.residence",
            purpose: "RIS_ELIGIBILITY",
            fields: &["street"],
            today,
            want: Ok("BSC/2025/002"),
        },
        Case {
            name: "the closest refusal wins: fields over expiry",
            auths: vec![
                {
                    let mut a = auth(
                        "BSC/2020/001",
                        CPAS,
                        "RIS_ELIGIBILITY",
                        &["street", "house_number"],
                    );
                    a.valid_until = Some(date!(2021 - 01 - 01));
                    a
                },
                auth("BSC/2024/017", CPAS, "RIS_ELIGIBILITY", &["street"]),
            ],
            consumer: CPAS,
            dataset: "national_register.residence",
            purpose: "RIS_ELIGIBILITY",
            fields: &["street", "house_number"],
            today,
            want: Err((RefusalReason::FieldNotAllowed, Some("BSC/2024/017"))),
        },
    ];
    for case in cases {
        let dataset = DatasetName::new(case.dataset).expect("ds");
        let fields: Vec<FieldName> = case
            .fields
            .iter()
            .map(|f| FieldName::new(*f).expect("f"))
            .collect();
        let purpose = PurposeCode::new(case.purpose).expect("p");
        let files = [
            file(CPAS, "RIS_BENEFICIARY"),
            file(OTHER, "RIS_BENEFICIARY"),
        ];
        let q = LookupQuestion {
            consumer: kbo(case.consumer),
            dataset: &dataset,
            fields: &fields,
            checks: &[],
            purpose: &purpose,
            today: case.today,
            date: case.today,
            now: datetime!(2025-06-01 12:00 UTC),
            files: &files,
            consents: &[],
        };
        let got = decide(&q, &case.auths);
        match (&got, &case.want) {
            (Decision::Allow(allowance), Ok(r)) => {
                assert_eq!(allowance.authorisation.as_str(), *r, "{}", case.name);
                let mut want_fields = fields.clone();
                want_fields.sort();
                assert_eq!(allowance.fields, want_fields, "{}", case.name);
            }
            (Decision::Deny(refusal), Err((reason, r))) => {
                assert_eq!(refusal.reason, *reason, "{}", case.name);
                assert_eq!(
                    refusal.authorisation.as_ref().map(|a| a.as_str()),
                    *r,
                    "{}",
                    case.name
                );
            }
            _ => panic!("{}: got {got:?}, want {:?}", case.name, case.want),
        }
    }
}

#[test]
fn field_refusal_names_the_missing_fields() {
    let a = auth("BSC/2024/017", CPAS, "RIS_ELIGIBILITY", &["street"]);
    let dataset = DatasetName::new("national_register.residence").expect("ds");
    let fields = vec![
        FieldName::new("street").expect("f"),
        FieldName::new("nis_code").expect("f"),
    ];
    let purpose = PurposeCode::new("RIS_ELIGIBILITY").expect("p");
    let files = [file(CPAS, "RIS_BENEFICIARY")];
    let q = LookupQuestion {
        consumer: kbo(CPAS),
        dataset: &dataset,
        fields: &fields,
        checks: &[],
        purpose: &purpose,
        today: date!(2025 - 01 - 01),
        date: date!(2025 - 01 - 01),
        now: datetime!(2025-01-01 12:00 UTC),
        files: &files,
        consents: &[],
    };
    match decide(&q, [&a]) {
        Decision::Deny(r) => assert_eq!(
            r.fields_not_allowed,
            vec![FieldName::new("nis_code").expect("f")]
        ),
        other => panic!("{other:?}"),
    }
}

fn question<'a>(
    fields: &'a [FieldName],
    checks: &'a [Question],
    dataset: &'a DatasetName,
    purpose: &'a PurposeCode,
    files: &'a [PersonFile],
    consents: &'a [Consent],
) -> LookupQuestion<'a> {
    LookupQuestion {
        consumer: kbo(CPAS),
        dataset,
        fields,
        checks,
        purpose,
        today: date!(2026 - 11 - 22),
        date: date!(2026 - 11 - 22),
        now: datetime!(2026-11-22 12:00 UTC),
        files,
        consents,
    }
}

/// Equality questions on these fields.
fn asks(items: &[&str]) -> Vec<Question> {
    items
        .iter()
        .map(|f| Question {
            field: FieldName::new(*f).expect("f"),
            element: None,
            op: crate::CheckOp::Equals,
            operand: crate::Operand::Int(1),
        })
        .collect()
}

fn names(items: &[&str]) -> Vec<FieldName> {
    items
        .iter()
        .map(|f| FieldName::new(*f).expect("f"))
        .collect()
}

#[test]
fn files_capacities_and_dates() {
    let mut a = auth("BSC/2024/017", CPAS, "RIS_ELIGIBILITY", &["street"]);
    a.capacities = [CapacityCode::new("RIS_APPLICANT").expect("c")].into();
    let ds = DatasetName::new("national_register.residence").expect("ds");
    let p = PurposeCode::new("RIS_ELIGIBILITY").expect("p");
    let fields = names(&["street"]);
    let decide_with = |a: &Authorisation, files: &[PersonFile], date: Date| {
        let mut q = question(&fields, &[], &ds, &p, files, &[]);
        q.date = date;
        decide(&q, [a])
    };
    let deny = |files: &[PersonFile], date: Date| decide_with(&a, files, date);
    let today = date!(2026 - 11 - 22);
    // No file at all; a file in another capacity; another consumer's file.
    for files in [
        vec![],
        vec![file(CPAS, "PUPIL")],
        vec![file(OTHER, "RIS_APPLICANT")],
    ] {
        match deny(&files, today) {
            Decision::Deny(r) => {
                assert_eq!(r.reason, RefusalReason::NoActiveFile);
                assert_eq!(r.capacities_required.len(), 1);
                let why = r.explain(&ds, &p);
                assert!(why.contains("RIS_APPLICANT"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }
    // A file that starts after the reference date, or closed yesterday.
    let mut late = file(CPAS, "RIS_APPLICANT");
    late.begins = date!(2026 - 11 - 15);
    assert!(
        matches!(deny(std::slice::from_ref(&late), date!(2026 - 11 - 01)),
        Decision::Deny(r) if r.reason == RefusalReason::NoActiveFile && r.date.is_some())
    );
    assert!(matches!(
        deny(std::slice::from_ref(&late), today),
        Decision::Allow(_)
    ));
    let mut closed = file(CPAS, "RIS_APPLICANT");
    closed.ends = Some(date!(2026 - 11 - 21));
    assert!(matches!(
        deny(&[closed], date!(2026 - 11 - 01)),
        Decision::Deny(r) if r.reason == RefusalReason::NoActiveFile
    ));
    // Empty capacities: a file in any capacity.
    let mut any = a.clone();
    any.capacities.clear();
    match decide_with(&any, &[file(CPAS, "PUPIL")], today) {
        Decision::Allow(allowance) => {
            assert_eq!(allowance.file.1.as_str(), "PUPIL");
            assert!(allowance.explain().contains("PUPIL"));
        }
        other => panic!("{other:?}"),
    }
}

fn consent(id: &str) -> Consent {
    Consent {
        id: id.into(),
        citizen: Niss::parse("93051822361").expect("niss"),
        consumer: Some(kbo(CPAS)),
        purpose: PurposeCode::new("RIS_ELIGIBILITY").expect("p"),
        datasets: BTreeSet::new(),
        given_at: datetime!(2026-01-01 0:00 UTC),
        channel: ConsentChannel::Portal,
        registered_through: kbo(OTHER),
        registered_by: String::new(),
        evidence: String::new(),
        expires_at: None,
        withdrawn_at: None,
        withdrawn_through: None,
    }
}

#[test]
fn an_agent_cannot_outweigh_the_citizens_withdrawal() {
    let mut a = auth("BSC/2026/012", CPAS, "RIS_ELIGIBILITY", &["street"]);
    a.consent_required = true;
    let ds = DatasetName::new("national_register.residence").expect("ds");
    let p = PurposeCode::new("RIS_ELIGIBILITY").expect("p");
    let fields = names(&["street"]);
    let files = [file(CPAS, "RIS_APPLICANT")];
    let run =
        |consents: &[Consent]| decide(&question(&fields, &[], &ds, &p, &files, consents), [&a]);
    let mut portal = consent("c-portal");
    portal.withdrawn_at = Some(datetime!(2026-06-01 0:00 UTC));
    portal.withdrawn_through = Some(ConsentChannel::Portal);
    let mut counter = consent("c-counter");
    counter.channel = ConsentChannel::Counter;
    counter.given_at = datetime!(2026-07-01 0:00 UTC);
    // The consumer's own counter registration after the withdrawal.
    match run(&[portal.clone(), counter.clone()]) {
        Decision::Deny(r) => {
            assert_eq!(r.reason, RefusalReason::ConsentMissing);
            assert!(r.withdrawn_by_citizen);
            assert!(r.explain(&ds, &p).contains("only the citizen"));
        }
        other => panic!("{other:?}"),
    }
    // A counter consent given before the withdrawal does not survive it.
    counter.given_at = datetime!(2026-05-01 0:00 UTC);
    assert!(matches!(
        run(&[portal.clone(), counter.clone()]),
        Decision::Deny(_)
    ));
    // Withdrawn by the agent (not the citizen): the later counter consent counts.
    let mut by_agent = portal.clone();
    by_agent.withdrawn_through = Some(ConsentChannel::Counter);
    counter.given_at = datetime!(2026-07-01 0:00 UTC);
    assert!(matches!(
        run(&[by_agent, counter.clone()]),
        Decision::Allow(_)
    ));
    // The citizen gives it again on the portal: allowed.
    let mut again = consent("c-again");
    again.given_at = datetime!(2026-08-01 0:00 UTC);
    assert!(matches!(
        run(&[portal, counter, again]),
        Decision::Allow(x) if x.consent.as_deref() == Some("c-again")
    ));
}

#[test]
fn consent_when_required() {
    let mut a = auth("BSC/2024/017", CPAS, "RIS_ELIGIBILITY", &["street"]);
    a.consent_required = true;
    let ds = DatasetName::new("national_register.residence").expect("ds");
    let p = PurposeCode::new("RIS_ELIGIBILITY").expect("p");
    let fields = names(&["street"]);
    let files = [file(CPAS, "RIS_APPLICANT")];
    let run_with = |a: &Authorisation, consents: &[Consent]| {
        decide(&question(&fields, &[], &ds, &p, &files, consents), [a])
    };
    let run = |consents: &[Consent]| run_with(&a, consents);
    assert!(
        matches!(run(&[]), Decision::Deny(r) if r.reason == RefusalReason::ConsentMissing && r.consent.is_none())
    );
    let mut withdrawn = consent("c-old");
    withdrawn.withdrawn_at = Some(datetime!(2026-06-01 0:00 UTC));
    match run(std::slice::from_ref(&withdrawn)) {
        Decision::Deny(r) => {
            assert_eq!(
                r.consent.as_deref(),
                Some(&("c-old".into(), ConsentState::Withdrawn))
            );
            assert!(r.explain(&ds, &p).contains("withdrawn"));
        }
        other => panic!("{other:?}"),
    }
    // Another consumer's consent, or another purpose's, does not count.
    let mut other_consumer = consent("c-x");
    other_consumer.consumer = Some(kbo(OTHER));
    let mut other_purpose = consent("c-y");
    other_purpose.purpose = PurposeCode::new("SOCIAL_HOUSING").expect("p");
    assert!(matches!(
        run(&[other_consumer, other_purpose]),
        Decision::Deny(_)
    ));
    // Given again on the portal after the withdrawal.
    let mut again = consent("c-new");
    again.given_at = datetime!(2026-07-01 0:00 UTC);
    match run(&[withdrawn, again]) {
        Decision::Allow(allowance) => assert_eq!(allowance.consent.as_deref(), Some("c-new")),
        other => panic!("{other:?}"),
    }
    // Without the requirement, no consent is looked at.
    let mut free = a.clone();
    free.consent_required = false;
    assert!(matches!(run_with(&free, &[]), Decision::Allow(x) if x.consent.is_none()));
}

#[test]
fn checks_need_check_or_read_permission() {
    let mut a = auth("BSC/2023/044", CPAS, "SCHOOL_ENROLMENT", &[]);
    a.check_fields = names(&["nis_code"]).into_iter().collect();
    let ds = DatasetName::new("national_register.residence").expect("ds");
    let p = PurposeCode::new("SCHOOL_ENROLMENT").expect("p");
    let files = [file(CPAS, "PUPIL")];
    let nis = names(&["nis_code"]);
    let ask_nis = asks(&["nis_code"]);
    let street = names(&["street"]);
    let ask_street = asks(&["street"]);
    // Testing nis_code is allowed; reading it is not.
    assert!(matches!(
        decide(&question(&[], &ask_nis, &ds, &p, &files, &[]), [&a]),
        Decision::Allow(x) if x.checks == ask_nis && x.fields.is_empty()
    ));
    assert!(matches!(
        decide(&question(&nis, &[], &ds, &p, &files, &[]), [&a]),
        Decision::Deny(r) if r.reason == RefusalReason::FieldNotAllowed && r.fields_not_allowed == nis
    ));
    assert!(matches!(
        decide(&question(&[], &ask_street, &ds, &p, &files, &[]), [&a]),
        Decision::Deny(r) if r.reason == RefusalReason::CheckNotAllowed
    ));
    // check_fields allow equality only: an ordered question would find
    // the value by bisection.
    let mut below = ask_nis.clone();
    below[0].op = crate::CheckOp::LessThan;
    match decide(&question(&[], &below, &ds, &p, &files, &[]), [&a]) {
        Decision::Deny(r) => {
            assert_eq!(r.reason, RefusalReason::CheckNotAllowed);
            assert_eq!(
                r.checks.as_ref().map(|c| c.asked.clone()),
                Some(vec!["nis_code < 1".to_owned()])
            );
            assert!(r.explain(&ds, &p).contains("nis_code = …"));
        }
        other => panic!("{other:?}"),
    }
    // A field that may be read may also be tested.
    a.fields = street.iter().cloned().collect();
    assert!(matches!(
        decide(&question(&[], &ask_street, &ds, &p, &files, &[]), [&a]),
        Decision::Allow(_)
    ));
}

#[test]
fn named_questions_allow_exactly_their_threshold() {
    let mut a = auth("BSC/2026/012", CPAS, "SCHOOL_ENROLMENT", &[]);
    a.checks = vec![crate::CheckRule {
        name: "INCOME_BELOW_CEILING".into(),
        field: FieldName::new("income").expect("f"),
        element: None,
        op: crate::CheckOp::LessThan,
        operand: Some(crate::Operand::Int(2_500_000)),
    }];
    let ds = DatasetName::new("national_register.residence").expect("ds");
    let p = PurposeCode::new("SCHOOL_ENROLMENT").expect("p");
    let files = [file(CPAS, "PUPIL")];
    let below = |cents: i64| {
        vec![Question {
            field: FieldName::new("income").expect("f"),
            element: None,
            op: crate::CheckOp::LessThan,
            operand: crate::Operand::Int(cents),
        }]
    };
    let at_ceiling = below(2_500_000);
    assert!(matches!(
        decide(&question(&[], &at_ceiling, &ds, &p, &files, &[]), [&a]),
        Decision::Allow(_)
    ));
    let bisecting = below(1_250_000);
    match decide(&question(&[], &bisecting, &ds, &p, &files, &[]), [&a]) {
        Decision::Deny(r) => {
            assert_eq!(r.reason, RefusalReason::CheckNotAllowed);
            assert!(
                r.explain(&ds, &p)
                    .contains("INCOME_BELOW_CEILING (income < 2500000)")
            );
        }
        other => panic!("{other:?}"),
    }
}

mod properties {
    //! The decision against an independent statement of the rules, on
    //! random registries, files, consents and questions.

    use super::*;
    use proptest::prelude::*;

    const FIELDS: [&str; 4] = ["a", "b", "c", "d"];
    const CAPACITIES: [&str; 3] = ["RIS_APPLICANT", "RIS_BENEFICIARY", "PUPIL"];
    const PURPOSES: [&str; 2] = ["RIS_ELIGIBILITY", "SCHOOL_ENROLMENT"];
    const DATASETS: [&str; 2] = ["x.one", "x.two"];
    const CONSUMERS: [&str; 2] = [CPAS, OTHER];

    fn day(offset: i64) -> Date {
        date!(2026 - 11 - 22) + time::Duration::days(offset)
    }

    fn subset<'a>(all: &'a [&'a str], mask: u8) -> impl Iterator<Item = &'a str> + 'a {
        all.iter()
            .enumerate()
            .filter(move |(i, _)| mask & (1 << i) != 0)
            .map(|(_, s)| *s)
    }

    prop_compose! {
        fn arb_auth()(n in 0u32..1000, c in 0usize..2, d in 0usize..2, p in 0usize..2,
                      f in 0u8..16, chk in 0u8..16, cap in 0u8..8, consent in any::<bool>(),
                      suspended in prop::bool::weighted(0.2),
                      from in -3i64..2, until in prop::option::of(-2i64..3)) -> Authorisation {
            let mut a = auth(&format!("A/{n}"), CONSUMERS[c], PURPOSES[p], &subset(&FIELDS, f).collect::<Vec<_>>());
            a.dataset = DatasetName::new(DATASETS[d]).expect("ds");
            a.check_fields = subset(&FIELDS, chk).map(|x| FieldName::new(x).expect("f")).collect();
            a.capacities = subset(&CAPACITIES, cap).map(|x| CapacityCode::new(x).expect("c")).collect();
            a.consent_required = consent;
            a.status = if suspended { AuthorisationStatus::Suspended } else { AuthorisationStatus::Active };
            a.valid_from = day(from);
            a.valid_until = until.map(day);
            a
        }
    }

    prop_compose! {
        fn arb_file()(c in 0usize..2, cap in 0usize..3, begins in -40i64..3,
                      ends in prop::option::of(-5i64..5)) -> PersonFile {
            let mut f = file(CONSUMERS[c], CAPACITIES[cap]);
            f.begins = day(begins);
            f.ends = ends.map(day);
            f
        }
    }

    prop_compose! {
        fn arb_consent()(n in 0u32..100, c in prop::option::of(0usize..2), p in 0usize..2,
                         d in 0u8..4, given in -3i64..2, expires in prop::option::of(-2i64..3),
                         withdrawn in prop::option::of(-2i64..3),
                         portal in any::<bool>(), by_citizen in any::<bool>()) -> Consent {
            let at = |o: i64| datetime!(2026-11-22 12:00 UTC) + time::Duration::hours(o);
            let mut x = consent(&format!("c{n}"));
            x.consumer = c.map(|i| kbo(CONSUMERS[i]));
            x.purpose = PurposeCode::new(PURPOSES[p]).expect("p");
            x.datasets = subset(&DATASETS, d).map(|s| DatasetName::new(s).expect("d")).collect();
            x.given_at = at(given);
            x.expires_at = expires.map(at);
            x.withdrawn_at = withdrawn.map(at);
            x.channel = if portal { ConsentChannel::Portal } else { ConsentChannel::Counter };
            x.withdrawn_through = Some(if by_citizen { ConsentChannel::Portal } else { ConsentChannel::Counter });
            x
        }
    }

    /// The rules, stated directly: does `a` allow the question?
    fn allows(q: &LookupQuestion<'_>, a: &Authorisation) -> bool {
        a.consumer == q.consumer
            && &a.dataset == q.dataset
            && &a.purpose == q.purpose
            && a.status == AuthorisationStatus::Active
            && a.valid_from <= q.today
            && a.valid_until.is_none_or(|u| q.today <= u)
            && !(q.fields.is_empty() && q.checks.is_empty())
            && q.fields.iter().all(|f| a.fields.contains(f))
            && q.checks
                .iter()
                .all(|c| a.fields.contains(&c.field) || a.check_fields.contains(&c.field))
            && q.files.iter().any(|f| {
                f.consumer == q.consumer
                    && (a.capacities.is_empty() || a.capacities.contains(&f.capacity))
                    && f.begins <= q.today.min(q.date)
                    && f.ends.is_none_or(|e| q.today.max(q.date) <= e)
                    && f.open_at(q.now)
            })
            && (!a.consent_required || {
                let concerns = |c: &&Consent| {
                    c.consumer.is_none_or(|k| k == q.consumer)
                        && &c.purpose == q.purpose
                        && (c.datasets.is_empty() || c.datasets.contains(q.dataset))
                };
                // The latest withdrawal by the citizen, already made.
                let withdrawn = q
                    .consents
                    .iter()
                    .filter(concerns)
                    .filter(|c| c.withdrawn_through != Some(ConsentChannel::Counter))
                    .filter_map(|c| c.withdrawn_at)
                    .filter(|w| *w <= q.now)
                    .max();
                q.consents.iter().filter(concerns).any(|c| {
                    c.given_at <= q.now
                        && c.expires_at.is_none_or(|e| q.now < e)
                        && c.withdrawn_at.is_none_or(|w| q.now < w)
                        && withdrawn
                            .is_none_or(|w| c.channel == ConsentChannel::Portal && c.given_at > w)
                })
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn decide_follows_the_rules(
            auths in prop::collection::vec(arb_auth(), 0..5),
            files in prop::collection::vec(arb_file(), 0..4),
            consents in prop::collection::vec(arb_consent(), 0..4),
            c in 0usize..2, d in 0usize..2, p in 0usize..2,
            f in 0u8..16, chk in 0u8..16, back in 0i64..20,
        ) {
            let dataset = DatasetName::new(DATASETS[d]).expect("ds");
            let purpose = PurposeCode::new(PURPOSES[p]).expect("p");
            let fields: Vec<FieldName> = subset(&FIELDS, f).map(|x| FieldName::new(x).expect("f")).collect();
            let checks: Vec<Question> = asks(&subset(&FIELDS, chk).collect::<Vec<_>>());
            let q = LookupQuestion {
                consumer: kbo(CONSUMERS[c]),
                dataset: &dataset,
                fields: &fields,
                checks: &checks,
                purpose: &purpose,
                today: day(0),
                date: day(-back),
                now: datetime!(2026-11-22 12:00 UTC),
                files: &files,
                consents: &consents,
            };
            let allowed_by: Vec<&Authorisation> = auths.iter().filter(|a| allows(&q, a)).collect();
            match decide(&q, &auths) {
                Decision::Allow(x) => {
                    // Never without a matching authorisation, file and consent.
                    let a = allowed_by.iter().find(|a| a.reference == x.authorisation);
                    prop_assert!(a.is_some(), "allowed by {} which does not allow", x.authorisation);
                    let a = a.expect("checked");
                    // Returned fields: a subset of the authorised ones, and exactly those asked.
                    prop_assert!(x.fields.iter().all(|f| a.fields.contains(f)));
                    prop_assert!(x.checks.iter().all(|c| a.may_ask(c)));
                    let asked: BTreeSet<&FieldName> = fields.iter().collect();
                    prop_assert_eq!(x.fields.iter().collect::<BTreeSet<_>>(), asked);
                    prop_assert!(files.iter().any(|f| f.id == x.file.0 && f.capacity == x.file.1
                        && f.consumer == q.consumer && f.covers(q.today) && f.covers(q.date)));
                    prop_assert_eq!(x.consent.is_some(), a.consent_required);
                }
                Decision::Deny(r) => {
                    // Deny only when nothing allows.
                    prop_assert!(allowed_by.is_empty(), "refused with {:?} though {} allows", r.reason, allowed_by[0].reference);
                    // The refusal names an authorisation of this consumer and dataset, if any.
                    if let Some(reference) = &r.authorisation {
                        prop_assert!(auths.iter().any(|a| &a.reference == reference
                            && a.consumer == q.consumer && &a.dataset == q.dataset && &a.purpose == q.purpose));
                    }
                }
            }
        }
    }
}
