//! Mutations: a source's change to a citizen's data, and who is told.
//!
//! A source publishes a change (created, changed or ended) of one of its
//! datasets about one citizen, effective on a date, with the changed fields.
//! [`route`] decides, as a pure function, which consumers receive it and
//! which fields each may see: exactly the rules of a lookup, asked on the
//! consumer's behalf for the changed fields on the effective date. A
//! consumer receives a change when one of its authorisations for the
//! dataset says it receives changes, is active and valid today, and finds
//! an open file of the consumer on the citizen (covering today and the
//! effective date, in a capacity it names) and, where it requires one, the
//! citizen's consent. It receives the changed fields the authorisation lets
//! it read; one that may only test them (yes/no checks) learns that they
//! changed and no value.

use std::collections::{BTreeMap, BTreeSet};

use time::{Date, OffsetDateTime};

use crate::decision::{LookupQuestion, file_and_consent};
use crate::{
    Authorisation, AuthorisationRef, AuthorisationStatus, Consent, DatasetName, FieldName, Kbo,
    PersonFile,
};

/// What happened to the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MutationKind {
    Created,
    Changed,
    Ended,
}

impl MutationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MutationKind::Created => "created",
            MutationKind::Changed => "changed",
            MutationKind::Ended => "ended",
        }
    }
}

/// The operation of the audit entry recording a published change.
pub const PUBLISH_OPERATION: &str = "semel.v1.MutationService/PublishMutations";
/// The operation of the audit entry recording a change delivered to a
/// consumer over a subscription.
pub const DELIVER_OPERATION: &str = "semel.v1.MutationService/Subscribe";
/// The operation of the audit entry recording a change delivered to a
/// consumer that pulls (the HTTP/JSON face).
pub const PULL_OPERATION: &str = "semel.v1.MutationService/PullMutations";

/// The operation of the audit entry recording a change queued for one
/// consumer, attributed to that consumer: who is told of a change is in
/// the log for the consumer's auditors and those of the whole log, never
/// in an entry the source's auditors read.
pub const QUEUE_OPERATION: &str = "semel.broker/QueueMutation";
/// The operation of the audit entry recording, per consumer, the changes
/// dropped unacknowledged when the retention period ended.
pub const EXPIRE_OPERATION: &str = "semel.broker/ExpireMutations";

/// The key under which a source's event id is remembered: SHA-256 of the
/// source's enterprise number (ten digits, so the two parts cannot be
/// confused) and the event id. The id itself is not kept: a source's own
/// ids may carry a national number, and they are remembered for 400 days.
pub fn event_key(source: &Kbo, event_id: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    h.update(event_id.as_bytes());
    h.finalize().into()
}

/// A change as the router sees it: no values, only which fields changed.
#[derive(Debug, Clone)]
pub struct MutationFacts<'a> {
    pub dataset: &'a DatasetName,
    /// The fields whose new values the source sent.
    pub changed: &'a BTreeSet<FieldName>,
    /// The day the change takes effect.
    pub effective: Date,
    /// The day it is routed (the broker's calendar day).
    pub today: Date,
    pub now: OffsetDateTime,
    /// Every file on the citizen, of any consumer, under any of their
    /// numbers.
    pub files: &'a [PersonFile],
    /// The citizen's consents.
    pub consents: &'a [Consent],
}

/// One consumer told of a change, and what it may see of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub consumer: Kbo,
    /// The authorisation it is told under.
    pub authorisation: AuthorisationRef,
    /// The changed fields whose new values it receives.
    pub fields: BTreeSet<FieldName>,
    /// The changed fields it may only test: it learns they changed, never
    /// their values.
    pub checked: BTreeSet<FieldName>,
    /// The file that makes it concerned.
    pub file: String,
    /// The consent it relies on, when the authorisation requires one.
    pub consent: Option<String>,
}

