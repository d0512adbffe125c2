//! Identity by mutual TLS, roles, and the registry's RPCs: suspensions,
//! the rules a change obeys, the catalogue. Amendments are in
//! `registry_amendments`, reviewed files in `registry_files`, applications in
//! `registry_applications`.

use semel_demo::seed::datasets::*;
use semel_server::proto::{self, registry_service_client::RegistryServiceClient};
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn no_client_certificate_is_unauthenticated() {
    let t = TestDemo::start().await;
    let channel = t
        .channel_with(None, &t.pki().ca_cert())
        .await
        .expect("TLS without a client certificate");
    let mut c = proto::lookup_service_client::LookupServiceClient::new(channel);
    let err = c
        .lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect_err("refused");
    assert_error(&err, Code::Unauthenticated, "CLIENT_CERTIFICATE_REQUIRED");
    assert!(error_info(&err).2.contains_key("request_id"), "{err:?}");
    assert_eq!(
        t.audit_entries().await.len(),
        0,
        "an unknown caller leaves no entry"
    );
    t.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_does_not_get_through() {
    let t = TestDemo::start().await;
    let other = tempfile::tempdir().expect("tempdir");
    let kbo = semel_demo::seed::org(ANDERLECHT).expect("org").kbo;
    let stem = kbo.as_str().to_owned();
    let pki = semel_demo::pki::DevPki::ensure(
        other.path(),
        &[semel_demo::pki::Subject {
            file_stem: &stem,
            kbo,
            name: "Impostor",
        }],
    )
    .expect("other pki");
    let f = pki.files(&stem);
    // The impostor trusts the real CA for the server, but its own certificate is not from it.
    let result = match t
        .channel_with(Some((&f.cert, &f.key)), &t.pki().ca_cert())
        .await
    {
        Err(_) => None,
        Ok(channel) => Some(
            proto::lookup_service_client::LookupServiceClient::new(channel)
                .lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
                .await,
        ),
    };
    assert!(
        !matches!(result, Some(Ok(_))),
        "a foreign certificate must not get an answer"
    );
    assert_eq!(t.audit_entries().await.len(), 0);
    t.stop().await;
}

#[tokio::test]
async fn an_unregistered_organisation_is_unauthenticated() {
    let t = TestDemo::start().await;
    let f = t.issue("stranger", "0999999922", "Not registered");
    let channel = t
        .channel_with(Some((&f.cert, &f.key)), &t.pki().ca_cert())
        .await
        .expect("connect");
    let err = proto::lookup_service_client::LookupServiceClient::new(channel)
        .lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect_err("refused");
    assert_error(&err, Code::Unauthenticated, "ORGANISATION_NOT_REGISTERED");
    t.stop().await;
}

#[tokio::test]
async fn a_suspended_organisation_is_refused_on_its_next_call() {
    let t = TestDemo::start().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let req = lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY");
    c.lookup(req.clone()).await.expect("allowed before");
    let kbo = semel_demo::seed::org(ANDERLECHT)
        .expect("org")
        .kbo
        .as_str()
        .to_owned();
    let mut reg = t.registry().await;
    let org = reg
        .suspend_organisation(proto::SuspendOrganisationRequest {
            kbo: kbo.clone(),
            reason: "security incident".into(),
        })
        .await
        .expect("suspend")
        .into_inner()
        .organisation
        .expect("org");
    assert_eq!(org.status, proto::OrganisationStatus::Suspended as i32);
    // Same connection, next call.
    assert_error(
        &c.lookup(req.clone()).await.expect_err("suspended"),
        Code::PermissionDenied,
        "ORGANISATION_SUSPENDED",
    );
    reg.reinstate_organisation(proto::ReinstateOrganisationRequest { kbo })
        .await
        .expect("reinstate");
    c.lookup(req).await.expect("allowed again");
    t.stop().await;
}

#[tokio::test]
async fn roles_are_enforced() {
    let t = TestDemo::start().await;
    // A consumer cannot change the registry or read the audit log.
    let mut reg = RegistryServiceClient::new(t.channel(ANDERLECHT).await);
    let err = reg
        .suspend_authorisation(proto::SuspendAuthorisationRequest {
            reference: "BSC/2024/017".into(),
            reason: String::new(),
        })
        .await
        .expect_err("denied");
    assert_error(&err, Code::PermissionDenied, "ROLE_NOT_PERMITTED");
    let clerk = t.token(ANDERLECHT, &[semel_core::UserRole::Consumer]);
    let mut audit = proto::audit_service_client::AuditServiceClient::new(
        t.channel_as(ANDERLECHT, &clerk).await,
    );
    let err = audit
        .list_audit_entries(proto::ListAuditEntriesRequest::default())
        .await
        .expect_err("denied");
    assert_error(&err, Code::PermissionDenied, "ROLE_NOT_PERMITTED");
    // The CPAS's own auditor reads the CPAS's entries, and no one else's.
    let dpo = t.token(ANDERLECHT, &[semel_core::UserRole::Auditor]);
    let mut audit =
        proto::audit_service_client::AuditServiceClient::new(t.channel_as(ANDERLECHT, &dpo).await);
    let own = audit
        .list_audit_entries(proto::ListAuditEntriesRequest::default())
        .await
        .expect("own entries")
        .into_inner()
        .entries;
    let kbo = semel_demo::seed::org(ANDERLECHT).expect("org").kbo;
    assert!(!own.is_empty());
    assert!(own.iter().all(|e| e.consumer_kbo == kbo.as_str()));
    let other = semel_demo::seed::org(SCHAERBEEK).expect("org").kbo;
    let err = audit
        .list_audit_entries(proto::ListAuditEntriesRequest {
            consumer_kbo: other.as_str().into(),
            ..Default::default()
        })
        .await
        .expect_err("another organisation's entries");
    assert_error(&err, Code::PermissionDenied, "OTHER_ORGANISATION");
    // A source's person cannot make lookups, even with a token that says
    // consumer: the organisation is not registered as one. The refusal is
    // audited with the person and the citizen.
    let token = t.token("national-register", &[semel_core::UserRole::Consumer]);
    let mut c = proto::lookup_service_client::LookupServiceClient::new(
        t.channel_as("national-register", &token).await,
    );
    let err = c
        .lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect_err("denied");
    assert_error(&err, Code::PermissionDenied, "ORGANISATION_ROLE_MISSING");
    let e = t.audit_entries().await.pop().expect("entry");
    assert_eq!(e.reason, "ORGANISATION_ROLE_MISSING");
    assert_eq!(e.end_user, "demo-user@national-register");
    assert_eq!(e.citizen, KARIM);
    assert_eq!(e.operation, "semel.v1.LookupService/Lookup");
    // A consumer sees only its own authorisations.
    let mine = reg
        .list_authorisations(proto::ListAuthorisationsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .authorisations;
    let kbo = semel_demo::seed::org(ANDERLECHT).expect("org").kbo;
    assert!(!mine.is_empty());
    assert!(mine.iter().all(|a| a.consumer_kbo == kbo.as_str()));
    t.stop().await;
}

#[tokio::test]
async fn suspending_an_authorisation_takes_effect_at_once_and_versions_it() {
    let t = TestDemo::start().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let req = lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY");
    c.lookup(req.clone()).await.expect("allowed");
    let mut reg = t.registry().await;
    let a = reg
        .suspend_authorisation(proto::SuspendAuthorisationRequest {
            reference: "BSC/2024/017".into(),
            reason: "deliberation under review".into(),
        })
        .await
        .expect("suspend")
        .into_inner()
        .authorisation
        .expect("auth");
    assert_eq!(
        (a.status, a.version),
        (proto::AuthorisationStatus::Suspended as i32, 2)
    );
    assert_error(
        &c.lookup(req.clone()).await.expect_err("suspended"),
        Code::PermissionDenied,
        "AUTHORISATION_SUSPENDED",
    );
    let a = reg
        .reinstate_authorisation(proto::ReinstateAuthorisationRequest {
            reference: "BSC/2024/017".into(),
        })
        .await
        .expect("reinstate")
        .into_inner()
        .authorisation
        .expect("auth");
    assert_eq!(a.version, 3);
    c.lookup(req).await.expect("allowed again");
    t.stop().await;
}

#[tokio::test]
async fn registry_changes_are_validated() {
    let t = TestDemo::start().await;
    let mut reg = t.registry().await;
    let anderlecht = semel_demo::seed::org(ANDERLECHT)
        .expect("org")
        .kbo
        .as_str()
        .to_owned();
    let auth = |reference: &str, fields: &[&str]| proto::CreateAuthorisationRequest {
        authorisation: Some(proto::Authorisation {
            reference: reference.into(),
            consumer_kbo: anderlecht.clone(),
            dataset: IDENTITY.into(),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            purpose: "RIS_ELIGIBILITY".into(),
            legal_basis: "Loi du 26 mai 2002".into(),
            issuing_body: "Brussels Supervisory Commission".into(),
            valid_from: "2026-01-01".into(),
            ..Default::default()
        }),
    };
    assert_error(
        &reg.create_authorisation(auth("BSC/2026/900", &["shoe_size"]))
            .await
            .expect_err("field"),
        Code::InvalidArgument,
        "UNKNOWN_FIELD",
    );
    assert_error(
        &reg.create_authorisation(auth("BSC/2024/017", &["sex"]))
            .await
            .expect_err("dup"),
        Code::AlreadyExists,
        "ALREADY_EXISTS",
    );
    let mut unknown = auth("BSC/2026/901", &["sex"]);
    if let Some(a) = unknown.authorisation.as_mut() {
        a.purpose = "CURIOSITY".into();
    }
    assert_error(
        &reg.create_authorisation(unknown)
            .await
            .expect_err("purpose"),
        Code::FailedPrecondition,
        "UNKNOWN_PURPOSE",
    );
    // The catalogue: the demo's purposes, with their legal basis.
    let purposes = reg
        .list_purposes(proto::ListPurposesRequest {})
        .await
        .expect("purposes")
        .into_inner()
        .purposes;
    assert!(
        purposes
            .iter()
            .any(|p| p.code == "RIS_ELIGIBILITY" && p.legal_basis.contains("26 mai 2002"))
    );
    assert_error(
        &reg.create_authorisation(auth("BSC 2026", &["sex"]))
            .await
            .expect_err("ref"),
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let created = reg
        .create_authorisation(auth("BSC/2026/900", &["sex"]))
        .await
        .expect("create")
        .into_inner()
        .authorisation
        .expect("auth");
    assert_eq!(
        (created.version, created.status),
        (1, proto::AuthorisationStatus::Active as i32)
    );
    let err = reg
        .create_organisation(proto::CreateOrganisationRequest {
            organisation: Some(proto::Organisation {
                kbo: "0566988258".into(),
                name: "Bad".into(),
                roles: vec![proto::OrganisationRole::Consumer as i32],
                ..Default::default()
            }),
        })
        .await
        .expect_err("bad kbo");
    assert_error(&err, Code::InvalidArgument, "INVALID_ENTERPRISE_NUMBER");
    let err = reg
        .get_dataset(proto::GetDatasetRequest {
            name: "nope".into(),
        })
        .await
        .expect_err("unknown");
    assert_error(&err, Code::NotFound, "UNKNOWN_DATASET");
    t.stop().await;
}

/// "What may I call?": a consumer reads its own catalogue, a source sees who
/// may call its datasets, nobody else's but for those who read the whole
/// registry.
#[tokio::test]
async fn the_catalogue_says_what_an_organisation_may_call_and_who_calls_it() {
    let t = TestDemo::start().await;
    let catalogue = |slug: &'static str, kbo: &str| {
        let kbo = kbo.to_owned();
        let t = &t;
        async move {
            RegistryServiceClient::new(t.channel(slug).await)
                .get_catalogue(proto::GetCatalogueRequest { kbo })
                .await
        }
    };
    let kbo_of = |slug| {
        semel_demo::seed::org(slug)
            .expect("org")
            .kbo
            .as_str()
            .to_owned()
    };

    let own = catalogue(ANDERLECHT, "").await.expect("own").into_inner();
    assert_eq!(own.kbo, kbo_of(ANDERLECHT));
    assert!(own.called_by.is_empty(), "a CPAS is no source");
    let refs: Vec<&str> = own
        .may_call
        .iter()
        .map(|e| e.authorisation_reference.as_str())
        .collect();
    for r in [
        "BSC/2024/017",
        "BSC/2024/018",
        "BSC/2024/019",
        "BSC/2024/020",
        "BSC/2024/021",
    ] {
        assert!(refs.contains(&r), "{r} in {refs:?}");
    }
    assert!(own.may_call.iter().all(|e| e.consumer_kbo == own.kbo));
    // Ordered by dataset, then purpose.
    let order: Vec<(&str, &str)> = own
        .may_call
        .iter()
        .map(|e| (e.dataset.as_str(), e.purpose.as_str()))
        .collect();
    assert!(order.is_sorted(), "{order:?}");
    let residence = own
        .may_call
        .iter()
        .find(|e| e.dataset == RESIDENCE)
        .expect("residence");
    let fields: Vec<(&str, i32)> = residence
        .fields
        .iter()
        .map(|f| (f.name.as_str(), f.r#type))
        .collect();
    assert!(
        fields.contains(&("resident_since", proto::FieldType::Date as i32)),
        "{fields:?}"
    );
    assert!(
        fields.iter().all(|(n, _)| *n != "members"),
        "only the authorised fields"
    );
    assert_eq!(residence.source_kbo, kbo_of("national-register"));
    assert!(!residence.source_name.is_empty() && !residence.purpose_description.is_empty());
    assert_eq!(residence.purpose, "RIS_ELIGIBILITY");
    assert!(
        residence.legal_basis.contains("2002"),
        "{}",
        residence.legal_basis
    );
    assert!(residence.capacities.contains(&"RIS_APPLICANT".to_owned()));
    assert!(!residence.consent_required);
    assert_eq!(residence.state, proto::CatalogueState::InForce as i32);

    // The register sees every consumer of its datasets, suspended ones
    // with their state, and may not read a consumer's catalogue.
    let register = catalogue("national-register", "")
        .await
        .expect("source")
        .into_inner();
    let suspended = register
        .called_by
        .iter()
        .find(|e| e.authorisation_reference == "BSC/2022/033")
        .expect("the suspended authorisation on identity");
    assert_eq!(suspended.state, proto::CatalogueState::Suspended as i32);
    assert_eq!(suspended.consumer_kbo, kbo_of(BRUXELLES_CPAS));
    assert!(
        register
            .called_by
            .iter()
            .any(|e| e.consumer_kbo == kbo_of(ANDERLECHT))
    );
    assert!(
        register
            .called_by
            .iter()
            .all(|e| e.source_kbo == kbo_of("national-register"))
    );
    let other = catalogue("national-register", &kbo_of(ANDERLECHT))
        .await
        .expect_err("not its own");
    assert_error(&other, Code::PermissionDenied, "OTHER_ORGANISATION");
    // Nor may a consumer read the register's (every consumer of its
    // datasets), nor a consumer's own auditor; each attempt is audited.
    let fishing = catalogue(ANDERLECHT, &kbo_of("national-register"))
        .await
        .expect_err("not its own");
    assert_error(&fishing, Code::PermissionDenied, "OTHER_ORGANISATION");
    let auditor = t.token(ANDERLECHT, &[semel_core::UserRole::Auditor]);
    let denied = RegistryServiceClient::new(t.channel_as(ANDERLECHT, &auditor).await)
        .get_catalogue(proto::GetCatalogueRequest {
            kbo: kbo_of("national-register"),
        })
        .await
        .expect_err("a consumer's auditor reads its own catalogue only");
    assert_error(&denied, Code::PermissionDenied, "OTHER_ORGANISATION");
    let refusals = t
        .audit_entries()
        .await
        .into_iter()
        .filter(|e| {
            e.operation == "semel.v1.RegistryService/GetCatalogue"
                && e.reason == "OTHER_ORGANISATION"
        })
        .count();
    assert_eq!(
        refusals, 3,
        "every refused catalogue read is in the audit log"
    );
    // Its own number, formatted or padded, is its own.
    for own_number in ["0212.345.668", " 0212345668 "] {
        let same = catalogue(ANDERLECHT, own_number)
            .await
            .expect("own, formatted")
            .into_inner();
        assert_eq!(same.kbo, kbo_of(ANDERLECHT));
    }

    // Checks only: no value to read, one field to test, named questions;
    // and an authorisation that starts later.
    let ville = catalogue(OPERATOR, &kbo_of(VILLE))
        .await
        .expect("operator")
        .into_inner();
    let school = ville
        .may_call
        .iter()
        .find(|e| e.authorisation_reference == "BSC/2023/045")
        .expect("school enrolment");
    assert!(school.fields.is_empty(), "{:?}", school.fields);
    let tested: Vec<(&str, i32)> = school
        .check_fields
        .iter()
        .map(|f| (f.name.as_str(), f.r#type))
        .collect();
    assert_eq!(tested, [("nis_code", proto::FieldType::String as i32)]);
    let schaerbeek = catalogue(SCHAERBEEK, "").await.expect("own").into_inner();
    let questions = schaerbeek
        .may_call
        .iter()
        .find(|e| e.authorisation_reference == "BSC/2023/044")
        .expect("Schaerbeek's school enrolment");
    assert!(!questions.checks.is_empty(), "its named question");
    let later = schaerbeek
        .may_call
        .iter()
        .find(|e| e.authorisation_reference == "BSC/2026/007")
        .expect("not yet valid");
    assert_eq!(later.state, proto::CatalogueState::NotYetValid as i32);

    // The finance ministry's expired authorisation shows as expired to the
    // operator, who may read any catalogue.
    let ville = catalogue(OPERATOR, &kbo_of(VILLE))
        .await
        .expect("operator")
        .into_inner();
    let expired = ville
        .may_call
        .iter()
        .find(|e| e.authorisation_reference == "BSC/2019/101")
        .expect("expired authorisation");
    assert_eq!(expired.state, proto::CatalogueState::Expired as i32);
    // And the supervisory body's auditors too.
    catalogue("control-commission", &kbo_of(ANDERLECHT))
        .await
        .expect("auditors read every catalogue");

    // A suspension shows at once.
    t.registry()
        .await
        .suspend_authorisation(proto::SuspendAuthorisationRequest {
            reference: "BSC/2024/017".into(),
            reason: "catalogue test".into(),
        })
        .await
        .expect("suspend");
    let after = catalogue(ANDERLECHT, "").await.expect("own").into_inner();
    let e = after
        .may_call
        .iter()
        .find(|e| e.authorisation_reference == "BSC/2024/017")
        .expect("still listed");
    assert_eq!(e.state, proto::CatalogueState::Suspended as i32);

    // A suspended consumer: the source sees it cannot call.
    t.registry()
        .await
        .suspend_organisation(proto::SuspendOrganisationRequest {
            kbo: kbo_of(BRUXELLES_CPAS),
            reason: "catalogue test".into(),
        })
        .await
        .expect("suspend the consumer");
    let register = catalogue("national-register", "")
        .await
        .expect("source")
        .into_inner();
    let cut_off = register
        .called_by
        .iter()
        .find(|e| e.authorisation_reference == "BSC/2025/003")
        .expect("CPAS de Bruxelles on residence");
    assert_eq!(
        cut_off.state,
        proto::CatalogueState::ConsumerSuspended as i32
    );

    // Bad input.
    let malformed = catalogue(OPERATOR, "0123").await.expect_err("malformed");
    assert_error(
        &malformed,
        Code::InvalidArgument,
        "INVALID_ENTERPRISE_NUMBER",
    );
    let unknown = catalogue(OPERATOR, "0999999724")
        .await
        .expect_err("unknown");
    assert_error(&unknown, Code::NotFound, "UNKNOWN_ORGANISATION");
    t.stop().await;
}
