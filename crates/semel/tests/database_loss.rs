//! What a broker on PostgreSQL does when it loses its database, as real
//! processes: a registry watch that cannot reconnect (new connections
//! refused, its own connection cut) makes the broker refuse every call
//! with `REGISTRY_STALE` within its freshness bound and say NOT_SERVING,
//! and it serves again once the watch reconnects; an idle broker whose
//! database stops says NOT_SERVING (it probes the database); a broker
//! started before its database waits for it, NOT_SERVING, and serves once
//! the database is up; the second broker the demo describes starts as
//! printed, and answers lookups when the demo's broker is killed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use semel_client::{AuditFilter, Client, LookupArgs};
use semel_postgres::testing::TestDatabase;

/// The demo's registry freshness bound (`store.max_staleness_ms`'s default).
const BOUND: Duration = Duration::from_secs(5);

/// A process of the test's, killed when dropped (a failed assertion
/// included): none outlives its test.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

fn spawn(args: &[&str], dir: &Path, log: &str) -> Proc {
    let log = std::fs::File::create(dir.join(log)).expect("create a log");
    Proc(
        Command::new(env!("CARGO_BIN_EXE_semel"))
            .args(args)
            .env("SEMEL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start semel"),
    )
}

/// `semel demo` on the database at `url`, its log in `a.log`.
fn demo_on(url: &str, dir: &Path, listen: &str, http: &str) -> Proc {
    spawn(
        &[
            "demo",
            "--listen",
            listen,
            "--http-listen",
            http,
            "--no-metrics",
            "--population",
            "2000",
            "--store",
            url,
            "--data-dir",
            dir.to_str().expect("utf-8 path"),
        ],
        dir,
        "a.log",
    )
}

