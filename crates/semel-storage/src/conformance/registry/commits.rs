//! The registry's cases on commits: a write only over what it read, all or
//! nothing, staged changes sealed or dropped, applies with their marker.

use super::*;

/// An amendment names the record as it read it: one made over a change
/// stored meanwhile (a suspension through another broker) is refused,
/// and the suspension stands.
pub async fn a_commit_writes_only_over_what_it_read(store: &dyn RegistryStore) {
    let active = organisation("0566988259", OrganisationStatus::Active);
    store
        .commit(&[RegistryWrite::Organisation {
            after: Box::new(active.clone()),
            before: None,
        }])
        .await
        .expect("create");
    // Creating it again: it exists.
    conflict(
        store
            .commit(&[RegistryWrite::Organisation {
                after: Box::new(active.clone()),
                before: None,
            }])
            .await,
        "a second creation",
    );
    let suspended = Organisation {
        status: OrganisationStatus::Suspended,
        ..active.clone()
    };
    store
        .commit(&[RegistryWrite::Organisation {
            after: Box::new(suspended.clone()),
            before: Some(Box::new(active.clone())),
        }])
        .await
        .expect("suspend");
    // An amendment of the name, read before the suspension.
    let renamed = Organisation {
        name: "renamed".into(),
        ..active.clone()
    };
    let message = conflict(
        store
            .commit(&[RegistryWrite::Organisation {
                after: Box::new(renamed),
                before: Some(Box::new(active.clone())),
            }])
            .await,
        "an amendment over a suspension",
    );
    assert!(
        message.contains(&format!("organisation {}", active.kbo)),
        "{message}"
    );
    assert_eq!(
        store.organisation(&active.kbo).await.expect("read"),
        Some(suspended.clone()),
        "the suspension stands"
    );
    // An authorisation's next version names the version it follows.
    let v1 = authorisation("BSC/2026/301", 1, AuthorisationStatus::Active);
    store
        .commit(&[RegistryWrite::Authorisation {
            after: Box::new(v1.clone()),
            before: None,
        }])
        .await
        .expect("version 1");
    let v2 = |legal: &str| Authorisation {
        version: 2,
        legal_basis: legal.into(),
        ..v1.clone()
    };
    store
        .commit(&[RegistryWrite::Authorisation {
            after: Box::new(v2("first")),
            before: Some(Box::new(v1.clone())),
        }])
        .await
        .expect("version 2");
    conflict(
        store
            .commit(&[RegistryWrite::Authorisation {
                after: Box::new(v2("second")),
                before: Some(Box::new(v1.clone())),
            }])
            .await,
        "a second version 2",
    );
    let history = store
        .authorisation_history("BSC/2026/301")
        .await
        .expect("history");
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].legal_basis, "first");
    // Datasets and purposes alike.
    let d = dataset("test.one", "one");
    store
        .commit(&[RegistryWrite::Dataset {
            after: Box::new(d.clone()),
            before: None,
        }])
        .await
        .expect("dataset");
    let stale = dataset("test.one", "stale");
    conflict(
        store
            .commit(&[RegistryWrite::Dataset {
                after: Box::new(dataset("test.one", "two")),
                before: Some(Box::new(stale)),
            }])
            .await,
        "a dataset amended over what it did not read",
    );
    assert_eq!(store.datasets().await.expect("read"), [d]);
}

/// A commit of several writes whose last is refused writes none of
/// them; an undo of several takes back all or none.
pub async fn a_commit_is_all_or_nothing_and_so_is_its_undo(store: &dyn RegistryStore) {
    let taken = purpose("TAKEN");
    store
        .commit(&[RegistryWrite::Purpose {
            after: Box::new(taken.clone()),
            before: None,
        }])
        .await
        .expect("purpose");
    let org = organisation("0566988259", OrganisationStatus::Active);
    let v1 = authorisation("BSC/2026/302", 1, AuthorisationStatus::Active);
    let writes = vec![
        RegistryWrite::Organisation {
            after: Box::new(org.clone()),
            before: None,
        },
        RegistryWrite::Authorisation {
            after: Box::new(v1.clone()),
            before: None,
        },
        RegistryWrite::Dataset {
            after: Box::new(dataset("test.two", "two")),
            before: None,
        },
        // Created meanwhile: the whole commit is refused.
        RegistryWrite::Purpose {
            after: Box::new(purpose("TAKEN")),
            before: None,
        },
    ];
    conflict(store.commit(&writes).await, "a commit with a stale write");
    assert!(store.organisations().await.expect("read").is_empty());
    assert!(store.authorisations().await.expect("read").is_empty());
    assert!(
        store
            .authorisation_history("BSC/2026/302")
            .await
            .expect("read")
            .is_empty()
    );
    assert!(store.datasets().await.expect("read").is_empty());
    assert_eq!(store.purposes().await.expect("read"), [taken]);
    // Without it, all of it.
    let writes = &writes[..3];
    store.commit(writes).await.expect("commit");
    assert_eq!(
        store.organisations().await.expect("read"),
        std::slice::from_ref(&org)
    );
    assert_eq!(
        store.authorisations().await.expect("read"),
        std::slice::from_ref(&v1)
    );
    assert_eq!(store.datasets().await.expect("read").len(), 1);
    // An undo of all three, one of which moved since: none is undone.
    let suspended = Organisation {
        status: OrganisationStatus::Suspended,
        ..org.clone()
    };
    store
        .commit(&[RegistryWrite::Organisation {
            after: Box::new(suspended.clone()),
            before: Some(Box::new(org.clone())),
        }])
        .await
        .expect("suspend");
    let undos: Vec<RegistryUndo> = writes.iter().map(RegistryWrite::undo).collect();
    conflict(store.undo_all(&undos).await, "an undo over a later change");
    assert_eq!(
        store.organisations().await.expect("read"),
        std::slice::from_ref(&suspended)
    );
    assert_eq!(store.authorisations().await.expect("read"), [v1]);
    assert_eq!(store.datasets().await.expect("read").len(), 1);
    // Back to what was written: all of it is undone.
    store
        .commit(&[RegistryWrite::Organisation {
            after: Box::new(org.clone()),
            before: Some(Box::new(suspended)),
        }])
        .await
        .expect("reinstate");
    store.undo_all(&undos).await.expect("undo all");
    assert!(store.organisations().await.expect("read").is_empty());
    assert!(store.authorisations().await.expect("read").is_empty());
    assert!(
        store
            .authorisation_history("BSC/2026/302")
            .await
            .expect("read")
            .is_empty()
    );
    assert!(store.datasets().await.expect("read").is_empty());
}

