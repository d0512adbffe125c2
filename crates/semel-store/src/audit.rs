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

    /// The key that verifies this log's checkpoints (`name+hash+key`), when
    /// checkpoints are signed.
    pub fn verifier_key(&self) -> Option<&str> {
        self.verifier_key.as_deref()
    }

    /// The newest signed checkpoint.
    pub fn latest_checkpoint(&self) -> Option<SignedCheckpoint> {
        lock(&self.shared.checkpoint).clone()
    }

    /// A checkpoint's note with its witnesses' cosignature lines added, once
    /// the broker has checked them: kept (durably) as the newest cosigned
    /// checkpoint.
    pub fn set_cosigned(&self, note: &str) -> Result<(), StoreError> {
        write_durably(&self.dir.join("cosigned"), note.as_bytes())?;
        *lock(&self.cosigned) = Some(note.to_owned());
        Ok(())
    }

    /// The newest cosigned checkpoint's note, if any.
    pub fn cosigned(&self) -> Option<String> {
        lock(&self.cosigned).clone()
    }

    /// Every signed checkpoint, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<SignedCheckpoint>, StoreError> {
        read_checkpoints(&self.checkpoints_path)
    }

    /// Waits until the tree holds `size` leaves, or says it never will.
    fn tree_of(&self, size: u64) -> Result<std::sync::RwLockReadGuard<'_, Tree>, StoreError> {
        let durable = self.wait_indexed()?;
        if size > durable {
            return Err(StoreError::OutOfRange(format!(
                "the log holds {durable} entries, not {size}"
            )));
        }
        Ok(self.tree.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The root of the tree of the first `size` entries.
    pub fn root(&self, size: u64) -> Result<Hash, StoreError> {
        let tree = self.tree_of(size)?;
        semel_core::merkle::root(&TreeReader(&tree), size)
    }

    /// Entry `sequence` and its inclusion proof in the tree of `size`
    /// entries.
    pub fn inclusion_proof(
        &self,
        sequence: u64,
        size: u64,
    ) -> Result<(StoredEntry, Vec<Hash>), StoreError> {
        if sequence >= size {
            return Err(StoreError::OutOfRange(format!(
                "entry {sequence} is not in a tree of {size} entries"
            )));
        }
        let proof = {
            let tree = self.tree_of(size)?;
            semel_core::merkle::inclusion_proof(&TreeReader(&tree), sequence, size)?
        };
        Ok((self.read_sequence(sequence)?, proof))
    }

    /// The proof that the tree of `old` entries is a prefix of the tree of
    /// `new` entries.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StoreError> {
        if old == 0 || old > new {
            return Err(StoreError::OutOfRange(format!(
                "no consistency proof from {old} to {new} entries: the first size must be between 1 and the second"
            )));
        }
        let tree = self.tree_of(new)?;
        semel_core::merkle::consistency_proof(&TreeReader(&tree), old, new)
    }

    /// How much of the log is archived.
    pub fn archived(&self) -> ArchiveState {
        *self.archive.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the entries made before `cutoff_micros` (a prefix of the log)
    /// to an archive file in `audit/archive/`, with the checkpoints that
    /// cover them, then releases their space in the log (a hole, so offsets
    /// stay valid). The tree keeps their leaves: proofs and verification
    /// span the archive and the log. Returns what moved, if anything.
    pub fn archive_before(&self, cutoff_micros: i64) -> Result<Option<ArchiveReport>, StoreError> {
        let size = self.wait_indexed()?;
        let current = self.archived();
        let mut to = current.before;
        let mut until = current.until_micros;
        let mut lines = Vec::new();
        while to < size {
            let stored = self.read_live(to)?;
            if stored.entry.record.time_micros >= cutoff_micros {
                break;
            }
            until = stored.entry.record.time_micros;
            lines.push(crate::entry_lines::entry_line(
                &stored.entry,
                &stored.entry.to_bytes(),
            ));
            to += 1;
        }
        if to == current.before {
            return Ok(None);
        }
        let archive_dir = self.dir.join("archive");
        std::fs::create_dir_all(&archive_dir)
            .map_err(io_err(format!("create {}", archive_dir.display())))?;
        let file = archive_dir.join(format!(
            "entries-{:012}-{:012}.jsonl",
            current.before,
            to - 1
        ));
        let mut text = serde_json::json!({
            "format": crate::entry_lines::ARCHIVE_FORMAT,
            "from": current.before,
            "to": to - 1,
        })
        .to_string();
        text.push('\n');
        for line in lines {
            text.push_str(&line);
            text.push('\n');
        }
        for c in read_checkpoints(&self.checkpoints_path)?
            .iter()
            .filter(|c| c.checkpoint.size > current.before && c.checkpoint.size <= to)
        {
            text.push_str(
                &serde_json::json!({"type": "checkpoint", "size": c.checkpoint.size, "note": c.note})
                    .to_string(),
            );
            text.push('\n');
        }
        write_durably(&file, text.as_bytes())?;
        // Only now that the archive is safe does the log let go.
        let mut state = self.archive.write().unwrap_or_else(|p| p.into_inner());
        let end = read_end(&self.ends, to - 1)?;
        rustix::fs::fallocate(
            &*self.log,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            state.offset,
            end - state.offset,
        )
        .map_err(|e| io_err("release archived entries from the audit log")(e.into()))?;
        let next = ArchiveState {
            before: to,
            until_micros: until,
            offset: end,
        };
        write_durably(
            &self.dir.join("archived"),
            serde_json::to_string(&next)
                .map_err(|e| corrupt(&format!("encode the archive state: {e}")))?
                .as_bytes(),
        )?;
        *state = next;
        tracing::info!(from = current.before, to, file = %file.display(), "audit entries archived");
        Ok(Some(ArchiveReport {
            from: current.before,
            to,
            file,
        }))
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

struct Writer {
    log: Arc<File>,
    shared: Arc<Shared>,
    head: Head,
    index_tx: mpsc::Sender<IndexJob>,
}

/// The entries waiting for the writer.
///
/// Appenders only push; the writer takes the whole queue at once. An
/// appender wakes the writer only when the writer waits for it: for a first
/// entry when idle, or for the `LINGER_ENOUGH`th while lingering. Entries
/// that arrive while the writer writes and syncs wake nobody. (A channel
/// would wake the writer for every entry during its linger, a futex call
/// and a context switch each.)
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    writer: Condvar,
}

#[derive(Default)]
struct QueueState {
    entries: Vec<Pending>,
    closed: bool,
    /// What the writer is waiting for, if it waits.
    waiting: WriterWait,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum WriterWait {
    /// Writing or syncing: it takes the queue when done.
    #[default]
    No,
    /// Any entry.
    First,
    /// `LINGER_ENOUGH` entries, or the end of its linger.
    Company,
}

impl Queue {
    /// Queues an entry; false once the log is closed.
    fn push(&self, entry: Pending) -> bool {
        let mut q = lock(&self.state);
        if q.closed {
            return false;
        }
        q.entries.push(entry);
        let wake = match q.waiting {
            WriterWait::No => false,
            WriterWait::First => true,
            WriterWait::Company => q.entries.len() == LINGER_ENOUGH,
        };
        if wake {
            q.waiting = WriterWait::No;
            drop(q);
            self.writer.notify_one();
        }
        true
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.writer.notify_one();
    }

    /// The next batch (swapped into `batch`, which must be empty): waits for
    /// a first entry, then up to `LINGER` for company. `false` once the log
    /// is closed and everything queued has been taken.
    fn next_batch(&self, batch: &mut Vec<Pending>) -> bool {
        let mut q = lock(&self.state);
        while q.entries.is_empty() {
            if q.closed {
                return false;
            }
            q.waiting = WriterWait::First;
            q = self.writer.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        let deadline = std::time::Instant::now() + LINGER;
        while q.entries.len() < LINGER_ENOUGH && !q.closed {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            q.waiting = WriterWait::Company;
            q = self
                .writer
                .wait_timeout(q, deadline - now)
                .map_or_else(|p| p.into_inner().0, |(q, _)| q);
        }
        q.waiting = WriterWait::No;
        std::mem::swap(&mut q.entries, batch);
        true
    }
}

impl Writer {
    fn run(mut self, queue: &Queue) {
        let mut frames = Vec::with_capacity(1 << 16);
        let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
        while queue.next_batch(&mut batch) {
            // A batch larger than the writer takes at once (a burst after a
            // slow sync) is written in parts, each under its own sync.
            while batch.len() > MAX_BATCH {
                let mut part: Vec<Pending> = batch.drain(..MAX_BATCH).collect();
                self.write_batch(&mut part, &mut frames);
            }
            self.write_batch(&mut batch, &mut frames);
        }
    }

    /// Fails the log closed: every later append is refused until restart.
    fn fail(&self, why: String) {
        lock(&self.shared.progress).failed = Some(why);
        self.shared.indexed_changed.notify_all();
    }

    fn write_batch(&mut self, batch: &mut Vec<Pending>, frames: &mut Vec<u8>) {
        let failed = lock(&self.shared.progress).failed.clone();
        if let Some(why) = failed {
            self.shared
                .stats
                .answered
                .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(AuditError::Unavailable(why.clone())));
            }
            return;
        }
        frames.clear();
        let start = self.head;
        let mut head = self.head;
        let mut replies = Vec::with_capacity(batch.len());
        let mut items = Vec::with_capacity(batch.len());
        let mut encoding = Vec::with_capacity(512);
        for p in batch.drain(..) {
            let entry = AuditEntry {
                format: semel_core::FORMAT,
                sequence: head.next_sequence,
                previous_hash: head.hash,
                record: p.record,
            };
            encoding.clear();
            entry.encode(&mut encoding);
            let hash = entry_hash(&encoding);
            frames.extend_from_slice(&(encoding.len() as u32).to_be_bytes());
            frames.extend_from_slice(&crc32fast::hash(&encoding).to_be_bytes());
            frames.extend_from_slice(&encoding);
            let end = head.offset + (HEADER + encoding.len()) as u64;
            // The record is encoded: its texts move to the indexer as they are.
            let r = entry.record;
            items.push(IndexItem {
                sequence: entry.sequence,
                end,
                hash,
                citizen: r.citizen,
                citizen_as_given: r.citizen_as_given,
                consumer: r.consumer,
                end_user: r.end_user,
                authorisation: r.authorisation,
                dataset: r.dataset,
            });
            replies.push((
                p.reply,
                Appended {
                    sequence: entry.sequence,
                    hash,
                },
            ));
            head = Head {
                next_sequence: head.next_sequence + 1,
                offset: end,
                hash,
            };
        }
        let started = std::time::Instant::now();
        let written = if self
            .shared
            .inject_failure
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            Err(std::io::Error::from_raw_os_error(28)) // ENOSPC
        } else {
            self.log
                .write_all_at(frames, start.offset)
                .and_then(|()| self.log.sync_data())
        };
        let stats = &self.shared.stats;
        stats
            .syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats.sync_micros.fetch_add(
            started.elapsed().as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        stats
            .answered
            .fetch_add(replies.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = written {
            // Fail closed: nobody is told an entry is safe, the partial write
            // is zeroed, and later appends are refused until an operator
            // restarts the broker (after a failed fsync the page cache cannot
            // be trusted to reflect the disk).
            tracing::error!(error = %e, "audit log write failed; refusing lookups until restart");
            let _ = self
                .log
                .write_all_at(&vec![0u8; frames.len()], start.offset);
            let why = format!("write or sync the audit log: {e}");
            self.fail(why.clone());
            for (reply, _) in replies {
                let _ = reply.send(Err(AuditError::Unavailable(why.clone())));
            }
            return;
        }
        self.head = head;
        lock(&self.shared.progress).durable = head;
        for (reply, appended) in replies {
            let _ = reply.send(Ok(appended));
        }
        // The index follows the log on its own thread.
        let _ = self.index_tx.send(IndexJob { items, head });
    }
}

struct Indexer {
    ends: Arc<File>,
    index: Arc<PostingIndex>,
    tree: Arc<RwLock<Tree>>,
    shared: Arc<Shared>,
    checkpoints: Option<Checkpointer>,
}

/// Signs checkpoints every so many entries or so much time.
struct Checkpointer {
    settings: CheckpointSettings,
    file: File,
    last_size: u64,
    /// The root the last checkpoint signed, at `last_size`.
    last_root: Option<Hash>,
    /// When the oldest entry no checkpoint covers yet was indexed: the
    /// time cadence runs from it, so an entry waits at most `every` for a
    /// signature, whether it is the first of the log or of a quiet hour.
    first_unsigned: Option<std::time::Instant>,
}

impl Checkpointer {
    fn due(&mut self, size: u64, closing: bool) -> bool {
        if size <= self.last_size {
            return false;
        }
        let since = *self
            .first_unsigned
            .get_or_insert_with(std::time::Instant::now);
        closing
            || size - self.last_size >= self.settings.every_entries
            || since.elapsed() >= self.settings.every
    }

    /// How long the indexer may wait for entries before a checkpoint is due.
    fn wait(&self) -> std::time::Duration {
        self.first_unsigned.map_or(self.settings.every, |since| {
            self.settings
                .every
                .saturating_sub(since.elapsed())
                .max(std::time::Duration::from_millis(1))
        })
    }

    /// Signs the tree as it is, after making its nodes durable, and only if
    /// it still reproduces the root signed before: a new checkpoint is
    /// always consistent with the previous one.
    fn sign(&mut self, tree: &mut Tree, shared: &Shared) -> Result<(), StoreError> {
        tree.sync()?;
        if let Some(signed) = self.last_root
            && semel_core::merkle::root(&TreeReader(tree), self.last_size)? != signed
        {
            return Err(StoreError::Corrupt(format!(
                "audit log: the tree no longer reproduces the root signed at size {}; no checkpoint is signed over it",
                self.last_size
            )));
        }
        let size = tree.size();
        let checkpoint = Checkpoint {
            origin: self.settings.signer.name().to_owned(),
            size,
            root: semel_core::merkle::root(&TreeReader(tree), size)?,
        };
        let note = self.settings.signer.sign(&checkpoint);
        let mut frame = (note.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(note.as_bytes());
        self.file
            .write_all(&frame)
            .and_then(|()| self.file.sync_data())
            .map_err(io_err("write an audit checkpoint"))?;
        self.last_size = size;
        self.last_root = Some(checkpoint.root);
        self.first_unsigned = None;
        *lock(&shared.checkpoint) = Some(SignedCheckpoint { checkpoint, note });
        Ok(())
    }
}

impl Indexer {
    fn run(mut self, rx: mpsc::Receiver<IndexJob>) {
        let mut ends = Vec::with_capacity(1 << 15);
        loop {
            let tick = self
                .checkpoints
                .as_ref()
                .map_or(std::time::Duration::from_secs(3600), Checkpointer::wait);
            let first = match rx.recv_timeout(tick) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.checkpoint_if_due(false);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut jobs = vec![first];
            while let Ok(j) = rx.try_recv() {
                jobs.push(j);
            }
            let Some(head) = jobs.last().map(|j| j.head) else {
                continue;
            };
            ends.clear();
            let first_seq = jobs[0]
                .items
                .first()
                .map_or(head.next_sequence, |i| i.sequence);
            let mut done = Ok(());
            {
                let mut tree = self.tree.write().unwrap_or_else(|p| p.into_inner());
                for item in jobs.iter().flat_map(|j| &j.items) {
                    ends.extend_from_slice(&item.end.to_be_bytes());
                    if done.is_ok() {
                        done = self
                            .index
                            .add(
                                item.sequence,
                                &keys(
                                    [item.citizen.as_ref(), item.citizen_as_given.as_ref()],
                                    &item.consumer,
                                    item.end_user.as_deref(),
                                    item.authorisation.as_deref(),
                                    &item.dataset,
                                ),
                            )
                            .and_then(|()| tree.push(item.hash))
                            .map_err(|e| e.to_string());
                    }
                }
                if done.is_ok() {
                    done = tree.flush().map_err(|e| e.to_string());
                }
            }
            let done = done.and_then(|()| {
                self.ends
                    .write_all_at(&ends, first_seq * 8)
                    .map_err(|e| format!("write audit ends: {e}"))
            });
            self.index.compact_in_background();
            let mut p = lock(&self.shared.progress);
            match done {
                Ok(()) => p.indexed = head.next_sequence,
                Err(why) => {
                    tracing::error!(error = %why, "audit entries not indexed; they will be at restart");
                    p.failed = Some(why);
                }
            }
            drop(p);
            self.shared.indexed_changed.notify_all();
            self.checkpoint_if_due(false);
        }
        // Closing: a last checkpoint covers every entry.
        self.checkpoint_if_due(true);
    }

    fn checkpoint_if_due(&mut self, closing: bool) {
        let Some(c) = self.checkpoints.as_mut() else {
            return;
        };
        let mut tree = self.tree.write().unwrap_or_else(|p| p.into_inner());
        if c.due(tree.size(), closing)
            && let Err(e) = c.sign(&mut tree, &self.shared)
        {
            if let StoreError::Corrupt(why) = &e {
                // The log no longer agrees with what it signed: fail closed,
                // as after a failed write; no lookup is answered until the
                // operator has looked.
                tracing::error!(error = %why, "audit log inconsistent with its signed checkpoints; refusing lookups");
                self.shared
                    .stats
                    .integrity_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                lock(&self.shared.progress).failed = Some(why.clone());
            } else {
                tracing::error!(error = %e, "audit checkpoint not signed; retrying with the next entries");
            }
        }
    }
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

/// The archive state in `audit/archived`; nothing archived when absent.
pub(crate) fn read_archive_state(dir: &Path) -> Result<ArchiveState, StoreError> {
    match std::fs::read(dir.join("archived")) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| corrupt(&format!("audit/archived: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ArchiveState::default()),
        Err(e) => Err(io_err("read audit/archived")(e)),
    }
}

/// Reads the signed notes of `audit/checkpoints`, oldest first. A partial
/// last record (an interrupted write) is ignored.
pub(crate) fn read_checkpoints(path: &Path) -> Result<Vec<SignedCheckpoint>, StoreError> {
    Ok(read_checkpoint_records(path)?.0)
}

/// Cuts a partial last record off `audit/checkpoints` (durably), so that
/// what is appended next starts a record of its own.
fn cut_torn_checkpoint(path: &Path) -> Result<(), StoreError> {
    let (_, whole, len) = read_checkpoint_records(path)?;
    if whole == len {
        return Ok(());
    }
    tracing::warn!(
        dropped_bytes = len - whole,
        "the last audit checkpoint record was only partly written; cut off (its checkpoint is signed again)"
    );
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))?;
    f.set_len(whole as u64)
        .and_then(|()| f.sync_all())
        .map_err(io_err(format!("cut {}", path.display())))
}

/// The whole records of `audit/checkpoints`, the length they take, and the
/// file's length.
fn read_checkpoint_records(
    path: &Path,
) -> Result<(Vec<SignedCheckpoint>, usize, usize), StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0, 0)),
        Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
    };
    let mut out = Vec::new();
    let mut rest = bytes.as_slice();
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(note) = rest.get(4..4 + len) else {
            break;
        };
        let note = String::from_utf8(note.to_vec())
            .map_err(|_| corrupt("an audit checkpoint is not UTF-8"))?;
        let checkpoint = Checkpoint::of_note(&note)
            .map_err(|e| corrupt(&format!("an audit checkpoint: {e}")))?;
        out.push(SignedCheckpoint { checkpoint, note });
        rest = &rest[4 + len..];
    }
    Ok((out, bytes.len() - rest.len(), bytes.len()))
}

