//! "What may I call?": an organisation's authorisations joined with the
//! datasets they open, as a consumer sees them (what it may ask, for which
//! purpose, under which conditions) and as a source sees them (who may ask
//! its datasets for what).
//!
//! The catalogue only reads the registry: it grants nothing. Whether a
//! lookup is allowed is `decide()`'s answer alone; the catalogue's
//! [`Standing`] says, in the same order `decide()` checks them, whether an
//! authorisation could allow anything today.

use time::Date;

use crate::{
    Authorisation, Dataset, DatasetName, FieldDefinition, Kbo, Organisation, OrganisationStatus,
    RefusalReason,
};

/// Whether an authorisation can allow lookups today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    InForce,
    /// Its validity starts later.
    NotYetValid,
    /// Its validity ended.
    Expired,
    /// Suspended by the authorising body.
    Suspended,
    /// The consumer is suspended: every call it makes is refused.
    ConsumerSuspended,
    /// The dataset was withdrawn by its source.
    DatasetWithdrawn,
}

impl Standing {
    /// The authorisation's standing on `today`, the consumer's suspension
    /// first (its calls are refused before any rule is read), then the
    /// authorisation's own, then its validity, as `decide()` reads them.
    pub fn of(auth: &Authorisation, consumer: Option<&Organisation>, today: Date) -> Standing {
        if consumer.is_some_and(|c| c.status == OrganisationStatus::Suspended) {
            return Standing::ConsumerSuspended;
        }
        match crate::decision::in_force(auth, today) {
            Ok(()) => Standing::InForce,
            Err(RefusalReason::AuthorisationSuspended) => Standing::Suspended,
            Err(RefusalReason::AuthorisationNotYetValid) => Standing::NotYetValid,
            // `catalogue()` leaves revoked ones out; were one asked about,
            // it can no more be used than an expired one.
            Err(RefusalReason::AuthorisationRevoked) => Standing::Expired,
            // `in_force` refuses for nothing else.
            Err(_) => Standing::Expired,
        }
    }
}

/// One authorisation, with what it opens.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub authorisation: &'a Authorisation,
    /// The dataset, when it is registered (an authorisation cannot be
    /// created for a dataset that is not).
    pub dataset: Option<&'a Dataset>,
    /// The fields it may read, with their types, in the dataset's order.
    pub fields: Vec<&'a FieldDefinition>,
    /// The fields it may only test for equality, in the dataset's order.
    pub check_fields: Vec<&'a FieldDefinition>,
    pub standing: Standing,
}

/// An organisation's catalogue.
#[derive(Debug, Clone, Default)]
pub struct Catalogue<'a> {
    /// As a consumer: its authorisations, by dataset, purpose and reference.
    pub may_call: Vec<Entry<'a>>,
    /// As a source: the authorisations on its datasets, by dataset,
    /// consumer, purpose and reference.
    pub called_by: Vec<Entry<'a>>,
}

