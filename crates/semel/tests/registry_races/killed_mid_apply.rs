//! A broker killed (or taken for stopped) in the middle of a registry apply: the registry as it was or as the files describe it, and one closing entry saying which.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use semel_client::{AuditFilter, Client};

use crate::{Pair, connect, reason, spawn};

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
