//! State survives a restart, and the log on disk holds exactly the entries
//! the broker answered for.

use std::time::Duration;

use semel_demo::seed::datasets::*;
use semel_server::proto;

use crate::harness::*;

#[tokio::test]
async fn state_survives_a_restart() {
    if embedded_only("a restart on the same data directory") {
        return;
    }
    let t = TestDemo::start().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    for _ in 0..3 {
        c.lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
            .await
            .expect("allowed");
    }
    c.lookup(lookup(KARIM, RESIDENCE, &["street"], "SCHOOL_ENROLMENT"))
        .await
        .expect_err("refused");
    t.registry()
        .await
        .suspend_authorisation(proto::SuspendAuthorisationRequest {
            reference: "BSC/2024/018".into(),
            reason: "test".into(),
        })
        .await
        .expect("suspend");
    // The demo's seeds (its registry, its files), four lookups and the
    // suspension; the query's own entry follows them.
    let before = t.all_audit_entries().await;
    assert_eq!(before.len(), 7);
    assert!(is_seed(&before[0]), "{:?}", before[0]);
    assert!(is_seed(&before[1]), "{:?}", before[1]);
    assert_eq!(
        before[6].operation,
        "semel.v1.RegistryService/SuspendAuthorisation"
    );
    let head = t
        .audit()
        .await
        .get_audit_head(proto::GetAuditHeadRequest {})
        .await
        .expect("head")
        .into_inner();
    assert_eq!(head.size, 8);
    drop(c);
    let dir = t.stop().await;

    // The log on disk, read directly: every entry, chained.
    {
        let store = semel_store::Store::open(&dir.path().join("store")).expect("open store");
        let report = store.audit().verify_chain().expect("chain verifies");
        assert_eq!(report.entries, head.size);
        assert_eq!(report.head.to_vec(), head.head_hash);
        store.close().expect("close");
    }

    let t = TestDemo::start_in(dir, Duration::from_millis(400)).await;
    // The demo points its datasets at its sources' new addresses at a
    // restart: one registry change, recorded, if they moved.
    let restarted = t.audit_size().await;
    let moved = restarted - head.size;
    assert!(moved <= 1, "{moved} entries at the restart");
    let a = t
        .registry()
        .await
        .get_authorisation(proto::GetAuthorisationRequest {
            reference: "BSC/2024/018".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .authorisation
        .expect("auth");
    assert_eq!(
        a.status,
        proto::AuthorisationStatus::Suspended as i32,
        "the suspension survived"
    );
    let mut c = t.lookup_client(ANDERLECHT).await;
    c.lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect("allowed after restart");
    let after = t.all_audit_entries().await;
    assert_eq!(after.len() as u64, head.size + moved + 1);
    assert_eq!(
        after[head.size as usize].previous_hash, head.head_hash,
        "the chain continues across the restart"
    );
    if moved == 1 {
        assert!(is_seed(&after[head.size as usize]), "{:?}", after[8]);
    }
    assert_eq!(after[..7], before[..]);
    t.stop().await;
}

#[tokio::test]
async fn a_full_disk_fails_closed_no_answer_without_its_entry() {
    if embedded_only("a write failure injected into the audit log file") {
        return;
    }
    use tonic::Code;
    let t = TestDemo::start().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let req = lookup(
        KARIM,
        semel_demo::seed::datasets::RESIDENCE,
        &["street"],
        "RIS_ELIGIBILITY",
    );
    c.lookup(req.clone())
        .await
        .expect("allowed while the disk is fine");
    let before = t.audit_size().await;
    t.demo()
        .embedded
        .as_ref()
        .expect("the demo runs on the embedded store")
        .audit()
        .inject_write_failure();
    let err = c
        .lookup(req.clone())
        .await
        .expect_err("no entry, no answer");
    assert_error(&err, Code::Unavailable, "AUDIT_UNAVAILABLE");
    assert!(
        !err.message().contains("Rue"),
        "no data leaves with the refusal"
    );
    // Every later lookup is refused too, until an operator restarts; each
    // is counted (the log says it once, not once per refusal).
    for _ in 0..20 {
        let err = c.lookup(req.clone()).await.expect_err("still refused");
        assert_error(&err, Code::Unavailable, "AUDIT_UNAVAILABLE");
    }
    assert_eq!(t.demo().broker.metrics.audit_unavailable.get(), 21);
    assert_eq!(t.audit_size().await, before, "nothing half-written");
    // The health check tells load balancers.
    let channel = t
        .channel_with(None, &t.pki().ca_cert())
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    let mut status = 0;
    for _ in 0..40 {
        status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "semel.v1.LookupService".into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        if status == not_serving {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, not_serving);
    t.stop().await;
}