/// The catalogue of `org` on `today`, from the registry's authorisations,
/// datasets and organisations.
pub fn catalogue<'a>(
    org: Kbo,
    authorisations: impl IntoIterator<Item = &'a Authorisation>,
    dataset: impl Fn(&DatasetName) -> Option<&'a Dataset>,
    organisation: impl Fn(&Kbo) -> Option<&'a Organisation>,
    today: Date,
) -> Catalogue<'a> {
    let mut out = Catalogue::default();
    for auth in authorisations {
        // A revoked authorisation opens nothing and never will again: it is
        // history (its versions stay readable), not a standing.
        if auth.status == crate::AuthorisationStatus::Revoked {
            continue;
        }
        let ds = dataset(&auth.dataset);
        let theirs = auth.consumer == org;
        let ours = ds.is_some_and(|d| d.source == org);
        if !theirs && !ours {
            continue;
        }
        let pick = |names: &std::collections::BTreeSet<crate::FieldName>| {
            ds.map(|d| {
                d.fields
                    .iter()
                    .filter(|f| names.contains(&f.name))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
        };
        let entry = Entry {
            authorisation: auth,
            dataset: ds,
            fields: pick(&auth.fields),
            check_fields: pick(&auth.check_fields),
            standing: if ds.is_some_and(|d| d.withdrawn) {
                Standing::DatasetWithdrawn
            } else {
                Standing::of(auth, organisation(&auth.consumer), today)
            },
        };
        if theirs {
            out.may_call.push(entry.clone());
        }
        if ours {
            out.called_by.push(entry);
        }
    }
    let key = |e: &Entry<'_>| {
        let a = e.authorisation;
        (
            a.dataset.to_string(),
            a.purpose.to_string(),
            a.reference.to_string(),
        )
    };
    out.may_call.sort_by_key(key);
    out.called_by.sort_by_key(|e| {
        let a = e.authorisation;
        (
            a.dataset.to_string(),
            a.consumer,
            a.purpose.to_string(),
            a.reference.to_string(),
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use time::macros::{date, datetime};

    use super::*;
    use crate::{
        AuthorisationRef, AuthorisationStatus, CapacityCode, FieldName, FieldType, PurposeCode,
        Role,
    };

    const CPAS: &str = "0212345668";
    const NR: &str = "0362247191";
    const OTHER: &str = "0566988259";

    fn kbo(s: &str) -> Kbo {
        Kbo::parse(s).expect("kbo")
    }

    fn field(name: &str, t: FieldType) -> FieldDefinition {
        FieldDefinition {
            name: FieldName::new(name).expect("field"),
            description: String::new(),
            field_type: t,
        }
    }

    fn dataset(name: &str, source: &str) -> Dataset {
        Dataset {
            withdrawn: false,
            name: DatasetName::new(name).expect("dataset"),
            source: kbo(source),
            description: String::new(),
            fields: vec![
                field("street", FieldType::String),
                field("postal_code", FieldType::String),
                field("nis_code", FieldType::String),
                field("since", FieldType::Date),
            ],
            endpoint: "https://127.0.0.1:1".into(),
            keeps_history: false,
        }
    }

    fn names(n: &[&str]) -> BTreeSet<FieldName> {
        n.iter()
            .map(|f| FieldName::new(*f).expect("field"))
            .collect()
    }

    fn auth(reference: &str, consumer: &str, ds: &str, purpose: &str) -> Authorisation {
        Authorisation {
            reference: AuthorisationRef::new(reference).expect("reference"),
            consumer: kbo(consumer),
            dataset: DatasetName::new(ds).expect("dataset"),
            // Listed out of the dataset's order on purpose.
            fields: names(&["since", "street"]),
            purpose: PurposeCode::new(purpose).expect("purpose"),
            legal_basis: "Loi du 26 mai 2002, art. 19".into(),
            issuing_body: "Brussels Supervisory Commission".into(),
            valid_from: date!(2024 - 01 - 01),
            valid_until: Some(date!(2026 - 12 - 31)),
            status: AuthorisationStatus::Active,
            version: 1,
            updated_at: datetime!(2024-01-01 0:00 UTC),
            confidential_until: None,
            check_fields: names(&["nis_code"]),
            checks: Vec::new(),
            capacities: [CapacityCode::new("RIS_APPLICANT").expect("capacity")].into(),
            consent_required: false,
            receives_mutations: false,
        }
    }

    fn org(k: &str, status: OrganisationStatus) -> Organisation {
        Organisation {
            kbo: kbo(k),
            name: k.into(),
            roles: [Role::Consumer].into(),
            status,
            created_at: datetime!(2024-01-01 0:00 UTC),
        }
    }

    #[test]
    fn standing_follows_decides_order() {
        let active = org(CPAS, OrganisationStatus::Active);
        let suspended = org(CPAS, OrganisationStatus::Suspended);
        let today = date!(2026 - 06 - 01);
        type Case<'a> = (
            &'a str,
            Box<dyn Fn(&mut Authorisation)>,
            Option<&'a Organisation>,
            Date,
            Standing,
        );
        let cases: &[Case<'_>] = &[
            (
                "in force",
                Box::new(|_| {}),
                Some(&active),
                today,
                Standing::InForce,
            ),
            (
                "first day",
                Box::new(|_| {}),
                Some(&active),
                date!(2024 - 01 - 01),
                Standing::InForce,
            ),
            (
                "last day",
                Box::new(|_| {}),
                Some(&active),
                date!(2026 - 12 - 31),
                Standing::InForce,
            ),
            (
                "day before",
                Box::new(|_| {}),
                Some(&active),
                date!(2023 - 12 - 31),
                Standing::NotYetValid,
            ),
            (
                "day after",
                Box::new(|_| {}),
                Some(&active),
                date!(2027 - 01 - 01),
                Standing::Expired,
            ),
            (
                "open-ended",
                Box::new(|a| a.valid_until = None),
                Some(&active),
                date!(2099 - 01 - 01),
                Standing::InForce,
            ),
            (
                "suspended beats expiry",
                Box::new(|a| a.status = AuthorisationStatus::Suspended),
                Some(&active),
                date!(2027 - 01 - 01),
                Standing::Suspended,
            ),
            (
                "consumer suspended beats all",
                Box::new(|a| a.status = AuthorisationStatus::Suspended),
                Some(&suspended),
                today,
                Standing::ConsumerSuspended,
            ),
            (
                "consumer unknown: the authorisation's own standing",
                Box::new(|_| {}),
                None,
                today,
                Standing::InForce,
            ),
        ];
        for (name, change, consumer, day, want) in cases {
            let mut a = auth(
                "BSC/2024/017",
                CPAS,
                "national_register.residence",
                "RIS_ELIGIBILITY",
            );
            change(&mut a);
            assert_eq!(Standing::of(&a, *consumer, *day), *want, "{name}");
            // And decide() agrees, for a lookup the authorisation covers
            // (the consumer's suspension is refused before decide() runs).
            if *want != Standing::ConsumerSuspended {
                assert_eq!(decided(&a, *day), *want, "{name}: decide()");
            }
        }
    }

    /// What `decide()` makes of a lookup for the authorisation's fields,
    /// with a file in the right capacity, on `day`.
    fn decided(a: &Authorisation, day: Date) -> Standing {
        use crate::{Decision, FilePhase, LookupQuestion, Niss, RefusalReason};
        let file = crate::PersonFile {
            id: "file".into(),
            consumer: a.consumer,
            citizen: Niss::parse("93051822361").expect("niss"),
            capacity: CapacityCode::new("RIS_APPLICANT").expect("capacity"),
            phase: FilePhase::Definitive,
            begins: date!(1900 - 01 - 01),
            ends: None,
            consumer_reference: String::new(),
            registered_by: "clerk".into(),
            registered_at: datetime!(2020-01-01 0:00 UTC),
            closed_at: None,
        };
        let fields: Vec<FieldName> = a.fields.iter().cloned().collect();
        let question = LookupQuestion {
            consumer: a.consumer,
            dataset: &a.dataset,
            fields: &fields,
            checks: &[],
            purpose: &a.purpose,
            today: day,
            date: day,
            now: day.midnight().assume_utc(),
            files: std::slice::from_ref(&file),
            consents: &[],
        };
        match crate::decide(&question, [a]) {
            Decision::Allow(_) => Standing::InForce,
            Decision::Deny(r) => match r.reason {
                RefusalReason::AuthorisationSuspended => Standing::Suspended,
                RefusalReason::AuthorisationNotYetValid => Standing::NotYetValid,
                RefusalReason::AuthorisationExpired => Standing::Expired,
                other => panic!("refused for {other:?}"),
            },
        }
    }

    #[test]
    fn a_consumer_sees_its_own_authorisations_and_a_source_who_calls_it() {
        let residence = dataset("national_register.residence", NR);
        let income = dataset("finance.income", OTHER);
        let auths = [
            auth(
                "BSC/2024/020",
                CPAS,
                "national_register.residence",
                "SOCIAL_HOUSING",
            ),
            auth(
                "BSC/2024/017",
                CPAS,
                "national_register.residence",
                "RIS_ELIGIBILITY",
            ),
            auth(
                "BSC/2024/030",
                OTHER,
                "national_register.residence",
                "RIS_ELIGIBILITY",
            ),
            auth("BSC/2024/040", CPAS, "finance.income", "RIS_ELIGIBILITY"),
            auth("BSC/2024/050", NR, "finance.income", "RIS_ELIGIBILITY"),
        ];
        let orgs = [
            org(CPAS, OrganisationStatus::Active),
            org(OTHER, OrganisationStatus::Suspended),
        ];
        let find_ds = |n: &DatasetName| [&residence, &income].into_iter().find(|d| d.name == *n);
        let find_org = |k: &Kbo| orgs.iter().find(|o| o.kbo == *k);
        let today = date!(2026 - 06 - 01);
        let refs = |entries: &[Entry<'_>]| {
            entries
                .iter()
                .map(|e| e.authorisation.reference.to_string())
                .collect::<Vec<_>>()
        };

        let cpas = catalogue(kbo(CPAS), &auths, find_ds, find_org, today);
        // By dataset, then purpose.
        assert_eq!(
            refs(&cpas.may_call),
            ["BSC/2024/040", "BSC/2024/017", "BSC/2024/020"]
        );
        assert!(cpas.called_by.is_empty(), "not a source of anything");
        let e = &cpas.may_call[1];
        // Readable fields in the dataset's order, with their types.
        let fields: Vec<_> = e
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.field_type))
            .collect();
        assert_eq!(
            fields,
            [("street", FieldType::String), ("since", FieldType::Date)]
        );
        let checks: Vec<_> = e.check_fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(checks, ["nis_code"]);
        assert_eq!(e.standing, Standing::InForce);

        let nr = catalogue(kbo(NR), &auths, find_ds, find_org, today);
        // The source sees every consumer of its dataset, by consumer; its own
        // authorisation on another dataset is what it may call.
        assert_eq!(
            refs(&nr.called_by),
            ["BSC/2024/017", "BSC/2024/020", "BSC/2024/030"]
        );
        assert_eq!(nr.called_by[2].standing, Standing::ConsumerSuspended);
        assert_eq!(refs(&nr.may_call), ["BSC/2024/050"]);

        let nobody = catalogue(kbo("0999999724"), &auths, find_ds, find_org, today);
        assert!(nobody.may_call.is_empty() && nobody.called_by.is_empty());

        // A revoked authorisation leaves both sides' catalogues.
        let mut revoked = auths.clone();
        revoked[1].status = crate::AuthorisationStatus::Revoked;
        let cpas = catalogue(kbo(CPAS), &revoked, find_ds, find_org, today);
        assert_eq!(refs(&cpas.may_call), ["BSC/2024/040", "BSC/2024/020"]);
        let nr = catalogue(kbo(NR), &revoked, find_ds, find_org, today);
        assert_eq!(refs(&nr.called_by), ["BSC/2024/020", "BSC/2024/030"]);
    }

    #[test]
    fn an_authorisation_on_an_unregistered_dataset_lists_no_fields() {
        let auths = [auth(
            "BSC/2024/017",
            CPAS,
            "national_register.residence",
            "RIS_ELIGIBILITY",
        )];
        let c = catalogue(kbo(CPAS), &auths, |_| None, |_| None, date!(2026 - 06 - 01));
        assert_eq!(c.may_call.len(), 1);
        assert!(c.may_call[0].dataset.is_none() && c.may_call[0].fields.is_empty());
    }
}
