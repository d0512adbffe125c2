//! The database is not trusted (issue 36, points 1 and 6): what a database
//! administrator changes in the audit tables before a checkpoint is never
//! signed, a tree or checkpoint moved back is refused, and nobody holding
//! the integration lock stalls signing silently.

mod common;

use std::time::Duration;

use common::record;
use semel_core::AuditEntry;
use semel_core::checkpoint::NoteSigner;
use semel_postgres::{
    INTEGRATION_LOCK, Integrated, PgAudit, PgAuditLog, PgError, testing::TestDatabase,
};
use semel_storage::AuditStore;

fn signer() -> NoteSigner {
    NoteSigner::new(
        "semel.test/audit",
        ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
    )
}

async fn admin(db: &TestDatabase) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// Rewrites entry `sequence`'s encoding as a database administrator who
/// knows the format would: a well-formed entry at the same place, chained
/// to the same predecessor, with another dataset (no query column moves).
async fn rewrite_payload(admin: &tokio_postgres::Client, sequence: i64) {
    let row = admin
        .query_one(
            "SELECT encoding FROM audit_entries WHERE sequence = $1",
            &[&sequence],
        )
        .await
        .expect("read");
    let mut entry = AuditEntry::decode(row.get::<_, &[u8]>(0)).expect("decode");
    entry.record.dataset = "national_register.forged".into();
    admin
        .execute(
            "UPDATE audit_entries SET encoding = $2 WHERE sequence = $1",
            &[&sequence, &entry.to_bytes()],
        )
        .await
        .expect("rewrite");
}

async fn checkpoints(admin: &tokio_postgres::Client) -> i64 {
    admin
        .query_one("SELECT count(*) FROM audit_checkpoints", &[])
        .await
        .expect("count")
        .get(0)
}

#[tokio::test]
async fn a_payload_rewritten_before_its_checkpoint_is_not_signed() {
    let Some(db) = TestDatabase::start("intpayload").await else {
        return;
    };
    let mut audit = PgAudit::connect(&db.url).await.expect("connect");
    audit
        .append((0..6).map(record).collect())
        .await
        .expect("append");
    let admin = admin(&db).await;
    rewrite_payload(&admin, 2).await;
    match audit.integrate(100, &signer()).await {
        Err(PgError::Integrity(m)) => assert!(m.contains("entry 3 does not chain"), "{m}"),
        other => panic!("signed over a rewritten entry: {other:?}"),
    }
    assert_eq!(checkpoints(&admin).await, 0, "nothing is signed");
    assert_eq!(audit.tree_head().await.expect("head").size, 0);
}

