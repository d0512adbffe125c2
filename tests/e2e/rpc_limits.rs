//! Budgets per organisation on every RPC, not only lookups: a rate and a
//! cap in flight on the other calls, RegisterFile's call to the register
//! behind the register's guard, and a cap on pulls of changes in progress.
//! Each refusal says when to retry and leaves the other organisations alone.

use std::time::{Duration, Instant};

use semel_client::AuthChannel;
use semel_demo::seed::datasets::*;
use semel_server::limits::LimitSettings;
use semel_server::proto::{self, mutation_service_client::MutationServiceClient};
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::*;

fn retry_delay(err: &tonic::Status) -> Duration {
    err.get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo")
}

fn list_files() -> proto::ListFilesRequest {
    proto::ListFilesRequest {
        citizen: KARIM.into(),
    }
}

async fn mutations(t: &TestDemo, slug: &str) -> MutationServiceClient<AuthChannel> {
    MutationServiceClient::new(t.channel(slug).await)
}

fn pull(wait_seconds: i32) -> proto::PullMutationsRequest {
    proto::PullMutationsRequest {
        wait_seconds,
        ..Default::default()
    }
}

/// Calls `f` until it fails, within five seconds: for a refusal that comes
/// once calls started elsewhere have reached the broker.
async fn until_refused<F, Fut, T>(mut f: F) -> tonic::Status
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Err(e) = f().await {
            return e;
        }
        assert!(Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_organisation_over_its_call_budget_is_refused_and_the_others_are_served() {
    let limits = LimitSettings {
        calls_per_second: 0.5,
        call_burst: 3.0,
        ..Default::default()
    };
    let t = TestDemo::start_with(limits, Duration::from_secs(2)).await;
    let mut persons = t.persons_client(ANDERLECHT).await;
    for i in 0..3 {
        persons
            .list_files(list_files())
            .await
            .unwrap_or_else(|e| panic!("call {i} within the burst: {e:?}"));
    }
    let err = persons
        .list_files(list_files())
        .await
        .expect_err("over the budget");
    assert_error(&err, Code::ResourceExhausted, "RATE_LIMITED");
    let wait = retry_delay(&err);
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(2),
        "{wait:?}"
    );
    // Any RPC of the organisation's: GiveConsent too.
    let err = t
        .consent_client(ANDERLECHT)
        .await
        .give_consent(proto::GiveConsentRequest::default())
        .await
        .expect_err("over the budget");
    assert_error(&err, Code::ResourceExhausted, "RATE_LIMITED");
    // Audited as a refusal of the organisation's call.
    let e = t
        .audit_entries()
        .await
        .into_iter()
        .rev()
        .find(|e| e.operation == "semel.v1.PersonsService/ListFiles")
        .expect("entry");
    assert_eq!(
        (e.reason.as_str(), e.decision),
        ("RATE_LIMITED", proto::AuditDecision::Refused as i32)
    );
    // Another organisation has its own budget.
    t.persons_client(BRUXELLES_CPAS)
        .await
        .list_files(list_files())
        .await
        .expect("another organisation");
    t.stop().await;
}

#[tokio::test]
async fn an_organisation_at_its_cap_in_flight_is_refused_and_the_others_are_served() {
    let limits = LimitSettings {
        calls_in_flight: 1,
        ..Default::default()
    };
    let t = TestDemo::start_with(limits, Duration::from_secs(2)).await;
    // A pull that waits holds the organisation's one slot.
    let mut waiting = mutations(&t, ANDERLECHT).await;
    let held = tokio::spawn(async move { waiting.pull_mutations(pull(20)).await });
    let mut persons = t.persons_client(ANDERLECHT).await;
    let err = until_refused(|| {
        let mut p = persons.clone();
        async move { p.list_files(list_files()).await }
    })
    .await;
    assert_error(&err, Code::ResourceExhausted, "RATE_LIMITED");
    assert!(err.message().contains("in progress"), "{}", err.message());
    assert!(retry_delay(&err) > Duration::ZERO);
    t.persons_client(BRUXELLES_CPAS)
        .await
        .list_files(list_files())
        .await
        .expect("another organisation");
    // The pull given up, its slot is free again.
    held.abort();
    let deadline = Instant::now() + Duration::from_secs(5);
    while persons.list_files(list_files()).await.is_err() {
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.stop().await;
}

#[tokio::test]
async fn pulls_of_changes_in_progress_are_capped_per_organisation() {
    let t = TestDemo::start_with(LimitSettings::default(), Duration::from_secs(2)).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = mutations(&t, ANDERLECHT).await;
        held.push(tokio::spawn(
            async move { c.pull_mutations(pull(20)).await },
        ));
    }
    let c = mutations(&t, ANDERLECHT).await;
    let err = until_refused(|| {
        let mut c = c.clone();
        async move { c.pull_mutations(pull(0)).await }
    })
    .await;
    assert_error(&err, Code::ResourceExhausted, "SUBSCRIPTIONS_EXCEEDED");
    assert!(retry_delay(&err) > Duration::ZERO);
    mutations(&t, BRUXELLES_CPAS)
        .await
        .pull_mutations(pull(0))
        .await
        .expect("another organisation pulls");
    for h in held {
        h.abort();
    }
    t.stop().await;
}

