//! The witnesses are the memory the database cannot rewrite (issue 36,
//! points 3 and 7): a broker whose log is behind or forked from what its
//! witnesses cosigned refuses to serve, on either store, and says which
//! sizes and what to do; a clean restart with an unchanged log is no
//! incident anywhere.

use std::path::Path;
use std::time::Duration;

use semel_demo::seed::datasets::*;
use semel_demo_stack::demo::DEMO_ORIGIN;
use semel_demo_stack::{Demo, DemoOptions};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::harness::*;

/// A demo on `dir` (and on the database `url` on PostgreSQL) that signs a
/// checkpoint after every entry.
async fn start_on(dir: tempfile::TempDir, url: Option<&str>) -> TestDemo {
    let mut opts = DemoOptions::new(dir.path());
    opts.listen = ([127, 0, 0, 1], 0).into();
    opts.population = 2_000;
    opts.limits = opts.limits.without_organisation_budgets();
    opts.checkpoint_every_entries = 1;
    opts.postgresql = url.map(str::to_owned);
    TestDemo {
        demo: Some(Demo::start(opts).await.expect("start the demo")),
        dir,
        db: None,
    }
}

/// Stops a demo whose log may have halted (closing it may then fail).
async fn stop(mut t: TestDemo) -> tempfile::TempDir {
    if let Some(d) = t.demo.take() {
        let _ = d.stop().await;
    }
    t.dir
}

async fn lookup_status(t: &TestDemo) -> i32 {
    let channel = t
        .channel_with(None, &t.pki().ca_cert())
        .await
        .expect("connect");
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "semel.v1.LookupService".into(),
        })
        .await
        .expect("health")
        .into_inner()
        .status
}

/// Waits until health says `want` for lookups.
async fn wait_status(t: &TestDemo, want: ServingStatus) {
    let mut status = 0;
    for _ in 0..100 {
        status = lookup_status(t).await;
        if status == want as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "lookups are {status}, not {want:?}; the log says {:?}, readiness {:?}; newest checkpoint {}, the witness cosigned {}, head {:?}",
        t.demo().broker.storage().audit.failure(),
        t.demo().broker.readiness.why(),
        latest_size(t).await,
        t.demo().witness.cosigned_size(DEMO_ORIGIN),
        t.demo().broker.storage().audit.head().await.map(|h| h.0),
    );
}

async fn latest_size(t: &TestDemo) -> u64 {
    t.demo()
        .broker
        .storage()
        .audit
        .latest_checkpoint()
        .await
        .expect("read the newest checkpoint")
        .map_or(0, |c| c.checkpoint.size)
}

/// Waits (in process: no call that would add an entry) until the newest
/// checkpoint covers every entry, is larger than `above`, and the witness
/// has cosigned it; its size.
async fn cosigned_to_latest(t: &TestDemo, above: u64) -> u64 {
    for _ in 0..300 {
        let latest = latest_size(t).await;
        let head = t
            .demo()
            .broker
            .storage()
            .audit
            .head()
            .await
            .expect("head")
            .0;
        let cosigned = t.demo().witness.cosigned_size(DEMO_ORIGIN);
        if latest > above && latest == head && cosigned == latest {
            return cosigned;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the witness did not cosign the newest checkpoint ({}, cosigned {})",
        latest_size(t).await,
        t.demo().witness.cosigned_size(DEMO_ORIGIN)
    );
}

async fn lookups(t: &TestDemo, n: usize) {
    let mut c = t.lookup_client(ANDERLECHT).await;
    for _ in 0..n {
        c.lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
            .await
            .expect("allowed");
    }
}

/// Waits until the log halts; its reason.
async fn halted(t: &TestDemo) -> String {
    wait_status(t, ServingStatus::NotServing).await;
    let why = t
        .demo()
        .broker
        .storage()
        .audit
        .failure()
        .expect("the log halted, not only a readiness condition");
    // Every lookup is refused: no answer without its entry.
    let err = t
        .lookup_client(ANDERLECHT)
        .await
        .lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect_err("a halted log answers no lookup");
    assert_error(&err, Code::Unavailable, "AUDIT_UNAVAILABLE");
    why
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// Runs SQL on the server of `url`, connected to its `postgres` database.
async fn on_server(url: &str, sql: &str) {
    let (head, _) = url.rsplit_once('/').expect("a database URL");
    let (client, connection) =
        tokio_postgres::connect(&format!("{head}/postgres"), tokio_postgres::NoTls)
            .await
            .expect("connect to the server");
    let task = tokio::spawn(connection);
    client.batch_execute(sql).await.expect("run SQL");
    drop(client);
    task.abort();
}

fn database_name(url: &str) -> &str {
    url.rsplit_once('/').expect("a database URL").1
}

/// Every WARN and ERROR event on this thread (the test's runtime, which
/// runs the demo's broker tasks).
#[derive(Clone, Default)]
struct Warnings(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={v:?}", f.name()));
            }
        }
        if *event.metadata().level() <= tracing::Level::WARN {
            let mut fields = Fields(event.metadata().level().to_string());
            event.record(&mut fields);
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(fields.0);
        }
    }
}

