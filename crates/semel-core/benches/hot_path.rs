//! Micro-benchmarks of the pure pieces on the lookup path: identifier
//! parsing, the decision, and the audit entry's encoding and hash.
//! `cargo bench -p semel-core`. (The Merkle append comes with the Merkle log.)

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use semel_core::*;
use time::macros::{date, datetime};

fn authorisation(reference: &str, dataset: &str, purpose: &str, fields: &[&str]) -> Authorisation {
    Authorisation {
        reference: AuthorisationRef::new(reference).expect("ref"),
        consumer: Kbo::parse("0212345668").expect("kbo"),
        dataset: DatasetName::new(dataset).expect("dataset"),
        fields: fields
            .iter()
            .map(|f| FieldName::new(*f).expect("field"))
            .collect::<BTreeSet<_>>(),
        purpose: PurposeCode::new(purpose).expect("purpose"),
        legal_basis: "Loi du 26 mai 2002, art. 19".into(),
        issuing_body: "Brussels Supervisory Commission".into(),
        valid_from: date!(2024 - 03 - 01),
        valid_until: Some(date!(2029 - 12 - 31)),
        status: AuthorisationStatus::Active,
        version: 1,
        updated_at: datetime!(2024-03-01 0:00 UTC),
        confidential_until: None,
        check_fields: BTreeSet::new(),
        checks: Vec::new(),
        capacities: [CapacityCode::new("RIS_BENEFICIARY").expect("capacity")].into(),
        consent_required: false,
        receives_mutations: false,
    }
}

fn identifiers(c: &mut Criterion) {
    c.bench_function("niss_parse_bare", |b| {
        b.iter(|| Niss::parse(black_box("93051822361")))
    });
    c.bench_function("niss_parse_formatted", |b| {
        b.iter(|| Niss::parse(black_box("93.05.18-223.61")))
    });
    c.bench_function("niss_parse_invalid", |b| {
        b.iter(|| Niss::parse(black_box("93051822362")))
    });
    c.bench_function("kbo_parse", |b| {
        b.iter(|| Kbo::parse(black_box("0212.345.668")))
    });
}

fn decision(c: &mut Criterion) {
    // What the broker hands decide(): the consumer's authorisations for the
    // dataset (here two, one for another purpose).
    let auths = vec![
        authorisation(
            "BSC/2024/017",
            "national_register.residence",
            "RIS_ELIGIBILITY",
            &[
                "street",
                "house_number",
                "postal_code",
                "municipality",
                "nis_code",
                "resident_since",
            ],
        ),
        authorisation(
            "BSC/2023/044",
            "national_register.residence",
            "SCHOOL_ENROLMENT",
            &["postal_code", "municipality", "nis_code"],
        ),
    ];
    let dataset = DatasetName::new("national_register.residence").expect("dataset");
    let fields: Vec<FieldName> = ["street", "postal_code", "municipality"]
        .iter()
        .map(|f| FieldName::new(*f).expect("field"))
        .collect();
    let allowed = PurposeCode::new("RIS_ELIGIBILITY").expect("purpose");
    let refused = PurposeCode::new("ENERGY_ALLOWANCE").expect("purpose");
    let files = [PersonFile {
        id: "0193a0c4-7e1f-7000-8000-000000000001".into(),
        consumer: Kbo::parse("0212345668").expect("kbo"),
        citizen: Niss::parse("93051822361").expect("niss"),
        capacity: CapacityCode::new("RIS_BENEFICIARY").expect("capacity"),
        phase: FilePhase::Definitive,
        begins: date!(2024 - 03 - 01),
        ends: None,
        consumer_reference: String::new(),
        registered_by: "clerk".into(),
        registered_at: datetime!(2024-03-01 0:00 UTC),
        closed_at: None,
    }];
    let q = |purpose| LookupQuestion {
        consumer: Kbo::parse("0212345668").expect("kbo"),
        dataset: &dataset,
        fields: &fields,
        checks: &[],
        purpose,
        today: date!(2026 - 11 - 22),
        date: date!(2026 - 11 - 22),
        now: datetime!(2026-11-22 12:00 UTC),
        files: &files,
        consents: &[],
    };
    c.bench_function("decide_allow", |b| {
        b.iter(|| decide(black_box(&q(&allowed)), black_box(&auths)))
    });
    c.bench_function("decide_refuse", |b| {
        b.iter(|| decide(black_box(&q(&refused)), black_box(&auths)))
    });
}

fn audit(c: &mut Criterion) {
    let entry = AuditEntry {
        format: semel_core::FORMAT,
        sequence: 1_234_567,
        previous_hash: [7; 32],
        record: AuditRecord {
            request_id: [1; 16],
            time_micros: 1_790_000_000_000_000,
            operation: semel_core::LOOKUP_OPERATION.into(),
            consumer: Kbo::parse("0212345668").expect("kbo"),
            end_user: None,
            citizen: Niss::parse("93051822361").ok(),
            dataset: "national_register.residence".into(),
            fields_requested: vec!["street".into(), "postal_code".into(), "municipality".into()],
            fields_returned: vec!["municipality".into(), "postal_code".into(), "street".into()],
            purpose: "RIS_ELIGIBILITY".into(),
            authorisation: Some("BSC/2024/017".into()),
            authorisation_version: None,
            decision: AuditDecision::Allowed,
            reason: None,
            outcome: Outcome::Answered,
            source: Kbo::parse("0314595348").ok(),
            consumer_reference: "RIS-2026-0042".into(),
            reference_date: None,
            citizen_as_given: None,
            checks: Vec::new(),
            detail: "file 0193a0c4-7e1f-7000-8000-000000000001 (RIS_BENEFICIARY, definitive)"
                .into(),
        },
    };
    let mut buf = Vec::with_capacity(512);
    c.bench_function("audit_encode", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&entry).encode(&mut buf);
            buf.len()
        })
    });
    let bytes = entry.to_bytes();
    c.bench_function("audit_entry_hash", |b| {
        b.iter(|| entry_hash(black_box(&bytes)))
    });
    c.bench_function("audit_decode", |b| {
        b.iter(|| AuditEntry::decode(black_box(&bytes)))
    });
}

/// The Merkle append in memory: the leaf folded into the frontier of
/// perfect subtrees (one node hash per trailing 1 bit of the size, two on
/// average), as the verifier does for every entry.
fn merkle(c: &mut Criterion) {
    c.bench_function("merkle_node_hash", |b| {
        b.iter(|| semel_core::merkle::node_hash(black_box(&[1; 32]), black_box(&[2; 32])))
    });
    let mut range = semel_core::merkle::CompactRange::new();
    let mut leaf = [0u8; 32];
    c.bench_function("merkle_append_compact", |b| {
        b.iter(|| {
            leaf[..8].copy_from_slice(&range.size().to_be_bytes());
            range.push(black_box(leaf));
        })
    });
}

criterion_group!(benches, identifiers, decision, audit, merkle);
criterion_main!(benches);
