//! The registry's manifest on PostgreSQL (issue 36, point 5): a seal
//! proves a broker wrote a rule with its entry, not that the rule is still
//! the newest; the sealed manifest says which entry each rule must name
//! now. An older sealed row put back by SQL, a rule deleted or added, a
//! manifest edited, a registry rolled back while a broker runs: each is
//! caught, and a database from before the manifest adopts one, once.

mod common;

use common::{change, entry, sealed_registry};
use semel_core::{AuthorisationStatus, Kbo, Organisation, OrganisationStatus};
use semel_postgres::{PgAudit, PgError, testing::TestDatabase};
use semel_storage::conformance::registry;
use semel_storage::{RegistryStore, RegistryWrite, Staged};

const KBO: &str = "0566988259";
const REFERENCE: &str = "BSC/2026/001";

fn organisation(status: OrganisationStatus) -> Organisation {
    registry::organisation(KBO, status)
}

fn kbo() -> Kbo {
    Kbo::parse(KBO).expect("kbo")
}

/// An active organisation and its active authorisation (version 1).
fn first_writes() -> Vec<RegistryWrite> {
    vec![
        RegistryWrite::Organisation {
            after: Box::new(organisation(OrganisationStatus::Active)),
            before: None,
        },
        RegistryWrite::Authorisation {
            after: Box::new(registry::authorisation(
                REFERENCE,
                1,
                AuthorisationStatus::Active,
            )),
            before: None,
        },
    ]
}

/// The organisation suspended, and its authorisation suspended (version 2).
fn suspensions() -> Vec<RegistryWrite> {
    vec![
        RegistryWrite::Organisation {
            after: Box::new(organisation(OrganisationStatus::Suspended)),
            before: Some(Box::new(organisation(OrganisationStatus::Active))),
        },
        RegistryWrite::Authorisation {
            after: Box::new(registry::authorisation(
                REFERENCE,
                2,
                AuthorisationStatus::Suspended,
            )),
            before: Some(Box::new(registry::authorisation(
                REFERENCE,
                1,
                AuthorisationStatus::Active,
            ))),
        },
    ]
}

#[tokio::test]
async fn an_older_sealed_row_put_back_is_not_honoured() {
    let Some(db) = TestDatabase::start("manifest_replay").await else {
        return;
    };
    let reg = sealed_registry(&db).await;
    let mut log = PgAudit::connect(&db.url).await.expect("log");
    change(&reg, &mut log, 0, &first_writes())
        .await
        .expect("first");
    // What a database administrator keeps aside: the rules as they were,
    // each with its seal and entry.
    db.sql("CREATE TABLE kept AS SELECT * FROM registry_records")
        .await
        .expect("keep a copy");
    let writes = suspensions();
    change(&reg, &mut log, 1, &writes[..1])
        .await
        .expect("suspend the organisation");
    change(&reg, &mut log, 2, &writes[1..])
        .await
        .expect("suspend the authorisation");
    let suspended = registry::authorisation(REFERENCE, 2, AuthorisationStatus::Suspended);
    assert_eq!(
        reg.authorisations().await.expect("read"),
        vec![suspended.clone()]
    );
    assert_eq!(
        reg.organisations().await.expect("read"),
        vec![organisation(OrganisationStatus::Suspended)]
    );
    assert_eq!(RegistryStore::unsealed(&reg), 0);

    // The authorisation put back as it was before its suspension: its old
    // value, entry and seal, all of which verify.
    db.sql(
        "UPDATE registry_records r SET value = k.value, audit_sequence = k.audit_sequence, \
                audit_hash = k.audit_hash, seal = k.seal \
           FROM kept k WHERE r.kind = k.kind AND r.key = k.key AND r.kind = 'authorisation'",
    )
    .await
    .expect("put the authorisation back");
    assert!(
        reg.authorisations().await.expect("read").is_empty(),
        "an older sealed authorisation put back is not honoured"
    );
    let after_authorisation = RegistryStore::unsealed(&reg);
    assert!(after_authorisation >= 1, "the counter moves");
    // Its versions are untouched: still honoured.
    assert_eq!(
        reg.authorisation_history(REFERENCE).await.expect("read"),
        vec![
            registry::authorisation(REFERENCE, 1, AuthorisationStatus::Active),
            suspended
        ]
    );

    // The same for the organisation's suspension, read whole or alone.
    db.sql(
        "UPDATE registry_records r SET value = k.value, audit_sequence = k.audit_sequence, \
                audit_hash = k.audit_hash, seal = k.seal \
           FROM kept k WHERE r.kind = k.kind AND r.key = k.key AND r.kind = 'organisation'",
    )
    .await
    .expect("put the organisation back");
    assert!(reg.organisations().await.expect("read").is_empty());
    assert_eq!(
        RegistryStore::organisation(&reg, &kbo())
            .await
            .expect("read"),
        None
    );
    assert!(RegistryStore::unsealed(&reg) >= after_authorisation + 2);

    // A later change does not adopt the row put back: the manifest is
    // rewritten from the one it verified, not from the rows.
    change(
        &reg,
        &mut log,
        3,
        &[RegistryWrite::Purpose {
            after: Box::new(semel_core::Purpose {
                code: semel_core::PurposeCode::new("RIS_ELIGIBILITY").expect("code"),
                description: "d".into(),
                legal_basis: "l".into(),
            }),
            before: None,
        }],
    )
    .await
    .expect("another change");
    assert!(reg.authorisations().await.expect("read").is_empty());
    assert!(reg.organisations().await.expect("read").is_empty());
    assert_eq!(reg.purposes().await.expect("read").len(), 1);
}

