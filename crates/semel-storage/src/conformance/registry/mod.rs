//! The cases on the registry: its records here; applications and commits
//! in their own modules, re-exported so every case is `registry::<case>`.

use super::*;
use semel_core::{
    Authorisation, AuthorisationRef, AuthorisationStatus, CertificateId, Dataset, DatasetName,
    FieldDefinition, FieldName, FieldType, Organisation, OrganisationStatus, Purpose,
    RevokedCertificate, Role,
};

mod applications;
mod commits;

pub use applications::{
    applications_are_kept_decided_and_undone, one_application_pending_per_reference_and_applicant,
    one_membership_application_pending_per_enterprise_number,
};
pub use commits::{
    a_commit_is_all_or_nothing_and_so_is_its_undo, a_commit_writes_only_over_what_it_read,
    a_revocation_is_staged_like_any_change,
    a_staged_change_is_in_force_once_sealed_and_never_if_dropped,
    an_apply_commits_with_its_marker_or_not_at_all,
};

/// A test organisation (also used by implementations' own tests).
pub fn organisation(number: &str, status: OrganisationStatus) -> Organisation {
    Organisation {
        kbo: kbo(number),
        name: format!("organisation {number}"),
        roles: [Role::Consumer].into_iter().collect(),
        status,
        created_at: datetime!(2026-01-01 0:00 UTC),
    }
}

fn dataset(name: &str, description: &str) -> Dataset {
    Dataset {
        withdrawn: false,
        name: DatasetName::new(name).expect("dataset"),
        source: kbo("0314595348"),
        description: description.into(),
        fields: vec![FieldDefinition {
            name: FieldName::new("street").expect("field"),
            description: "street".into(),
            field_type: FieldType::String,
        }],
        endpoint: "https://127.0.0.1:7001".into(),
        keeps_history: false,
    }
}

fn purpose(code: &str) -> Purpose {
    Purpose {
        code: PurposeCode::new(code).expect("purpose"),
        description: "a purpose".into(),
        legal_basis: "a law".into(),
    }
}

/// A test authorisation (also used by implementations' own tests).
pub fn authorisation(reference: &str, version: u32, status: AuthorisationStatus) -> Authorisation {
    Authorisation {
        reference: AuthorisationRef::new(reference).expect("reference"),
        consumer: kbo("0566988259"),
        dataset: DatasetName::new("national_register.residence").expect("dataset"),
        fields: [FieldName::new("street").expect("field")]
            .into_iter()
            .collect(),
        purpose: PurposeCode::new("RIS_ELIGIBILITY").expect("purpose"),
        legal_basis: "test".into(),
        issuing_body: "test".into(),
        valid_from: date!(2026 - 01 - 01),
        valid_until: None,
        status,
        version,
        updated_at: datetime!(2026-01-01 0:00 UTC),
        confidential_until: None,
        check_fields: Default::default(),
        checks: Vec::new(),
        capacities: Default::default(),
        consent_required: false,
        receives_mutations: false,
    }
}

fn conflict<T: std::fmt::Debug>(r: Result<T, StorageError>, what: &str) -> String {
    match r {
        Err(StorageError::Conflict(m)) => m,
        other => panic!("{what}: expected a conflict, got {other:?}"),
    }
}

pub async fn an_empty_registry_lists_nothing(store: &dyn RegistryStore) {
    assert!(store.organisations().await.expect("read").is_empty());
    assert!(store.datasets().await.expect("read").is_empty());
    assert!(store.purposes().await.expect("read").is_empty());
    assert!(store.authorisations().await.expect("read").is_empty());
    assert!(
        store
            .authorisation_history("BSC/2024/017")
            .await
            .expect("read")
            .is_empty()
    );
    assert!(store.revoked_certificates().await.expect("read").is_empty());
}

