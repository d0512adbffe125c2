//! The demo registry: organisations with valid enterprise numbers, the
//! datasets of the three demo sources, and authorisations that read like
//! real deliberations.

use std::collections::BTreeSet;

use semel_core::{
    Authorisation, AuthorisationRef, AuthorisationStatus, CapacityCode, CheckOp, CheckRule,
    Dataset, DatasetName, ElementPath, FieldDefinition, FieldName, FieldType, FilePhase, Kbo, Niss,
    Operand, Organisation, OrganisationStatus, PersonFile, PurposeCode, Role,
};
use time::{Date, OffsetDateTime};

use crate::population::date;

/// A demo organisation: a short name for the command line, its enterprise
/// number, official name and roles.
#[derive(Debug, Clone)]
pub struct DemoOrg {
    pub slug: &'static str,
    pub kbo: Kbo,
    pub name: &'static str,
    pub roles: &'static [Role],
}

fn kbo(prefix: u32) -> Kbo {
    // Prefixes are chosen with a first digit of 0 or 1, which always gives
    // a valid number; a bad literal here is a programming error.
    match Kbo::from_prefix(prefix) {
        Some(k) => k,
        None => panic!("demo enterprise number prefix {prefix} is invalid"),
    }
}

/// The demo organisations. The three sources use the primer's example
/// numbers; the others are synthetic numbers with valid check digits.
pub fn organisations() -> Vec<DemoOrg> {
    vec![
        DemoOrg {
            slug: "operator",
            kbo: kbo(8_765_432),
            name: "Semel demo operator",
            roles: &[Role::Operator],
        },
        DemoOrg {
            slug: "national-register",
            kbo: kbo(3_145_953),
            name: "SPF Intérieur – Registre national",
            roles: &[Role::Source],
        },
        DemoOrg {
            slug: "spf-finances",
            kbo: kbo(5_669_882),
            name: "SPF Finances",
            roles: &[Role::Source],
        },
        DemoOrg {
            slug: "onem",
            kbo: kbo(10_068_725),
            name: "Office national de l'Emploi (ONEM)",
            roles: &[Role::Source],
        },
        DemoOrg {
            slug: "cpas-anderlecht",
            kbo: kbo(2_123_456),
            name: "CPAS d'Anderlecht",
            roles: &[Role::Consumer],
        },
        DemoOrg {
            slug: "cpas-bruxelles",
            kbo: kbo(2_123_457),
            name: "CPAS de la Ville de Bruxelles",
            roles: &[Role::Consumer],
        },
        DemoOrg {
            slug: "commune-schaerbeek",
            kbo: kbo(2_073_001),
            name: "Commune de Schaerbeek",
            roles: &[Role::Consumer],
        },
        DemoOrg {
            slug: "ville-bruxelles",
            kbo: kbo(2_073_734),
            name: "Ville de Bruxelles",
            roles: &[Role::Consumer],
        },
        DemoOrg {
            slug: "irisbox",
            kbo: kbo(2_476_543),
            name: "IRISbox – portail citoyen de la Région de Bruxelles-Capitale",
            roles: &[Role::CitizenPortal],
        },
        DemoOrg {
            slug: "control-commission",
            kbo: kbo(6_543_210),
            name: "Commission de contrôle bruxelloise",
            roles: &[Role::Auditor],
        },
    ]
}

/// The demo organisation with this slug.
pub fn org(slug: &str) -> Option<DemoOrg> {
    organisations().into_iter().find(|o| o.slug == slug)
}

impl DemoOrg {
    /// The roles its people get in demo tokens: every role its registration
    /// allows.
    pub fn user_roles(&self) -> Vec<semel_core::UserRole> {
        let registered = self.roles.iter().copied().collect();
        semel_core::RoleSet::of(&semel_core::UserRole::ALL)
            .allowed_for(&registered)
            .iter()
            .filter(|r| *r != semel_core::UserRole::Citizen)
            .collect()
    }

    pub fn to_organisation(&self, now: OffsetDateTime) -> Organisation {
        Organisation {
            kbo: self.kbo,
            name: self.name.to_owned(),
            roles: self.roles.iter().copied().collect(),
            status: OrganisationStatus::Active,
            created_at: now,
        }
    }
}

