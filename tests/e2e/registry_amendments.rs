//! The registry's resources amended within their rules: authorisations versioned, datasets and organisations changed, datasets withdrawn.

use semel_demo::seed::datasets::*;
use semel_server::proto::{self, registry_service_client::RegistryServiceClient};
use tonic::Code;

use crate::harness::*;

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