pub async fn records_are_inserted_or_replaced_and_listed_in_key_order(store: &dyn RegistryStore) {
    let (a, b) = ("0566988259", "0314595348");
    store
        .put_organisation(&organisation(a, OrganisationStatus::Active))
        .await
        .expect("put");
    store
        .put_organisation(&organisation(b, OrganisationStatus::Active))
        .await
        .expect("put");
    store
        .put_organisation(&organisation(a, OrganisationStatus::Suspended))
        .await
        .expect("suspend");
    assert_eq!(
        store.organisations().await.expect("read"),
        vec![
            organisation(b, OrganisationStatus::Active),
            organisation(a, OrganisationStatus::Suspended)
        ]
    );
    // Byte order, not a locale's (which would skip punctuation):
    // '-' < '.' < '_' < letters.
    for (name, d) in [
        ("ab", "v1"),
        ("a_a", "v1"),
        ("a.b", "v1"),
        ("ab", "v2"),
        ("a-c", "v1"),
    ] {
        store.put_dataset(&dataset(name, d)).await.expect("put");
    }
    assert_eq!(
        store.datasets().await.expect("read"),
        vec![
            dataset("a-c", "v1"),
            dataset("a.b", "v1"),
            dataset("a_a", "v1"),
            dataset("ab", "v2"),
        ]
    );
    for code in ["SOCIAL_HOUSING", "RIS_ELIGIBILITY", "SOCIAL_HOUSING"] {
        store.put_purpose(&purpose(code)).await.expect("put");
    }
    assert_eq!(
        store.purposes().await.expect("read"),
        vec![purpose("RIS_ELIGIBILITY"), purpose("SOCIAL_HOUSING")]
    );
}

pub async fn authorisation_versions_follow_each_other(store: &dyn RegistryStore) {
    use AuthorisationStatus::{Active, Suspended};
    let r = "BSC/2024/017";
    conflict(
        store.put_authorisation(&authorisation(r, 2, Active)).await,
        "a first version that is not 1",
    );
    store
        .put_authorisation(&authorisation(r, 1, Active))
        .await
        .expect("version 1");
    conflict(
        store
            .put_authorisation(&authorisation(r, 1, Suspended))
            .await,
        "version 1 again",
    );
    store
        .put_authorisation(&authorisation(r, 2, Suspended))
        .await
        .expect("version 2");
    conflict(
        store.put_authorisation(&authorisation(r, 4, Active)).await,
        "a skipped version",
    );
    store
        .put_authorisation(&authorisation("BSC/2025/001", 1, Active))
        .await
        .expect("another authorisation");
    assert_eq!(
        store.authorisations().await.expect("read"),
        vec![
            authorisation(r, 2, Suspended),
            authorisation("BSC/2025/001", 1, Active)
        ]
    );
    assert_eq!(
        store.authorisation_history(r).await.expect("history"),
        vec![authorisation(r, 1, Active), authorisation(r, 2, Suspended)]
    );
    assert_eq!(
        store
            .authorisation_history("BSC/2024/01")
            .await
            .expect("history"),
        vec![],
        "a prefix of a reference is not the reference"
    );
}

pub async fn a_second_revocation_keeps_the_first(store: &dyn RegistryStore) {
    let first = RevokedCertificate {
        id: CertificateId::Sha256("ab".repeat(32)),
        reason: "key compromise".into(),
        revoked_at: datetime!(2026-02-01 0:00 UTC),
    };
    assert_eq!(
        store.revoke_certificate(&first).await.expect("revoke"),
        first
    );
    let again = RevokedCertificate {
        reason: "again".into(),
        revoked_at: datetime!(2026-03-01 0:00 UTC),
        ..first.clone()
    };
    assert_eq!(
        store.revoke_certificate(&again).await.expect("again"),
        first
    );
    let other = RevokedCertificate {
        id: CertificateId::Serial("1f".into()),
        ..first.clone()
    };
    store.revoke_certificate(&other).await.expect("another");
    let mut all = store.revoked_certificates().await.expect("read");
    all.sort_by_key(|r| r.id.key());
    let mut expected = vec![first, other];
    expected.sort_by_key(|r| r.id.key());
    assert_eq!(all, expected);
}

