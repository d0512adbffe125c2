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
        demo: Some(semel_demo_stack::Demo::start(opts).await.expect("start")),
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

/// A lookup client for a person of CPAS Anderlecht named `sub`.
async fn clerk(
    t: &TestDemo,
    sub: &str,
) -> proto::lookup_service_client::LookupServiceClient<semel_client::AuthChannel> {
    let token = t.mint(&semel_demo::issuer::TokenRequest {
        subject: sub,
        organisation: semel_demo::seed::org(ANDERLECHT).expect("org").kbo,
        roles: &[semel_core::UserRole::Consumer],
        audience: semel_demo::issuer::DEV_AUDIENCE,
        expires_in: 600,
        not_before: None,
        bound_to: None,
    });
    proto::lookup_service_client::LookupServiceClient::new(t.channel_as(ANDERLECHT, &token).await)
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
    assert_eq!(signed.origin, semel_demo_stack::demo::DEMO_ORIGIN);

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
    let mut anna = clerk(&t, "anna").await;
    let mut bert = clerk(&t, "bert").await;
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
    let manifest: semel_demo_stack::demo::DemoManifest = serde_json::from_slice(
        &std::fs::read(t.dir.path().join(semel_demo_stack::demo::MANIFEST)).expect("manifest"),
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

/// Valid national numbers (born 15 June 1950) no organisation holds a
/// file on.
fn strangers(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let nine = format!("500615{:03}", 101 + 2 * i);
            let check = 97 - nine.parse::<u64>().expect("digits") % 97;
            format!("{nine}{check:02}")
        })
        .collect()
}

