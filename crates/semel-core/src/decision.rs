//! The decision: may this consumer obtain these fields of this dataset about
//! this citizen, for this purpose, today? Deny by default.
//!
//! A lookup is allowed only by an authorisation that, all at once: names
//! the consumer, the dataset and the purpose; is active and valid today;
//! covers every field read and every field tested; finds an active file of
//! the consumer on the citizen, in a capacity it names, covering the date
//! concerned; and, when it requires consent, finds a valid consent of the
//! citizen for the consumer, the purpose and the dataset.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use time::{Date, OffsetDateTime};

use crate::check::{CheckRule, Question};
use crate::persons::{Consent, ConsentChannel, ConsentState, FilePhase, PersonFile};
use crate::{
    Authorisation, AuthorisationRef, AuthorisationStatus, CapacityCode, DatasetName, FieldName,
    Kbo, PurposeCode,
};

/// What a consumer asks for, already validated, with what the persons
/// directory and the consent register hold about the citizen.
#[derive(Debug, Clone)]
pub struct LookupQuestion<'a> {
    pub consumer: Kbo,
    pub dataset: &'a DatasetName,
    /// The fields to read.
    pub fields: &'a [FieldName],
    /// The questions asked (yes/no answers).
    pub checks: &'a [Question],
    pub purpose: &'a PurposeCode,
    /// The day the lookup is made (the broker's local calendar day).
    pub today: Date,
    /// The day the data are asked for: the reference date, or today.
    pub date: Date,
    /// The moment of the lookup, for consents.
    pub now: OffsetDateTime,
    /// The consumer's files on the citizen (under any of their numbers).
    pub files: &'a [PersonFile],
    /// The citizen's consents.
    pub consents: &'a [Consent],
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
    /// The authorisation for this purpose does not name every question asked.
    CheckNotAllowed,
    /// The authorisation's validity has not started.
    AuthorisationNotYetValid,
    /// The authorisation's validity has ended.
    AuthorisationExpired,
    /// The authorisation is suspended.
    AuthorisationSuspended,
    /// The authorisation was revoked: it ended for good.
    AuthorisationRevoked,
    /// The consumer holds no active file on the citizen in a capacity the
    /// authorisation names, covering the date concerned.
    NoActiveFile,
    /// The authorisation requires the citizen's consent, and none is valid.
    ConsentMissing,
}

impl RefusalReason {
    /// Every reason, for parsing codes.
    pub const ALL: [RefusalReason; 10] = [
        Self::NoAuthorisation,
        Self::PurposeNotAllowed,
        Self::FieldNotAllowed,
        Self::CheckNotAllowed,
        Self::AuthorisationNotYetValid,
        Self::AuthorisationExpired,
        Self::AuthorisationSuspended,
        Self::AuthorisationRevoked,
        Self::NoActiveFile,
        Self::ConsentMissing,
    ];

    /// The stable reason code.
    pub fn code(self) -> &'static str {
        match self {
            Self::NoAuthorisation => "NO_AUTHORISATION",
            Self::PurposeNotAllowed => "PURPOSE_NOT_ALLOWED",
            Self::FieldNotAllowed => "FIELD_NOT_ALLOWED",
            Self::CheckNotAllowed => "CHECK_NOT_ALLOWED",
            Self::AuthorisationNotYetValid => "AUTHORISATION_NOT_YET_VALID",
            Self::AuthorisationExpired => "AUTHORISATION_EXPIRED",
            Self::AuthorisationSuspended => "AUTHORISATION_SUSPENDED",
            Self::AuthorisationRevoked => "AUTHORISATION_REVOKED",
            Self::NoActiveFile => "NO_ACTIVE_FILE",
            Self::ConsentMissing => "CONSENT_MISSING",
        }
    }

    /// How close a refusal came to an allowance: the checks run in this
    /// order, so a later one passed every earlier one.
    fn rank(self) -> u8 {
        match self {
            Self::NoAuthorisation | Self::PurposeNotAllowed => 0,
            Self::AuthorisationExpired => 1,
            Self::AuthorisationNotYetValid => 2,
            Self::AuthorisationRevoked => 3,
            Self::AuthorisationSuspended => 3,
            Self::FieldNotAllowed | Self::CheckNotAllowed => 4,
            Self::NoActiveFile => 5,
            Self::ConsentMissing => 6,
        }
    }
}