/// The demo purposes catalogue: every purpose a demo authorisation names.
pub fn purposes() -> Vec<semel_core::Purpose> {
    [
        (
            "RIS_ELIGIBILITY",
            "Checking an applicant's right to the social integration income (RIS) and its amount",
            "Loi du 26 mai 2002 concernant le droit à l'intégration sociale, art. 19",
        ),
        (
            "SCHOOL_ENROLMENT",
            "Checking that a pupil lives in the commune, for school enrolment priority",
            "Décret du 24 juillet 1997 (missions de l'enseignement), art. 79",
        ),
        (
            "SOCIAL_HOUSING",
            "Checking a candidate tenant's income for social housing",
            "Code bruxellois du Logement, art. 140",
        ),
        (
            "ACTIVATION_FOLLOW_UP",
            "Following up a jobseeker's activation path",
            "Arrêté royal du 25 novembre 1991 (réglementation du chômage)",
        ),
        (
            "ENERGY_ALLOWANCE",
            "Granting the social energy allowance",
            "Ordonnance du 19 juillet 2001 (marché de l'électricité), art. 20",
        ),
    ]
    .into_iter()
    .map(|(code, description, legal_basis)| semel_core::Purpose {
        code: name(PurposeCode::new(code)),
        description: description.to_owned(),
        legal_basis: legal_basis.to_owned(),
    })
    .collect()
}

/// Names of the demo datasets.
pub mod datasets {
    pub const IDENTITY: &str = "national_register.identity";
    pub const RESIDENCE: &str = "national_register.residence";
    pub const HOUSEHOLD: &str = "national_register.household";
    pub const TAXABLE_INCOME: &str = "spf_finances.taxable_income";
    pub const UNEMPLOYMENT: &str = "onem.unemployment_benefits";
}

fn name<T>(r: Result<T, semel_core::NameError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("demo name is invalid: {e}"),
    }
}

fn fields(defs: &[(&str, FieldType, &str)]) -> Vec<FieldDefinition> {
    defs.iter()
        .map(|(n, t, d)| FieldDefinition {
            name: name(FieldName::new(*n)),
            description: (*d).to_owned(),
            field_type: *t,
        })
        .collect()
}

/// The demo datasets, each pointing at `endpoint(source slug)`.
pub fn datasets(endpoint: impl Fn(&str) -> String) -> Vec<Dataset> {
    use FieldType::*;
    let nr = org("national-register").map(|o| o.kbo);
    let fin = org("spf-finances").map(|o| o.kbo);
    let onem = org("onem").map(|o| o.kbo);
    let ds = |n: &str,
              source: Option<Kbo>,
              slug: &str,
              description: &str,
              history: bool,
              f: Vec<FieldDefinition>| Dataset {
        withdrawn: false,
        name: name(DatasetName::new(n)),
        source: source.unwrap_or_else(|| panic!("demo source {slug} missing")),
        description: description.to_owned(),
        fields: f,
        endpoint: endpoint(slug),
        keeps_history: history,
    };
    vec![
        ds(
            datasets::IDENTITY,
            nr,
            "national-register",
            "Identity of a person registered in the National Register.",
            false,
            fields(&[
                ("family_name", String, "Family name"),
                ("given_names", String, "Given names"),
                ("birth_date", Date, "Date of birth"),
                ("sex", String, "Registered sex: M or F"),
                ("nationality", String, "Nationality, ISO 3166-1 alpha-2"),
            ]),
        ),
        ds(
            datasets::RESIDENCE,
            nr,
            "national-register",
            "Main residence (domicile) as registered, with history.",
            true,
            fields(&[
                ("street", String, "Street name"),
                ("house_number", String, "House number and box"),
                ("postal_code", String, "Postal code"),
                ("municipality", String, "Municipality name"),
                (
                    "nis_code",
                    String,
                    "NIS code of the municipality, e.g. 21004",
                ),
                (
                    "resident_since",
                    Date,
                    "Date of registration at this address",
                ),
            ]),
        ),
        ds(
            datasets::HOUSEHOLD,
            nr,
            "national-register",
            "Composition of the household the person belongs to.",
            true,
            fields(&[
                ("household_id", String, "Identifier of the household"),
                ("household_size", Int, "Number of members"),
                (
                    "members",
                    List,
                    "Members: citizen, given_names, family_name, relationship, birth_date",
                ),
            ]),
        ),
        ds(
            datasets::TAXABLE_INCOME,
            fin,
            "spf-finances",
            "Taxable income by income year, from personal income tax assessments.",
            false,
            fields(&[
                (
                    "latest_income_year",
                    Int,
                    "Most recent assessed income year",
                ),
                (
                    "latest_taxable_income_cents",
                    Int,
                    "Taxable income of that year, in euro cents",
                ),
                (
                    "income_years",
                    List,
                    "Every assessed year: income_year, taxable_income_cents, assessment_date",
                ),
            ]),
        ),
        ds(
            datasets::UNEMPLOYMENT,
            onem,
            "onem",
            "Unemployment benefit periods paid by ONEM.",
            true,
            fields(&[
                (
                    "entitled",
                    Bool,
                    "Whether benefits are paid on the reference date",
                ),
                (
                    "periods",
                    List,
                    "Benefit periods: start, end, benefit_type, daily_amount_cents",
                ),
            ]),
        ),
    ]
}

