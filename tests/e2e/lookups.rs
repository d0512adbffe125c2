//! The lookup path: allowed answers, every refusal, bad input, sources that
//! are down or slow, and one audit entry per lookup.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use semel_demo::seed::datasets::*;
use semel_server::proto;
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::*;

#[tokio::test]
async fn allowed_lookup_returns_exactly_the_requested_authorised_fields() {
    let t = TestDemo::start().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let mut req = lookup(
        "93.05.18-223.61",
        RESIDENCE,
        &["street", "postal_code", "nis_code"],
        "RIS_ELIGIBILITY",
    );
    req.consumer_reference = "RIS-2026-0042".into();
    let r = c.lookup(req).await.expect("allowed").into_inner();
    let mut keys: Vec<_> = r.fields.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["nis_code", "postal_code", "street"]);
    assert_eq!(r.authorisation_reference, "BSC/2024/017");
    assert_eq!(
        r.fields["nis_code"].kind,
        Some(proto::value::Kind::StringValue("21001".into()))
    );
    assert!(uuid_like(&r.request_id));

    let entries = t.audit_entries().await;
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e.request_id, r.request_id);
    assert_eq!(e.citizen, KARIM);
    assert_eq!(e.decision, proto::AuditDecision::Allowed as i32);
    assert_eq!(e.outcome, proto::AuditOutcome::Answered as i32);
    assert_eq!(e.authorisation_reference, "BSC/2024/017");
    assert_eq!(e.fields_requested, ["street", "postal_code", "nis_code"]);
    assert_eq!(e.fields_returned, ["nis_code", "postal_code", "street"]);
    assert_eq!(e.consumer_reference, "RIS-2026-0042");
    // Chained to the entry before it: the demo's seed.
    let all = t.all_audit_entries().await;
    let at = all
        .iter()
        .position(|x| x.request_id == e.request_id)
        .expect("the entry");
    assert!(at > 0 && is_seed(&all[at - 1]), "{:?}", all[0]);
    assert_eq!(e.previous_hash, all[at - 1].entry_hash);
    t.stop().await;
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test]
async fn a_source_that_answers_more_than_asked_is_filtered() {
    let t = TestDemo::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let endpoint = start_test_source(
        &t,
        TestSource {
            delay: Duration::ZERO,
            extra: true,
            calls: calls.clone(),
        },
    )
    .await;
    register_test_dataset(&t, "test.leaky", &endpoint).await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let r = c
        .lookup(lookup(KARIM, "test.leaky", &["a"], "TEST"))
        .await
        .expect("allowed")
        .into_inner();
    assert_eq!(
        r.fields.keys().collect::<Vec<_>>(),
        ["a"],
        "the extra field 'secret' and the unasked 'b' are dropped"
    );
    let e = t.audit_entries().await.pop().expect("entry");
    assert_eq!(e.fields_returned, ["a"]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    t.stop().await;
}

#[tokio::test]
async fn every_refusal_reason_is_reported_and_audited() {
    let t = TestDemo::start().await;
    // (consumer, dataset, fields, purpose, reason, authorisation named)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a [&'a str],
        &'a str,
        &'a str,
        Option<&'a str>,
    );
    let cases: &[Case<'_>] = &[
        (
            SCHAERBEEK,
            TAXABLE_INCOME,
            &["latest_income_year"],
            "RIS_ELIGIBILITY",
            "NO_AUTHORISATION",
            None,
        ),
        (
            ANDERLECHT,
            RESIDENCE,
            &["street"],
            "SCHOOL_ENROLMENT",
            "PURPOSE_NOT_ALLOWED",
            None,
        ),
        (
            SCHAERBEEK,
            RESIDENCE,
            &["street"],
            "SCHOOL_ENROLMENT",
            "FIELD_NOT_ALLOWED",
            Some("BSC/2023/044"),
        ),
        (
            SCHAERBEEK,
            UNEMPLOYMENT,
            &["entitled"],
            "ACTIVATION_FOLLOW_UP",
            "AUTHORISATION_NOT_YET_VALID",
            Some("BSC/2026/007"),
        ),
        (
            VILLE,
            TAXABLE_INCOME,
            &["latest_taxable_income_cents"],
            "SOCIAL_HOUSING",
            "AUTHORISATION_EXPIRED",
            Some("BSC/2019/101"),
        ),
        (
            BRUXELLES_CPAS,
            IDENTITY,
            &["family_name"],
            "ENERGY_ALLOWANCE",
            "AUTHORISATION_SUSPENDED",
            Some("BSC/2022/033"),
        ),
    ];
    for (i, (who, dataset, fields, purpose, reason, auth)) in cases.iter().enumerate() {
        let mut c = t.lookup_client(who).await;
        let err = c
            .lookup(lookup(JAN, dataset, fields, purpose))
            .await
            .expect_err(reason);
        assert_error(&err, Code::PermissionDenied, reason);
        let (_, _, meta) = error_info(&err);
        assert_eq!(
            meta.get("authorisation_reference").map(String::as_str),
            *auth,
            "{reason}"
        );
        assert!(meta.contains_key("request_id"), "{reason}");
        if *reason == "FIELD_NOT_ALLOWED" {
            assert_eq!(meta["fields_not_allowed"], "street");
        }
        let entries = t.audit_entries().await;
        assert_eq!(entries.len(), i + 1);
        let e = entries.last().expect("entry");
        assert_eq!(e.decision, proto::AuditDecision::Refused as i32);
        assert_eq!(e.outcome, proto::AuditOutcome::NotForwarded as i32);
        assert_eq!(e.reason, *reason);
        assert_eq!(e.citizen, JAN);
        assert_eq!(e.request_id, meta["request_id"]);
        assert!(e.fields_returned.is_empty());
    }
    t.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_is_audited() {
    let t = TestDemo::start().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let cases: Vec<(proto::LookupRequest, Code, &str, Option<&str>)> = vec![
        (
            lookup("93051822362", RESIDENCE, &["street"], "RIS_ELIGIBILITY"),
            Code::InvalidArgument,
            "INVALID_CITIZEN",
            Some("citizen"),
        ),
        (
            lookup("9305182236", RESIDENCE, &["street"], "RIS_ELIGIBILITY"),
            Code::InvalidArgument,
            "INVALID_CITIZEN",
            Some("citizen"),
        ),
        (
            lookup("not a number", RESIDENCE, &["street"], "RIS_ELIGIBILITY"),
            Code::InvalidArgument,
            "INVALID_CITIZEN",
            Some("citizen"),
        ),
        (
            lookup(
                KARIM,
                "national_register.nothing",
                &["street"],
                "RIS_ELIGIBILITY",
            ),
            Code::NotFound,
            "UNKNOWN_DATASET",
            None,
        ),
        (
            lookup(
                KARIM,
                RESIDENCE,
                &["street", "shoe_size"],
                "RIS_ELIGIBILITY",
            ),
            Code::InvalidArgument,
            "UNKNOWN_FIELD",
            Some("fields"),
        ),
        (
            lookup(KARIM, RESIDENCE, &[], "RIS_ELIGIBILITY"),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            Some("fields"),
        ),
        (
            lookup(KARIM, RESIDENCE, &["street"], "ris eligibility"),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            Some("purpose"),
        ),
        (
            lookup(KARIM, RESIDENCE, &["street"], "CURIOSITY"),
            Code::InvalidArgument,
            "UNKNOWN_PURPOSE",
            Some("purpose"),
        ),
        (
            proto::LookupRequest {
                reference_date: "01/01/2020".into(),
                ..lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY")
            },
            Code::InvalidArgument,
            "INVALID_DATE",
            Some("reference_date"),
        ),
        (
            proto::LookupRequest {
                reference_date: "2020-01-01".into(),
                ..lookup(
                    KARIM,
                    TAXABLE_INCOME,
                    &["latest_income_year"],
                    "RIS_ELIGIBILITY",
                )
            },
            Code::InvalidArgument,
            "HISTORY_NOT_KEPT",
            Some("reference_date"),
        ),
        (
            proto::LookupRequest {
                consumer_reference: "x".repeat(65),
                ..lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY")
            },
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            Some("consumer_reference"),
        ),
    ];
    let n = cases.len();
    for (req, code, reason, field) in cases {
        let err = c.lookup(req).await.expect_err(reason);
        assert_error(&err, code, reason);
        if let Some(field) = field {
            let details = err.get_error_details();
            let bad = details
                .bad_request()
                .unwrap_or_else(|| panic!("BadRequest for {reason}"));
            assert_eq!(bad.field_violations[0].field, field);
        }
    }
    let entries = t.audit_entries().await;
    assert_eq!(entries.len(), n, "every bad request is audited");
    assert!(
        entries
            .iter()
            .all(|e| e.decision == proto::AuditDecision::Refused as i32)
    );
    assert!(
        entries[..3].iter().all(|e| e.citizen.is_empty()),
        "a malformed number is not stored"
    );
    assert_eq!(entries[7].reason, "UNKNOWN_PURPOSE");
    t.stop().await;
}

#[tokio::test]
async fn a_citizen_the_source_does_not_know_gets_not_found() {
    let t = TestDemo::start().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    // A valid BIS number: not in the National Register.
    let bis = t
        .demo()
        .population
        .people
        .iter()
        .find(|p| !p.in_national_register)
        .expect("bis person")
        .niss;
    let err = c
        .lookup(lookup(
            bis.as_str(),
            RESIDENCE,
            &["street"],
            "RIS_ELIGIBILITY",
        ))
        .await
        .expect_err("no data");
    assert_error(&err, Code::NotFound, "SUBJECT_NOT_FOUND");
    let e = t.audit_entries().await.pop().expect("entry");
    assert_eq!(e.decision, proto::AuditDecision::Allowed as i32);
    assert_eq!(e.outcome, proto::AuditOutcome::NoData as i32);
    t.stop().await;
}

#[tokio::test]
async fn a_source_that_is_down_gives_unavailable() {
    let t = TestDemo::start().await;
    let port = unused_port();
    register_test_dataset(&t, "test.down", &format!("https://127.0.0.1:{port}")).await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let err = c
        .lookup(lookup(KARIM, "test.down", &["a"], "TEST"))
        .await
        .expect_err("down");
    assert_error(&err, Code::Unavailable, "SOURCE_UNAVAILABLE");
    let e = t.audit_entries().await.pop().expect("entry");
    assert_eq!(e.outcome, proto::AuditOutcome::SourceUnavailable as i32);
    assert_eq!(e.decision, proto::AuditDecision::Allowed as i32);
    // The other sources are unaffected.
    c.lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect("other source still answers");
    t.stop().await;
}

#[tokio::test]
async fn a_source_that_is_too_slow_gives_deadline_exceeded() {
    let t = TestDemo::start().await; // source deadline 400 ms
    let calls = Arc::new(AtomicUsize::new(0));
    let endpoint = start_test_source(
        &t,
        TestSource {
            delay: Duration::from_secs(5),
            extra: false,
            calls: calls.clone(),
        },
    )
    .await;
    register_test_dataset(&t, "test.slow", &endpoint).await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let err = c
        .lookup(lookup(KARIM, "test.slow", &["a"], "TEST"))
        .await
        .expect_err("slow");
    assert_error(&err, Code::DeadlineExceeded, "SOURCE_TIMEOUT");
    let e = t.audit_entries().await.pop().expect("entry");
    assert_eq!(e.outcome, proto::AuditOutcome::SourceTimeout as i32);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the source was called");
    t.stop().await;
}

#[tokio::test]
async fn a_client_that_gives_up_still_leaves_its_audit_entry() {
    let t = TestDemo::start().await;
    let endpoint = start_test_source(
        &t,
        TestSource {
            delay: Duration::from_millis(300),
            extra: false,
            calls: Default::default(),
        },
    )
    .await;
    register_test_dataset(&t, "test.patient", &endpoint).await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let mut req = tonic::Request::new(lookup(KARIM, "test.patient", &["a"], "TEST"));
    req.set_timeout(Duration::from_millis(50));
    let err = c.lookup(req).await.expect_err("client deadline");
    // tonic's server answers an expired grpc-timeout with CANCELLED.
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    // The lookup went on without the client; its entry appears once done.
    let mut entries = Vec::new();
    for _ in 0..100 {
        // Registering the test dataset was recorded too.
        entries = t.audit_entries().await;
        entries.retain(|e| e.operation == semel_core::LOOKUP_OPERATION);
        if !entries.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].outcome, proto::AuditOutcome::Answered as i32);
    t.stop().await;
}

