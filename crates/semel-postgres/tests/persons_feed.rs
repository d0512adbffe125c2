//! The persons directory's change feed, and two brokers answering lookups
//! from memory on one database: a file opened or closed, a consent, or a
//! number replaced through one broker reaches the other broker's memory
//! within its poll interval (docs/storage-postgresql.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use semel_postgres::{PgPersons, testing::TestDatabase};
use semel_storage::conformance::{file, kbo, niss, replacement};
use semel_storage::{CachedPersons, PersonsChange, PersonsStore};

const POLL: Duration = Duration::from_millis(20);

/// A broker's persons directory: the store behind memory, following the
/// feed.
async fn broker(url: &str) -> (CachedPersons, tokio::task::JoinHandle<()>) {
    let store = PgPersons::connect(url).await.expect("connect");
    let cached = CachedPersons::new(Arc::new(store), 10_000);
    let follow = tokio::spawn(cached.clone().follow(POLL, POLL * 50));
    tokio::time::timeout(Duration::from_secs(30), async {
        while !cached.fresh() {
            tokio::time::sleep(POLL).await;
        }
    })
    .await
    .expect("memory never became fresh: the feed was not read");
    (cached, follow)
}

/// Waits until `check` holds, or fails after a generous bound (the design
/// bound is one poll interval; the machine may be loaded).
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not seen within 10 s");
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn the_feed_lists_every_change_in_commit_order() {
    let Some(db) = TestDatabase::start("persons_feed").await else {
        return;
    };
    let store = PgPersons::connect(&db.url).await.expect("connect");
    let start = store.changes_since(0).await.expect("feed");
    assert!(start.complete);
    let (citizen, other) = (niss("85073003328"), niss("93051822361"));
    let consumer = kbo("0566988259");
    store
        .put_files(&[file("f1", consumer, citizen), file("f2", consumer, other)])
        .await
        .expect("put");
    store
        .replace(&replacement(niss("98472899765"), citizen))
        .await
        .expect("replace");
    store
        .delete_file(&file("f1", consumer, citizen))
        .await
        .expect("delete");
    let changes = store.changes_since(start.head).await.expect("feed");
    assert!(changes.complete);
    assert_eq!(changes.head, start.head + 4);
    assert_eq!(
        changes.changes,
        vec![
            PersonsChange::Citizen(citizen),
            PersonsChange::Citizen(other),
            PersonsChange::Replacements,
            PersonsChange::Citizen(citizen),
        ]
    );
    // Read from the middle: only what follows.
    let tail = store.changes_since(start.head + 3).await.expect("feed");
    assert_eq!(tail.changes, vec![PersonsChange::Citizen(citizen)]);
    // Changes pruned before a reader saw them: it is told to forget all.
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .execute(
            "DELETE FROM persons_changes WHERE position <= $1",
            &[&((start.head + 2) as i64)],
        )
        .await
        .expect("prune");
    let pruned = store.changes_since(start.head).await.expect("feed");
    assert!(
        !pruned.complete,
        "a reader behind the pruned changes must know"
    );
    assert_eq!(pruned.head, changes.head);
}

#[tokio::test]
async fn a_change_through_one_broker_reaches_the_other_brokers_memory() {
    let Some(db) = TestDatabase::start("persons_feed").await else {
        return;
    };
    let (a, follow_a) = broker(&db.url).await;
    let (b, follow_b) = broker(&db.url).await;
    let (citizen, consumer) = (niss("85073003328"), kbo("0566988259"));
    let files = |p: &CachedPersons| {
        let p = p.clone();
        async move {
            let r = p.resolve(&citizen).await.expect("resolve");
            p.files_of(&consumer, &r).await.expect("files").len()
        }
    };
    // Broker A reads (and keeps) that the consumer has no file.
    assert_eq!(files(&a).await, 0);
    assert_eq!(files(&a).await, 0);
    let before = a.stats();
    assert!(before.hits > 0, "the second read is answered from memory");
    // B opens a file: A sees it.
    let f = file("f1", consumer, citizen);
    b.put_files(std::slice::from_ref(&f)).await.expect("put");
    eventually("a file opened through B", || async { files(&a).await == 1 }).await;
    // B takes it back: A stops counting it.
    b.delete_file(&f).await.expect("delete");
    eventually("a file deleted through B", || async {
        files(&a).await == 0
    })
    .await;
    // B replaces a number that holds a file: A resolves the new number to
    // include the old one, and counts its file.
    let old = niss("98472899765");
    b.put_files(&[file("f2", consumer, old)])
        .await
        .expect("put");
    b.replace(&replacement(old, citizen))
        .await
        .expect("replace");
    eventually("a replacement made through B", || async {
        files(&a).await == 1
    })
    .await;
    // And a consent registered through A reaches B.
    let r = b.resolve(&citizen).await.expect("resolve");
    assert!(b.consents_of(&r).await.expect("consents").is_empty());
    let consent = semel_storage::conformance::consent("c1", citizen);
    a.put_consent(&consent).await.expect("consent");
    eventually("a consent registered through A", || {
        let b = b.clone();
        let r = r.clone();
        async move { b.consents_of(&r).await.expect("consents").len() == 1 }
    })
    .await;
    // ...and its withdrawal (taken back) too.
    a.delete_consent(&consent).await.expect("withdraw");
    eventually("a consent taken back through A", || {
        let b = b.clone();
        let r = r.clone();
        async move { b.consents_of(&r).await.expect("consents").is_empty() }
    })
    .await;
    follow_a.abort();
    follow_b.abort();
}

async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn positions_follow_commit_order_and_truncation_is_noticed() {
    let Some(db) = TestDatabase::start("persons_feed").await else {
        return;
    };
    let store = PgPersons::connect(&db.url).await.expect("connect");
    let start = store.changes_since(0).await.expect("feed").head;
    let (mut first, second) = (raw(&db.url).await, raw(&db.url).await);
    let insert = "INSERT INTO person_files (consumer, citizen, id, value) VALUES ('0566988259', $1, $2, '{}')";
    // The first writer's transaction takes its position and stays open...
    let tx = first.transaction().await.expect("begin");
    tx.execute(insert, &[&"85073003328", &"t1"])
        .await
        .expect("first write");
    // ...so a second writer waits for it rather than take a position that
    // could become visible before the first one's.
    let waiting = tokio::spawn(async move {
        second
            .execute(insert, &[&"93051822361", &"t2"])
            .await
            .expect("second write");
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the second writer did not wait for the first"
    );
    let seen = store.changes_since(start).await.expect("feed");
    assert_eq!(
        (seen.head, seen.changes.len()),
        (start, 0),
        "nothing committed yet"
    );
    tx.commit().await.expect("commit");
    waiting.await.expect("second");
    let seen = store.changes_since(start).await.expect("feed");
    assert!(seen.complete);
    assert_eq!(
        seen.changes,
        vec![
            PersonsChange::Citizen(niss("85073003328")),
            PersonsChange::Citizen(niss("93051822361")),
        ],
        "positions in commit order"
    );
    // A table emptied at once lists no change but moves the head: a reader
    // is told to forget everything.
    raw(&db.url)
        .await
        .batch_execute("TRUNCATE person_files")
        .await
        .expect("truncate");
    let after = store.changes_since(seen.head).await.expect("feed");
    assert!(!after.complete, "a truncation must not go unnoticed");
}
