//! The audit log's tree on PostgreSQL: brokers integrating at once build
//! one tree, the one the embedded store's verifier computes; checkpoints
//! verify and are consistent with each other; proofs verify; a tree that no
//! longer gives the last signed root is never signed over.

mod common;

use common::record;
use semel_core::checkpoint::{NoteSigner, NoteVerifier};
use semel_core::merkle::{CompactRange, verify_consistency, verify_inclusion};
use semel_core::{Hash, entry_hash};
use semel_postgres::{Integrated, PgAudit, PgError, testing::TestDatabase};

fn signer() -> NoteSigner {
    NoteSigner::new(
        "semel.test/audit",
        ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
    )
}

#[tokio::test]
async fn brokers_integrating_at_once_build_one_tree_with_verifiable_checkpoints_and_proofs() {
    let Some(db) = TestDatabase::start("tree").await else {
        return;
    };
    // Three brokers, each appending batches and integrating after each,
    // small rounds so that they take turns holding the lock.
    let mut tasks = Vec::new();
    for broker in 0..3u64 {
        let url = db.url.clone();
        tasks.push(tokio::spawn(async move {
            let mut audit = PgAudit::connect(&url).await.expect("connect");
            let signer = signer();
            let mut notes = Vec::new();
            for batch in 0..15u64 {
                let records = (0..(1 + batch % 5))
                    .map(|i| record(broker * 1000 + batch * 10 + i))
                    .collect();
                audit.append(records).await.expect("append");
                if let Integrated::Done {
                    checkpoint: Some(note),
                    ..
                } = audit.integrate(7, &signer).await.expect("integrate")
                {
                    notes.push(note);
                }
            }
            notes
        }));
    }
    let mut notes = Vec::new();
    for t in tasks {
        notes.extend(t.await.expect("task"));
    }
    let mut audit = PgAudit::connect(&db.url).await.expect("connect");
    // Whatever is left is integrated now.
    loop {
        match audit.integrate(1000, &signer()).await.expect("integrate") {
            Integrated::Done {
                checkpoint: None, ..
            } => break,
            Integrated::Done {
                checkpoint: Some(note),
                ..
            } => notes.push(note),
            Integrated::Busy => unreachable!("no other broker is left"),
        }
    }
    let size = audit.size().await.expect("size");
    let head = audit.tree_head().await.expect("head");
    assert_eq!(head.size, size);
    // The tree is the one a verifier computes from the entries.
    let leaves: Vec<Hash> = audit
        .encodings(0, size)
        .await
        .expect("read")
        .iter()
        .map(|e| entry_hash(e))
        .collect();
    let mut roots = vec![CompactRange::new().root()];
    let mut range = CompactRange::new();
    for leaf in &leaves {
        range.push(*leaf);
        roots.push(range.root());
    }
    assert_eq!(head.root, roots[size as usize]);
    // Every checkpoint verifies with the log's key, gives the root of its
    // size, and is consistent with the latest (proved by the store).
    let verifier = NoteVerifier::parse(&signer().verifier_key()).expect("key");
    assert!(notes.len() > 3, "{} checkpoints", notes.len());
    let latest = verifier
        .verify(
            &audit
                .latest_checkpoint(u64::MAX)
                .await
                .expect("read")
                .expect("one"),
        )
        .expect("the latest verifies");
    assert_eq!(latest.size, size);
    for note in &notes {
        let c = verifier.verify(note).expect("a checkpoint verifies");
        assert_eq!(c.root, roots[c.size as usize], "checkpoint at {}", c.size);
        let proof = audit
            .consistency_proof(c.size, size)
            .await
            .expect("consistency proof");
        assert!(
            verify_consistency(c.size, size, &c.root, &head.root, &proof),
            "{} → {size}",
            c.size
        );
    }
    // Inclusion proofs of every entry in trees of several sizes.
    for tree_size in [1, 2, 3, 7, 8, 9, size / 2, size] {
        for index in 0..tree_size {
            let proof = audit
                .inclusion_proof(index, tree_size)
                .await
                .expect("inclusion proof");
            assert!(
                verify_inclusion(
                    &leaves[index as usize],
                    index,
                    tree_size,
                    &proof,
                    &roots[tree_size as usize]
                ),
                "entry {index} in {tree_size}"
            );
        }
    }
    // A proof past what is integrated is refused, not made up.
    audit.append(vec![record(9999)]).await.expect("append");
    assert!(matches!(
        audit.inclusion_proof(size, size + 1).await,
        Err(PgError::NotIntegrated { .. })
    ));
}

#[tokio::test]
async fn a_tree_that_no_longer_gives_the_signed_root_is_never_signed_over() {
    let Some(db) = TestDatabase::start("treetamper").await else {
        return;
    };
    let mut audit = PgAudit::connect(&db.url).await.expect("connect");
    audit
        .append((0..5).map(record).collect())
        .await
        .expect("append");
    assert!(matches!(
        audit.integrate(100, &signer()).await.expect("integrate"),
        Integrated::Done {
            checkpoint: Some(_),
            ..
        }
    ));
    // Someone with write access to the database changes a stored node.
    let (admin, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    admin
        .batch_execute(
            "UPDATE audit_tree SET hash = sha256('forged') WHERE level = 2 AND index = 0",
        )
        .await
        .expect("forge");
    audit.append(vec![record(5)]).await.expect("append");
    match audit.integrate(100, &signer()).await {
        Err(PgError::Integrity(m)) => assert!(m.contains("root"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Nothing was signed, and the failed round left the tree where it was.
    let latest = NoteVerifier::parse(&signer().verifier_key())
        .expect("key")
        .verify(
            &audit
                .latest_checkpoint(u64::MAX)
                .await
                .expect("read")
                .expect("one"),
        )
        .expect("verifies");
    assert_eq!(latest.size, 5);
    assert_eq!(audit.tree_head().await.expect("head").size, 5);
}