/// A refusal, with what a consumer's developer or an auditor needs to see
/// which rule failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusalReason,
    /// The authorisation that came closest to allowing the lookup, if any.
    pub authorisation: Option<AuthorisationRef>,
    /// Its version.
    pub authorisation_version: Option<u32>,
    /// For `FieldNotAllowed`: the requested fields it does not cover.
    pub fields_not_allowed: Vec<FieldName>,
    /// For `CheckNotAllowed`: the questions asked that it does not name,
    /// and those it names.
    pub checks: Option<Box<ChecksRefused>>,
    /// For `NoActiveFile`: the capacities it accepts (empty: any).
    pub capacities_required: Vec<CapacityCode>,
    /// For `ConsentMissing`: the consent that came closest, and its state.
    pub consent: Option<Box<(String, ConsentState)>>,
    /// For `ConsentMissing`: the citizen withdrew their consent, and only
    /// the citizen can give it again (an agent's registration does not
    /// outweigh the withdrawal).
    pub withdrawn_by_citizen: bool,
    /// For `NoActiveFile`: the date a file had to cover.
    pub date: Option<Date>,
}

impl Refusal {
    fn new(reason: RefusalReason, authorisation: Option<&Authorisation>) -> Self {
        Refusal {
            reason,
            authorisation: authorisation.map(|a| a.reference.clone()),
            authorisation_version: authorisation.map(|a| a.version),
            fields_not_allowed: Vec::new(),
            checks: None,
            capacities_required: Vec::new(),
            consent: None,
            withdrawn_by_citizen: false,
            date: None,
        }
    }

    /// The rule that failed, in words a consumer's developer and an auditor
    /// can act on. It names no citizen.
    pub fn explain(&self, dataset: &DatasetName, purpose: &PurposeCode) -> String {
        let auth = self
            .authorisation
            .as_ref()
            .map(AuthorisationRef::as_str)
            .unwrap_or_default();
        let list = |items: &mut dyn Iterator<Item = &str>| items.collect::<Vec<_>>().join(", ");
        match self.reason {
            RefusalReason::NoAuthorisation => {
                format!("no authorisation allows your organisation to obtain {dataset}")
            }
            RefusalReason::PurposeNotAllowed => format!(
                "your organisation's authorisations for {dataset} do not cover purpose {purpose}"
            ),
            RefusalReason::FieldNotAllowed => format!(
                "authorisation {auth} does not cover the fields {}; ask only for the fields it allows (fields it allows only to test must be asked as checks)",
                list(&mut self.fields_not_allowed.iter().map(FieldName::as_str))
            ),
            RefusalReason::CheckNotAllowed => {
                let (asked, allowed) = self
                    .checks
                    .as_deref()
                    .map_or((String::new(), String::new()), |c| {
                        (c.asked.join("; "), c.allowed.join("; "))
                    });
                format!(
                    "authorisation {auth} does not allow the questions {asked}; it allows {}",
                    if allowed.is_empty() { "none" } else { &allowed }
                )
            }
            RefusalReason::AuthorisationNotYetValid => {
                format!("authorisation {auth} is not valid yet")
            }
            RefusalReason::AuthorisationExpired => format!("authorisation {auth} has expired"),
            RefusalReason::AuthorisationSuspended => format!("authorisation {auth} is suspended"),
            RefusalReason::AuthorisationRevoked => {
                format!("authorisation {auth} was revoked; it allows nothing any more")
            }
            RefusalReason::NoActiveFile => {
                let mut m = format!(
                    "authorisation {auth} requires an active file of your organisation on this citizen in the persons directory"
                );
                if !self.capacities_required.is_empty() {
                    let _ = write!(
                        m,
                        ", in capacity {}",
                        self.capacities_required
                            .iter()
                            .map(CapacityCode::as_str)
                            .collect::<Vec<_>>()
                            .join(" or ")
                    );
                }
                if let Some(d) = self.date {
                    let _ = write!(m, ", covering {d}");
                }
                m.push_str("; register the file first (PersonsService.RegisterFile)");
                m
            }
            RefusalReason::ConsentMissing => {
                let mut m = format!(
                    "authorisation {auth} requires the citizen's consent for purpose {purpose} and {dataset}"
                );
                match self.consent.as_deref() {
                    Some((id, ConsentState::Withdrawn)) => {
                        let _ = write!(m, "; consent {id} was withdrawn");
                    }
                    Some((id, ConsentState::Expired)) => {
                        let _ = write!(m, "; consent {id} has expired");
                    }
                    Some((id, ConsentState::NotYetGiven)) => {
                        let _ = write!(m, "; consent {id} starts later");
                    }
                    Some((_, ConsentState::Valid)) | None => m.push_str("; none is on record"),
                }
                if self.withdrawn_by_citizen {
                    m.push_str(
                        "; the citizen withdrew their consent, so only the citizen can give it again (on a citizen portal)",
                    );
                }
                m
            }
        }
    }
}

