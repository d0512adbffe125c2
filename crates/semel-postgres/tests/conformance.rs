//! The storage port's conformance suite, on PostgreSQL (the same cases the
//! embedded store passes in `crates/semel-store/tests/conformance.rs`).

use semel_postgres::{PgPersons, testing::TestDatabase};
use semel_storage::PersonsStore;
use semel_storage::conformance::Subject;

async fn fresh() -> Option<Subject<dyn PersonsStore>> {
    let db = TestDatabase::start("conformance").await?;
    let store = PgPersons::connect(&db.url).await.expect("connect");
    Some(Subject {
        store: Box::new(store),
        keep: Box::new(db),
    })
}

semel_storage::persons_conformance!(fresh());

/// The same persons cases through the cache each broker puts in front of
/// the store, following the store's change feed.
mod cached {
    use super::*;

    async fn fresh_cached() -> Option<Subject<dyn PersonsStore>> {
        let db = TestDatabase::start("conformance").await?;
        let store = PgPersons::connect(&db.url).await.expect("connect");
        let cached = semel_storage::CachedPersons::new(std::sync::Arc::new(store), 1_000);
        let poll = std::time::Duration::from_millis(10);
        let follow = tokio::spawn(cached.clone().follow(poll, poll * 50));
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while !cached.fresh() {
                tokio::time::sleep(poll).await;
            }
        })
        .await
        .expect("memory never became fresh: the feed was not read");
        Some(Subject {
            store: Box::new(cached),
            keep: Box::new((db, follow.abort_handle())),
        })
    }

    semel_storage::persons_conformance!(fresh_cached());
}

async fn fresh_registry() -> Option<Subject<dyn semel_storage::RegistryStore>> {
    let db = TestDatabase::start("conformance").await?;
    let store = semel_postgres::PgRegistry::connect(&db.url)
        .await
        .expect("connect");
    Some(Subject {
        store: Box::new(store),
        keep: Box::new(db),
    })
}

semel_storage::registry_conformance!(fresh_registry());

async fn fresh_audit() -> Option<Subject<dyn semel_storage::AuditStore>> {
    let db = TestDatabase::start("conformance").await?;
    let signer = semel_core::checkpoint::NoteSigner::new(
        "semel.test/audit",
        ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
    );
    let store =
        semel_postgres::PgAuditLog::start(&db.url, signer, std::time::Duration::from_millis(20))
            .await
            .expect("start");
    Some(Subject {
        store: Box::new(store),
        keep: Box::new(db),
    })
}

semel_storage::audit_conformance!(fresh_audit());

async fn fresh_mutations() -> Option<Subject<dyn semel_storage::MutationStore>> {
    let db = TestDatabase::start("conformance").await?;
    let store = semel_postgres::PgMutations::connect(&db.url)
        .await
        .expect("connect");
    Some(Subject {
        store: Box::new(store),
        keep: Box::new(db),
    })
}

semel_storage::mutations_conformance!(fresh_mutations());
