//! The audit log: an append-only file of framed, hash-chained entries,
//! made durable by one thread with one `fdatasync` for many entries (group
//! commit), and indexed by a second thread, off the answer's path.
//!
//! Files, in the audit directory:
//!
//! ```text
//! log    frames: u32 length | u32 CRC-32 of the payload | payload (big-endian);
//!        the payload is the entry's canonical encoding (semel_core::AuditEntry).
//! ends   for each entry, the u64 offset just past its frame: entry n lies
//!        between ends[n-1] and ends[n]. Rebuilt from the log when behind.
//! ```
//!
//! and `index/`, the entries by citizen and by consumer (see
//! [`crate::postings`]).
//!
//! A reply to [`AuditLog::append`] means the entry's frame is on stable
//! storage. Everything else (ends, index) can be rebuilt from the log, and is
//! at start-up: only what the index has not seen is read. A torn frame at the
//! end of the log (a crash during a write nobody was told had succeeded) is
//! cut off; damage anywhere else stops the broker, which never silently
//! drops entries.
//!
//! The stages, each in its submodule: `writer` (the queue and the group
//! commit), `indexer` (ends, tree and postings, off the answer's path),
//! `checkpoint` (signed checkpoints and proofs), `archive` (a prefix of the
//! log moved out) and `recovery` (the start). This file holds the log's
//! shared state, opening it, appending, queries and reads.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

use semel_core::checkpoint::{Checkpoint, NoteSigner};
use semel_core::{AuditEntry, AuditRecord, Hash, Kbo, Niss, ZERO_HASH, entry_hash};
use semel_storage::{
    ArchiveReport, ArchiveState, AuditPage, AuditQuery, AuditStats, MAX_APPEND_DELAY_MICROS,
    SignedCheckpoint, StoredEntry,
};
use tokio::sync::oneshot;

use crate::postings::{Key, PostingIndex, citizen_key, consumer_key, text_key};
use crate::tree::{Tree, TreeReader};
use crate::{StoreError, io_err};

mod archive;
mod checkpoint;
mod indexer;
mod recovery;
mod writer;

#[cfg(test)]
mod at_rest;
#[cfg(test)]
mod cadence;
#[cfg(test)]
mod proofs;
#[cfg(test)]
pub(crate) mod tests;

pub(crate) use archive::read_archive_state;
pub(crate) use checkpoint::read_checkpoints;
use checkpoint::{Checkpointer, cut_torn_checkpoint};
use indexer::{AUTHORISATION, DATASET, Indexer, USER, record_keys};
pub(crate) use recovery::{Tail, scan, tail_kind};
use recovery::{check_frame, check_start, recover};
use writer::{Queue, Writer};

const HEADER: usize = 8;
/// A frame larger than this is damage, not an entry.
const MAX_FRAME: usize = 1 << 20;
/// The most entries written under one sync.
const MAX_BATCH: usize = 4096;
/// Group commit: a batch smaller than `LINGER_ENOUGH` waits up to `LINGER`
/// for company before it is synced. On the 2-core development machine this
/// cut the writer's CPU (mostly the kernel's work per `fdatasync`) enough to
/// raise lookup throughput by about a tenth at concurrency 64, for at most
/// 0.2 ms more latency when the broker is idle.
const LINGER: std::time::Duration = std::time::Duration::from_micros(200);
const LINGER_ENOUGH: usize = 32;
/// Recovery writes rebuilt tree nodes and entry ends every so many entries.
#[cfg(not(test))]
const RECOVERY_CHUNK: u64 = 65_536;
#[cfg(test)]
const RECOVERY_CHUNK: u64 = 4;

/// Why an entry could not be recorded. The lookup that asked must then be
/// refused: no answer leaves without its entry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log cannot make entries durable: {0}")]
    Unavailable(String),
    #[error("the audit log is shut down")]
    Closed,
}

/// Where an appended entry landed.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub sequence: u64,
    pub hash: Hash,
}

/// The result of re-reading the whole log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub entries: u64,
    pub head: Hash,
}