/// The questions a refusal is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksRefused {
    /// Asked and not named by the authorisation, in words.
    pub asked: Vec<String>,
    /// Named by the authorisation, in words.
    pub allowed: Vec<String>,
}

/// What allowed a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowance {
    pub authorisation: AuthorisationRef,
    /// The version of the authorisation that allowed it.
    pub authorisation_version: u32,
    /// Exactly the fields to forward and return: sorted, without repeats.
    pub fields: Vec<FieldName>,
    /// The questions to answer, in the order asked, without repeats.
    pub checks: Vec<Question>,
    /// The file that allowed it: its id, capacity and phase.
    pub file: (String, CapacityCode, FilePhase),
    /// The consent that allowed it, when the authorisation requires one.
    pub consent: Option<String>,
}

impl Allowance {
    /// The rules that allowed it, for the audit entry. It names no citizen.
    pub fn explain(&self) -> String {
        let (id, capacity, phase) = &self.file;
        let mut m = format!("file {id} ({capacity}, {})", phase.as_str());
        if let Some(c) = &self.consent {
            let _ = write!(m, "; consent {c}");
        }
        m
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Allowance),
    Deny(Refusal),
}

/// Decides a lookup against the authorisations of the registry.
///
/// `authorisations` may hold any authorisations; only those for the
/// question's consumer and dataset are considered. Each is checked in
/// order (purpose, status, validity, fields, file, consent); the first that
/// passes them all allows. Otherwise the refusal is that of the
/// authorisation that came furthest.
pub fn decide<'a>(
    question: &LookupQuestion<'_>,
    authorisations: impl IntoIterator<Item = &'a Authorisation>,
) -> Decision {
    let mut any_for_dataset = false;
    let mut best: Option<Refusal> = None;
    for auth in authorisations {
        if auth.consumer != question.consumer || &auth.dataset != question.dataset {
            continue;
        }
        any_for_dataset = true;
        if &auth.purpose != question.purpose {
            continue;
        }
        match check(question, auth) {
            Ok(allowance) => return Decision::Allow(allowance),
            Err(refusal) => {
                if best
                    .as_ref()
                    .is_none_or(|b| b.reason.rank() < refusal.reason.rank())
                {
                    best = Some(refusal);
                }
            }
        }
    }
    Decision::Deny(best.unwrap_or_else(|| {
        Refusal::new(
            if any_for_dataset {
                RefusalReason::PurposeNotAllowed
            } else {
                RefusalReason::NoAuthorisation
            },
            None,
        )
    }))
}

/// Checks one authorisation for the question's consumer, dataset and purpose.
/// Whether an authorisation can allow anything on `today`: not if it is
/// revoked or suspended, then not before its first day or after its last,
/// in that order (the catalogue states the same).
pub(crate) fn in_force(auth: &Authorisation, today: Date) -> Result<(), RefusalReason> {
    match auth.status {
        AuthorisationStatus::Revoked => return Err(RefusalReason::AuthorisationRevoked),
        AuthorisationStatus::Suspended => return Err(RefusalReason::AuthorisationSuspended),
        AuthorisationStatus::Active => {}
    }
    if today < auth.valid_from {
        return Err(RefusalReason::AuthorisationNotYetValid);
    }
    if auth.valid_until.is_some_and(|until| today > until) {
        return Err(RefusalReason::AuthorisationExpired);
    }
    Ok(())
}