/// Purposes used by the demo authorisations, with their legal basis.
pub const RIS_LEGAL_BASIS: &str =
    "Loi du 26 mai 2002 concernant le droit à l'intégration sociale, art. 19 §2";
pub const SCHOOL_LEGAL_BASIS: &str =
    "Ordonnance du 17 juillet 2020 (collecte unique des données); décret Inscriptions, art. 79/6";

struct A<'a> {
    reference: &'a str,
    consumer: &'a str,
    dataset: &'a str,
    fields: &'a [&'a str],
    purpose: &'a str,
    legal_basis: &'a str,
    from: Date,
    until: Option<Date>,
    suspended: bool,
    /// Fields that may only be tested (yes/no answers).
    checks: &'a [&'a str],
    /// Capacities of the persons directory it accepts (empty: any).
    capacities: &'a [&'a str],
    consent: bool,
    /// Whether the consumer is told of the dataset's changes.
    mutations: bool,
}

/// Capacities of the demo persons directory.
pub mod capacities {
    /// Someone who applied for the social integration income.
    pub const RIS_APPLICANT: &str = "RIS_APPLICANT";
    /// Someone who receives it.
    pub const RIS_BENEFICIARY: &str = "RIS_BENEFICIARY";
    /// A member of an applicant's or beneficiary's household.
    pub const RIS_COHABITANT: &str = "RIS_COHABITANT";
    /// A child applying for a place in a commune's school.
    pub const PUPIL: &str = "PUPIL";
    /// A candidate tenant of social housing.
    pub const HOUSING_CANDIDATE: &str = "HOUSING_CANDIDATE";
}

const RIS_CAPACITIES: &[&str] = &[
    capacities::RIS_APPLICANT,
    capacities::RIS_BENEFICIARY,
    capacities::RIS_COHABITANT,
];

