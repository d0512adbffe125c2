//! The cache's cases, on a store in memory that counts its reads and can
//! hold a read or fail its feed.

use super::*;
use crate::conformance::{file, kbo, niss};
use std::sync::atomic::AtomicBool;

/// A store in memory that counts its reads, can hold a read until told,
/// and keeps a change feed that can be made to fail.
#[derive(Default)]
struct Fake {
    files: Mutex<Vec<PersonFile>>,
    reads: AtomicU64,
    hold: Mutex<Option<Arc<tokio::sync::Notify>>>,
    feed: Mutex<Vec<PersonsChange>>,
    feed_fails: AtomicBool,
    feed_incomplete: AtomicBool,
    shared: bool,
    /// Holds a write's reply (after the write landed) until told.
    hold_write: Mutex<Option<Arc<tokio::sync::Notify>>>,
}

impl Fake {
    fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }
    /// A change made by another broker: stored, and in the feed.
    fn change_elsewhere(&self, f: PersonFile) {
        let n = f.citizen;
        self.files.lock().expect("files").push(f);
        self.feed
            .lock()
            .expect("feed")
            .push(PersonsChange::Citizen(n));
    }
}

#[async_trait]
impl PersonsStore for Fake {
    async fn put_files(&self, files: &[PersonFile]) -> Result<(), StorageError> {
        self.files.lock().expect("files").extend_from_slice(files);
        let hold = self.hold_write.lock().expect("hold").take();
        if let Some(gate) = hold {
            gate.notified().await;
        }
        Ok(())
    }
    async fn delete_file(&self, file: &PersonFile) -> Result<(), StorageError> {
        self.files
            .lock()
            .expect("files")
            .retain(|f| f.id != file.id);
        Ok(())
    }
    async fn file(&self, _: &Kbo, _: &Niss, _: &str) -> Result<Option<PersonFile>, StorageError> {
        Ok(None)
    }
    async fn files_of(
        &self,
        consumer: &Kbo,
        citizen: &Resolved,
    ) -> Result<Vec<PersonFile>, StorageError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let found: Vec<PersonFile> = self
            .files
            .lock()
            .expect("files")
            .iter()
            .filter(|f| f.consumer == *consumer && citizen.numbers().any(|n| *n == f.citizen))
            .cloned()
            .collect();
        let hold = self.hold.lock().expect("hold").take();
        if let Some(gate) = hold {
            gate.notified().await;
        }
        Ok(found)
    }
    async fn put_consent(&self, _: &Consent) -> Result<(), StorageError> {
        Ok(())
    }
    async fn delete_consent(&self, _: &Consent) -> Result<(), StorageError> {
        Ok(())
    }
    async fn consents_of(&self, _: &Resolved) -> Result<Vec<Consent>, StorageError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(Vec::new())
    }
    async fn replace(&self, r: &NumberReplacement) -> Result<NumberReplacement, StorageError> {
        Ok(r.clone())
    }
    async fn unreplace(&self, _: &Niss) -> Result<Option<NumberReplacement>, StorageError> {
        Ok(None)
    }
    async fn resolve(&self, given: &Niss) -> Result<Resolved, StorageError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(alone(given))
    }
    fn keeps_feed(&self) -> bool {
        self.shared
    }
    /// The whole directory as one page (held like a read, when told).
    async fn directory_page(
        &self,
        _: Option<&(Kbo, Niss)>,
        _: usize,
    ) -> Result<crate::DirectoryPage, StorageError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let mut files = self.files.lock().expect("files").clone();
        files.sort_by_key(|f| (f.consumer, f.citizen));
        let hold = self.hold.lock().expect("hold").take();
        if let Some(gate) = hold {
            gate.notified().await;
        }
        Ok(crate::DirectoryPage {
            files,
            ..Default::default()
        })
    }
    async fn changes_since(&self, after: u64) -> Result<crate::PersonsChanges, StorageError> {
        if self.feed_fails.load(Ordering::SeqCst) {
            return Err(StorageError::Unavailable("down".into()));
        }
        let feed = self.feed.lock().expect("feed");
        let complete = !self.feed_incomplete.load(Ordering::SeqCst);
        Ok(crate::PersonsChanges {
            head: feed.len() as u64,
            changes: if complete {
                feed[after as usize..].to_vec()
            } else {
                Vec::new()
            },
            complete,
        })
    }
}

fn subject(shared: bool) -> (Arc<Fake>, CachedPersons) {
    let fake = Arc::new(Fake {
        shared,
        ..Fake::default()
    });
    let cached = CachedPersons::new(fake.clone(), 1_000);
    (fake, cached)
}

