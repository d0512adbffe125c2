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
