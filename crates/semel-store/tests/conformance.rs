//! The storage port's conformance suite, on the embedded store.

use semel_storage::PersonsStore;
use semel_storage::conformance::Subject;

async fn fresh() -> Option<Subject<dyn PersonsStore>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = semel_store::Store::open(dir.path()).expect("open");
    Some(Subject {
        store: Box::new(store.persons().clone()),
        keep: Box::new((store, dir)),
    })
}

semel_storage::persons_conformance!(fresh());

async fn fresh_registry() -> Option<Subject<dyn semel_storage::RegistryStore>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = semel_store::Store::open(dir.path()).expect("open");
    Some(Subject {
        store: Box::new(store.registry().clone()),
        keep: Box::new((store, dir)),
    })
}

semel_storage::registry_conformance!(fresh_registry());

async fn fresh_audit() -> Option<Subject<dyn semel_storage::AuditStore>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = semel_store::Store::open_with(
        dir.path(),
        Some(semel_store::CheckpointSettings {
            signer: semel_core::checkpoint::NoteSigner::new(
                "semel.test/audit",
                ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
            ),
            every_entries: 5,
            every: std::time::Duration::from_millis(50),
        }),
    )
    .expect("open");
    Some(Subject {
        store: Box::new(semel_store::EmbeddedAudit(std::sync::Arc::new(store))),
        keep: Box::new(dir),
    })
}

semel_storage::audit_conformance!(fresh_audit());

async fn fresh_mutations() -> Option<Subject<dyn semel_storage::MutationStore>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = semel_store::Store::open(dir.path()).expect("open");
    Some(Subject {
        store: Box::new(store.mutations().clone()),
        keep: Box::new((store, dir)),
    })
}

semel_storage::mutations_conformance!(fresh_mutations());

/// The same persons cases through the cache the broker puts in front of
/// the store (`semel_storage::CachedPersons`): memory must answer exactly
/// as the store would.
mod cached {
    use super::*;

    async fn fresh_cached() -> Option<Subject<dyn PersonsStore>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = semel_store::Store::open(dir.path()).expect("open");
        let inner: std::sync::Arc<dyn PersonsStore> = std::sync::Arc::new(store.persons().clone());
        Some(Subject {
            store: Box::new(semel_storage::CachedPersons::new(inner, 1_000)),
            keep: Box::new((store, dir)),
        })
    }

    semel_storage::persons_conformance!(fresh_cached());
}