const CONSUMER: &str = "0566988259";
const CITIZEN: &str = "85073003328";

async fn count(cached: &CachedPersons) -> usize {
    cached
        .files_of(&kbo(CONSUMER), &alone(&niss(CITIZEN)))
        .await
        .expect("files")
        .len()
}

#[tokio::test]
async fn a_citizen_read_again_is_answered_from_memory() {
    let (fake, cached) = subject(false);
    assert_eq!(count(&cached).await, 0);
    assert_eq!(count(&cached).await, 0);
    cached.resolve(&niss(CITIZEN)).await.expect("resolve");
    cached.resolve(&niss(CITIZEN)).await.expect("resolve");
    assert_eq!(fake.reads(), 2, "one read of the files, one resolution");
    assert_eq!(cached.stats(), CacheStats { hits: 2, misses: 2 });
}

#[tokio::test]
async fn a_warmed_citizen_is_answered_from_memory_at_the_first_lookup() {
    let (fake, cached) = subject(false);
    fake.files
        .lock()
        .expect("files")
        .push(file("f1", kbo(CONSUMER), niss(CITIZEN)));
    let warmed = cached.warm(WARM_PAGE).await.expect("warm");
    assert_eq!(
        warmed,
        Warmed {
            numbers: 1,
            skipped: 0
        }
    );
    let reads = fake.reads();
    assert_eq!(count(&cached).await, 1);
    let resolved = cached.resolve(&niss(CITIZEN)).await.expect("resolve");
    assert_eq!(resolved, alone(&niss(CITIZEN)));
    assert!(
        cached
            .consents_of(&resolved)
            .await
            .expect("consents")
            .is_empty()
    );
    assert_eq!(
        fake.reads(),
        reads,
        "files, resolution and consents from memory"
    );
    assert_eq!(cached.stats(), CacheStats { hits: 3, misses: 0 });
}

#[tokio::test]
async fn a_page_read_while_its_citizen_changed_is_not_kept() {
    let (fake, cached) = subject(false);
    fake.files
        .lock()
        .expect("files")
        .push(file("f1", kbo(CONSUMER), niss(CITIZEN)));
    let gate = Arc::new(tokio::sync::Notify::new());
    *fake.hold.lock().expect("hold") = Some(gate.clone());
    let warming = tokio::spawn({
        let cached = cached.clone();
        async move { cached.warm(WARM_PAGE).await }
    });
    while fake.reads() == 0 {
        tokio::task::yield_now().await;
    }
    // The page was read; a second file is written before it is kept.
    cached
        .put_files(&[file("f2", kbo(CONSUMER), niss(CITIZEN))])
        .await
        .expect("put");
    gate.notify_one();
    let warmed = warming.await.expect("task").expect("warm");
    assert_eq!(
        warmed,
        Warmed {
            numbers: 0,
            skipped: 1
        }
    );
    assert_eq!(
        count(&cached).await,
        2,
        "read from the store, with the new file"
    );
}

#[tokio::test]
async fn a_write_through_the_cache_is_seen_at_once() {
    let (_, cached) = subject(false);
    assert_eq!(count(&cached).await, 0);
    let f = file("f1", kbo(CONSUMER), niss(CITIZEN));
    cached
        .put_files(std::slice::from_ref(&f))
        .await
        .expect("put");
    assert_eq!(count(&cached).await, 1);
    cached.delete_file(&f).await.expect("delete");
    assert_eq!(count(&cached).await, 0);
}

#[tokio::test]
async fn a_read_that_raced_a_change_is_not_kept() {
    let (fake, cached) = subject(false);
    let gate = Arc::new(tokio::sync::Notify::new());
    *fake.hold.lock().expect("hold") = Some(gate.clone());
    // The read takes what the store held before the write...
    let reader = {
        let cached = cached.clone();
        tokio::spawn(async move { count(&cached).await })
    };
    while fake.reads() == 0 {
        tokio::task::yield_now().await;
    }
    // ...the write lands while the read is on its way...
    let f = file("f1", kbo(CONSUMER), niss(CITIZEN));
    cached
        .put_files(std::slice::from_ref(&f))
        .await
        .expect("put");
    gate.notify_one();
    assert_eq!(
        reader.await.expect("reader"),
        0,
        "the read predates the write"
    );
    // ...and what it read is not kept: the next read sees the write.
    assert_eq!(count(&cached).await, 1);
}

