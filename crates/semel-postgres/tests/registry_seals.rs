//! No rule without its entry, for the registry on PostgreSQL (issue 36):
//! an organisation, dataset, purpose or authorisation is honoured only as
//! a broker sealed it with the audit entry that recorded its change; a
//! staged change is seen by no one until sealed; rules from before seals
//! were kept are adopted once, under one entry.

mod common;

use common::record;
use semel_core::seal::RowSealer;
use semel_core::{AuthorisationStatus, OrganisationStatus};
use semel_postgres::{PgAudit, PgRegistry, testing::TestDatabase};
use semel_storage::conformance::registry;
use semel_storage::{Appended, RegistryStore, RegistryWrite, Staged};

fn sealer() -> RowSealer {
    RowSealer::derive(&[42; 32])
}

/// Appends one entry to the log, as a broker records a change.
async fn entry(log: &mut PgAudit, i: u64) -> Appended {
    let placed = log.append(vec![record(i)]).await.expect("append");
    Appended {
        sequence: placed[0].sequence,
        hash: placed[0].hash,
    }
}

/// Stages `writes`, records them, and seals them with their entry.
async fn change(reg: &PgRegistry, log: &mut PgAudit, i: u64, writes: &[RegistryWrite]) {
    let Staged::Open(open) = reg.stage(writes).await.expect("stage") else {
        panic!("PostgreSQL stages in an open transaction");
    };
    open.seal(entry(log, i).await).await.expect("seal");
}

#[tokio::test]
async fn rules_are_honoured_only_as_sealed_with_their_entry() {
    let Some(db) = TestDatabase::start("registry_seals").await else {
        return;
    };
    let reg = PgRegistry::connect(&db.url)
        .await
        .expect("registry")
        .sealed_by(sealer());
    let mut log = PgAudit::connect(&db.url).await.expect("log");
    let org = registry::organisation("0566988259", OrganisationStatus::Active);
    let auth = registry::authorisation("BSC/2026/001", 1, AuthorisationStatus::Active);
    change(
        &reg,
        &mut log,
        0,
        &[
            RegistryWrite::Organisation {
                after: Box::new(org.clone()),
                before: None,
            },
            RegistryWrite::Authorisation {
                after: Box::new(auth.clone()),
                before: None,
            },
        ],
    )
    .await;
    assert_eq!(reg.organisations().await.expect("read"), vec![org.clone()]);
    assert_eq!(
        reg.authorisations().await.expect("read"),
        vec![auth.clone()]
    );
    assert_eq!(
        reg.authorisation_history("BSC/2026/001")
            .await
            .expect("read"),
        vec![auth.clone()]
    );
    assert_eq!(RegistryStore::unsealed(&reg), 0);

    // Written by SQL: a copy under another reference (its seal copied),
    // an organisation with no seal, a version edited in place.
    db.sql(
        "INSERT INTO registry_records (kind, key, value, audit_sequence, audit_hash, seal) \
         SELECT kind, 'BSC/2026/666', value || jsonb_build_object('reference', 'BSC/2026/666'), \
                audit_sequence, audit_hash, seal \
           FROM registry_records WHERE kind = 'authorisation'; \
         INSERT INTO registry_records (kind, key, value) \
         SELECT kind, '0314595348', value || jsonb_build_object('kbo', '0314595348') \
           FROM registry_records WHERE kind = 'organisation'; \
         UPDATE registry_authorisation_history \
            SET value = value || jsonb_build_object('status', 'suspended')",
    )
    .await
    .expect("tamper");
    assert_eq!(
        reg.authorisations().await.expect("read"),
        vec![auth.clone()]
    );
    assert_eq!(reg.organisations().await.expect("read"), vec![org.clone()]);
    assert!(
        reg.authorisation_history("BSC/2026/001")
            .await
            .expect("read")
            .is_empty(),
        "an edited version is not honoured"
    );
    assert_eq!(
        RegistryStore::organisation(&reg, &semel_core::Kbo::parse("0314595348").expect("kbo"))
            .await
            .expect("read"),
        None
    );
    assert!(RegistryStore::unsealed(&reg) >= 3);
    // A value no broker could have written is left out too.
    db.sql("UPDATE registry_records SET value = value || '{\"status\": \"Bogus\"}' WHERE kind = 'organisation'")
        .await
        .expect("an unreadable value");
    assert!(reg.organisations().await.expect("read").is_empty());

    // The entry a rule names, rewritten: the rule is no longer honoured.
    db.sql("UPDATE audit_entries SET encoding = encoding || '\\x00'::bytea WHERE sequence = 0")
        .await
        .expect("rewrite the entry");
    assert!(reg.organisations().await.expect("read").is_empty());
    assert!(reg.authorisations().await.expect("read").is_empty());
}

