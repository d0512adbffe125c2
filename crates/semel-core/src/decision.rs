//! The decision: may this consumer obtain these fields of this dataset, for
//! this purpose, today? Deny by default.

use std::collections::BTreeSet;

use time::Date;

use crate::{
    Authorisation, AuthorisationRef, AuthorisationStatus, DatasetName, FieldName, Kbo, PurposeCode,
};

/// What a consumer asks for, already validated.
#[derive(Debug, Clone)]
pub struct LookupQuestion<'a> {
    pub consumer: Kbo,
    pub dataset: &'a DatasetName,
    pub fields: &'a [FieldName],
    pub purpose: &'a PurposeCode,
    /// The day the lookup is made (the broker's local calendar day).
    pub today: Date,
}

/// Why a lookup is refused by the rules. The codes are stable: they appear
/// in `google.rpc.ErrorInfo` reasons and in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalReason {
    /// No authorisation at all for this consumer and dataset.
    NoAuthorisation,
    /// Authorisations exist for this consumer and dataset, none for this purpose.
    PurposeNotAllowed,
    /// The authorisation for this purpose does not cover every requested field.
    FieldNotAllowed,
    /// The authorisation's validity has not started.
    AuthorisationNotYetValid,
    /// The authorisation's validity has ended.
    AuthorisationExpired,
    /// The authorisation is suspended.
    AuthorisationSuspended,
}

impl RefusalReason {
    /// The stable reason code.
    pub fn code(self) -> &'static str {
        match self {
            Self::NoAuthorisation => "NO_AUTHORISATION",
            Self::PurposeNotAllowed => "PURPOSE_NOT_ALLOWED",
            Self::FieldNotAllowed => "FIELD_NOT_ALLOWED",
            Self::AuthorisationNotYetValid => "AUTHORISATION_NOT_YET_VALID",
            Self::AuthorisationExpired => "AUTHORISATION_EXPIRED",
            Self::AuthorisationSuspended => "AUTHORISATION_SUSPENDED",
        }
    }
}

/// A refusal, with what a consumer's developer or an auditor needs to see why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusalReason,
    /// The authorisation that came closest to allowing the lookup, if any.
    pub authorisation: Option<AuthorisationRef>,
    /// For `FieldNotAllowed`: the requested fields it does not cover.
    pub fields_not_allowed: Vec<FieldName>,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by this authorisation; forward exactly these fields.
    Allow {
        authorisation: AuthorisationRef,
        fields: Vec<FieldName>,
    },
    Deny(Refusal),
}

/// Decides a lookup against the authorisations of the registry.
///
/// `authorisations` may hold any authorisations; only those for the
/// question's consumer and dataset are considered. The lookup is allowed only
/// when one of them, for the question's purpose, is active, valid today and
/// covers every requested field. Otherwise the refusal names the most
/// specific rule that failed: of the authorisations for this purpose, the one
/// that came closest (fields missing, then suspended, not yet valid, expired).
pub fn decide<'a>(
    question: &LookupQuestion<'_>,
    authorisations: impl IntoIterator<Item = &'a Authorisation>,
) -> Decision {
    let mut any_for_dataset = false;
    // The closest refusal so far, ranked by how near it came to an allowance.
    let mut best: Option<(u8, Refusal)> = None;
    for auth in authorisations {
        if auth.consumer != question.consumer || &auth.dataset != question.dataset {
            continue;
        }
        any_for_dataset = true;
        if &auth.purpose != question.purpose {
            continue;
        }
        let (rank, reason) = if auth.status == AuthorisationStatus::Suspended {
            (2, RefusalReason::AuthorisationSuspended)
        } else if question.today < auth.valid_from {
            (1, RefusalReason::AuthorisationNotYetValid)
        } else if auth.valid_until.is_some_and(|until| question.today > until) {
            (0, RefusalReason::AuthorisationExpired)
        } else {
            let missing: Vec<FieldName> = question
                .fields
                .iter()
                .filter(|f| !auth.fields.contains(*f))
                .cloned()
                .collect();
            if missing.is_empty() {
                let fields: BTreeSet<&FieldName> = question.fields.iter().collect();
                return Decision::Allow {
                    authorisation: auth.reference.clone(),
                    fields: fields.into_iter().cloned().collect(),
                };
            }
            let refusal = Refusal {
                reason: RefusalReason::FieldNotAllowed,
                authorisation: Some(auth.reference.clone()),
                fields_not_allowed: missing,
            };
            if best.as_ref().is_none_or(|(r, _)| *r < 3) {
                best = Some((3, refusal));
            }
            continue;
        };
        if best.as_ref().is_none_or(|(r, _)| *r < rank) {
            best = Some((
                rank,
                Refusal {
                    reason,
                    authorisation: Some(auth.reference.clone()),
                    fields_not_allowed: Vec::new(),
                },
            ));
        }
    }
    let refusal = match best {
        Some((_, refusal)) => refusal,
        None => Refusal {
            reason: if any_for_dataset {
                RefusalReason::PurposeNotAllowed
            } else {
                RefusalReason::NoAuthorisation
            },
            authorisation: None,
            fields_not_allowed: Vec::new(),
        },
    };
    Decision::Deny(refusal)
}

#[cfg(test)]
mod tests {
    use super::*;
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
            let q = LookupQuestion {
                consumer: kbo(case.consumer),
                dataset: &dataset,
                fields: &fields,
                purpose: &purpose,
                today: case.today,
            };
            let got = decide(&q, &case.auths);
            match (&got, &case.want) {
                (
                    Decision::Allow {
                        authorisation,
                        fields: allowed,
                    },
                    Ok(r),
                ) => {
                    assert_eq!(authorisation.as_str(), *r, "{}", case.name);
                    let mut want_fields = fields.clone();
                    want_fields.sort();
                    assert_eq!(allowed, &want_fields, "{}", case.name);
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
        let q = LookupQuestion {
            consumer: kbo(CPAS),
            dataset: &dataset,
            fields: &fields,
            purpose: &purpose,
            today: date!(2025 - 01 - 01),
        };
        match decide(&q, [&a]) {
            Decision::Deny(r) => assert_eq!(
                r.fields_not_allowed,
                vec![FieldName::new("nis_code").expect("f")]
            ),
            other => panic!("{other:?}"),
        }
    }
}
