//! The audit log's sequencing on PostgreSQL, shared by several brokers:
//! dense sequences, one unbroken chain, durable before the answer, and a
//! schema newer than the binary refused.

mod common;

use common::record;
use semel_postgres::{PgAudit, PgError, testing::TestDatabase};

#[tokio::test]
async fn brokers_sharing_a_database_make_one_dense_unbroken_chain() {
    let Some(db) = TestDatabase::start("sequencing").await else {
        return;
    };
    // Four brokers, each appending batches at once.
    let mut tasks = Vec::new();
    for broker in 0..4u64 {
        let url = db.url.clone();
        tasks.push(tokio::spawn(async move {
            let mut audit = PgAudit::connect(&url).await.expect("connect");
            let mut placed = Vec::new();
            for batch in 0..25u64 {
                let records = (0..8)
                    .map(|i| record(broker * 1000 + batch * 10 + i))
                    .collect();
                placed.extend(audit.append(records).await.expect("append"));
            }
            placed
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let audit = PgAudit::connect(&db.url).await.expect("connect");
    let size = audit.size().await.expect("size");
    assert_eq!(size, 4 * 25 * 8);
    // Every place was given once.
    let mut sequences: Vec<u64> = all.iter().map(|p| p.sequence).collect();
    sequences.sort_unstable();
    assert_eq!(sequences, (0..size).collect::<Vec<_>>());
    // The chain and the tree verify with the embedded store's verifier, and
    // each answer's hash is its entry's.
    let encodings = audit.encodings(0, size).await.expect("read");
    let key = semel_core::checkpoint::NoteVerifier::parse(
        &semel_core::checkpoint::NoteSigner::new("semel.test/audit", ed25519_dalek_key())
            .verifier_key(),
    )
    .expect("key");
    let mut verifier = semel_store::verify::LogVerifier::new(&[], &key).expect("verifier");
    for e in &encodings {
        verifier.push(e).expect("the chain holds");
    }
    assert_eq!(verifier.finish().expect("verifies").entries, size);
    for p in &all {
        assert_eq!(
            semel_core::entry_hash(&encodings[p.sequence as usize]),
            p.hash,
            "entry {}",
            p.sequence
        );
    }
}

fn ed25519_dalek_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[5; 32])
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused() {
    let Some(db) = TestDatabase::start("schema").await else {
        return;
    };
    let audit = PgAudit::connect(&db.url)
        .await
        .expect("connect and migrate");
    drop(audit);
    // Migrating again is a no-op.
    let audit = PgAudit::connect(&db.url).await.expect("again");
    drop(audit);
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute("INSERT INTO schema_migrations (version) VALUES (999)")
        .await
        .expect("a future version");
    match PgAudit::connect(&db.url).await {
        Err(PgError::SchemaTooNew { found, .. }) => assert_eq!(found, 999),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_lost_connection_fails_closed_and_the_broker_recovers_without_a_restart() {
    let Some(db) = TestDatabase::start("reconnect").await else {
        return;
    };
    let mut audit = PgAudit::connect(&db.url).await.expect("connect");
    audit
        .append(vec![record(0), record(1)])
        .await
        .expect("append");
    // The database drops the broker's connection (a restart, a failover).
    let (admin, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await
        .expect("terminate");
    // The next appends: failures answer nothing; once the connection is
    // back, appends go on, and the log has no gap and no half batch.
    let mut failed = 0;
    let mut appended = 2u64;
    for i in 2..12u64 {
        match audit.append(vec![record(i)]).await {
            Ok(placed) => {
                assert_eq!(placed[0].sequence, appended);
                appended += 1;
            }
            Err(_) => failed += 1,
        }
    }
    assert!(
        failed <= 1,
        "{failed} appends failed after the connection came back"
    );
    assert_eq!(audit.size().await.expect("size"), appended);
    assert_eq!(
        audit.encodings(0, appended).await.expect("read").len() as u64,
        appended
    );
}
