//! The rules held against insiders: a consumer's clerk asking cleverly, an
//! organisation's auditor, an operator. Yes/no answers that cannot be
//! turned into the value, rule changes and reads of the log that are in the
//! log, files that cannot be backdated, batches and floods that identity
//! still governs, and caller text that cannot poison the record.

use semel_core::UserRole;
use semel_demo::seed::datasets::*;
use semel_server::proto::lookup_service_client::LookupServiceClient;
use semel_server::proto::{self, CheckAnswer};
use tonic::Code;

use crate::harness::*;

fn kbo(slug: &str) -> String {
    semel_demo::seed::org(slug)
        .expect("org")
        .kbo
        .as_str()
        .to_owned()
}

/// The newest entry of `operation`.
async fn last_of(t: &TestDemo, operation: &str) -> proto::AuditEntry {
    t.all_audit_entries()
        .await
        .into_iter()
        .rev()
        .find(|e| e.operation == operation)
        .unwrap_or_else(|| panic!("no entry of {operation}"))
}

fn income_of(year: i64, value_field: &str, op: &str, cents: i64) -> proto::Check {
    check(&format!(
        "income_years[income_year={year}].{value_field}{op}{cents}"
    ))
}

/// Finding 1: a CPAS allowed only to ask "income below the social-housing
/// ceiling?" cannot learn the income by bisection, by testing another field
/// of the element, or by sweeping every year; every question and its answer
/// is in the entry.
#[tokio::test]
async fn yes_no_questions_cannot_be_turned_into_the_value() {
    let t = TestDemo::start().await;
    t.open_file(BRUXELLES_CPAS, KARIM, "HOUSING_CANDIDATE")
        .await;
    semel_server::proto::consent_service_client::ConsentServiceClient::new(
        t.citizen_channel(KARIM).await,
    )
    .give_consent(proto::GiveConsentRequest {
        consent: Some(proto::Consent {
            citizen: KARIM.into(),
            consumer_kbo: kbo(BRUXELLES_CPAS),
            purpose: "SOCIAL_HOUSING".into(),
            ..Default::default()
        }),
    })
    .await
    .expect("consent");
    let mut cpas = t.lookup_client(BRUXELLES_CPAS).await;
    let ask = |checks: Vec<proto::Check>| proto::LookupRequest {
        checks,
        ..lookup(KARIM, TAXABLE_INCOME, &[], "SOCIAL_HOUSING")
    };
    // The question the deliberation names.
    let r = cpas
        .lookup(ask(vec![check("latest_taxable_income_cents<2500000")]))
        .await
        .expect("the named question")
        .into_inner();
    assert!(r.fields.is_empty());
    let word = match CheckAnswer::try_from(r.checks[0].answer) {
        Ok(CheckAnswer::Yes) => "YES",
        Ok(CheckAnswer::No) => "NO",
        other => panic!("{other:?}"),
    };
    let entry = last_of(&t, semel_core::LOOKUP_OPERATION).await;
    assert_eq!(
        entry.checks,
        vec![format!("latest_taxable_income_cents < 2500000: {word}")]
    );
    // Bisection: any other threshold, any other comparison, is refused,
    // and the refused question is recorded as asked.
    for c in [
        "latest_taxable_income_cents<1250000",
        "latest_taxable_income_cents>=2500000",
        "latest_taxable_income_cents=1800000",
    ] {
        let err = cpas.lookup(ask(vec![check(c)])).await.expect_err(c);
        assert_error(&err, Code::PermissionDenied, "CHECK_NOT_ALLOWED");
        assert!(
            err.message()
                .contains("LATEST_INCOME_BELOW_HOUSING_CEILING"),
            "the refusal names the questions allowed"
        );
        let entry = last_of(&t, semel_core::LOOKUP_OPERATION).await;
        assert_eq!(entry.reason, "CHECK_NOT_ALLOWED");
        assert_eq!(entry.checks.len(), 1);
        assert!(!entry.checks[0].contains(": "), "no answer was given");
    }
    // An element's other field cannot be tested through the allowed path.
    let err = cpas
        .lookup(ask(vec![income_of(2024, "benefit_cents", "<", 2_500_000)]))
        .await
        .expect_err("another field of the element");
    assert_error(&err, Code::PermissionDenied, "CHECK_NOT_ALLOWED");
    // Sweeping the years: four different questions about Karim's incomes a
    // day, then no more; asking one again is free.
    for year in [2021, 2022, 2023, 2024] {
        cpas.lookup(ask(vec![income_of(
            year,
            "taxable_income_cents",
            "<",
            2_500_000,
        )]))
        .await
        .unwrap_or_else(|e| panic!("{year}: {e:?}"));
    }
    let err = cpas
        .lookup(ask(vec![income_of(
            2020,
            "taxable_income_cents",
            "<",
            2_500_000,
        )]))
        .await
        .expect_err("a fifth year");
    assert_error(&err, Code::ResourceExhausted, "CHECK_LIMIT_REACHED");
    let entry = last_of(&t, semel_core::LOOKUP_OPERATION).await;
    assert_eq!(entry.reason, "CHECK_LIMIT_REACHED");
    assert_eq!(entry.authorisation_reference, "BSC/2026/012");
    cpas.lookup(ask(vec![income_of(
        2024,
        "taxable_income_cents",
        "<",
        2_500_000,
    )]))
    .await
    .expect("the same question again");

    // Equality with a value the consumer gives (check_fields): enumerating
    // the communes stops after four guesses.
    t.open_file(VILLE, JAN, "PUPIL").await;
    let mut ville = t.lookup_client(VILLE).await;
    let guess = |nis: &str| proto::LookupRequest {
        checks: vec![check(&format!("nis_code={nis}"))],
        ..lookup(JAN, RESIDENCE, &[], "SCHOOL_ENROLMENT")
    };
    for nis in ["21001", "21004", "21009", "21015"] {
        ville.lookup(guess(nis)).await.expect(nis);
    }
    let err = ville
        .lookup(guess("21016"))
        .await
        .expect_err("a fifth commune");
    assert_error(&err, Code::ResourceExhausted, "CHECK_LIMIT_REACHED");
    // Ordered comparisons are never open to a consumer-given value.
    let err = ville
        .lookup(proto::LookupRequest {
            checks: vec![check("resident_since<2010-01-01")],
            ..lookup(JAN, RESIDENCE, &[], "SCHOOL_ENROLMENT")
        })
        .await
        .expect_err("an ordered question not named");
    assert_error(&err, Code::PermissionDenied, "CHECK_NOT_ALLOWED");
    t.stop().await;
}

