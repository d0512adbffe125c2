//! Brokers on one database (issue 30, points 6 and 7): a published change
//! and its queue entries commit together, with the notification that wakes
//! every broker's subscriptions (none when it does not commit); a broker's
//! listener that loses its connection says so and comes back; and the live
//! brokers are counted for the limits' shares.

use std::time::Duration;

use semel_core::Kbo;
use semel_postgres::{Cluster, ClusterSettings, PgMutations, testing::TestDatabase};
use semel_storage::{Accepted, MutationStore, Routed};
use tokio::sync::watch;

fn kbo(s: &str) -> Kbo {
    Kbo::parse(s).expect("kbo")
}

fn routed(consumers: &[&str]) -> Vec<Routed> {
    consumers
        .iter()
        .map(|c| Routed {
            consumer: kbo(c),
            payload: c.as_bytes().to_vec(),
        })
        .collect()
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

async fn woken(rx: &mut watch::Receiver<u64>, within: Duration) -> bool {
    tokio::time::timeout(within, rx.changed()).await.is_ok()
}

const SOURCE: &str = "0212345668";
const FIRST: &str = "0400000185";
const SECOND: &str = "0566988259";

/// A publication whose second queue entry cannot be written (a fault
/// injected by a trigger, as a broker killed or a connection cut between
/// two writes would leave it) leaves nothing: no event key (so the
/// source's retry is new, not a duplicate), no entry for the first
/// consumer, no cursor moved, and no broker woken. Once the fault is gone
/// the retry stores all of it and wakes the listening broker.
#[tokio::test]
async fn a_publication_commits_with_all_its_entries_and_its_notification_or_not_at_all() {
    let Some(db) = TestDatabase::start("clustercommit").await else {
        return;
    };
    let store = PgMutations::connect(&db.url).await.expect("store");
    let other = Cluster::start(&db.url, "broker-b", ClusterSettings::default())
        .await
        .expect("broker b's cluster connection");
    let mut wakes = other.wakes();
    wakes.borrow_and_update();
    let admin = admin(&db.url).await;
    admin
        .batch_execute(&format!(
            "CREATE FUNCTION fail_second() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.consumer = '{SECOND}' THEN RAISE EXCEPTION 'injected fault'; END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER fail_second BEFORE INSERT ON mutation_queue \
             FOR EACH ROW EXECUTE FUNCTION fail_second();"
        ))
        .await
        .expect("inject the fault");
    let key = [7u8; 32];
    let digest = [9u8; 32];
    let failed = store
        .accept(&kbo(SOURCE), &key, &digest, 1, &routed(&[FIRST, SECOND]))
        .await;
    assert!(failed.is_err(), "the fault fails the publication");
    assert_eq!(
        count(&admin, "SELECT count(*) FROM mutation_events").await,
        0
    );
    assert_eq!(
        count(&admin, "SELECT count(*) FROM mutation_queue").await,
        0
    );
    assert_eq!(
        count(
            &admin,
            "SELECT coalesce(sum(head), 0)::bigint FROM mutation_cursors"
        )
        .await,
        0
    );
    assert_eq!(
        store.known(&kbo(SOURCE), &key).await.expect("known"),
        None,
        "a retry is a new publication"
    );

    admin
        .batch_execute("DROP TRIGGER fail_second ON mutation_queue")
        .await
        .expect("remove the fault");
    assert_eq!(
        store
            .accept(&kbo(SOURCE), &key, &digest, 1, &routed(&[FIRST, SECOND]))
            .await
            .expect("the retry"),
        Accepted::New
    );
    assert!(
        woken(&mut wakes, Duration::from_secs(10)).await,
        "the committed publication wakes broker b"
    );
    assert_eq!(
        count(&admin, "SELECT count(*) FROM mutation_events").await,
        1
    );
    assert_eq!(
        count(&admin, "SELECT count(*) FROM mutation_queue").await,
        2
    );
    // The failed publication sent no notification: the one wake above was
    // the retry's, and nothing else is pending.
    wakes.borrow_and_update();
    assert_eq!(
        store
            .accept(&kbo(SOURCE), &key, &digest, 1, &routed(&[FIRST, SECOND]))
            .await
            .expect("a duplicate"),
        Accepted::Duplicate,
        "idempotent on the event key"
    );
    assert_eq!(
        count(&admin, "SELECT count(*) FROM mutation_queue").await,
        2
    );
}

/// Publications made at the same time share one transaction, one commit
/// and one notification (issue 30, point 6: one commit each, serialised on
/// the consumers' cursor rows and on the notification queue, held
/// PostgreSQL to about 44 a second). While a publication waits (here on a
/// cursor row an administrator holds), the twenty made meanwhile are all
/// stored by the next commit; each consumer's positions stay dense and in
/// order, and of two publications of one event id in the same batch one is
/// new and the other a duplicate that queued nothing.
#[tokio::test]
async fn publications_made_at_once_share_one_commit() {
    let Some(db) = TestDatabase::start("clusterbatch").await else {
        return;
    };
    let store = std::sync::Arc::new(PgMutations::connect(&db.url).await.expect("store"));
    let digest = [9u8; 32];
    assert_eq!(
        store
            .accept(&kbo(SOURCE), &[1u8; 32], &digest, 1, &routed(&[FIRST]))
            .await
            .expect("the first publication"),
        Accepted::New
    );
    let watcher = admin(&db.url).await;
    // Which transaction wrote each queue entry.
    watcher
        .batch_execute(
            "CREATE TABLE entry_tx (tx bigint NOT NULL); \
             CREATE FUNCTION note_tx() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN INSERT INTO entry_tx VALUES (txid_current()); RETURN NEW; END $$; \
             CREATE TRIGGER note_tx AFTER INSERT ON mutation_queue \
             FOR EACH ROW EXECUTE FUNCTION note_tx();",
        )
        .await
        .expect("note the transactions");
    let mut holder = admin(&db.url).await;
    let hold = holder.transaction().await.expect("begin");
    hold.execute(
        &format!("SELECT 1 FROM mutation_cursors WHERE consumer = '{FIRST}' FOR UPDATE"),
        &[],
    )
    .await
    .expect("hold the first consumer's cursor");
    let publications: Vec<_> = (0..20u8)
        .map(|i| {
            let store = store.clone();
            // The last two publish one event id.
            let key = [10 + i.min(18); 32];
            tokio::spawn(async move {
                store
                    .accept(&kbo(SOURCE), &key, &digest, 2, &routed(&[FIRST, SECOND]))
                    .await
            })
        })
        .collect();
    // The first publication waits for the row; the others are made meanwhile.
    tokio::time::timeout(Duration::from_secs(20), async {
        while count(
            &watcher,
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await
            == 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a publication waits for the cursor row");
    tokio::time::sleep(Duration::from_millis(500)).await;
    hold.commit().await.expect("let go of the row");
    let mut outcomes = Vec::new();
    for p in publications {
        outcomes.push(p.await.expect("join").expect("stored"));
    }
    assert_eq!(
        outcomes.iter().filter(|a| **a == Accepted::New).count(),
        19,
        "one of the two publications of one event id is new: {outcomes:?}"
    );
    let transactions = count(&watcher, "SELECT count(DISTINCT tx) FROM entry_tx").await;
    assert!(
        (1..=2).contains(&transactions),
        "the publications that waited, then all those made meanwhile, in one transaction: {transactions} transactions"
    );
    for (consumer, last) in [(FIRST, 20), (SECOND, 19)] {
        let positions: Vec<i64> = watcher
            .query(
                "SELECT position FROM mutation_queue WHERE consumer = $1 ORDER BY position",
                &[&consumer],
            )
            .await
            .expect("positions")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(positions, (1..=last).collect::<Vec<i64>>(), "dense, from 1");
    }
}

/// Brokers count each other alive; a broker whose listener connection is
/// lost says it is not listening (its subscriptions poll), connects again,
/// and wakes its subscriptions once for what it may have missed; a broker
/// gone stops counting after `live_within`.
#[tokio::test]
async fn brokers_count_each_other_and_a_lost_listener_comes_back() {
    let Some(db) = TestDatabase::start("clusterlive").await else {
        return;
    };
    let settings = ClusterSettings {
        heartbeat: Duration::from_millis(100),
        live_within: Duration::from_secs(1),
    };
    let a = Cluster::start(&db.url, "broker-a", settings)
        .await
        .expect("a");
    let b = Cluster::start(&db.url, "broker-b", settings)
        .await
        .expect("b");
    let mut live_a = a.live();
    tokio::time::timeout(Duration::from_secs(10), live_a.wait_for(|n| *n == 2))
        .await
        .expect("a counts two brokers")
        .expect("live");

    let mut listening = b.listening();
    let mut wakes = b.wakes();
    wakes.borrow_and_update();
    assert!(*listening.borrow_and_update());
    let admin = admin(&db.url).await;
    admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'semel mutation listener'",
            &[],
        )
        .await
        .expect("terminate the listeners");
    tokio::time::timeout(Duration::from_secs(10), listening.wait_for(|l| !*l))
        .await
        .expect("b says it is not listening")
        .expect("listening");
    tokio::time::timeout(Duration::from_secs(20), listening.wait_for(|l| *l))
        .await
        .expect("b listens again")
        .expect("listening");
    assert!(
        woken(&mut wakes, Duration::from_secs(10)).await,
        "b wakes its subscriptions for what it may have missed"
    );

    drop(b);
    tokio::time::timeout(Duration::from_secs(10), live_a.wait_for(|n| *n == 1))
        .await
        .expect("a counts itself alone once b is gone")
        .expect("live");
}
