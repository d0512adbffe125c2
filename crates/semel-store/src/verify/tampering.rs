//! Change a byte, delete an entry, reorder two, truncate: verification
//! fails every time and says where.

use std::path::Path;

use semel_core::checkpoint::{Checkpoint, NoteSigner, NoteVerifier, b64};
use semel_core::{AuditEntry, ZERO_HASH, entry_hash};
use serde_json::{Value, json};

use super::export::csv_cell;
use super::*;
use crate::entry_lines::readable;
use crate::{CheckpointSettings, Store};

const HEADER: usize = 8;

fn signer() -> NoteSigner {
    NoteSigner::new(
        "semel.test/audit",
        ed25519_dalek::SigningKey::from_bytes(&[3; 32]),
    )
}

fn key() -> NoteVerifier {
    NoteVerifier::parse(&signer().verifier_key()).expect("key")
}

/// A test entry about Karim.
pub(super) fn record(i: u64) -> semel_core::AuditRecord {
    crate::audit::tests::record(i as u8, Some("93051822361"))
}

/// A closed store of 20 entries, checkpoints every 4.
fn log() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_with(
        dir.path(),
        Some(CheckpointSettings {
            signer: signer(),
            every_entries: 4,
            every: std::time::Duration::from_secs(3600),
        }),
    )
    .expect("open");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for i in 0..20 {
        rt.block_on(store.audit().append(record(i)))
            .expect("append");
        // The checkpointer runs on its own thread: wait for each
        // checkpoint due, so that the log holds one per four entries
        // however loaded the machine (a test saw two under load).
        if (i + 1) % 4 == 0 {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while store
                .audit()
                .latest_checkpoint()
                .is_none_or(|c| c.checkpoint.size < i + 1)
            {
                assert!(std::time::Instant::now() < deadline, "no checkpoint signed");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
    store.close().expect("close");
    dir
}

/// An excerpt of some entries of `log()`, as the console writes one.
fn excerpt(sequences: &[u64]) -> Vec<Value> {
    let dir = log();
    let store = Store::open_with(dir.path(), None).expect("open");
    let audit = store.audit();
    let checkpoint = audit.latest_checkpoint().expect("checkpoint");
    let mut lines = vec![json!({
        "format": EXCERPT_FORMAT,
        "checkpoint": checkpoint.note,
    })];
    for &seq in sequences {
        let (stored, proof) = audit
            .inclusion_proof(seq, checkpoint.checkpoint.size)
            .expect("proof");
        let encoding = stored.entry.to_bytes();
        let mut v = readable(&stored.entry);
        v["type"] = json!("entry");
        v["encoding"] = json!(b64::encode(&encoding));
        v["proof"] = json!(proof.iter().map(|h| b64::encode(h)).collect::<Vec<_>>());
        lines.push(v);
    }
    store.close().expect("close");
    lines
}

fn verify_lines(lines: &[Value]) -> Result<VerifyReport, VerifyFailure> {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    verify_export(&mut text.as_bytes(), &key())
}

/// The encodings of `records`, chained from the start.
fn chained(records: Vec<semel_core::AuditRecord>) -> Vec<Vec<u8>> {
    let mut previous = ZERO_HASH;
    records
        .into_iter()
        .enumerate()
        .map(|(i, record)| {
            let bytes = AuditEntry {
                sequence: i as u64,
                previous_hash: previous,
                record,
                format: semel_core::FORMAT,
            }
            .to_bytes();
            previous = entry_hash(&bytes);
            bytes
        })
        .collect()
}

fn epoch_record(origin: &str, held: u64) -> semel_core::AuditRecord {
    let note = NoteSigner::new(origin, ed25519_dalek::SigningKey::from_bytes(&[3; 32])).sign(
        &Checkpoint {
            origin: origin.into(),
            size: 40,
            root: [5; 32],
        },
    );
    let mut r = record(0);
    r.citizen = None;
    r.operation = semel_core::epoch::NEW_EPOCH_OPERATION.into();
    r.detail = semel_core::epoch::EpochStatement::new(&note, held)
        .expect("statement")
        .to_detail();
    r
}

fn verify_encodings(encodings: &[Vec<u8>]) -> Result<VerifyReport, VerifyFailure> {
    let mut v = LogVerifier::new(&[], &key())?;
    for e in encodings {
        v.push(e)?;
    }
    v.finish()
}

#[test]
fn a_new_epoch_is_stated_by_the_first_entry_only_and_about_another_origin() {
    // The first entry: reported, with the previous checkpoint checked
    // under this log's key.
    let log = chained(vec![epoch_record("semel.test/audit/old", 31), record(1)]);
    let report = verify_encodings(&log).expect("verifies");
    let epoch = report.epoch.expect("an epoch");
    assert_eq!(epoch.statement.lost(), 31..40);
    assert!(epoch.same_key);
    // Anywhere else: a failure, naming the entry.
    let log = chained(vec![record(0), epoch_record("semel.test/audit/old", 31)]);
    match verify_encodings(&log) {
        Err(VerifyFailure::Entry { sequence: 1, why }) => {
            assert!(why.contains("first entry"), "{why}")
        }
        other => panic!("an epoch statement in the middle of a log: {other:?}"),
    }
    // About this log's own origin: a fork dressed as an epoch.
    let log = chained(vec![epoch_record("semel.test/audit", 31)]);
    assert!(matches!(
        verify_encodings(&log),
        Err(VerifyFailure::Entry { sequence: 0, .. })
    ));
    // A statement that does not hold together.
    let mut r = epoch_record("semel.test/audit/old", 31);
    r.detail = r.detail.replace("previous size: 40", "previous size: 41");
    let log = chained(vec![r]);
    assert!(matches!(
        verify_encodings(&log),
        Err(VerifyFailure::Entry { sequence: 0, .. })
    ));
}

#[test]
fn an_excerpt_proves_its_entries_and_refuses_any_change() {
    let lines = excerpt(&[17, 3, 0]);
    let report = verify_lines(&lines).expect("verifies");
    assert!(report.excerpt);
    assert_eq!((report.entries, report.last_checkpoint), (3, Some(20)));
    // A readable field changed.
    let mut altered = lines.clone();
    altered[1]["purpose"] = json!("SOMETHING_ELSE");
    let err = verify_lines(&altered).expect_err("altered field");
    assert!(err.to_string().contains("purpose"), "{err}");
    // A proof hash changed.
    let mut altered = lines.clone();
    let mut hash = altered[2]["proof"][0]
        .as_str()
        .and_then(b64::decode)
        .expect("a proof hash");
    hash[0] ^= 1;
    altered[2]["proof"][0] = json!(b64::encode(&hash));
    let err = verify_lines(&altered).expect_err("altered proof");
    assert!(err.to_string().contains("inclusion proof"), "{err}");
    // An entry given another place.
    let mut altered = lines.clone();
    altered[3]["sequence"] = json!(1);
    assert!(verify_lines(&altered).is_err());
    // A checkpoint signed by another key.
    let mut altered = lines;
    let other = NoteSigner::new(
        "semel.test/audit",
        ed25519_dalek::SigningKey::from_bytes(&[4; 32]),
    );
    altered[0]["checkpoint"] = json!(other.sign(&Checkpoint {
        origin: "semel.test/audit".into(),
        size: 20,
        root: [0; 32],
    }));
    let err = verify_lines(&altered).expect_err("other key");
    assert!(matches!(err, VerifyFailure::Checkpoint { .. }), "{err}");
}

#[test]
fn an_excerpt_honours_the_witnesses_and_refuses_kept_checkpoints() {
    use semel_core::checkpoint::{CosignatureVerifier, Cosigner};
    let lines = excerpt(&[5]);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let witness = Cosigner::new(
        "witness.test",
        ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
    );
    let policy = |quorum| TrustPolicy {
        trusted: Vec::new(),
        witnesses: vec![CosignatureVerifier::parse(&witness.verifier_key()).expect("vkey")],
        quorum,
    };
    // Not cosigned: a quorum of one refuses it.
    let err = verify_export_trusting(&mut text.as_bytes(), &key(), &policy(1))
        .expect_err("no cosignature");
    assert!(err.to_string().contains("cosignatures"), "{err}");
    // Cosigned: accepted.
    let note = lines[0]["checkpoint"].as_str().expect("note");
    let cp = Checkpoint::of_note(note).expect("checkpoint");
    let cosigned = format!("{note}{}", witness.cosign(&cp, 1_767_225_600));
    let mut with = lines.clone();
    with[0]["checkpoint"] = json!(cosigned);
    let text: String = with.iter().map(|l| format!("{l}\n")).collect();
    verify_export_trusting(&mut text.as_bytes(), &key(), &policy(1)).expect("cosigned");
    // One witness given twice is one witness: a quorum of two is not met.
    let twice = TrustPolicy {
        witnesses: vec![
            CosignatureVerifier::parse(&witness.verifier_key()).expect("vkey"),
            CosignatureVerifier::parse(&witness.verifier_key()).expect("vkey"),
        ],
        ..policy(2)
    };
    let err = verify_export_trusting(&mut text.as_bytes(), &key(), &twice)
        .expect_err("one witness twice");
    assert!(err.to_string().contains("cosignatures"), "{err}");
    // Checkpoints an auditor kept need the whole log.
    let kept = TrustPolicy {
        trusted: vec![note.to_owned()],
        ..TrustPolicy::default()
    };
    let err =
        verify_export_trusting(&mut text.as_bytes(), &key(), &kept).expect_err("kept checkpoints");
    assert!(err.to_string().contains("--trusted"), "{err}");
}

/// The frames of the log: (offset, total length).
fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + HEADER <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
        if len == 0 {
            break;
        }
        out.push((at, HEADER + len));
        at += HEADER + len;
    }
    out
}

