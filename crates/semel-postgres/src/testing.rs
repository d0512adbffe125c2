//! A PostgreSQL database for tests: a fresh database for each test, in the
//! server `SEMEL_TEST_DATABASE_URL` names, or else in a throwaway cluster
//! (initdb and pg_ctl from the newest version's lib directory, on a free
//! port, in a temporary directory) that the test process starts once and
//! that a watchdog stops when the process ends. A test that restarts
//! PostgreSQL gets a cluster of its own ([`TestDatabase::own_cluster`]).
//! Where none of this is possible, tests say loudly that they were
//! skipped; with `SEMEL_REQUIRE_POSTGRES=1` (as `.ci/run` sets) that is a
//! failure instead.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A database for one test.
#[derive(Debug)]
pub struct TestDatabase {
    pub url: String,
    cluster: Option<Cluster>,
    /// On a shared server: its URL and the database to drop at the end.
    shared: Option<(String, String)>,
}

#[derive(Debug)]
struct Cluster {
    pg_ctl: PathBuf,
    dir: PathBuf,
    as_postgres: bool,
    _tmp: tempfile_dir::Dir,
}

mod tempfile_dir {
    /// A temporary directory removed on drop (std only: this module is
    /// used by tests of other crates too).
    #[derive(Debug)]
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl TestDatabase {
    /// A fresh database, or `None` (said on stderr) when PostgreSQL is not
    /// to be had here. Panics instead when `SEMEL_REQUIRE_POSTGRES=1`.
    pub async fn start(test: &str) -> Option<TestDatabase> {
        let base = match std::env::var("SEMEL_TEST_DATABASE_URL") {
            Ok(base) => Ok(base),
            Err(_) => shared_cluster(),
        };
        let found = match base {
            Ok(base) => fresh_database(&base, test)
                .await
                .map(|(url, name)| TestDatabase {
                    url,
                    cluster: None,
                    shared: Some((base, name)),
                }),
            Err(why) => Err(why),
        };
        Self::found(test, found)
    }

    /// A database in a throwaway cluster of its own, which the test may
    /// restart ([`TestDatabase::restart`]); stopped when dropped.
    pub async fn own_cluster(test: &str) -> Option<TestDatabase> {
        let found = throwaway_cluster(test).await;
        Self::found(test, found)
    }

    /// Runs SQL on the test's database as its administrator would (a
    /// tamper test's statements); the rows of the last statement's result,
    /// each column as text.
    pub async fn sql(&self, statements: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let driver = tokio::spawn(connection);
        let result = client.simple_query(statements).await;
        drop(client);
        let _ = driver.await;
        let messages = result.map_err(|e| match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        })?;
        let mut rows = Vec::new();
        for m in messages {
            match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    rows.push((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                }
                tokio_postgres::SimpleQueryMessage::CommandComplete(_) => {}
                _ => {}
            }
        }
        Ok(rows)
    }

