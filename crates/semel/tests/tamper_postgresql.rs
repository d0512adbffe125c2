//! A database administrator's alterations of the audit log on PostgreSQL
//! (issue 36), against real processes: `semel demo --store` records
//! lookups and stops; its log is then altered by SQL, one way at a time,
//! and undone. Each alteration is refused when a broker starts on it
//! (`semel serve` with the second-broker configuration the demo writes),
//! by `semel audit verify --database`, or both, always with exit code 4
//! (tampering), never 1 (trouble); an unreachable database is exit 1.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use semel_client::{Client, LookupArgs};
use semel_core::AuditEntry;
use semel_postgres::testing::TestDatabase;
use semel_postgres::{Integrated, PgAudit};

mod demo_process;

fn semel() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_semel"));
    c.env("SEMEL_LOG", "warn").stdin(Stdio::null());
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `semel demo` on the database at `url`, its log in `demo.log`.
fn demo_on(url: &str, dir: &Path) -> Child {
    let log = std::fs::File::create(dir.join("demo.log")).expect("log");
    semel()
        .args([
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
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start semel demo")
}

/// `semel serve` on the demo's database: its exit code and log when it
/// refused to start within a minute, `None` when it came up (then stopped).
fn serve_refuses(dir: &Path) -> Option<(i32, String)> {
    let log_path = dir.join("serve.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut child = semel()
        .args(["serve", "--config"])
        .arg(dir.join("second-broker.toml"))
        .env("SEMEL_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("SEMEL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start semel serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some((
                status.code().unwrap_or(-1),
                std::fs::read_to_string(&log_path).unwrap_or_default(),
            ));
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if Instant::now() > deadline || log.contains("proves itself") {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `semel audit verify --database`: its exit code and what it printed.
fn verify(url: &str, key: &str) -> (i32, String) {
    let out = semel()
        .args(["audit", "verify", "--database", url, "--verifier-key", key])
        .output()
        .expect("semel audit verify");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_administrator_cannot_hide_alter_or_cut_entries_unnoticed() {
    let Some(db) = TestDatabase::start("tamperpg").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut demo = demo_on(&db.url, d);
    let deadline = Instant::now() + Duration::from_secs(90);
    let client = loop {
        if d.join("demo.json").exists()
            && let Ok(config) = semel_demo_stack::demo::client_config(d, "cpas-anderlecht")
            && let Ok(client) = Client::connect(&config).await
        {
            break client;
        }
        assert!(
            demo.try_wait().expect("wait").is_none(),
            "the demo stopped: {}",
            std::fs::read_to_string(d.join("demo.log")).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "the demo did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for _ in 0..12 {
        client
            .lookup(LookupArgs {
                citizen: "93051822361".into(),
                dataset: "national_register.residence".into(),
                fields: vec!["street".into()],
                purpose: "RIS_ELIGIBILITY".into(),
                ..LookupArgs::default()
            })
            .await
            .expect("a lookup");
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(demo.id().to_string())
        .status();
    assert!(demo.wait().expect("wait").success(), "a clean stop");

    // A checkpoint over every entry, signed with the log's key.
    let key = semel_store::read_signing_key(&d.join("pki").join("audit-signing.key"))
        .expect("read the key")
        .expect("the log's key");
    let signer = semel_core::checkpoint::NoteSigner::new(semel_demo_stack::demo::DEMO_ORIGIN, key);
    let verifier_key = signer.verifier_key();
    let mut pg = PgAudit::connect(&db.url).await.expect("connect");
    while let Integrated::Done {
        checkpoint: Some(_),
        ..
    } = pg.integrate(1_000_000, &signer).await.expect("integrate")
    {}
    let n = pg.size().await.expect("size") as i64;
    assert!(n >= 12, "{n} entries");
    let db_sql = semel_postgres::testing::connect(&db.url)
        .await
        .expect("connect");

    let (code, out) = verify(&db.url, &verifier_key);
    assert_eq!(code, 0, "the untouched log verifies: {out}");

    // 1. A citizen's entries hidden from queries: their citizen column
    //    cleared. The encodings, the tree and the checkpoints are intact.
    let hidden: Vec<i64> = db_sql
        .query(
            "SELECT sequence FROM audit_entries WHERE citizen IS NOT NULL ORDER BY sequence LIMIT 3",
            &[],
        )
        .await
        .expect("select")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(hidden.len(), 3);
    db_sql
        .execute(
            "CREATE TABLE saved_citizens AS SELECT sequence, citizen FROM audit_entries WHERE sequence = ANY($1)",
            &[&hidden],
        )
        .await
        .expect("save");
    db_sql
        .execute(
            "UPDATE audit_entries SET citizen = NULL WHERE sequence = ANY($1)",
            &[&hidden],
        )
        .await
        .expect("hide");
    let (code, out) = verify(&db.url, &verifier_key);
    assert_eq!(code, 4, "hidden entries: {out}");
    assert!(
        out.contains(&format!("entry {}", hidden[0])) && out.contains("citizen"),
        "{out}"
    );
    assert!(!out.contains("93051822361"), "no national number: {out}");
    db_sql
        .batch_execute(
            "UPDATE audit_entries e SET citizen = s.citizen FROM saved_citizens s WHERE e.sequence = s.sequence; \
             DROP TABLE saved_citizens",
        )
        .await
        .expect("restore");
    assert_eq!(verify(&db.url, &verifier_key).0, 0, "restored");

    // 2. The payload of the checkpoint's last entry altered (re-encoded,
    //    its columns untouched): the start refuses, verify names it.
    let last: Vec<u8> = db_sql
        .query_one(
            "SELECT encoding FROM audit_entries WHERE sequence = $1",
            &[&(n - 1)],
        )
        .await
        .expect("select")
        .get(0);
    let mut entry = AuditEntry::decode(&last).expect("decode");
    entry.record.purpose = "SOMETHING_ELSE".into();
    db_sql
        .execute(
            "UPDATE audit_entries SET encoding = $1 WHERE sequence = $2",
            &[&entry.to_bytes(), &(n - 1)],
        )
        .await
        .expect("alter");
    let (code, log) = serve_refuses(d).expect("the start is refused");
    assert_eq!(code, 4, "an altered payload: {log}");
    assert!(log.contains("does not prove itself"), "{log}");
    let (code, out) = verify(&db.url, &verifier_key);
    assert_eq!(code, 4, "an altered payload: {out}");
    db_sql
        .execute(
            "UPDATE audit_entries SET encoding = $1 WHERE sequence = $2",
            &[&last, &(n - 1)],
        )
        .await
        .expect("restore");

    // 3. The newest entry deleted just after its checkpoint, the head
    //    left: exit 4 (it was 1, as if the database were unreachable).
    db_sql
        .batch_execute(&format!(
            "CREATE TABLE saved_rows AS SELECT * FROM audit_entries WHERE sequence = {last}; \
             CREATE TABLE saved_head AS SELECT * FROM audit_head; \
             DELETE FROM audit_entries WHERE sequence = {last}",
            last = n - 1
        ))
        .await
        .expect("delete");
    let (code, out) = verify(&db.url, &verifier_key);
    assert_eq!(code, 4, "a deleted entry: {out}");
    let (code, log) = serve_refuses(d).expect("the start is refused");
    assert_eq!(code, 4, "a deleted entry: {log}");

    // 4. ... and the head wound back onto the entry before: a dense log,
    //    one entry short of what its checkpoint covers.
    let before: Vec<u8> = db_sql
        .query_one(
            "SELECT encoding FROM audit_entries WHERE sequence = $1",
            &[&(n - 2)],
        )
        .await
        .expect("select")
        .get(0);
    db_sql
        .execute(
            "UPDATE audit_head SET next_sequence = $1, last_hash = $2",
            &[&(n - 1), &semel_core::entry_hash(&before).to_vec()],
        )
        .await
        .expect("wind back");
    let (code, log) = serve_refuses(d).expect("the start is refused");
    assert_eq!(code, 4, "the head wound back: {log}");
    assert!(log.contains("acknowledged entries were removed"), "{log}");
    let (code, out) = verify(&db.url, &verifier_key);
    assert_eq!(code, 4, "the head wound back: {out}");
    db_sql
        .batch_execute(
            "INSERT INTO audit_entries SELECT * FROM saved_rows; \
             UPDATE audit_head SET next_sequence = s.next_sequence, last_hash = s.last_hash FROM saved_head s; \
             DROP TABLE saved_rows; DROP TABLE saved_head",
        )
        .await
        .expect("restore");

    // Undone, the log verifies and a broker starts on it.
    let (code, out) = verify(&db.url, &verifier_key);
    assert_eq!(code, 0, "restored: {out}");
    assert!(
        serve_refuses(d).is_none(),
        "a broker starts on the restored log"
    );

    // Trouble, not tampering: a database that cannot be reached.
    let (code, out) = verify("postgresql://postgres@127.0.0.1:1/none", &verifier_key);
    assert_eq!(code, 1, "an unreachable database: {out}");
}

/// On PostgreSQL as on the embedded store: `semel audit new-epoch` on an
/// empty database, under a new origin, writes the statement as the log's
/// first entry and signs it; `semel audit verify --database` reports the
/// boundary; a second run finds the log not empty and writes nothing.
#[tokio::test]
async fn a_new_epoch_begins_on_an_empty_database() {
    let Some(db) = TestDatabase::start("newepochpg").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = demo_process::broker_config(
        dir.path(),
        &dir.path().join("pki"),
        &dir.path().join("data"),
        "semel.test/audit/pg/epoch-2",
        &format!("[store]\nurl = {:?}\n", db.url),
    );
    // The previous epoch's newest cosigned checkpoint, signed with the
    // key the new epoch keeps.
    let key = semel_store::load_or_create_signing_key(&dir.path().join("pki/audit-signing.key"))
        .expect("signing key");
    let previous = semel_core::checkpoint::NoteSigner::new("semel.test/audit/pg", key).sign(
        &semel_core::checkpoint::Checkpoint {
            origin: "semel.test/audit/pg".into(),
            size: 500,
            root: [7; 32],
        },
    );
    std::fs::write(dir.path().join("previous.note"), previous).expect("note");
    let new_epoch = || {
        semel()
            .args(["audit", "new-epoch", "--json", "--config"])
            .arg(&config)
            .arg("--previous-checkpoint")
            .arg(dir.path().join("previous.note"))
            .args(["--held", "480"])
            .output()
            .expect("semel audit new-epoch")
    };
    let out = new_epoch();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (said["lost_from"].as_u64(), said["lost_to"].as_u64()),
        (Some(480), Some(500))
    );
    let key = said["verifier_key"].as_str().expect("key").to_owned();
    let out = new_epoch();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("begins an empty log"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = semel()
        .args([
            "audit",
            "verify",
            "--json",
            "--database",
            &db.url,
            "--verifier-key",
            &key,
        ])
        .output()
        .expect("semel audit verify");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["entries"], 1);
    assert_eq!(report["newest_checkpoint"], 1);
    assert_eq!(report["epoch"]["previous_origin"], "semel.test/audit/pg");
    assert_eq!(report["epoch"]["lost_from"], 480);
    assert_eq!(report["epoch"]["previous_signed_by_this_key"], true);
}
