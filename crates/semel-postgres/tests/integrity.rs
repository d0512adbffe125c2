//! Issue 36: the log defends itself against its own database. A row whose
//! query columns disagree with its signed encoding (a citizen's entry
//! hidden with `citizen = NULL`, or moved under another citizen) is found
//! by the background scrub, which counts it and halts the log; a query
//! never returns an entry whose decoded fields do not match its filter;
//! the start-up proof refuses a log altered or cut behind its checkpoint.

mod common;

use std::time::{Duration, Instant};

use common::record;
use semel_core::Niss;
use semel_core::checkpoint::{NoteSigner, NoteVerifier};
use semel_postgres::{PgAudit, PgAuditLog, PgError, ScrubSettings, testing::TestDatabase};
use semel_storage::{AuditQuery, AuditStore};

fn signer() -> NoteSigner {
    NoteSigner::new(
        "semel.test/audit",
        ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
    )
}

async fn sql(url: &str, statement: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let task = tokio::spawn(connection);
    client.batch_execute(statement).await.expect(statement);
    drop(client);
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrub_finds_a_hidden_entry_and_halts_the_log_and_queries_never_return_a_mismatch() {
    let Some(db) = TestDatabase::start("scrub").await else {
        return;
    };
    let log = PgAuditLog::start_with(
        &db.url,
        signer(),
        Duration::from_millis(50),
        ScrubSettings {
            entries_per_second: 5000,
        },
    )
    .await
    .expect("start");
    let other = Niss::parse("85073003328").expect("niss");
    for i in 0..30 {
        let mut r = record(i);
        if i == 9 {
            r.citizen = Some(other);
        }
        log.append(r).await.expect("append");
    }
    // A whole pass over the untouched log finds nothing: one begun after
    // the last append (the second pass to end from here; the first may
    // have begun before, on a shorter log).
    let passes = log.stats().scrub_passes;
    let deadline = Instant::now() + Duration::from_secs(20);
    while log.stats().scrub_passes < passes + 2 {
        assert!(Instant::now() < deadline, "no scrub pass in 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(log.stats().scrub_findings, 0);
    assert!(log.failure().is_none(), "{:?}", log.failure());
    assert!(log.stats().scrubbed >= 30);

    // A database administrator hides entry 5 from the citizen's view, and
    // files entry 12 (the first citizen's) under the other citizen.
    sql(
        &db.url,
        "UPDATE audit_entries SET citizen = NULL WHERE sequence = 5; \
         UPDATE audit_entries SET citizen = '85073003328' WHERE sequence = 12",
    )
    .await;
    // The other citizen's query reads entry 12's row, but returns only
    // what its decoded fields say is the other citizen's: entry 9.
    let page = log
        .query_page(&AuditQuery {
            citizen: Some(other),
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .expect("query");
    let found: Vec<u64> = page.entries.iter().map(|e| e.entry.sequence).collect();
    assert_eq!(found, [9], "only entries whose decoded citizen matches");

    // The scrub finds the rows, counts them, and halts the log.
    let deadline = Instant::now() + Duration::from_secs(20);
    while log.failure().is_none() {
        assert!(
            Instant::now() < deadline,
            "the scrub did not find the altered rows in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let why = log.failure().expect("halted");
    assert!(
        why.contains("entry 5") && why.contains("citizen"),
        "the finding names the entry and the column: {why}"
    );
    assert!(
        !why.contains("93051822361"),
        "no national number in the message"
    );
    assert_eq!(log.stats().scrub_findings, 1);
    assert!(log.append(record(99)).await.is_err(), "the log is halted");

    // The same check, asked directly (what `semel audit verify --database`
    // reads), names the row.
    let audit = PgAudit::connect_read_only(&db.url).await.expect("connect");
    match audit.checked_encodings(0, 30).await {
        Err(PgError::Corrupt(why)) => assert!(why.contains("entry 5"), "{why}"),
        other => panic!("the altered rows pass: {other:?}"),
    }
}

#[tokio::test]
async fn the_start_proof_refuses_a_log_altered_or_cut_behind_its_checkpoint() {
    let Some(db) = TestDatabase::start("prove").await else {
        return;
    };
    let key = NoteVerifier::parse(&signer().verifier_key()).expect("key");
    let mut audit = PgAudit::connect(&db.url).await.expect("connect");
    audit
        .append((0..10).map(record).collect())
        .await
        .expect("append");
    audit.integrate(1000, &signer()).await.expect("integrate");
    audit
        .append((10..14).map(record).collect())
        .await
        .expect("append");
    let proof = audit
        .prove_start(&key)
        .await
        .expect("an untouched log proves");
    assert_eq!((proof.checkpoint, proof.entries, proof.tail), (10, 14, 5));

    // Each alteration, undone after it is refused.
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "a query column of the tail",
            "holds consumer other than",
            "UPDATE audit_entries SET consumer = '0212345668' WHERE sequence = 12",
            "UPDATE audit_entries SET consumer = '0566988259' WHERE sequence = 12",
        ),
        (
            "the checkpoint's last entry's payload",
            "entry 9",
            "UPDATE audit_entries SET encoding = (SELECT encoding FROM audit_entries WHERE sequence = 8) WHERE sequence = 9; \
             CREATE TABLE saved AS SELECT 1",
            "DROP TABLE saved",
        ),
        (
            "an entry of the tail deleted",
            "entry 11 is missing",
            "CREATE TABLE saved AS SELECT * FROM audit_entries WHERE sequence = 11; \
             DELETE FROM audit_entries WHERE sequence = 11",
            "INSERT INTO audit_entries SELECT * FROM saved; DROP TABLE saved",
        ),
        (
            "the tail deleted and the head wound back behind the checkpoint",
            "acknowledged entries were removed",
            "CREATE TABLE saved AS SELECT * FROM audit_entries WHERE sequence >= 9; \
             CREATE TABLE saved_head AS SELECT * FROM audit_head; \
             DELETE FROM audit_entries WHERE sequence >= 9; \
             UPDATE audit_head SET next_sequence = 9, \
                 last_hash = sha256('\\x00'::bytea || (SELECT encoding FROM audit_entries WHERE sequence = 8))",
            "INSERT INTO audit_entries SELECT * FROM saved; DROP TABLE saved; \
             UPDATE audit_head SET next_sequence = s.next_sequence, last_hash = s.last_hash \
                 FROM saved_head s; DROP TABLE saved_head",
        ),
        (
            "the head wound back with its rows left",
            "holds entry 13 but the head says the log holds 13",
            "CREATE TABLE saved_head AS SELECT * FROM audit_head; \
             UPDATE audit_head SET next_sequence = 13, \
                 last_hash = sha256('\\x00'::bytea || (SELECT encoding FROM audit_entries WHERE sequence = 12))",
            "UPDATE audit_head SET next_sequence = s.next_sequence, last_hash = s.last_hash \
                 FROM saved_head s; DROP TABLE saved_head",
        ),
    ];
    // The payload case needs the original encoding back.
    let original_9 = audit.encodings(9, 10).await.expect("read").remove(0);
    for (what, found, tamper, undo) in cases {
        sql(&db.url, tamper).await;
        match audit.prove_start(&key).await {
            Err(PgError::Corrupt(why)) => {
                assert!(why.contains("does not prove itself"), "{what}: {why}");
                assert!(why.contains(found), "{what}: {why}");
                assert!(why.contains("semel audit verify"), "{what}: {why}");
            }
            other => panic!("{what}: not refused: {other:?}"),
        }
        sql(&db.url, undo).await;
        if what.contains("payload") {
            let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            let task = tokio::spawn(connection);
            client
                .execute(
                    "UPDATE audit_entries SET encoding = $1 WHERE sequence = 9",
                    &[&original_9],
                )
                .await
                .expect("restore");
            drop(client);
            let _ = task.await;
        }
        audit
            .prove_start(&key)
            .await
            .unwrap_or_else(|e| panic!("{what}: undone, the log proves again: {e}"));
    }
    // Another log's key.
    let stranger = NoteVerifier::parse(
        &NoteSigner::new(
            "semel.test/audit",
            ed25519_dalek::SigningKey::from_bytes(&[8; 32]),
        )
        .verifier_key(),
    )
    .expect("key");
    assert!(matches!(
        audit.prove_start(&stranger).await,
        Err(PgError::Corrupt(_))
    ));
}