fn tamper(dir: &Path, f: impl FnOnce(&mut Vec<u8>)) -> Result<VerifyReport, VerifyFailure> {
    let path = dir.join("audit/log");
    let mut bytes = std::fs::read(&path).expect("read");
    f(&mut bytes);
    std::fs::write(&path, bytes).expect("write");
    verify_dir(&dir.join("audit"), &key())
}

/// Rewrites a frame's checksum, as a careful forger would.
fn fix_crc(bytes: &mut [u8], (at, len): (usize, usize)) {
    let crc = crc32fast::hash(&bytes[at + HEADER..at + len]);
    bytes[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
}

fn entry_failure(r: Result<VerifyReport, VerifyFailure>) -> (u64, String) {
    match r {
        Err(VerifyFailure::Entry { sequence, why }) => (sequence, why),
        other => panic!("expected an entry to be named, got {other:?}"),
    }
}

#[test]
fn an_untouched_log_verifies() {
    let dir = log();
    let report = verify_dir(&dir.path().join("audit"), &key()).expect("verifies");
    assert_eq!((report.entries, report.last_checkpoint), (20, Some(20)));
    assert!(report.checkpoints >= 4, "{report:?}");
    // With another key, nothing verifies.
    let other = NoteSigner::new(
        "semel.test/audit",
        ed25519_dalek::SigningKey::from_bytes(&[4; 32]),
    );
    let other = NoteVerifier::parse(&other.verifier_key()).expect("key");
    assert!(matches!(
        verify_dir(&dir.path().join("audit"), &other),
        Err(VerifyFailure::Checkpoint { .. })
    ));
}

#[test]
fn a_changed_byte_is_found_in_its_entry() {
    let dir = log();
    let r = tamper(dir.path(), |b| {
        let (at, _) = frames(b)[7];
        b[at + HEADER + 40] ^= 1;
    });
    let (seq, why) = entry_failure(r);
    assert_eq!(seq, 7, "{why}");
    assert!(why.contains("checksum"), "{why}");
}

#[test]
fn a_changed_byte_with_a_forged_checksum_is_found_in_its_entry() {
    let dir = log();
    let r = tamper(dir.path(), |b| {
        let frame = frames(b)[7];
        // The purpose's last letter: still a valid entry.
        let text = b"RIS_ELIGIBILITY";
        let at = b[frame.0..frame.0 + frame.1]
            .windows(text.len())
            .position(|w| w == text)
            .expect("purpose")
            + frame.0
            + text.len()
            - 1;
        b[at] = b'X';
        fix_crc(b, frame);
    });
    let (seq, why) = entry_failure(r);
    assert_eq!(seq, 7, "{why}");
    assert!(why.contains("altered"), "{why}");
}

#[test]
fn the_last_entry_changed_is_caught_by_its_checkpoint() {
    let dir = log();
    let r = tamper(dir.path(), |b| {
        let frame = *frames(b).last().expect("frames");
        let at = frame.0 + HEADER + 30;
        b[at] ^= 1;
        fix_crc(b, frame);
    });
    match r {
        Err(VerifyFailure::Checkpoint { size, why }) => {
            assert_eq!(size, 20, "{why}");
            assert!(why.contains("to 19 was altered"), "{why}");
        }
        // A byte that no longer decodes is named at once.
        Err(VerifyFailure::Entry { sequence, .. }) => assert_eq!(sequence, 19),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_deleted_entry_is_named() {
    let dir = log();
    let r = tamper(dir.path(), |b| {
        let (at, len) = frames(b)[5];
        b.drain(at..at + len);
    });
    let (seq, why) = entry_failure(r);
    assert_eq!(seq, 5, "{why}");
    assert!(why.contains("removed or reordered"), "{why}");
}

#[test]
fn two_reordered_entries_are_named() {
    let dir = log();
    let r = tamper(dir.path(), |b| {
        let f = frames(b);
        let (a, b_) = (f[9], f[10]);
        let first = b[a.0..a.0 + a.1].to_vec();
        let second = b[b_.0..b_.0 + b_.1].to_vec();
        let mut swapped = second;
        swapped.extend_from_slice(&first);
        b.splice(a.0..b_.0 + b_.1, swapped);
    });
    let (seq, why) = entry_failure(r);
    assert_eq!(seq, 9, "{why}");
}

#[test]
fn a_truncated_log_is_caught_by_its_last_checkpoint() {
    let dir = log();
    let r = tamper(dir.path(), |b| {
        let (at, _) = frames(b)[15];
        b.truncate(at);
    });
    match r {
        Err(VerifyFailure::Checkpoint { size, why }) => {
            // The first checkpoint beyond the 15 entries left.
            assert!(size > 15, "{why}");
            assert!(why.contains("ends after 15"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn stripped_checkpoints_hide_nothing_from_an_auditor_who_kept_one() {
    use semel_core::checkpoint::{CosignatureVerifier, Cosigner};
    let dir = log();
    let mut out = Vec::new();
    export(
        &dir.path().join("audit"),
        ExportFormat::JsonLines,
        Some(&signer().verifier_key()),
        &mut out,
        &mut |_, _| {},
    )
    .expect("export");
    let text = String::from_utf8(out).expect("utf8");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    // What an auditor kept: the newest checkpoint, cosigned by a witness.
    let newest = lines
        .iter()
        .rev()
        .find(|v| v["type"] == "checkpoint")
        .and_then(|v| v["note"].as_str())
        .expect("a checkpoint")
        .to_owned();
    let checkpoint = key().verify(&newest).expect("the log's note");
    assert_eq!(checkpoint.size, 20);
    let witness = Cosigner::new(
        "witness.test/w1",
        ed25519_dalek::SigningKey::from_bytes(&[4; 32]),
    );
    let cosigned = format!("{newest}{}", witness.cosign(&checkpoint, 1_700_000_000));
    let trusting = |notes: Vec<String>, quorum: usize| TrustPolicy {
        trusted: notes,
        witnesses: vec![CosignatureVerifier::parse(&witness.verifier_key()).expect("vkey")],
        quorum,
    };
    // The operator removes the last three entries and every checkpoint.
    let cut: String = lines
        .iter()
        .filter(|v| v["type"] != "checkpoint")
        .filter(|v| v["type"] != "entry" || v["sequence"].as_u64().is_some_and(|s| s < 17))
        .map(|v| format!("{v}\n"))
        .collect();
    let alone = verify_export(&mut cut.as_bytes(), &key()).expect("nothing to compare with");
    assert_eq!(alone.entries, 17);
    assert_eq!(alone.last_checkpoint, None, "and it says so: no checkpoint");
    match verify_export_trusting(
        &mut cut.as_bytes(),
        &key(),
        &trusting(vec![cosigned.clone()], 1),
    ) {
        Err(VerifyFailure::Checkpoint { size, why }) => {
            assert_eq!(size, 20);
            assert!(why.contains("ends after 17"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    // The untouched export reaches the trusted checkpoint.
    let r = verify_export_trusting(
        &mut text.as_bytes(),
        &key(),
        &trusting(vec![cosigned.clone()], 1),
    )
    .expect("verifies");
    assert_eq!(r.trusted, 1);
    // A trusted checkpoint without the required cosignature is refused.
    match verify_export_trusting(
        &mut text.as_bytes(),
        &key(),
        &trusting(vec![newest.clone()], 1),
    ) {
        Err(VerifyFailure::Checkpoint { why, .. }) => {
            assert!(why.contains("cosignatures"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // A split view: the log signed another root at the trusted size.
    let other = signer().sign(&semel_core::checkpoint::Checkpoint {
        root: [9; 32],
        ..checkpoint.clone()
    });
    match verify_export_trusting(&mut text.as_bytes(), &key(), &trusting(vec![other], 0)) {
        Err(VerifyFailure::Checkpoint { why, .. }) => {
            assert!(why.contains("different histories"), "{why}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_export_verifies_and_an_edited_one_does_not() {
    let dir = log();
    let mut out = Vec::new();
    let n = export(
        &dir.path().join("audit"),
        ExportFormat::JsonLines,
        Some(&signer().verifier_key()),
        &mut out,
        &mut |_, _| {},
    )
    .expect("export");
    assert_eq!(n, 20);
    let report = verify_export(&mut out.as_slice(), &key()).expect("verifies");
    assert_eq!(report.entries, 20);
    assert!(report.checkpoints >= 4);
    // Someone changes the citizen shown in entry 3.
    let text = String::from_utf8(out.clone()).expect("utf8");
    let edited: String = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 4 {
                l.replace("93051822361", "85073003328")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    match verify_export(&mut edited.as_bytes(), &key()) {
        Err(VerifyFailure::Entry { sequence, why }) => {
            assert_eq!(sequence, 3);
            assert!(why.contains("citizen"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    // An export made before entries showed their questions and detail
    // lacks those fields: it still verifies. A changed question does not.
    let edit_line = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        text.lines()
            .enumerate()
            .map(|(i, l)| {
                let mut v: Value = serde_json::from_str(l).expect("json");
                if i == 4
                    && let Some(o) = v.as_object_mut()
                {
                    f(o);
                }
                v.to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let older = edit_line(&|o| {
        o.remove("checks");
        o.remove("detail");
        o.remove("authorisation_version");
    });
    verify_export(&mut older.as_bytes(), &key()).expect("an older export verifies");
    let asked = edit_line(&|o| {
        o.insert("checks".into(), json!(["nis_code = \"21015\": YES"]));
    });
    match verify_export(&mut asked.as_bytes(), &key()) {
        Err(VerifyFailure::Entry { sequence, why }) => {
            assert_eq!(sequence, 3);
            assert!(why.contains("checks"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    // CSV is for reading.
    let mut csv = Vec::new();
    export(
        &dir.path().join("audit"),
        ExportFormat::Csv,
        None,
        &mut csv,
        &mut |_, _| {},
    )
    .expect("csv");
    let csv = String::from_utf8(csv).expect("utf8");
    assert_eq!(csv.lines().count(), 21);
    assert!(csv.starts_with("sequence,time_micros,operation"));
    assert!(
        csv.lines()
            .next()
            .is_some_and(|h| h.ends_with(",checks,detail"))
    );
}

#[test]
fn csv_cells_never_read_as_formulas() {
    for (v, cell) in [
        (
            json!("=HYPERLINK(\"http://x\")"),
            "\"'=HYPERLINK(\"\"http://x\"\")\"",
        ),
        (json!("+1"), "'+1"),
        (json!("-2"), "'-2"),
        (json!("@SUM(A1)"), "'@SUM(A1)"),
        (json!("RIS_ELIGIBILITY"), "RIS_ELIGIBILITY"),
        (json!(["a < 1: YES", "b = 2: NO"]), "a < 1: YES; b = 2: NO"),
    ] {
        assert_eq!(csv_cell(&v), cell, "{v}");
    }
}
