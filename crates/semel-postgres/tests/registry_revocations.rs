//! Certificate revocations on PostgreSQL (issue 36, point 5): a revocation
//! is sealed with the audit entry that recorded it and listed in the
//! registry's manifest, and read failing closed. A database administrator
//! who deletes or edits a revocation does not re-admit its certificate; a
//! revocation inserted by SQL refuses its certificate (it can only refuse)
//! and is reported; revocations from before seals were kept are adopted
//! once, and keep revoking.

mod common;

use common::{change, entry, sealed_registry};
use semel_core::{CertificateId, OrganisationStatus, RevokedCertificate};
use semel_postgres::{PgAudit, PgRegistry, testing::TestDatabase};
use semel_storage::conformance::registry;
use semel_storage::{RegistryStore, RegistryWrite, StorageError};

fn revocation(fingerprint: &str, reason: &str) -> RevokedCertificate {
    RevokedCertificate {
        id: CertificateId::Sha256(fingerprint.repeat(32)),
        reason: reason.into(),
        revoked_at: time::macros::datetime!(2026-02-01 0:00 UTC),
    }
}

fn revoke(r: &RevokedCertificate) -> Vec<RegistryWrite> {
    vec![RegistryWrite::Revocation {
        after: Box::new(r.clone()),
    }]
}

/// The certificates revoked, by id.
async fn revoked_ids(reg: &PgRegistry) -> Vec<CertificateId> {
    reg.revoked_certificates()
        .await
        .expect("read")
        .into_iter()
        .map(|r| r.id)
        .collect()
}

#[tokio::test]
async fn a_revocation_deleted_or_edited_by_sql_still_revokes_and_is_reported() {
    let Some(db) = TestDatabase::start("revocation_deleted").await else {
        return;
    };
    let reg = sealed_registry(&db).await;
    let mut log = PgAudit::connect(&db.url).await.expect("log");
    let stolen = revocation("ab", "laptop stolen");
    let lost = revocation("cd", "key lost");
    change(&reg, &mut log, 0, &revoke(&stolen))
        .await
        .expect("revoke");
    change(&reg, &mut log, 1, &revoke(&lost))
        .await
        .expect("revoke another");
    assert_eq!(
        reg.revoked_certificates().await.expect("read"),
        vec![stolen.clone(), lost.clone()],
        "honoured as stored"
    );
    assert_eq!(RegistryStore::unsealed(&reg), 0);
    assert_eq!(
        db.sql(
            "SELECT count(*) FROM registry_records \
              WHERE kind = 'revoked_certificate' AND seal IS NOT NULL \
                AND audit_sequence IS NOT NULL"
        )
        .await
        .expect("read")[0][0]
            .as_deref(),
        Some("2"),
        "each revocation is sealed with its entry"
    );
    // Revoking again is refused by the store: the first record stands.
    let again = change(&reg, &mut log, 2, &revoke(&revocation("ab", "again"))).await;
    assert!(matches!(again, Err(StorageError::Conflict(_))), "{again:?}");

    // Deleted by SQL: the manifest lists it, the certificate stays revoked.
    db.sql(&format!(
        "DELETE FROM registry_records WHERE kind = 'revoked_certificate' AND key = '{}'",
        stolen.id.key()
    ))
    .await
    .expect("delete a revocation");
    let read = reg.revoked_certificates().await.expect("read");
    assert_eq!(
        read.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![stolen.id.clone(), lost.id.clone()],
        "a revocation deleted by SQL still revokes"
    );
    assert!(
        read[0].reason.contains("listed in the registry's manifest")
            && read[0].reason.contains("its row is missing"),
        "{}",
        read[0].reason
    );
    assert_eq!(read[1], lost);
    assert_eq!(RegistryStore::unsealed(&reg), 1, "and it is counted");
    // A broker started after the deletion knows it as well.
    let fresh = sealed_registry(&db).await;
    assert_eq!(
        revoked_ids(&fresh).await,
        vec![stolen.id.clone(), lost.id.clone()]
    );
    assert_eq!(RegistryStore::unsealed(&fresh), 1);

    // Edited by SQL to name another certificate: both stay revoked (the
    // one the manifest lists, and the one the row names).
    let other = revocation("ef", "laptop stolen");
    db.sql(&format!(
        "UPDATE registry_records SET key = '{key}', \
                value = value || jsonb_build_object('id', jsonb_build_object('sha256', '{hex}')) \
          WHERE kind = 'revoked_certificate' AND key = '{was}'",
        key = other.id.key(),
        hex = "ef".repeat(32),
        was = lost.id.key()
    ))
    .await
    .expect("edit a revocation");
    assert_eq!(
        revoked_ids(&fresh).await,
        vec![stolen.id.clone(), lost.id.clone(), other.id.clone()],
    );
    // The one deleted, the row edited, the one it no longer holds.
    assert_eq!(RegistryStore::unsealed(&fresh), 4);
}

