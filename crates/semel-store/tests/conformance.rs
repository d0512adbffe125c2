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