    /// Restarts the test's own cluster (a database restart under load):
    /// every connection is dropped, and the server is back when this
    /// returns.
    pub fn restart(&self) -> Result<(), String> {
        let c = self
            .cluster
            .as_ref()
            .ok_or("only a cluster of the test's own can be restarted")?;
        let out = c
            .command(&c.pg_ctl)
            .args(["restart", "-m", "fast", "-w", "-l"])
            // The server's output goes to the log, not to pipes this call
            // would wait on for as long as the server runs.
            .arg(c._tmp.0.join("log"))
            .arg("-D")
            .arg(&c.dir)
            .output()
            .map_err(|e| format!("run pg_ctl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl restart failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Stops the test's own cluster (fast shutdown: connections are
    /// closed): the database is down until [`TestDatabase::start_again`].
    pub fn stop(&self) -> Result<(), String> {
        self.cluster
            .as_ref()
            .ok_or("only a cluster of the test's own can be stopped")?
            .ctl(&["stop", "-m", "fast", "-w"])
    }

    /// Starts the test's own cluster again after [`TestDatabase::stop`],
    /// on the same port: it accepts connections when this returns.
    pub fn start_again(&self) -> Result<(), String> {
        let c = self
            .cluster
            .as_ref()
            .ok_or("only a cluster of the test's own can be started")?;
        let config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| format!("the test database's URL: {e}"))?;
        let port = *config.get_ports().first().ok_or("no port in the URL")?;
        c.start(port)
    }

    fn found(test: &str, found: Result<TestDatabase, String>) -> Option<TestDatabase> {
        match found {
            Ok(db) => Some(db),
            Err(why) => {
                if std::env::var("SEMEL_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                    panic!("{test}: PostgreSQL is required (SEMEL_REQUIRE_POSTGRES=1) but {why}");
                }
                eprintln!(
                    "SKIPPED {test}: no PostgreSQL ({why}); set SEMEL_TEST_DATABASE_URL or install PostgreSQL"
                );
                None
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some((base, name)) = self.shared.take() {
            // On a thread of its own: drop may run inside a runtime.
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    if let Ok((client, connection)) =
                        tokio_postgres::connect(&base, tokio_postgres::NoTls).await
                    {
                        let task = tokio::spawn(connection);
                        let _ = client
                            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .await;
                        task.abort();
                    }
                });
            })
            .join();
        }
        if let Some(c) = &self.cluster {
            let mut cmd = c.command(&c.pg_ctl);
            cmd.args(["stop", "-m", "immediate", "-w", "-D"])
                .arg(&c.dir);
            let _ = cmd.output();
        }
    }
}

impl Cluster {
    /// Runs a PostgreSQL tool, as the `postgres` user when we are root
    /// (initdb and postgres refuse to run as root).
    fn command(&self, tool: &Path) -> Command {
        command(tool, self.as_postgres)
    }
}

fn command(tool: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(tool);
        c
    } else {
        Command::new(tool)
    }
}

async fn fresh_database(base: &str, test: &str) -> Result<(String, String), String> {
    let (client, connection) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect to SEMEL_TEST_DATABASE_URL: {e}"))?;
    let task = tokio::spawn(connection);
    let name = format!(
        "semel_test_{}_{}_{}",
        test.chars()
            .filter(char::is_ascii_alphanumeric)
            .take(20)
            .collect::<String>()
            .to_lowercase(),
        std::process::id(),
        unique()
    );
    // A locale's collation where PostgreSQL has ICU (as production
    // databases often do): code that needs byte order must ask for it, and
    // the conformance suite then shows it does. The server default otherwise.
    let icu = format!(
        "CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
    );
    if client.batch_execute(&icu).await.is_err() {
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| format!("cannot create a test database: {e}"))?;
    }
    drop(client);
    task.abort();
    // Replace the database of the base URL (its last path segment, if any).
    let url = match base.rsplit_once('/') {
        Some((prefix, last)) if !last.contains('@') && prefix.contains("://") => {
            let params = last
                .split_once('?')
                .map(|(_, q)| format!("?{q}"))
                .unwrap_or_default();
            format!("{prefix}/{name}{params}")
        }
        _ => format!("{} dbname={name}", base.trim()),
    };
    Ok((url, name))
}

/// The URL of this test process's throwaway cluster, started the first
/// time it is asked for. A watchdog (a shell waiting for this process to
/// end) stops the cluster and removes its directory, since statics are
/// never dropped.
fn shared_cluster() -> Result<String, String> {
    static SHARED: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| {
            let (cluster, port) = start_cluster()?;
            let stop = format!(
                "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {runas}{pg_ctl} stop -m immediate -D {data} >/dev/null 2>&1; rm -rf {tmp}",
                pid = std::process::id(),
                runas = if cluster.as_postgres { "runuser -u postgres -- " } else { "" },
                pg_ctl = cluster.pg_ctl.display(),
                data = cluster.dir.display(),
                tmp = cluster._tmp.0.display(),
            );
            Command::new("sh")
                .args(["-c", &stop])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| format!("start the cluster's watchdog: {e}"))?;
            // The watchdog removes the directory; the cluster is left running.
            std::mem::forget(cluster);
            Ok(format!("postgresql://postgres@127.0.0.1:{port}/postgres"))
        })
        .clone()
}

