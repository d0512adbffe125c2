//! Each broker's writer remembers the newest size it acknowledged: a
//! database whose head is found below it (a restored backup, a promoted
//! standby that was behind, an administrator winding the log back) is
//! refused, never extended (issue 36, point 8). The failover cases with a
//! real standby are in `tests/e2e/failover.rs`.

mod common;

use std::time::Duration;

use common::record;
use semel_postgres::PgAuditLog;
use semel_postgres::testing::{TestDatabase, connect};
use semel_storage::AuditStore;

#[tokio::test]
async fn a_log_wound_back_below_what_the_broker_acknowledged_is_refused_not_extended() {
    let Some(db) = TestDatabase::start("acknowledged").await else {
        return;
    };
    let signer = semel_core::checkpoint::NoteSigner::new(
        "semel.test/audit",
        ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
    );
    let log = PgAuditLog::start(&db.url, signer, Duration::from_secs(3600))
        .await
        .expect("start");
    for i in 0..5 {
        log.append(record(i)).await.expect("append");
    }
    assert_eq!(log.failure(), None);
    // The log as an older copy of the database holds it: three entries,
    // the head on the third.
    let admin = connect(&db.url).await.expect("connect");
    let third: Vec<u8> = admin
        .query_one("SELECT encoding FROM audit_entries WHERE sequence = 2", &[])
        .await
        .expect("read")
        .get(0);
    admin
        .batch_execute("DELETE FROM audit_entries WHERE sequence >= 3")
        .await
        .expect("delete");
    admin
        .execute(
            "UPDATE audit_head SET next_sequence = 3, last_hash = $1 WHERE id = 0",
            &[&semel_core::entry_hash(&third).to_vec()],
        )
        .await
        .expect("wind back");
    // Found while idle, without an append: health says why.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let why = loop {
        if let Some(why) = log.failure() {
            break why;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the shorter log was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        why.contains("holds 3 entries, but this broker acknowledged 5"),
        "{why}"
    );
    assert!(why.contains("operator-guide"), "{why}");
    // Appends are refused; the shorter log is not extended.
    let err = log.append(record(5)).await.expect_err("refused");
    assert!(err.to_string().contains("acknowledged 5"), "{err}");
    let size: i64 = admin
        .query_one("SELECT next_sequence FROM audit_head WHERE id = 0", &[])
        .await
        .expect("head")
        .get(0);
    assert_eq!(
        size, 3,
        "the broker extended a log shorter than it acknowledged"
    );
}
