//! The only-once rules end to end: the persons directory, consent, filtered
//! answers, replaced numbers and batch lookups, through the real broker and
//! demo sources.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use semel_demo::seed::datasets::*;
use semel_server::proto::{self, CheckAnswer};
use tonic::Code;

use crate::harness::*;

const ADAM: &str = "17073003384";

/// The newest audit entry about a citizen, other than auditors' reads.
async fn last_entry_about(t: &TestDemo, niss: &str) -> proto::AuditEntry {
    t.audit()
        .await
        .list_audit_entries(proto::ListAuditEntriesRequest {
            citizen: niss.into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("entries")
        .into_inner()
        .entries
        .into_iter()
        .find(|e| !is_audit_read(e))
        .expect("an entry")
}

fn citizens_of(members: &proto::Value) -> Vec<String> {
    let Some(proto::value::Kind::ListValue(list)) = &members.kind else {
        panic!("members is a list");
    };
    list.values
        .iter()
        .map(|m| match &m.kind {
            Some(proto::value::Kind::RecordValue(r)) => match &r.fields["citizen"].kind {
                Some(proto::value::Kind::StringValue(s)) => s.clone(),
                other => panic!("citizen {other:?}"),
            },
            other => panic!("member {other:?}"),
        })
        .collect()
}

/// Scenario 1: a CPAS handles an RIS application. Without a file it gets
/// nothing; once it opens a provisional file on the applicant, and one on
/// each cohabitant, it fetches residence, household and every cohabitant's
/// income, each allowed.
#[tokio::test]
async fn a_cpas_handles_an_ris_application() {
    let t = TestDemo::start().await;
    let mut cpas = t.lookup_client(BRUXELLES_CPAS).await;
    let err = cpas
        .lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect_err("no file yet");
    assert_error(&err, Code::PermissionDenied, "NO_ACTIVE_FILE");
    let (_, _, meta) = error_info(&err);
    assert_eq!(meta["authorisation_reference"], "BSC/2025/003");
    assert_eq!(
        meta["capacities_required"],
        "RIS_APPLICANT,RIS_BENEFICIARY,RIS_COHABITANT"
    );
    assert!(err.message().contains("RegisterFile"), "{}", err.message());

    let file = t.open_file(BRUXELLES_CPAS, KARIM, "RIS_APPLICANT").await;
    assert_eq!(file.phase, proto::FilePhase::Provisional as i32);
    let residence = cpas
        .lookup(proto::LookupRequest {
            // The address on the first of the month of the application.
            reference_date: time::OffsetDateTime::now_utc()
                .date()
                .replace_day(1)
                .expect("day")
                .to_string(),
            ..lookup(KARIM, RESIDENCE, &["street", "nis_code"], "RIS_ELIGIBILITY")
        })
        .await
        .expect("residence")
        .into_inner();
    assert_eq!(residence.authorisation_reference, "BSC/2025/003");
    let household = cpas
        .lookup(lookup(KARIM, HOUSEHOLD, &["members"], "RIS_ELIGIBILITY"))
        .await
        .expect("household")
        .into_inner();
    let members = citizens_of(&household.fields["members"]);
    assert!(
        members.len() >= 3,
        "Karim, Adam and Lina: {}",
        members.len()
    );
    let entry = last_entry_about(&t, KARIM).await;
    assert!(entry.detail.contains(&file.id), "{}", entry.detail);
    assert!(entry.detail.contains("RIS_APPLICANT, provisional"));

    let before = t.audit_size().await;
    for m in &members {
        if m != KARIM {
            t.open_file(BRUXELLES_CPAS, m, "RIS_COHABITANT").await;
        }
        // Children have no tax assessment: the source says so, and the
        // lookup was allowed all the same.
        match cpas
            .lookup(lookup(
                m,
                TAXABLE_INCOME,
                &["latest_taxable_income_cents"],
                "RIS_ELIGIBILITY",
            ))
            .await
        {
            Ok(r) => assert_eq!(r.into_inner().authorisation_reference, "BSC/2025/005"),
            Err(e) => assert_error(&e, Code::NotFound, "SUBJECT_NOT_FOUND"),
        }
    }
    let entries = t.all_audit_entries().await;
    let incomes: Vec<_> = entries[before as usize..]
        .iter()
        .filter(|e| e.dataset == TAXABLE_INCOME)
        .collect();
    assert_eq!(incomes.len(), members.len());
    assert!(
        incomes
            .iter()
            .all(|e| e.decision == proto::AuditDecision::Allowed as i32)
    );
    // Opening the files was audited too.
    let opened = entries[before as usize..]
        .iter()
        .filter(|e| e.operation == "semel.v1.PersonsService/RegisterFile")
        .count();
    assert_eq!(opened, members.len() - 1);

    // Closing the applicant's file ends it: the next lookup is refused.
    t.persons_client(BRUXELLES_CPAS)
        .await
        .close_file(proto::CloseFileRequest {
            citizen: KARIM.into(),
            file_id: file.id.clone(),
            end_date: (time::OffsetDateTime::now_utc().date() - time::Duration::days(1))
                .to_string(),
        })
        .await
        .expect("close");
    let err = cpas
        .lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect_err("file closed");
    assert_error(&err, Code::PermissionDenied, "NO_ACTIVE_FILE");
    t.stop().await;
}

/// Scenario 2: a commune checks a pupil's residence for school enrolment
/// and gets yes or no, never the address.
#[tokio::test]
async fn a_commune_checks_a_pupils_residence_and_gets_only_yes_or_no() {
    let t = TestDemo::start().await;
    // The truth, as the CPAS (which may read addresses) sees it.
    let nis = t
        .lookup_client(ANDERLECHT)
        .await
        .lookup(lookup(ADAM, RESIDENCE, &["nis_code"], "RIS_ELIGIBILITY"))
        .await
        .expect("residence")
        .into_inner()
        .fields["nis_code"]
        .clone();
    let Some(proto::value::Kind::StringValue(nis)) = nis.kind else {
        panic!("nis_code is text");
    };
    t.open_file(SCHAERBEEK, ADAM, "PUPIL").await;
    let mut commune = t.lookup_client(SCHAERBEEK).await;
    // The commune asks the question its authorisation names: "does the
    // pupil live in Schaerbeek (21015)?", and no other commune's code.
    let r = commune
        .lookup(proto::LookupRequest {
            checks: vec![check("nis_code=21015")],
            ..lookup(ADAM, RESIDENCE, &[], "SCHOOL_ENROLMENT")
        })
        .await
        .expect("checks")
        .into_inner();
    assert!(r.fields.is_empty(), "no value leaves: {:?}", r.fields);
    assert_eq!(r.checks.len(), 1);
    let in_schaerbeek = nis == "21015";
    let answer = if in_schaerbeek { "YES" } else { "NO" };
    assert_eq!(
        r.checks[0].answer,
        if in_schaerbeek {
            CheckAnswer::Yes
        } else {
            CheckAnswer::No
        } as i32
    );
    // The entry records the question and the answer the commune learnt.
    let entry = last_entry_about(&t, ADAM).await;
    assert_eq!(
        entry.checks,
        vec![format!("nis_code = \"21015\": {answer}")]
    );
    assert!(entry.fields_returned.is_empty());
    if nis != "21015" {
        let err = commune
            .lookup(proto::LookupRequest {
                checks: vec![check(&format!("nis_code={nis}"))],
                ..lookup(ADAM, RESIDENCE, &[], "SCHOOL_ENROLMENT")
            })
            .await
            .expect_err("another commune's code");
        assert_error(&err, Code::PermissionDenied, "CHECK_NOT_ALLOWED");
        let entry = last_entry_about(&t, ADAM).await;
        assert_eq!(entry.reason, "CHECK_NOT_ALLOWED");
        assert_eq!(entry.checks, vec![format!("nis_code = \"{nis}\"")]);
    }
    // Reading the field itself is refused.
    let err = commune
        .lookup(lookup(ADAM, RESIDENCE, &["nis_code"], "SCHOOL_ENROLMENT"))
        .await
        .expect_err("read");
    assert_error(&err, Code::PermissionDenied, "FIELD_NOT_ALLOWED");
    assert_eq!(error_info(&err).2["fields_not_allowed"], "nis_code");
    // Checks that make no sense are refused before anything is forwarded.
    for (c, why) in [
        ("street=Rue Haute", "CHECK_NOT_ALLOWED"),
        ("nis_code<21015", "INVALID_CHECK"),
        ("members=2", "UNKNOWN_FIELD"),
    ] {
        let err = commune
            .lookup(proto::LookupRequest {
                checks: vec![check(c)],
                ..lookup(ADAM, RESIDENCE, &[], "SCHOOL_ENROLMENT")
            })
            .await
            .expect_err(c);
        assert_eq!(error_info(&err).0, why, "{c}: {err:?}");
    }
    t.stop().await;
}

/// Scenario 3: a clerk looks up a neighbour on whom the CPAS has no file:
/// refused, and the refusal is in the audit log and in the neighbour's view.
#[tokio::test]
async fn a_clerk_looking_up_a_neighbour_is_refused_and_it_shows() {
    let t = TestDemo::start().await;
    let err = t
        .lookup_client(BRUXELLES_CPAS)
        .await
        .lookup(lookup(
            JAN,
            TAXABLE_INCOME,
            &["latest_taxable_income_cents"],
            "RIS_ELIGIBILITY",
        ))
        .await
        .expect_err("no file on the neighbour");
    assert_error(&err, Code::PermissionDenied, "NO_ACTIVE_FILE");
    let entry = last_entry_about(&t, JAN).await;
    assert_eq!(entry.decision, proto::AuditDecision::Refused as i32);
    assert_eq!(entry.reason, "NO_ACTIVE_FILE");
    assert_eq!(entry.authorisation_reference, "BSC/2025/005");
    assert_eq!(entry.outcome, proto::AuditOutcome::NotForwarded as i32);
    assert!(
        entry.detail.contains("persons directory"),
        "{}",
        entry.detail
    );
    assert!(!entry.detail.contains(JAN));
    let seen = proto::audit_service_client::AuditServiceClient::new(t.citizen_channel(JAN).await)
        .list_citizen_accesses(proto::ListCitizenAccessesRequest {
            citizen: JAN.into(),
            ..Default::default()
        })
        .await
        .expect("Jan's view")
        .into_inner()
        .accesses;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].reason, "NO_ACTIVE_FILE");
    assert_eq!(seen[0].action, "lookup");
    assert_eq!(seen[0].consumer_name, "CPAS de la Ville de Bruxelles");
    t.stop().await;
}