/// Rewrites what the demo's witness remembers of the log (as if it had
/// cosigned another history): its size and root.
fn witness_remembers(dir: &Path, size: u64, root: [u8; 32]) {
    let path = dir.join("witness").join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("witness state")).expect("json");
    let seen = &mut state["logs"][DEMO_ORIGIN];
    seen["size"] = size.into();
    seen["root"] = semel_core::checkpoint::b64::encode(&root).into();
    std::fs::write(&path, serde_json::to_vec_pretty(&state).expect("json")).expect("write");
}

/// A log restored from an older copy (the embedded store's data directory
/// copied back; on PostgreSQL a copy of the database made earlier, as
/// `pg_dump`/restore or a snapshot would give), after the witness cosigned
/// more, refuses to serve: every lookup refused, NOT_SERVING, and the
/// reason names both sizes and the way out. The restarts on the newer log
/// before it are no incident.
#[tokio::test]
async fn a_log_restored_from_an_older_copy_refuses_to_serve() {
    let db = if on_postgresql() {
        Some(
            semel_postgres::testing::TestDatabase::start("witnessrestore")
                .await
                .expect("PostgreSQL"),
        )
    } else {
        None
    };
    let url = db.as_ref().map(|d| d.url.clone());
    let t = start_on(tempfile::tempdir().expect("tempdir"), url.as_deref()).await;
    lookups(&t, 3).await;
    cosigned_to_latest(&t, 0).await;
    // What the backup will hold: every entry, some perhaps in no
    // checkpoint yet (on PostgreSQL, integrated after a restart).
    let held = t
        .demo()
        .broker
        .storage()
        .audit
        .head()
        .await
        .expect("head")
        .0;
    let dir = stop(t).await;

    // The backup, taken while the broker is stopped.
    let backup = tempfile::tempdir().expect("backup dir");
    let backup_db = url.as_ref().map(|u| {
        format!(
            "semel_backup_{}_{}",
            std::process::id(),
            database_name(u).len()
        )
    });
    match (&url, &backup_db) {
        (Some(u), Some(name)) => {
            let orig = database_name(u);
            on_server(
                u,
                &format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{orig}' AND pid <> pg_backend_pid()"
                ),
            )
            .await;
            on_server(u, &format!("CREATE DATABASE {name} TEMPLATE {orig}")).await;
        }
        _ => copy_dir(&dir.path().join("store"), backup.path()),
    }

    // The log goes on, restarted cleanly: no incident, and the witness
    // cosigns more.
    let t = start_on(dir, url.as_deref()).await;
    wait_status(&t, ServingStatus::Serving).await;
    lookups(&t, 3).await;
    let cosigned = cosigned_to_latest(&t, held).await;
    assert_eq!(t.demo().witness.inconsistent(), 0);
    let dir = stop(t).await;

    // The restore.
    let restored_url = match (&url, &backup_db) {
        (Some(u), Some(name)) => Some(format!("{}/{name}", u.rsplit_once('/').expect("url").0)),
        _ => {
            std::fs::remove_dir_all(dir.path().join("store")).expect("remove the store");
            copy_dir(backup.path(), &dir.path().join("store"));
            None
        }
    };
    let t = start_on(dir, restored_url.as_deref()).await;
    let why = halted(&t).await;
    let witness = t.demo().witness.cosigned_size(DEMO_ORIGIN);
    let log = latest_size(&t).await;
    assert_eq!(witness, cosigned);
    assert!(log < witness, "the restored log is the older one: {log}");
    assert!(
        why.contains(&format!("cosigned a checkpoint of {witness} entries"))
            && why.contains(&format!("holds {log}"))
            && why.contains("restore the newest copy")
            && why.contains("new origin"),
        "{why}"
    );
    // Nothing was cosigned for the older log.
    assert_eq!(t.demo().witness.cosigned_size(DEMO_ORIGIN), cosigned);
    stop(t).await;
    if let (Some(u), Some(name)) = (&url, &backup_db) {
        on_server(u, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    }
    drop(db);
}

