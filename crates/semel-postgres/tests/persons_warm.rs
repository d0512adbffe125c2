//! Warming a broker's memory at start from the persons directory on
//! PostgreSQL (issue 34's cold first lookups): the directory is read in
//! pages of whole (consumer, number) pairs with the consents under their
//! numbers and which numbers a replacement names, only as sealed; a
//! citizen warmed is answered from memory at its first lookup.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::record;
use semel_core::persons::Resolved;
use semel_core::seal::RowSealer;
use semel_postgres::{PgAudit, PgPersons, testing::TestDatabase};
use semel_storage::conformance::{consent, file, kbo, niss, replacement};
use semel_storage::{Appended, CachedPersons, PersonsStore, Warmed};

async fn entry(log: &mut PgAudit, i: u64) -> Appended {
    let placed = log.append(vec![record(i)]).await.expect("entry");
    Appended {
        sequence: placed[0].sequence,
        hash: placed[0].hash,
    }
}

fn alone(n: semel_core::Niss) -> Resolved {
    Resolved {
        current: n,
        given: None,
        former: Vec::new(),
    }
}

#[tokio::test]
async fn the_directory_is_read_in_whole_pairs_only_as_sealed_and_warms_memory() {
    let Some(db) = TestDatabase::start("persons_warm").await else {
        return;
    };
    let persons = PgPersons::connect(&db.url)
        .await
        .expect("persons")
        .sealed_by(RowSealer::derive(&[42; 32]));
    let mut log = PgAudit::connect(&db.url).await.expect("log");
    let (c1, c2) = (kbo("0314595348"), kbo("0566988259"));
    let (a, b, c, d) = (
        niss("85073003328"),
        niss("93051822361"),
        niss("98472899765"),
        niss("17073003384"),
    );
    let files = [
        file("f1", c1, a),
        file("f2", c1, a),
        file("f3", c1, b),
        file("f4", c2, a),
        file("f5", c2, c),
    ];
    persons.put_files(&files).await.expect("put");
    persons
        .seal_files(&files, entry(&mut log, 0).await)
        .await
        .expect("seal");
    let given = consent("k1", a);
    persons.put_consent(&given).await.expect("consent");
    persons
        .seal_consent(&given, entry(&mut log, 1).await)
        .await
        .expect("seal");
    let replaced = persons.replace(&replacement(d, b)).await.expect("replace");
    persons
        .seal_replacement(&replaced, entry(&mut log, 2).await)
        .await
        .expect("seal");
    // A file written by SQL, sealed by no broker: never read into memory.
    let forged = serde_json::to_string(&file("f6", c2, b)).expect("json");
    db.sql(&format!(
        "INSERT INTO person_files (consumer, citizen, id, value) VALUES ('{}', '{}', 'f6', '{forged}'::jsonb)",
        c2.as_str(),
        b.as_str()
    ))
    .await
    .expect("forge");

    // Pages of two files: (c1, a) whole, then (c1, b) and (c2, a), then
    // (c2, b) (forged: left out) and (c2, c).
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = persons
            .directory_page(after.as_ref(), 2)
            .await
            .expect("page");
        let ids: Vec<String> = page.files.iter().map(|f| f.id.clone()).collect();
        pages.push((ids, page.consents.len(), page.replaced.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(
        pages,
        vec![
            (vec!["f1".to_owned(), "f2".to_owned()], 1, vec![]),
            (vec!["f3".to_owned(), "f4".to_owned()], 1, vec![d, b]),
            (vec!["f5".to_owned()], 0, vec![]),
        ]
    );
    assert_eq!(persons.unsealed(), 1, "the forged file is reported");

    // Memory warmed from it answers a first lookup without the store.
    let cached = CachedPersons::new(Arc::new(persons), 10_000);
    let follow = tokio::spawn(
        cached
            .clone()
            .follow(Duration::from_millis(20), Duration::from_secs(10)),
    );
    while !cached.fresh() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let warmed = cached.warm(2).await.expect("warm");
    assert_eq!(
        warmed,
        Warmed {
            numbers: 4,
            skipped: 0
        }
    );
    let before = cached.stats();
    assert_eq!(
        cached.files_of(&c1, &alone(a)).await.expect("files").len(),
        2
    );
    assert_eq!(
        cached.consents_of(&alone(a)).await.expect("consents").len(),
        1
    );
    assert_eq!(cached.resolve(&a).await.expect("resolve"), alone(a));
    assert_eq!(
        cached.files_of(&c2, &alone(c)).await.expect("files").len(),
        1
    );
    let after = cached.stats();
    assert_eq!(after.hits - before.hits, 4);
    assert_eq!(after.misses, before.misses, "nothing read from the store");
    // A number a replacement names is resolved by the store.
    let r = cached.resolve(&b).await.expect("resolve");
    assert_eq!((r.current, r.former), (b, vec![d]));
    assert_eq!(cached.stats().misses, before.misses + 1);
    follow.abort();
}
