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
mod tests;
