//! A source's event ids on PostgreSQL are remembered by their keys, never
//! as given (an id may carry a national number, and ids are kept 400
//! days): a database made before is migrated, and a retry of an id
//! published before the upgrade is still known.

use semel_core::Kbo;
use semel_core::mutation::event_key;
use semel_postgres::PgMutations;
use semel_postgres::testing::TestDatabase;
use semel_storage::{Accepted, MutationStore, Routed};

/// The migrations before event keys (schema version 8), applied by hand as
/// the broker applies them.
const BEFORE: &[&str] = &[
    include_str!("../migrations/0001_audit_log.sql"),
    include_str!("../migrations/0002_audit_tree.sql"),
    include_str!("../migrations/0003_registry.sql"),
    include_str!("../migrations/0004_persons.sql"),
    include_str!("../migrations/0005_audit_queries.sql"),
    include_str!("../migrations/0006_persons_feed.sql"),
    include_str!("../migrations/0007_mutations.sql"),
    include_str!("../migrations/0008_applications.sql"),
];

#[tokio::test]
async fn event_ids_stored_as_given_become_keys_and_no_id_is_kept_as_given() {
    let Some(db) = TestDatabase::start("event_keys").await else {
        return;
    };
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, \
             applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .expect("schema_migrations");
    for (i, sql) in BEFORE.iter().enumerate() {
        client
            .batch_execute(&format!(
                "BEGIN; {sql}; INSERT INTO schema_migrations (version) VALUES ({}); COMMIT;",
                i + 1
            ))
            .await
            .expect("an earlier migration");
    }
    let source = Kbo::parse("0314595348").expect("kbo");
    let cpas = Kbo::parse("0212345668").expect("kbo");
    let old_id = "nr-93051822361-move";
    let digest = [5u8; 32];
    client
        .execute(
            "INSERT INTO mutation_events (source, event_id, digest, accepted_micros) VALUES ($1, $2, $3, 1)",
            &[&source.as_str(), &old_id, &digest.as_slice()],
        )
        .await
        .expect("an id stored as given");
    client
        .execute(
            "INSERT INTO mutation_queue (consumer, position, accepted_micros, source, event_id, payload) \
             VALUES ($1, 1, 1, $2, $3, '\\x00')",
            &[&cpas.as_str(), &source.as_str(), &old_id],
        )
        .await
        .expect("its queue entry");
    client
        .execute(
            "INSERT INTO mutation_cursors (consumer, head) VALUES ($1, 1)",
            &[&cpas.as_str()],
        )
        .await
        .expect("its queue's cursor");

    let store = PgMutations::connect(&db.url).await.expect("migrate");
    assert_eq!(
        store
            .known(&source, &event_key(&source, old_id))
            .await
            .expect("the store answers"),
        Some(digest),
        "an id published before the upgrade is known by its key"
    );
    let new_id = "nr-85073003328-move";
    assert_eq!(
        store
            .accept(
                &source,
                &event_key(&source, new_id),
                &digest,
                2,
                &[Routed {
                    consumer: cpas,
                    payload: b"p".to_vec()
                }]
            )
            .await
            .expect("the store answers"),
        Accepted::New
    );
    for table in ["mutation_events", "mutation_queue"] {
        let rows = client
            .query(&format!("SELECT row_to_json(t)::text FROM {table} t"), &[])
            .await
            .expect("read");
        assert!(!rows.is_empty());
        for row in rows {
            let text: String = row.get(0);
            for number in ["93051822361", "85073003328"] {
                assert!(
                    !text.contains(number),
                    "{table} keeps an event id as given: {text}"
                );
            }
        }
    }
}
