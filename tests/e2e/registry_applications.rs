//! Applications: for an authorisation, decided by the supervisory body; for membership, decided by the operator.

use semel_demo::seed::datasets::*;
use semel_server::proto::{self, registry_service_client::RegistryServiceClient};
use tonic::Code;

use crate::harness::*;

/// A consumer applies for an authorisation; nothing is allowed until the
/// supervisory body approves; only that body decides; the parties see the
/// application; a rejection gives reasons; each step is in the log.
#[tokio::test]
async fn an_authorisation_is_applied_for_and_decided_by_the_supervisory_body() {
    let t = TestDemo::start().await;
    let apply = |reference: &str| proto::ApplyForAuthorisationRequest {
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
    };
    let mut cpas = RegistryServiceClient::new(t.channel(ANDERLECHT).await);
    let application = cpas
        .apply_for_authorisation(apply("BSC/2026/201"))
        .await
        .expect("applied")
        .into_inner()
        .application
        .expect("application");
    assert_eq!(application.state, proto::ApplicationState::Pending as i32);
    let anderlecht = semel_demo::seed::org(ANDERLECHT).expect("org").kbo;
    assert_eq!(application.applicant_kbo, anderlecht.as_str());
    assert_error(
        &cpas
            .apply_for_authorisation(apply("BSC/2026/201"))
            .await
            .expect_err("one pending application per reference"),
        Code::AlreadyExists,
        "ALREADY_EXISTS",
    );
    let mut c = t.lookup_client(ANDERLECHT).await;
    let housing = lookup(KARIM, RESIDENCE, &["municipality"], "SOCIAL_HOUSING");
    assert!(
        c.lookup(housing.clone()).await.is_err(),
        "nothing is allowed before approval"
    );

    // The parties see it; others do not.
    let seen = |slug: &'static str| {
        let t = &t;
        async move {
            RegistryServiceClient::new(t.channel(slug).await)
                .list_authorisation_applications(
                    proto::ListAuthorisationApplicationsRequest::default(),
                )
                .await
                .expect("list")
                .into_inner()
                .applications
                .len()
        }
    };
    assert_eq!(seen("national-register").await, 1, "the dataset's source");
    assert_eq!(seen(SCHAERBEEK).await, 0, "another consumer");
    assert_eq!(seen("control-commission").await, 1, "the supervisory body");

    // Only the supervisory body decides.
    let approve = |id: &str| proto::DecideAuthorisationApplicationRequest {
        id: id.into(),
        approve: true,
        amended: None,
        note: "proportionate".into(),
    };
    for (slug, roles, reason) in [
        (
            ANDERLECHT,
            &[semel_core::UserRole::Consumer][..],
            "ROLE_NOT_PERMITTED",
        ),
        (
            OPERATOR,
            &[semel_core::UserRole::Admin][..],
            "ROLE_NOT_PERMITTED",
        ),
        (
            OPERATOR,
            &[semel_core::UserRole::Auditor][..],
            "NOT_SUPERVISORY_BODY",
        ),
    ] {
        let token = t.token(slug, roles);
        assert_error(
            &RegistryServiceClient::new(t.channel_as(slug, &token).await)
                .decide_authorisation_application(approve(&application.id))
                .await
                .expect_err("not the supervisory body"),
            Code::PermissionDenied,
            reason,
        );
    }
    let dpo = t.token(ANDERLECHT, &[semel_core::UserRole::Auditor]);
    assert_error(
        &RegistryServiceClient::new(t.channel_as(ANDERLECHT, &dpo).await)
            .decide_authorisation_application(approve(&application.id))
            .await
            .expect_err("the applicant's own auditor"),
        Code::PermissionDenied,
        "NOT_SUPERVISORY_BODY",
    );
    let mut body = RegistryServiceClient::new(t.channel("control-commission").await);
    let decided = body
        .decide_authorisation_application(approve(&application.id))
        .await
        .expect("approved")
        .into_inner();
    let auth = decided.authorisation.expect("recorded");
    assert_eq!((auth.reference.as_str(), auth.version), ("BSC/2026/201", 1));
    let app = decided.application.expect("application");
    assert_eq!(
        (app.state, app.approved_version),
        (proto::ApplicationState::Approved as i32, 1)
    );
    c.lookup(housing).await.expect("allowed once approved");
    assert_error(
        &body
            .decide_authorisation_application(approve(&application.id))
            .await
            .expect_err("decided already"),
        Code::FailedPrecondition,
        "APPLICATION_DECIDED",
    );

    // A rejection gives its reasons, and records nothing.
    let second = cpas
        .apply_for_authorisation(apply("BSC/2026/202"))
        .await
        .expect("applied")
        .into_inner()
        .application
        .expect("application");
    let mut reject = approve(&second.id);
    reject.approve = false;
    reject.note = String::new();
    assert_error(
        &body
            .decide_authorisation_application(reject.clone())
            .await
            .expect_err("no reasons"),
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    reject.note = "covered by BSC/2026/201".into();
    let rejected = body
        .decide_authorisation_application(reject)
        .await
        .expect("rejected")
        .into_inner();
    assert!(rejected.authorisation.is_none());
    let err = t
        .registry()
        .await
        .get_authorisation(proto::GetAuthorisationRequest {
            reference: "BSC/2026/202".into(),
        })
        .await
        .expect_err("nothing recorded");
    assert_error(&err, Code::NotFound, "UNKNOWN_AUTHORISATION");

    // An application for another organisation is refused.
    let mut other = apply("BSC/2026/203");
    other.authorisation.as_mut().expect("auth").consumer_kbo = semel_demo::seed::org(SCHAERBEEK)
        .expect("org")
        .kbo
        .as_str()
        .into();
    assert_error(
        &cpas
            .apply_for_authorisation(other)
            .await
            .expect_err("for another"),
        Code::PermissionDenied,
        "OTHER_ORGANISATION",
    );
    // Each step is in the log.
    let entries = t.audit_entries().await;
    let ops = |op: &str| {
        entries
            .iter()
            .filter(|e| e.operation == format!("semel.v1.RegistryService/{op}"))
            .count()
    };
    assert_eq!(ops("ApplyForAuthorisation"), 4, "two accepted, two refused");
    assert!(ops("DecideAuthorisationApplication") >= 6);
    let approval = entries
        .iter()
        .find(|e| {
            e.operation == "semel.v1.RegistryService/DecideAuthorisationApplication"
                && e.decision == proto::AuditDecision::Allowed as i32
        })
        .expect("approval entry");
    assert_eq!(
        (
            approval.authorisation_reference.as_str(),
            approval.authorisation_version
        ),
        ("BSC/2026/201", 1)
    );
    t.stop().await;
}

