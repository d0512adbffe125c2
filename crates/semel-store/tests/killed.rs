//! A broker killed again and again within seconds of each start (a crash
//! loop, an impatient orchestrator) still gets its audit entries signed:
//! how long an entry has waited for a checkpoint is read from the log (its
//! recorded time), not from a clock that restarts with the process.
//!
//! The broker is this test binary run again as a child process
//! (`KILLED_CHILD_DIR` set), killed with SIGKILL: no clean close, no last
//! checkpoint.

use std::time::Duration;

use semel_core::checkpoint::NoteSigner;
use semel_core::{AuditDecision, AuditRecord, Kbo, Niss, Outcome};
use semel_store::{CheckpointSettings, Store};

const CHILD: &str = "KILLED_CHILD_DIR";
/// The checkpoint interval the child runs with.
const EVERY: Duration = Duration::from_secs(1);

fn record(i: u64) -> AuditRecord {
    AuditRecord {
        request_id: [(i % 251) as u8; 16],
        time_micros: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_micros() as i64,
        operation: semel_core::LOOKUP_OPERATION.into(),
        consumer: Kbo::parse("0566988259").expect("kbo"),
        end_user: Some(format!("clerk-{i}")),
        citizen: Niss::parse("93051822361").ok(),
        dataset: "national_register.residence".into(),
        fields_requested: vec!["street".into()],
        fields_returned: vec!["street".into()],
        purpose: "RIS_ELIGIBILITY".into(),
        authorisation: Some("BSC/2024/017".into()),
        authorisation_version: None,
        decision: AuditDecision::Allowed,
        reason: None,
        outcome: Outcome::Answered,
        source: None,
        consumer_reference: String::new(),
        reference_date: None,
        citizen_as_given: None,
        checks: Vec::new(),
        detail: String::new(),
    }
}

/// The child: opens the store with checkpoints every second and appends
/// until it is killed. Does nothing when run as a test of its own.
#[tokio::test]
async fn child_appending_until_killed() {
    let Ok(dir) = std::env::var(CHILD) else {
        return;
    };
    let store = Store::open_with(
        std::path::Path::new(&dir),
        Some(CheckpointSettings {
            signer: NoteSigner::new(
                "semel.test/audit",
                ed25519_dalek::SigningKey::from_bytes(&[5; 32]),
            ),
            every_entries: 1_000_000,
            every: EVERY,
        }),
    )
    .expect("open");
    for i in 0.. {
        store.audit().append(record(i)).await.expect("append");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn a_broker_killed_within_a_second_of_each_start_still_gets_its_entries_signed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("this test binary");
    // Twelve lives of 300 ms each, every one shorter than the interval.
    for _ in 0..12 {
        let mut child = std::process::Command::new(&exe)
            .args(["child_appending_until_killed", "--exact", "--nocapture"])
            .env(CHILD, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(300));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }
    // Read what was signed, without signing anything now.
    let store = Store::open_with(dir.path(), None).expect("open");
    let (size, _) = store.audit().head();
    assert!(size > 0, "the children appended");
    let signed = store
        .audit()
        .latest_checkpoint()
        .map_or(0, |c| c.checkpoint.size);
    assert!(
        signed > 0,
        "{size} entries, none signed: each start restarted the checkpoint clock"
    );
    store.close().expect("close");
}
