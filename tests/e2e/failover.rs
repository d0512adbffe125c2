//! The tamper suite's failover cases (issue 36, point 8): a broker on a
//! primary with a streaming standby, through a TCP forwarder that stands for
//! the database's virtual address and is re-pointed at the promoted standby,
//! as a failover manager would. The test tracks every lookup answered OK
//! (by its request id) and looks for each in the promoted database: an
//! acknowledgement means the entry survives a failover where replication is
//! configured, and a database that lost acknowledged entries is refused,
//! never extended. Built into the PostgreSQL suite only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering::SeqCst};
use std::time::Duration;

use semel_demo::seed::datasets::*;
use semel_postgres::testing::{Replicated, connect};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::harness::*;

/// A TCP forwarder: the address the broker knows the database by,
/// forwarding each connection to the port it currently points at.
/// Re-pointing cuts the connections it forwards (the old primary is gone).
struct Forwarder {
    port: u16,
    target: Arc<AtomicU16>,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(target: u16) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let target = Arc::new(AtomicU16::new(target));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (t, conns) = (target.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = t.load(SeqCst);
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", to)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().await.push(handle);
            }
        });
        Forwarder {
            port,
            target,
            connections,
            task,
        }
    }

    async fn point_at(&self, port: u16) {
        self.target.store(port, SeqCst);
        for c in self.connections.lock().await.drain(..) {
            c.abort();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Lookups in flight from a few clients, recording the request id of every
/// one answered OK, and counting the refusals.
struct Load {
    acknowledged: Arc<std::sync::Mutex<Vec<String>>>,
    refused: Arc<std::sync::atomic::AtomicU64>,
    last_refusal: Arc<std::sync::Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(t: &TestDemo, clients: usize) -> Load {
        let acknowledged = Arc::new(std::sync::Mutex::new(Vec::new()));
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let last_refusal = Arc::new(std::sync::Mutex::new(None));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let mut c = t.lookup_client(ANDERLECHT).await;
            let (acked, refused, stop) = (acknowledged.clone(), refused.clone(), stop.clone());
            let last = last_refusal.clone();
            tasks.push(tokio::spawn(async move {
                while !stop.load(SeqCst) {
                    let call = c.lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"));
                    match tokio::time::timeout(Duration::from_secs(20), call).await {
                        Ok(Ok(r)) => acked
                            .lock()
                            .expect("ids")
                            .push(r.into_inner().request_id.replace('-', "")),
                        Ok(Err(e)) => {
                            refused.fetch_add(1, SeqCst);
                            *last.lock().expect("last") = Some(e.message().to_owned());
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(_) => {
                            refused.fetch_add(1, SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }));
        }
        Load {
            acknowledged,
            refused,
            last_refusal,
            stop,
            tasks,
        }
    }

    fn acknowledged(&self) -> usize {
        self.acknowledged.lock().expect("ids").len()
    }

    /// Waits until `more` lookups more than now are acknowledged.
    async fn until_acknowledged(&self, more: usize, within: Duration) {
        let target = self.acknowledged() + more;
        let deadline = tokio::time::Instant::now() + within;
        while self.acknowledged() < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} lookups acknowledged, waiting for {target} ({} refused, the last: {:?})",
                self.acknowledged(),
                self.refused.load(SeqCst),
                self.last_refusal.lock().expect("last")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) -> Vec<String> {
        self.stop.store(true, SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        self.acknowledged.lock().expect("ids").clone()
    }
}

/// A demo whose database is `r`'s primary, through a forwarder.
async fn demo_on(r: &Replicated, max_durability_wait: Duration) -> (TestDemo, Forwarder) {
    let forwarder = Forwarder::start(r.primary_port).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = semel_demo_stack::DemoOptions::new(dir.path());
    opts.listen = ([127, 0, 0, 1], 0).into();
    opts.population = 500;
    opts.source_deadline = Duration::from_secs(5);
    opts.limits = opts.limits.without_organisation_budgets();
    opts.postgresql = Some(r.url(forwarder.port));
    opts.max_durability_wait = max_durability_wait;
    let demo = semel_demo_stack::Demo::start(opts)
        .await
        .expect("start the demo");
    let t = TestDemo {
        demo: Some(demo),
        dir,
        db: None,
    };
    (t, forwarder)
}

/// The request ids (32 hex digits) of every entry in the database at `url`,
/// and its head's size.
async fn logged(url: &str) -> (std::collections::HashSet<String>, u64) {
    let client = connect(url)
        .await
        .expect("connect to the promoted database");
    let rows = client
        .query("SELECT encoding FROM audit_entries ORDER BY sequence", &[])
        .await
        .expect("read the log");
    let ids = rows
        .iter()
        .map(|row| {
            let entry = semel_core::AuditEntry::decode(row.get::<_, &[u8]>(0)).expect("decode");
            entry
                .record
                .request_id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect();
    let size: i64 = client
        .query_one("SELECT next_sequence FROM audit_head WHERE id = 0", &[])
        .await
        .expect("head")
        .get(0);
    (ids, size as u64)
}

/// Fails the test naming the acknowledged lookups the promoted database lost.
async fn assert_none_lost(r: &Replicated, acknowledged: &[String]) {
    let (logged, _) = logged(&r.url(r.standby_port)).await;
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|id| !logged.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged lookups are missing from the promoted database: {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(10)]
    );
}

async fn health(t: &TestDemo) -> i32 {
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

/// Waits for health to say `want`, failing after `within`.
async fn until_health(t: &TestDemo, want: ServingStatus, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let status = health(t).await;
        if status == want as i32 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health is {status}, not {want:?}, after {within:?} (audit failure: {:?})",
            t.demo().broker.storage().audit.failure()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (a) A synchronous standby, a plain failover under load: the primary is
/// killed, the standby promoted, the forwarder re-pointed. Every lookup
/// acknowledged before, during and after is in the promoted database, and
/// the broker serves again without a restart.
#[tokio::test]
async fn a_failover_to_a_synchronous_standby_loses_no_acknowledged_lookup() {
    let Some(r) = Replicated::start("failover_sync", true).await else {
        return;
    };
    let (t, forwarder) = demo_on(&r, Duration::from_secs(5)).await;
    let load = Load::start(&t, 8).await;
    load.until_acknowledged(200, Duration::from_secs(30)).await;
    r.kill_primary().expect("kill the primary");
    r.promote_standby().expect("promote the standby");
    forwarder.point_at(r.standby_port).await;
    // The broker reconnects on its own and serves on the promoted database.
    load.until_acknowledged(100, Duration::from_secs(30)).await;
    let acknowledged = load.stop().await;
    assert_none_lost(&r, &acknowledged).await;
    until_health(&t, ServingStatus::Serving, Duration::from_secs(10)).await;
    t.stop().await;
}

/// (b) The synchronous standby stalls (stopped), and the broker's sessions
/// waiting for it are cancelled and terminated, as an operator or a pooler
/// does: PostgreSQL then commits locally and warns "canceling wait for
/// synchronous replication ... might not have been replicated". Such a
/// commit is not acknowledged: the callers wait, then are refused, and
/// health says NOT_SERVING. The primary is then lost and the standby
/// promoted: every acknowledged lookup is in it.
#[tokio::test]
async fn a_cancelled_wait_for_the_synchronous_standby_is_not_acknowledged() {
    let Some(r) = Replicated::start("failover_cancelled", true).await else {
        return;
    };
    let (t, forwarder) = demo_on(&r, Duration::from_secs(1)).await;
    let load = Load::start(&t, 8).await;
    load.until_acknowledged(100, Duration::from_secs(30)).await;
    r.stop_standby().expect("stop the standby");
    // Cancel and terminate every session waiting for the standby, for a
    // while, as they come.
    let admin = connect(&r.url(r.primary_port)).await.expect("connect");
    let mut cancelled = 0u64;
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut terminate = false;
    while tokio::time::Instant::now() < until {
        let f = if terminate {
            "pg_terminate_backend"
        } else {
            "pg_cancel_backend"
        };
        terminate = !terminate;
        let n = admin
            .query(
                &format!(
                    "SELECT {f}(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND pid <> pg_backend_pid()"
                ),
                &[],
            )
            .await
            .expect("cancel")
            .len();
        cancelled += n as u64;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cancelled > 0, "no session waited for the standby");
    // A durability wait past the bound: not serving, said out loud.
    until_health(&t, ServingStatus::NotServing, Duration::from_secs(5)).await;
    let why = t
        .demo()
        .broker
        .storage()
        .audit
        .failure()
        .expect("a failure");
    assert!(why.contains("durable"), "{why}");
    let load_before = load.acknowledged();
    r.kill_primary().expect("kill the primary");
    r.start_standby().expect("start the standby");
    r.promote_standby().expect("promote the standby");
    forwarder.point_at(r.standby_port).await;
    // The integrator's commits during the stall were cancelled too: the
    // tree it built then was never replicated, and it neither remembered
    // nor showed it, so the promoted database's older tree is no
    // rollback. The broker serves on, without a restart.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while load.acknowledged() < load_before + 50 {
        let audit = &t.demo().broker.storage().audit;
        assert!(
            tokio::time::Instant::now() < deadline,
            "not serving again after the failover: {:?}",
            audit.failure()
        );
        assert!(
            !audit
                .failure()
                .is_some_and(|why| why.contains("rolled back")),
            "the broker took the promoted database for a rollback: {:?}",
            audit.failure()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The tree grows on the promoted database and a checkpoint is signed
    // over it: what the clean stop below signs last.
    let acknowledged = load.stop().await;
    assert_none_lost(&r, &acknowledged).await;
    t.stop().await;
}

/// (c) An asynchronous standby that was behind (stopped while the primary
/// went on) is promoted: the broker, which acknowledged more entries than
/// the promoted database holds, refuses to extend it (it would reuse
/// sequence numbers it answered for and sign a fork): every lookup is
/// refused, health is NOT_SERVING, and the reason names both sizes.
#[tokio::test]
async fn a_promoted_standby_that_was_behind_is_refused_not_extended() {
    let Some(r) = Replicated::start("failover_behind", false).await else {
        return;
    };
    let (t, forwarder) = demo_on(&r, Duration::from_secs(5)).await;
    let load = Load::start(&t, 8).await;
    load.until_acknowledged(50, Duration::from_secs(30)).await;
    r.stop_standby().expect("stop the standby");
    load.until_acknowledged(200, Duration::from_secs(30)).await;
    r.kill_primary().expect("kill the primary");
    r.start_standby().expect("start the standby");
    r.promote_standby().expect("promote the standby");
    let (_, promoted) = logged(&r.url(r.standby_port)).await;
    forwarder.point_at(r.standby_port).await;
    until_health(&t, ServingStatus::NotServing, Duration::from_secs(10)).await;
    let acked_before = load.acknowledged();
    // Under load for a while: nothing is acknowledged, nothing appended.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acknowledged = load.stop().await;
    assert_eq!(
        acknowledged.len(),
        acked_before,
        "the broker acknowledged lookups on a log that lost acknowledged entries"
    );
    let (_, size) = logged(&r.url(r.standby_port)).await;
    assert_eq!(size, promoted, "the broker extended the shorter log");
    let why = t
        .demo()
        .broker
        .storage()
        .audit
        .failure()
        .expect("a failure");
    assert!(
        why.contains(&format!("holds {promoted} entries")) && why.contains("acknowledged"),
        "{why}"
    );
    let mut c = t.lookup_client(ANDERLECHT).await;
    let err = c
        .lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect_err("refused");
    assert_error(&err, tonic::Code::Unavailable, "AUDIT_UNAVAILABLE");
    until_health(&t, ServingStatus::NotServing, Duration::from_secs(1)).await;
    t.stop().await;
}