struct Pending {
    record: AuditRecord,
    reply: oneshot::Sender<Result<Appended, AuditError>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head {
    /// Sequence of the next entry, that is the number of entries.
    next_sequence: u64,
    /// Bytes of valid frames.
    offset: u64,
    hash: Hash,
}

/// What the threads publish: the durable head, and how far the index has
/// caught up, so a query can wait to see every entry answered before it.
struct Progress {
    durable: Head,
    indexed: u64,
    failed: Option<String>,
}

struct Shared {
    /// Set by [`AuditLog::inject_write_failure`]: the next write fails as
    /// a full disk would.
    inject_failure: std::sync::atomic::AtomicBool,
    /// The newest signed checkpoint.
    checkpoint: Mutex<Option<SignedCheckpoint>>,
    progress: Mutex<Progress>,
    indexed_changed: Condvar,
    stats: Counters,
}

/// Counters for operators (exported as metrics by the server).
#[derive(Default)]
struct Counters {
    submitted: std::sync::atomic::AtomicU64,
    answered: std::sync::atomic::AtomicU64,
    syncs: std::sync::atomic::AtomicU64,
    sync_micros: std::sync::atomic::AtomicU64,
    integrity_failures: std::sync::atomic::AtomicU64,
}

/// What the indexer needs of one durable entry.
struct IndexItem {
    sequence: u64,
    end: u64,
    /// The entry's leaf hash, for the Merkle tree.
    hash: Hash,
    /// What the entry is found by; the indexer derives the keys, off the
    /// writer's path.
    citizen: Option<Niss>,
    /// The number the caller named, when it had been replaced.
    citizen_as_given: Option<Niss>,
    consumer: Kbo,
    end_user: Option<String>,
    authorisation: Option<String>,
    dataset: String,
}

/// A batch for the indexer, with the head after its last entry.
struct IndexJob {
    items: Vec<IndexItem>,
    head: Head,
}

/// The audit log of one broker.
pub struct AuditLog {
    queue: Arc<Queue>,
    shared: Arc<Shared>,
    log: Arc<File>,
    ends: Arc<File>,
    index: Arc<PostingIndex>,
    tree: Arc<RwLock<Tree>>,
    checkpoints_path: PathBuf,
    verifier_key: Option<String>,
    /// The newest checkpoint with its witnesses' cosignatures, as a note
    /// (`audit/cosigned`, written whole).
    cosigned: Mutex<Option<String>>,
    /// Held for reading while entries are read; for writing while a prefix
    /// of the log is released to the archive.
    archive: RwLock<ArchiveState>,
    dir: PathBuf,
    path: PathBuf,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// How the log signs checkpoints.
pub struct CheckpointSettings {
    pub signer: NoteSigner,
    /// Sign when this many entries were added since the last checkpoint...
    pub every_entries: u64,
    /// ...or when this much time passed and entries were added.
    pub every: std::time::Duration,
}

impl AuditLog {
    pub(crate) fn open(
        dir: &Path,
        checkpoints: Option<CheckpointSettings>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let path = dir.join("log");
        let created = !path.exists();
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
                .map_err(io_err(format!("open {}", p.display())))
        };
        let mut log = open(&path)?;
        let ends = open(&dir.join("ends"))?;
        if created {
            // The new file's name must survive a crash too.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(format!("fsync {}", dir.display())))?;
        }
        let index = Arc::new(PostingIndex::open(&dir.join("index"))?);
        let mut tree = Tree::open(&dir.join("tree"))?;
        let archived = read_archive_state(dir)?;
        let checkpoints_path = dir.join("checkpoints");
        let stored = read_checkpoints(&checkpoints_path)?;
        // A partial last record (a write the process did not finish) is
        // cut off now: left there, the next checkpoint appended after it
        // would be read as its continuation and be lost at a later start.
        cut_torn_checkpoint(&checkpoints_path)?;
        // Entries a signed checkpoint covers were acknowledged: recovery may
        // never zero them as a torn write.
        let signed = stored.last().map_or(0, |c| c.checkpoint.size);
        let head = recover(&mut log, &path, &ends, &index, &mut tree, &archived, signed)?;
        check_start(
            &log,
            &ends,
            &tree,
            head,
            &archived,
            stored.last(),
            checkpoints.as_ref(),
        )?;
        index.compact_in_background();
        let tree = Arc::new(RwLock::new(tree));
        let verifier_key = checkpoints.as_ref().map(|c| c.signer.verifier_key());
        let log = Arc::new(log);
        let ends = Arc::new(ends);
        let shared = Arc::new(Shared {
            inject_failure: std::sync::atomic::AtomicBool::new(false),
            checkpoint: Mutex::new(stored.last().cloned()),
            progress: Mutex::new(Progress {
                durable: head,
                indexed: head.next_sequence,
                failed: None,
            }),
            indexed_changed: Condvar::new(),
            stats: Counters::default(),
        });
        let queue = Arc::new(Queue::default());
        let (index_tx, index_rx) = mpsc::channel();
        let writer = Writer {
            log: log.clone(),
            shared: shared.clone(),
            head,
            index_tx,
        };
        // How long the oldest entry no checkpoint covers has waited, read
        // from the log (its recorded time), not from this process's start:
        // a broker stopped without closing, again and again within the
        // interval, still signs its entries once they are due.
        let uncovered_since = if head.next_sequence > signed && signed >= archived.before {
            match read_entry_at(&log, &ends, signed) {
                Ok(e) => Some(instant_of(e.entry.record.time_micros)),
                Err(e) => {
                    tracing::warn!(error = %e, "the oldest unsigned audit entry could not be read; its checkpoint is timed from now");
                    None
                }
            }
        } else {
            None
        };
        let checkpoint_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&checkpoints_path)
            .map_err(io_err(format!("open {}", checkpoints_path.display())))?;
        let indexer = Indexer {
            ends: ends.clone(),
            index: index.clone(),
            tree: tree.clone(),
            shared: shared.clone(),
            checkpoints: checkpoints.map(|settings| Checkpointer {
                last_size: signed,
                last_root: stored.last().map(|c| c.checkpoint.root),
                first_unsigned: uncovered_since,
                file: checkpoint_file,
                settings,
            }),
        };
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(io_err(format!("start the {name} thread")))
        };
        let threads = vec![
            spawn("audit-writer", {
                let queue = queue.clone();
                Box::new(move || writer.run(&queue))
            })?,
            spawn("audit-indexer", Box::new(move || indexer.run(index_rx)))?,
        ];
        Ok(AuditLog {
            queue,
            shared,
            log,
            ends,
            index,
            tree,
            checkpoints_path,
            verifier_key,
            cosigned: Mutex::new(std::fs::read_to_string(dir.join("cosigned")).ok()),
            archive: RwLock::new(archived),
            dir: dir.to_path_buf(),
            path,
            threads: Mutex::new(threads),
        })
    }

    /// Records an entry; resolves once it is on stable storage. Entries
    /// appended concurrently share one sync.
    pub fn append(
        &self,
        record: AuditRecord,
    ) -> impl std::future::Future<Output = Result<Appended, AuditError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        self.shared
            .stats
            .submitted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sent = self.queue.push(Pending { record, reply });
        async move {
            if !sent {
                return Err(AuditError::Closed);
            }
            rx.await.unwrap_or(Err(AuditError::Closed))
        }
    }

    /// Counters for operators.
    pub fn stats(&self) -> AuditStats {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.shared.stats;
        let entries = lock(&self.shared.progress).durable.next_sequence;
        let submitted = c.submitted.load(Relaxed);
        AuditStats {
            entries,
            queued: submitted.saturating_sub(c.answered.load(Relaxed)),
            syncs: c.syncs.load(Relaxed),
            sync_micros: c.sync_micros.load(Relaxed),
            integrity_failures: c.integrity_failures.load(Relaxed),
            ..AuditStats::default()
        }
    }

    /// Makes the next write fail as a full disk would (ENOSPC), to test
    /// that the broker fails closed. Not for production use.
    #[doc(hidden)]
    pub fn inject_write_failure(&self) {
        self.shared
            .inject_failure
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Fails the log closed from outside (an integrity failure found by
    /// the broker): every later append is refused until restart.
    pub fn halt(&self, why: String) {
        self.shared
            .stats
            .integrity_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut p = lock(&self.shared.progress);
        if p.failed.is_none() {
            p.failed = Some(why);
        }
        drop(p);
        self.shared.indexed_changed.notify_all();
    }

    /// Why the log refuses appends, once a write or sync has failed.
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.progress).failed.clone()
    }

    /// The number of durable entries and the hash of the last one.
    pub fn head(&self) -> (u64, Hash) {
        let p = lock(&self.shared.progress);
        (p.durable.next_sequence, p.durable.hash)
    }

    /// Entries matching `query`, newest first. Blocks until the index holds
    /// every entry that was durable when it was called, so a caller sees its
    /// own lookups. The cost follows the size of the answer when filtering
    /// by citizen or consumer, not the size of the log.
    pub fn query(&self, query: &AuditQuery) -> Result<Vec<StoredEntry>, StoreError> {
        Ok(self.query_page(query)?.entries)
    }

    /// [`Self::query`] within the query's scan limit, starting below the
    /// newest entry that can match its `until`.
    pub fn query_page(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let size = self.wait_indexed()?;
        let archived = self.archive.read().unwrap_or_else(|p| p.into_inner());
        let first_live = archived.before;
        let mut before = query.before_sequence.unwrap_or(u64::MAX).min(size);
        // Entries are in sequence order and their times follow it to within
        // the longest lookup: bisect for the first live entry that far past
        // `until`; nothing from it on can match.
        if let Some(t) = query.until_seek_time() {
            let (mut low, mut high) = (first_live.min(before), before);
            while low < high {
                let middle = low + (high - low) / 2;
                if self.read_live(middle)?.entry.record.time_micros >= t {
                    high = middle;
                } else {
                    low = middle + 1;
                }
            }
            before = low;
        }
        let budget = query.scan_limit.unwrap_or(usize::MAX);
        let mut page = AuditPage::default();
        let mut visit = |seq: u64| -> Result<bool, StoreError> {
            if seq < first_live {
                // Newest first: everything older is archived.
                return Ok(false);
            }
            let stored = self.read_live(seq)?;
            page.examined += 1;
            let r = &stored.entry.record;
            if query
                .since_micros
                .is_some_and(|s| r.time_micros < s.saturating_sub(MAX_APPEND_DELAY_MICROS))
            {
                // Newest first: entries are stamped when the lookup arrived
                // and appended when it ends, so times follow the sequence to
                // within the longest lookup. Past that, nothing can match.
                return Ok(false);
            }
            if query.matches(r) {
                page.entries.push(stored);
            }
            if page.entries.len() >= query.limit {
                return Ok(false);
            }
            if page.examined >= budget {
                // The budget is spent with the page not full: say where to
                // go on (nowhere, when this was the oldest live entry).
                page.resume_before = (seq > first_live).then_some(seq);
                return Ok(false);
            }
            Ok(true)
        };
        // The most selective index the query can use: of the keys it names,
        // the one with the fewest postings (counted, not guessed: an
        // organisation's auditor always filters by consumer, and a busy
        // authorisation or dataset may hold far more entries than the
        // organisation). The other filters are checked on each candidate.
        let candidates: Vec<Key> = [
            query.citizen.as_ref().map(citizen_key),
            query.end_user.as_deref().map(|u| text_key(USER, u)),
            query
                .authorisation
                .as_deref()
                .map(|a| text_key(AUTHORISATION, a)),
            query.consumer.as_ref().map(consumer_key),
            query.dataset.as_deref().map(|d| text_key(DATASET, d)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let key: Option<Key> = if candidates.len() > 1 {
            let mut best: Option<(u64, Key)> = None;
            for k in candidates {
                let n = self.index.count(&k, before)?;
                if best.is_none_or(|(b, _)| n < b) {
                    best = Some((n, k));
                }
            }
            best.map(|(_, k)| k)
        } else {
            candidates.into_iter().next()
        };
        match key {
            None => {
                for seq in (first_live.min(before)..before).rev() {
                    if !visit(seq)? {
                        break;
                    }
                }
            }
            Some(key) => self.index.postings(&key, before, visit)?,
        }
        Ok(page)
    }

    /// Reads one entry by sequence. An entry that is durable but not yet
    /// indexed is waited for (its end offset is the indexer's to write).
    pub fn read_sequence(&self, seq: u64) -> Result<StoredEntry, StoreError> {
        let size = self.wait_indexed()?;
        if seq >= size {
            return Err(StoreError::OutOfRange(format!(
                "the log holds {size} entries, not entry {seq}"
            )));
        }
        let archived = self.archive.read().unwrap_or_else(|p| p.into_inner());
        if seq < archived.before {
            return Err(StoreError::OutOfRange(format!(
                "entry {seq} is archived: it is in the archive files, with its proofs"
            )));
        }
        self.read_live(seq)
    }

    /// Reads an entry the caller knows is not archived.
    fn read_live(&self, seq: u64) -> Result<StoredEntry, StoreError> {
        read_entry_at(&self.log, &self.ends, seq)
    }

    /// Re-reads the whole log, checking every frame, the sequence and the
    /// hash chain.
    pub fn verify_chain(&self) -> Result<ChainReport, StoreError> {
        let mut file = File::open(&self.path).map_err(io_err("open audit log"))?;
        let limit = lock(&self.shared.progress).durable.offset;
        // Archived entries are checked with their archive (semel audit
        // verify); the chain resumes at the first entry left in the log.
        let archived = self.archived();
        let mut head = if archived.before > 0 {
            self.tree
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .leaf(archived.before - 1)?
        } else {
            ZERO_HASH
        };
        let mut entries = archived.before;
        scan(&mut file, archived.offset, |frame_offset, payload| {
            if frame_offset >= limit {
                return Ok(false);
            }
            let e = AuditEntry::decode(payload)
                .map_err(|e| corrupt(&format!("entry {entries} at offset {frame_offset}: {e}")))?;
            if e.sequence != entries {
                return Err(corrupt(&format!(
                    "entry {entries} at offset {frame_offset} carries sequence {}",
                    e.sequence
                )));
            }
            if e.previous_hash != head {
                return Err(corrupt(&format!(
                    "entry {entries} at offset {frame_offset} does not link to the previous entry"
                )));
            }
            head = entry_hash(payload);
            entries += 1;
            Ok(true)
        })?
        .filter(|bad| *bad < limit)
        .map_or(Ok(()), |bad| {
            Err(corrupt(&format!("damaged frame at offset {bad}")))
        })?;
        Ok(ChainReport { entries, head })
    }

    /// Waits until the index covers every entry durable now; returns that
    /// number of entries.
    fn wait_indexed(&self) -> Result<u64, StoreError> {
        let mut p = lock(&self.shared.progress);
        let target = p.durable.next_sequence;
        while p.indexed < target {
            if let Some(why) = &p.failed {
                return Err(corrupt(why));
            }
            p = match self.shared.indexed_changed.wait(p) {
                Ok(p) => p,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
        Ok(target)
    }

    /// Stops accepting entries, lets the writer make the accepted ones
    /// durable and the indexer index them, and waits for both.
    pub fn close(&self) -> Result<(), StoreError> {
        self.queue.close();
        let threads: Vec<_> = self
            .threads
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for t in threads {
            t.join().map_err(|_| corrupt("an audit thread panicked"))?;
        }
        Ok(())
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "close the audit log");
        }
    }
}

fn read_end(ends: &File, seq: u64) -> Result<u64, StoreError> {
    let mut b = [0u8; 8];
    ends.read_exact_at(&mut b, seq * 8)
        .map_err(io_err("read audit ends"))?;
    Ok(u64::from_be_bytes(b))
}

/// Reads a live entry from the log by its end offsets.
fn read_entry_at(log: &File, ends: &File, seq: u64) -> Result<StoredEntry, StoreError> {
    let (start, end) = if seq == 0 {
        (0, read_end(ends, 0)?)
    } else {
        let mut b = [0u8; 16];
        ends.read_exact_at(&mut b, (seq - 1) * 8)
            .map_err(io_err("read audit ends"))?;
        (
            u64::from_be_bytes(b[..8].try_into().map_err(|_| corrupt("ends"))?),
            u64::from_be_bytes(b[8..].try_into().map_err(|_| corrupt("ends"))?),
        )
    };
    let len = usize::try_from(end.saturating_sub(start)).map_err(|_| corrupt("entry length"))?;
    if len <= HEADER || len > HEADER + MAX_FRAME {
        return Err(corrupt(&format!("entry {seq} has an impossible length")));
    }
    let mut buf = vec![0u8; len];
    log.read_exact_at(&mut buf, start)
        .map_err(io_err("read audit log"))?;
    let payload = check_frame(&buf)
        .ok_or_else(|| corrupt(&format!("frame of entry {seq} at offset {start}")))?;
    let entry = AuditEntry::decode(payload)
        .map_err(|e| corrupt(&format!("entry {seq} at offset {start}: {e}")))?;
    if entry.sequence != seq {
        return Err(corrupt(&format!(
            "entry at offset {start} carries sequence {} instead of {seq}",
            entry.sequence
        )));
    }
    Ok(StoredEntry {
        hash: entry_hash(payload),
        entry,
    })
}

/// The monotonic instant a recorded time (µs since the epoch) corresponds
/// to, as far back as the clock allows.
fn instant_of(time_micros: i64) -> std::time::Instant {
    let now_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let age =
        std::time::Duration::from_micros(now_micros.saturating_sub(time_micros).max(0) as u64);
    let now = std::time::Instant::now();
    now.checked_sub(age).unwrap_or(now)
}

/// Writes a file whole and durably: a temporary file, fsync, rename,
/// fsync of the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_err(format!("rename to {}", path.display())))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(format!("fsync {}", dir.display())))?;
    }
    Ok(())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("audit log: {what}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