async fn throwaway_cluster(test: &str) -> Result<TestDatabase, String> {
    let (cluster, port) = start_cluster()?;
    let base = format!("postgresql://postgres@127.0.0.1:{port}/postgres");
    let (url, _) = fresh_database(&base, test).await?;
    Ok(TestDatabase {
        url,
        cluster: Some(cluster),
        shared: None,
    })
}

fn start_cluster() -> Result<(Cluster, u16), String> {
    let (bin, as_postgres, tmp, guard) = cluster_dir()?;
    let data = tmp.join("data");
    let out = command(&bin.join("initdb"), as_postgres)
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "-D"])
        .arg(&data)
        .output()
        .map_err(|e| format!("run initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = free_port().ok_or("no free port")?;
    let cluster = Cluster {
        pg_ctl: bin.join("pg_ctl"),
        dir: data,
        as_postgres,
        _tmp: guard,
    };
    cluster.start(port)?;
    Ok((cluster, port))
}

/// A temporary directory for a cluster, owned by the user PostgreSQL runs
/// as, and the version's tools.
fn cluster_dir() -> Result<(PathBuf, bool, PathBuf, tempfile_dir::Dir), String> {
    let bin = newest_bin_dir().ok_or("no initdb in /usr/lib/postgresql/*/bin")?;
    let as_postgres = is_root();
    let tmp = std::env::temp_dir().join(format!("semel-pg-{}-{}", std::process::id(), unique()));
    // create_dir, not create_dir_all: a directory already there is an error.
    std::fs::create_dir(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
    let guard = tempfile_dir::Dir(tmp.clone());
    if as_postgres {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&tmp)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("cannot give the cluster's directory to the postgres user".into());
        }
    }
    Ok((bin, as_postgres, tmp, guard))
}