/// `semel serve` with the configuration the demo wrote, as it prints it.
fn second_broker(dir: &Path) -> (Proc, String) {
    let config = dir.join("second-broker.toml");
    let text = std::fs::read_to_string(&config).expect("the demo wrote second-broker.toml");
    let listen = text
        .lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("second-broker.toml names its listen address")
        .to_owned();
    let child = spawn(
        &["serve", "--config", config.to_str().expect("utf-8 path")],
        dir,
        "b.log",
    );
    (child, format!("https://{listen}"))
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// Connects as `who` to `broker` (the demo's broker when `None`); fails
/// with the process's log if it stopped.
async fn connect(
    child: &mut Proc,
    dir: &Path,
    name: &str,
    who: &str,
    broker: Option<&str>,
) -> Client {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if dir.join("demo.json").exists()
            && let Ok(mut config) = semel_demo_stack::demo::client_config(dir, who)
        {
            if let Some(b) = broker {
                config.broker = b.to_owned();
            }
            if let Ok(client) = Client::connect(&config).await
                && client.audit_head().await.is_ok()
            {
                return client;
            }
        }
        if let Some(status) = child.try_wait().expect("check the process") {
            panic!("{name} stopped ({status}):\n{}", log(dir, name));
        }
        assert!(Instant::now() < deadline, "{name} did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn lookup() -> LookupArgs {
    LookupArgs {
        citizen: "93051822361".into(),
        dataset: "national_register.residence".into(),
        fields: vec!["street".into()],
        purpose: "RIS_ELIGIBILITY".into(),
        ..Default::default()
    }
}

/// The broker's overall health (`""`), as a probe asks it; the error when
/// it does not answer.
async fn health(dir: &Path, broker: &str) -> String {
    let ca = dir.join("pki").join("ca.crt");
    match semel_client::check_health(broker, &ca, None, "").await {
        Ok(status) => status,
        Err(e) => format!("no answer: {e:#}"),
    }
}

/// Waits until the broker's health is `want`, for at most `within`.
async fn health_becomes(dir: &Path, broker: &str, want: &str, within: Duration, why: &str) {
    let start = Instant::now();
    loop {
        let now = health(dir, broker).await;
        if now == want {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{why}: health still {now} after {within:?}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn manifest_broker(dir: &Path) -> String {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("demo.json")).expect("read demo.json"))
            .expect("demo.json");
    m["broker"].as_str().expect("broker").to_owned()
}

/// The server's maintenance database beside the test's, and the test's
/// database's name: a database that allows no connections is changed from
/// another.
fn admin(url: &str) -> (String, String) {
    let (prefix, name) = url.rsplit_once('/').expect("a URL with a database");
    (format!("{prefix}/postgres"), name.to_owned())
}

async fn sql(url: &str, statement: &str) {
    let client = semel_postgres::testing::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect as the database's administrator: {e}"));
    client
        .batch_execute(statement)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

fn free_port_pair() -> u16 {
    loop {
        let p = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_registry_watch_is_starved_refuses_with_registry_stale_and_recovers() {
    let Some(db) = TestDatabase::start("stalewatch").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut a = demo_on(&db.url, d, "127.0.0.1:0", "127.0.0.1:0");
    let consumer = connect(&mut a, d, "a.log", "cpas-anderlecht", None).await;
    let broker = manifest_broker(d);
    consumer.lookup(lookup()).await.expect("allowed");
    health_becomes(d, &broker, "SERVING", Duration::from_secs(10), "at start").await;

    // New connections refused (superusers too), and the watch's own cut:
    // every other connection of the broker lives on.
    let (admin, name) = admin(&db.url);
    sql(
        &admin,
        &format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"),
    )
    .await;
    sql(
        &admin,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{name}' AND application_name = 'semel registry watch'"
        ),
    )
    .await;
    let cut = Instant::now();
    let refused_after = loop {
        match consumer.lookup(lookup()).await {
            Err(e) if format!("{e:#}").contains("REGISTRY_STALE") => {
                let text = format!("{e:#}");
                assert!(
                    text.contains("UNAVAILABLE") || text.contains("Unavailable"),
                    "{text}"
                );
                break cut.elapsed();
            }
            Err(e) => panic!("refused for another reason than REGISTRY_STALE: {e:#}"),
            Ok(_) => {}
        }
        assert!(
            cut.elapsed() < BOUND + Duration::from_secs(3),
            "the broker still answers {:?} after its registry watch was starved:\n{}",
            cut.elapsed(),
            log(d, "a.log")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Not before the bound: the last confirmation was at most one poll
    // (1 s) before the cut.
    assert!(
        refused_after >= BOUND - Duration::from_millis(1500),
        "refused after {refused_after:?}, before the bound"
    );
    health_becomes(
        d,
        &broker,
        "NOT_SERVING",
        Duration::from_secs(3),
        "with a stale registry",
    )
    .await;

    // Connections allowed again: the watch reconnects, a read confirms
    // the snapshot, and the broker serves.
    sql(
        &admin,
        &format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"),
    )
    .await;
    let back = Instant::now();
    loop {
        if consumer.lookup(lookup()).await.is_ok() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "the broker did not serve again:\n{}",
            log(d, "a.log")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    health_becomes(d, &broker, "SERVING", Duration::from_secs(5), "once fresh").await;

    // The refusals are recorded with the reason the client got.
    let page = consumer
        .audit_list(AuditFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("list the audit log");
    let reasons: Vec<&str> = page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"REGISTRY_STALE"),
        "no refusal recorded with REGISTRY_STALE: {reasons:?}"
    );
    let _ = a.kill();
    let _ = a.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_broker_whose_database_stops_says_not_serving() {
    let Some(db) = TestDatabase::own_cluster("idledown").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut a = demo_on(&db.url, d, "127.0.0.1:0", "127.0.0.1:0");
    connect(&mut a, d, "a.log", "operator", None).await;
    let broker = manifest_broker(d);
    health_becomes(d, &broker, "SERVING", Duration::from_secs(10), "at start").await;

    // No call at all from here: only the broker's own probes can notice.
    db.stop().expect("stop PostgreSQL");
    health_becomes(
        d,
        &broker,
        "NOT_SERVING",
        Duration::from_secs(10),
        "an idle broker with its database stopped",
    )
    .await;
    db.start_again().expect("start PostgreSQL again");
    health_becomes(
        d,
        &broker,
        "SERVING",
        Duration::from_secs(20),
        "once the database is back",
    )
    .await;
    let _ = a.kill();
    let _ = a.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_started_before_its_database_waits_for_it_then_serves() {
    let Some(db) = TestDatabase::own_cluster("startbefore").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // The demo writes the second broker's configuration and seeds the
    // database; then it goes, and the database stops.
    let mut a = demo_on(&db.url, d, "127.0.0.1:0", "127.0.0.1:0");
    connect(&mut a, d, "a.log", "operator", None).await;
    let _ = a.kill();
    let _ = a.wait();
    db.stop().expect("stop PostgreSQL");

    let (mut b, b_url) = second_broker(d);
    // A live process that is not ready: its port answers NOT_SERVING.
    health_becomes(
        d,
        &b_url,
        "NOT_SERVING",
        Duration::from_secs(30),
        "a broker waiting for its database",
    )
    .await;
    let waiting_since = Instant::now();
    while waiting_since.elapsed() < Duration::from_secs(3) {
        if let Some(status) = b.try_wait().expect("check the broker") {
            panic!(
                "the broker exited ({status}) instead of waiting for its database:\n{}",
                log(d, "b.log")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        log(d, "b.log").contains("waiting for the PostgreSQL store"),
        "the broker does not say what it waits for:\n{}",
        log(d, "b.log")
    );

    db.start_again().expect("start PostgreSQL");
    health_becomes(
        d,
        &b_url,
        "SERVING",
        Duration::from_secs(30),
        "once its database is up",
    )
    .await;
    let operator = connect(&mut b, d, "b.log", "operator", Some(&b_url)).await;
    operator.audit_head().await.expect("the broker answers");
    let _ = b.kill();
    let _ = b.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demos_second_broker_starts_as_printed_and_answers_when_the_first_is_killed() {
    let Some(db) = TestDatabase::start("secondprinted").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // The demo's own HTTP/JSON face on the port after its broker's: the
    // port a second broker once took for granted.
    let port = free_port_pair();
    let mut a = demo_on(
        &db.url,
        d,
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{}", port + 1),
    );
    connect(&mut a, d, "a.log", "cpas-anderlecht", None).await;
    let (mut b, b_url) = second_broker(d);
    let b_consumer = connect(&mut b, d, "b.log", "cpas-anderlecht", Some(&b_url)).await;
    b_consumer
        .lookup(lookup())
        .await
        .expect("a lookup through the second broker");

    // Failover: the first broker killed, the demo sources (a process of
    // their own) still answer the second.
    let _ = a.kill();
    let _ = a.wait();
    for _ in 0..5 {
        b_consumer
            .lookup(lookup())
            .await
            .expect("a lookup through the second broker with the first one killed");
    }
    let _ = b.kill();
    let _ = b.wait();
    // Removing the data directory stops the demo sources.
}
