//! Insider review, the web console's side: an authorisation reference is
//! put in the request paths the console sends, so a reference holding a
//! dot segment (`../../v1/…`) would make an auditor who opens its entry
//! send another audited read than the one they meant. No such reference is
//! accepted, and none that a caller typed is recorded. And the console
//! calls nothing verified without the witnesses' cosignatures: the
//! checkpoints it lists carry them.

use semel_demo::seed::datasets::*;
use semel_server::proto;
use semel_server::proto::registry_service_client::RegistryServiceClient;
use tonic::Code;

use crate::harness::*;

/// A reference that, put in a path, leaves the route it was put in.
const ESCAPING: &str = "../../v1/organisations";

/// An application for an authorisation whose reference holds dot segments
/// is refused, and its refusal's entry does not carry the reference.
#[tokio::test]
async fn an_application_with_a_dot_segment_reference_is_refused_and_not_recorded() {
    let t = TestDemo::start().await;
    let mut cpas = RegistryServiceClient::new(t.channel(ANDERLECHT).await);
    for reference in [ESCAPING, "BSC/../2026", "..", "BSC/2026/."] {
        let err = cpas
            .apply_for_authorisation(proto::ApplyForAuthorisationRequest {
                authorisation: Some(proto::Authorisation {
                    reference: reference.into(),
                    dataset: RESIDENCE.into(),
                    fields: vec!["municipality".into()],
                    purpose: "SOCIAL_HOUSING".into(),
                    legal_basis: "Code bruxellois du Logement, art. 31".into(),
                    issuing_body: "Brussels Supervisory Commission".into(),
                    valid_from: "2026-01-01".into(),
                    ..Default::default()
                }),
                justification: "social housing files need the municipality".into(),
            })
            .await
            .expect_err("a reference with a dot segment is refused");
        assert_error(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert!(
            err.message().starts_with("authorisation.reference:"),
            "{reference}: {}",
            err.message()
        );
        let entry = t
            .audit_entries()
            .await
            .into_iter()
            .rev()
            .find(|e| e.operation == "semel.v1.RegistryService/ApplyForAuthorisation")
            .expect("the refused application is recorded");
        assert_eq!(entry.decision, proto::AuditDecision::Refused as i32);
        assert!(
            !entry.authorisation_reference.contains(".."),
            "{reference}: the entry carries {:?}",
            entry.authorisation_reference
        );
        // (The detail holds the refusal's message, which quotes the rule:
        // "no part of it '.' or '..'".)
        if reference.contains('/') {
            assert!(!entry.detail.contains(reference), "{}", entry.detail);
        }
    }
    t.stop().await;
}

/// An auditor's search by an authorisation reference records the
/// reference in the search's own entry only when it is a well-formed one.
#[tokio::test]
async fn an_audit_search_records_only_a_well_formed_reference() {
    let t = TestDemo::start().await;
    let mut audit = t.audit().await;
    for (asked, recorded) in [
        (ESCAPING, "(not a valid name)"),
        ("BSC/2024/017", "BSC/2024/017"),
    ] {
        audit
            .list_audit_entries(proto::ListAuditEntriesRequest {
                authorisation_reference: asked.into(),
                ..Default::default()
            })
            .await
            .expect("searched");
        let entry = t
            .all_audit_entries()
            .await
            .into_iter()
            .rev()
            .find(|e| e.operation == "semel.v1.AuditService/ListAuditEntries")
            .expect("the search is recorded");
        assert_eq!(entry.authorisation_reference, recorded, "{asked}");
    }
    t.stop().await;
}

/// An auditor who requires the witnesses' cosignatures (the console, with
/// witness keys) finds the newest checkpoint they cosigned among the listed
/// ones, cosignatures included, while the latest awaits them.
#[tokio::test]
async fn the_listed_checkpoints_carry_the_witnesses_cosignatures() {
    use semel_core::checkpoint::{CosignatureVerifier, NoteVerifier};
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut opts, db) = demo_options(dir.path()).await;
    opts.checkpoint_every_entries = 5;
    let t = TestDemo {
        demo: Some(semel_demo_stack::Demo::start(opts).await.expect("start")),
        dir,
        db,
    };
    let manifest: semel_demo_stack::demo::DemoManifest = serde_json::from_slice(
        &std::fs::read(t.dir.path().join(semel_demo_stack::demo::MANIFEST)).expect("manifest"),
    )
    .expect("json");
    assert_eq!(manifest.witness_quorum, 1, "demo.json names the quorum");
    let witness = CosignatureVerifier::parse(&manifest.witness_key).expect("witness key");
    let log = NoteVerifier::parse(&manifest.verifier_key).expect("log key");
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
        if let Some(c) = r
            .checkpoint
            .filter(|c| witness.verify(&c.signed_note).is_ok())
        {
            cosigned = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let cosigned = cosigned.expect("a checkpoint cosigned by the demo witness");
    let listed = auditor
        .list_checkpoints(proto::ListCheckpointsRequest {
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .expect("checkpoints")
        .into_inner()
        .checkpoints;
    let witnessed: Vec<_> = listed
        .iter()
        .filter(|c| witness.verify(&c.signed_note).is_ok())
        .collect();
    assert!(
        witnessed.iter().any(|c| c.tree_size >= cosigned.tree_size),
        "the newest cosigned checkpoint ({} entries) is listed with its cosignature: {:?}",
        cosigned.tree_size,
        listed.iter().map(|c| c.tree_size).collect::<Vec<_>>()
    );
    for c in &listed {
        let signed = log.verify(&c.signed_note).expect("the log's signature");
        assert_eq!(signed.size, c.tree_size);
    }
    t.stop().await;
}