fn income_below(year: i64, cents: i64) -> proto::Check {
    check(&format!(
        "income_years[income_year={year}].taxable_income_cents<{cents}"
    ))
}

/// Scenario 4: a flow that rests on consent. Without it the lookup is
/// refused; the citizen gives it on the portal and the lookup passes; the
/// citizen withdraws it and the next lookup is refused.
#[tokio::test]
async fn a_withdrawn_consent_stops_the_next_lookup() {
    let t = TestDemo::start().await;
    t.open_file(BRUXELLES_CPAS, KARIM, "HOUSING_CANDIDATE")
        .await;
    let mut cpas = t.lookup_client(BRUXELLES_CPAS).await;
    let ask = || proto::LookupRequest {
        checks: vec![income_below(2024, 2_500_000)],
        ..lookup(KARIM, TAXABLE_INCOME, &[], "SOCIAL_HOUSING")
    };
    let err = cpas.lookup(ask()).await.expect_err("no consent");
    assert_error(&err, Code::PermissionDenied, "CONSENT_MISSING");
    assert_eq!(
        error_info(&err).2["authorisation_reference"],
        "BSC/2026/012"
    );

    let mut portal =
        proto::consent_service_client::ConsentServiceClient::new(t.citizen_channel(KARIM).await);
    let cpas_kbo = semel_demo::seed::org(BRUXELLES_CPAS).expect("org").kbo;
    let consent = portal
        .give_consent(proto::GiveConsentRequest {
            consent: Some(proto::Consent {
                citizen: KARIM.into(),
                consumer_kbo: cpas_kbo.as_str().into(),
                purpose: "SOCIAL_HOUSING".into(),
                datasets: vec![TAXABLE_INCOME.into()],
                ..Default::default()
            }),
        })
        .await
        .expect("give")
        .into_inner()
        .consent
        .expect("consent");
    assert_eq!(consent.channel, proto::ConsentChannel::Portal as i32);
    let r = cpas.lookup(ask()).await.expect("with consent").into_inner();
    assert!(r.fields.is_empty());
    assert_ne!(r.checks[0].answer, CheckAnswer::Unspecified as i32);
    let entry = last_entry_about(&t, KARIM).await;
    assert!(entry.detail.contains(&consent.id), "{}", entry.detail);

    // A citizen cannot touch another citizen's consent.
    let err = portal
        .withdraw_consent(proto::WithdrawConsentRequest {
            citizen: JAN.into(),
            consent_id: consent.id.clone(),
        })
        .await
        .expect_err("someone else's");
    assert_error(&err, Code::PermissionDenied, "CITIZEN_MISMATCH");

    portal
        .withdraw_consent(proto::WithdrawConsentRequest {
            citizen: KARIM.into(),
            consent_id: consent.id.clone(),
        })
        .await
        .expect("withdraw");
    let err = cpas.lookup(ask()).await.expect_err("withdrawn");
    assert_error(&err, Code::PermissionDenied, "CONSENT_MISSING");
    let (_, _, meta) = error_info(&err);
    assert_eq!(meta["consent_id"], consent.id);
    assert_eq!(meta["consent_state"], "withdrawn");
    // The citizen sees giving and withdrawing, and the lookups.
    let seen = proto::audit_service_client::AuditServiceClient::new(t.citizen_channel(KARIM).await)
        .list_citizen_accesses(proto::ListCitizenAccessesRequest {
            citizen: KARIM.into(),
            ..Default::default()
        })
        .await
        .expect("view")
        .into_inner()
        .accesses;
    let actions: Vec<&str> = seen.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "lookup",
            "consent withdrawn",
            "lookup",
            "consent given",
            "lookup"
        ]
    );
    assert_eq!(seen[2].checked_fields, vec!["income_years".to_owned()]);

    // After the citizen's withdrawal, the consumer cannot register the
    // consent back at its own counter: only the citizen can give it again.
    let mut counter = t.consent_client(BRUXELLES_CPAS).await;
    let err = counter
        .give_consent(proto::GiveConsentRequest {
            consent: Some(proto::Consent {
                citizen: KARIM.into(),
                purpose: "SOCIAL_HOUSING".into(),
                evidence: "form-123".into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("the citizen's withdrawal stands");
    assert_error(
        &err,
        Code::FailedPrecondition,
        "CONSENT_WITHDRAWN_BY_CITIZEN",
    );
    let err = cpas.lookup(ask()).await.expect_err("still withdrawn");
    assert_error(&err, Code::PermissionDenied, "CONSENT_MISSING");
    // The citizen gives it again on the portal; then a counter consent may
    // be registered as well.
    portal
        .give_consent(proto::GiveConsentRequest {
            consent: Some(proto::Consent {
                citizen: KARIM.into(),
                consumer_kbo: cpas_kbo.as_str().into(),
                purpose: "SOCIAL_HOUSING".into(),
                datasets: vec![TAXABLE_INCOME.into()],
                ..Default::default()
            }),
        })
        .await
        .expect("given again");
    cpas.lookup(ask()).await.expect("allowed again");

    // At a counter, the consumer registers a consent with its evidence.
    let err = counter
        .give_consent(proto::GiveConsentRequest {
            consent: Some(proto::Consent {
                citizen: KARIM.into(),
                purpose: "SOCIAL_HOUSING".into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("no evidence");
    assert_error(&err, Code::InvalidArgument, "EVIDENCE_REQUIRED");
    let at_counter = counter
        .give_consent(proto::GiveConsentRequest {
            consent: Some(proto::Consent {
                citizen: KARIM.into(),
                purpose: "SOCIAL_HOUSING".into(),
                evidence: "form SH-2026-118, signed at the counter".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("counter")
        .into_inner()
        .consent
        .expect("consent");
    assert_eq!(at_counter.channel, proto::ConsentChannel::Counter as i32);
    assert_eq!(at_counter.consumer_kbo, cpas_kbo.as_str());
    t.stop().await;
}

#[tokio::test]
async fn files_are_refused_for_unknown_numbers_and_bad_input() {
    let t = TestDemo::start().await;
    let mut persons = t.persons_client(BRUXELLES_CPAS).await;
    let unknown = semel_core::Niss::for_birth(
        time::Date::from_calendar_date(1931, time::Month::February, 3).expect("date"),
        555,
    )
    .expect("niss");
    let file =
        |citizen: &str, capacity: &str, phase: proto::FilePhase| proto::RegisterFileRequest {
            file: Some(proto::PersonFile {
                citizen: citizen.into(),
                capacity: capacity.into(),
                phase: phase as i32,
                ..Default::default()
            }),
        };
    let err = persons
        .register_file(file(
            unknown.as_str(),
            "RIS_APPLICANT",
            proto::FilePhase::Provisional,
        ))
        .await
        .expect_err("unknown to the register");
    assert_error(&err, Code::NotFound, "CITIZEN_UNKNOWN");
    let entry = last_entry_about(&t, unknown.as_str()).await;
    assert_eq!(entry.reason, "CITIZEN_UNKNOWN");
    assert_eq!(entry.decision, proto::AuditDecision::Refused as i32);
    for (req, code, reason) in [
        (
            file("123", "RIS_APPLICANT", proto::FilePhase::Provisional),
            Code::InvalidArgument,
            "INVALID_CITIZEN",
        ),
        (
            file(KARIM, "ris applicant", proto::FilePhase::Provisional),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            file(KARIM, "RIS_APPLICANT", proto::FilePhase::Unspecified),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
    ] {
        let err = persons.register_file(req).await.expect_err(reason);
        assert_error(&err, code, reason);
    }
    let err = persons
        .close_file(proto::CloseFileRequest {
            citizen: KARIM.into(),
            file_id: "no-such-file".into(),
            end_date: String::new(),
        })
        .await
        .expect_err("unknown file");
    assert_error(&err, Code::NotFound, "FILE_NOT_FOUND");
    // Another consumer's files are not visible.
    let mine = t.open_file(BRUXELLES_CPAS, KARIM, "RIS_APPLICANT").await;
    let listed = t
        .persons_client(ANDERLECHT)
        .await
        .list_files(proto::ListFilesRequest {
            citizen: KARIM.into(),
        })
        .await
        .expect("list")
        .into_inner()
        .files;
    assert!(listed.iter().all(|f| f.id != mine.id));
    assert!(listed.iter().all(|f| f.consumer_kbo != mine.consumer_kbo));
    t.stop().await;
}

#[tokio::test]
async fn a_replaced_number_is_resolved_and_both_are_audited() {
    let t = TestDemo::start().await;
    let old = semel_core::Niss::for_bis(
        time::Date::from_calendar_date(1993, time::Month::May, 18).expect("date"),
        777,
        true,
    )
    .expect("bis");
    let replace = proto::ReplaceNationalNumberRequest {
        old_number: old.as_str().into(),
        new_number: KARIM.into(),
        replaced_on: String::new(),
    };
    // A consumer may not; the register's organisation may.
    let err = t
        .persons_client(ANDERLECHT)
        .await
        .replace_national_number(replace.clone())
        .await
        .expect_err("a consumer");
    assert_error(&err, Code::PermissionDenied, "ROLE_NOT_PERMITTED");
    t.persons_client("national-register")
        .await
        .replace_national_number(replace)
        .await
        .expect("the register");
    // A lookup under the old number reaches Karim's data; the entry keeps both.
    let r = t
        .lookup_client(ANDERLECHT)
        .await
        .lookup(lookup(
            old.as_str(),
            IDENTITY,
            &["given_names"],
            "RIS_ELIGIBILITY",
        ))
        .await
        .expect("resolved")
        .into_inner();
    assert_eq!(
        r.fields["given_names"].kind,
        Some(proto::value::Kind::StringValue("Karim".into()))
    );
    let entry = last_entry_about(&t, KARIM).await;
    assert_eq!(entry.citizen, KARIM);
    assert_eq!(entry.citizen_as_given, old.as_str());
    // Found by either number.
    assert_eq!(
        last_entry_about(&t, old.as_str()).await.request_id,
        entry.request_id
    );
    // A file opened under the old number is stored under the new one.
    let f = t
        .open_file(BRUXELLES_CPAS, old.as_str(), "RIS_APPLICANT")
        .await;
    assert_eq!(f.citizen, KARIM);
    t.stop().await;
}

/// A source that counts the calls in flight at once.
#[derive(Clone, Default)]
struct CountingSource {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl proto::source_service_server::SourceService for CountingSource {
    async fn fetch(
        &self,
        request: tonic::Request<proto::FetchRequest>,
    ) -> Result<tonic::Response<proto::FetchResponse>, tonic::Status> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        let fields = request
            .into_inner()
            .fields
            .into_iter()
            .map(|f| {
                let v = proto::Value {
                    kind: Some(proto::value::Kind::StringValue(format!("value of {f}"))),
                };
                (f, v)
            })
            .collect();
        Ok(tonic::Response::new(proto::FetchResponse { fields }))
    }
}

#[tokio::test]
async fn a_batch_streams_each_item_on_its_own_with_bounded_concurrency() {
    let limits = semel_server::limits::LimitSettings {
        batch_in_flight: 4,
        ..Default::default()
    };
    let t = TestDemo::start_with(limits, Duration::from_secs(5)).await;
    let source = CountingSource::default();
    let endpoint = start_test_source(&t, source.clone()).await;
    register_test_dataset(&t, "test.counted", &endpoint).await;
    let people: Vec<String> = t
        .demo()
        .population
        .people
        .iter()
        .take(40)
        .map(|p| p.niss.as_str().to_owned())
        .collect();
    let mut items: Vec<proto::LookupRequest> = people
        .iter()
        .map(|n| proto::LookupRequest {
            consumer_reference: format!("item-{n}"),
            ..lookup(n, "test.counted", &["a"], "TEST")
        })
        .collect();
    // Two bad items among them: a malformed number, a field not allowed.
    items[3].citizen = "123".into();
    items[7].fields = vec!["c".into()];
    let before = t.audit_size().await;
    let mut results = t
        .lookup_client(ANDERLECHT)
        .await
        .lookup_batch(tokio_stream::iter(
            items
                .into_iter()
                .map(|item| proto::LookupBatchRequest { item: Some(item) }),
        ))
        .await
        .expect("batch")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(r) = results.message().await.expect("stream") {
        seen.push(r);
    }
    assert_eq!(seen.len(), 40);
    let mut indexes: Vec<u64> = seen.iter().map(|r| r.index).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (0..40).collect::<Vec<_>>());
    for r in &seen {
        match (&r.result, r.index) {
            (Some(proto::lookup_batch_response::Result::Error(e)), 3) => {
                assert_eq!(e.reason, "INVALID_CITIZEN");
                assert_eq!(e.code, Code::InvalidArgument as i32);
                assert!(e.metadata.contains_key("request_id"));
            }
            (Some(proto::lookup_batch_response::Result::Error(e)), 7) => {
                assert_eq!(e.reason, "FIELD_NOT_ALLOWED");
                assert_eq!(e.metadata["fields_not_allowed"], "c");
            }
            (Some(proto::lookup_batch_response::Result::Response(resp)), i) => {
                assert!(i != 3 && i != 7);
                assert_eq!(resp.fields.len(), 1);
                assert_eq!(r.consumer_reference, format!("item-{}", people[i as usize]));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Each item has its own entry, and the source never saw more than the cap.
    assert_eq!(t.audit_size().await - before, 40);
    let most = source.most.load(Ordering::SeqCst);
    assert!((1..=4).contains(&most), "at most 4 in flight, saw {most}");
    t.stop().await;
}

#[tokio::test]
async fn a_batch_stops_covering_items_once_the_organisation_is_suspended() {
    let t = TestDemo::start().await;
    let second = t
        .batch_second_item_after(async || {
            let anderlecht = semel_demo::seed::org(ANDERLECHT).expect("org").kbo;
            t.registry()
                .await
                .suspend_organisation(proto::SuspendOrganisationRequest {
                    kbo: anderlecht.as_str().into(),
                    reason: "under review".into(),
                })
                .await
                .expect("suspend");
        })
        .await;
    match second.result {
        Some(proto::lookup_batch_response::Result::Error(e)) => {
            assert_eq!(e.reason, "ORGANISATION_SUSPENDED");
        }
        other => panic!("{other:?}"),
    }
    let entry = t.audit_entries().await.pop().expect("entry");
    assert_eq!(entry.reason, "ORGANISATION_SUSPENDED");
    assert_eq!(entry.citizen, JAN);
    t.stop().await;
}

#[tokio::test]
async fn a_batch_ends_at_an_item_it_cannot_read() {
    let t = TestDemo::start().await;
    let item = |reference: String| proto::LookupBatchRequest {
        item: Some(proto::LookupRequest {
            consumer_reference: reference,
            ..lookup(
                KARIM,
                semel_demo::seed::datasets::RESIDENCE,
                &["street"],
                "RIS_ELIGIBILITY",
            )
        }),
    };
    // A good item, then one larger than the broker reads, then another:
    // the stream ends with the refusal, and nothing after it is read.
    let items = vec![
        item("first".into()),
        item("x".repeat(70_000)),
        item("after".into()),
    ];
    let mut results = t
        .lookup_client(ANDERLECHT)
        .await
        .lookup_batch(tokio_stream::iter(items))
        .await
        .expect("batch")
        .into_inner();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let mut answered = Vec::new();
        loop {
            match results.message().await {
                Ok(Some(r)) => answered.push(r.consumer_reference),
                Ok(None) => return (answered, None),
                Err(status) => return (answered, Some(status)),
            }
        }
    })
    .await
    .expect("the batch never ended");
    let (answered, error) = ended;
    assert!(
        !answered.iter().any(|r| r == "after"),
        "an item after the unreadable one was looked up"
    );
    let error = error.expect("the stream ends with the refusal");
    assert_eq!(error.code(), Code::OutOfRange, "{error:?}");
    t.stop().await;
}
