//! The log that proves itself, over gRPC: signed checkpoints, inclusion and
//! consistency proofs, checked here with the verifier's functions only
//! (`semel_core::merkle`, `semel_core::checkpoint`), as an outside auditor
//! would.

use std::time::Duration;

use semel_core::checkpoint::NoteVerifier;
use semel_core::merkle::{verify_consistency, verify_inclusion};
use semel_demo::seed::datasets::*;
use semel_server::proto::{self, audit_service_client::AuditServiceClient};
use tonic::Code;

use crate::harness::*;

async fn start() -> TestDemo {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut opts, db) = demo_options(dir.path()).await;
    opts.checkpoint_every_entries = 5;
    TestDemo {
        demo: Some(semel_server::Demo::start(opts).await.expect("start")),
        dir,
        db,
    }
}

/// Waits for a checkpoint covering at least `size` entries.
async fn checkpoint_of(
    auditor: &mut AuditServiceClient<semel_client::AuthChannel>,
    size: u64,
) -> (proto::Checkpoint, String) {
    for _ in 0..100 {
        let r = auditor
            .get_latest_checkpoint(proto::GetLatestCheckpointRequest {})
            .await
            .expect("checkpoint")
            .into_inner();
        if let Some(c) = r.checkpoint.filter(|c| c.tree_size >= size) {
            return (c, r.verifier_key);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no checkpoint of {size} entries");
}

fn hash(bytes: &[u8]) -> [u8; 32] {
    bytes.try_into().expect("32 bytes")
}

#[tokio::test]
async fn checkpoints_and_proofs_verify_without_trusting_the_broker() {
    let t = start().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    for _ in 0..6 {
        c.lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
            .await
            .expect("allowed");
    }
    let mut auditor = AuditServiceClient::new(t.channel("control-commission").await);
    let (first, key) = checkpoint_of(&mut auditor, 5).await;
    let verifier = NoteVerifier::parse(&key).expect("verifier key");
    let signed = verifier.verify(&first.signed_note).expect("signature");
    assert_eq!(
        (signed.size, signed.root.to_vec()),
        (first.tree_size, first.root_hash.clone())
    );
    assert_eq!(signed.origin, semel_server::demo::DEMO_ORIGIN);

    for _ in 0..8 {
        c.lookup(lookup(JAN, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
            .await
            .expect("allowed");
    }
    let (second, _) = checkpoint_of(&mut auditor, first.tree_size + 5).await;
    let second_signed = verifier.verify(&second.signed_note).expect("signature");

    // Every entry of the second checkpoint is in it.
    for seq in 0..second.tree_size {
        let r = auditor
            .get_inclusion_proof(proto::GetInclusionProofRequest {
                sequence: seq,
                tree_size: second.tree_size,
            })
            .await
            .expect("proof")
            .into_inner();
        let entry = r.entry.expect("entry");
        let leaf = semel_core::entry_hash(&entry.encoding);
        assert_eq!(
            leaf.to_vec(),
            entry.entry_hash,
            "the encoding is the entry's"
        );
        let decoded = semel_core::AuditEntry::decode(&entry.encoding).expect("decodes");
        assert_eq!(decoded.sequence, seq);
        assert_eq!(
            decoded
                .record
                .citizen
                .map(|n| n.as_str().to_owned())
                .unwrap_or_default(),
            entry.citizen,
            "the readable fields are the signed ones"
        );
        let proof: Vec<[u8; 32]> = r.proof.iter().map(|p| hash(p)).collect();
        assert!(
            verify_inclusion(&leaf, seq, second.tree_size, &proof, &second_signed.root),
            "entry {seq}"
        );
        // A proof does not fit another entry.
        if seq > 0 {
            assert!(!verify_inclusion(
                &leaf,
                seq - 1,
                second.tree_size,
                &proof,
                &second_signed.root
            ));
        }
    }
    // The second checkpoint extends the first.
    let proof: Vec<[u8; 32]> = auditor
        .get_consistency_proof(proto::GetConsistencyProofRequest {
            first_tree_size: first.tree_size,
            second_tree_size: second.tree_size,
        })
        .await
        .expect("consistency")
        .into_inner()
        .proof
        .iter()
        .map(|p| hash(p))
        .collect();
    assert!(verify_consistency(
        first.tree_size,
        second.tree_size,
        &signed.root,
        &second_signed.root,
        &proof
    ));
    assert!(!verify_consistency(
        first.tree_size,
        second.tree_size,
        &second_signed.root,
        &second_signed.root,
        &proof
    ));

    // Beyond the log: OUT_OF_RANGE. Another organisation's auditor: refused.
    let err = auditor
        .get_inclusion_proof(proto::GetInclusionProofRequest {
            sequence: 0,
            tree_size: 1_000_000,
        })
        .await
        .expect_err("beyond the log");
    assert_error(&err, Code::OutOfRange, "OUT_OF_RANGE");
    let schaerbeek_dpo = t.token(SCHAERBEEK, &[semel_core::UserRole::Auditor]);
    let err = AuditServiceClient::new(t.channel_as(SCHAERBEEK, &schaerbeek_dpo).await)
        .get_inclusion_proof(proto::GetInclusionProofRequest {
            sequence: 0,
            tree_size: 0,
        })
        .await
        .expect_err("another organisation's entry");
    assert_error(&err, Code::PermissionDenied, "OTHER_ORGANISATION");
    t.stop().await;
}

#[tokio::test]
async fn auditors_query_by_person_authorisation_dataset_and_decision_combined() {
    let t = TestDemo::start().await;
    let anderlecht = semel_demo::seed::org(ANDERLECHT).expect("org").kbo;
    let as_person = |sub: &'static str| semel_demo::issuer::TokenRequest {
        subject: sub,
        organisation: anderlecht,
        roles: &[semel_core::UserRole::Consumer],
        audience: semel_demo::issuer::DEV_AUDIENCE,
        expires_in: 600,
        not_before: None,
        bound_to: None,
    };
    let mut anna = proto::lookup_service_client::LookupServiceClient::new(
        t.channel_as(ANDERLECHT, &t.mint(&as_person("anna"))).await,
    );
    let mut bert = proto::lookup_service_client::LookupServiceClient::new(
        t.channel_as(ANDERLECHT, &t.mint(&as_person("bert"))).await,
    );
    for _ in 0..3 {
        anna.lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
            .await
            .expect("allowed");
    }
    anna.lookup(lookup(KARIM, RESIDENCE, &["street"], "SCHOOL_ENROLMENT"))
        .await
        .expect_err("refused");
    bert.lookup(lookup(
        JAN,
        HOUSEHOLD,
        &["household_size"],
        "RIS_ELIGIBILITY",
    ))
    .await
    .expect("allowed");
    let mut auditor = AuditServiceClient::new(t.channel("control-commission").await);
    let query = |q: proto::ListAuditEntriesRequest| {
        let mut a = auditor.clone();
        async move { a.list_audit_entries(q).await.expect("query").into_inner() }
    };
    let by_anna = query(proto::ListAuditEntriesRequest {
        end_user: "anna".into(),
        ..Default::default()
    })
    .await
    .entries;
    assert_eq!(by_anna.len(), 4);
    assert!(by_anna.iter().all(|e| e.end_user == "anna"));
    let refused_anna = query(proto::ListAuditEntriesRequest {
        end_user: "anna".into(),
        decision: proto::AuditDecision::Refused as i32,
        ..Default::default()
    })
    .await
    .entries;
    assert_eq!(refused_anna.len(), 1);
    assert_eq!(refused_anna[0].reason, "PURPOSE_NOT_ALLOWED");
    let household = query(proto::ListAuditEntriesRequest {
        dataset: HOUSEHOLD.into(),
        ..Default::default()
    })
    .await
    .entries;
    assert_eq!(household.len(), 1);
    assert_eq!(household[0].end_user, "bert");
    let under = query(proto::ListAuditEntriesRequest {
        authorisation_reference: "BSC/2024/017".into(),
        citizen: KARIM.into(),
        ..Default::default()
    })
    .await
    .entries;
    assert_eq!(under.len(), 3);
    // Pages of one, newest first, until the end.
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let page = query(proto::ListAuditEntriesRequest {
            end_user: "anna".into(),
            page_size: 1,
            page_token: token.clone(),
            ..Default::default()
        })
        .await;
        seen.extend(page.entries.iter().map(|e| e.sequence));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted);
    assert_eq!(seen.len(), 4);
    let err = auditor
        .list_audit_entries(proto::ListAuditEntriesRequest {
            decision: 9,
            ..Default::default()
        })
        .await
        .expect_err("bad decision");
    assert_error(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
    t.stop().await;
}

/// The demo's witness cosigns each new checkpoint; it refuses a rollback
/// and a fork, even signed with the log's own key.
#[tokio::test]
async fn a_witness_cosigns_checkpoints_and_refuses_rollback_and_forks() {
    use semel_core::checkpoint::{AddCheckpoint, Checkpoint, CosignatureVerifier, NoteSigner};
    use semel_server::witness::{Submitted, submit};
    let t = start().await;
    let manifest: semel_server::demo::DemoManifest = serde_json::from_slice(
        &std::fs::read(t.dir.path().join(semel_server::demo::MANIFEST)).expect("manifest"),
    )
    .expect("json");
    let witness = CosignatureVerifier::parse(&manifest.witness_key).expect("witness key");
    let mut c = t.lookup_client(ANDERLECHT).await;
    for _ in 0..6 {
        c.lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
            .await
            .expect("lookup");
    }
    let mut auditor = t.audit().await;
    let mut cosigned = None;
    for _ in 0..200 {
        let r = auditor
            .get_latest_checkpoint(proto::GetLatestCheckpointRequest {})
            .await
            .expect("checkpoint")
            .into_inner();
        if let Some(note) = r.checkpoint.map(|c| c.signed_note)
            && witness.verify(&note).is_ok()
        {
            cosigned = Some((note, r.verifier_key));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (note, log_key) = cosigned.expect("a checkpoint cosigned by the demo witness");
    // The log's own signature is still on the note.
    let checkpoint = NoteVerifier::parse(&log_key)
        .expect("log key")
        .verify(&note)
        .expect("the log's signature");
    let size = checkpoint.size;
    // A rollback: an older, smaller checkpoint of the same log.
    let signer = NoteSigner::new(
        &checkpoint.origin,
        semel_store::load_or_create_signing_key(&t.pki().dir.join("audit-signing.key"))
            .expect("the log's key"),
    );
    let older = Checkpoint {
        origin: checkpoint.origin.clone(),
        size: size - 1,
        root: t
            .demo()
            .broker
            .storage()
            .audit
            .root(size - 1)
            .await
            .expect("root"),
    };
    for old in [size, size - 1, 0] {
        let answer = submit(
            &manifest.witness,
            &AddCheckpoint {
                old,
                proof: Vec::new(),
                note: signer.sign(&older),
            },
        )
        .await
        .expect("the witness answers");
        assert!(
            !matches!(answer, Submitted::Cosigned(_)),
            "rollback from {old} cosigned: {answer:?}"
        );
    }
    // A fork: the same size, another root, signed with the log's own key
    // (an operator rewriting history has it).
    let fork = Checkpoint {
        root: [0x42; 32],
        ..checkpoint.clone()
    };
    let answer = submit(
        &manifest.witness,
        &AddCheckpoint {
            old: size,
            proof: Vec::new(),
            note: signer.sign(&fork),
        },
    )
    .await
    .expect("the witness answers");
    assert_eq!(answer, Submitted::Conflict(size));
    // The same checkpoint again is fine.
    let again = submit(
        &manifest.witness,
        &AddCheckpoint {
            old: size,
            proof: Vec::new(),
            note: signer.sign(&checkpoint),
        },
    )
    .await
    .expect("the witness answers");
    assert!(matches!(again, Submitted::Cosigned(_)), "{again:?}");
    t.stop().await;
}