/// The entry a test change is sealed with.
const AT: crate::Appended = crate::Appended {
    sequence: 0,
    hash: [0; 32],
};

/// A staged change is the change [`RegistryStore::commit`] makes, but
/// in force only once sealed with its entry: left open, no reader sees
/// it; dropped (its entry failed), it is as if never made; staged over
/// a record that moved, it is refused.
pub async fn a_staged_change_is_in_force_once_sealed_and_never_if_dropped(
    store: &dyn RegistryStore,
) {
    let org = organisation("0566988259", OrganisationStatus::Active);
    let create = [RegistryWrite::Organisation {
        after: Box::new(org.clone()),
        before: None,
    }];
    match store.stage(&create).await.expect("stage") {
        crate::Staged::Committed(undos) => store.undo_all(&undos).await.expect("undo"),
        crate::Staged::Open(open) => {
            assert!(store.organisations().await.expect("read").is_empty());
            assert_eq!(store.organisation(&org.kbo).await.expect("read"), None);
            drop(open);
        }
    }
    assert!(store.organisations().await.expect("read").is_empty());
    match store.stage(&create).await.expect("stage again") {
        crate::Staged::Committed(_) => {}
        crate::Staged::Open(open) => {
            assert!(store.organisations().await.expect("read").is_empty());
            open.seal(AT).await.expect("seal");
        }
    }
    assert_eq!(
        store.organisations().await.expect("read"),
        std::slice::from_ref(&org)
    );
    conflict(
        store.stage(&create).await.map(|_| ()),
        "a stage over a record created meanwhile",
    );
    let suspended = Organisation {
        status: OrganisationStatus::Suspended,
        ..org.clone()
    };
    let suspend = [RegistryWrite::Organisation {
        after: Box::new(suspended.clone()),
        before: Some(Box::new(org.clone())),
    }];
    match store.stage(&suspend).await.expect("stage a suspension") {
        crate::Staged::Committed(_) => {}
        crate::Staged::Open(open) => {
            // The record as it was stays in force until the seal.
            assert_eq!(
                store.organisation(&org.kbo).await.expect("read"),
                Some(org.clone())
            );
            open.seal(AT).await.expect("seal");
        }
    }
    assert_eq!(
        store.organisation(&org.kbo).await.expect("read"),
        Some(suspended)
    );
}

