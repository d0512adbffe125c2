//! The database is not trusted (issue 36, points 1 and 6), against the
//! demo's broker on PostgreSQL: a row altered before its checkpoint is not
//! signed and the broker stops serving, a session holding the integration
//! lock shows in the checkpoint age and in health, and a clean stop signs
//! every entry.

use std::time::Duration;

use semel_demo::seed::datasets::RESIDENCE;
use semel_demo_stack::Demo;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::harness::*;

fn postgresql_only(what: &str) -> bool {
    if !on_postgresql() {
        eprintln!("PostgreSQL only, not run on the embedded store: {what}");
        return true;
    }
    false
}

/// The demo on PostgreSQL with `change` applied to its options.
async fn start_with(change: impl FnOnce(&mut semel_demo_stack::DemoOptions)) -> TestDemo {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut opts, db) = demo_options(dir.path()).await;
    change(&mut opts);
    let demo = Demo::start(opts).await.expect("start the demo");
    TestDemo {
        demo: Some(demo),
        dir,
        db,
    }
}

async fn admin(t: &TestDemo) -> tokio_postgres::Client {
    let url = &t.db.as_ref().expect("on PostgreSQL").url;
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

async fn lookup_status(t: &TestDemo) -> i32 {
    let channel = t
        .channel_with(None, &t.pki().ca_cert())
        .await
        .expect("connect");
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "semel.v1.LookupService".into(),
        })
        .await
        .expect("health")
        .into_inner()
        .status
}

/// Waits for the lookups' health to be `want`.
async fn health_becomes(t: &TestDemo, want: ServingStatus, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if lookup_status(t).await == want as i32 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

const LOCK: i64 = semel_postgres::INTEGRATION_LOCK;

async fn newest_checkpoint(admin: &tokio_postgres::Client) -> i64 {
    admin
        .query_one("SELECT coalesce(max(size), 0) FROM audit_checkpoints", &[])
        .await
        .expect("read")
        .get(0)
}

/// Makes a lookup while a session holds the integration lock, alters its
/// entry's row with `tamper` (`$1` is the entry's sequence), lets the lock
/// go, and checks that the broker signs nothing over it and stops serving.
async fn altered_before_its_checkpoint(tamper: &str, found: &str) {
    let t = TestDemo::start().await;
    let admin = admin(&t).await;
    admin
        .batch_execute(&format!("SELECT pg_advisory_lock({LOCK})"))
        .await
        .expect("hold the integration lock");
    let mut c = t.lookup_client(ANDERLECHT).await;
    let req = lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY");
    c.lookup(req.clone()).await.expect("allowed");
    let sequence: i64 = admin
        .query_one("SELECT max(sequence) FROM audit_entries", &[])
        .await
        .expect("read")
        .get(0);
    let signed_before = newest_checkpoint(&admin).await;
    assert!(signed_before <= sequence, "not signed yet");
    admin.execute(tamper, &[&sequence]).await.expect("tamper");
    admin
        .batch_execute(&format!("SELECT pg_advisory_unlock({LOCK})"))
        .await
        .expect("let go");
    assert!(
        health_becomes(&t, ServingStatus::NotServing, Duration::from_secs(20)).await,
        "the broker kept serving over an altered entry"
    );
    let audit = &t.demo().broker.storage().audit;
    let why = audit.failure().expect("the log halted");
    // Found at integration, or by the background scrub if it read the row
    // first: either way nothing was signed over it and the log halted.
    assert!(
        why.contains(found) || why.contains("the audit scrub found"),
        "{why}"
    );
    assert!(audit.stats().integrity_failures >= 1);
    assert!(
        newest_checkpoint(&admin).await <= sequence,
        "a checkpoint was signed over the altered entry"
    );
    let err = c.lookup(req).await.expect_err("the log takes no entries");
    assert_error(&err, Code::Unavailable, "AUDIT_UNAVAILABLE");
    t.stop().await;
}

#[tokio::test]
async fn an_entry_whose_payload_is_altered_before_its_checkpoint_is_not_signed_and_the_broker_stops_serving()
 {
    if postgresql_only("the audit rows are PostgreSQL's") {
        return;
    }
    // Re-encoded as an administrator who knows the format would: the same
    // place and chain, the dataset's name changed.
    altered_before_its_checkpoint(
        "UPDATE audit_entries SET encoding = overlay(encoding PLACING \
         convert_to('national_register.RESIDENCE', 'UTF8') \
         FROM position(convert_to('national_register.residence', 'UTF8') IN encoding)) \
         WHERE sequence = $1",
        "entry",
    )
    .await;
}

#[tokio::test]
async fn an_entry_whose_citizen_column_is_altered_before_its_checkpoint_is_caught_at_integration() {
    if postgresql_only("the audit rows are PostgreSQL's") {
        return;
    }
    altered_before_its_checkpoint(
        "UPDATE audit_entries SET citizen = NULL WHERE sequence = $1",
        "citizen column",
    )
    .await;
}

#[tokio::test]
async fn a_session_holding_the_integration_lock_shows_in_the_checkpoint_age_and_in_health() {
    if postgresql_only("the integration lock is PostgreSQL's") {
        return;
    }
    let t = start_with(|o| {
        o.checkpoint_age_limit = Some(Duration::from_secs(2));
        o.metrics_listen = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    let admin = admin(&t).await;
    // As a database administrator would: a session lock, held outside any
    // transaction. The brokers do not end it; they say so.
    admin
        .batch_execute(&format!("SELECT pg_advisory_lock({LOCK})"))
        .await
        .expect("hold the integration lock");
    let mut c = t.lookup_client(ANDERLECHT).await;
    c.lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect("allowed");
    assert!(
        health_becomes(&t, ServingStatus::NotServing, Duration::from_secs(30)).await,
        "signing stalled silently"
    );
    let why = t.demo().broker.readiness.why().expect("a condition holds");
    assert!(why.contains("checkpoint"), "{why}");
    let addr = t.demo().metrics_addr.expect("metrics served");
    let scrape = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("response");
        out
    };
    let age: f64 = scrape
        .lines()
        .find_map(|l| l.strip_prefix("semel_audit_checkpoint_age_seconds "))
        .expect("the checkpoint age is a metric")
        .parse()
        .expect("a number");
    assert!(age > 2.0, "{age}");
    assert!(admin.batch_execute("SELECT 1").await.is_ok(), "not ended");
    admin
        .batch_execute(&format!("SELECT pg_advisory_unlock({LOCK})"))
        .await
        .expect("let go");
    assert!(
        health_becomes(&t, ServingStatus::Serving, Duration::from_secs(30)).await,
        "signing resumed, health did not"
    );
    t.stop().await;
}

#[tokio::test]
async fn a_clean_stop_on_postgresql_leaves_no_entry_unsigned() {
    if postgresql_only("the embedded store's close is tested in semel-store") {
        return;
    }
    let mut t = TestDemo::start().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let req = lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY");
    for _ in 0..10 {
        c.lookup(req.clone()).await.expect("allowed");
    }
    let admin = admin(&t).await;
    t.demo.take().expect("running").stop().await.expect("stop");
    let size: i64 = admin
        .query_one("SELECT next_sequence FROM audit_head", &[])
        .await
        .expect("read")
        .get(0);
    assert_eq!(
        newest_checkpoint(&admin).await,
        size,
        "entries left unsigned"
    );
    drop(admin);
    t.db.take();
}