/// The demo authorisations: two CPAS for RIS eligibility, two communes for
/// school enrolment, and three that show refusals (expired, not yet valid,
/// suspended).
pub fn authorisations(now: OffsetDateTime) -> Vec<Authorisation> {
    use datasets::*;
    const ADDRESS: &[&str] = &[
        "street",
        "house_number",
        "postal_code",
        "municipality",
        "nis_code",
        "resident_since",
    ];
    const HOUSEHOLD_F: &[&str] = &["household_id", "household_size", "members"];
    const INCOME: &[&str] = &[
        "latest_income_year",
        "latest_taxable_income_cents",
        "income_years",
    ];
    const BENEFITS: &[&str] = &["entitled", "periods"];
    const IDENTITY_F: &[&str] = &["family_name", "given_names", "birth_date"];
    let ris = |reference, consumer, dataset, fields| A {
        reference,
        consumer,
        dataset,
        fields,
        purpose: "RIS_ELIGIBILITY",
        legal_basis: RIS_LEGAL_BASIS,
        from: date(2024, 3, 1),
        until: Some(date(2029, 12, 31)),
        suspended: false,
        checks: &[],
        capacities: RIS_CAPACITIES,
        consent: false,
        // A CPAS learns of moves, household changes, deaths and benefit
        // periods of its beneficiaries; income comes once a year, asked.
        mutations: dataset != TAXABLE_INCOME,
    };
    let list = vec![
        ris("BSC/2024/017", "cpas-anderlecht", RESIDENCE, ADDRESS),
        ris("BSC/2024/018", "cpas-anderlecht", HOUSEHOLD, HOUSEHOLD_F),
        ris("BSC/2024/019", "cpas-anderlecht", TAXABLE_INCOME, INCOME),
        ris("BSC/2024/020", "cpas-anderlecht", UNEMPLOYMENT, BENEFITS),
        ris("BSC/2024/021", "cpas-anderlecht", IDENTITY, IDENTITY_F),
        ris("BSC/2025/003", "cpas-bruxelles", RESIDENCE, ADDRESS),
        ris("BSC/2025/004", "cpas-bruxelles", HOUSEHOLD, HOUSEHOLD_F),
        ris("BSC/2025/005", "cpas-bruxelles", TAXABLE_INCOME, INCOME),
        ris("BSC/2025/006", "cpas-bruxelles", UNEMPLOYMENT, BENEFITS),
        A {
            reference: "BSC/2023/044",
            consumer: "commune-schaerbeek",
            dataset: RESIDENCE,
            fields: &[],
            purpose: "SCHOOL_ENROLMENT",
            legal_basis: SCHOOL_LEGAL_BASIS,
            from: date(2023, 9, 1),
            until: None,
            suspended: false,
            // Asked as the named question RESIDES_IN_SCHAERBEEK below.
            checks: &[],
            capacities: &[capacities::PUPIL],
            consent: false,
            mutations: true,
        },
        A {
            reference: "BSC/2023/045",
            consumer: "ville-bruxelles",
            dataset: RESIDENCE,
            fields: &[],
            purpose: "SCHOOL_ENROLMENT",
            legal_basis: SCHOOL_LEGAL_BASIS,
            from: date(2023, 9, 1),
            until: None,
            suspended: false,
            checks: &["nis_code"],
            capacities: &[capacities::PUPIL],
            consent: false,
            mutations: true,
        },
        A {
            reference: "BSC/2019/101",
            consumer: "ville-bruxelles",
            dataset: TAXABLE_INCOME,
            fields: INCOME,
            purpose: "SOCIAL_HOUSING",
            legal_basis: "Code bruxellois du Logement, art. 31",
            from: date(2019, 6, 1),
            until: Some(date(2023, 12, 31)),
            suspended: false,
            checks: &[],
            capacities: &[],
            consent: false,
            mutations: false,
        },
        A {
            reference: "BSC/2026/007",
            consumer: "commune-schaerbeek",
            dataset: UNEMPLOYMENT,
            fields: BENEFITS,
            purpose: "ACTIVATION_FOLLOW_UP",
            legal_basis: "Ordonnance du 9 juillet 2015 (activation des demandeurs d'emploi)",
            from: date(2030, 1, 1),
            until: None,
            suspended: false,
            checks: &[],
            capacities: &[],
            consent: false,
            mutations: false,
        },
        A {
            reference: "BSC/2022/033",
            consumer: "cpas-bruxelles",
            dataset: IDENTITY,
            fields: IDENTITY_F,
            purpose: "ENERGY_ALLOWANCE",
            legal_basis: "Ordonnance du 14 décembre 2006 (énergie), art. 20",
            from: date(2022, 1, 1),
            until: None,
            suspended: true,
            checks: &[],
            capacities: &[],
            consent: false,
            mutations: false,
        },
        A {
            reference: "BSC/2026/012",
            consumer: "cpas-bruxelles",
            dataset: TAXABLE_INCOME,
            fields: &[],
            purpose: "SOCIAL_HOUSING",
            legal_basis: "Code bruxellois du Logement, art. 31; consent of the candidate",
            from: date(2025, 1, 1),
            until: None,
            suspended: false,
            // Asked as the named questions below.
            checks: &[],
            capacities: &[capacities::HOUSING_CANDIDATE],
            consent: true,
            mutations: false,
        },
    ];
    list.into_iter()
        .map(|a| Authorisation {
            reference: name(AuthorisationRef::new(a.reference)),
            consumer: org(a.consumer)
                .map(|o| o.kbo)
                .unwrap_or_else(|| panic!("demo consumer {} missing", a.consumer)),
            dataset: name(DatasetName::new(a.dataset)),
            fields: a
                .fields
                .iter()
                .map(|f| name(FieldName::new(*f)))
                .collect::<BTreeSet<_>>(),
            purpose: name(PurposeCode::new(a.purpose)),
            legal_basis: a.legal_basis.to_owned(),
            issuing_body: "Brussels Supervisory Commission (demo)".to_owned(),
            valid_from: a.from,
            valid_until: a.until,
            status: if a.suspended {
                AuthorisationStatus::Suspended
            } else {
                AuthorisationStatus::Active
            },
            version: 1,
            updated_at: now,
            confidential_until: None,
            check_fields: a.checks.iter().map(|f| name(FieldName::new(*f))).collect(),
            checks: questions(a.reference),
            capacities: a
                .capacities
                .iter()
                .map(|c| name(CapacityCode::new(*c)))
                .collect(),
            consent_required: a.consent,
            receives_mutations: a.mutations,
        })
        .collect()
}