/// Finding 3: every change to the rules, and every read of personal data
/// in the log, is itself in the log.
#[tokio::test]
async fn rule_changes_and_reads_of_the_log_are_in_the_log() {
    let t = TestDemo::start().await;
    let mut reg = t.registry().await;
    reg.create_authorisation(proto::CreateAuthorisationRequest {
        authorisation: Some(proto::Authorisation {
            reference: "BSC/2026/099".into(),
            consumer_kbo: kbo(SCHAERBEEK),
            dataset: HOUSEHOLD.into(),
            fields: vec!["household_size".into()],
            purpose: "RIS_ELIGIBILITY".into(),
            legal_basis: "a rogue grant".into(),
            issuing_body: "nobody".into(),
            valid_from: "2020-01-01".into(),
            ..Default::default()
        }),
    })
    .await
    .expect("grant");
    let e = last_of(&t, "semel.v1.RegistryService/CreateAuthorisation").await;
    assert_eq!(e.decision, proto::AuditDecision::Allowed as i32);
    assert_eq!(e.authorisation_reference, "BSC/2026/099");
    assert_eq!(e.dataset, HOUSEHOLD);
    assert!(e.detail.contains("household_size"), "{}", e.detail);
    assert!(e.detail.contains("a rogue grant"), "{}", e.detail);
    assert_eq!(e.end_user, "demo-user@operator");
    reg.suspend_authorisation(proto::SuspendAuthorisationRequest {
        reference: "BSC/2026/099".into(),
        reason: "granted by mistake".into(),
    })
    .await
    .expect("suspend");
    let e = last_of(&t, "semel.v1.RegistryService/SuspendAuthorisation").await;
    assert!(e.detail.contains("granted by mistake"), "{}", e.detail);
    // A refused change is recorded too.
    let err = reg
        .create_authorisation(proto::CreateAuthorisationRequest {
            authorisation: Some(proto::Authorisation {
                reference: "BSC/2026/100".into(),
                consumer_kbo: kbo("national-register"),
                dataset: HOUSEHOLD.into(),
                fields: vec!["household_size".into()],
                purpose: "RIS_ELIGIBILITY".into(),
                legal_basis: "x".into(),
                issuing_body: "x".into(),
                valid_from: "2020-01-01".into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("not a consumer");
    assert_error(&err, Code::FailedPrecondition, "NOT_A_CONSUMER");
    let e = last_of(&t, "semel.v1.RegistryService/CreateAuthorisation").await;
    assert_eq!(e.decision, proto::AuditDecision::Refused as i32);
    assert_eq!(e.authorisation_reference, "BSC/2026/100");
    let files = t.demo().client(SCHAERBEEK).expect("files");
    let ids = semel_server::tls::certificate_ids(&files.cert).expect("ids");
    reg.revoke_certificate(proto::RevokeCertificateRequest {
        sha256_fingerprint: ids.fingerprint.clone(),
        reason: "test".into(),
        ..Default::default()
    })
    .await
    .expect("revoke");
    let e = last_of(&t, "semel.v1.RegistryService/RevokeCertificate").await;
    let paired: Vec<String> = ids
        .fingerprint
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    assert!(e.detail.contains(&paired.join(":")), "{}", e.detail);

    // Reads: the supervisory auditor reading Karim's history, proving an
    // entry (which returns its national number), reading his accesses.
    t.lookup_client(ANDERLECHT)
        .await
        .lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect("a lookup");
    let mut auditor =
        proto::audit_service_client::AuditServiceClient::new(t.channel("control-commission").await);
    let read = auditor
        .list_audit_entries(proto::ListAuditEntriesRequest {
            citizen: KARIM.into(),
            ..Default::default()
        })
        .await
        .expect("read")
        .into_inner()
        .entries;
    let e = last_of(&t, "semel.v1.AuditService/ListAuditEntries").await;
    assert_eq!(e.citizen, KARIM);
    assert_eq!(e.consumer_kbo, kbo("control-commission"));
    assert!(
        e.detail.contains(&format!("{} entries read", read.len())),
        "{}",
        e.detail
    );
    assert!(!e.detail.contains(KARIM));
    let size = t.audit_size().await;
    let proven = read[0].sequence;
    auditor
        .get_inclusion_proof(proto::GetInclusionProofRequest {
            sequence: proven,
            tree_size: size,
        })
        .await
        .expect("proof");
    let e = last_of(&t, "semel.v1.AuditService/GetInclusionProof").await;
    assert_eq!(e.citizen, KARIM);
    assert!(
        e.detail.contains(&format!("entry {proven}")),
        "{}",
        e.detail
    );
    auditor
        .list_citizen_accesses(proto::ListCitizenAccessesRequest {
            citizen: KARIM.into(),
            ..Default::default()
        })
        .await
        .expect("accesses");
    let e = last_of(&t, "semel.v1.AuditService/ListCitizenAccesses").await;
    assert_eq!(e.citizen, KARIM);
    // The citizen reading their own accesses is recorded too (out of their
    // own view: identity_binding.rs).
    let before = t.audit_size().await;
    proto::audit_service_client::AuditServiceClient::new(t.citizen_channel(KARIM).await)
        .list_citizen_accesses(proto::ListCitizenAccessesRequest {
            citizen: KARIM.into(),
            ..Default::default()
        })
        .await
        .expect("own view");
    assert_eq!(t.audit_size().await, before + 1);
    t.stop().await;
}

/// Finding 5: listing a citizen's consents needs a reason to know them, and
/// is recorded.
#[tokio::test]
async fn consents_are_listed_only_by_those_they_concern_and_recorded() {
    let t = TestDemo::start().await;
    let mut portal =
        proto::consent_service_client::ConsentServiceClient::new(t.citizen_channel(KARIM).await);
    // Karim consents to every consumer, for social housing.
    portal
        .give_consent(proto::GiveConsentRequest {
            consent: Some(proto::Consent {
                citizen: KARIM.into(),
                purpose: "SOCIAL_HOUSING".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("consent");
    // A clerk of the commune: the consumer role only.
    let clerk = t.token(SCHAERBEEK, &[UserRole::Consumer]);
    let list = |slug: &'static str| {
        let t = &t;
        let clerk = clerk.clone();
        async move {
            proto::consent_service_client::ConsentServiceClient::new(
                t.channel_as(slug, &clerk).await,
            )
            .list_consents(proto::ListConsentsRequest {
                citizen: KARIM.into(),
            })
            .await
            .map(|r| r.into_inner().consents)
        }
    };
    // A consumer with no file on Karim learns nothing, and it is recorded.
    let err = list(SCHAERBEEK).await.expect_err("no file");
    assert_error(&err, Code::PermissionDenied, "NO_ACTIVE_FILE");
    let e = last_of(&t, "semel.v1.ConsentService/ListConsents").await;
    assert_eq!(e.decision, proto::AuditDecision::Refused as i32);
    assert_eq!(e.citizen, KARIM);
    // With a file it sees the consent given to any consumer.
    t.open_file(SCHAERBEEK, KARIM, "PUPIL").await;
    assert_eq!(list(SCHAERBEEK).await.expect("with a file").len(), 1);
    let e = last_of(&t, "semel.v1.ConsentService/ListConsents").await;
    assert_eq!(e.decision, proto::AuditDecision::Allowed as i32);
    assert_eq!(e.consumer_kbo, kbo(SCHAERBEEK));
    // An organisation's own auditor (not a supervisory body) sees only the
    // consents given to or registered by its organisation.
    let token = t.token(ANDERLECHT, &[UserRole::Auditor]);
    let seen = proto::consent_service_client::ConsentServiceClient::new(
        t.channel_as(ANDERLECHT, &token).await,
    )
    .list_consents(proto::ListConsentsRequest {
        citizen: KARIM.into(),
    })
    .await
    .expect("an organisation's auditor")
    .into_inner()
    .consents;
    assert!(seen.is_empty(), "{seen:?}");
    t.stop().await;
}

/// Finding 6: a file opens a citizen's past only as far back as its
/// capacity allows, in a capacity some authorisation names, and stops when
/// it is closed.
#[tokio::test]
async fn files_cannot_be_backdated_made_up_or_kept_open_after_closing() {
    let t = TestDemo::start().await;
    let mut persons = t.persons_client(BRUXELLES_CPAS).await;
    let register = |capacity: &str, begin: &str| proto::RegisterFileRequest {
        file: Some(proto::PersonFile {
            citizen: KARIM.into(),
            capacity: capacity.into(),
            phase: proto::FilePhase::Provisional as i32,
            begin_date: begin.into(),
            ..Default::default()
        }),
    };
    let err = persons
        .register_file(register("RIS_APPLICANT", "1900-01-01"))
        .await
        .expect_err("backdated");
    assert_error(&err, Code::InvalidArgument, "BACKDATE_TOO_FAR");
    let e = last_of(&t, "semel.v1.PersonsService/RegisterFile").await;
    assert_eq!(e.reason, "BACKDATE_TOO_FAR");
    let err = persons
        .register_file(register("ANYTHING_GOES", ""))
        .await
        .expect_err("made up");
    assert_error(&err, Code::InvalidArgument, "UNKNOWN_CAPACITY");
    // A file closed today stops at once, not at midnight.
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let file = persons
        .register_file(register("RIS_APPLICANT", &today))
        .await
        .expect("a file from today")
        .into_inner()
        .file
        .expect("file");
    let mut c = t.lookup_client(BRUXELLES_CPAS).await;
    c.lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect("with the file");
    persons
        .close_file(proto::CloseFileRequest {
            citizen: KARIM.into(),
            file_id: file.id,
            end_date: today,
        })
        .await
        .expect("closed the day it was opened");
    let err = c
        .lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect_err("closed");
    assert_error(&err, Code::PermissionDenied, "NO_ACTIVE_FILE");
    t.stop().await;
}

/// Finding 7: a batch re-checks the certificate for every item.
#[tokio::test]
async fn a_batch_stops_covering_items_once_its_certificate_is_revoked() {
    let t = TestDemo::start().await;
    let second = t
        .batch_second_item_after(async || {
            let files = t.demo().client(ANDERLECHT).expect("files");
            let ids = semel_server::tls::certificate_ids(&files.cert).expect("ids");
            t.registry()
                .await
                .revoke_certificate(proto::RevokeCertificateRequest {
                    sha256_fingerprint: ids.fingerprint,
                    reason: "laptop stolen".into(),
                    ..Default::default()
                })
                .await
                .expect("revoke");
        })
        .await;
    match second.result {
        Some(proto::lookup_batch_response::Result::Error(e)) => {
            assert_eq!(e.reason, "CERTIFICATE_REVOKED");
        }
        other => panic!("{other:?}"),
    }
    t.stop().await;
}

/// Finding 9: a caller refused for who it is cannot write unlimited entries
/// naming any citizen: beyond its budget, refusals are counted into one
/// summary entry, and none of them reach the citizen's view.
#[tokio::test]
async fn a_flood_of_refused_calls_is_summarised_not_written_one_by_one() {
    let t = TestDemo::start().await;
    let before = t.audit_size().await;
    let mut c = LookupServiceClient::new(t.channel_as(ANDERLECHT, "no.such.token").await);
    let mut summarised = 0;
    for _ in 0..200 {
        let err = c
            .lookup(lookup(JAN, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
            .await
            .expect_err("no valid token");
        assert_error(&err, Code::Unauthenticated, "TOKEN_MALFORMED");
        if error_info(&err).2.get("audit").map(String::as_str) == Some("summarised") {
            summarised += 1;
        }
    }
    let written = t.audit_size().await - before;
    assert!(
        (40..=60).contains(&written),
        "{written} entries written one by one"
    );
    assert_eq!(summarised, 200 - written);
    // Jan does not see calls whose caller was never established.
    let seen = proto::audit_service_client::AuditServiceClient::new(t.citizen_channel(JAN).await)
        .list_citizen_accesses(proto::ListCitizenAccessesRequest {
            citizen: JAN.into(),
            ..Default::default()
        })
        .await
        .expect("Jan's view")
        .into_inner()
        .accesses;
    assert!(seen.is_empty(), "{seen:?}");
    // At the latest when the broker stops, the rest is one summary entry.
    let dir = t.stop().await;
    if embedded_only("the stopped broker's log read from its data directory") {
        return;
    }
    let store = semel_store::Store::open(&dir.path().join("store")).expect("store");
    let summaries = store
        .audit()
        .query(&semel_store::AuditQuery {
            limit: 10_000,
            ..Default::default()
        })
        .expect("query")
        .into_iter()
        .filter(|s| s.entry.record.operation == semel_server::state::REFUSALS_SUMMARY_OPERATION)
        .collect::<Vec<_>>();
    assert_eq!(summaries.len(), 1);
    let r = &summaries[0].entry.record;
    assert_eq!(r.citizen, None);
    assert!(
        r.detail.starts_with(&format!("{summarised} refused calls")),
        "{}",
        r.detail
    );
    assert!(r.detail.contains("TOKEN_MALFORMED"), "{}", r.detail);
    store.close().expect("close");
}

/// Finding 10: what a caller types is kept only when it is well formed, and
/// never as a national number.
#[tokio::test]
async fn caller_text_is_kept_only_when_well_formed() {
    let t = TestDemo::start().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    c.lookup(proto::LookupRequest {
        consumer_reference: "about 85073003328".into(),
        ..lookup(KARIM, "=HYPERLINK(\"x\")", &["=1+1"], "=cmd|' /C calc'!A0")
    })
    .await
    .expect_err("nonsense");
    let e = last_of(&t, semel_core::LOOKUP_OPERATION).await;
    assert_eq!(e.dataset, "(not a valid name)");
    assert_eq!(e.purpose, "(not a valid name)");
    assert_eq!(e.fields_requested, vec!["(not a valid name)".to_owned()]);
    assert!(
        !e.consumer_reference.contains("85073003328"),
        "{}",
        e.consumer_reference
    );
    t.stop().await;
}

/// Finding 13: a wrong replacement can be taken back, and only the operator
/// publishes the register (whose source may replace numbers).
#[tokio::test]
async fn a_wrong_replacement_is_undone_and_the_register_is_the_operators() {
    let t = TestDemo::start().await;
    let mut register = t.persons_client("national-register").await;
    register
        .replace_national_number(proto::ReplaceNationalNumberRequest {
            old_number: JAN.into(),
            new_number: KARIM.into(),
            replaced_on: String::new(),
        })
        .await
        .expect("a wrong replacement");
    let undone = register
        .undo_number_replacement(proto::UndoNumberReplacementRequest {
            old_number: JAN.into(),
            reason: "two people merged by mistake".into(),
        })
        .await
        .expect("undo")
        .into_inner();
    assert_eq!(undone.new_number, KARIM);
    let e = last_of(&t, "semel.v1.PersonsService/UndoNumberReplacement").await;
    assert_eq!(e.citizen, KARIM);
    assert_eq!(e.citizen_as_given, JAN);
    assert!(e.detail.contains("merged by mistake"), "{}", e.detail);
    // Jan is Jan again: his own data, not Karim's.
    let r = t
        .lookup_client(ANDERLECHT)
        .await
        .lookup(lookup(JAN, IDENTITY, &["given_names"], "RIS_ELIGIBILITY"))
        .await
        .expect("Jan")
        .into_inner();
    assert_ne!(
        r.fields["given_names"].kind,
        Some(proto::value::Kind::StringValue("Karim".into()))
    );
    let err = register
        .undo_number_replacement(proto::UndoNumberReplacementRequest {
            old_number: JAN.into(),
            reason: "again".into(),
        })
        .await
        .expect_err("nothing to undo");
    assert_error(&err, Code::NotFound, "NOT_FOUND");
    // Another source cannot publish the register dataset.
    let err =
        proto::registry_service_client::RegistryServiceClient::new(t.channel("spf-finances").await)
            .create_dataset(proto::CreateDatasetRequest {
                dataset: Some(proto::Dataset {
                    name: IDENTITY.into(),
                    source_kbo: kbo("spf-finances"),
                    description: "a second register".into(),
                    fields: vec![proto::FieldDefinition {
                        name: "x".into(),
                        description: "x".into(),
                        r#type: proto::FieldType::String as i32,
                    }],
                    endpoint: "https://127.0.0.1:1".into(),
                    keeps_history: false,
                    withdrawn: false,
                }),
            })
            .await
            .expect_err("the register is the operator's");
    assert_error(&err, Code::PermissionDenied, "REGISTER_DATASET_RESERVED");
    t.stop().await;
}

/// Finding 14: a connection may outlive its certificate; its calls may not.
#[tokio::test]
async fn a_certificate_that_expires_during_a_connection_stops_its_calls() {
    let t = TestDemo::start().await;
    let anderlecht = semel_demo::seed::org(ANDERLECHT).expect("org").kbo;
    let files = t
        .pki()
        .issue_until(
            &semel_demo::pki::Subject {
                file_stem: "short-lived",
                kbo: anderlecht,
                name: "CPAS d'Anderlecht",
            },
            time::OffsetDateTime::now_utc() + time::Duration::seconds(2),
        )
        .expect("issue");
    let channel = t
        .channel_with(Some((&files.cert, &files.key)), &t.pki().ca_cert())
        .await
        .expect("connect while valid");
    let token = t.token(ANDERLECHT, &[UserRole::Consumer]);
    let mut c =
        LookupServiceClient::new(semel_client::with_token(channel, Some(&token)).expect("token"));
    c.lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect("valid for now");
    // Certificates are valid to the second: wait until this one has ended.
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    let err = c
        .lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect_err("expired on the open connection");
    assert_error(&err, Code::Unauthenticated, "CERTIFICATE_EXPIRED");
    let e = last_of(&t, semel_core::LOOKUP_OPERATION).await;
    assert_eq!(e.reason, "CERTIFICATE_EXPIRED");
    t.stop().await;
}