/// The consumers told of a change, in enterprise-number order, each once,
/// under the authorisation that lets it see the most of it (ties: the
/// first reference).
pub fn route<'a>(
    facts: &MutationFacts<'_>,
    authorisations: impl IntoIterator<Item = &'a Authorisation>,
) -> Vec<Route> {
    let mut best: BTreeMap<Kbo, Route> = BTreeMap::new();
    for auth in authorisations {
        if &auth.dataset != facts.dataset
            || !auth.receives_mutations
            || auth.status != AuthorisationStatus::Active
            || facts.today < auth.valid_from
            || auth.valid_until.is_some_and(|u| facts.today > u)
        {
            continue;
        }
        let fields: BTreeSet<FieldName> = facts
            .changed
            .iter()
            .filter(|f| auth.fields.contains(*f))
            .cloned()
            .collect();
        let checked: BTreeSet<FieldName> = facts
            .changed
            .iter()
            .filter(|f| !fields.contains(*f) && may_test(auth, f))
            .cloned()
            .collect();
        // A change of fields the consumer may neither read nor test is not
        // its business; a change naming no field (an end, a death) is the
        // business of everyone authorised for the dataset.
        if fields.is_empty() && checked.is_empty() && !facts.changed.is_empty() {
            continue;
        }
        let consumer_files: Vec<PersonFile> = facts
            .files
            .iter()
            .filter(|f| f.consumer == auth.consumer)
            .cloned()
            .collect();
        let question = LookupQuestion {
            consumer: auth.consumer,
            dataset: facts.dataset,
            fields: &[],
            checks: &[],
            purpose: &auth.purpose,
            today: facts.today,
            date: facts.effective,
            now: facts.now,
            files: &consumer_files,
            consents: facts.consents,
        };
        let Ok((file, consent)) = file_and_consent(&question, auth) else {
            continue;
        };
        let candidate = Route {
            consumer: auth.consumer,
            authorisation: auth.reference.clone(),
            fields,
            checked,
            file: file.id.clone(),
            consent,
        };
        let better = |old: &Route| {
            (candidate.fields.len(), candidate.checked.len())
                > (old.fields.len(), old.checked.len())
                || ((candidate.fields.len(), candidate.checked.len())
                    == (old.fields.len(), old.checked.len())
                    && candidate.authorisation < old.authorisation)
        };
        match best.get(&auth.consumer) {
            Some(old) if !better(old) => {}
            _ => {
                best.insert(auth.consumer, candidate);
            }
        }
    }
    best.into_values().collect()
}

/// Whether an authorisation still lets its consumer be told of a change it
/// was routed earlier, at delivery: the lookup's file-and-consent rule for
/// today (a file open now in a capacity it names, the citizen's consent
/// where it requires one). Returns the file (the one that makes the
/// consumer concerned now, which may have replaced the one at routing) and
/// the consent; or the reason it no longer does.
pub fn still_told(
    auth: &Authorisation,
    dataset: &DatasetName,
    files: &[PersonFile],
    consents: &[Consent],
    today: Date,
    now: OffsetDateTime,
) -> Result<(String, Option<String>), crate::RefusalReason> {
    let question = LookupQuestion {
        consumer: auth.consumer,
        dataset,
        fields: &[],
        checks: &[],
        purpose: &auth.purpose,
        today,
        date: today,
        now,
        files,
        consents,
    };
    file_and_consent(&question, auth)
        .map(|(file, consent)| (file.id.clone(), consent))
        .map_err(|r| r.reason)
}