#[tokio::test]
async fn a_revocation_inserted_by_sql_refuses_its_certificate_and_is_reported() {
    let Some(db) = TestDatabase::start("revocation_forged").await else {
        return;
    };
    let reg = sealed_registry(&db).await;
    let mut log = PgAudit::connect(&db.url).await.expect("log");
    let genuine = revocation("ab", "laptop stolen");
    change(&reg, &mut log, 0, &revoke(&genuine))
        .await
        .expect("revoke");
    change(
        &reg,
        &mut log,
        1,
        &[RegistryWrite::Organisation {
            after: Box::new(registry::organisation(
                "0566988259",
                OrganisationStatus::Active,
            )),
            before: None,
        }],
    )
    .await
    .expect("an organisation");
    // Inserted by SQL, no seal: it can only refuse a certificate, so it
    // does (fail closed), and is reported.
    let forged = revocation("cd", "forged");
    let value = serde_json::to_string(&forged).expect("json");
    db.sql(&format!(
        "INSERT INTO registry_records (kind, key, value) \
         VALUES ('revoked_certificate', '{}', '{value}'::jsonb)",
        forged.id.key()
    ))
    .await
    .expect("insert a revocation");
    assert_eq!(
        reg.revoked_certificates().await.expect("read"),
        vec![genuine.clone(), forged.clone()]
    );
    assert_eq!(RegistryStore::unsealed(&reg), 1, "reported and counted");
    // Carrying the genuine revocation's seal and entry: the same.
    db.sql(&format!(
        "UPDATE registry_records r SET audit_sequence = g.audit_sequence, \
                audit_hash = g.audit_hash, seal = g.seal \
           FROM registry_records g \
          WHERE r.kind = 'revoked_certificate' AND r.key = '{}' \
            AND g.kind = 'revoked_certificate' AND g.key = '{}'",
        forged.id.key(),
        genuine.id.key()
    ))
    .await
    .expect("copy a seal");
    assert_eq!(
        reg.revoked_certificates().await.expect("read"),
        vec![genuine.clone(), forged.clone()]
    );
    assert_eq!(RegistryStore::unsealed(&reg), 2);

    // A manifest that does not verify honours no rule, and every
    // revocation still revokes.
    db.sql("UPDATE registry_manifest SET rules = rules || ' '")
        .await
        .expect("edit the manifest");
    assert!(reg.organisations().await.expect("read").is_empty());
    assert_eq!(
        reg.revoked_certificates().await.expect("read"),
        vec![genuine, forged]
    );
}

#[tokio::test]
async fn revocations_from_before_seals_are_adopted_once_and_keep_revoking() {
    let Some(db) = TestDatabase::start("revocation_upgrade").await else {
        return;
    };
    let reg = sealed_registry(&db).await;
    let mut log = PgAudit::connect(&db.url).await.expect("log");
    let org = registry::organisation("0566988259", OrganisationStatus::Active);
    change(
        &reg,
        &mut log,
        0,
        &[RegistryWrite::Organisation {
            after: Box::new(org.clone()),
            before: None,
        }],
    )
    .await
    .expect("an organisation");
    // The database as schema version 16 left it: sealed rules listed in
    // the manifest, and a revocation as a broker of that version wrote it
    // (no seal, not listed).
    let old = PgRegistry::connect(&db.url).await.expect("an older broker");
    let before = revocation("ab", "laptop stolen");
    old.revoke_certificate(&before).await.expect("revoke");
    db.sql(
        "ALTER TABLE registry_adoption DROP COLUMN revocations; \
         DELETE FROM schema_migrations WHERE version = 17",
    )
    .await
    .expect("back to schema 16");

    let upgraded = sealed_registry(&db).await;
    // Before its adoption, it revokes still (reported).
    assert_eq!(revoked_ids(&upgraded).await, vec![before.id.clone()]);
    assert_eq!(RegistryStore::unsealed(&upgraded), 1);
    let (open, detail) = upgraded
        .adoption()
        .await
        .expect("adoption")
        .expect("the revocations' adoption is due");
    assert!(
        detail.contains("adopted as they stand: 1 certificate revocations, 0 organisations")
            && detail.contains("kept as it stood")
            && detail.contains("0 certificate revocations, 1 organisations"),
        "{detail}"
    );
    open.seal(entry(&mut log, 1).await)
        .await
        .expect("seal the adoption");
    assert_eq!(
        upgraded.revoked_certificates().await.expect("read"),
        vec![before.clone()],
        "honoured as stored once adopted"
    );
    assert_eq!(upgraded.organisations().await.expect("read"), vec![org]);
    assert_eq!(
        RegistryStore::unsealed(&upgraded),
        1,
        "nothing more reported"
    );
    // Once.
    assert!(upgraded.adoption().await.expect("adoption").is_none());
    // Adopted, it is sealed and listed: deleted by SQL, it still revokes.
    db.sql("DELETE FROM registry_records WHERE kind = 'revoked_certificate'")
        .await
        .expect("delete the revocation");
    assert_eq!(revoked_ids(&upgraded).await, vec![before.id]);
    assert_eq!(RegistryStore::unsealed(&upgraded), 2);
}

#[tokio::test]
async fn a_database_holding_only_revocations_adopts_them() {
    let Some(db) = TestDatabase::start("revocation_only").await else {
        return;
    };
    // Schema version 16, a revocation and no rule: nothing was due then.
    let old = PgRegistry::connect(&db.url).await.expect("an older broker");
    let before = revocation("ab", "laptop stolen");
    old.revoke_certificate(&before).await.expect("revoke");
    db.sql(
        "ALTER TABLE registry_adoption DROP COLUMN revocations; \
         DELETE FROM schema_migrations WHERE version = 17",
    )
    .await
    .expect("back to schema 16");
    let reg = sealed_registry(&db).await;
    let mut log = PgAudit::connect(&db.url).await.expect("log");
    let (open, detail) = reg
        .adoption()
        .await
        .expect("adoption")
        .expect("the revocations' adoption is due");
    assert!(
        detail.contains("1 certificate revocations") && detail.contains("written anew"),
        "{detail}"
    );
    open.seal(entry(&mut log, 0).await).await.expect("seal");
    db.sql("DELETE FROM registry_records WHERE kind = 'revoked_certificate'")
        .await
        .expect("delete the revocation");
    assert_eq!(revoked_ids(&reg).await, vec![before.id]);
}