#[tokio::test]
async fn a_payload_that_does_not_decode_or_names_another_place_is_not_signed() {
    let Some(db) = TestDatabase::start("intdecode").await else {
        return;
    };
    let mut audit = PgAudit::connect(&db.url).await.expect("connect");
    audit
        .append((0..4).map(record).collect())
        .await
        .expect("append");
    let admin = admin(&db).await;
    // Entry 1's encoding moved to place 2 (and 2's to 1): each decodes.
    admin
        .batch_execute(
            "UPDATE audit_entries SET encoding = CASE sequence \
                 WHEN 1 THEN (SELECT encoding FROM audit_entries WHERE sequence = 2) \
                 ELSE (SELECT encoding FROM audit_entries WHERE sequence = 1) END \
             WHERE sequence IN (1, 2)",
        )
        .await
        .expect("swap");
    match audit.integrate(100, &signer()).await {
        Err(PgError::Integrity(m)) => assert!(m.contains("encodes entry 2"), "{m}"),
        other => panic!("{other:?}"),
    }
    admin
        .batch_execute("UPDATE audit_entries SET encoding = '\\x00ff' WHERE sequence = 1")
        .await
        .expect("garble");
    match audit.integrate(100, &signer()).await {
        Err(PgError::Integrity(m)) => assert!(m.contains("does not decode"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(checkpoints(&admin).await, 0);
}

#[tokio::test]
async fn a_query_column_that_differs_from_its_entry_is_caught_at_integration() {
    let Some(db) = TestDatabase::start("intcolumns").await else {
        return;
    };
    let mut audit = PgAudit::connect(&db.url).await.expect("connect");
    let admin = admin(&db).await;
    // Each column a query reads, altered in turn, is caught, and fixed
    // back the next round goes on.
    for (column, forge, restore) in [
        ("citizen", "citizen = NULL", "citizen = '93051822361'"),
        (
            "citizen_as_given",
            "citizen_as_given = '85073003328'",
            "citizen_as_given = NULL",
        ),
        (
            "consumer",
            "consumer = '0212345668'",
            "consumer = '0566988259'",
        ),
        (
            "time_micros",
            "time_micros = 0",
            "time_micros = 1700000000000000",
        ),
    ] {
        let (size, _) = audit.head().await.expect("head");
        audit
            .append((size..size + 3).map(record).collect())
            .await
            .expect("append");
        // The first of the three, whose consumer and time are known.
        let first = size as i64;
        let restore = restore.replace(
            "1700000000000000",
            &(1_700_000_000_000_000 + first).to_string(),
        );
        admin
            .execute(
                &format!("UPDATE audit_entries SET {forge} WHERE sequence = $1"),
                &[&first],
            )
            .await
            .expect("forge");
        match audit.integrate(100, &signer()).await {
            Err(PgError::Integrity(m)) => {
                assert!(
                    m.contains(&format!("the {column} column of entry {first}")),
                    "{m}"
                )
            }
            other => panic!("{column}: {other:?}"),
        }
        admin
            .execute(
                &format!("UPDATE audit_entries SET {restore} WHERE sequence = $1"),
                &[&first],
            )
            .await
            .expect("restore");
        assert!(matches!(
            audit.integrate(100, &signer()).await.expect("integrate"),
            Integrated::Done {
                checkpoint: Some(_),
                ..
            }
        ));
        // Keep the next round's first entry even (its consumer known).
        if (size + 3) % 2 == 1 {
            audit.append(vec![record(size + 3)]).await.expect("append");
        }
    }
}

#[tokio::test]
async fn the_newest_entry_rewritten_after_its_commit_is_not_signed_and_halts_its_writer() {
    let Some(db) = TestDatabase::start("intnewest").await else {
        return;
    };
    // The newest entry has no successor whose chain vouches for it: its
    // writer's memory of what it committed does, and the head row.
    let log = PgAuditLog::start(&db.url, signer(), Duration::from_secs(3))
        .await
        .expect("start");
    for i in 0..3 {
        log.append(record(i)).await.expect("append");
    }
    let admin = admin(&db).await;
    rewrite_payload(&admin, 2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while log.failure().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let why = log.failure().expect("halted");
    assert!(why.contains("entry 2"), "{why}");
    assert_eq!(checkpoints(&admin).await, 0, "nothing is signed");
    assert_eq!(log.stats().integrity_failures, 1);
    // Halted: no more entries, and no last checkpoint at close.
    assert!(log.append(record(3)).await.is_err());
    log.close().await.expect("close");
    assert_eq!(checkpoints(&admin).await, 0);

    // A broker that did not write it still checks it against the head row.
    let mut other = PgAudit::connect(&db.url).await.expect("connect");
    match other.integrate(100, &signer()).await {
        Err(PgError::Integrity(m)) => assert!(m.contains("the newest"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_tree_or_checkpoint_moved_back_is_refused_by_a_broker_that_saw_more() {
    let Some(db) = TestDatabase::start("intrewind").await else {
        return;
    };
    let mut audit = PgAudit::connect(&db.url).await.expect("connect");
    audit
        .append((0..5).map(record).collect())
        .await
        .expect("append");
    audit.integrate(100, &signer()).await.expect("integrate");
    let admin = admin(&db).await;
    // The tree, its state and its checkpoints wound back to empty, as a
    // restored backup or a rewritten database leaves them.
    admin
        .batch_execute(
            "DELETE FROM audit_tree; DELETE FROM audit_checkpoints; \
             UPDATE audit_tree_state SET size = 0, root = sha256('')",
        )
        .await
        .expect("rewind");
    audit.append(vec![record(5)]).await.expect("append");
    match audit.integrate(100, &signer()).await {
        Err(PgError::Integrity(m)) => assert!(m.contains("fewer than the 5"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(checkpoints(&admin).await, 0, "no fork is signed");

    // Only the newest checkpoint removed: the tree ahead of its checkpoints.
    let Some(db) = TestDatabase::start("intrewind2").await else {
        return;
    };
    let mut audit = PgAudit::connect(&db.url).await.expect("connect");
    let admin = self::admin(&db).await;
    audit
        .append((0..3).map(record).collect())
        .await
        .expect("append");
    audit.integrate(100, &signer()).await.expect("integrate");
    audit
        .append((3..5).map(record).collect())
        .await
        .expect("append");
    audit.integrate(100, &signer()).await.expect("integrate");
    admin
        .batch_execute("DELETE FROM audit_checkpoints WHERE size = 5")
        .await
        .expect("delete");
    match audit.integrate(100, &signer()).await {
        Err(PgError::Integrity(m)) => assert!(m.contains("newest checkpoint holds 3"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// Waits until the log's newest checkpoint covers `size` entries.
async fn signed(log: &PgAuditLog, size: u64, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(c)) = log.latest_checkpoint().await
            && c.checkpoint.size >= size
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn an_integrator_frozen_holding_the_lock_loses_it_and_another_broker_signs() {
    let Some(db) = TestDatabase::start("intfrozen").await else {
        return;
    };
    let every = Duration::from_millis(500);
    // A broker frozen in the middle of its round: its transaction open,
    // the lock held, nothing more said.
    let mut frozen = PgAudit::connect(&db.url).await.expect("connect");
    frozen.set_integration_limits(every);
    frozen.begin_integration_and_freeze().await.expect("freeze");
    let log = PgAuditLog::start(&db.url, signer(), every)
        .await
        .expect("start");
    for i in 0..3 {
        log.append(record(i)).await.expect("append");
    }
    assert!(
        signed(&log, 3, Duration::from_secs(20)).await,
        "signing stayed stalled behind a frozen holder"
    );
    // The frozen holder's session was ended by the server.
    assert!(frozen.tree_head().await.is_err());
    log.close().await.expect("close");
}

#[tokio::test]
async fn a_session_idle_in_its_transaction_holding_the_lock_is_ended_by_the_brokers() {
    let Some(db) = TestDatabase::start("intidle").await else {
        return;
    };
    // Any connection that opened a transaction, took the lock and went
    // idle (no time limits of its own): the brokers end it after two
    // intervals.
    let holder = admin(&db).await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({INTEGRATION_LOCK})"
        ))
        .await
        .expect("lock");
    let log = PgAuditLog::start(&db.url, signer(), Duration::from_millis(300))
        .await
        .expect("start");
    for i in 0..3 {
        log.append(record(i)).await.expect("append");
    }
    assert!(
        signed(&log, 3, Duration::from_secs(20)).await,
        "signing stayed stalled behind an idle transaction"
    );
    assert!(holder.batch_execute("SELECT 1").await.is_err(), "ended");
    log.close().await.expect("close");
}

#[tokio::test]
async fn a_session_lock_held_by_an_administrator_is_not_ended_and_the_log_says_how_old_its_oldest_unsigned_entry_is()
 {
    let Some(db) = TestDatabase::start("intsession").await else {
        return;
    };
    let holder = admin(&db).await;
    holder
        .batch_execute(&format!("SELECT pg_advisory_lock({INTEGRATION_LOCK})"))
        .await
        .expect("lock");
    let log = PgAuditLog::start(&db.url, signer(), Duration::from_millis(200))
        .await
        .expect("start");
    log.append(record(0)).await.expect("append");
    log.append(record(1)).await.expect("append");
    // The oldest entry no checkpoint covers is read from the log: entry 0,
    // with its recorded time.
    assert_eq!(
        log.oldest_uncovered().await.expect("read"),
        Some((0, 1_700_000_000_000_000))
    );
    assert!(!signed(&log, 1, Duration::from_secs(2)).await);
    assert!(holder.batch_execute("SELECT 1").await.is_ok(), "not ended");
    holder
        .batch_execute(&format!("SELECT pg_advisory_unlock({INTEGRATION_LOCK})"))
        .await
        .expect("unlock");
    assert!(signed(&log, 2, Duration::from_secs(20)).await);
    assert_eq!(log.oldest_uncovered().await.expect("read"), None);
    log.close().await.expect("close");
}

#[tokio::test]
async fn a_clean_stop_signs_a_last_checkpoint_over_every_entry() {
    let Some(db) = TestDatabase::start("intclose").await else {
        return;
    };
    // An interval long enough that only the stop can sign them.
    let log = PgAuditLog::start(&db.url, signer(), Duration::from_secs(3600))
        .await
        .expect("start");
    for i in 0..7 {
        log.append(record(i)).await.expect("append");
    }
    log.close().await.expect("close");
    let admin = admin(&db).await;
    let size: i64 = admin
        .query_one("SELECT max(size) FROM audit_checkpoints", &[])
        .await
        .expect("read")
        .get(0);
    assert_eq!(size, 7);
}