pub async fn creations_refuse_a_key_taken(store: &dyn RegistryStore) {
    let first = organisation("0566988259", OrganisationStatus::Active);
    store.insert_organisation(&first).await.expect("created");
    let again = organisation("0566988259", OrganisationStatus::Suspended);
    let refused = store.insert_organisation(&again).await;
    assert!(
        matches!(refused, Err(StorageError::Conflict(_))),
        "a second creation: {refused:?}"
    );
    assert_eq!(
        store.organisation(&first.kbo).await.expect("read"),
        Some(first),
        "the first stands"
    );
    let d = dataset("national_register.residence", "first");
    store.insert_dataset(&d).await.expect("created");
    let refused = store
        .insert_dataset(&dataset("national_register.residence", "second"))
        .await;
    assert!(
        matches!(refused, Err(StorageError::Conflict(_))),
        "{refused:?}"
    );
    assert_eq!(store.datasets().await.expect("list"), vec![d]);
    let p = purpose("RIS_ELIGIBILITY");
    store.insert_purpose(&p).await.expect("created");
    let refused = store.insert_purpose(&p).await;
    assert!(
        matches!(refused, Err(StorageError::Conflict(_))),
        "{refused:?}"
    );
    assert_eq!(store.purposes().await.expect("list"), vec![p]);
}

pub async fn changes_are_undone_to_what_was_stored(store: &dyn RegistryStore) {
    let active = organisation("0566988259", OrganisationStatus::Active);
    store.put_organisation(&active).await.expect("put");
    let suspended = organisation("0566988259", OrganisationStatus::Suspended);
    store.put_organisation(&suspended).await.expect("put");
    store
        .undo(&RegistryUndo::Organisation(
            Box::new(suspended.clone()),
            Some(Box::new(active.clone())),
        ))
        .await
        .expect("undo a change");
    assert_eq!(
        store.organisation(&active.kbo).await.expect("read"),
        Some(active.clone())
    );
    // A change made since (through another broker) stands: the undo
    // of the one before it is refused, and nothing changes.
    let refused = store
        .undo(&RegistryUndo::Organisation(
            Box::new(suspended.clone()),
            Some(Box::new(active.clone())),
        ))
        .await;
    assert!(
        matches!(refused, Err(StorageError::Conflict(_))),
        "an undo of a record changed since: {refused:?}"
    );
    assert_eq!(
        store.organisation(&active.kbo).await.expect("read"),
        Some(active.clone())
    );
    store
        .undo(&RegistryUndo::Organisation(Box::new(active.clone()), None))
        .await
        .expect("undo a creation");
    assert_eq!(store.organisation(&active.kbo).await.expect("read"), None);
    let v1 = authorisation("BSC/2024/001", 1, AuthorisationStatus::Active);
    store.put_authorisation(&v1).await.expect("v1");
    let v2 = authorisation("BSC/2024/001", 2, AuthorisationStatus::Active);
    store.put_authorisation(&v2).await.expect("v2");
    store
        .undo(&RegistryUndo::Authorisation(
            Box::new(v2.clone()),
            Some(Box::new(v1.clone())),
        ))
        .await
        .expect("undo a version");
    assert_eq!(
        store.authorisations().await.expect("list"),
        vec![v1.clone()]
    );
    assert_eq!(
        store
            .authorisation_history("BSC/2024/001")
            .await
            .expect("history"),
        vec![v1.clone()],
        "the undone version leaves the history"
    );
    // The version can be written again.
    store.put_authorisation(&v2).await.expect("v2 again");
    // A version written since (through another broker) stands: the
    // undo of the one before it is refused, and nothing changes.
    let v3 = authorisation("BSC/2024/001", 3, AuthorisationStatus::Active);
    store.put_authorisation(&v3).await.expect("v3");
    let refused = store
        .undo(&RegistryUndo::Authorisation(
            Box::new(v2.clone()),
            Some(Box::new(v1.clone())),
        ))
        .await;
    assert!(
        matches!(refused, Err(StorageError::Conflict(_))),
        "an undo under a later version: {refused:?}"
    );
    assert_eq!(
        store.authorisations().await.expect("list"),
        vec![v3.clone()]
    );
    assert_eq!(
        store
            .authorisation_history("BSC/2024/001")
            .await
            .expect("history")
            .len(),
        3
    );
}