fn check(q: &LookupQuestion<'_>, auth: &Authorisation) -> Result<Allowance, Refusal> {
    let refuse = |reason| Refusal::new(reason, Some(auth));
    in_force(auth, q.today).map_err(refuse)?;
    let mut missing: Vec<FieldName> = q
        .fields
        .iter()
        .filter(|f| !auth.fields.contains(*f))
        .cloned()
        .collect();
    if !missing.is_empty() || (q.fields.is_empty() && q.checks.is_empty()) {
        missing.sort();
        missing.dedup();
        return Err(Refusal {
            fields_not_allowed: missing,
            ..refuse(RefusalReason::FieldNotAllowed)
        });
    }
    let not_named: Vec<String> = q
        .checks
        .iter()
        .filter(|c| !auth.may_ask(c))
        .map(Question::describe)
        .collect();
    if !not_named.is_empty() {
        let mut allowed: Vec<String> = auth.checks.iter().map(CheckRule::describe).collect();
        allowed.extend(
            auth.check_fields
                .iter()
                .map(|f| format!("{f} = … or {f} != …")),
        );
        return Err(Refusal {
            checks: Some(Box::new(ChecksRefused {
                asked: not_named,
                allowed,
            })),
            ..refuse(RefusalReason::CheckNotAllowed)
        });
    }
    let (file, consent) = file_and_consent(q, auth)?;
    let sorted = |items: &[FieldName]| {
        items
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .cloned()
            .collect()
    };
    Ok(Allowance {
        authorisation: auth.reference.clone(),
        authorisation_version: auth.version,
        fields: sorted(q.fields),
        checks: q.checks.iter().fold(Vec::new(), |mut out, c| {
            if !out.contains(c) {
                out.push(c.clone());
            }
            out
        }),
        file: (file.id.clone(), file.capacity.clone(), file.phase),
        consent,
    })
}

/// The file and, where the authorisation requires one, the consent that an
/// authorisation needs for the question's consumer and citizen: a file open
/// now, covering today and the question's date, in a capacity the
/// authorisation names; a valid consent not outweighed by the citizen's
/// own withdrawal. Lookups and mutations apply the same rule.
pub(crate) fn file_and_consent<'q>(
    q: &LookupQuestion<'q>,
    auth: &Authorisation,
) -> Result<(&'q PersonFile, Option<String>), Refusal> {
    let refuse = |reason| Refusal::new(reason, Some(auth));
    // The file must be open now and cover the date the data are asked for.
    let file = q.files.iter().find(|f| {
        f.consumer == q.consumer
            && (auth.capacities.is_empty() || auth.capacities.contains(&f.capacity))
            && f.covers(q.today)
            && f.covers(q.date)
            && f.open_at(q.now)
    });
    let Some(file) = file else {
        return Err(Refusal {
            capacities_required: auth.capacities.iter().cloned().collect(),
            date: (q.date != q.today).then_some(q.date),
            ..refuse(RefusalReason::NoActiveFile)
        });
    };
    let consent = if auth.consent_required {
        let concerning = || {
            q.consents
                .iter()
                .filter(|c| c.concerns(q.consumer, q.purpose, q.dataset))
        };
        // The citizen's own withdrawal wins over any consent given before
        // it, and over any an agent registers after it: only the citizen
        // can give it again.
        let withdrawn = concerning()
            .filter_map(|c| c.withdrawn_by_citizen(q.now).map(|w| (w, c)))
            .max_by_key(|(w, _)| *w);
        let mut closest: Option<(&Consent, ConsentState)> = None;
        for c in concerning() {
            let state = c.state(q.now);
            let outweighed = withdrawn
                .is_some_and(|(w, _)| c.channel != ConsentChannel::Portal || c.given_at <= w);
            if state == ConsentState::Valid && !outweighed {
                closest = Some((c, state));
                break;
            }
            if state == ConsentState::Valid {
                continue;
            }
            // Remember the most recently given one, to say why it fails.
            if closest.is_none_or(|(b, _)| b.given_at < c.given_at) {
                closest = Some((c, state));
            }
        }
        match closest {
            Some((c, ConsentState::Valid)) => Some(c.id.clone()),
            other => {
                let consent = match (other, withdrawn) {
                    (None, Some((_, w))) => Some((w.id.clone(), ConsentState::Withdrawn)),
                    (other, _) => other.map(|(c, s)| (c.id.clone(), s)),
                }
                .map(Box::new);
                return Err(Refusal {
                    consent,
                    withdrawn_by_citizen: withdrawn.is_some(),
                    ..refuse(RefusalReason::ConsentMissing)
                });
            }
        }
    } else {
        None
    };
    Ok((file, consent))
}

#[cfg(test)]
mod tests {
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
                            && withdrawn.is_none_or(|w| {
                                c.channel == ConsentChannel::Portal && c.given_at > w
                            })
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
}
