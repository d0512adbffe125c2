//! A stopped broker's log, altered on disk: the start refuses, naming
//! what differs, and never zeroes an acknowledged entry.

use super::*;
use crate::Store;
use semel_core::checkpoint::NoteSigner;

fn settings() -> CheckpointSettings {
    CheckpointSettings {
        signer: NoteSigner::new(
            "semel.test/audit",
            ed25519_dalek::SigningKey::from_bytes(&[5; 32]),
        ),
        every_entries: 1000,
        every: std::time::Duration::from_secs(3600),
    }
}

/// A cleanly stopped log of `n` entries: its closing checkpoint covers
/// them all.
async fn stopped_log(n: u8) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_with(dir.path(), Some(settings())).expect("open");
    for i in 0..n {
        store
            .audit()
            .append(super::tests::record(i, None))
            .await
            .expect("append");
    }
    store.close().expect("close");
    dir
}

fn open(dir: &tempfile::TempDir) -> Result<Store, String> {
    Store::open_with(dir.path(), Some(settings())).map_err(|e| e.to_string())
}

/// Rewrites entry `seq` with `change` applied, checksum recomputed (a
/// careful forger's edit).
fn forge(dir: &tempfile::TempDir, seq: u64, change: impl FnOnce(&mut AuditEntry)) {
    let audit = dir.path().join("audit");
    let ends = File::open(audit.join("ends")).expect("ends");
    let start = if seq == 0 {
        0
    } else {
        read_end(&ends, seq - 1).expect("end")
    };
    let end = read_end(&ends, seq).expect("end");
    let log = OpenOptions::new()
        .read(true)
        .write(true)
        .open(audit.join("log"))
        .expect("log");
    let mut buf = vec![0u8; (end - start) as usize];
    log.read_exact_at(&mut buf, start).expect("read");
    let mut entry = AuditEntry::decode(&buf[HEADER..]).expect("decode");
    change(&mut entry);
    let payload = entry.to_bytes();
    assert_eq!(payload.len(), buf.len() - HEADER, "same length");
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    frame.extend_from_slice(&payload);
    log.write_all_at(&frame, start).expect("write");
}

fn another_consumer(e: &mut AuditEntry) {
    e.record.consumer = Kbo::parse("1006872569").expect("kbo");
}

#[tokio::test]
async fn a_forged_last_entry_is_refused_at_start() {
    let dir = stopped_log(12).await;
    forge(&dir, 11, another_consumer);
    let err = open(&dir).err().expect("refused");
    assert!(err.contains("entry 11"), "{err}");
}

#[tokio::test]
async fn a_forged_entry_with_its_checkpoint_removed_is_still_refused() {
    // Two checkpoints: at 6 entries (a restart) and at 12 (the close).
    let dir = stopped_log(6).await;
    let store = open(&dir).expect("reopen");
    for i in 6..12 {
        store
            .audit()
            .append(super::tests::record(i, None))
            .await
            .expect("append");
    }
    store.close().expect("close");
    let path = dir.path().join("audit/checkpoints");
    let all = read_checkpoints(&path).expect("checkpoints");
    assert_eq!(
        all.iter().map(|c| c.checkpoint.size).collect::<Vec<_>>(),
        vec![6, 12]
    );
    // The forger removes the last checkpoint and alters an entry only
    // it covered: the entries since the remaining checkpoint are checked
    // against the tree.
    let first = &all[0].note;
    let mut kept = (first.len() as u32).to_be_bytes().to_vec();
    kept.extend_from_slice(first.as_bytes());
    std::fs::write(&path, kept).expect("keep the first");
    forge(&dir, 9, another_consumer);
    let err = open(&dir).err().expect("refused");
    assert!(err.contains("entry 9"), "{err}");
}

/// A checkpoint record torn by a crash is cut off at the next start, so
/// the checkpoints signed after it stay readable at the start after.
#[tokio::test]
async fn a_torn_last_checkpoint_record_is_cut_so_later_ones_stay_readable() {
    let dir = stopped_log(6).await;
    let path = dir.path().join("audit/checkpoints");
    // Half of a record: its length, and a few bytes of its note.
    let mut bytes = std::fs::read(&path).expect("read");
    let whole = bytes.len();
    bytes.extend_from_slice(&300u32.to_be_bytes());
    bytes.extend_from_slice(b"semel.example/log\n12\n");
    std::fs::write(&path, &bytes).expect("tear");
    // The next start cuts it off, then more entries and a checkpoint.
    let store = open(&dir).expect("reopen after the tear");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), whole as u64);
    for i in 6..12 {
        store
            .audit()
            .append(super::tests::record(i, None))
            .await
            .expect("append");
    }
    store.close().expect("close");
    // The start after reads the later checkpoint.
    let sizes: Vec<u64> = read_checkpoints(&path)
        .expect("checkpoints")
        .iter()
        .map(|c| c.checkpoint.size)
        .collect();
    assert_eq!(sizes.last(), Some(&12), "{sizes:?}");
    let store = open(&dir).expect("reopen");
    assert_eq!(
        store.audit().latest_checkpoint().map(|c| c.checkpoint.size),
        Some(12)
    );
    store.close().expect("close");
}

#[tokio::test]
async fn an_altered_checkpoint_is_refused_at_start() {
    let dir = stopped_log(5).await;
    let path = dir.path().join("audit/checkpoints");
    let mut bytes = std::fs::read(&path).expect("read");
    // The signature is the last line: flip a character of it.
    let at = bytes.len() - 6;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&path, &bytes).expect("write");
    let err = open(&dir).err().expect("refused");
    assert!(err.contains("does not verify"), "{err}");
}

#[tokio::test]
async fn a_cut_log_with_its_derived_files_deleted_is_refused_not_zeroed() {
    let dir = stopped_log(8).await;
    let audit = dir.path().join("audit");
    let log_path = audit.join("log");
    let len = std::fs::metadata(&log_path).expect("stat").len();
    let f = OpenOptions::new()
        .write(true)
        .open(&log_path)
        .expect("open");
    f.set_len(len - 5).expect("cut");
    drop(f);
    std::fs::remove_file(audit.join("ends")).expect("ends");
    std::fs::remove_dir_all(audit.join("index")).expect("index");
    std::fs::remove_dir_all(audit.join("tree")).expect("tree");
    let before = std::fs::read(&log_path).expect("read");
    let err = open(&dir).err().expect("refused");
    assert!(err.contains("entry 7"), "{err}");
    assert!(err.contains("acknowledged"), "{err}");
    assert_eq!(
        std::fs::read(&log_path).expect("read"),
        before,
        "nothing zeroed"
    );
}

#[tokio::test]
async fn an_untouched_log_starts_and_a_torn_unacknowledged_write_is_still_zeroed() {
    let dir = stopped_log(6).await;
    let store = open(&dir).expect("an untouched log starts");
    store.close().expect("close");
    // A partial frame after the last entry: a write nobody was told had
    // succeeded.
    let log_path = dir.path().join("audit/log");
    let mut f = OpenOptions::new()
        .append(true)
        .open(&log_path)
        .expect("open");
    f.write_all(&[0, 0, 1, 0, 9, 9]).expect("append");
    drop(f);
    let store = open(&dir).expect("starts, zeroing the torn write");
    assert_eq!(store.audit().head().0, 6);
    store.close().expect("close");
}
