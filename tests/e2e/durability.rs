//! State survives a restart, and the log on disk holds exactly the entries
//! the broker answered for.

use std::time::Duration;

use semel_demo::seed::datasets::*;
use semel_server::proto;

use crate::harness::*;

#[tokio::test]
async fn state_survives_a_restart() {
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
    let before = t.audit_entries().await;
    assert_eq!(before.len(), 4);
    drop(c);
    let dir = t.stop().await;

    // The log on disk, read directly: four entries, chained.
    {
        let store = semel_store::Store::open(&dir.path().join("store")).expect("open store");
        let report = store.audit().verify_chain().expect("chain verifies");
        assert_eq!(report.entries, 4);
        assert_eq!(report.head.to_vec(), before[3].entry_hash);
        store.close().expect("close");
    }

    let t = TestDemo::start_in(dir, Duration::from_millis(400)).await;
    assert_eq!(t.audit_size().await, 4);
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
    let after = t.audit_entries().await;
    assert_eq!(after.len(), 5);
    assert_eq!(
        after[4].previous_hash, before[3].entry_hash,
        "the chain continues across the restart"
    );
    assert_eq!(after[..4], before[..]);
    t.stop().await;
}
