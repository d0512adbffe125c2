//! The registry's cases on applications, for an authorisation and for
//! membership: kept, decided, undone, and one pending at a time.

use super::*;

pub async fn applications_are_kept_decided_and_undone(store: &dyn RegistryStore) {
    use semel_core::{ApplicationState, AuthorisationApplication};
    assert!(store.applications().await.expect("read").is_empty());
    let pending = |id: &str| AuthorisationApplication {
        id: id.into(),
        proposed: authorisation("BSC/2026/201", 1, AuthorisationStatus::Active),
        justification: "debt mediation files".into(),
        applicant: kbo("0566988259"),
        applied_by: "clerk-1".into(),
        applied_at: datetime!(2026-03-01 9:00 UTC),
        state: ApplicationState::Pending,
        decided_by: None,
        decided_by_person: None,
        decided_at: None,
        decision_note: String::new(),
        approved_version: None,
    };
    let (a, mut b) = (pending("01b-second"), pending("01a-first"));
    // One pending application per reference and applicant: the second
    // is for another reference.
    b.proposed.reference = AuthorisationRef::new("BSC/2026/202").expect("reference");
    store.put_application(&a).await.expect("put");
    store.put_application(&b).await.expect("put");
    assert_eq!(
        store.applications().await.expect("read"),
        [b.clone(), a.clone()],
        "by id"
    );
    let decided = AuthorisationApplication {
        state: ApplicationState::Approved,
        decided_by: Some(kbo("0314595348")),
        decided_by_person: Some("commissioner".into()),
        decided_at: Some(datetime!(2026-03-02 9:00 UTC)),
        decision_note: "as asked".into(),
        approved_version: Some(1),
        ..a.clone()
    };
    store.put_application(&decided).await.expect("decide");
    assert_eq!(store.applications().await.expect("read")[1], decided);
    // A decision whose entry failed is taken back to pending; an
    // application whose entry failed disappears.
    store
        .undo(&RegistryUndo::Application(
            Box::new(decided.clone()),
            Some(Box::new(a.clone())),
        ))
        .await
        .expect("undo the decision");
    store
        .undo(&RegistryUndo::Application(Box::new(b.clone()), None))
        .await
        .expect("undo the application");
    assert_eq!(store.applications().await.expect("read"), [a]);

    // Applications for membership: kept, decided, undone alike.
    assert!(store.memberships().await.expect("read").is_empty());
    let m = semel_core::MembershipApplication {
        id: "01c-member".into(),
        kbo: kbo("0999999724"),
        name: "OCMW Test".into(),
        roles: [semel_core::Role::Consumer].into_iter().collect(),
        contact: "ict@ocmw.example".into(),
        note: String::new(),
        certificate: "sha256:00".into(),
        applied_at: datetime!(2026-03-01 9:00 UTC),
        state: ApplicationState::Pending,
        decided_by_person: None,
        decided_at: None,
        decision_note: String::new(),
    };
    store.put_membership(&m).await.expect("put");
    let approved = semel_core::MembershipApplication {
        state: ApplicationState::Approved,
        decided_by_person: Some("operator".into()),
        decided_at: Some(datetime!(2026-03-02 9:00 UTC)),
        ..m.clone()
    };
    store.put_membership(&approved).await.expect("decide");
    assert_eq!(
        store.memberships().await.expect("read"),
        std::slice::from_ref(&approved)
    );
    store
        .undo(&RegistryUndo::Membership(
            Box::new(approved),
            Some(Box::new(m.clone())),
        ))
        .await
        .expect("undo");
    assert_eq!(store.memberships().await.expect("read"), [m]);
}

fn application(id: &str, reference: &str) -> semel_core::AuthorisationApplication {
    semel_core::AuthorisationApplication {
        id: id.into(),
        proposed: authorisation(reference, 1, AuthorisationStatus::Active),
        justification: "debt mediation files".into(),
        applicant: kbo("0566988259"),
        applied_by: "clerk-1".into(),
        applied_at: datetime!(2026-03-01 9:00 UTC),
        state: semel_core::ApplicationState::Pending,
        decided_by: None,
        decided_by_person: None,
        decided_at: None,
        decision_note: String::new(),
        approved_version: None,
    }
}