/// An administration not registered yet applies for membership with its
/// certificate alone; only the operator's approval registers it.
#[tokio::test]
async fn an_administration_applies_for_membership_and_the_operator_decides() {
    let t = TestDemo::start().await;
    let kbo = "0999999823";
    let files = t.issue("newcomer", kbo, "OCMW Nieuwkomer");
    let channel = t
        .channel_with(Some((&files.cert, &files.key)), &t.pki().ca_cert())
        .await
        .expect("connect");
    let mut newcomer = RegistryServiceClient::new(channel.clone());
    let ask = |roles: Vec<proto::OrganisationRole>| proto::ApplyForMembershipRequest {
        name: "OCMW Nieuwkomer".into(),
        roles: roles.into_iter().map(|r| r as i32).collect(),
        contact: "ict@ocmw-nieuwkomer.example".into(),
        note: "consumer of residence data for social integration files".into(),
    };
    // Not before registration: a lookup is refused.
    let err = proto::lookup_service_client::LookupServiceClient::new(channel.clone())
        .lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect_err("not a member");
    assert_error(&err, Code::Unauthenticated, "ORGANISATION_NOT_REGISTERED");
    assert_error(
        &newcomer
            .apply_for_membership(ask(vec![proto::OrganisationRole::Operator]))
            .await
            .expect_err("the operator role is not asked for"),
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let application = newcomer
        .apply_for_membership(ask(vec![proto::OrganisationRole::Consumer]))
        .await
        .expect("applied with a certificate alone")
        .into_inner()
        .application
        .expect("application");
    assert_eq!(
        (application.kbo.as_str(), application.state),
        (kbo, proto::ApplicationState::Pending as i32)
    );
    assert!(application.certificate.starts_with("sha256:"));
    assert_error(
        &newcomer
            .apply_for_membership(ask(vec![proto::OrganisationRole::Consumer]))
            .await
            .expect_err("one pending application"),
        Code::AlreadyExists,
        "ALREADY_EXISTS",
    );
    // A member does not apply.
    assert_error(
        &RegistryServiceClient::new(t.channel(ANDERLECHT).await)
            .apply_for_membership(ask(vec![proto::OrganisationRole::Consumer]))
            .await
            .expect_err("registered already"),
        Code::PermissionDenied,
        "ROLE_NOT_PERMITTED",
    );

    // The operator decides.
    let mut operator = t.registry().await;
    let pending = operator
        .list_membership_applications(proto::ListMembershipApplicationsRequest {
            state: proto::ApplicationState::Pending as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .applications;
    assert_eq!(pending.len(), 1);
    assert_error(
        &operator
            .decide_membership_application(proto::DecideMembershipApplicationRequest {
                id: application.id.clone(),
                approve: false,
                roles: vec![],
                note: String::new(),
            })
            .await
            .expect_err("a rejection gives reasons"),
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let decided = operator
        .decide_membership_application(proto::DecideMembershipApplicationRequest {
            id: application.id.clone(),
            approve: true,
            roles: vec![],
            note: "KBO checked".into(),
        })
        .await
        .expect("approved")
        .into_inner();
    let org = decided.organisation.expect("registered");
    assert_eq!(
        (org.kbo.as_str(), org.roles.as_slice()),
        (kbo, &[proto::OrganisationRole::Consumer as i32][..])
    );
    // Now a member: its people call with their tokens.
    let token = t.mint(&semel_demo::issuer::TokenRequest {
        subject: "clerk@nieuwkomer",
        organisation: semel_core::Kbo::parse(kbo).expect("kbo"),
        roles: &[semel_core::UserRole::Consumer],
        audience: semel_demo::issuer::DEV_AUDIENCE,
        expires_in: 600,
        not_before: None,
        bound_to: None,
    });
    let catalogue =
        RegistryServiceClient::new(semel_client::with_token(channel, Some(&token)).expect("token"))
            .get_catalogue(proto::GetCatalogueRequest::default())
            .await
            .expect("a member reads its catalogue")
            .into_inner();
    assert_eq!(catalogue.kbo, kbo);
    assert!(catalogue.may_call.is_empty(), "no authorisation yet");
    let entry = t
        .audit_entries()
        .await
        .into_iter()
        .find(|e| e.operation == "semel.v1.RegistryService/ApplyForMembership")
        .expect("the application is in the log");
    assert_eq!(entry.consumer_kbo, kbo);
    t.stop().await;
}