/// The overview the console draws: entries counted by day, consumer,
/// dataset and operation, refusals by reason, and a person refused
/// NO_ACTIVE_FILE for several citizens flagged; the reason filter; an
/// organisation's own auditor counts its own entries only; the count is
/// itself recorded.
#[tokio::test]
async fn auditors_count_entries_and_see_who_fishes_for_people() {
    let t = TestDemo::start().await;
    let anderlecht = semel_demo::seed::org(ANDERLECHT).expect("org").kbo;
    let mut anna = clerk(&t, "anna").await;
    let mut bert = clerk(&t, "bert").await;
    anna.lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect("allowed");
    for n in strangers(3) {
        let err = anna
            .lookup(lookup(&n, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
            .await
            .expect_err("no file");
        assert_error(&err, Code::PermissionDenied, "NO_ACTIVE_FILE");
    }
    bert.lookup(lookup(JAN, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect("allowed");
    let mut auditor = AuditServiceClient::new(t.channel("control-commission").await);

    // The reason filter.
    let no_file = auditor
        .list_audit_entries(proto::ListAuditEntriesRequest {
            reason: "NO_ACTIVE_FILE".into(),
            ..Default::default()
        })
        .await
        .expect("by reason")
        .into_inner()
        .entries;
    assert_eq!(no_file.len(), 3);
    assert!(
        no_file
            .iter()
            .all(|e| e.reason == "NO_ACTIVE_FILE" && e.end_user == "anna")
    );
    let err = auditor
        .list_audit_entries(proto::ListAuditEntriesRequest {
            reason: "NOT_A_REASON".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown reason");
    assert_error(&err, Code::InvalidArgument, "INVALID_ARGUMENT");

    // Anna's entries, counted.
    let anna_summary = auditor
        .summarise_audit_entries(proto::SummariseAuditEntriesRequest {
            end_user: "anna".into(),
            ..Default::default()
        })
        .await
        .expect("summary")
        .into_inner();
    assert_eq!(
        (
            anna_summary.total,
            anna_summary.allowed,
            anna_summary.refused
        ),
        (4, 1, 3)
    );
    assert_eq!(anna_summary.reasons.len(), 1);
    assert_eq!(
        (
            anna_summary.reasons[0].reason.as_str(),
            anna_summary.reasons[0].count
        ),
        ("NO_ACTIVE_FILE", 3)
    );
    assert_eq!(anna_summary.days.len(), 1);
    let day = &anna_summary.days[0];
    assert_eq!(day.consumer_kbo, anderlecht.as_str());
    assert_eq!(day.dataset, RESIDENCE);
    assert_eq!(day.operation, semel_core::LOOKUP_OPERATION);
    assert_eq!((day.allowed, day.refused), (1, 3));
    let today = time::OffsetDateTime::now_utc().date().to_string();
    assert_eq!(day.day, today);
    assert!(!anna_summary.truncated);
    // As of a moment: only the entries below a sequence.
    let newest_of_anna = no_file.iter().map(|e| e.sequence).max().expect("entries");
    let before = auditor
        .summarise_audit_entries(proto::SummariseAuditEntriesRequest {
            end_user: "anna".into(),
            before_sequence: newest_of_anna,
            ..Default::default()
        })
        .await
        .expect("summary as of")
        .into_inner();
    assert_eq!((before.total, before.refused), (3, 2));

    // The whole log: Anna is flagged, Bert is not.
    let all = auditor
        .summarise_audit_entries(proto::SummariseAuditEntriesRequest::default())
        .await
        .expect("summary")
        .into_inner();
    let fishing: Vec<_> = all
        .patterns
        .iter()
        .filter(|p| p.kind == "NO_ACTIVE_FILE_FISHING")
        .collect();
    assert_eq!(fishing.len(), 1, "{:?}", all.patterns);
    assert_eq!(fishing[0].end_user, "anna");
    assert_eq!(fishing[0].consumer_kbo, anderlecht.as_str());
    assert_eq!((fishing[0].count, fishing[0].citizens), (3, 3));
    assert!(all.patterns.iter().all(|p| p.end_user != "bert"));
    assert!(all.total >= 5);

    // The count was read like a search: recorded, with the query in words.
    let recorded = t
        .all_audit_entries()
        .await
        .into_iter()
        .filter(|e| e.operation == "semel.v1.AuditService/SummariseAuditEntries")
        .collect::<Vec<_>>();
    assert_eq!(recorded.len(), 3);
    assert!(
        recorded
            .iter()
            .any(|e| e.detail.contains("person anna") && e.detail.contains("4 entries counted")),
        "{recorded:?}"
    );

    // An organisation's own auditor counts its own organisation's entries.
    let dpo = t.token(SCHAERBEEK, &[semel_core::UserRole::Auditor]);
    let mut dpo = AuditServiceClient::new(t.channel_as(SCHAERBEEK, &dpo).await);
    let own = dpo
        .summarise_audit_entries(proto::SummariseAuditEntriesRequest::default())
        .await
        .expect("own summary")
        .into_inner();
    let schaerbeek = semel_demo::seed::org(SCHAERBEEK).expect("org").kbo;
    assert!(
        own.days
            .iter()
            .all(|d| d.consumer_kbo == schaerbeek.as_str())
    );
    assert!(own.patterns.iter().all(|p| p.end_user != "anna"));
    let err = dpo
        .summarise_audit_entries(proto::SummariseAuditEntriesRequest {
            consumer_kbo: anderlecht.as_str().into(),
            ..Default::default()
        })
        .await
        .expect_err("another organisation");
    assert_error(&err, Code::PermissionDenied, "OTHER_ORGANISATION");
    t.stop().await;
}

/// The checkpoints' history, newest first and paged, each note verifying
/// with the key that comes with them.
#[tokio::test]
async fn the_checkpoints_history_is_listed_newest_first() {
    let t = start().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let mut auditor = AuditServiceClient::new(t.channel("control-commission").await);
    for _ in 0..6 {
        c.lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
            .await
            .expect("allowed");
    }
    let (first, _) = checkpoint_of(&mut auditor, 5).await;
    for _ in 0..6 {
        c.lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
            .await
            .expect("allowed");
    }
    checkpoint_of(&mut auditor, first.tree_size + 5).await;
    let mut sizes = Vec::new();
    let mut token = String::new();
    loop {
        let page = auditor
            .list_checkpoints(proto::ListCheckpointsRequest {
                page_size: 1,
                page_token: token.clone(),
            })
            .await
            .expect("checkpoints")
            .into_inner();
        let verifier = NoteVerifier::parse(&page.verifier_key).expect("key");
        for cp in &page.checkpoints {
            let signed = verifier.verify(&cp.signed_note).expect("signed");
            assert_eq!(signed.size, cp.tree_size);
            sizes.push(cp.tree_size);
        }
        assert!(page.checkpoints.len() <= 1);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(sizes.len() >= 2, "{sizes:?}");
    assert!(sizes.windows(2).all(|w| w[0] > w[1]), "{sizes:?}");
    assert!(sizes.contains(&first.tree_size));
    let err = auditor
        .list_checkpoints(proto::ListCheckpointsRequest {
            page_size: 0,
            page_token: "not-a-size".into(),
        })
        .await
        .expect_err("bad token");
    assert_error(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
    t.stop().await;
}