fn membership(id: &str, number: &str) -> semel_core::MembershipApplication {
    semel_core::MembershipApplication {
        id: id.into(),
        kbo: kbo(number),
        name: "OCMW Test".into(),
        roles: [semel_core::Role::Consumer].into_iter().collect(),
        contact: "ict@ocmw.example".into(),
        note: String::new(),
        certificate: "sha256:00".into(),
        applied_at: datetime!(2026-03-01 9:00 UTC),
        state: semel_core::ApplicationState::Pending,
        decided_by_person: None,
        decided_at: None,
        decision_note: String::new(),
    }
}

/// Two pending applications of one applicant for one reference cannot
/// both be stored, however they are written; a decided one does not
/// count.
pub async fn one_application_pending_per_reference_and_applicant(store: &dyn RegistryStore) {
    let first = application("01a", "BSC/2026/401");
    store
        .commit(&[RegistryWrite::Application {
            after: Box::new(first.clone()),
            before: None,
        }])
        .await
        .expect("first");
    let second = application("01b", "BSC/2026/401");
    conflict(
        store
            .commit(&[RegistryWrite::Application {
                after: Box::new(second.clone()),
                before: None,
            }])
            .await,
        "a second pending application",
    );
    // Not by an upsert either.
    conflict(store.put_application(&second).await, "a second one put");
    assert_eq!(
        store.applications().await.expect("read"),
        std::slice::from_ref(&first)
    );
    // Another reference, or another applicant: fine.
    store
        .commit(&[RegistryWrite::Application {
            after: Box::new(application("01c", "BSC/2026/402")),
            before: None,
        }])
        .await
        .expect("another reference");
    let mut other = application("01d", "BSC/2026/401");
    other.applicant = kbo("0314595348");
    store
        .commit(&[RegistryWrite::Application {
            after: Box::new(other),
            before: None,
        }])
        .await
        .expect("another applicant");
    // Once the first is decided, a new one may be pending.
    let rejected = semel_core::AuthorisationApplication {
        state: semel_core::ApplicationState::Rejected,
        ..first.clone()
    };
    store
        .commit(&[
            RegistryWrite::Application {
                after: Box::new(rejected.clone()),
                before: Some(Box::new(first.clone())),
            },
            RegistryWrite::Application {
                after: Box::new(second.clone()),
                before: None,
            },
        ])
        .await
        .expect("decided, then a new one");
    // Two decisions made at once on one application: one stands.
    let approved = semel_core::AuthorisationApplication {
        state: semel_core::ApplicationState::Approved,
        ..first.clone()
    };
    conflict(
        store
            .commit(&[RegistryWrite::Application {
                after: Box::new(approved),
                before: Some(Box::new(first.clone())),
            }])
            .await,
        "a second decision",
    );
    let stored = store.applications().await.expect("read");
    assert_eq!(stored.iter().find(|a| a.id == "01a"), Some(&rejected));
    // Taking the decision back would make two pending: refused.
    conflict(
        store
            .undo(&RegistryUndo::Application(
                Box::new(rejected),
                Some(Box::new(first)),
            ))
            .await,
        "an undo that makes two pending",
    );
}

/// One pending application for membership per enterprise number.
pub async fn one_membership_application_pending_per_enterprise_number(store: &dyn RegistryStore) {
    let first = membership("01a", "0999999724");
    store
        .commit(&[RegistryWrite::Membership {
            after: Box::new(first.clone()),
            before: None,
        }])
        .await
        .expect("first");
    conflict(
        store
            .commit(&[RegistryWrite::Membership {
                after: Box::new(membership("01b", "0999999724")),
                before: None,
            }])
            .await,
        "a second pending membership application",
    );
    conflict(
        store.put_membership(&membership("01b", "0999999724")).await,
        "a second one put",
    );
    store
        .commit(&[RegistryWrite::Membership {
            after: Box::new(membership("01c", "0566988259")),
            before: None,
        }])
        .await
        .expect("another number");
    // Approved and rejected at once: one decision stands.
    let decide = |state| semel_core::MembershipApplication {
        state,
        ..first.clone()
    };
    store
        .commit(&[RegistryWrite::Membership {
            after: Box::new(decide(semel_core::ApplicationState::Approved)),
            before: Some(Box::new(first.clone())),
        }])
        .await
        .expect("approve");
    conflict(
        store
            .commit(&[RegistryWrite::Membership {
                after: Box::new(decide(semel_core::ApplicationState::Rejected)),
                before: Some(Box::new(first.clone())),
            }])
            .await,
        "a rejection over an approval",
    );
    assert_eq!(store.memberships().await.expect("read").len(), 2);
}
