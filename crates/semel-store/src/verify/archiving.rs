//! Old entries move to archive files; the log stays verifiable across
//! the archive and the live store, and queries say what is archived.

use semel_core::checkpoint::{NoteSigner, NoteVerifier};

use super::*;
use crate::{AuditQuery, CheckpointSettings, Store, StoreError};

fn settings() -> CheckpointSettings {
    CheckpointSettings {
        signer: NoteSigner::new(
            "semel.test/audit",
            ed25519_dalek::SigningKey::from_bytes(&[6; 32]),
        ),
        every_entries: 5,
        every: std::time::Duration::from_secs(3600),
    }
}

fn key() -> NoteVerifier {
    NoteVerifier::parse(&settings().signer.verifier_key()).expect("key")
}

fn record(i: u64) -> semel_core::AuditRecord {
    let mut r = super::tampering::record(i);
    r.time_micros = 1_000_000 * i as i64;
    r.consumer_reference = format!("case {i}");
    r
}

#[test]
fn archived_entries_leave_the_log_and_everything_still_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("rt");
    let store = Store::open_with(dir.path(), Some(settings())).expect("open");
    for i in 0..20 {
        rt.block_on(store.audit().append(record(i)))
            .expect("append");
    }
    let log = store.audit();
    let log_size = std::fs::metadata(dir.path().join("audit/log"))
        .expect("stat")
        .len();
    let report = log
        .archive_before(12_000_000)
        .expect("archive")
        .expect("moved");
    assert_eq!((report.from, report.to), (0, 12));
    assert!(
        log.archive_before(12_000_000).expect("again").is_none(),
        "nothing more to move"
    );
    // The space is released, the size kept.
    let meta = std::fs::metadata(dir.path().join("audit/log")).expect("stat");
    assert_eq!(meta.len(), log_size);
    // Queries stop at the archive; archived entries are named as such.
    let all = log
        .query(&AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        })
        .expect("query");
    assert_eq!(all.len(), 8);
    assert!(all.iter().all(|e| e.entry.sequence >= 12));
    let by_citizen = log
        .query(&AuditQuery {
            citizen: semel_core::Niss::parse("93051822361").ok(),
            limit: 100,
            ..AuditQuery::default()
        })
        .expect("query");
    assert_eq!(by_citizen.len(), 8);
    assert!(matches!(
        log.read_sequence(3),
        Err(StoreError::OutOfRange(_))
    ));
    assert_eq!(log.archived().before, 12);
    // Proofs still span the whole tree.
    assert!(log.consistency_proof(5, 20).is_ok());
    store.close().expect("close");

    // The broker starts again after the archive and goes on.
    let store = Store::open_with(dir.path(), Some(settings())).expect("reopen");
    for i in 20..25 {
        rt.block_on(store.audit().append(record(i)))
            .expect("append");
    }
    assert_eq!(store.audit().verify_chain().expect("chain").entries, 25);
    store.close().expect("close");
    let audit = dir.path().join("audit");
    let report = verify_dir(&audit, &key()).expect("verifies across archive and log");
    assert_eq!(report.entries, 25);
    let mut out = Vec::new();
    export(
        &audit,
        ExportFormat::JsonLines,
        None,
        &mut out,
        &mut |_, _| {},
    )
    .expect("export");
    assert_eq!(
        verify_export(&mut out.as_slice(), &key())
            .expect("export verifies")
            .entries,
        25
    );

    // An archive file is as tamper-evident as the log.
    let file = std::fs::read_dir(audit.join("archive"))
        .expect("archive")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .next()
        .expect("a file");
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(&file, text.replacen("case 4", "case 5", 1)).expect("write");
    match verify_dir(&audit, &key()) {
        Err(VerifyFailure::Entry { sequence, why }) => {
            assert_eq!(sequence, 4, "{why}");
        }
        other => panic!("{other:?}"),
    }
}