fn may_test(auth: &Authorisation, field: &FieldName) -> bool {
    auth.check_fields.contains(field) || auth.checks.iter().any(|r| &r.field == field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_key_is_the_digest_of_the_source_and_the_id_and_holds_neither() {
        let nr = kbo("0314595348");
        let key = event_key(&nr, "nr-93051822361");
        // What the PostgreSQL migration computes for ids stored before:
        // sha256(source || event_id).
        use sha2::{Digest, Sha256};
        let expected: [u8; 32] = Sha256::digest(b"0314595348nr-93051822361").into();
        assert_eq!(key, expected);
        assert_ne!(key, event_key(&kbo(CPAS), "nr-93051822361"));
        assert_ne!(key, event_key(&nr, "nr-93051822362"));
    }
    use crate::persons::ConsentChannel;
    use crate::{CapacityCode, FilePhase, Niss, PurposeCode};
    use time::macros::{date, datetime};

    const CPAS: &str = "0566988259";
    const COMMUNE: &str = "0207373429";
    const TODAY: Date = date!(2026 - 12 - 01);
    const NOW: OffsetDateTime = datetime!(2026-12-01 10:00 UTC);

    fn kbo(s: &str) -> Kbo {
        Kbo::parse(s).expect("valid")
    }
    fn names(items: &[&str]) -> BTreeSet<FieldName> {
        items
            .iter()
            .map(|f| FieldName::new(*f).expect("valid"))
            .collect()
    }
    fn citizen() -> Niss {
        Niss::parse("85073003328").expect("valid")
    }

    fn auth(reference: &str, consumer: &str, fields: &[&str]) -> Authorisation {
        Authorisation {
            reference: AuthorisationRef::new(reference).expect("valid"),
            consumer: kbo(consumer),
            dataset: DatasetName::new("residence").expect("valid"),
            fields: names(fields),
            purpose: PurposeCode::new("SOCIAL_AID").expect("valid"),
            legal_basis: "law".into(),
            issuing_body: "body".into(),
            valid_from: date!(2026 - 01 - 01),
            valid_until: None,
            status: AuthorisationStatus::Active,
            version: 1,
            updated_at: NOW,
            confidential_until: None,
            check_fields: BTreeSet::new(),
            checks: Vec::new(),
            capacities: BTreeSet::new(),
            consent_required: false,
            receives_mutations: true,
        }
    }

    fn file(consumer: &str, capacity: &str) -> PersonFile {
        PersonFile {
            id: format!("file-{consumer}-{capacity}"),
            consumer: kbo(consumer),
            citizen: citizen(),
            capacity: CapacityCode::new(capacity).expect("valid"),
            phase: FilePhase::Definitive,
            begins: date!(2026 - 01 - 01),
            ends: None,
            consumer_reference: String::new(),
            registered_by: "clerk".into(),
            registered_at: datetime!(2026-01-01 09:00 UTC),
            closed_at: None,
        }
    }

    fn consent(consumer: &str) -> Consent {
        Consent {
            id: "consent-1".into(),
            citizen: citizen(),
            consumer: Some(kbo(consumer)),
            purpose: PurposeCode::new("SOCIAL_AID").expect("valid"),
            datasets: [DatasetName::new("residence").expect("valid")].into(),
            given_at: datetime!(2026-02-01 09:00 UTC),
            channel: ConsentChannel::Portal,
            registered_through: kbo(CPAS),
            registered_by: String::new(),
            evidence: String::new(),
            expires_at: None,
            withdrawn_at: None,
            withdrawn_through: None,
        }
    }

    struct Case {
        name: &'static str,
        auths: Vec<Authorisation>,
        files: Vec<PersonFile>,
        consents: Vec<Consent>,
        changed: &'static [&'static str],
        effective: Date,
        /// (consumer, authorisation, fields received, fields only tested)
        told: Vec<(
            &'static str,
            &'static str,
            &'static [&'static str],
            &'static [&'static str],
        )>,
    }

    fn case(name: &'static str) -> Case {
        Case {
            name,
            auths: vec![auth("BSC/1", CPAS, &["street", "nis_code"])],
            files: vec![file(CPAS, "RIS_BENEFICIARY")],
            consents: Vec::new(),
            changed: &["street", "nis_code"],
            effective: date!(2026 - 11 - 20),
            told: vec![(CPAS, "BSC/1", &["nis_code", "street"], &[])],
        }
    }

    #[test]
    fn routing_rules() {
        let mut cases = vec![case("a consumer with a file and an authorisation is told")];

        let mut c = case("a consumer without a file is not told");
        c.files.clear();
        c.told.clear();
        cases.push(c);

        let mut c = case("another consumer's file makes nobody else concerned");
        c.files = vec![file(COMMUNE, "RESIDENT")];
        c.told.clear();
        cases.push(c);

        let mut c = case("a file that ended before the effective date tells nothing");
        c.files[0].ends = Some(date!(2026 - 11 - 01));
        c.told.clear();
        cases.push(c);

        let mut c = case("a file closed today (ending today) tells nothing after it closed");
        c.files[0].ends = Some(TODAY);
        c.files[0].closed_at = Some(datetime!(2026-12-01 08:00 UTC));
        c.told.clear();
        cases.push(c);

        let mut c = case("a file opened after the effective date does not cover it");
        c.files[0].begins = date!(2026 - 11 - 25);
        c.told.clear();
        cases.push(c);

        let mut c = case("a suspended authorisation tells nothing");
        c.auths[0].status = AuthorisationStatus::Suspended;
        c.told.clear();
        cases.push(c);

        let mut c = case("an expired authorisation tells nothing");
        c.auths[0].valid_until = Some(date!(2026 - 11 - 30));
        c.told.clear();
        cases.push(c);

        let mut c = case("an authorisation that does not receive changes tells nothing");
        c.auths[0].receives_mutations = false;
        c.told.clear();
        cases.push(c);

        let mut c = case("an authorisation for another dataset tells nothing");
        c.auths[0].dataset = DatasetName::new("income").expect("valid");
        c.told.clear();
        cases.push(c);

        let mut c = case("only the fields the authorisation allows are received");
        c.auths = vec![auth("BSC/1", CPAS, &["street"])];
        c.told = vec![(CPAS, "BSC/1", &["street"], &[])];
        cases.push(c);

        let mut c = case("a check-only consumer learns the change and no value");
        c.auths[0].fields = names(&["street"]);
        c.auths[0].check_fields = names(&["nis_code"]);
        c.changed = &["nis_code"];
        c.told = vec![(CPAS, "BSC/1", &[], &["nis_code"])];
        cases.push(c);

        let mut c = case("a change of fields the consumer may not see is not its business");
        c.auths = vec![auth("BSC/1", CPAS, &["street"])];
        c.changed = &["nis_code"];
        c.told.clear();
        cases.push(c);

        let mut c = case("an end naming no field goes to everyone concerned");
        c.changed = &[];
        c.told = vec![(CPAS, "BSC/1", &[], &[])];
        cases.push(c);

        let mut c = case("the capacity the authorisation requires is needed");
        c.auths[0].capacities = [CapacityCode::new("RIS_APPLICANT").expect("valid")].into();
        c.told.clear();
        cases.push(c);

        let mut c = case("a file in the required capacity is enough");
        c.auths[0].capacities = [CapacityCode::new("RIS_BENEFICIARY").expect("valid")].into();
        cases.push(c);

        let mut c = case("a consent the authorisation requires must be on record");
        c.auths[0].consent_required = true;
        c.told.clear();
        cases.push(c);

        let mut c = case("with the consent on record the consumer is told");
        c.auths[0].consent_required = true;
        c.consents = vec![consent(CPAS)];
        cases.push(c);

        let mut c = case("a withdrawn consent tells nothing");
        c.auths[0].consent_required = true;
        c.consents = vec![consent(CPAS)];
        c.consents[0].withdrawn_at = Some(datetime!(2026-11-01 09:00 UTC));
        c.consents[0].withdrawn_through = Some(ConsentChannel::Portal);
        c.told.clear();
        cases.push(c);

        let mut c = case("of two authorisations, the one showing the most is used");
        c.auths = vec![
            auth("BSC/1", CPAS, &["street"]),
            auth("BSC/2", CPAS, &["street", "nis_code"]),
        ];
        c.told = vec![(CPAS, "BSC/2", &["nis_code", "street"], &[])];
        cases.push(c);

        let mut c = case("each consumer concerned is told once, in number order");
        c.auths = vec![
            auth("BSC/1", CPAS, &["street"]),
            auth("BSC/9", COMMUNE, &["nis_code"]),
        ];
        c.files = vec![file(CPAS, "RIS_BENEFICIARY"), file(COMMUNE, "RESIDENT")];
        c.told = vec![
            (COMMUNE, "BSC/9", &["nis_code"], &[]),
            (CPAS, "BSC/1", &["street"], &[]),
        ];
        cases.push(c);

        for c in cases {
            let dataset = DatasetName::new("residence").expect("valid");
            let changed = names(c.changed);
            let facts = MutationFacts {
                dataset: &dataset,
                changed: &changed,
                effective: c.effective,
                today: TODAY,
                now: NOW,
                files: &c.files,
                consents: &c.consents,
            };
            let got: Vec<_> = route(&facts, &c.auths)
                .into_iter()
                .map(|r| {
                    (
                        r.consumer.as_str().to_owned(),
                        r.authorisation.to_string(),
                        r.fields.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        r.checked
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>(),
                    )
                })
                .collect();
            let want: Vec<_> = c
                .told
                .iter()
                .map(|(k, a, f, t)| {
                    (
                        (*k).to_owned(),
                        (*a).to_owned(),
                        f.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
                        t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
                    )
                })
                .collect();
            assert_eq!(got, want, "{}", c.name);
        }
    }
}