/// Points the register dataset (`national_register.identity`) at `endpoint`.
async fn move_the_register(t: &TestDemo, endpoint: String) {
    // The register dataset is the operator's to amend.
    let mut source = t.registry().await;
    let mut identity = source
        .get_dataset(proto::GetDatasetRequest {
            name: IDENTITY.into(),
        })
        .await
        .expect("get")
        .into_inner()
        .dataset
        .expect("dataset");
    identity.endpoint = endpoint;
    source
        .amend_dataset(proto::AmendDatasetRequest {
            dataset: Some(identity),
            reason: "test".into(),
        })
        .await
        .expect("amend");
}

fn file(citizen: &str) -> proto::RegisterFileRequest {
    proto::RegisterFileRequest {
        file: Some(proto::PersonFile {
            citizen: citizen.into(),
            capacity: "RIS_APPLICANT".into(),
            phase: proto::FilePhase::Provisional as i32,
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn register_file_fails_fast_once_the_registers_circuit_is_open() {
    let limits = LimitSettings {
        breaker_failures: 2,
        breaker_cooldown: Duration::from_secs(60),
        ..Default::default()
    };
    let t = TestDemo::start_with(limits, Duration::from_millis(400)).await;
    move_the_register(&t, format!("https://127.0.0.1:{}", unused_port())).await;
    let mut persons = t.persons_client(ANDERLECHT).await;
    for _ in 0..2 {
        let err = persons
            .register_file(file(KARIM))
            .await
            .expect_err("the register is down");
        assert_error(&err, Code::Unavailable, "SOURCE_UNAVAILABLE");
    }
    let err = persons.register_file(file(KARIM)).await.expect_err("open");
    assert_error(&err, Code::Unavailable, "SOURCE_CIRCUIT_OPEN");
    assert!(retry_delay(&err) > Duration::from_secs(50));
    t.stop().await;
}

#[tokio::test]
async fn register_file_is_refused_while_the_register_is_at_its_cap() {
    let limits = LimitSettings {
        source_max_in_flight: 1,
        ..Default::default()
    };
    let t = TestDemo::start_with(limits, Duration::from_secs(10)).await;
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // The register is the national register's: its stand-in must hold that
    // organisation's certificate (a source proves it owns its dataset).
    let register = semel_demo::seed::org("national-register").expect("org").kbo;
    let slow = start_test_source_as(
        &t,
        register.as_str(),
        TestSource {
            delay: Duration::from_secs(8),
            extra: false,
            calls: calls.clone(),
        },
    )
    .await;
    move_the_register(&t, slow).await;
    let mut first = t.persons_client(ANDERLECHT).await;
    let held = tokio::spawn(async move { first.register_file(file(KARIM)).await });
    // Once the first file's question is at the register, the register is
    // at its cap: another organisation's file is refused, not queued.
    let deadline = Instant::now() + Duration::from_secs(5);
    while calls.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the register was never asked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = t
        .persons_client(BRUXELLES_CPAS)
        .await
        .register_file(file(JAN))
        .await
        .expect_err("the register is at its cap");
    assert_error(&err, Code::ResourceExhausted, "SOURCE_BUSY");
    assert!(retry_delay(&err) > Duration::ZERO);
    held.abort();
    t.stop().await;
}
