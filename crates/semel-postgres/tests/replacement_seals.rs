//! No rule without its entry, for number replacements on PostgreSQL (issue
//! 36): a replacement decides whose files count for a number, so only one
//! a broker sealed with the entry that recorded it is followed; a
//! resolution that meets another follows the sealed ones only.

mod common;

use common::record;
use semel_core::seal::RowSealer;
use semel_postgres::{PgAudit, PgPersons, testing::TestDatabase};
use semel_storage::conformance::{niss, replacement};
use semel_storage::{Appended, PersonsStore};

#[tokio::test]
async fn only_sealed_replacements_are_followed() {
    let Some(db) = TestDatabase::start("replacement_seals").await else {
        return;
    };
    let persons = PgPersons::connect(&db.url)
        .await
        .expect("persons")
        .sealed_by(RowSealer::derive(&[42; 32]));
    let mut log = PgAudit::connect(&db.url).await.expect("log");
    let (a, b, c, d) = (
        niss("98472899765"),
        niss("93051822361"),
        niss("85073003328"),
        niss("17073003384"),
    );
    // a → b, recorded and sealed.
    let stored = persons.replace(&replacement(a, b)).await.expect("replace");
    let placed = log.append(vec![record(0)]).await.expect("entry");
    let at = Appended {
        sequence: placed[0].sequence,
        hash: placed[0].hash,
    };
    // Not followed before its seal.
    assert_eq!(persons.resolve(&a).await.expect("resolve").current, a);
    persons.seal_replacement(&stored, at).await.expect("seal");
    let r = persons.resolve(&a).await.expect("resolve");
    assert_eq!((r.current, r.former.clone()), (b, vec![a]));

    // b → c and d → b written by SQL: neither is followed, and the sealed
    // a → b still is.
    for (old, new) in [(b, c), (d, b)] {
        let value = serde_json::to_string(&replacement(old, new)).expect("json");
        db.sql(&format!(
            "INSERT INTO number_replacements (old, new, value) VALUES ('{}', '{}', '{value}'::jsonb)",
            old.as_str(),
            new.as_str()
        ))
        .await
        .expect("forge");
    }
    let r = persons.resolve(&a).await.expect("resolve");
    assert_eq!((r.current, r.given, r.former), (b, Some(a), vec![a]));
    let r = persons.resolve(&b).await.expect("resolve");
    assert_eq!((r.current, r.given, r.former), (b, None, vec![a]));
    let r = persons.resolve(&c).await.expect("resolve");
    assert_eq!((r.current, r.former), (c, vec![]));
    let r = persons.resolve(&d).await.expect("resolve");
    assert_eq!((r.current, r.former), (d, vec![]));
    assert!(PersonsStore::unsealed(&persons) >= 2);

    // The sealed one edited by SQL: no longer followed.
    db.sql(&format!(
        "UPDATE number_replacements SET value = value || '{{\"replaced_on\": \"2020-01-01\"}}' WHERE old = '{}'",
        a.as_str()
    ))
    .await
    .expect("edit");
    assert_eq!(persons.resolve(&a).await.expect("resolve").current, a);
}