#[tokio::test]
async fn a_staged_change_is_seen_by_no_one_until_sealed() {
    let Some(db) = TestDatabase::start("registry_staged").await else {
        return;
    };
    let a = PgRegistry::connect(&db.url)
        .await
        .expect("broker a")
        .sealed_by(sealer());
    let b = PgRegistry::connect(&db.url)
        .await
        .expect("broker b")
        .sealed_by(sealer());
    let mut log = PgAudit::connect(&db.url).await.expect("log");
    let org = registry::organisation("0566988259", OrganisationStatus::Active);
    change(
        &a,
        &mut log,
        0,
        &[RegistryWrite::Organisation {
            after: Box::new(org.clone()),
            before: None,
        }],
    )
    .await;
    let suspended = semel_core::Organisation {
        status: OrganisationStatus::Suspended,
        ..org.clone()
    };
    let Staged::Open(open) = a
        .stage(&[RegistryWrite::Organisation {
            after: Box::new(suspended.clone()),
            before: Some(Box::new(org.clone())),
        }])
        .await
        .expect("stage a suspension")
    else {
        panic!("open");
    };
    // While its entry is being written, every broker reads the rule as it
    // stands, and a change over it waits, then finds it moved.
    assert_eq!(b.organisations().await.expect("read"), vec![org.clone()]);
    let racing = tokio::spawn({
        let (org, url) = (org.clone(), db.url.clone());
        async move {
            let b = PgRegistry::connect(&url)
                .await
                .expect("broker b")
                .sealed_by(sealer());
            let renamed = semel_core::Organisation {
                name: "renamed".into(),
                ..org.clone()
            };
            b.stage(&[RegistryWrite::Organisation {
                after: Box::new(renamed),
                before: Some(Box::new(org)),
            }])
            .await
            .map(|_| ())
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    open.seal(entry(&mut log, 1).await).await.expect("seal");
    assert!(
        matches!(
            racing.await.expect("race"),
            Err(semel_storage::StorageError::Conflict(_))
        ),
        "a change over a rule being changed is refused once it is"
    );
    assert_eq!(
        b.organisations().await.expect("read"),
        vec![suspended.clone()]
    );

    // Dropped (its entry failed): as if never made.
    let Staged::Open(open) = a
        .stage(&[RegistryWrite::Organisation {
            after: Box::new(org.clone()),
            before: Some(Box::new(suspended.clone())),
        }])
        .await
        .expect("stage a reinstatement")
    else {
        panic!("open");
    };
    drop(open);
    assert_eq!(b.organisations().await.expect("read"), [suspended]);
}

#[tokio::test]
async fn rules_from_before_seals_are_adopted_once_under_one_entry() {
    let Some(db) = TestDatabase::start("registry_adoption").await else {
        return;
    };
    // Rules written as an older broker wrote them: no seal, and the
    // migration's row saying adoption is due.
    let old = PgRegistry::connect(&db.url).await.expect("old broker");
    let org = registry::organisation("0566988259", OrganisationStatus::Active);
    let v1 = registry::authorisation("BSC/2026/001", 1, AuthorisationStatus::Active);
    let v2 = registry::authorisation("BSC/2026/001", 2, AuthorisationStatus::Suspended);
    old.put_organisation(&org).await.expect("organisation");
    old.put_authorisation(&v1).await.expect("v1");
    old.put_authorisation(&v2).await.expect("v2");
    db.sql("INSERT INTO registry_adoption (id) VALUES (0)")
        .await
        .expect("adoption due");

    let reg = PgRegistry::connect(&db.url)
        .await
        .expect("registry")
        .sealed_by(sealer());
    assert!(
        reg.organisations().await.expect("read").is_empty(),
        "unsealed rules are not honoured before their adoption"
    );
    let mut log = PgAudit::connect(&db.url).await.expect("log");
    let (open, detail) = reg
        .adoption()
        .await
        .expect("adoption")
        .expect("adoption is due");
    assert!(
        detail.contains("1 organisations")
            && detail.contains("1 authorisations")
            && detail.contains("2 authorisation versions")
            && detail.contains("sha256 of the rows adopted: "),
        "{detail}"
    );
    open.seal(entry(&mut log, 0).await).await.expect("seal");
    assert_eq!(reg.organisations().await.expect("read"), [org]);
    assert_eq!(reg.authorisations().await.expect("read"), vec![v2.clone()]);
    assert_eq!(
        reg.authorisation_history("BSC/2026/001")
            .await
            .expect("read"),
        [v1, v2]
    );
    // Once: a rule inserted afterwards is not adopted.
    assert!(reg.adoption().await.expect("adoption").is_none());
    old.put_purpose(&semel_core::Purpose {
        code: semel_core::PurposeCode::new("FORGED").expect("code"),
        description: "forged".into(),
        legal_basis: "none".into(),
    })
    .await
    .expect("an unsealed purpose");
    assert!(reg.adoption().await.expect("adoption").is_none());
    assert!(reg.purposes().await.expect("read").is_empty());
}