/// A registry apply's writes are committed with its marker, turned
/// committed with its closing words, in one commit; an apply whose
/// marker was settled (removed) meanwhile commits nothing.
pub async fn an_apply_commits_with_its_marker_or_not_at_all(store: &dyn RegistryStore) {
    let marker = |id: &str| crate::ApplyMarker {
        id: id.to_owned(),
        broker: String::new(),
        organisation: kbo("0212345668"),
        end_user: "admin@operator".to_owned(),
        committed: false,
        closing: String::new(),
    };
    let said = |markers: Vec<crate::ApplyMarker>| -> Vec<(String, bool, String)> {
        markers
            .into_iter()
            .map(|m| (m.id, m.committed, m.closing))
            .collect()
    };
    let write = |code: &str| {
        vec![RegistryWrite::Purpose {
            after: Box::new(purpose(code)),
            before: None,
        }]
    };
    // Opened, then committed with its writes.
    store.open_apply(&marker("apply 1")).await.expect("open");
    assert_eq!(
        said(store.unsettled_applies().await.expect("markers")),
        [("apply 1".to_owned(), false, String::new())]
    );
    store
        .commit_apply(
            &write("ONE"),
            &[AT],
            "apply 1",
            "registry applied: 1 created",
        )
        .await
        .expect("commit");
    assert_eq!(store.purposes().await.expect("read"), [purpose("ONE")]);
    assert_eq!(
        said(store.unsettled_applies().await.expect("markers")),
        [(
            "apply 1".to_owned(),
            true,
            "registry applied: 1 created".to_owned()
        )]
    );
    // Committed once only.
    conflict(
        store
            .commit_apply(&write("TWO"), &[AT], "apply 1", "again")
            .await,
        "a second commit of one apply",
    );
    assert_eq!(store.purposes().await.expect("read"), [purpose("ONE")]);
    // Removed only as it is.
    assert!(!store.close_apply("apply 1", false).await.expect("close"));
    assert!(store.close_apply("apply 1", true).await.expect("close"));
    assert!(store.unsettled_applies().await.expect("markers").is_empty());
    // Settled as not applied before its commit: the commit is refused.
    store.open_apply(&marker("apply 2")).await.expect("open");
    assert!(store.close_apply("apply 2", false).await.expect("settle"));
    conflict(
        store
            .commit_apply(&write("THREE"), &[AT], "apply 2", "late")
            .await,
        "the commit of an apply settled as not applied",
    );
    assert_eq!(store.purposes().await.expect("read"), [purpose("ONE")]);
    // A stale write: neither the writes nor the marker change.
    store.open_apply(&marker("apply 3")).await.expect("open");
    conflict(
        store
            .commit_apply(&write("ONE"), &[AT], "apply 3", "stale")
            .await,
        "an apply over a record created meanwhile",
    );
    assert_eq!(
        said(store.unsettled_applies().await.expect("markers")),
        [("apply 3".to_owned(), false, String::new())]
    );
}

/// A revocation is a registry change like the others: staged, it is in
/// force once sealed with its entry and never if dropped; it is written
/// only while the certificate is not revoked yet (a second one is
/// refused, the first record stands), and an undo takes it back.
pub async fn a_revocation_is_staged_like_any_change(store: &dyn RegistryStore) {
    let first = RevokedCertificate {
        id: CertificateId::Sha256("cd".repeat(32)),
        reason: "key compromise".into(),
        revoked_at: datetime!(2026-02-01 0:00 UTC),
    };
    let revoke = [RegistryWrite::Revocation {
        after: Box::new(first.clone()),
    }];
    match store.stage(&revoke).await.expect("stage") {
        crate::Staged::Committed(undos) => store.undo_all(&undos).await.expect("undo"),
        crate::Staged::Open(open) => {
            assert!(
                store.revoked_certificates().await.expect("read").is_empty(),
                "a revocation staged is not in force before its seal"
            );
            drop(open);
        }
    }
    assert!(store.revoked_certificates().await.expect("read").is_empty());
    match store.stage(&revoke).await.expect("stage again") {
        crate::Staged::Committed(_) => {}
        crate::Staged::Open(open) => open.seal(AT).await.expect("seal"),
    }
    assert_eq!(
        store.revoked_certificates().await.expect("read"),
        std::slice::from_ref(&first)
    );
    // Revoked already: a second revocation is refused, the first stands.
    let again = RevokedCertificate {
        reason: "again".into(),
        revoked_at: datetime!(2026-03-01 0:00 UTC),
        ..first.clone()
    };
    conflict(
        store
            .stage(&[RegistryWrite::Revocation {
                after: Box::new(again.clone()),
            }])
            .await
            .map(|_| ()),
        "a second revocation of one certificate",
    );
    conflict(
        store
            .commit(&[RegistryWrite::Revocation {
                after: Box::new(again),
            }])
            .await,
        "a second revocation committed",
    );
    assert_eq!(
        store.revoked_certificates().await.expect("read"),
        std::slice::from_ref(&first)
    );
    // Another certificate, committed with another change at once, and
    // taken back with it.
    let other = RevokedCertificate {
        id: CertificateId::Serial("1f".into()),
        ..first.clone()
    };
    let writes = [
        RegistryWrite::Revocation {
            after: Box::new(other.clone()),
        },
        RegistryWrite::Organisation {
            after: Box::new(organisation("0566988259", OrganisationStatus::Active)),
            before: None,
        },
    ];
    store.commit(&writes).await.expect("commit");
    let mut all = store.revoked_certificates().await.expect("read");
    all.sort_by_key(|r| r.id.key());
    let mut expected = vec![first.clone(), other];
    expected.sort_by_key(|r| r.id.key());
    assert_eq!(all, expected);
    store
        .undo_all(&writes.iter().map(RegistryWrite::undo).collect::<Vec<_>>())
        .await
        .expect("undo");
    assert_eq!(
        store.revoked_certificates().await.expect("read"),
        std::slice::from_ref(&first)
    );
    assert!(store.organisations().await.expect("read").is_empty());
}
