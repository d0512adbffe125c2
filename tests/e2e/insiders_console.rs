//! Insider review, the web console's side: an authorisation reference is
//! put in the request paths the console sends, so a reference holding a
//! dot segment (`../../v1/…`) would make an auditor who opens its entry
//! send another audited read than the one they meant. No such reference is
//! accepted, and none that a caller typed is recorded.

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
