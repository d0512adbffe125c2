//! A stopped broker's audit log, altered on disk in every way an operator
//! with the data directory could: each alteration is caught when the broker
//! starts, by `semel audit verify`, or both, and the table says which. The
//! one no check on the operator's own files can see (checkpoints and tree
//! removed, the tail rewritten) is caught by a checkpoint an auditor kept.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use semel_client::{Client, LookupArgs};
use semel_core::AuditEntry;

mod demo_process;

const ENTRIES: usize = 12;

fn semel() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_semel"));
    c.env("SEMEL_LOG", "warn").stdin(Stdio::null());
    c
}

/// Starts `semel demo` on `dir`, on ports of its own, its stderr in
/// `demo.log`; `demo.json` appears once it serves.
fn spawn_demo(dir: &Path) -> std::process::Child {
    let _ = std::fs::remove_file(dir.join("demo.json"));
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
            "--data-dir",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start semel demo")
}

/// Starts `semel demo` on `dir` and says whether it came up (and stops
/// it), or the error it stopped with.
async fn starts(dir: &Path) -> Result<(), String> {
    let mut child = spawn_demo(dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if dir.join("demo.json").exists() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
            return Ok(());
        }
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(!status.success(), "the demo stopped without an error");
            let log = std::fs::read_to_string(dir.join("demo.log")).unwrap_or_default();
            // Tampering, not trouble: exit code 4, never 1.
            assert_eq!(status.code(), Some(4), "a refused start exits 4: {log}");
            return Err(log);
        }
        assert!(
            Instant::now() < deadline,
            "the demo neither started nor stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `semel audit verify --store`, with extra arguments.
fn verifies(dir: &Path, extra: &[&str]) -> Result<(), String> {
    let out = semel()
        .args(["audit", "verify", "--store"])
        .arg(dir.join("store"))
        .args(extra)
        .output()
        .expect("semel audit verify");
    if out.status.success() {
        Ok(())
    } else {
        assert_eq!(
            out.status.code(),
            Some(4),
            "a log that does not verify exits 4: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A demo data directory with ENTRIES lookups, cleanly stopped (so a
/// checkpoint covers every entry).
async fn stopped_demo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_demo(dir.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = loop {
        if dir.path().join("demo.json").exists()
            && let Ok(config) = semel_demo_stack::demo::client_config(dir.path(), "cpas-anderlecht")
            && let Ok(client) = Client::connect(&config).await
        {
            break client;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the demo stopped"
        );
        assert!(Instant::now() < deadline, "the demo did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for _ in 0..ENTRIES {
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
        .arg(child.id().to_string())
        .status();
    assert!(child.wait().expect("wait").success(), "a clean stop");
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn audit(dir: &Path) -> PathBuf {
    dir.join("store/audit")
}

fn end_of(dir: &Path, seq: usize) -> u64 {
    let ends = std::fs::read(audit(dir).join("ends")).expect("ends");
    u64::from_be_bytes(ends[seq * 8..seq * 8 + 8].try_into().expect("8 bytes"))
}

fn entries(dir: &Path) -> usize {
    std::fs::metadata(audit(dir).join("ends"))
        .expect("ends")
        .len() as usize
        / 8
}

/// Rewrites entry `seq` with its consumer changed, checksum recomputed.
fn forge(dir: &Path, seq: usize) {
    let start = if seq == 0 { 0 } else { end_of(dir, seq - 1) } as usize;
    let end = end_of(dir, seq) as usize;
    let path = audit(dir).join("log");
    let mut log = std::fs::read(&path).expect("log");
    let mut entry = AuditEntry::decode(&log[start + 8..end]).expect("entry");
    entry.record.consumer = semel_core::Kbo::parse("1006872569").expect("kbo");
    let payload = entry.to_bytes();
    assert_eq!(payload.len(), end - start - 8);
    log[start + 4..start + 8].copy_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    log[start + 8..end].copy_from_slice(&payload);
    std::fs::write(&path, log).expect("write");
}

/// The signed notes of the checkpoints file.
fn notes(dir: &Path) -> Vec<String> {
    let bytes = std::fs::read(audit(dir).join("checkpoints")).expect("checkpoints");
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
        out.push(String::from_utf8(bytes[at + 4..at + 4 + len].to_vec()).expect("utf8"));
        at += 4 + len;
    }
    out
}

fn write_notes(dir: &Path, notes: &[String]) {
    let mut bytes = Vec::new();
    for n in notes {
        bytes.extend_from_slice(&(n.len() as u32).to_be_bytes());
        bytes.extend_from_slice(n.as_bytes());
    }
    std::fs::write(audit(dir).join("checkpoints"), bytes).expect("write");
}

fn remove_derived(dir: &Path) {
    let a = audit(dir);
    let _ = std::fs::remove_file(a.join("ends"));
    let _ = std::fs::remove_dir_all(a.join("index"));
    let _ = std::fs::remove_dir_all(a.join("tree"));
}

/// Where a case is caught.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caught {
    AtStart,
    ByVerify,
    Both,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alteration_of_a_stopped_log_is_caught_at_start_by_verify_or_both() {
    let original = stopped_demo().await;
    let n = entries(original.path());
    assert!(n >= ENTRIES, "{n} entries");
    assert!(
        starts(original.path()).await.is_ok(),
        "an untouched log starts"
    );
    assert!(
        verifies(original.path(), &[]).is_ok(),
        "an untouched log verifies"
    );
    // The starts above added entries: the base for every case is this copy.
    let base = tempfile::tempdir().expect("tempdir");
    copy_dir(original.path(), base.path());
    let n = entries(base.path());
    type Tamper = fn(&Path, usize);
    let cases: Vec<(&str, Tamper, Caught)> = vec![
        (
            "the last entry forged, checksum recomputed",
            |d, n| forge(d, n - 1),
            Caught::Both,
        ),
        (
            // Caught at start here because a log this small has no index
            // segment yet, so the start re-reads (and re-chains) every entry;
            // past its first 65,536 entries the start reads only the tail,
            // and `semel audit verify` is what reads the rest.
            "an entry in the middle forged",
            |d, n| forge(d, n / 2),
            Caught::Both,
        ),
        (
            "an entry in the middle forged, the tree deleted to hide it",
            |d, n| {
                forge(d, n / 2);
                let _ = std::fs::remove_dir_all(audit(d).join("tree"));
            },
            Caught::Both,
        ),
        (
            "the last checkpoint's signature flipped",
            |d, _| {
                let mut all = notes(d);
                let last = all.pop().expect("a checkpoint");
                let at = last.len() - 6;
                let mut bytes = last.into_bytes();
                bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
                all.push(String::from_utf8(bytes).expect("utf8"));
                write_notes(d, &all);
            },
            Caught::Both,
        ),
        (
            "the last checkpoint's root changed",
            |d, _| {
                let mut all = notes(d);
                let last = all.pop().expect("a checkpoint");
                let mut lines: Vec<String> = last.split('\n').map(str::to_owned).collect();
                lines[2] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
                all.push(lines.join("\n"));
                write_notes(d, &all);
            },
            Caught::Both,
        ),
        (
            "a few bytes cut from the end, the derived files deleted",
            |d, _| {
                let path = audit(d).join("log");
                let len = std::fs::metadata(&path).expect("log").len();
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .expect("open");
                f.set_len(len - 5).expect("cut");
                remove_derived(d);
            },
            Caught::Both,
        ),
        (
            "the last entry removed whole",
            |d, n| {
                let path = audit(d).join("log");
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .expect("open");
                f.set_len(end_of(d, n - 2)).expect("cut");
            },
            Caught::Both,
        ),
        (
            "the last entry forged and the last checkpoint removed",
            |d, n| {
                let mut all = notes(d);
                all.pop();
                write_notes(d, &all);
                forge(d, n - 1);
            },
            Caught::AtStart,
        ),
    ];
    let mut table = Vec::new();
    for (name, tamper, expected) in cases {
        let case = tempfile::tempdir().expect("tempdir");
        copy_dir(base.path(), case.path());
        tamper(case.path(), n);
        // Verify first: a start may change the derived files.
        let verify = verifies(case.path(), &[]);
        let start = starts(case.path()).await;
        let caught = match (start.is_err(), verify.is_err()) {
            (true, true) => Caught::Both,
            (true, false) => Caught::AtStart,
            (false, true) => Caught::ByVerify,
            (false, false) => panic!("{name}: caught neither at start nor by verify"),
        };
        table.push(format!("{name}: {caught:?}"));
        assert_eq!(
            caught, expected,
            "{name}: start {start:?}, verify {verify:?}"
        );
    }
    // What no check of the operator's own files can see: every checkpoint
    // and the tree removed, the last entry rewritten. An auditor who kept
    // the newest checkpoint (from the API, cosigned) catches it.
    let kept = notes(base.path()).pop().expect("a checkpoint");
    let trusted = base.path().join("kept-checkpoint.txt");
    std::fs::write(&trusted, &kept).expect("keep");
    let case = tempfile::tempdir().expect("tempdir");
    copy_dir(base.path(), case.path());
    forge(case.path(), n - 1);
    write_notes(case.path(), &[]);
    remove_derived(case.path());
    assert!(
        verifies(case.path(), &[]).is_ok(),
        "alone, verify cannot know"
    );
    let err = verifies(
        case.path(),
        &["--trusted-checkpoint", trusted.to_str().expect("utf8")],
    )
    .expect_err("a kept checkpoint catches it");
    assert!(
        err.contains("entries do not produce its signed root"),
        "{err}"
    );
    table.push("every checkpoint and the tree removed, the last entry forged: ByVerify with a kept checkpoint".into());
    eprintln!("{}", table.join("\n"));
}

/// A configuration for `semel audit new-epoch` on an empty store in `new`,
/// with the demo's (in `old`) certificates and signing key, under `origin`.
fn epoch_config(old: &Path, new: &Path, origin: &str) -> PathBuf {
    demo_process::broker_config(new, &old.join("pki"), &new.join("store"), origin, "")
}

/// Entries lost for good: `semel audit new-epoch` begins a new log under a
/// new origin whose first entry states the previous origin's newest
/// checkpoint and the entries lost, signed; `semel audit verify` checks
/// and reports that boundary. It refuses a store that is not empty and an
/// origin that is not new.
#[tokio::test]
async fn a_new_epoch_states_the_lost_range_and_verify_reports_it() {
    let old = stopped_demo().await;
    let size = entries(old.path()) as u64;
    let note = notes(old.path()).pop().expect("a checkpoint");
    assert!(note.contains(&format!("\n{size}\n")), "{note}");
    let held = size - 3;
    let new = tempfile::tempdir().expect("tempdir");
    std::fs::write(new.path().join("previous.note"), &note).expect("note");
    let new_epoch = |config: &Path| {
        semel()
            .args(["audit", "new-epoch", "--json", "--config"])
            .arg(config)
            .arg("--previous-checkpoint")
            .arg(new.path().join("previous.note"))
            .args(["--held", &held.to_string()])
            .output()
            .expect("semel audit new-epoch")
    };
    // The previous origin again: refused, nothing written.
    let same = epoch_config(old.path(), new.path(), "semel.brussels/audit/demo");
    let out = new_epoch(&same);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a new epoch has a new origin"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = epoch_config(old.path(), new.path(), "semel.brussels/audit/demo/epoch-2");
    let out = new_epoch(&config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(said["statement_entry"], 0);
    assert_eq!(said["lost_from"], held);
    assert_eq!(said["lost_to"], size);
    assert_eq!(said["previous_signed_by_this_key"], true);
    let key = said["verifier_key"].as_str().expect("key").to_owned();
    assert!(
        key.starts_with("semel.brussels/audit/demo/epoch-2+"),
        "{key}"
    );
    // A second time: the store is not empty any more.
    let out = new_epoch(&config);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("begins an empty log"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The new log verifies under its own key, signed to its end, and says
    // which entries of which log were lost.
    let out = semel()
        .args(["audit", "verify", "--json", "--store"])
        .arg(new.path().join("store"))
        .args(["--verifier-key", &key])
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
    assert_eq!(
        report["epoch"]["previous_origin"],
        "semel.brussels/audit/demo"
    );
    assert_eq!(report["epoch"]["previous_size"], size);
    assert_eq!(report["epoch"]["lost_from"], held);
    assert_eq!(report["epoch"]["lost_to"], size);
    // The previous log still verifies under its own key, up to what it holds.
    assert_eq!(verifies(old.path(), &[]), Ok(()));
}