#[tokio::test]
async fn concurrent_lookups_each_leave_exactly_one_chained_entry() {
    let t = TestDemo::start().await;
    let channel = t.channel(ANDERLECHT).await;
    let people: Vec<String> = t
        .demo()
        .population
        .people
        .iter()
        .take(150)
        .map(|p| p.niss.as_str().to_owned())
        .collect();
    let mut tasks = Vec::new();
    for (i, n) in people.iter().enumerate() {
        let mut c = proto::lookup_service_client::LookupServiceClient::new(channel.clone());
        // Every third names a purpose it has no authorisation for: a refusal.
        let purpose = if i % 3 == 0 {
            "SCHOOL_ENROLMENT"
        } else {
            "RIS_ELIGIBILITY"
        };
        let req = lookup(n, RESIDENCE, &["street"], purpose);
        tasks.push(tokio::spawn(async move { c.lookup(req).await.is_ok() }));
    }
    let mut ok = 0;
    for task in tasks {
        ok += usize::from(task.await.expect("task"));
    }
    let entries = t.audit_entries().await;
    assert_eq!(entries.len(), people.len(), "one entry per lookup");
    let allowed = entries
        .iter()
        .filter(|e| e.outcome == proto::AuditOutcome::Answered as i32)
        .count();
    assert_eq!(allowed, ok);
    assert_eq!(ok, people.len() - people.len().div_ceil(3));
    for (i, pair) in entries.windows(2).enumerate() {
        assert_eq!(
            pair[1].previous_hash, pair[0].entry_hash,
            "chain broken after entry {i}"
        );
        assert_eq!(pair[1].sequence, pair[0].sequence + 1);
    }
    t.stop().await;
}