#[tokio::test]
async fn a_shared_store_answers_from_memory_only_while_its_feed_is_read() {
    let (fake, cached) = subject(true);
    // Not followed yet: every read goes to the store.
    count(&cached).await;
    count(&cached).await;
    assert_eq!(fake.reads(), 2);
    let poll = Duration::from_millis(5);
    let follow = tokio::spawn(cached.clone().follow(poll, Duration::from_millis(100)));
    while !cached.fresh() {
        tokio::time::sleep(poll).await;
    }
    count(&cached).await;
    count(&cached).await;
    assert_eq!(fake.reads(), 3, "followed: one more read, then memory");
    // Another broker opens a file: the feed names the citizen, and
    // memory drops it within a poll or two.
    fake.change_elsewhere(file("f2", kbo(CONSUMER), niss(CITIZEN)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&cached).await == 0 {
        assert!(Instant::now() < deadline, "the change never reached memory");
        tokio::time::sleep(poll).await;
    }
    // The feed cannot be read: once its bound runs out, memory stops
    // answering and every read goes to the store.
    fake.feed_fails.store(true, Ordering::SeqCst);
    while cached.fresh() {
        tokio::time::sleep(poll).await;
    }
    let before = fake.reads();
    count(&cached).await;
    assert_eq!(fake.reads(), before + 1);
    follow.abort();
}

#[tokio::test]
async fn changes_lost_from_the_feed_forget_everything() {
    let (fake, cached) = subject(true);
    let poll = Duration::from_millis(5);
    let follow = tokio::spawn(cached.clone().follow(poll, Duration::from_secs(5)));
    while !cached.fresh() {
        tokio::time::sleep(poll).await;
    }
    assert_eq!(count(&cached).await, 0);
    // A change the feed no longer lists (pruned while unread).
    fake.feed_incomplete.store(true, Ordering::SeqCst);
    fake.files
        .lock()
        .expect("files")
        .push(file("f3", kbo(CONSUMER), niss(CITIZEN)));
    fake.feed
        .lock()
        .expect("feed")
        .push(PersonsChange::Citizen(niss("93051822361")));
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&cached).await == 0 {
        assert!(
            Instant::now() < deadline,
            "memory kept what it could not trust"
        );
        tokio::time::sleep(poll).await;
    }
    follow.abort();
}

#[tokio::test]
async fn memory_is_bounded() {
    let fake: Arc<Fake> = Arc::new(Fake::default());
    // One entry per part: each number brings its files and its
    // resolution to one part, so without the bound a part holds two.
    let cached = CachedPersons::new(fake.clone(), PARTS);
    for n in ["85073003328", "93051822361", "98472899765"] {
        for c in ["0566988259", "0314595348"] {
            cached
                .files_of(&kbo(c), &alone(&niss(n)))
                .await
                .expect("files");
            cached.resolve(&niss(n)).await.expect("resolve");
        }
    }
    for part in &cached.parts {
        let part = Cache::lock(part);
        assert!(part.numbers.len() + part.resolved.len() <= 1);
    }
}

#[tokio::test]
async fn a_write_whose_caller_gave_up_is_still_forgotten() {
    let (fake, cached) = subject(false);
    assert_eq!(count(&cached).await, 0);
    let gate = Arc::new(tokio::sync::Notify::new());
    *fake.hold_write.lock().expect("hold") = Some(gate.clone());
    // The write lands, its reply is late, and the caller gives up (a
    // deadline, a reset stream): its future is dropped.
    let f = file("f1", kbo(CONSUMER), niss(CITIZEN));
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        cached.put_files(std::slice::from_ref(&f)),
    )
    .await;
    assert!(gave_up.is_err());
    gate.notify_one();
    // The write's own task still tells memory.
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&cached).await == 0 {
        assert!(
            Instant::now() < deadline,
            "memory kept what the write changed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn after_a_failed_read_of_the_feed_memory_starts_again() {
    let (fake, cached) = subject(true);
    let poll = Duration::from_millis(5);
    let follow = tokio::spawn(cached.clone().follow(poll, Duration::from_secs(5)));
    while !cached.fresh() {
        tokio::time::sleep(poll).await;
    }
    assert_eq!(count(&cached).await, 0);
    // The store fails over to a standby that lost a change, and the
    // positions it reuses look complete: nothing in the feed names the
    // citizen whose file now differs.
    fake.feed_fails.store(true, Ordering::SeqCst);
    tokio::time::sleep(poll * 4).await;
    fake.files
        .lock()
        .expect("files")
        .push(file("f4", kbo(CONSUMER), niss(CITIZEN)));
    fake.feed_fails.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&cached).await == 0 {
        assert!(
            Instant::now() < deadline,
            "memory kept what it read before the failure"
        );
        tokio::time::sleep(poll).await;
    }
    follow.abort();
}
