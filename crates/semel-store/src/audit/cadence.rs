use super::*;
use crate::Store;
use semel_core::checkpoint::NoteSigner;

#[tokio::test]
async fn entries_left_unsigned_by_a_broker_that_never_closed_are_signed_when_they_are_due_by_their_time()
 {
    // A broker stopped without closing (killed) leaves entries no
    // checkpoint covers. Their clock is their recorded time, not the
    // next process's start: entries already older than the interval
    // are signed at once, however soon that process is killed again.
    let every = std::time::Duration::from_secs(60);
    let dir = tempfile::tempdir().expect("tempdir");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64;
    {
        // No signer: as a killed broker leaves it, nothing signed.
        let store = Store::open_with(dir.path(), None).expect("open");
        for i in 0..3 {
            let mut r = super::tests::record(i, None);
            r.time_micros = now - 2 * every.as_micros() as i64;
            store.audit().append(r).await.expect("append");
        }
        store.close().expect("close");
    }
    let opened = std::time::Instant::now();
    let store = Store::open_with(
        dir.path(),
        Some(CheckpointSettings {
            signer: NoteSigner::new(
                "semel.test/audit",
                ed25519_dalek::SigningKey::from_bytes(&[5; 32]),
            ),
            every_entries: 1000,
            every,
        }),
    )
    .expect("open");
    while store.audit().latest_checkpoint().is_none() {
        assert!(
            opened.elapsed() < every / 2,
            "entries older than the interval waited for a new interval from the start"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(
        store.audit().latest_checkpoint().map(|c| c.checkpoint.size),
        Some(3)
    );
    store.close().expect("close");
}

#[tokio::test]
async fn an_entry_is_signed_as_long_after_it_as_the_configuration_says() {
    let every = std::time::Duration::from_millis(400);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_with(
        dir.path(),
        Some(CheckpointSettings {
            signer: NoteSigner::new(
                "semel.test/audit",
                ed25519_dalek::SigningKey::from_bytes(&[5; 32]),
            ),
            every_entries: 1000,
            every,
        }),
    )
    .expect("open");
    // A quiet start: the clock runs from the first unsigned entry, not
    // from the opening.
    std::thread::sleep(every / 2);
    let appended = std::time::Instant::now();
    store
        .audit()
        .append(super::tests::record(0, None))
        .await
        .expect("append");
    let deadline = appended + every * 10;
    while store.audit().latest_checkpoint().is_none() {
        assert!(std::time::Instant::now() < deadline, "never signed");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let waited = appended.elapsed();
    assert!(
        waited >= every,
        "signed {waited:?} after the entry, before the configured {every:?}"
    );
    assert_eq!(
        store.audit().latest_checkpoint().map(|c| c.checkpoint.size),
        Some(1)
    );
    store.close().expect("close");
}