#[tokio::test]
async fn the_audit_log_is_queried_by_citizen_consumer_and_period() {
    let t = TestDemo::start().await;
    let mut cpas = t.lookup_client(ANDERLECHT).await;
    let mut commune = t.lookup_client(SCHAERBEEK).await;
    cpas.lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect("allowed");
    cpas.lookup(lookup(JAN, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect("allowed");
    t.open_file(SCHAERBEEK, KARIM, "PUPIL").await;
    commune
        .lookup(proto::LookupRequest {
            checks: vec![check("nis_code=21015")],
            ..lookup(KARIM, RESIDENCE, &[], "SCHOOL_ENROLMENT")
        })
        .await
        .expect("allowed");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let ts = |seconds: i64| Some(prost_types::Timestamp { seconds, nanos: 0 });
    let mut audit = t.audit().await;
    let count = |req: proto::ListAuditEntriesRequest| {
        let mut audit = audit.clone();
        async move {
            audit
                .list_audit_entries(req)
                .await
                .expect("query")
                .into_inner()
                .entries
                .iter()
                .filter(|e| !is_audit_read(e) && !is_seed(e))
                .count()
        }
    };
    let schaerbeek = semel_demo::seed::org(SCHAERBEEK)
        .expect("org")
        .kbo
        .as_str()
        .to_owned();
    assert_eq!(
        count(proto::ListAuditEntriesRequest {
            citizen: KARIM.into(),
            ..Default::default()
        })
        .await,
        3,
        "two lookups and the commune's file"
    );
    assert_eq!(
        count(proto::ListAuditEntriesRequest {
            citizen: "93.05.18-223.61".into(),
            consumer_kbo: schaerbeek.clone(),
            ..Default::default()
        })
        .await,
        2
    );
    assert_eq!(
        count(proto::ListAuditEntriesRequest {
            since: ts(now - 3600),
            ..Default::default()
        })
        .await,
        4
    );
    assert_eq!(
        count(proto::ListAuditEntriesRequest {
            since: ts(now + 3600),
            ..Default::default()
        })
        .await,
        0
    );
    assert_eq!(
        count(proto::ListAuditEntriesRequest {
            until: ts(now - 3600),
            ..Default::default()
        })
        .await,
        0
    );
    // Paging: two pages of two and one lookups, newest first (the log
    // also holds the file and these queries, recorded as reads).
    let first = audit
        .list_audit_entries(proto::ListAuditEntriesRequest {
            page_size: 2,
            dataset: RESIDENCE.into(),
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    assert_eq!(first.entries.len(), 2);
    assert_eq!(first.entries[0].consumer_kbo, schaerbeek);
    let second = audit
        .list_audit_entries(proto::ListAuditEntriesRequest {
            page_size: 2,
            dataset: RESIDENCE.into(),
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    assert_eq!(second.entries.len(), 1);
    assert!(second.next_page_token.is_empty());
    let err = audit
        .list_audit_entries(proto::ListAuditEntriesRequest {
            citizen: "123".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad citizen");
    assert_error(&err, Code::InvalidArgument, "INVALID_CITIZEN");
    t.stop().await;
}

#[tokio::test]
async fn a_national_number_hidden_in_a_name_is_masked_in_the_error() {
    let t = TestDemo::start().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let err = c
        .lookup(lookup(
            KARIM,
            &format!("x{KARIM}"),
            &["street"],
            "RIS_ELIGIBILITY",
        ))
        .await
        .expect_err("unknown dataset");
    assert_error(&err, Code::NotFound, "UNKNOWN_DATASET");
    assert!(
        err.message().contains("<national number>"),
        "{}",
        err.message()
    );
    let (_, _, metadata) = error_info(&err);
    assert!(
        metadata.values().all(|v| !v.contains(KARIM)),
        "{metadata:?}"
    );
    // The audit entry says why, masked the same way.
    let entry = t.audit_entries().await.pop().expect("entry");
    assert!(
        entry.detail.contains("<national number>"),
        "{}",
        entry.detail
    );
    assert!(!entry.detail.contains(KARIM));
    t.stop().await;
}