/// Tags of the text keys.
const USER: u8 = b'u';
const AUTHORISATION: u8 = b'a';
const DATASET: u8 = b'd';

/// The keys an entry is indexed by: citizen, consumer, person,
/// authorisation and dataset.
fn keys(
    citizens: [Option<&Niss>; 2],
    consumer: &Kbo,
    end_user: Option<&str>,
    authorisation: Option<&str>,
    dataset: &str,
) -> Vec<Key> {
    let mut k = Vec::with_capacity(6);
    for n in citizens.into_iter().flatten() {
        k.push(citizen_key(n));
    }
    k.push(consumer_key(consumer));
    if let Some(u) = end_user {
        k.push(text_key(USER, u));
    }
    if let Some(a) = authorisation {
        k.push(text_key(AUTHORISATION, a));
    }
    if !dataset.is_empty() {
        k.push(text_key(DATASET, dataset));
    }
    k
}

fn record_keys(r: &AuditRecord) -> Vec<Key> {
    keys(
        [r.citizen.as_ref(), r.citizen_as_given.as_ref()],
        &r.consumer,
        r.end_user.as_deref(),
        r.authorisation.as_deref(),
        &r.dataset,
    )
}

/// Checks a whole frame; returns its payload.
fn check_frame(buf: &[u8]) -> Option<&[u8]> {
    if buf.len() < HEADER {
        return None;
    }
    let len = u32::from_be_bytes(buf[..4].try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(buf[4..8].try_into().ok()?);
    if len == 0 || len > MAX_FRAME || buf.len() != HEADER + len {
        return None;
    }
    let payload = &buf[HEADER..];
    (crc32fast::hash(payload) == crc).then_some(payload)
}

/// Reads frames from `start`, calling `f(offset, payload)` for each valid one
/// until it returns false. Returns the offset of the first frame that is not
/// valid (zeros included), if any.
pub(crate) fn scan(
    file: &mut File,
    start: u64,
    mut f: impl FnMut(u64, &[u8]) -> Result<bool, StoreError>,
) -> Result<Option<u64>, StoreError> {
    file.seek(SeekFrom::Start(start))
        .map_err(io_err("seek audit log"))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut offset = start;
    let mut header = [0u8; HEADER];
    let mut payload = Vec::new();
    loop {
        match read_full(&mut reader, &mut header) {
            Ok(0) => return Ok(None),
            Ok(n) if n < HEADER => return Ok(Some(offset)),
            Ok(_) => {}
            Err(e) => return Err(io_err("read audit log")(e)),
        }
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len > MAX_FRAME {
            return Ok(Some(offset));
        }
        payload.resize(len, 0);
        let n = read_full(&mut reader, &mut payload).map_err(io_err("read audit log"))?;
        if n < len || crc32fast::hash(&payload) != crc {
            return Ok(Some(offset));
        }
        if !f(offset, &payload)? {
            return Ok(None);
        }
        offset += (HEADER + len) as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Brings `ends` and the posting index up to the end of the log, zeroing a
/// torn write at its end. Returns the durable head.
fn recover(
    log: &mut File,
    path: &Path,
    ends: &File,
    index: &PostingIndex,
    tree: &mut Tree,
    archived: &ArchiveState,
    signed: u64,
) -> Result<Head, StoreError> {
    let log_len = log.metadata().map_err(io_err("stat audit log"))?.len();
    let known_ends = ends.metadata().map_err(io_err("stat audit ends"))?.len() / 8;
    let covered = index.covered();
    let in_tree = tree.size();
    // Start from the first entry that the ends, the index or the tree have
    // not seen; the entry before it gives the hash the next one must link to.
    let start_seq = known_ends.min(covered).min(in_tree);
    let mut head = Head {
        next_sequence: 0,
        offset: 0,
        hash: ZERO_HASH,
    };
    if start_seq <= archived.before && archived.before > 0 {
        // The archived prefix is no longer in the log: start after it,
        // linking to the last archived entry's hash, kept in the tree.
        if in_tree < archived.before || known_ends < archived.before {
            return Err(corrupt(&format!(
                "entries before {} are archived, but the tree or the ends lost them; restore audit/tree and audit/ends from a backup",
                archived.before
            )));
        }
        head = Head {
            next_sequence: archived.before,
            offset: archived.offset,
            hash: tree.leaf(archived.before - 1)?,
        };
        // Archived entries are not queried online: the index resumes after them.
        index.skip_to(archived.before);
    } else if start_seq > 0 {
        let start = if start_seq >= 2 {
            read_end(ends, start_seq - 2)?
        } else {
            0
        };
        let end = read_end(ends, start_seq - 1)?;
        if end > log_len {
            return Err(corrupt(&format!(
                "entry {} ends at byte {end} by audit/ends, but {} holds only {log_len} bytes: the log was cut short",
                start_seq - 1,
                path.display()
            )));
        }
        if end <= start {
            return Err(corrupt(&format!(
                "audit/ends is damaged at entry {} (it ends at byte {end}, before it starts at {start}); delete audit/ends to rebuild it from the log",
                start_seq - 1
            )));
        }
        let mut buf = vec![0u8; usize::try_from(end - start).map_err(|_| corrupt("entry length"))?];
        log.read_exact_at(&mut buf, start)
            .map_err(io_err("read audit log"))?;
        let payload = check_frame(&buf).ok_or_else(|| {
            corrupt(&format!(
                "frame of entry {} at offset {start}",
                start_seq - 1
            ))
        })?;
        head = Head {
            next_sequence: start_seq,
            offset: end,
            hash: entry_hash(payload),
        };
    }
    let mut new_ends = Vec::new();
    // Where `new_ends` goes in the ends file.
    let mut ends_at = known_ends;
    let mut indexed = 0u64;
    let damaged = scan(log, head.offset, |offset, payload| {
        let entry = AuditEntry::decode(payload)
            .map_err(|e| corrupt(&format!("entry at offset {offset}: {e}")))?;
        if entry.sequence != head.next_sequence || entry.previous_hash != head.hash {
            return Err(corrupt(&format!(
                "entry at offset {offset} does not follow entry {} in the hash chain",
                head.next_sequence.wrapping_sub(1)
            )));
        }
        let end = offset + (HEADER + payload.len()) as u64;
        if entry.sequence >= known_ends {
            new_ends.extend_from_slice(&end.to_be_bytes());
        }
        if entry.sequence >= covered {
            index.add(entry.sequence, &record_keys(&entry.record))?;
            indexed += 1;
        }
        if entry.sequence >= in_tree {
            tree.push(entry_hash(payload))?;
        }
        // A long tail (a tree or ends file rebuilt from scratch) is written
        // as it goes, so memory stays flat whatever the log's size.
        if (entry.sequence + 1).is_multiple_of(RECOVERY_CHUNK) {
            tree.flush()?;
            ends.write_all_at(&new_ends, ends_at * 8)
                .map_err(io_err("rebuild audit ends"))?;
            ends_at += new_ends.len() as u64 / 8;
            new_ends.clear();
        }
        head = Head {
            next_sequence: entry.sequence + 1,
            offset: end,
            hash: entry_hash(payload),
        };
        Ok(true)
    })?;
    if let Some(bad) = damaged {
        // Past the last frame there may be only what an interrupted append
        // leaves: a partial frame, or zeros where a filesystem extended the
        // file before the data reached the disk.
        let mut rest = Vec::new();
        log.seek(SeekFrom::Start(bad))
            .map_err(io_err("seek audit log"))?;
        log.read_to_end(&mut rest)
            .map_err(io_err("read audit log"))?;
        match tail_kind(&rest) {
            // An entry a signed checkpoint covers, or that the ends, the
            // index or the tree hold, was acknowledged: it is never a torn
            // write, whatever its bytes look like, and nothing is zeroed.
            _ if head.next_sequence < signed.max(known_ends).max(covered).max(in_tree) => {
                return Err(corrupt(&format!(
                    "entry {} at offset {bad} is damaged or cut short, but it was acknowledged (the newest signed checkpoint covers {signed} entries; audit/ends, the index or the tree know {}): the log was altered",
                    head.next_sequence,
                    known_ends.max(covered).max(in_tree)
                )));
            }
            Tail::Zeros => {}
            Tail::Torn(n) => {
                tracing::warn!(
                    offset = bad,
                    bytes = n,
                    "zeroed a torn write at the end of the audit log"
                );
                log.write_all_at(&vec![0u8; n], bad)
                    .map_err(io_err("zero a torn write"))?;
                log.sync_all().map_err(io_err("fsync audit log"))?;
            }
            Tail::Damaged => {
                return Err(corrupt(&format!(
                    "{} is damaged at offset {bad} (entry {}), with data after it",
                    path.display(),
                    head.next_sequence
                )));
            }
        }
    }
    let known = known_ends.max(covered).max(in_tree);
    if head.next_sequence < known {
        return Err(corrupt(&format!(
            "entries {} to {} are missing: {} holds {} entries ({} bytes), but audit/ends, the index or the tree know {known}; entries were removed from the end of the log",
            head.next_sequence,
            known - 1,
            path.display(),
            head.next_sequence,
            head.offset
        )));
    }
    tree.flush()?;
    // Entries from `ends_at` on were pushed to `new_ends`, in order.
    ends.write_all_at(&new_ends, ends_at * 8)
        .and_then(|()| ends.set_len(head.next_sequence * 8))
        .map_err(io_err("rebuild audit ends"))?;
    if indexed > 0 {
        tracing::info!(
            entries = indexed,
            "indexed audit entries found after the last index segment"
        );
    }
    Ok(head)
}

/// Proves, at start, that the log, its tree and the newest signed
/// checkpoint agree: the checkpoint is this broker's (its signature, with
/// the broker's key), the log still holds every entry it covers, the tree
/// reproduces its root, and every entry from the last one it covers to the
/// end of the log is the tree's leaf and links to the one before. The cost
/// is O(log n) for the root and O(entries since the checkpoint) for the
/// tail, whatever the log's size. Entries deeper in the log are checked by
/// `semel audit verify` (and a changed one there moves the tree's root away
/// from the checkpoints, once the tree is rebuilt).
fn check_start(
    log: &File,
    ends: &File,
    tree: &Tree,
    head: Head,
    archived: &ArchiveState,
    newest: Option<&SignedCheckpoint>,
    settings: Option<&CheckpointSettings>,
) -> Result<(), StoreError> {
    let Some(newest) = newest else {
        // A broker that signs checkpoints and has none: a new log, or one
        // whose checkpoints were removed. Every entry is checked against the
        // tree then (a new log is short; a stripped one deserves it).
        if settings.is_some() && head.next_sequence > 0 {
            if head.next_sequence > 100_000 {
                tracing::warn!(
                    entries = head.next_sequence,
                    "the audit log has entries but no signed checkpoint: checking every entry against its tree"
                );
            }
            check_tail(log, ends, tree, head, archived.before)?;
        }
        return Ok(());
    };
    let n = newest.checkpoint.size;
    if let Some(settings) = settings {
        let verifier = semel_core::checkpoint::NoteVerifier::parse(&settings.signer.verifier_key())
            .map_err(|e| corrupt(&format!("this broker's verifier key: {e}")))?;
        match verifier.verify(&newest.note) {
            Ok(c) if c == newest.checkpoint => {}
            Ok(_) => {
                return Err(corrupt(&format!(
                    "the newest checkpoint (size {n}) does not say what its signed note says"
                )));
            }
            Err(e) => {
                return Err(corrupt(&format!(
                    "the newest checkpoint (size {n}) does not verify with this broker's key ({e}): the checkpoints were altered, or the signing key changed"
                )));
            }
        }
    }
    if head.next_sequence < n {
        return Err(corrupt(&format!(
            "the newest signed checkpoint covers {n} entries, but the log holds {}: acknowledged entries were removed",
            head.next_sequence
        )));
    }
    let root = semel_core::merkle::root(&TreeReader(tree), n)?;
    if root != newest.checkpoint.root {
        return Err(corrupt(&format!(
            "the tree's root over the first {n} entries is not the one the newest checkpoint signed: entries or the tree were altered; `semel audit verify --store` names the first entry that differs"
        )));
    }
    // The tail, from the last entry the checkpoint covers.
    check_tail(
        log,
        ends,
        tree,
        head,
        n.saturating_sub(1).max(archived.before),
    )
}

/// Checks that the entries from `first` on are the tree's leaves and link
/// to one another.
fn check_tail(
    log: &File,
    ends: &File,
    tree: &Tree,
    head: Head,
    first: u64,
) -> Result<(), StoreError> {
    for seq in first..head.next_sequence {
        let start = if seq == 0 {
            0
        } else {
            read_end(ends, seq - 1)?
        };
        let end = read_end(ends, seq)?;
        let mut buf = vec![
            0u8;
            usize::try_from(end.saturating_sub(start))
                .map_err(|_| corrupt("entry length"))?
        ];
        log.read_exact_at(&mut buf, start)
            .map_err(io_err("read audit log"))?;
        let payload = check_frame(&buf)
            .ok_or_else(|| corrupt(&format!("frame of entry {seq} at offset {start}")))?;
        if entry_hash(payload) != tree.leaf(seq)? {
            return Err(corrupt(&format!(
                "entry {seq} is not the entry the tree (and the checkpoints signed over it) recorded: it was altered"
            )));
        }
        if seq > 0 {
            let entry =
                AuditEntry::decode(payload).map_err(|e| corrupt(&format!("entry {seq}: {e}")))?;
            if entry.previous_hash != tree.leaf(seq - 1)? {
                return Err(corrupt(&format!(
                    "entry {seq} does not link to entry {} in the hash chain",
                    seq - 1
                )));
            }
        }
    }
    Ok(())
}

pub(crate) enum Tail {
    /// Only zeros: an extension whose data never reached the disk.
    Zeros,
    /// A partial frame of this many bytes, then zeros.
    Torn(usize),
    Damaged,
}

pub(crate) fn tail_kind(rest: &[u8]) -> Tail {
    if rest.iter().all(|&b| b == 0) {
        return Tail::Zeros;
    }
    if rest.len() < HEADER {
        return Tail::Torn(rest.len());
    }
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if len == 0 || len > MAX_FRAME {
        return Tail::Damaged;
    }
    let frame_end = HEADER + len;
    // A torn frame: its declared length runs past the end of the file, or
    // past the last non-zero byte (the rest of it never reached the disk).
    let last_nonzero = rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if frame_end > rest.len()
        || (last_nonzero <= frame_end && check_frame(&rest[..frame_end]).is_none())
    {
        Tail::Torn(last_nonzero.min(rest.len()))
    } else {
        Tail::Damaged
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("audit log: {what}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::Store;
    use semel_core::{AuditDecision, Outcome};

    /// A test entry: entry `i`, about `citizen` if given.
    pub(crate) fn record(i: u8, citizen: Option<&str>) -> AuditRecord {
        AuditRecord {
            request_id: [i; 16],
            time_micros: 1_700_000_000_000_000 + i64::from(i),
            operation: semel_core::LOOKUP_OPERATION.into(),
            consumer: Kbo::parse(if i.is_multiple_of(2) {
                "0566988259"
            } else {
                "0314595348"
            })
            .expect("kbo"),
            end_user: None,
            citizen: citizen.map(|c| Niss::parse(c).expect("niss")),
            dataset: "national_register.residence".into(),
            fields_requested: vec!["street".into()],
            fields_returned: vec![],
            purpose: "RIS_ELIGIBILITY".into(),
            authorisation: None,
            authorisation_version: None,
            decision: AuditDecision::Refused,
            reason: None,
            outcome: Outcome::NotForwarded,
            source: None,
            consumer_reference: String::new(),
            reference_date: None,
            citizen_as_given: None,
            checks: Vec::new(),
            detail: String::new(),
        }
    }

    async fn append_n(store: &Store, n: u8) {
        let futs: Vec<_> = (0..n)
            .map(|i| {
                store.audit().append(record(
                    i,
                    Some(if i.is_multiple_of(3) {
                        "93051822361"
                    } else {
                        "85073003328"
                    }),
                ))
            })
            .collect();
        for f in futs {
            f.await.expect("append");
        }
    }

    #[tokio::test]
    async fn appends_chain_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        append_n(&store, 30).await;
        let report = store.audit().verify_chain().expect("verify");
        assert_eq!(report.entries, 30);
        assert_eq!(store.audit().head(), (30, report.head));
        store.close().expect("close");

        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.audit().head().0, 30);
        append_n(&store, 5).await;
        assert_eq!(store.audit().verify_chain().expect("verify").entries, 35);
        let by_citizen = store
            .audit()
            .query(&AuditQuery {
                citizen: Some(Niss::parse("93051822361").expect("niss")),
                limit: 100,
                ..Default::default()
            })
            .expect("query");
        // i % 3 == 0 for i in 0..30 (10) and 0..5 (2).
        assert_eq!(by_citizen.len(), 12);
        assert!(
            by_citizen
                .windows(2)
                .all(|w| w[0].entry.sequence > w[1].entry.sequence)
        );
        let by_consumer = store
            .audit()
            .query(&AuditQuery {
                consumer: Some(Kbo::parse("0566988259").expect("kbo")),
                limit: 7,
                ..Default::default()
            })
            .expect("query");
        assert_eq!(by_consumer.len(), 7);
        assert!(
            by_consumer
                .iter()
                .all(|e| e.entry.record.consumer.as_str() == "0566988259")
        );
        let paged = store
            .audit()
            .query(&AuditQuery {
                before_sequence: Some(10),
                limit: 100,
                ..Default::default()
            })
            .expect("query");
        assert_eq!(paged.len(), 10);
    }

    fn durable_offset(store: &Store) -> u64 {
        lock(&store.audit().shared.progress).durable.offset
    }

    #[tokio::test]
    async fn lost_index_and_ends_are_rebuilt_from_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        append_n(&store, 12).await;
        let proof = store.audit().inclusion_proof(5, 12).expect("proof").1;
        store.close().expect("close");
        std::fs::remove_dir_all(dir.path().join("audit/index")).expect("remove index");
        std::fs::remove_dir_all(dir.path().join("audit/tree")).expect("remove tree");
        std::fs::remove_file(dir.path().join("audit/ends")).expect("remove ends");
        // Rebuilt in chunks of RECOVERY_CHUNK entries (4 under test).
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.audit().head().0, 12);
        assert_eq!(
            store.audit().inclusion_proof(5, 12).expect("proof").1,
            proof
        );
        assert_eq!(
            store
                .audit()
                .inclusion_proof(11, 12)
                .expect("proof")
                .0
                .entry
                .sequence,
            11
        );
        let all = store
            .audit()
            .query(&AuditQuery {
                limit: 100,
                ..Default::default()
            })
            .expect("query");
        assert_eq!(all.len(), 12);
        let karim = Niss::parse("93051822361").expect("niss");
        let mine = store
            .audit()
            .query(&AuditQuery {
                citizen: Some(karim),
                limit: 100,
                ..Default::default()
            })
            .expect("query");
        assert_eq!(mine.len(), 4);
        store.close().expect("close");

        // Ends behind the index (not synced before a crash): rebuilt too.
        let ends = dir.path().join("audit/ends");
        let f = OpenOptions::new()
            .write(true)
            .open(&ends)
            .expect("open ends");
        f.set_len(5 * 8).expect("shorten");
        drop(f);
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(
            store
                .audit()
                .read_sequence(11)
                .expect("read")
                .entry
                .sequence,
            11
        );
        append_n(&store, 1).await;
        assert_eq!(store.audit().verify_chain().expect("verify").entries, 13);
    }

    #[tokio::test]
    async fn a_torn_write_is_zeroed_and_damage_stops_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        append_n(&store, 4).await;
        let end = durable_offset(&store);
        store.close().expect("close");
        let log = dir.path().join("audit/log");

        // A torn write: a frame header promising 256 bytes, 3 of them written.
        let f = OpenOptions::new().write(true).open(&log).expect("open");
        f.write_all_at(&[0, 0, 1, 0, 9, 9, 9, 9, 1, 2, 3], end)
            .expect("write");
        drop(f);
        std::fs::remove_dir_all(dir.path().join("audit/index")).expect("remove index");
        let store = Store::open(dir.path()).expect("reopen repairs the tail");
        assert_eq!(store.audit().head().0, 4);
        append_n(&store, 2).await;
        assert_eq!(store.audit().verify_chain().expect("verify").entries, 6);
        store.close().expect("close");

        // A flipped byte inside the second entry, with entries after it.
        let mut bytes = std::fs::read(&log).expect("read");
        let second = {
            let len = u32::from_be_bytes(bytes[..4].try_into().expect("4")) as usize;
            HEADER + len
        };
        bytes[second + HEADER + 3] ^= 0xff;
        std::fs::write(&log, &bytes).expect("write");
        std::fs::remove_dir_all(dir.path().join("audit/index")).expect("remove index");
        std::fs::remove_dir_all(dir.path().join("audit/tree")).expect("remove tree");
        std::fs::remove_file(dir.path().join("audit/ends")).expect("remove ends");
        let err = Store::open(dir.path())
            .err()
            .expect("damage must stop the start");
        assert!(
            err.to_string().contains(&format!("offset {second}")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_period_query_finds_entries_appended_out_of_time_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        // A slow lookup (arrived at t=50) is appended after a fast one (t=100).
        for t in [10, 100, 50, 120] {
            let mut r = record(1, Some("93051822361"));
            r.time_micros = t * 1_000_000;
            store.audit().append(r).await.expect("append");
        }
        let since = |s: i64, until: Option<i64>| {
            let q = AuditQuery {
                since_micros: Some(s * 1_000_000),
                until_micros: until.map(|u| u * 1_000_000),
                limit: 10,
                ..Default::default()
            };
            let mut times: Vec<i64> = store
                .audit()
                .query(&q)
                .expect("query")
                .iter()
                .map(|e| e.entry.record.time_micros / 1_000_000)
                .collect();
            times.sort_unstable();
            times
        };
        assert_eq!(since(80, None), vec![100, 120]);
        assert_eq!(since(40, None), vec![50, 100, 120]);
        assert_eq!(since(40, Some(110)), vec![50, 100]);
        assert_eq!(since(0, Some(60)), vec![10, 50]);
    }

    #[tokio::test]
    async fn a_truncated_log_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        append_n(&store, 6).await;
        let end = durable_offset(&store);
        store.close().expect("close");
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join("audit/log"))
            .expect("open");
        f.set_len(end / 2).expect("truncate");
        drop(f);
        let log = std::fs::read(dir.path().join("audit/log")).expect("read");
        let err = Store::open(dir.path())
            .err()
            .expect("a truncated log must stop the start");
        let err = err.to_string();
        assert!(
            err.contains("cut short") || err.contains("removed"),
            "{err}"
        );
        assert!(
            err.contains("entry 3") || err.contains("entries 3 to 5"),
            "names the first entry lost: {err}"
        );
        // Nothing was zeroed: the evidence stays as it was found.
        assert_eq!(
            std::fs::read(dir.path().join("audit/log")).expect("read"),
            log
        );
    }
}