impl Cluster {
    /// Starts the server on `port`, waiting until it accepts connections.
    fn start(&self, port: u16) -> Result<(), String> {
        let tmp = &self._tmp.0;
        let out = self
            .command(&self.pg_ctl)
            .args(["start", "-w", "-l"])
            .arg(tmp.join("log"))
            .arg("-D")
            .arg(&self.dir)
            .arg("-o")
            .arg(format!(
                "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=on -c synchronous_commit=on",
                tmp.display()
            ))
            .output()
            .map_err(|e| format!("run pg_ctl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "pg_ctl start failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(tmp.join("log")).unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// `pg_ctl <args> -D <data>`.
    fn ctl(&self, args: &[&str]) -> Result<(), String> {
        let out = self
            .command(&self.pg_ctl)
            .args(args)
            .arg("-D")
            .arg(&self.dir)
            .output()
            .map_err(|e| format!("run pg_ctl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

/// A primary and a standby streaming from it (`pg_basebackup`), each a
/// throwaway cluster of the test's own, for failover tests: the primary
/// can be killed, the standby stopped, started again and promoted. Both
/// are stopped when dropped.
#[derive(Debug)]
pub struct Replicated {
    /// The test's database (the same name on both), and the servers' ports.
    pub database: String,
    pub primary_port: u16,
    pub standby_port: u16,
    primary: Cluster,
    standby: Cluster,
}

impl Replicated {
    /// A primary with a fresh database and a standby streaming from it;
    /// `synchronous`: every commit on the primary waits for the standby
    /// (`synchronous_standby_names = '*'`, set on the primary only, so a
    /// promoted standby does not wait for a standby of its own). `None`
    /// (said on stderr) when PostgreSQL's tools are not to be had here;
    /// panics instead when `SEMEL_REQUIRE_POSTGRES=1`.
    pub async fn start(test: &str, synchronous: bool) -> Option<Replicated> {
        let found = Self::try_start(test, synchronous).await;
        match found {
            Ok(r) => Some(r),
            Err(why) => {
                if std::env::var("SEMEL_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                    panic!(
                        "{test}: PostgreSQL clusters are required (SEMEL_REQUIRE_POSTGRES=1) but {why}"
                    );
                }
                eprintln!(
                    "SKIPPED {test}: cannot run a primary and a standby here ({why}); install PostgreSQL's server tools (initdb, pg_ctl, pg_basebackup)"
                );
                None
            }
        }
    }

    async fn try_start(test: &str, synchronous: bool) -> Result<Replicated, String> {
        let (primary, primary_port) = start_cluster()?;
        let base = format!("postgresql://postgres@127.0.0.1:{primary_port}/postgres");
        let (_, database) = fresh_database(&base, test).await?;
        let (bin, as_postgres, tmp, guard) = cluster_dir()?;
        let data = tmp.join("data");
        let out = command(&bin.join("pg_basebackup"), as_postgres)
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-X",
                "stream",
                "-R",
                "-c",
                "fast",
                "-p",
            ])
            .arg(primary_port.to_string())
            .arg("-D")
            .arg(&data)
            .output()
            .map_err(|e| format!("run pg_basebackup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let standby = Cluster {
            pg_ctl: bin.join("pg_ctl"),
            dir: data,
            as_postgres,
            _tmp: guard,
        };
        let standby_port = free_port().ok_or("no free port")?;
        standby.start(standby_port)?;
        let r = Replicated {
            database,
            primary_port,
            standby_port,
            primary,
            standby,
        };
        // Streaming, and (when asked) synchronous, before the test begins.
        let client = connect(&base).await?;
        if synchronous {
            // One statement a call: ALTER SYSTEM runs outside a transaction.
            for sql in [
                "ALTER SYSTEM SET synchronous_standby_names = '*'",
                "SELECT pg_reload_conf()",
            ] {
                client
                    .batch_execute(sql)
                    .await
                    .map_err(|e| format!("configure the primary: {e}"))?;
            }
        }
        let want = if synchronous { "sync" } else { "async" };
        for _ in 0..200 {
            let row = client
                .query_opt(
                    "SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'",
                    &[],
                )
                .await
                .map_err(|e| format!("read pg_stat_replication: {e}"))?;
            if row.is_some_and(|r| r.get::<_, &str>(0) == want) {
                return Ok(r);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Err(format!("the standby is not streaming ({want}) after 10 s"))
    }

    /// A URL of the test's database on `port` (the primary's, the
    /// standby's, or a forwarder's in front of them).
    pub fn url(&self, port: u16) -> String {
        format!("postgresql://postgres@127.0.0.1:{port}/{}", self.database)
    }

    /// Kills the primary as a crash would (`pg_ctl stop -m immediate`):
    /// every connection drops, nothing more is written.
    pub fn kill_primary(&self) -> Result<(), String> {
        self.primary.ctl(&["stop", "-m", "immediate", "-w"])
    }

    /// Stops the standby (it receives nothing until started again).
    pub fn stop_standby(&self) -> Result<(), String> {
        self.standby.ctl(&["stop", "-m", "fast", "-w"])
    }

    /// Starts the stopped standby again.
    pub fn start_standby(&self) -> Result<(), String> {
        self.standby.start(self.standby_port)
    }

    /// Promotes the standby to primary, waiting until it takes writes.
    pub fn promote_standby(&self) -> Result<(), String> {
        self.standby.ctl(&["promote", "-w"])
    }
}

impl Drop for Replicated {
    fn drop(&mut self) {
        let _ = self.primary.ctl(&["stop", "-m", "immediate", "-w"]);
        let _ = self.standby.ctl(&["stop", "-m", "immediate", "-w"]);
    }
}

/// A connection for the test's own statements, driven on its own task.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connect to {url}: {e}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// A number no other call in this process gets: tests run on parallel
/// threads, and two of them can read the same clock time (it happened in
/// CI: two clusters in one directory), so a counter decides, and the clock
/// only keeps names apart across processes reusing a pid.
fn unique() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!("{n}_{t}")
}

fn newest_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn free_port() -> Option<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()
        .map(|a| a.port())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
