//! The persons directory answered from memory: [`CachedPersons`] wraps any
//! [`PersonsStore`] and keeps what lookups read (a number's resolution, a
//! consumer's files on a number, a number's consents), so that a lookup on
//! a citizen seen before reads no storage at all.
//!
//! What holds it true:
//! - Every write through the wrapper drops what it changes before it
//!   returns, so this broker's next read sees the write.
//! - A store that other brokers also write ([`PersonsStore::changes_since`]
//!   answers) is followed by [`CachedPersons::follow`]: every change any
//!   broker commits appears in the store's feed, in commit order, and is
//!   dropped here within one poll interval. While the feed cannot be read
//!   for longer than its staleness bound, or when changes were lost (pruned
//!   before they were read), nothing is answered from memory: reads go to
//!   the store until the feed has been caught up.
//! - A read that raced a change is never kept: each part of the cache has
//!   an epoch, moved by every drop, and a value read from the store is kept
//!   only if its part's epoch did not move while it was read.
//! - Memory is bounded: a part that grows past its share of the capacity
//!   is emptied (and fills again from the store).
//! - Memory may be warmed at start ([`CachedPersons::warm`]) from the
//!   store's directory, page by page, under the same epochs: a page read
//!   while a part moved is not kept there.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use semel_core::persons::Resolved;
use semel_core::{Consent, Kbo, Niss, NumberReplacement, PersonFile};

use crate::{DirectoryPage, PersonsChange, PersonsStore, StorageError};

/// Parts the cache is split into, so lookups on different citizens do not
/// wait for each other.
const PARTS: usize = 16;

/// Citizens kept in memory by default (across all parts).
pub const DEFAULT_CAPACITY: usize = 200_000;

/// What one citizen's number has in memory.
#[derive(Default)]
struct Known {
    /// Per consumer, its files under this number (possibly none).
    files: HashMap<Kbo, Arc<[PersonFile]>>,
    /// The consents under this number, once read.
    consents: Option<Arc<[Consent]>>,
}

#[derive(Default)]
struct Part {
    epoch: u64,
    numbers: HashMap<Niss, Known>,
    /// Resolutions of numbers hashed to this part; all are dropped when
    /// any replacement changes.
    resolved: HashMap<Niss, Resolved>,
}

/// The persons directory, answered from memory where it can be. Clones
/// share one memory.
#[derive(Clone)]
pub struct CachedPersons(Arc<Cache>);

impl std::ops::Deref for CachedPersons {
    type Target = Cache;
    fn deref(&self) -> &Cache {
        &self.0
    }
}

/// What a [`CachedPersons`] holds.
pub struct Cache {
    inner: Arc<dyn PersonsStore>,
    parts: Vec<Mutex<Part>>,
    hasher: std::collections::hash_map::RandomState,
    per_part: usize,
    /// Until when memory may answer, in microseconds since `base`: always
    /// for a store with no other writer; for a shared store, until the
    /// staleness bound after the start of the last successful read of its
    /// feed.
    fresh_until: AtomicU64,
    base: Instant,
    /// The feed position up to which changes were applied.
    applied: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("fresh", &self.fresh())
            .finish_non_exhaustive()
    }
}

/// Files read per page when memory is warmed at start.
pub const WARM_PAGE: usize = 1_000;

/// How long warming at start waits for memory to be allowed to answer (a
/// shared store's feed read once) before it gives up.
const WARM_WAIT: Duration = Duration::from_secs(60);

/// What warming memory kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Warmed {
    /// Numbers whose files and consents memory now holds (counted once
    /// for each consumer with files under it).
    pub numbers: u64,
    /// Numbers read but not kept: their part moved while they were read,
    /// or it is full.
    pub skipped: u64,
}

/// How many reads the cache answered and how many went to the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

