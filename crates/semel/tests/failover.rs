//! Two brokers on one PostgreSQL database, as real processes: `semel demo
//! --store` (broker A, with the demo sources) and `semel serve` with the
//! second-broker configuration the demo writes (broker B). A client drives
//! lookups through both, moving to the other broker when one fails
//! (client-side balancing); B is killed with SIGKILL under load; lookups
//! go on through A. Afterwards every answered lookup has exactly one audit
//! entry, and the log read straight from PostgreSQL verifies: chain, tree
//! and every signed checkpoint, with the log's key. A registry change made
//! through one broker takes effect on the other within the stated bound.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use semel_client::{AuditFilter, Client, LookupArgs};
use semel_postgres::testing::TestDatabase;

fn spawn(args: &[&str], dir: &Path, log: &str, env: &[(&str, String)]) -> Child {
    let log = std::fs::File::create(dir.join(log)).expect("create a log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_semel"));
    cmd.args(args)
        .env("SEMEL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start semel")
}

/// `semel demo` on the database at `url`, its log in `a.log`.
fn demo_on(url: &str, dir: &Path) -> Child {
    spawn(
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
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
        &[],
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Connects as `who` to `broker` (the demo's broker when `None`); fails
/// with the process's log if it stopped.
async fn connect(
    child: &mut Child,
    dir: &Path,
    log: &str,
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
            panic!(
                "{log} stopped ({status}):\n{}",
                std::fs::read_to_string(dir.join(log)).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "{log} did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn lookup(citizen: &str) -> LookupArgs {
    LookupArgs {
        citizen: citizen.into(),
        dataset: "national_register.residence".into(),
        fields: vec!["street".into()],
        purpose: "RIS_ELIGIBILITY".into(),
        ..Default::default()
    }
}

/// How many times each request id appears in the log.
async fn audited(client: &Client) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    let mut token = None;
    loop {
        let page = client
            .audit_list(AuditFilter {
                limit: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list the audit log");
        for e in page["entries"].as_array().expect("entries") {
            *ids.entry(e["request_id"].as_str().expect("id").to_owned())
                .or_default() += 1;
        }
        match page["next_page_token"].as_str() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_on_postgresql_one_killed_under_load() {
    let Some(db) = TestDatabase::start("failover").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut a = demo_on(&db.url, d);
    let a_consumer = connect(&mut a, d, "a.log", "cpas-anderlecht", None).await;
    let b_port = free_port();
    let b_url = format!("https://127.0.0.1:{b_port}");
    let config = d.join("second-broker.toml");
    assert!(
        config.exists(),
        "the demo on PostgreSQL writes second-broker.toml"
    );
    let mut b = spawn(
        &["serve", "--config", config.to_str().expect("utf-8 path")],
        d,
        "b.log",
        &[("SEMEL_LISTEN", format!("127.0.0.1:{b_port}"))],
    );
    let b_consumer = connect(&mut b, d, "b.log", "cpas-anderlecht", Some(&b_url)).await;

    // A suspension made through A takes effect on B within the bound
    // (NOTIFY, or the 1 s poll).
    let a_operator = connect(&mut a, d, "a.log", "operator", None).await;
    b_consumer
        .lookup(lookup("93051822361"))
        .await
        .expect("allowed through B");
    let cpas = semel_demo::seed::org("cpas-anderlecht")
        .expect("demo org")
        .kbo
        .as_str()
        .to_owned();
    a_operator
        .set_organisation_suspended(cpas.clone(), true, "failover test".into())
        .await
        .expect("suspend through A");
    let suspended_at = Instant::now();
    let reached_b = loop {
        match b_consumer.lookup(lookup("93051822361")).await {
            Err(e) if format!("{e:#}").contains("ORGANISATION_SUSPENDED") => {
                break suspended_at.elapsed();
            }
            _ => {}
        }
        assert!(
            suspended_at.elapsed() < Duration::from_secs(3),
            "the suspension made through A did not reach B within 3 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    a_operator
        .set_organisation_suspended(cpas, false, String::new())
        .await
        .expect("reinstate through A");
    loop {
        if b_consumer.lookup(lookup("93051822361")).await.is_ok() {
            break;
        }
        assert!(suspended_at.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Load through both brokers; a worker whose broker fails moves to the
    // other one.
    let answered: Arc<Mutex<Vec<String>>> = Arc::default();
    let through_a_after_kill: Arc<Mutex<usize>> = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let citizens = ["93051822361", "85073003328", "17073003384", "05110200252"];
    let mut workers = Vec::new();
    for w in 0..16usize {
        let clients = [a_consumer.clone(), b_consumer.clone()];
        let (answered, after, killed, stop) = (
            answered.clone(),
            through_a_after_kill.clone(),
            killed.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut at = w % 2;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let was_killed = killed.load(Ordering::Relaxed);
                match clients[at]
                    .lookup(lookup(citizens[(w + i) % citizens.len()]))
                    .await
                {
                    Ok(v) => {
                        answered
                            .lock()
                            .expect("lock")
                            .push(v["request_id"].as_str().expect("id").to_owned());
                        if was_killed && at == 0 {
                            *after.lock().expect("lock") += 1;
                        }
                    }
                    Err(_) => at = 1 - at,
                }
            }
        }));
    }
    while answered.lock().expect("lock").len() < 400 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.kill().expect("SIGKILL broker B");
    b.wait().expect("reap B");
    killed.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while *through_a_after_kill.lock().expect("lock") < 300 {
        assert!(
            Instant::now() < deadline,
            "lookups did not continue through A after B was killed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }

    // Every answered lookup has exactly one entry.
    let answered = answered.lock().expect("lock").clone();
    let audited = audited(&a_operator).await;
    let missing: Vec<&String> = answered
        .iter()
        .filter(|id| !audited.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} answered lookups have no entry",
        missing.len()
    );
    let twice = audited.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "{twice} request ids have more than one entry");

    // The log, read straight from PostgreSQL, verifies with the log's key:
    // the chain, the tree, every signed checkpoint.
    let pg = semel_postgres::PgAudit::connect(&db.url)
        .await
        .expect("connect");
    // Wait for the integrator to sign a checkpoint covering what A answered.
    let (size, _) = pg.head().await.expect("head");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let head = pg.tree_head().await.expect("tree head");
        if head.size >= size {
            break;
        }
        assert!(Instant::now() < deadline, "the tree did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let key = semel_store::read_signing_key(&d.join("pki").join("audit-signing.key"))
        .expect("read the key")
        .expect("the log's key");
    let signer = semel_core::checkpoint::NoteSigner::new(semel_demo_stack::demo::DEMO_ORIGIN, key);
    let verifier =
        semel_core::checkpoint::NoteVerifier::parse(&signer.verifier_key()).expect("verifier");
    let notes: Vec<String> = pg
        .checkpoints(u64::MAX)
        .await
        .expect("checkpoints")
        .into_iter()
        .map(|c| c.note)
        .collect();
    assert!(!notes.is_empty(), "checkpoints were signed");
    let mut log = semel_store::verify::LogVerifier::new(&notes, &verifier).expect("notes verify");
    let (now, _) = pg.head().await.expect("head");
    for chunk in (0..now).step_by(10_000) {
        for encoding in pg
            .encodings(chunk, (chunk + 10_000).min(now))
            .await
            .expect("entries")
        {
            log.push(&encoding).expect("the chain verifies");
        }
    }
    let report = log.finish().expect("every checkpoint reproduces");
    assert_eq!(report.entries, now);
    assert!(report.entries as usize >= answered.len());
    eprintln!(
        "failover: suspension through A refused on B after {reached_b:?}; {} lookups answered, {} through A after B was killed; {} entries and {} checkpoints verify",
        answered.len(),
        through_a_after_kill.lock().expect("lock"),
        report.entries,
        report.checkpoints
    );

    // The auditors' tool agrees, on the same log read from PostgreSQL.
    let verify = Command::new(env!("CARGO_BIN_EXE_semel"))
        .args(["audit", "verify", "--database", &db.url, "--verifier-key"])
        .arg(signer.verifier_key())
        .output()
        .expect("semel audit verify --database");
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(out.starts_with("verified: "), "{out}");

    // Lookups still go through A.
    a_consumer
        .lookup(lookup("93051822361"))
        .await
        .expect("a lookup through the surviving broker");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(a.id().to_string())
        .status();
    let _ = a.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_under_load_fails_closed_and_the_broker_recovers() {
    let Some(db) = TestDatabase::own_cluster("restart").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut a = demo_on(&db.url, d);
    let consumer = connect(&mut a, d, "a.log", "cpas-anderlecht", None).await;
    let answered: Arc<Mutex<Vec<String>>> = Arc::default();
    let refusals: Arc<Mutex<Vec<String>>> = Arc::default();
    let restarted = Arc::new(AtomicBool::new(false));
    let after_restart: Arc<Mutex<usize>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8usize {
        let client = consumer.clone();
        let (answered, refusals, restarted, after, stop) = (
            answered.clone(),
            refusals.clone(),
            restarted.clone(),
            after_restart.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let citizens = ["93051822361", "85073003328"];
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let was_restarted = restarted.load(Ordering::Relaxed);
                match client.lookup(lookup(citizens[i % 2])).await {
                    Ok(v) => {
                        answered
                            .lock()
                            .expect("lock")
                            .push(v["request_id"].as_str().expect("id").to_owned());
                        if was_restarted {
                            *after.lock().expect("lock") += 1;
                        }
                    }
                    Err(e) => {
                        refusals.lock().expect("lock").push(format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    while answered.lock().expect("lock").len() < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("restart: restarting PostgreSQL");
    db.restart().expect("restart PostgreSQL");
    eprintln!("restart: PostgreSQL restarted");
    restarted.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while *after_restart.lock().expect("lock") < 200 {
        assert!(
            Instant::now() < deadline,
            "lookups did not resume after PostgreSQL restarted; refusals: {:?}",
            refusals
                .lock()
                .expect("lock")
                .iter()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("restart: lookups resumed");
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    // While it was down, calls were refused as unavailable, nothing else.
    assert!(
        !refusals.lock().expect("lock").is_empty(),
        "no call was refused while PostgreSQL restarted: the restart was not under load"
    );
    for r in refusals.lock().expect("lock").iter() {
        assert!(
            r.contains("UNAVAILABLE"),
            "a call refused otherwise than UNAVAILABLE: {r}"
        );
    }
    let answered = answered.lock().expect("lock").clone();
    let operator = connect(&mut a, d, "a.log", "operator", None).await;
    let audited = audited(&operator).await;
    let missing = answered
        .iter()
        .filter(|id| !audited.contains_key(*id))
        .count();
    assert_eq!(missing, 0, "{missing} answered lookups have no entry");
    assert_eq!(audited.values().filter(|n| **n > 1).count(), 0);
    // The broker reports itself serving again, without a restart.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = Command::new(env!("CARGO_BIN_EXE_semel"))
            .args([
                "health",
                "--service",
                "semel.v1.LookupService",
                "--data-dir",
            ])
            .arg(d)
            .output()
            .expect("semel health");
        if String::from_utf8_lossy(&health.stdout).trim() == "SERVING" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lookups not reported SERVING again: {}{}",
            String::from_utf8_lossy(&health.stdout),
            String::from_utf8_lossy(&health.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "restart: {} lookups answered, {} refused while PostgreSQL restarted, all answered have one entry",
        answered.len(),
        refusals.lock().expect("lock").len()
    );
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(a.id().to_string())
        .status();
    let _ = a.wait();
}