/// The yes/no questions the demo authorisations name: the commune of
/// Schaerbeek asks whether a pupil lives in Schaerbeek; CPAS de Bruxelles
/// whether a social-housing candidate's income (of a year, or the latest)
/// lies below the ceiling. (The Ville de Bruxelles asks its residence
/// question through `check_fields`: equality with a commune it names,
/// bounded per citizen.)
fn questions(reference: &str) -> Vec<CheckRule> {
    let field = |f: &str| name(FieldName::new(f));
    match reference {
        "BSC/2023/044" => vec![CheckRule {
            name: "RESIDES_IN_SCHAERBEEK".into(),
            field: field("nis_code"),
            element: None,
            op: CheckOp::Equals,
            operand: Some(Operand::Text("21015".into())),
        }],
        "BSC/2026/012" => vec![
            CheckRule {
                name: "INCOME_BELOW_HOUSING_CEILING".into(),
                field: field("income_years"),
                element: Some(ElementPath {
                    key_field: field("income_year"),
                    value_field: field("taxable_income_cents"),
                }),
                op: CheckOp::LessThan,
                operand: Some(Operand::Int(HOUSING_CEILING_CENTS)),
            },
            CheckRule {
                name: "LATEST_INCOME_BELOW_HOUSING_CEILING".into(),
                field: field("latest_taxable_income_cents"),
                element: None,
                op: CheckOp::LessThan,
                operand: Some(Operand::Int(HOUSING_CEILING_CENTS)),
            },
        ],
        _ => Vec::new(),
    }
}

/// The demo's social-housing income ceiling, in cents (25,000 euros).
pub const HOUSING_CEILING_CENTS: i64 = 2_500_000;

/// The demo persons directory: CPAS d'Anderlecht holds a definitive file
/// on every RIS beneficiary of the synthetic population (every person, in
/// the demo, so load tests find files), from 1 March 2024. The other
/// consumers hold none: demos and tests open them.
pub fn files(people: &[Niss], now: OffsetDateTime) -> Vec<PersonFile> {
    let Some(cpas) = org("cpas-anderlecht") else {
        return Vec::new();
    };
    people
        .iter()
        .enumerate()
        .map(|(i, n)| PersonFile {
            id: format!("demo-anderlecht-{i:06}"),
            consumer: cpas.kbo,
            citizen: *n,
            capacity: name(CapacityCode::new(capacities::RIS_BENEFICIARY)),
            phase: FilePhase::Definitive,
            begins: date(2024, 3, 1),
            ends: None,
            consumer_reference: format!("RIS-{i:06}"),
            registered_by: "demo-seed".to_owned(),
            registered_at: now,
            closed_at: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_is_consistent() {
        let orgs = organisations();
        let kbos: BTreeSet<_> = orgs.iter().map(|o| o.kbo).collect();
        assert_eq!(kbos.len(), orgs.len(), "enterprise numbers are unique");
        let ds = datasets(|slug| format!("https://{slug}"));
        for a in authorisations(OffsetDateTime::UNIX_EPOCH) {
            let d = ds
                .iter()
                .find(|d| d.name == a.dataset)
                .expect("dataset exists");
            for r in &a.checks {
                assert_eq!(r.problem(), None, "{}", a.reference);
            }
            for f in a
                .fields
                .iter()
                .chain(&a.check_fields)
                .chain(a.checks.iter().map(|r| &r.field))
            {
                assert!(
                    d.field(f.as_str()).is_some(),
                    "{} allows unknown field {f}",
                    a.reference
                );
            }
            assert!(kbos.contains(&a.consumer));
        }
    }
}