impl CachedPersons {
    /// Wraps `inner`, keeping at most about `capacity` entries (a number's
    /// files and consents, or a resolution) in memory. A store that other
    /// brokers also write ([`PersonsStore::keeps_feed`]) is answered from
    /// memory only while [`CachedPersons::follow`] reads its feed.
    pub fn new(inner: Arc<dyn PersonsStore>, capacity: usize) -> CachedPersons {
        let shared = inner.keeps_feed();
        CachedPersons(Arc::new(Cache {
            inner,
            parts: (0..PARTS).map(|_| Mutex::new(Part::default())).collect(),
            hasher: Default::default(),
            per_part: (capacity / PARTS).max(1),
            fresh_until: AtomicU64::new(if shared { 0 } else { u64::MAX }),
            base: Instant::now(),
            applied: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }))
    }

    /// Follows a shared store's change feed every `poll`, for as long as
    /// the task runs. Memory answers only until `stale_after` past the
    /// start of the last successful read of the feed; past that (the feed
    /// cannot be read, or a read hangs), every read goes to the store.
    /// Returns only if the store keeps no feed.
    pub async fn follow(self, poll: Duration, stale_after: Duration) {
        // After a failed read, the store may not be the one read before (a
        // failover to a standby, a restore): its positions may have been
        // reused, so the next successful read forgets everything.
        let mut lost = false;
        loop {
            let started = self.base.elapsed();
            match tokio::time::timeout(stale_after, self.catch_up(lost)).await {
                Ok(Ok(())) => {
                    if lost {
                        tracing::info!(
                            "the persons directory's change feed is read again: memory answers lookups"
                        );
                    }
                    lost = false;
                    let until = (started + stale_after).as_micros() as u64;
                    self.fresh_until.store(until, Ordering::Release);
                }
                Ok(Err(StorageError::Unsupported(_))) => return,
                Ok(Err(e)) => {
                    if !lost {
                        tracing::warn!(error = %semel_core::redact_national_numbers(&e.to_string()), "the persons directory's change feed cannot be read; lookups read the store once memory's bound runs out");
                    }
                    lost = true;
                }
                Err(_) => {
                    if !lost {
                        tracing::warn!(
                            "reading the persons directory's change feed timed out; lookups read the store once memory's bound runs out"
                        );
                    }
                    lost = true;
                }
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Warms memory once memory may answer (for a shared store, once its
    /// feed was read), then says what it kept; for a store that is not
    /// warmed ([`PersonsStore::directory_page`]), does nothing. A failure
    /// is said and left: lookups read the store as they would have.
    pub async fn warm_at_start(self) {
        let waited = Instant::now();
        while !self.fresh() {
            if waited.elapsed() > WARM_WAIT {
                tracing::warn!(
                    "the persons directory was not warmed: its change feed could not be read"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = Instant::now();
        match self.warm(WARM_PAGE).await {
            Ok(Warmed {
                numbers: 0,
                skipped: 0,
            }) => {}
            Ok(w) => tracing::info!(
                numbers = w.numbers,
                skipped = w.skipped,
                ms = started.elapsed().as_millis() as u64,
                "the persons directory is warmed: a citizen's first lookup reads no storage"
            ),
            Err(e) => tracing::warn!(
                error = %semel_core::redact_national_numbers(&e.to_string()),
                "the persons directory could not be warmed; lookups read the store until memory fills"
            ),
        }
    }

    /// Fills memory from the store's directory ([`PersonsStore::directory_page`]),
    /// about `page` files at a time, until the store has no more or
    /// memory's share of each part is full. For each number read, memory
    /// keeps each consumer's files and the number's consents, and its
    /// resolution when no replacement names it, unless its part moved
    /// while the page was read (what it read may predate a change) or
    /// memory may not answer.
    pub async fn warm(&self, page: usize) -> Result<Warmed, StorageError> {
        let mut warmed = Warmed::default();
        let mut after: Option<(Kbo, Niss)> = None;
        loop {
            let epochs: Vec<u64> = self.parts.iter().map(|p| Cache::lock(p).epoch).collect();
            let read = match self.inner.directory_page(after.as_ref(), page.max(1)).await {
                Err(StorageError::Unsupported(_)) => return Ok(warmed),
                read => read?,
            };
            let next = read.next;
            if self.keep_page(read, &epochs, &mut warmed) {
                return Ok(warmed);
            }
            match next {
                Some(next) => after = Some(next),
                None => return Ok(warmed),
            }
        }
    }
}

impl Cache {
    fn part_index(&self, n: &Niss) -> usize {
        (self.hasher.hash_one(n) as usize) % PARTS
    }

    /// Keeps a page read when the parts stood at `epochs`; true when
    /// every part is full.
    fn keep_page(&self, page: DirectoryPage, epochs: &[u64], warmed: &mut Warmed) -> bool {
        let mut files: HashMap<Niss, HashMap<Kbo, Vec<PersonFile>>> = HashMap::new();
        for f in page.files {
            files
                .entry(f.citizen)
                .or_default()
                .entry(f.consumer)
                .or_default()
                .push(f);
        }
        let mut consents: HashMap<Niss, Vec<Consent>> = HashMap::new();
        for c in page.consents {
            consents.entry(c.citizen).or_default().push(c);
        }
        let mut full = [false; PARTS];
        for (n, by_consumer) in files {
            let i = self.part_index(&n);
            let mut part = Self::lock(&self.parts[i]);
            if !self.fresh() || part.epoch != epochs[i] {
                warmed.skipped += 1;
                continue;
            }
            if !part.numbers.contains_key(&n)
                && part.numbers.len() + part.resolved.len() + 2 > self.per_part
            {
                full[i] = true;
                warmed.skipped += 1;
                continue;
            }
            let known = part.numbers.entry(n).or_default();
            for (consumer, files) in by_consumer {
                known.files.insert(consumer, files.into());
            }
            known.consents = Some(consents.remove(&n).unwrap_or_default().into());
            if !page.replaced.contains(&n) {
                part.resolved.insert(n, alone(&n));
            }
            warmed.numbers += 1;
        }
        full.iter().all(|f| *f)
    }
}

impl Cache {
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    fn part_of(&self, n: &Niss) -> &Mutex<Part> {
        &self.parts[self.part_index(n)]
    }

    fn lock(part: &Mutex<Part>) -> MutexGuard<'_, Part> {
        part.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether memory may answer now.
    pub fn fresh(&self) -> bool {
        (self.base.elapsed().as_micros() as u64) < self.fresh_until.load(Ordering::Acquire)
    }

    /// Drops what memory holds on a number.
    fn forget(&self, n: &Niss) {
        let mut part = Self::lock(self.part_of(n));
        part.epoch += 1;
        part.numbers.remove(n);
        part.resolved.remove(n);
    }

    /// Drops every resolution (a replacement changed).
    fn forget_resolutions(&self) {
        for part in &self.parts {
            let mut part = Self::lock(part);
            part.epoch += 1;
            part.resolved.clear();
        }
    }

    /// Drops everything.
    fn forget_all(&self) {
        for part in &self.parts {
            let mut part = Self::lock(part);
            part.epoch += 1;
            part.numbers.clear();
            part.resolved.clear();
        }
    }

    fn epoch(&self, n: &Niss) -> u64 {
        Self::lock(self.part_of(n)).epoch
    }

    /// Keeps a value read from the store at `epoch`, unless the part moved
    /// since (the value may predate a change) or memory may not answer.
    fn keep(&self, n: &Niss, epoch: u64, put: impl FnOnce(&mut Part)) {
        if !self.fresh() {
            return;
        }
        let mut part = Self::lock(self.part_of(n));
        if part.epoch != epoch {
            return;
        }
        if part.numbers.len() + part.resolved.len() >= self.per_part {
            part.numbers.clear();
            part.resolved.clear();
        }
        put(&mut part);
    }

    fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// One number's files of one consumer.
    async fn files_under(
        &self,
        consumer: &Kbo,
        n: &Niss,
    ) -> Result<Arc<[PersonFile]>, StorageError> {
        if self.fresh() {
            let part = Self::lock(self.part_of(n));
            if let Some(files) = part.numbers.get(n).and_then(|k| k.files.get(consumer)) {
                self.hit();
                return Ok(files.clone());
            }
        }
        self.miss();
        let epoch = self.epoch(n);
        let files: Arc<[PersonFile]> = self.inner.files_of(consumer, &alone(n)).await?.into();
        self.keep(n, epoch, |part| {
            part.numbers
                .entry(*n)
                .or_default()
                .files
                .insert(*consumer, files.clone());
        });
        Ok(files)
    }

    /// One number's consents.
    async fn consents_under(&self, n: &Niss) -> Result<Arc<[Consent]>, StorageError> {
        if self.fresh() {
            let part = Self::lock(self.part_of(n));
            if let Some(consents) = part.numbers.get(n).and_then(|k| k.consents.clone()) {
                self.hit();
                return Ok(consents);
            }
        }
        self.miss();
        let epoch = self.epoch(n);
        let consents: Arc<[Consent]> = self.inner.consents_of(&alone(n)).await?.into();
        self.keep(n, epoch, |part| {
            part.numbers.entry(*n).or_default().consents = Some(consents.clone());
        });
        Ok(consents)
    }

    /// Applies the shared store's changes since the last read of its
    /// feed.
    async fn catch_up(&self, forget_all: bool) -> Result<(), StorageError> {
        let after = self.applied.load(Ordering::Acquire);
        let changes = self.inner.changes_since(after).await?;
        if changes.complete && !forget_all {
            for change in &changes.changes {
                match change {
                    PersonsChange::Citizen(n) => self.forget(n),
                    PersonsChange::Replacements => self.forget_resolutions(),
                }
            }
        } else {
            // Changes were lost to this broker (pruned from the feed, too
            // many to list, or a store that may not be the one read
            // before): nothing in memory can be trusted.
            self.forget_all();
        }
        self.applied.store(changes.head, Ordering::Release);
        Ok(())
    }
}

/// What memory forgets after a write.
enum Forget {
    /// What it holds on these numbers.
    Citizens(Vec<Niss>),
    /// Every resolution (a replacement changed).
    Resolutions,
}

impl CachedPersons {
    /// Runs a write on the store, and then forgets what it changed, on a
    /// task of their own: a caller that gives up halfway (a deadline
    /// passed, a stream reset) cannot leave the write done and memory not
    /// told. Forgotten whatever the outcome: a write that failed may still
    /// have reached the store.
    async fn write<T, Fut>(
        &self,
        changed: Forget,
        write: impl FnOnce(Arc<dyn PersonsStore>) -> Fut + Send + 'static,
    ) -> Result<T, StorageError>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = Result<T, StorageError>> + Send + 'static,
    {
        let this = self.clone();
        tokio::spawn(async move {
            let result = write(this.inner.clone()).await;
            match &changed {
                Forget::Citizens(numbers) => numbers.iter().for_each(|n| this.forget(n)),
                Forget::Resolutions => this.forget_resolutions(),
            }
            result
        })
        .await
        .map_err(|e| StorageError::Unavailable(format!("a persons directory write stopped: {e}")))?
    }
}

/// A number on its own, as the store's per-citizen reads take it.
fn alone(n: &Niss) -> Resolved {
    Resolved {
        current: *n,
        given: None,
        former: Vec::new(),
    }
}

#[async_trait]
impl PersonsStore for CachedPersons {
    async fn put_files(&self, files: &[PersonFile]) -> Result<(), StorageError> {
        let changed = Forget::Citizens(files.iter().map(|f| f.citizen).collect());
        let files = files.to_vec();
        self.write(changed, move |s| async move { s.put_files(&files).await })
            .await
    }

    async fn delete_file(&self, file: &PersonFile) -> Result<(), StorageError> {
        let file = file.clone();
        let changed = Forget::Citizens(vec![file.citizen]);
        self.write(changed, move |s| async move { s.delete_file(&file).await })
            .await
    }

    async fn file(
        &self,
        consumer: &Kbo,
        citizen: &Niss,
        id: &str,
    ) -> Result<Option<PersonFile>, StorageError> {
        self.inner.file(consumer, citizen, id).await
    }

    async fn files_of(
        &self,
        consumer: &Kbo,
        citizen: &Resolved,
    ) -> Result<Vec<PersonFile>, StorageError> {
        let mut out = Vec::new();
        for n in citizen.numbers() {
            out.extend(self.files_under(consumer, n).await?.iter().cloned());
        }
        Ok(out)
    }

    async fn put_consent(&self, consent: &Consent) -> Result<(), StorageError> {
        let consent = consent.clone();
        let changed = Forget::Citizens(vec![consent.citizen]);
        self.write(
            changed,
            move |s| async move { s.put_consent(&consent).await },
        )
        .await
    }

    async fn delete_consent(&self, consent: &Consent) -> Result<(), StorageError> {
        let consent = consent.clone();
        let changed = Forget::Citizens(vec![consent.citizen]);
        self.write(
            changed,
            move |s| async move { s.delete_consent(&consent).await },
        )
        .await
    }

    async fn consents_of(&self, citizen: &Resolved) -> Result<Vec<Consent>, StorageError> {
        let mut out = Vec::new();
        for n in citizen.numbers() {
            out.extend(self.consents_under(n).await?.iter().cloned());
        }
        Ok(out)
    }

    async fn replace(&self, r: &NumberReplacement) -> Result<NumberReplacement, StorageError> {
        let r = r.clone();
        self.write(
            Forget::Resolutions,
            move |s| async move { s.replace(&r).await },
        )
        .await
    }

    async fn unreplace(&self, old: &Niss) -> Result<Option<NumberReplacement>, StorageError> {
        let old = *old;
        self.write(Forget::Resolutions, move |s| async move {
            s.unreplace(&old).await
        })
        .await
    }

    async fn resolve(&self, given: &Niss) -> Result<Resolved, StorageError> {
        if self.fresh() {
            let part = Cache::lock(self.part_of(given));
            if let Some(r) = part.resolved.get(given) {
                self.hit();
                return Ok(r.clone());
            }
        }
        self.miss();
        let epoch = self.epoch(given);
        let resolved = self.inner.resolve(given).await?;
        self.keep(given, epoch, |part| {
            part.resolved.insert(*given, resolved.clone());
        });
        Ok(resolved)
    }

    async fn changes_since(&self, after: u64) -> Result<crate::PersonsChanges, StorageError> {
        self.inner.changes_since(after).await
    }

    async fn seal_files(
        &self,
        files: &[PersonFile],
        entry: crate::Appended,
    ) -> Result<(), StorageError> {
        let changed = Forget::Citizens(files.iter().map(|f| f.citizen).collect());
        let files = files.to_vec();
        self.write(changed, move |s| async move {
            s.seal_files(&files, entry).await
        })
        .await
    }

    async fn seal_consent(
        &self,
        consent: &Consent,
        entry: crate::Appended,
    ) -> Result<(), StorageError> {
        let consent = consent.clone();
        let changed = Forget::Citizens(vec![consent.citizen]);
        self.write(changed, move |s| async move {
            s.seal_consent(&consent, entry).await
        })
        .await
    }

    async fn seal_replacement(
        &self,
        replacement: &NumberReplacement,
        entry: crate::Appended,
    ) -> Result<(), StorageError> {
        let replacement = replacement.clone();
        self.write(Forget::Resolutions, move |s| async move {
            s.seal_replacement(&replacement, entry).await
        })
        .await
    }

    fn unsealed(&self) -> u64 {
        self.inner.unsealed()
    }

    fn keeps_feed(&self) -> bool {
        self.inner.keeps_feed()
    }
}

#[cfg(test)]
mod tests;
