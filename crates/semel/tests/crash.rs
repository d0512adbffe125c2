//! Crash safety of the real binary: SIGKILL `semel demo` while lookups are
//! running, start it again, and check that every lookup that received an
//! answer has its audit entry, that the log verifies, and that lookups
//! continue. It needs the real process, hence this test binary beside the
//! end-to-end suite.

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use semel_client::{AuditFilter, Client, LookupArgs};

mod demo_process;
use demo_process::{connect, start};

fn lookup(citizen: &str) -> LookupArgs {
    LookupArgs {
        citizen: citizen.into(),
        dataset: "national_register.residence".into(),
        fields: vec!["street".into()],
        purpose: "RIS_ELIGIBILITY".into(),
        ..Default::default()
    }
}

async fn audited_request_ids(client: &Client) -> Vec<String> {
    let mut ids = Vec::new();
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
            ids.push(e["request_id"].as_str().expect("id").to_owned());
        }
        match page["next_page_token"].as_str() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_lookups_loses_no_answered_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = start(dir.path());
    let consumer = connect(&mut child, dir.path(), "cpas-anderlecht").await;
    let answered: Arc<Mutex<Vec<String>>> = Arc::default();
    let citizens = ["93051822361", "85073003328", "17073003384", "05110200252"];
    let mut workers = Vec::new();
    for w in 0..16 {
        let client = consumer.clone();
        let answered = answered.clone();
        workers.push(tokio::spawn(async move {
            for i in 0.. {
                match client
                    .lookup(lookup(citizens[(w + i) % citizens.len()]))
                    .await
                {
                    Ok(v) => answered
                        .lock()
                        .expect("lock")
                        .push(v["request_id"].as_str().expect("id").to_owned()),
                    // The broker is gone: stop.
                    Err(_) => return,
                }
            }
        }));
    }
    // Let lookups run, then kill the broker in the middle of them.
    while answered.lock().expect("lock").len() < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    for w in workers {
        let _ = w.await;
    }
    let answered: HashSet<String> = answered.lock().expect("lock").iter().cloned().collect();
    assert!(answered.len() >= 300);

    // Start again on the same data directory.
    let mut child = start(dir.path());
    let operator = connect(&mut child, dir.path(), "operator").await;
    let audited: HashSet<String> = audited_request_ids(&operator).await.into_iter().collect();
    let missing = answered.difference(&audited).count();
    assert_eq!(missing, 0, "{missing} answered lookups have no audit entry");
    // The probe command sees it serving.
    let health = Command::new(env!("CARGO_BIN_EXE_semel"))
        .args(["health", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("semel health");
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&health.stdout).trim(), "SERVING");
    // Lookups continue after the restart.
    let consumer = connect(&mut child, dir.path(), "cpas-anderlecht").await;
    consumer
        .lookup(lookup("93051822361"))
        .await
        .expect("a lookup after the restart");
    // The log also holds the auditor's reads just made (each query is an
    // entry): count what the broker says it holds.
    let total = operator.audit_head().await.expect("head")["size"]
        .as_u64()
        .expect("size") as usize;
    assert!(total > audited.len() + 1);

    // Stop it cleanly and read the log directly: whole, chained, complete.
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill -TERM");
    assert!(
        child.wait().expect("wait").success(),
        "SIGTERM is a clean stop"
    );
    let store = semel_store::Store::open(&dir.path().join("store")).expect("open the store");
    let report = store.audit().verify_chain().expect("the chain verifies");
    assert_eq!(report.entries as usize, total);
    drop(store);
    // The auditors' tool agrees: chain, tree and every signed checkpoint
    // (one was signed at the clean stop, covering every entry).
    let verify = Command::new(env!("CARGO_BIN_EXE_semel"))
        .args(["audit", "verify", "--store"])
        .arg(dir.path().join("store"))
        .output()
        .expect("semel audit verify");
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        out.contains(&format!("newest covers {total} entries")),
        "{out}"
    );
}
