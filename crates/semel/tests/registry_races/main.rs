//! Registry rules held by the database, not by one broker's memory (issue
//! 30): two real brokers on one PostgreSQL database (`semel demo --store`,
//! broker A, and `semel serve` with the second-broker configuration, broker
//! B) race each rule (pending applications, an amendment against a
//! suspension, two amendments of one version, two decisions on one
//! application for membership), and exactly one of two racing changes wins;
//! the other is refused with a reason, and the refusal is in the audit log. A
//! registry-files apply is one transaction: another broker never sees part
//! of it. A broker killed (SIGKILL) in the middle of one leaves the
//! registry as it was (killed before the commit) or as the files describe
//! it (after), and the apply closed by one entry saying which, written by
//! the broker that settled it: the restarted one on the embedded store, a
//! live one on PostgreSQL.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use semel_client::{CallError, Client};
use semel_postgres::testing::TestDatabase;

mod killed_mid_apply;
mod races;

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

/// Two brokers on a fresh database: A (the demo, with its sources) and B,
/// started with `env`.
struct Pair {
    a: Child,
    b: Child,
    b_url: String,
    dir: tempfile::TempDir,
    _db: TestDatabase,
}

impl Pair {
    async fn start(b_env: &[(&str, String)]) -> Option<Pair> {
        let db = TestDatabase::start("registry_races").await?;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let mut a = spawn(
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
                &db.url,
                "--data-dir",
                d.to_str().expect("utf-8 path"),
            ],
            d,
            "a.log",
            &[],
        );
        connect(&mut a, d, "a.log", "operator", None).await;
        let b_port = free_port();
        let config = d.join("second-broker.toml");
        let mut env = vec![("SEMEL_LISTEN", format!("127.0.0.1:{b_port}"))];
        env.extend(b_env.iter().cloned());
        let b = spawn(
            &["serve", "--config", config.to_str().expect("utf-8 path")],
            d,
            "b.log",
            &env,
        );
        Some(Pair {
            a,
            b,
            b_url: format!("https://127.0.0.1:{b_port}"),
            dir,
            _db: db,
        })
    }

    /// Starts broker B again (after it was killed), on its port, with
    /// `env` instead of the environment it started with.
    fn restart_b(&mut self, env: &[(&str, String)]) {
        let port = self.b_url.rsplit(':').next().expect("port").to_owned();
        let mut all = vec![("SEMEL_LISTEN", format!("127.0.0.1:{port}"))];
        all.extend(env.iter().cloned());
        let config = self.dir.path().join("second-broker.toml");
        self.b = spawn(
            &["serve", "--config", config.to_str().expect("utf-8 path")],
            self.dir.path(),
            "b2.log",
            &all,
        );
    }

    async fn both(&mut self, who: &str) -> (Client, Client) {
        let d = self.dir.path().to_owned();
        let a = connect(&mut self.a, &d, "a.log", who, None).await;
        let b = connect(&mut self.b, &d, "b.log", who, Some(&self.b_url.clone())).await;
        (a, b)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = self.a.kill();
        let _ = self.b.kill();
        let _ = self.a.wait();
        let _ = self.b.wait();
    }
}

fn reason(e: &CallError) -> &str {
    e.reason.as_deref().unwrap_or_default()
}
