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

use semel_client::{AuditFilter, CallError, Client, NewAuthorisation};
use semel_postgres::testing::TestDatabase;

const ANDERLECHT: &str = "cpas-anderlecht";

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

/// Refusals recorded with `reason` in the log (read through `client`).
async fn refusals(client: &Client, reason: &str) -> Vec<serde_json::Value> {
    let page = client
        .audit_list(AuditFilter {
            decision: Some("refused".into()),
            reason: Some(reason.into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("list the audit log");
    page["entries"].as_array().expect("entries").clone()
}

fn reason(e: &CallError) -> &str {
    e.reason.as_deref().unwrap_or_default()
}

fn application(reference: &str, consumer: &str) -> NewAuthorisation {
    NewAuthorisation {
        reference: reference.into(),
        consumer: consumer.into(),
        dataset: "national_register.residence".into(),
        fields: vec!["municipality".into()],
        purpose: "SOCIAL_HOUSING".into(),
        legal_basis: "Code bruxellois du Logement, art. 31".into(),
        issuing_body: "Brussels Supervisory Commission".into(),
        valid_from: "2026-01-01".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_racing_each_registry_rule_one_wins() {
    let Some(mut pair) = Pair::start(&[]).await else {
        return;
    };
    let anderlecht = semel_demo::seed::org(ANDERLECHT)
        .expect("demo org")
        .kbo
        .as_str()
        .to_owned();

    // One pending application per reference and applicant: the same
    // application sent through both brokers at once, again and again.
    let (ca, cb) = pair.both(ANDERLECHT).await;
    let mut lost = 0;
    for round in 0..12 {
        let reference = format!("BSC/2026/9{round:02}");
        let (ra, rb) = tokio::join!(
            ca.apply_for_authorisation(application(&reference, &anderlecht), "race A".into()),
            cb.apply_for_authorisation(application(&reference, &anderlecht), "race B".into()),
        );
        let won = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "{reference}: {ra:?} / {rb:?}");
        let loser = [ra, rb].into_iter().find_map(Result::err).expect("a loser");
        assert!(
            matches!(reason(&loser), "CONFLICT" | "ALREADY_EXISTS"),
            "{loser:?}"
        );
        if reason(&loser) == "CONFLICT" {
            lost += 1;
        }
        let pending = ca
            .authorisation_applications(true)
            .await
            .expect("applications");
        let same = pending
            .as_array()
            .expect("list")
            .iter()
            .filter(|a| a.to_string().contains(&reference))
            .count();
        assert_eq!(same, 1, "{reference}: one pending application");
    }
    eprintln!(
        "applications: {lost} of 12 races decided by the store (CONFLICT), the rest by the broker's own check"
    );
    // Every race the store decided is a refusal in the log, with its reason.
    let (oa, ob) = pair.both("operator").await;
    assert_eq!(
        refusals(&oa, "CONFLICT")
            .await
            .iter()
            .filter(|e| e["operation"]
                .as_str()
                .unwrap_or_default()
                .contains("ApplyForAuthorisation"))
            .count(),
        lost,
        "each application refused by the store is recorded"
    );

    // An amendment against a suspension: neither undoes the other.
    let mut conflicts = 0;
    for round in 0..8 {
        let name = format!("CPAS Anderlecht (round {round})");
        let (amended, suspended) = tokio::join!(
            oa.amend_organisation(
                anderlecht.clone(),
                Some(name.clone()),
                None,
                "rename".into()
            ),
            ob.set_organisation_suspended(anderlecht.clone(), true, "race".into()),
        );
        for r in [&amended, &suspended] {
            if let Err(e) = r {
                assert_eq!(reason(e), "CONFLICT", "{e:?}");
                conflicts += 1;
            }
        }
        // Broker A learns of a change made through B from the database
        // (NOTIFY, or the poll): wait for the winner's change to reach it,
        // a few seconds at most, before saying what stands.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let org = loop {
            let orgs = oa.list_organisations().await.expect("organisations");
            let org = orgs
                .as_array()
                .expect("list")
                .iter()
                .find(|o| o["kbo"].as_str() == Some(anderlecht.as_str()))
                .expect("anderlecht")
                .clone();
            let reached = (suspended.is_err() || org["status"] == "suspended")
                && (amended.is_err() || org["name"] == name.as_str());
            if reached || std::time::Instant::now() > deadline {
                break org;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        if suspended.is_ok() {
            assert_eq!(
                org["status"], "suspended",
                "round {round}: the suspension stands: {org}"
            );
        }
        if amended.is_ok() {
            assert_eq!(
                org["name"],
                name.as_str(),
                "round {round}: the amendment stands: {org}"
            );
        }
        if org["status"] == "suspended" {
            oa.set_organisation_suspended(anderlecht.clone(), false, String::new())
                .await
                .expect("reinstate");
        }
    }

    eprintln!("amendment against suspension: {conflicts} of 8 races refused with CONFLICT");
    // Two amendments of one authorisation's version at once: one new
    // version.
    for round in 0..6 {
        let versions = oa
            .authorisation_versions("BSC/2024/017".into())
            .await
            .expect("versions");
        let current = versions.as_array().expect("list").len() as u32;
        let patch = |basis: String| semel_client::AuthorisationPatch {
            legal_basis: Some(basis),
            ..Default::default()
        };
        let (ra, rb) = tokio::join!(
            oa.amend_authorisation(
                "BSC/2024/017".into(),
                Some(current),
                patch(format!("law A {round}")),
                "race".into()
            ),
            ob.amend_authorisation(
                "BSC/2024/017".into(),
                Some(current),
                patch(format!("law B {round}")),
                "race".into()
            ),
        );
        assert_eq!(
            [&ra, &rb].iter().filter(|r| r.is_ok()).count(),
            1,
            "{ra:?} / {rb:?}"
        );
        let loser = [ra, rb].into_iter().find_map(Result::err).expect("a loser");
        assert_eq!(reason(&loser), "CONFLICT", "{loser:?}");
        let after = oa
            .authorisation_versions("BSC/2024/017".into())
            .await
            .expect("versions");
        assert_eq!(after.as_array().expect("list").len() as u32, current + 1);
    }
    let amendments_refused = refusals(&oa, "CONFLICT")
        .await
        .iter()
        .filter(|e| {
            e["operation"]
                .as_str()
                .unwrap_or_default()
                .contains("AmendAuthorisation")
        })
        .count();
    assert_eq!(amendments_refused, 6, "each lost amendment is recorded");
}

/// A valid enterprise number not in the demo: `0999990<n>` with its check
/// digits.
fn newcomer_kbo(n: u64) -> String {
    let first8 = 9_999_900 + n;
    format!("{first8:08}{:02}", 97 - first8 % 97)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_deciding_one_membership_through_two_brokers_one_decision_stands() {
    let Some(mut pair) = Pair::start(&[]).await else {
        return;
    };
    let d = pair.dir.path().to_owned();
    let (oa, ob) = pair.both("operator").await;
    let pki = semel_demo::pki::DevPki { dir: d.join("pki") };
    let a_url = semel_demo_stack::demo::client_config(&d, "operator")
        .expect("operator config")
        .broker;
    // How each race was lost: CONFLICT when the store refused the second
    // commit; APPLICATION_DECIDED or ALREADY_EXISTS (the organisation an
    // approval registers) when the loser read the first decision.
    let mut lost_by = std::collections::BTreeMap::<String, usize>::new();
    for round in 0..8u64 {
        // A newcomer applies with its certificate alone, through A.
        let kbo = newcomer_kbo(round);
        let stem = format!("newcomer-{round}");
        let name = format!("OCMW Nieuwkomer {round}");
        let files = pki
            .issue(&semel_demo::pki::Subject {
                file_stem: &stem,
                kbo: semel_core::Kbo::parse(&kbo).expect("kbo"),
                name: &name,
            })
            .expect("issue a certificate");
        let newcomer = Client::connect(&semel_client::ClientConfig {
            broker: a_url.clone(),
            ca: pki.ca_cert(),
            cert: files.cert,
            key: files.key,
            token: None,
        })
        .await
        .expect("connect the newcomer");
        let application = newcomer
            .apply_for_membership(
                name.clone(),
                &["consumer".to_owned()],
                "ict@nieuwkomer.example".into(),
                String::new(),
            )
            .await
            .expect("apply for membership");
        let id = application["id"].as_str().expect("id").to_owned();
        // Two operators decide it at once, one through each broker: even
        // rounds approve against reject, odd rounds approve twice.
        let b_approves = round % 2 == 1;
        let (ra, rb) = tokio::join!(
            oa.decide_membership(id.clone(), true, &[], "approved through A".into()),
            ob.decide_membership(id.clone(), b_approves, &[], "decided through B".into()),
        );
        assert_eq!(
            [&ra, &rb].iter().filter(|r| r.is_ok()).count(),
            1,
            "round {round}: exactly one decision stands: {ra:?} / {rb:?}"
        );
        let loser = [&ra, &rb]
            .into_iter()
            .find_map(|r| r.as_ref().err())
            .expect("a loser");
        assert!(
            matches!(
                reason(loser),
                "CONFLICT" | "APPLICATION_DECIDED" | "ALREADY_EXISTS"
            ),
            "round {round}: {loser:?}"
        );
        *lost_by.entry(reason(loser).to_owned()).or_default() += 1;
        // The stored decision is the winner's, and the organisation is
        // registered exactly when the winner approved.
        let a_won = ra.is_ok();
        let approved = a_won || b_approves;
        let stored = oa
            .membership_applications(false)
            .await
            .expect("applications")
            .as_array()
            .expect("list")
            .iter()
            .find(|m| m["id"].as_str() == Some(id.as_str()))
            .expect("the application")
            .clone();
        assert_eq!(
            stored["state"].as_str().unwrap_or_default().to_lowercase(),
            if approved { "approved" } else { "rejected" },
            "round {round}: {stored}"
        );
        // Each broker serves the registry from its snapshot, which the
        // other's change wakes: registered on both once it caught up.
        for client in [&oa, &ob] {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let registered = client
                    .list_organisations()
                    .await
                    .expect("organisations")
                    .as_array()
                    .expect("list")
                    .iter()
                    .any(|o| o["kbo"].as_str() == Some(kbo.as_str()));
                if registered == approved {
                    break;
                }
                assert!(
                    approved && Instant::now() < deadline,
                    "round {round}: {kbo} registered: {registered}, approved: {approved}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!("membership decisions lost, by reason: {lost_by:?}");
    // The log holds each decision that stood and each that was refused,
    // with its reason.
    let page = oa
        .audit_list(AuditFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("list the audit log");
    let decisions: Vec<&serde_json::Value> = page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| {
            e["operation"]
                .as_str()
                .unwrap_or_default()
                .contains("DecideMembershipApplication")
        })
        .collect();
    let refused = |why: &str| {
        decisions
            .iter()
            .filter(|e| e["decision"] == "refused" && e["reason"] == why)
            .count()
    };
    assert_eq!(
        decisions.len(),
        16,
        "both attempts of each race are recorded"
    );
    let said: Vec<(&serde_json::Value, &serde_json::Value)> = decisions
        .iter()
        .map(|e| (&e["decision"], &e["reason"]))
        .collect();
    for (why, n) in &lost_by {
        assert_eq!(refused(why), *n, "{why}: {said:?}");
    }
    assert_eq!(
        decisions
            .iter()
            .filter(|e| e["decision"] == "allowed")
            .count(),
        8,
        "{said:?}"
    );
}

/// Exports the registry through `client` and adds 300 purposes to the
/// files: a large apply.
async fn large_apply(client: &Client) -> tempfile::TempDir {
    let files = tempfile::tempdir().expect("tempdir");
    client.registry_export(files.path()).await.expect("export");
    let mut text = std::fs::read_to_string(files.path().join("purposes.toml")).expect("read");
    for i in 0..300 {
        text.push_str(&format!(
            "\n[[purpose]]\ncode = \"RACE_{i:03}\"\ndescription = \"race {i}\"\nlegal_basis = \"a law\"\n"
        ));
    }
    std::fs::write(files.path().join("purposes.toml"), text).expect("write");
    files
}

/// Waits until the broker logging to `log` paused its apply before the
/// commit.
async fn paused(log: &Path) {
    paused_at(log, "registry apply paused before its commit").await;
}

/// Waits until the broker logging to `log` says `what`.
async fn paused_at(log: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(what)
    {
        assert!(
            Instant::now() < deadline,
            "the apply never reached its commit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The log holds an entry for each of the 300 planned changes and none
/// saying the apply took effect.
async fn not_applied_says_the_log(client: &Client) {
    let page = client
        .audit_list(AuditFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("audit");
    let entries = page["entries"].as_array().expect("entries");
    let changes = entries
        .iter()
        .filter(|e| {
            e["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("by registry apply")
        })
        .count();
    assert_eq!(changes, 300, "each planned change has its entry");
    assert!(
        !entries.iter().any(|e| e["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("registry applied")),
        "no entry says the apply took effect"
    );
}

/// The apply a test made: the `apply <id>` its change entries name.
async fn the_apply(client: &Client) -> String {
    let page = client
        .audit_list(AuditFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("audit");
    let named: std::collections::BTreeSet<String> = page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| {
            e["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("by registry apply")
        })
        .map(|e| {
            e["consumer_reference"]
                .as_str()
                .expect("reference")
                .to_owned()
        })
        .collect();
    assert_eq!(named.len(), 1, "one apply's change entries: {named:?}");
    named.into_iter().next().expect("an apply")
}

/// The entries that close `apply` (its closing entry, or the entry that
/// settled it), waiting up to a minute until there is one.
async fn closing_of(client: &Client, apply: &str) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = client
            .audit_list(AuditFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .expect("audit");
        let closing: Vec<serde_json::Value> = page["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| {
                e["consumer_reference"].as_str() == Some(apply)
                    && !e["detail"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("by registry apply")
            })
            .cloned()
            .collect();
        if !closing.is_empty() {
            return closing;
        }
        assert!(
            Instant::now() < deadline,
            "no entry closes {apply}: the log does not say whether it was applied"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `apply` is closed by exactly one entry, which says it was not applied
/// (refused, APPLY_INTERRUPTED), written by the broker that settled it.
async fn settled_as_not_applied(client: &Client, apply: &str) {
    let closing = closing_of(client, apply).await;
    assert_eq!(closing.len(), 1, "{closing:?}");
    let e = &closing[0];
    assert_eq!(e["decision"], "refused", "{e}");
    assert_eq!(e["reason"], "APPLY_INTERRUPTED", "{e}");
    assert!(
        e["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("registry not applied: the broker applying it"),
        "{e}"
    );
}

/// `apply` is closed by exactly one entry, which says it was applied,
/// written on settling after its broker stopped.
async fn settled_as_applied(client: &Client, apply: &str) {
    let closing = closing_of(client, apply).await;
    assert_eq!(closing.len(), 1, "{closing:?}");
    let e = &closing[0];
    assert_eq!(e["decision"], "allowed", "{e}");
    let detail = e["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("registry applied: 300 created")
            && detail.contains("recorded on settling: the broker that applied it"),
        "{e}"
    );
}

/// How many purposes `client` lists; each observation must be the
/// registry before the apply or after all of it.
async fn purposes_seen(client: &Client, before: usize) -> usize {
    let n = client
        .list_purposes()
        .await
        .expect("purposes")
        .as_array()
        .expect("list")
        .len();
    assert!(
        n == before || n == before + 300,
        "a part of the apply is seen: {n} purposes, {before} before it"
    );
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_store_a_broker_killed_mid_apply_restarts_with_the_registry_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let demo = |pause: bool| {
        let _ = std::fs::remove_file(d.join("demo.json"));
        let env: Vec<(&str, String)> = if pause {
            vec![("TEST_SEMEL_APPLY_PAUSE_MS", "60000".into())]
        } else {
            Vec::new()
        };
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
                "--data-dir",
                d.to_str().expect("utf-8 path"),
            ],
            d,
            if pause { "a.log" } else { "a2.log" },
            &env,
        )
    };
    let mut a = demo(true);
    let operator = connect(&mut a, d, "a.log", "operator", None).await;
    let before = operator.list_purposes().await.expect("purposes");
    let files = large_apply(&operator).await;
    let path = files.path().to_owned();
    let apply = {
        let operator = operator.clone();
        tokio::spawn(async move {
            operator
                .registry_apply(&path, false, "large apply".into())
                .await
        })
    };
    paused(&d.join("a.log")).await;
    a.kill().expect("SIGKILL the broker");
    a.wait().expect("reap");
    assert!(
        apply.await.expect("join").is_err(),
        "the apply was not answered"
    );
    // Started again on the same data directory: as it was.
    let mut a = demo(false);
    let operator = connect(&mut a, d, "a2.log", "operator", None).await;
    assert_eq!(operator.list_purposes().await.expect("purposes"), before);
    not_applied_says_the_log(&operator).await;
    // The restarted broker found the apply unsettled and says so.
    let apply = the_apply(&operator).await;
    settled_as_not_applied(&operator, &apply).await;
    operator
        .registry_apply(files.path(), false, "large apply again".into())
        .await
        .expect("apply again");
    assert_eq!(
        operator
            .list_purposes()
            .await
            .expect("purposes")
            .as_array()
            .expect("list")
            .len(),
        before.as_array().expect("list").len() + 300
    );
    let _ = a.kill();
    let _ = a.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_in_the_middle_of_an_apply_leaves_the_registry_as_it_was() {
    let Some(mut pair) = Pair::start(&[("TEST_SEMEL_APPLY_PAUSE_MS", "60000".into())]).await else {
        return;
    };
    let (oa, ob) = pair.both("operator").await;
    let before = oa.list_purposes().await.expect("purposes");
    let files = large_apply(&oa).await;
    let path = files.path().to_owned();
    let apply =
        tokio::spawn(async move { ob.registry_apply(&path, false, "large apply".into()).await });
    // B has written its change entries and waits before its commit.
    paused(&pair.dir.path().join("b.log")).await;
    // A sees none of it; B is killed there.
    assert_eq!(oa.list_purposes().await.expect("purposes"), before);
    pair.b.kill().expect("SIGKILL broker B");
    pair.b.wait().expect("reap B");
    assert!(
        apply.await.expect("join").is_err(),
        "the apply was not answered"
    );
    assert_eq!(
        oa.list_purposes().await.expect("purposes"),
        before,
        "the registry is as it was"
    );
    // The log holds the change entries and no entry saying it was applied;
    // A, finding B no longer alive, settles the apply: not applied.
    not_applied_says_the_log(&oa).await;
    let apply = the_apply(&oa).await;
    settled_as_not_applied(&oa, &apply).await;
    assert_eq!(oa.list_purposes().await.expect("purposes"), before);
    // The same files applied through A: all of it, at once.
    oa.registry_apply(files.path(), false, "large apply again".into())
        .await
        .expect("apply through A");
    let after = oa.list_purposes().await.expect("purposes");
    assert_eq!(
        after.as_array().expect("list").len(),
        before.as_array().expect("list").len() + 300
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_after_the_commit_of_an_apply_leaves_it_applied_and_the_log_says_so() {
    let pause = [
        ("TEST_SEMEL_APPLY_PAUSE_MS", "60000".to_owned()),
        ("TEST_SEMEL_APPLY_PAUSE_AT", "after-commit".to_owned()),
    ];
    let Some(mut pair) = Pair::start(&pause).await else {
        return;
    };
    let (oa, ob) = pair.both("operator").await;
    let before = oa
        .list_purposes()
        .await
        .expect("purposes")
        .as_array()
        .expect("list")
        .len();
    let files = large_apply(&oa).await;
    let path = files.path().to_owned();
    let apply =
        tokio::spawn(async move { ob.registry_apply(&path, false, "large apply".into()).await });
    // B has committed and waits before its closing entry: A sees all of the
    // apply (once its NOTIFY arrives), never a part of it.
    paused_at(
        &pair.dir.path().join("b.log"),
        "registry apply paused after its commit",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while purposes_seen(&oa, before).await != before + 300 {
        assert!(Instant::now() < deadline, "A never saw the committed apply");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pair.b.kill().expect("SIGKILL broker B");
    pair.b.wait().expect("reap B");
    assert!(
        apply.await.expect("join").is_err(),
        "the apply was not answered"
    );
    // A, finding B no longer alive, writes the closing entry B could not.
    let apply = the_apply(&oa).await;
    settled_as_applied(&oa, &apply).await;
    assert_eq!(purposes_seen(&oa, before).await, before + 300);
    // B started again serves the registry as the apply left it, and the
    // apply keeps one closing entry.
    pair.restart_b(&[]);
    let d = pair.dir.path().to_owned();
    let b_url = pair.b_url.clone();
    let ob = connect(&mut pair.b, &d, "b2.log", "operator", Some(&b_url)).await;
    assert_eq!(purposes_seen(&ob, before).await, before + 300);
    tokio::time::sleep(Duration::from_secs(6)).await;
    settled_as_applied(&ob, &apply).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_store_a_broker_killed_after_the_commit_of_an_apply_restarts_with_it_applied()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let demo = |pause: bool| {
        let _ = std::fs::remove_file(d.join("demo.json"));
        let env: Vec<(&str, String)> = if pause {
            vec![
                ("TEST_SEMEL_APPLY_PAUSE_MS", "60000".into()),
                ("TEST_SEMEL_APPLY_PAUSE_AT", "after-commit".into()),
            ]
        } else {
            Vec::new()
        };
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
                "--data-dir",
                d.to_str().expect("utf-8 path"),
            ],
            d,
            if pause { "a.log" } else { "a2.log" },
            &env,
        )
    };
    let mut a = demo(true);
    let operator = connect(&mut a, d, "a.log", "operator", None).await;
    let before = operator
        .list_purposes()
        .await
        .expect("purposes")
        .as_array()
        .expect("list")
        .len();
    let files = large_apply(&operator).await;
    let path = files.path().to_owned();
    let apply = {
        let operator = operator.clone();
        tokio::spawn(async move {
            operator
                .registry_apply(&path, false, "large apply".into())
                .await
        })
    };
    paused_at(&d.join("a.log"), "registry apply paused after its commit").await;
    // Another caller sees all of it or none of it.
    let observer = connect(&mut a, d, "a.log", "operator", None).await;
    purposes_seen(&observer, before).await;
    a.kill().expect("SIGKILL the broker");
    a.wait().expect("reap");
    assert!(
        apply.await.expect("join").is_err(),
        "the apply was not answered"
    );
    // Started again on the same data directory: applied, and the log says
    // so once.
    let mut a = demo(false);
    let operator = connect(&mut a, d, "a2.log", "operator", None).await;
    assert_eq!(purposes_seen(&operator, before).await, before + 300);
    let apply = the_apply(&operator).await;
    settled_as_applied(&operator, &apply).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    settled_as_applied(&operator, &apply).await;
    let _ = a.kill();
    let _ = a.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_taken_for_stopped_cannot_commit_the_apply_it_was_making() {
    // B pauses 5 s before its commit; it is frozen (SIGSTOP) meanwhile,
    // long enough for A to take it for stopped and settle its apply.
    let Some(mut pair) = Pair::start(&[("TEST_SEMEL_APPLY_PAUSE_MS", "5000".into())]).await else {
        return;
    };
    let (oa, ob) = pair.both("operator").await;
    let before = oa.list_purposes().await.expect("purposes");
    let files = large_apply(&oa).await;
    let path = files.path().to_owned();
    let apply =
        tokio::spawn(async move { ob.registry_apply(&path, false, "large apply".into()).await });
    paused(&pair.dir.path().join("b.log")).await;
    let signal = |sig: &str| {
        let status = Command::new("kill")
            .args([sig, &pair.b.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig}");
    };
    signal("-STOP");
    let id = the_apply(&oa).await;
    settled_as_not_applied(&oa, &id).await;
    signal("-CONT");
    // Woken, B's commit is refused: the apply was settled as not applied.
    let refused = apply
        .await
        .expect("join")
        .expect_err("the commit of a settled apply");
    assert_eq!(reason(&refused), "APPLY_INTERRUPTED", "{refused:?}");
    assert_eq!(oa.list_purposes().await.expect("purposes"), before);
    // Both entries that close it say it was not applied; none says it was.
    let closing = closing_of(&oa, &id).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut closing = closing;
    while closing.len() < 2 {
        assert!(Instant::now() < deadline, "B's refusal is not recorded");
        tokio::time::sleep(Duration::from_millis(200)).await;
        closing = closing_of(&oa, &id).await;
    }
    assert_eq!(closing.len(), 2, "{closing:?}");
    for e in &closing {
        assert_eq!(e["decision"], "refused", "{e}");
        assert_eq!(e["reason"], "APPLY_INTERRUPTED", "{e}");
    }
    not_applied_says_the_log(&oa).await;
}
