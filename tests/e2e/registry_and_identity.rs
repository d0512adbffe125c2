//! Identity by mutual TLS, roles, and the registry's RPCs.

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

/// An amended deliberation: the authorisation keeps its reference and gains
/// a version; lookups follow it at once, each entry names the version it was
/// decided under, earlier versions stay readable, a stale or identity-changing
/// amendment is refused whole, and a revocation is a last version.
#[tokio::test]
async fn amending_an_authorisation_versions_it_and_entries_name_their_version() {
    const REF: &str = "BSC/2024/017";
    let t = TestDemo::start().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let street = lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY");
    c.lookup(street.clone()).await.expect("allowed under v1");
    let lookups = |entries: Vec<proto::AuditEntry>| -> Vec<proto::AuditEntry> {
        entries
            .into_iter()
            .filter(|e| e.operation == "semel.v1.LookupService/Lookup")
            .collect()
    };
    let first = lookups(t.audit_entries().await).pop().expect("entry");
    assert_eq!(
        (
            first.authorisation_reference.as_str(),
            first.authorisation_version
        ),
        (REF, 1)
    );

    let mut reg = t.registry().await;
    let current = reg
        .get_authorisation(proto::GetAuthorisationRequest {
            reference: REF.into(),
        })
        .await
        .expect("get")
        .into_inner()
        .authorisation
        .expect("auth");
    assert_eq!(current.version, 1);
    let mut amended = current.clone();
    amended.fields.retain(|f| f != "street");
    amended.legal_basis = format!("{} (amended 2026-11-30)", current.legal_basis);
    let amend = |a: proto::Authorisation, expected_version: u32| proto::AmendAuthorisationRequest {
        authorisation: Some(a),
        expected_version,
        reason: "deliberation 2026/117".into(),
    };
    let r = reg
        .amend_authorisation(amend(amended.clone(), 1))
        .await
        .expect("amend")
        .into_inner();
    let v2 = r.authorisation.expect("v2");
    assert_eq!((v2.version, r.previous.expect("v1").version), (2, 1));
    assert!(!v2.fields.contains(&"street".to_owned()));
    assert_eq!(v2.status, proto::AuthorisationStatus::Active as i32);

    // Lookups follow the new version at once; the old entry keeps its own.
    assert_error(
        &c.lookup(street.clone())
            .await
            .expect_err("street no longer"),
        Code::PermissionDenied,
        "FIELD_NOT_ALLOWED",
    );
    let house = lookup(KARIM, RESIDENCE, &["house_number"], "RIS_ELIGIBILITY");
    c.lookup(house).await.expect("the rest still allowed");
    let entries = t.audit_entries().await;
    let after: Vec<(u64, u32)> = lookups(entries.clone())
        .iter()
        .filter(|e| e.sequence > first.sequence)
        .map(|e| (e.sequence, e.authorisation_version))
        .collect();
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.iter().all(|(_, v)| *v == 2), "{after:?}");
    let again = entries
        .iter()
        .find(|e| e.sequence == first.sequence)
        .expect("first entry");
    assert_eq!(again.authorisation_version, 1);
    // The amendment is itself an entry: who, which version, what changed.
    let change = entries
        .iter()
        .rev()
        .find(|e| e.operation == "semel.v1.RegistryService/AmendAuthorisation")
        .expect("amendment entry");
    assert_eq!(
        (
            change.authorisation_reference.as_str(),
            change.authorisation_version
        ),
        (REF, 2)
    );
    assert!(change.detail.contains("v1 → v2"), "{}", change.detail);
    assert!(
        change.detail.contains("deliberation 2026/117"),
        "{}",
        change.detail
    );
    assert!(change.detail.contains("fields ["), "{}", change.detail);
    assert!(change.detail.contains("legal basis"), "{}", change.detail);

    // A stale version, another consumer or dataset, a missing version:
    // refused, nothing changes.
    assert_error(
        &reg.amend_authorisation(amend(amended.clone(), 1))
            .await
            .expect_err("stale"),
        Code::Aborted,
        "CONFLICT",
    );
    let mut other = amended.clone();
    other.consumer_kbo = semel_demo::seed::org(SCHAERBEEK)
        .expect("org")
        .kbo
        .as_str()
        .to_owned();
    assert_error(
        &reg.amend_authorisation(amend(other, 2))
            .await
            .expect_err("another consumer"),
        Code::InvalidArgument,
        "IMMUTABLE_FIELD",
    );
    assert_error(
        &reg.amend_authorisation(amend(amended.clone(), 0))
            .await
            .expect_err("no version"),
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let mut unknown = amended.clone();
    unknown.fields.push("shoe_size".into());
    assert_error(
        &reg.amend_authorisation(amend(unknown, 2))
            .await
            .expect_err("unknown field"),
        Code::InvalidArgument,
        "UNKNOWN_FIELD",
    );
    // The same content again is no new version.
    let same = reg
        .amend_authorisation(amend(amended.clone(), 2))
        .await
        .expect("same")
        .into_inner()
        .authorisation
        .expect("auth");
    assert_eq!(same.version, 2);

    // Every version stays readable, by those who may see the authorisation.
    let versions = reg
        .list_authorisation_versions(proto::ListAuthorisationVersionsRequest {
            reference: REF.into(),
        })
        .await
        .expect("versions")
        .into_inner()
        .versions;
    assert_eq!(
        versions.iter().map(|a| a.version).collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(versions[0].fields.contains(&"street".to_owned()));
    let own = RegistryServiceClient::new(t.channel(ANDERLECHT).await)
        .list_authorisation_versions(proto::ListAuthorisationVersionsRequest {
            reference: REF.into(),
        })
        .await
        .expect("the consumer reads its own")
        .into_inner();
    assert_eq!(own.versions.len(), 2);
    assert_error(
        &RegistryServiceClient::new(t.channel(SCHAERBEEK).await)
            .list_authorisation_versions(proto::ListAuthorisationVersionsRequest {
                reference: REF.into(),
            })
            .await
            .expect_err("not theirs"),
        Code::NotFound,
        "UNKNOWN_AUTHORISATION",
    );

    // Revocation: a last version, final.
    assert_error(
        &reg.revoke_authorisation(proto::RevokeAuthorisationRequest {
            reference: REF.into(),
            reason: " ".into(),
        })
        .await
        .expect_err("no reason"),
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let revoke = proto::RevokeAuthorisationRequest {
        reference: REF.into(),
        reason: "deliberation 2026/130 ends it".into(),
    };
    let v3 = reg
        .revoke_authorisation(revoke.clone())
        .await
        .expect("revoke")
        .into_inner()
        .authorisation
        .expect("auth");
    assert_eq!(
        (v3.status, v3.version),
        (proto::AuthorisationStatus::Revoked as i32, 3)
    );
    let err = c
        .lookup(lookup(
            KARIM,
            RESIDENCE,
            &["house_number"],
            "RIS_ELIGIBILITY",
        ))
        .await
        .expect_err("revoked");
    assert_error(&err, Code::PermissionDenied, "AUTHORISATION_REVOKED");
    let last = lookups(t.audit_entries().await).pop().expect("entry");
    assert_eq!(
        (last.reason.as_str(), last.authorisation_version),
        ("AUTHORISATION_REVOKED", 3)
    );
    assert_error(
        &reg.reinstate_authorisation(proto::ReinstateAuthorisationRequest {
            reference: REF.into(),
        })
        .await
        .expect_err("final"),
        Code::FailedPrecondition,
        "AUTHORISATION_ENDED",
    );
    assert_error(
        &reg.amend_authorisation(amend(amended, 3))
            .await
            .expect_err("final"),
        Code::FailedPrecondition,
        "AUTHORISATION_ENDED",
    );
    let again = reg
        .revoke_authorisation(revoke)
        .await
        .expect("revoking twice changes nothing")
        .into_inner()
        .authorisation
        .expect("auth");
    assert_eq!(again.version, 3);
    // It leaves the consumer's catalogue.
    let catalogue = RegistryServiceClient::new(t.channel(ANDERLECHT).await)
        .get_catalogue(proto::GetCatalogueRequest::default())
        .await
        .expect("catalogue")
        .into_inner();
    assert!(
        catalogue
            .may_call
            .iter()
            .all(|e| e.authorisation_reference != REF)
    );
    t.stop().await;
}

/// A source moves its endpoint, describes its dataset anew and adds a
/// field itself; removing a field is the operator's, and never one an
/// authorisation names; the source never changes. Organisations are renamed
/// and change roles, but do not drop a role still in use.
#[tokio::test]
async fn datasets_and_organisations_are_amended_within_their_rules() {
    let t = TestDemo::start().await;
    let mut source = RegistryServiceClient::new(t.channel("national-register").await);
    let mut operator = t.registry().await;
    let residence = source
        .get_dataset(proto::GetDatasetRequest {
            name: RESIDENCE.into(),
        })
        .await
        .expect("get")
        .into_inner()
        .dataset
        .expect("dataset");
    let amend = |d: proto::Dataset| proto::AmendDatasetRequest {
        dataset: Some(d),
        reason: "new data centre".into(),
    };

    // The source adds a field; the operator moves its endpoint (a
    // source's own move waits for the operator): lookups go there.
    let mut moved = residence.clone();
    moved.endpoint = "https://127.0.0.1:9".into();
    moved.fields.push(proto::FieldDefinition {
        name: "floor".into(),
        description: "Floor of the dwelling".into(),
        r#type: proto::FieldType::String as i32,
    });
    let mut grown = residence.clone();
    grown.fields = moved.fields.clone();
    source
        .amend_dataset(amend(grown))
        .await
        .expect("the source amends its own");
    let r = operator
        .amend_dataset(amend(moved.clone()))
        .await
        .expect("the operator moves the endpoint")
        .into_inner();
    assert_eq!(r.previous.expect("previous").endpoint, residence.endpoint);
    assert_eq!(
        r.dataset.expect("dataset").fields.len(),
        residence.fields.len() + 1
    );
    let mut c = t.lookup_client(ANDERLECHT).await;
    let street = lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY");
    assert_error(
        &c.lookup(street.clone())
            .await
            .expect_err("nobody listens there"),
        Code::Unavailable,
        "SOURCE_UNAVAILABLE",
    );
    let mut back = moved.clone();
    back.endpoint = residence.endpoint.clone();
    operator
        .amend_dataset(amend(back.clone()))
        .await
        .expect("back");
    c.lookup(street)
        .await
        .expect("answered at the old address again");
    let entry = t
        .audit_entries()
        .await
        .into_iter()
        .rev()
        .find(|e| e.operation == "semel.v1.RegistryService/AmendDataset")
        .expect("entry");
    assert!(
        entry.detail.contains("endpoint https://127.0.0.1:9 → "),
        "{}",
        entry.detail
    );

    // An address the broker could not dial is refused where it is given.
    let mut bad = back.clone();
    bad.endpoint = "https://a b:7001".into();
    assert_error(
        &source
            .amend_dataset(amend(bad))
            .await
            .expect_err("not an address"),
        Code::InvalidArgument,
        "INVALID_ENDPOINT",
    );

    // Removing a field changes what consumers receive: not the source's.
    let mut without_floor = back.clone();
    without_floor.fields.retain(|f| f.name != "floor");
    assert_error(
        &source
            .amend_dataset(amend(without_floor.clone()))
            .await
            .expect_err("the source may not remove"),
        Code::PermissionDenied,
        "ROLE_NOT_PERMITTED",
    );
    operator
        .amend_dataset(amend(without_floor.clone()))
        .await
        .expect("the operator removes a field nobody is authorised for");
    let mut without_street = without_floor.clone();
    without_street.fields.retain(|f| f.name != "street");
    let err = operator
        .amend_dataset(amend(without_street))
        .await
        .expect_err("street is authorised");
    assert_error(&err, Code::FailedPrecondition, "FIELD_IN_USE");
    assert!(err.message().contains("BSC/2024/017"), "{}", err.message());
    let mut other_source = without_floor.clone();
    other_source.source_kbo = semel_demo::seed::org("spf-finances")
        .expect("org")
        .kbo
        .as_str()
        .into();
    assert_error(
        &operator
            .amend_dataset(amend(other_source))
            .await
            .expect_err("the source is the dataset's"),
        Code::InvalidArgument,
        "IMMUTABLE_FIELD",
    );
    assert_error(
        &RegistryServiceClient::new(t.channel("spf-finances").await)
            .amend_dataset(amend(without_floor))
            .await
            .expect_err("another source's dataset"),
        Code::PermissionDenied,
        "OTHER_ORGANISATION",
    );

    // Organisations: a new name and a new role; a role in use stays.
    let org = |slug: &str| {
        let kbo = semel_demo::seed::org(slug)
            .expect("org")
            .kbo
            .as_str()
            .to_owned();
        let t = &t;
        async move {
            t.registry()
                .await
                .get_organisation(proto::GetOrganisationRequest { kbo })
                .await
                .expect("org")
                .into_inner()
                .organisation
                .expect("org")
        }
    };
    let amend_org = |o: proto::Organisation| proto::AmendOrganisationRequest {
        organisation: Some(o),
        reason: "KBO update".into(),
    };
    let mut cpas = org(ANDERLECHT).await;
    cpas.name = "CPAS d'Anderlecht / OCMW Anderlecht".into();
    cpas.roles.push(proto::OrganisationRole::Source as i32);
    let r = operator
        .amend_organisation(amend_org(cpas.clone()))
        .await
        .expect("renamed")
        .into_inner();
    let now = r.organisation.expect("org");
    assert_eq!(now.name, cpas.name);
    assert_eq!(now.roles.len(), 2);
    let mut no_consumer = now.clone();
    no_consumer
        .roles
        .retain(|r| *r != proto::OrganisationRole::Consumer as i32);
    let err = operator
        .amend_organisation(amend_org(no_consumer))
        .await
        .expect_err("it holds authorisations");
    assert_error(&err, Code::FailedPrecondition, "ROLE_IN_USE");
    assert!(err.message().contains("BSC/2024/017"), "{}", err.message());
    let mut register = org("national-register").await;
    register.roles = vec![proto::OrganisationRole::Consumer as i32];
    assert_error(
        &operator
            .amend_organisation(amend_org(register))
            .await
            .expect_err("it publishes datasets"),
        Code::FailedPrecondition,
        "ROLE_IN_USE",
    );
    assert_error(
        &RegistryServiceClient::new(t.channel(ANDERLECHT).await)
            .amend_organisation(amend_org(cpas))
            .await
            .expect_err("not an administrator"),
        Code::PermissionDenied,
        "ROLE_NOT_PERMITTED",
    );
    let entry = t
        .audit_entries()
        .await
        .into_iter()
        .rev()
        .find(|e| {
            e.operation == "semel.v1.RegistryService/AmendOrganisation"
                && e.decision == proto::AuditDecision::Allowed as i32
        })
        .expect("entry");
    assert!(
        entry.detail.contains("name CPAS d'Anderlecht → "),
        "{}",
        entry.detail
    );
    t.stop().await;
}

/// The registry as reviewed files: export, edit, plan, apply; lookups follow
/// the new version, the entry of a lookup before the change still names the
/// old one; broken rules come back all at once, located by file and line,
/// with nothing applied; applying twice changes nothing.
#[tokio::test]
async fn the_registry_round_trips_through_reviewed_files() {
    use semel_client::registry_files;
    let t = TestDemo::start().await;
    let mut reg = t.registry().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let street = lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY");
    c.lookup(street.clone()).await.expect("allowed before");

    // Export.
    let dir = export_registry(&t).await;
    let apply = |read: &registry_files::Read, dry_run: bool| {
        let mut r = read.request.clone();
        r.dry_run = dry_run;
        r.reason = "reviewed in !42".into();
        r
    };
    let unchanged = proto::PlannedAction::Unchanged as i32;

    // As exported, nothing to do.
    let read = registry_files::read_dir(dir.path()).expect("read");
    let plan = reg
        .apply_registry(apply(&read, true))
        .await
        .expect("plan")
        .into_inner();
    assert!(
        plan.changes.iter().all(|c| c.action == unchanged),
        "{plan:?}"
    );

    // Edit: BSC/2024/017 loses street; a new purpose, and an authorisation
    // under it; BSC/2024/020 suspended.
    let path = dir.path().join("authorisations.toml");
    let text = std::fs::read_to_string(&path).expect("read");
    let at = text.find("reference = \"BSC/2024/017\"").expect("017");
    let street_at = at + text[at..].find("\"street\",").expect("street");
    let mut edited = format!(
        "{}{}",
        &text[..street_at],
        &text[street_at + "\"street\",".len()..]
    );
    let at = edited.find("reference = \"BSC/2024/020\"").expect("020");
    edited.insert_str(at, "status = \"suspended\"\n");
    let anderlecht = semel_demo::seed::org(ANDERLECHT).expect("org").kbo;
    edited.push_str(&format!(
        "\n[[authorisation]]\nreference = \"BSC/2026/200\"\nconsumer = \"{}\"\ndataset = \"{RESIDENCE}\"\npurpose = \"DEBT_MEDIATION\"\nfields = [\"municipality\"]\nlegal_basis = \"Ordonnance du 2026\"\nissuing_body = \"BSC\"\nvalid_from = \"2026-01-01\"\n",
        anderlecht.as_str()
    ));
    std::fs::write(&path, &edited).expect("write");
    std::fs::write(
        dir.path().join("purposes-2026.toml"),
        "[[purpose]]\ncode = \"DEBT_MEDIATION\"\ndescription = \"Collective debt mediation\"\nlegal_basis = \"Code judiciaire, art. 1675/2\"\n",
    )
    .expect("write");

    // Dry run: the plan, and nothing changed yet.
    let read = registry_files::read_dir(dir.path()).expect("read");
    let plan = reg
        .apply_registry(apply(&read, true))
        .await
        .expect("plan")
        .into_inner();
    assert!(!plan.applied);
    let planned: Vec<(String, i32)> = plan
        .changes
        .iter()
        .filter(|c| c.action != unchanged)
        .map(|c| (c.key.clone(), c.action))
        .collect();
    assert_eq!(
        planned,
        [
            (
                "DEBT_MEDIATION".to_owned(),
                proto::PlannedAction::Create as i32
            ),
            (
                "BSC/2024/017".to_owned(),
                proto::PlannedAction::Amend as i32
            ),
            (
                "BSC/2024/020".to_owned(),
                proto::PlannedAction::Suspend as i32
            ),
            (
                "BSC/2026/200".to_owned(),
                proto::PlannedAction::Create as i32
            ),
        ]
    );
    c.lookup(street.clone())
        .await
        .expect("a dry run changes nothing");

    // Apply: lookups follow the new version.
    let applied = reg
        .apply_registry(apply(&read, false))
        .await
        .expect("apply")
        .into_inner();
    assert!(applied.applied);
    assert_error(
        &c.lookup(street.clone())
            .await
            .expect_err("street no longer"),
        Code::PermissionDenied,
        "FIELD_NOT_ALLOWED",
    );
    let entries = t.audit_entries().await;
    let lookups: Vec<&proto::AuditEntry> = entries
        .iter()
        .filter(|e| e.operation == "semel.v1.LookupService/Lookup")
        .collect();
    let (before, after) = (lookups[lookups.len() - 2], lookups[lookups.len() - 1]);
    assert_eq!(
        (before.authorisation_version, after.authorisation_version),
        (1, 2)
    );
    // Each change has its entry, the apply its closing one.
    let of_apply: Vec<&proto::AuditEntry> = entries
        .iter()
        .filter(|e| e.operation == "semel.v1.RegistryService/ApplyRegistry")
        .collect();
    assert_eq!(of_apply.len(), 5, "four changes and the closing entry");
    assert!(
        of_apply[..4]
            .iter()
            .all(|e| e.consumer_reference == of_apply[4].consumer_reference)
    );
    assert!(
        of_apply[4]
            .detail
            .contains("2 created, 1 amended, 1 suspended"),
        "{}",
        of_apply[4].detail
    );
    // Applying the same files again changes nothing.
    let again = reg
        .apply_registry(apply(&read, false))
        .await
        .expect("again")
        .into_inner();
    assert!(again.changes.iter().all(|c| c.action == unchanged));

    // Files written before an emergency suspension do not lift it: their
    // authorisation is an older version than the stored one.
    reg.suspend_authorisation(proto::SuspendAuthorisationRequest {
        reference: "BSC/2024/017".into(),
        reason: "incident".into(),
    })
    .await
    .expect("suspend");
    let stale = reg
        .apply_registry(apply(&read, true))
        .await
        .expect_err("the files are older than the registry");
    assert_error(&stale, Code::InvalidArgument, "REGISTRY_INVALID");
    assert!(stale.message().contains("CONFLICT"), "{}", stale.message());
    reg.reinstate_authorisation(proto::ReinstateAuthorisationRequest {
        reference: "BSC/2024/017".into(),
    })
    .await
    .expect("reinstate");

    // Broken rules: every one at once, each locatable, nothing applied.
    let mut broken = edited.replace(
        "purpose = \"DEBT_MEDIATION\"",
        "purpose = \"NO_SUCH_PURPOSE\"",
    );
    let at = broken.find("reference = \"BSC/2024/017\"").expect("017");
    let nis = at + broken[at..].find("\"nis_code\",").expect("nis_code");
    broken.replace_range(nis..nis + "\"nis_code\",".len(), "\"shoe_size\",");
    std::fs::write(&path, &broken).expect("write");
    std::fs::write(
        dir.path().join("purposes-2026.toml"),
        "[[purpose]]\ncode = \"DEBT_MEDIATION\"\ndescription = \"Changed\"\nlegal_basis = \"Code judiciaire, art. 1675/2\"\n",
    )
    .expect("write");
    let read = registry_files::read_dir(dir.path()).expect("read");
    let err = reg
        .apply_registry(apply(&read, false))
        .await
        .expect_err("broken");
    assert_error(&err, Code::InvalidArgument, "REGISTRY_INVALID");
    let violations: Vec<String> = {
        use tonic_types::StatusExt;
        err.get_error_details()
            .bad_request()
            .expect("violations")
            .field_violations
            .iter()
            .map(|v| read.locate_with(&v.field, &v.description).expect("located"))
            .collect()
    };
    // The unknown field, the unknown purpose, BSC/2024/017 changed since
    // these files were written, and BSC/2026/200 (registered by the first
    // apply) described without the version it now has.
    assert_eq!(violations.len(), 4, "{violations:?}");
    let line_of = |needle: &str| {
        broken
            .lines()
            .position(|l| l.contains(needle))
            .expect("line")
            + 1
    };
    assert!(
        violations
            .iter()
            .any(|v| v.ends_with(&format!("authorisations.toml:{}", line_of("shoe_size")))),
        "{violations:?}"
    );
    assert!(
        violations.iter().any(|v| v.ends_with(&format!(
            "authorisations.toml:{}",
            line_of("NO_SUCH_PURPOSE")
        ))),
        "{violations:?}"
    );
    let purpose = reg
        .list_purposes(proto::ListPurposesRequest {})
        .await
        .expect("purposes")
        .into_inner()
        .purposes
        .into_iter()
        .find(|p| p.code == "DEBT_MEDIATION")
        .expect("purpose");
    assert_eq!(
        purpose.description, "Collective debt mediation",
        "nothing of a refused apply is applied"
    );
    // Only an administrator applies.
    assert_error(
        &RegistryServiceClient::new(t.channel(ANDERLECHT).await)
            .apply_registry(apply(&read, true))
            .await
            .expect_err("not an administrator"),
        Code::PermissionDenied,
        "ROLE_NOT_PERMITTED",
    );
    t.stop().await;
}

/// The demo's registry is shipped as reviewed files (deploy/demo-registry):
/// they describe exactly what the demo seeds, endpoints aside (its sources
/// listen on ports chosen at start).
#[tokio::test]
async fn the_shipped_demo_registry_files_describe_the_demo() {
    let t = TestDemo::start().await;
    let mut reg = t.registry().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo-registry");
    let read = semel_client::registry_files::read_dir(&dir).expect("the shipped files read");
    let live = reg
        .list_datasets(proto::ListDatasetsRequest {})
        .await
        .expect("datasets")
        .into_inner()
        .datasets;
    let mut request = read.request.clone();
    for d in &mut request.datasets {
        d.endpoint = live
            .iter()
            .find(|l| l.name == d.name)
            .map(|l| l.endpoint.clone())
            .unwrap_or_default();
    }
    request.dry_run = true;
    let plan = reg
        .apply_registry(request)
        .await
        .expect("plan")
        .into_inner();
    let changed: Vec<_> = plan
        .changes
        .iter()
        .filter(|c| c.action != proto::PlannedAction::Unchanged as i32)
        .collect();
    assert!(
        changed.is_empty(),
        "regenerate with `semel registry export`: {changed:?}"
    );
    let authorisations = reg
        .list_authorisations(proto::ListAuthorisationsRequest::default())
        .await
        .expect("auths")
        .into_inner()
        .authorisations;
    assert_eq!(read.request.authorisations.len(), authorisations.len());
    assert_eq!(read.request.datasets.len(), live.len());
    t.stop().await;
}

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

/// A dataset withdrawn by its source is an ending, not a deletion: lookups
/// and changes of it are refused from then on, it cannot change any more,
/// and the catalogues of those authorised mark it.
#[tokio::test]
async fn a_withdrawn_dataset_serves_nothing_and_stays_on_record() {
    let t = TestDemo::start().await;
    let mut source = RegistryServiceClient::new(t.channel("national-register").await);
    let change = |id: &str| proto::PublishMutationsRequest {
        mutations: vec![proto::Mutation {
            source_event_id: id.into(),
            dataset: RESIDENCE.into(),
            citizen: KARIM.into(),
            kind: proto::MutationKind::Changed as i32,
            effective_date: time::OffsetDateTime::now_utc().date().to_string(),
            fields: [(
                "street".to_owned(),
                proto::Value {
                    kind: Some(proto::value::Kind::StringValue("Rue Wayez".into())),
                },
            )]
            .into_iter()
            .collect(),
        }],
    };
    let mut publisher = proto::mutation_service_client::MutationServiceClient::new(
        t.channel("national-register").await,
    );
    // A change queued before the withdrawal is not delivered after it.
    publisher
        .publish_mutations(change("before-withdrawal"))
        .await
        .expect("published while published");
    let withdraw = |reason: &str| proto::WithdrawDatasetRequest {
        name: RESIDENCE.into(),
        reason: reason.into(),
    };
    assert_error(
        &source
            .withdraw_dataset(withdraw(" "))
            .await
            .expect_err("no reason"),
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &RegistryServiceClient::new(t.channel("spf-finances").await)
            .withdraw_dataset(withdraw("not mine"))
            .await
            .expect_err("another source's"),
        Code::PermissionDenied,
        "OTHER_ORGANISATION",
    );
    let d = source
        .withdraw_dataset(withdraw("replaced by national_register.address"))
        .await
        .expect("withdrawn")
        .into_inner()
        .dataset
        .expect("dataset");
    assert!(d.withdrawn);
    let err = t
        .lookup_client(ANDERLECHT)
        .await
        .lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect_err("withdrawn");
    assert_error(&err, Code::FailedPrecondition, "DATASET_WITHDRAWN");
    let entry = t.audit_entries().await.pop().expect("entry");
    assert_eq!(entry.reason, "DATASET_WITHDRAWN", "the refusal is recorded");
    let err = publisher
        .publish_mutations(change("after-withdrawal"))
        .await
        .expect_err("no changes of a withdrawn dataset");
    assert_error(&err, Code::FailedPrecondition, "DATASET_WITHDRAWN");
    let pulled =
        proto::mutation_service_client::MutationServiceClient::new(t.channel(ANDERLECHT).await)
            .pull_mutations(proto::PullMutationsRequest {
                after: 0,
                max_events: 0,
                wait_seconds: 0,
            })
            .await
            .expect("pull")
            .into_inner();
    assert!(
        pulled.events.is_empty(),
        "the queued change was dropped: {:?}",
        pulled.events
    );
    assert_error(
        &source
            .amend_dataset(proto::AmendDatasetRequest {
                dataset: Some(d.clone()),
                reason: String::new(),
            })
            .await
            .expect_err("final"),
        Code::FailedPrecondition,
        "DATASET_WITHDRAWN",
    );
    // Still on record, and marked in the catalogue.
    let got = source
        .get_dataset(proto::GetDatasetRequest {
            name: RESIDENCE.into(),
        })
        .await
        .expect("still readable")
        .into_inner()
        .dataset
        .expect("dataset");
    assert!(got.withdrawn);
    let catalogue = RegistryServiceClient::new(t.channel(ANDERLECHT).await)
        .get_catalogue(proto::GetCatalogueRequest::default())
        .await
        .expect("catalogue")
        .into_inner();
    let residence: Vec<i32> = catalogue
        .may_call
        .iter()
        .filter(|e| e.dataset == RESIDENCE)
        .map(|e| e.state)
        .collect();
    assert!(!residence.is_empty());
    assert!(
        residence
            .iter()
            .all(|s| *s == proto::CatalogueState::DatasetWithdrawn as i32),
        "{residence:?}"
    );
    t.stop().await;
}
