//! Limits: a consumer over its rate, a source at its in-flight cap, and a
//! failing source whose circuit opens. Each refusal is clear, says when to
//! retry, is audited, and leaves everyone else alone.

use std::time::Duration;

use semel_demo::seed::datasets::*;
use semel_server::limits::LimitSettings;
use semel_server::proto;
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::*;

#[tokio::test]
async fn a_consumer_over_its_rate_is_refused_with_retry_information() {
    let limits = LimitSettings {
        consumer_rate: Some(0.5),
        consumer_burst: 2.0,
        ..Default::default()
    };
    let t = TestDemo::start_with(limits, Duration::from_secs(2)).await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let req = lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY");
    c.lookup(req.clone()).await.expect("first");
    c.lookup(req.clone()).await.expect("second (burst)");
    let err = c.lookup(req).await.expect_err("over the rate");
    assert_error(&err, Code::ResourceExhausted, "RATE_LIMITED");
    assert!(
        err.get_error_details()
            .retry_info()
            .and_then(|r| r.retry_delay)
            .is_some_and(|d| d > Duration::ZERO)
    );
    assert_eq!(
        t.audit_entries().await.last().map(|e| e.reason.clone()),
        Some("RATE_LIMITED".to_owned())
    );
    // Another consumer has its own budget.
    t.open_file(BRUXELLES_CPAS, KARIM, "RIS_APPLICANT").await;
    t.lookup_client(BRUXELLES_CPAS)
        .await
        .lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect("other consumer");
    t.stop().await;
}

#[tokio::test]
async fn a_failing_source_opens_its_circuit_and_the_others_carry_on() {
    let limits = LimitSettings {
        breaker_failures: 3,
        breaker_cooldown: Duration::from_secs(60),
        ..Default::default()
    };
    let t = TestDemo::start_with(limits, Duration::from_millis(400)).await;
    register_test_dataset(
        &t,
        "test.failing",
        &format!("https://127.0.0.1:{}", unused_port()),
    )
    .await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    for _ in 0..3 {
        let err = c
            .lookup(lookup(KARIM, "test.failing", &["a"], "TEST"))
            .await
            .expect_err("down");
        assert_error(&err, Code::Unavailable, "SOURCE_UNAVAILABLE");
    }
    let err = c
        .lookup(lookup(KARIM, "test.failing", &["a"], "TEST"))
        .await
        .expect_err("open");
    assert_error(&err, Code::Unavailable, "SOURCE_CIRCUIT_OPEN");
    let wait = err
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(wait > Duration::from_secs(50), "{wait:?}");
    let e = t.audit_entries().await.pop().expect("entry");
    assert_eq!(
        (e.reason.as_str(), e.outcome),
        (
            "SOURCE_CIRCUIT_OPEN",
            proto::AuditOutcome::NotForwarded as i32
        )
    );
    c.lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect("other sources answer");
    // grpc.health.v1 says so per source, within the second.
    let channel = t
        .channel_with(None, &t.pki().ca_cert())
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = |service: String| {
        let mut health = health.clone();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest { service })
                .await
                .map(|r| r.into_inner().status)
        }
    };
    let failing = semel_server::server::source_health_name(
        &semel_core::Kbo::parse("0999999922").expect("kbo"),
    );
    let register = semel_server::server::source_health_name(
        &semel_demo::seed::org("national-register").expect("org").kbo,
    );
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while status(failing.clone()).await.ok() != Some(not_serving) {
        assert!(
            std::time::Instant::now() < deadline,
            "source health not updated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(register).await.ok(), Some(serving));
    let _ = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("the broker as a whole");
    t.stop().await;
}

#[tokio::test]
async fn a_consumer_over_its_daily_quota_is_refused_until_midnight() {
    let limits = LimitSettings {
        consumer_daily_quota: Some(2),
        ..Default::default()
    };
    let t = TestDemo::start_with(limits, Duration::from_secs(2)).await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let req = lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY");
    c.lookup(req.clone()).await.expect("first");
    c.lookup(req.clone()).await.expect("second");
    let err = c.lookup(req.clone()).await.expect_err("over the quota");
    assert_error(&err, Code::ResourceExhausted, "QUOTA_EXCEEDED");
    let wait = err
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(24 * 3600),
        "{wait:?}"
    );
    assert_eq!(
        t.audit_entries().await.last().map(|e| e.reason.clone()),
        Some("QUOTA_EXCEEDED".to_owned())
    );
    t.open_file(BRUXELLES_CPAS, KARIM, "RIS_APPLICANT").await;
    t.lookup_client(BRUXELLES_CPAS)
        .await
        .lookup(req)
        .await
        .expect("another consumer has its own quota");
    t.stop().await;
}

#[tokio::test]
async fn a_source_at_its_cap_refuses_at_once_instead_of_queueing() {
    let limits = LimitSettings {
        source_max_in_flight: 2,
        ..Default::default()
    };
    let t = TestDemo::start_with(limits, Duration::from_secs(5)).await;
    let endpoint = start_test_source(
        &t,
        TestSource {
            delay: Duration::from_millis(800),
            extra: false,
            calls: Default::default(),
        },
    )
    .await;
    register_test_dataset(&t, "test.busy", &endpoint).await;
    let channel = t.channel(ANDERLECHT).await;
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let mut c = proto::lookup_service_client::LookupServiceClient::new(channel.clone());
            tokio::spawn(async move { c.lookup(lookup(KARIM, "test.busy", &["a"], "TEST")).await })
        })
        .collect();
    let mut busy = 0;
    let mut answered = 0;
    for call in calls {
        match call.await.expect("task") {
            Ok(_) => answered += 1,
            Err(e) => {
                assert_error(&e, Code::ResourceExhausted, "SOURCE_BUSY");
                busy += 1;
            }
        }
    }
    assert_eq!((answered, busy), (2, 1));
    t.stop().await;
}
