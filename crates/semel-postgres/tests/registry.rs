//! The registry on PostgreSQL: records round-trip, concurrent versions of
//! an authorisation conflict instead of overwriting each other, and a change
//! made through one broker reaches another broker's watch: at once through
//! NOTIFY, by polling when a notification is lost, and after a reconnection
//! when the watch's connection is lost.

use std::time::Duration;

use semel_core::{AuthorisationStatus, CertificateId, OrganisationStatus, RevokedCertificate};
use semel_postgres::{PgError, PgRegistry, RegistryWatch, testing::TestDatabase};
use semel_storage::conformance::registry;
use tokio::sync::watch;

fn organisation(status: OrganisationStatus) -> semel_core::Organisation {
    registry::organisation("0566988259", status)
}

fn authorisation(version: u32, status: AuthorisationStatus) -> semel_core::Authorisation {
    registry::authorisation("BSC/2024/017", version, status)
}

/// Waits until the watched version reaches `at_least`, or fails after
/// `within` (generous against a loaded machine; the design bound is in the
/// module's documentation).
async fn seen(rx: &mut watch::Receiver<u64>, at_least: u64, within: Duration) {
    tokio::time::timeout(within, rx.wait_for(|v| *v >= at_least))
        .await
        .unwrap_or_else(|_| panic!("version {at_least} not seen within {within:?}"))
        .expect("the watch ended");
}

#[tokio::test]
async fn records_round_trip_and_concurrent_versions_conflict() {
    let Some(db) = TestDatabase::start("registry").await else {
        return;
    };
    let a = PgRegistry::connect(&db.url).await.expect("broker a");
    let b = PgRegistry::connect(&db.url).await.expect("broker b");
    let v0 = a.version().await.expect("version");
    a.put_organisation(&organisation(OrganisationStatus::Active))
        .await
        .expect("put");
    assert_eq!(
        b.organisations().await.expect("read"),
        vec![organisation(OrganisationStatus::Active)]
    );
    a.put_authorisation(&authorisation(1, AuthorisationStatus::Active))
        .await
        .expect("version 1");
    // Both brokers suspend version 1 at once: one wins, one conflicts.
    let suspended = authorisation(2, AuthorisationStatus::Suspended);
    let (ra, rb) = tokio::join!(
        a.put_authorisation(&suspended),
        b.put_authorisation(&suspended)
    );
    assert!(
        matches!(
            (&ra, &rb),
            (Ok(_), Err(PgError::Conflict(_))) | (Err(PgError::Conflict(_)), Ok(_))
        ),
        "{ra:?} {rb:?}"
    );
    assert_eq!(
        a.authorisation_history("BSC/2024/017")
            .await
            .expect("history")
            .iter()
            .map(|x| (x.version, x.status))
            .collect::<Vec<_>>(),
        vec![
            (1, AuthorisationStatus::Active),
            (2, AuthorisationStatus::Suspended)
        ]
    );
    assert_eq!(
        b.authorisations().await.expect("read"),
        vec![suspended.clone()]
    );
    // Revoking twice keeps the first record.
    let revoked = RevokedCertificate {
        id: CertificateId::Sha256("ab".repeat(32)),
        reason: "key compromise".into(),
        revoked_at: time::OffsetDateTime::UNIX_EPOCH,
    };
    a.revoke_certificate(&revoked).await.expect("revoke");
    let again = RevokedCertificate {
        reason: "again".into(),
        ..revoked.clone()
    };
    assert_eq!(b.revoke_certificate(&again).await.expect("again"), revoked);
    assert_eq!(b.revoked_certificates().await.expect("read"), vec![revoked]);
    // Four changes moved the version (the conflict and the second
    // revocation did not).
    assert_eq!(b.version().await.expect("version"), v0 + 4);
}

#[tokio::test]
async fn a_suspension_through_one_broker_reaches_the_others_watch() {
    let Some(db) = TestDatabase::start("registrywatch").await else {
        return;
    };
    let a = PgRegistry::connect(&db.url).await.expect("broker a");
    let b = PgRegistry::connect(&db.url).await.expect("broker b");
    // Broker B polls only every 30 s here: what it sees within seconds
    // came by NOTIFY.
    let watch = RegistryWatch::start(&db.url, Duration::from_secs(30))
        .await
        .expect("watch");
    let mut rx = watch.subscribe();
    let v = a
        .put_organisation(&organisation(OrganisationStatus::Suspended))
        .await
        .expect("suspend");
    seen(&mut rx, v, Duration::from_secs(5)).await;
    // B reloads on the new version and finds the suspension.
    assert_eq!(
        b.organisations().await.expect("reload")[0].status,
        OrganisationStatus::Suspended
    );

    // A notification lost (the version moved without NOTIFY): polling
    // catches it within one poll interval.
    let polling = RegistryWatch::start(&db.url, Duration::from_millis(200))
        .await
        .expect("watch");
    let mut rx = polling.subscribe();
    let (admin, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let moved: i64 = admin
        .query_one(
            "UPDATE registry_version SET version = version + 1 WHERE id = 0 RETURNING version",
            &[],
        )
        .await
        .expect("bump without notify")
        .get(0);
    seen(&mut rx, moved as u64, Duration::from_secs(5)).await;

    // The watch's connection lost (a database restart, a failover): it
    // reconnects, reads the version at once, and listens again.
    let terminated = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() \
             AND application_name = 'semel registry watch'",
            &[],
        )
        .await
        .expect("terminate the listeners")
        .len();
    assert_eq!(terminated, 2, "both watches' connections");
    let v = a
        .put_organisation(&organisation(OrganisationStatus::Active))
        .await
        .expect("reinstate");
    seen(&mut rx, v, Duration::from_secs(5)).await;
    let mut rx_b = watch.subscribe();
    seen(&mut rx_b, v, Duration::from_secs(40)).await;
}