#[cfg(test)]
mod proofs {
    //! The Merkle tree and checkpoints, checked against independent
    //! implementations: `ct-merkle` (RFC 6962) and `signed_note` (C2SP).

    use super::*;
    use crate::{CheckpointSettings, Store};
    use ct_merkle::mem_backed_tree::MemoryBackedTree;
    use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};
    use semel_core::checkpoint::NoteSigner;
    use sha2_oracle::Sha256;

    fn settings() -> CheckpointSettings {
        CheckpointSettings {
            signer: NoteSigner::new(
                "semel.test/audit",
                ed25519_dalek::SigningKey::from_bytes(&[5; 32]),
            ),
            every_entries: 10,
            every: std::time::Duration::from_secs(3600),
        }
    }

    fn record(i: u64) -> AuditRecord {
        super::tests::record(i as u8, None)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn proofs_and_checkpoints_agree_with_independent_implementations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_with(dir.path(), Some(settings())).expect("open");
        for i in 0..23 {
            store.audit().append(record(i)).await.expect("append");
        }
        store.audit().close().expect("close");
        drop(store);
        // Reopen: the tree is read, not rebuilt; then grow it.
        let store = Store::open_with(dir.path(), Some(settings())).expect("reopen");
        for i in 23..57 {
            store.audit().append(record(i)).await.expect("append");
        }
        let log = store.audit();
        let size = log.head().0;
        assert_eq!(size, 57);

        let mut oracle: MemoryBackedTree<Sha256, Vec<u8>> = MemoryBackedTree::new();
        let mut roots = Vec::new();
        for seq in 0..size {
            oracle.push(log.read_sequence(seq).expect("entry").entry.to_bytes());
            let root = log.root(seq + 1).expect("root");
            assert_eq!(
                oracle.root().as_bytes().as_slice(),
                root.as_slice(),
                "root of {}",
                seq + 1
            );
            roots.push(RootHash::<Sha256>::new(root.into(), seq + 1));
        }
        for (seq, n) in [
            (0, 1),
            (0, 57),
            (13, 14),
            (31, 32),
            (32, 57),
            (56, 57),
            (40, 50),
        ] {
            let (stored, proof) = log.inclusion_proof(seq, n).expect("proof");
            let flat: Vec<u8> = proof.iter().flatten().copied().collect();
            roots[n as usize - 1]
                .verify_inclusion(
                    &stored.entry.to_bytes(),
                    seq,
                    &InclusionProof::<Sha256>::from_bytes(flat),
                )
                .unwrap_or_else(|e| panic!("inclusion {seq} in {n}: {e:?}"));
        }
        for (old, new) in [(1, 57), (7, 8), (16, 57), (23, 57), (30, 31), (57, 57)] {
            let proof = log.consistency_proof(old, new).expect("proof");
            let flat: Vec<u8> = proof.iter().flatten().copied().collect();
            roots[new as usize - 1]
                .verify_consistency(
                    &roots[old as usize - 1],
                    &ConsistencyProof::<Sha256>::try_from_bytes(flat).expect("proof bytes"),
                )
                .unwrap_or_else(|e| panic!("consistency {old} to {new}: {e:?}"));
        }
        assert!(matches!(
            log.inclusion_proof(57, 57),
            Err(StoreError::OutOfRange(_))
        ));
        assert!(matches!(log.root(58), Err(StoreError::OutOfRange(_))));

        // Checkpoints: signed notes any C2SP tool can check.
        log.close().expect("close");
        let checkpoints = log.checkpoints().expect("checkpoints");
        assert!(checkpoints.len() >= 4, "{}", checkpoints.len());
        assert_eq!(
            checkpoints.last().map(|c| c.checkpoint.size),
            Some(57),
            "a final checkpoint at close"
        );
        let verifier = signed_note::StandardVerifier::new(log.verifier_key().expect("key"))
            .expect("verifier key");
        let known = signed_note::VerifierList::new(vec![Box::new(verifier)]);
        let mut previous = 0;
        for c in &checkpoints {
            let note = signed_note::Note::from_bytes(c.note.as_bytes()).expect("a signed note");
            note.verify(&known).expect("signature verifies");
            assert!(c.checkpoint.size > previous, "checkpoints grow");
            previous = c.checkpoint.size;
            assert_eq!(
                roots[c.checkpoint.size as usize - 1].as_bytes().as_slice(),
                c.checkpoint.root.as_slice()
            );
        }
    }
}

#[cfg(test)]
mod at_rest {
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
}

#[cfg(test)]
mod cadence {
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
}