#[tokio::test]
async fn a_rule_deleted_is_reported_and_a_manifest_altered_honours_nothing() {
    let Some(db) = TestDatabase::start("manifest_altered").await else {
        return;
    };
    let reg = sealed_registry(&db).await;
    let mut log = PgAudit::connect(&db.url).await.expect("log");
    change(&reg, &mut log, 0, &first_writes())
        .await
        .expect("first");
    db.sql("CREATE TABLE kept AS SELECT * FROM registry_records")
        .await
        .expect("keep a copy");
    change(&reg, &mut log, 1, &suspensions()[..1])
        .await
        .expect("suspend the organisation");
    assert_eq!(reg.authorisations().await.expect("read").len(), 1);

    // A version deleted by SQL is reported, and counted.
    db.sql("DELETE FROM registry_authorisation_history WHERE version = 1")
        .await
        .expect("delete a version");
    assert!(
        reg.authorisation_history(REFERENCE)
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(RegistryStore::unsealed(&reg), 1, "the missing version");
    // An authorisation deleted by SQL is reported, and counted.
    db.sql("DELETE FROM registry_records WHERE kind = 'authorisation'")
        .await
        .expect("delete the authorisation");
    assert!(reg.authorisations().await.expect("read").is_empty());
    assert_eq!(RegistryStore::unsealed(&reg), 2, "the missing rule");
    // And a sealed row copied in under another key is not listed.
    db.sql(
        "INSERT INTO registry_records (kind, key, value, audit_sequence, audit_hash, seal) \
         SELECT kind, '0314595348', value, audit_sequence, audit_hash, seal \
           FROM registry_records WHERE kind = 'organisation'",
    )
    .await
    .expect("a copy");
    assert_eq!(
        reg.organisations().await.expect("read"),
        vec![organisation(OrganisationStatus::Suspended)]
    );
    assert_eq!(RegistryStore::unsealed(&reg), 3);
    db.sql("DELETE FROM registry_records WHERE key = '0314595348'")
        .await
        .expect("remove the copy");

    // The organisation put back as it was before its suspension, and the
    // manifest edited to list it so: its seal no longer verifies, and
    // nothing of the registry is honoured.
    db.sql(
        "UPDATE registry_records r SET value = k.value, audit_sequence = k.audit_sequence, \
                audit_hash = k.audit_hash, seal = k.seal \
           FROM kept k WHERE r.kind = k.kind AND r.key = k.key AND r.kind = 'organisation'; \
         UPDATE registry_manifest \
            SET rules = replace(rules, '\"0566988259\":[1,', '\"0566988259\":[0,')",
    )
    .await
    .expect("edit the manifest");
    assert_eq!(
        db.sql("SELECT count(*) FROM registry_manifest WHERE rules LIKE '%\"0566988259\":[0,%'")
            .await
            .expect("read")[0][0]
            .as_deref(),
        Some("1"),
        "the manifest lists the old entry"
    );
    assert!(reg.organisations().await.expect("read").is_empty());
    assert_eq!(
        RegistryStore::organisation(&reg, &kbo())
            .await
            .expect("read"),
        None
    );
    assert!(RegistryStore::unsealed(&reg) >= 5);
    // Nor does a change go through over it.
    let refused = change(
        &reg,
        &mut log,
        2,
        &suspensions()[..1], // the organisation's suspension
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    // A fresh broker honours nothing either.
    let other = sealed_registry(&db).await;
    assert!(other.organisations().await.expect("read").is_empty());
}

#[tokio::test]
async fn a_registry_rolled_back_while_a_broker_runs_fails_its_next_load() {
    let Some(db) = TestDatabase::start("manifest_rollback").await else {
        return;
    };
    let reg = sealed_registry(&db).await;
    let mut log = PgAudit::connect(&db.url).await.expect("log");
    change(&reg, &mut log, 0, &first_writes())
        .await
        .expect("first");
    // A consistent copy: rules, versions, manifest and version.
    db.sql(
        "CREATE TABLE kept_records AS SELECT * FROM registry_records; \
         CREATE TABLE kept_history AS SELECT * FROM registry_authorisation_history; \
         CREATE TABLE kept_manifest AS SELECT * FROM registry_manifest; \
         CREATE TABLE kept_version AS SELECT * FROM registry_version",
    )
    .await
    .expect("keep a copy");
    change(&reg, &mut log, 1, &suspensions())
        .await
        .expect("suspend");
    assert_eq!(
        reg.organisations().await.expect("read"),
        vec![organisation(OrganisationStatus::Suspended)]
    );

    // The copy restored, whole: every seal verifies, and the manifest
    // lists every row as it stands, but it is older than one loaded.
    db.sql(
        "BEGIN; \
         DELETE FROM registry_records; INSERT INTO registry_records SELECT * FROM kept_records; \
         DELETE FROM registry_authorisation_history; \
         INSERT INTO registry_authorisation_history SELECT * FROM kept_history; \
         DELETE FROM registry_manifest; INSERT INTO registry_manifest SELECT * FROM kept_manifest; \
         DELETE FROM registry_version; INSERT INTO registry_version SELECT * FROM kept_version; \
         COMMIT",
    )
    .await
    .expect("restore the copy");
    for read in [
        reg.organisations().await.map(|_| ()),
        reg.authorisations().await.map(|_| ()),
        reg.authorisation_history(REFERENCE).await.map(|_| ()),
    ] {
        assert!(
            matches!(read, Err(PgError::Integrity(ref m)) if m.contains("rolled back")),
            "{read:?}"
        );
    }
    // Nor does this broker change it.
    assert!(
        change(&reg, &mut log, 2, &suspensions()[..1])
            .await
            .is_err()
    );
    // A broker started after the restore knows no better (docs: what a
    // database administrator can still do), and its change seals a
    // manifest newer than the one loaded here, but one that lists rules
    // under older entries: the running broker still refuses it.
    let late = sealed_registry(&db).await;
    assert_eq!(
        late.organisations().await.expect("read"),
        vec![organisation(OrganisationStatus::Active)]
    );
    change(
        &late,
        &mut log,
        3,
        &[RegistryWrite::Purpose {
            after: Box::new(semel_core::Purpose {
                code: semel_core::PurposeCode::new("RIS_ELIGIBILITY").expect("code"),
                description: "d".into(),
                legal_basis: "l".into(),
            }),
            before: None,
        }],
    )
    .await
    .expect("a change through the late broker");
    let read = reg.authorisations().await;
    assert!(
        matches!(read, Err(PgError::Integrity(ref m)) if m.contains("under an older entry")),
        "{read:?}"
    );
    // The manifest removed as well: still older than the one loaded.
    db.sql("DELETE FROM registry_manifest")
        .await
        .expect("remove the manifest");
    assert!(matches!(
        reg.organisations().await,
        Err(PgError::Integrity(_))
    ));
}

#[tokio::test]
async fn a_database_without_a_manifest_adopts_one_once() {
    let Some(db) = TestDatabase::start("manifest_upgrade").await else {
        return;
    };
    let reg = sealed_registry(&db).await;
    let mut log = PgAudit::connect(&db.url).await.expect("log");
    // An empty registry has nothing to adopt.
    assert!(reg.adoption().await.expect("adoption").is_none());
    change(&reg, &mut log, 0, &first_writes())
        .await
        .expect("first");
    change(&reg, &mut log, 1, &suspensions()[1..])
        .await
        .expect("suspend the authorisation");
    // The database as schema version 15 left it: sealed rules, no
    // manifest (nor what version 17 added); and a purpose inserted by SQL,
    // with no seal.
    db.sql(
        "DROP TABLE registry_manifest; \
         ALTER TABLE registry_adoption DROP COLUMN manifest_only; \
         ALTER TABLE registry_adoption DROP COLUMN revocations; \
         DELETE FROM schema_migrations WHERE version >= 16; \
         INSERT INTO registry_records (kind, key, value) VALUES ('purpose', 'FORGED', \
           '{\"code\": \"FORGED\", \"description\": \"forged\", \"legal_basis\": \"none\"}')",
    )
    .await
    .expect("back to schema 15");

    let upgraded = sealed_registry(&db).await;
    assert!(
        upgraded.organisations().await.expect("read").is_empty(),
        "rules no manifest lists are not honoured before its adoption"
    );
    let (open, detail) = upgraded
        .adoption()
        .await
        .expect("adoption")
        .expect("the manifest's adoption is due");
    assert!(
        detail.contains("0 organisations, 0 datasets, 0 purposes, 0 authorisations, 0 authorisation versions; sha256")
            && detail.contains("1 organisations, 0 datasets, 0 purposes, 1 authorisations, 2 authorisation versions listed"),
        "{detail}"
    );
    open.seal(entry(&mut log, 2).await)
        .await
        .expect("seal the adoption");
    assert_eq!(
        upgraded.organisations().await.expect("read"),
        vec![organisation(OrganisationStatus::Active)]
    );
    assert_eq!(
        upgraded.authorisations().await.expect("read"),
        vec![registry::authorisation(
            REFERENCE,
            2,
            AuthorisationStatus::Suspended
        )]
    );
    assert_eq!(
        upgraded
            .authorisation_history(REFERENCE)
            .await
            .expect("read")
            .len(),
        2
    );
    assert!(
        upgraded.purposes().await.expect("read").is_empty(),
        "a rule without a seal is not adopted by the listing"
    );
    // Once.
    assert!(upgraded.adoption().await.expect("adoption").is_none());
    let again = sealed_registry(&db).await;
    assert!(again.adoption().await.expect("adoption").is_none());
    assert_eq!(again.organisations().await.expect("read").len(), 1);
}

#[tokio::test]
async fn changes_committed_out_of_their_entries_order_are_no_rollback() {
    let Some(db) = TestDatabase::start("manifest_race").await else {
        return;
    };
    let reg = sealed_registry(&db).await;
    let mut log = PgAudit::connect(&db.url).await.expect("log");
    change(&reg, &mut log, 0, &first_writes())
        .await
        .expect("first");
    assert_eq!(reg.organisations().await.expect("read").len(), 1);
    // Two brokers' changes: the first to write its entry commits last.
    let (a, b) = (sealed_registry(&db).await, sealed_registry(&db).await);
    let Staged::Open(first) = a.stage(&suspensions()[..1]).await.expect("stage") else {
        panic!("open");
    };
    let Staged::Open(second) = b
        .stage(&[RegistryWrite::Purpose {
            after: Box::new(semel_core::Purpose {
                code: semel_core::PurposeCode::new("RIS_ELIGIBILITY").expect("code"),
                description: "d".into(),
                legal_basis: "l".into(),
            }),
            before: None,
        }])
        .await
        .expect("stage")
    else {
        panic!("open");
    };
    let (older, newer) = (entry(&mut log, 1).await, entry(&mut log, 2).await);
    second
        .seal(newer)
        .await
        .expect("seal the newer entry's change");
    assert_eq!(reg.purposes().await.expect("read").len(), 1);
    first
        .seal(older)
        .await
        .expect("seal the older entry's change");
    assert_eq!(
        reg.organisations().await.expect("read"),
        vec![organisation(OrganisationStatus::Suspended)]
    );
    assert_eq!(reg.purposes().await.expect("read").len(), 1);
    assert_eq!(RegistryStore::unsealed(&reg), 0);
}