/// A clean restart with an unchanged log gives no warning anywhere: the
/// witness does not call the restarted broker's question a fork (it used
/// to log "refused a checkpoint inconsistent … cosigned=98 offered=98").
/// A log forked from what the witness cosigned (another root at the same
/// size; another history below the log's size) refuses to serve; the log
/// itself, given back a witness that saw it, serves again.
#[tokio::test]
async fn a_clean_restart_is_no_incident_and_a_fork_is_refused() {
    let db = if on_postgresql() {
        Some(
            semel_postgres::testing::TestDatabase::start("witnessfork")
                .await
                .expect("PostgreSQL"),
        )
    } else {
        None
    };
    let url = db.as_ref().map(|d| d.url.clone());
    let t = start_on(tempfile::tempdir().expect("tempdir"), url.as_deref()).await;
    lookups(&t, 3).await;
    cosigned_to_latest(&t, 0).await;
    let dir = stop(t).await;
    // The witness cosigns what the log holds after the restart (the
    // embedded store signs a last checkpoint when it closes) ...
    let t = start_on(dir, url.as_deref()).await;
    wait_status(&t, ServingStatus::Serving).await;
    let size = cosigned_to_latest(&t, 0).await;
    assert_eq!(t.demo().witness.inconsistent(), 0);
    let dir = stop(t).await;
    // ... and a restart on that unchanged log is no incident: no warning
    // from the broker, none from the witness.
    let warnings = Warnings::default();
    let capture = {
        use tracing_subscriber::layer::SubscriberExt;
        tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()))
    };
    let t = start_on(dir, url.as_deref()).await;
    wait_status(&t, ServingStatus::Serving).await;
    // Unchanged but for the demo pointing its datasets at its sources'
    // new addresses (one registry change, recorded like any).
    let (head, _) = t.demo().broker.storage().audit.head().await.expect("head");
    assert!(
        head - size <= 1,
        "the log is unchanged but for the demo's registry: {size} → {head}"
    );
    assert_eq!(
        t.demo().witness.inconsistent(),
        0,
        "a clean restart is not a fork"
    );
    assert_eq!(t.demo().broker.storage().audit.failure(), None);
    lookups(&t, 1).await;
    let size = cosigned_to_latest(&t, size).await;
    let dir = stop(t).await;
    drop(capture);
    let warnings = warnings.0.lock().expect("warnings").clone();
    assert!(warnings.is_empty(), "{warnings:#?}");
    let state = std::fs::read(dir.path().join("witness").join("state.json")).expect("state");

    // The witness cosigned another checkpoint of the same size (the log
    // may have grown by the demo's registry change at its start: then the
    // witness refuses to see it extend the checkpoint it remembers).
    witness_remembers(dir.path(), size, [0xee; 32]);
    let t = start_on(dir, url.as_deref()).await;
    let why = halted(&t).await;
    assert!(
        (why.contains(&format!(
            "cosigned another checkpoint of {size} entries than this log's checkpoint of {size} entries"
        )) || why.contains(&format!(
            "cosigned a checkpoint of {size} entries and refuses the proof that this log's checkpoint of {} entries extends it",
            size + 1
        ))) && why.contains("restore the newest copy"),
        "{why}"
    );
    assert_eq!(t.demo().witness.inconsistent(), 1, "the witness saw a fork");
    let dir = stop(t).await;

    // The witness cosigned another history of 2 entries.
    witness_remembers(dir.path(), 2, [0xee; 32]);
    let t = start_on(dir, url.as_deref()).await;
    let why = halted(&t).await;
    assert!(
        // Of `size` entries, or a few more: each start of the demo records
        // its registry pointed at its sources' new addresses.
        why.contains(
            "cosigned a checkpoint of 2 entries and refuses the proof that this log's checkpoint of "
        ),
        "{why}"
    );
    let dir = stop(t).await;

    // The halt lasts until a restart; the log itself was never the
    // problem: with the witness's true memory it serves again.
    std::fs::write(dir.path().join("witness").join("state.json"), state).expect("restore");
    let t = start_on(dir, url.as_deref()).await;
    wait_status(&t, ServingStatus::Serving).await;
    lookups(&t, 1).await;
    assert_eq!(t.demo().witness.inconsistent(), 0);
    stop(t).await;
    drop(db);
}

/// A witness that cannot answer (here: it cannot record what it cosigns,
/// and answers 500) is not evidence of tampering: the log does not halt.
/// But a broker that starts does not serve before a quorum of witnesses has
/// confirmed its log (a restore shows at start): NOT_SERVING, the
/// readiness condition names the witness, and it serves as soon as the
/// witness answers again.
#[tokio::test]
async fn a_broker_starts_not_serving_until_its_witnesses_confirm_the_log() {
    let db = if on_postgresql() {
        Some(
            semel_postgres::testing::TestDatabase::start("witnessunreached")
                .await
                .expect("PostgreSQL"),
        )
    } else {
        None
    };
    let url = db.as_ref().map(|d| d.url.clone());
    let t = start_on(tempfile::tempdir().expect("tempdir"), url.as_deref()).await;
    lookups(&t, 2).await;
    cosigned_to_latest(&t, 0).await;
    let dir = stop(t).await;
    // The witness cannot write its state: it refuses to cosign (500).
    let blocker = dir.path().join("witness").join("state.tmp");
    std::fs::create_dir(&blocker).expect("block the witness's writes");
    let t = start_on(dir, url.as_deref()).await;
    wait_status(&t, ServingStatus::NotServing).await;
    assert_eq!(
        t.demo().broker.storage().audit.failure(),
        None,
        "an unreachable witness is not tampering"
    );
    let why = t
        .demo()
        .broker
        .readiness
        .why()
        .expect("a readiness condition");
    assert!(
        why.starts_with("witnesses: 0 of the 1 witnesses (quorum 1) confirmed")
            && why.contains("500"),
        "{why}"
    );
    // The witness is back: the next round confirms the log.
    std::fs::remove_dir(&blocker).expect("unblock");
    wait_status(&t, ServingStatus::Serving).await;
    lookups(&t, 1).await;
    stop(t).await;
    drop(db);
}
