//! The audit log: an append-only file of framed, hash-chained entries,
//! written by one thread that makes many entries durable with one
//! `fdatasync` (group commit), and indexed in sled for queries.
//!
//! A frame is `u32 length | u32 CRC-32 of the payload | payload`, big-endian,
//! where the payload is the entry's canonical encoding (see
//! `semel_core::AuditEntry`). A reply to [`AuditLog::append`] means the
//! entry's frame is on stable storage.
//!
//! Recovery at start-up reads only what sled's index has not seen: the index
//! records, in the same atomic batch as the keys it adds, the sequence,
//! offset and head hash it has reached. A torn frame at the end of the file
//! (a crash during a write that nobody was told had succeeded) is cut off;
//! damage anywhere else stops the broker: it never silently drops entries.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use semel_core::{AuditEntry, AuditRecord, Hash, Kbo, Niss, ZERO_HASH, entry_hash};
use tokio::sync::oneshot;

use crate::{StoreError, io_err, sled_err};

const HEADER: usize = 8;
/// A frame larger than this is damage, not an entry.
const MAX_FRAME: usize = 1 << 20;
/// The most entries written under one sync.
const MAX_BATCH: usize = 4096;

/// Index key prefixes in the `audit_index` tree.
const K_ENTRY: u8 = b'e';
const K_CITIZEN: u8 = b'c';
const K_CONSUMER: u8 = b'o';
const K_META: &[u8] = b"m";

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

/// An entry read back from the log, with its hash.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub entry: AuditEntry,
    pub hash: Hash,
}

/// A query over the log. Filters that are set must all match.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub citizen: Option<Niss>,
    pub consumer: Option<Kbo>,
    pub since_micros: Option<i64>,
    pub until_micros: Option<i64>,
    /// Only entries with a sequence below this (for paging, newest first).
    pub before_sequence: Option<u64>,
    pub limit: usize,
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

#[derive(Clone, Copy)]
struct Head {
    /// Sequence of the next entry, that is the number of entries.
    next_sequence: u64,
    /// Bytes of valid frames.
    offset: u64,
    hash: Hash,
}

impl Head {
    fn encode(&self) -> [u8; 48] {
        let mut b = [0u8; 48];
        b[..8].copy_from_slice(&self.next_sequence.to_be_bytes());
        b[8..16].copy_from_slice(&self.offset.to_be_bytes());
        b[16..].copy_from_slice(&self.hash);
        b
    }

    fn decode(b: &[u8]) -> Option<Head> {
        if b.len() != 48 {
            return None;
        }
        Some(Head {
            next_sequence: u64::from_be_bytes(b[..8].try_into().ok()?),
            offset: u64::from_be_bytes(b[8..16].try_into().ok()?),
            hash: b[16..].try_into().ok()?,
        })
    }
}

/// What the writer publishes: the durable head, and how far the index has
/// caught up, so a query can wait to see every entry answered before it.
struct Progress {
    durable: Head,
    indexed: u64,
    failed: Option<String>,
}

struct Shared {
    progress: Mutex<Progress>,
    indexed_changed: Condvar,
}

/// The audit log of one broker.
pub struct AuditLog {
    tx: Mutex<Option<mpsc::Sender<Pending>>>,
    shared: Arc<Shared>,
    file: Arc<File>,
    index: sled::Tree,
    path: PathBuf,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl AuditLog {
    pub(crate) fn open(dir: &Path, db: &sled::Db) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let path = dir.join("log");
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err(format!("open audit log {}", path.display())))?;
        if created {
            // The new file's name must survive a crash too.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(format!("fsync {}", dir.display())))?;
        }
        let index = db
            .open_tree("audit_index")
            .map_err(sled_err("open audit index"))?;
        let head = recover(&mut file, &path, &index)?;
        let file = Arc::new(file);
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress {
                durable: head,
                indexed: head.next_sequence,
                failed: None,
            }),
            indexed_changed: Condvar::new(),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            file: file.clone(),
            index: index.clone(),
            shared: shared.clone(),
            head,
        };
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err("start the audit writer thread"))?;
        Ok(AuditLog {
            tx: Mutex::new(Some(tx)),
            shared,
            file,
            index,
            path,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Records an entry; resolves once it is on stable storage. Entries
    /// appended concurrently share one sync.
    pub fn append(
        &self,
        record: AuditRecord,
    ) -> impl std::future::Future<Output = Result<Appended, AuditError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .tx
            .lock()
            .ok()
            .and_then(|tx| {
                tx.as_ref()
                    .map(|tx| tx.send(Pending { record, reply }).is_ok())
            })
            .unwrap_or(false);
        async move {
            if !sent {
                return Err(AuditError::Closed);
            }
            rx.await.unwrap_or(Err(AuditError::Closed))
        }
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
        self.wait_indexed();
        let before = query.before_sequence.unwrap_or(u64::MAX);
        let (prefix, key_len): (Vec<u8>, usize) = match (&query.citizen, &query.consumer) {
            (Some(n), _) => ([&[K_CITIZEN][..], n.as_bytes()].concat(), 12),
            (None, Some(k)) => ([&[K_CONSUMER][..], k.as_bytes()].concat(), 11),
            (None, None) => (vec![K_ENTRY], 1),
        };
        let mut end = prefix.clone();
        end.extend_from_slice(&before.to_be_bytes());
        let mut out = Vec::new();
        for kv in self.index.range(prefix.clone()..end).rev() {
            let (k, v) = kv.map_err(sled_err("read audit index"))?;
            if !k.starts_with(&prefix) || k.len() != key_len + 8 {
                continue;
            }
            let seq =
                u64::from_be_bytes(k[key_len..].try_into().map_err(|_| corrupt("index key"))?);
            let stored = if key_len == 1 {
                self.read_at(&v)?
            } else {
                self.read_sequence(seq)?
            };
            let r = &stored.entry.record;
            if query.since_micros.is_some_and(|s| r.time_micros < s) {
                // Newest first and time grows with the sequence: nothing
                // older can match either.
                break;
            }
            if query.until_micros.is_some_and(|u| r.time_micros >= u)
                || query.consumer.is_some_and(|c| c != r.consumer)
            {
                continue;
            }
            out.push(stored);
            if out.len() >= query.limit {
                break;
            }
        }
        Ok(out)
    }

    /// Reads one entry by sequence.
    pub fn read_sequence(&self, seq: u64) -> Result<StoredEntry, StoreError> {
        let mut key = vec![K_ENTRY];
        key.extend_from_slice(&seq.to_be_bytes());
        let loc = self
            .index
            .get(key)
            .map_err(sled_err("read audit index"))?
            .ok_or_else(|| corrupt(&format!("index has no location for entry {seq}")))?;
        self.read_at(&loc)
    }

    fn read_at(&self, loc: &[u8]) -> Result<StoredEntry, StoreError> {
        let (offset, len) = decode_loc(loc).ok_or_else(|| corrupt("entry location"))?;
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(io_err("read audit log"))?;
        let (payload, _) =
            check_frame(&buf).ok_or_else(|| corrupt(&format!("frame at offset {offset}")))?;
        let entry = AuditEntry::decode(payload)
            .map_err(|e| corrupt(&format!("entry at offset {offset}: {e}")))?;
        Ok(StoredEntry {
            hash: entry_hash(payload),
            entry,
        })
    }

    /// Re-reads the whole file, checking every frame, the sequence and the
    /// hash chain.
    pub fn verify_chain(&self) -> Result<ChainReport, StoreError> {
        let mut file = File::open(&self.path).map_err(io_err("open audit log"))?;
        let limit = lock(&self.shared.progress).durable.offset;
        let mut head = ZERO_HASH;
        let mut entries = 0u64;
        scan(&mut file, 0, |frame_offset, payload| {
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
        .map_or(Ok(()), |bad| {
            Err(corrupt(&format!("damaged frame at offset {bad}")))
        })?;
        Ok(ChainReport { entries, head })
    }

    fn wait_indexed(&self) {
        let mut p = lock(&self.shared.progress);
        let target = p.durable.next_sequence;
        while p.indexed < target && p.failed.is_none() {
            p = match self.shared.indexed_changed.wait(p) {
                Ok(p) => p,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
    }

    /// Stops accepting entries, lets the writer make the accepted ones
    /// durable, and waits for it.
    pub fn close(&self) -> Result<(), StoreError> {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            h.join()
                .map_err(|_| corrupt("the audit writer thread panicked"))?;
        }
        self.index.flush().map_err(sled_err("flush audit index"))?;
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

struct Writer {
    file: Arc<File>,
    index: sled::Tree,
    shared: Arc<Shared>,
    head: Head,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Pending>) {
        let mut frames = Vec::with_capacity(1 << 16);
        let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            self.write_batch(&mut batch, &mut frames);
        }
    }

    fn write_batch(&mut self, batch: &mut Vec<Pending>, frames: &mut Vec<u8>) {
        let failed = lock(&self.shared.progress).failed.clone();
        if let Some(why) = failed {
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(AuditError::Unavailable(why.clone())));
            }
            return;
        }
        frames.clear();
        let start = self.head;
        let mut head = self.head;
        let mut index = sled::Batch::default();
        let mut results = Vec::with_capacity(batch.len());
        let mut encoding = Vec::with_capacity(512);
        for p in batch.iter() {
            let entry = AuditEntry {
                sequence: head.next_sequence,
                previous_hash: head.hash,
                record: p.record.clone(),
            };
            encoding.clear();
            entry.encode(&mut encoding);
            let hash = entry_hash(&encoding);
            let frame_offset = head.offset;
            frames.extend_from_slice(&(encoding.len() as u32).to_be_bytes());
            frames.extend_from_slice(&crc32fast::hash(&encoding).to_be_bytes());
            frames.extend_from_slice(&encoding);
            let frame_len = (HEADER + encoding.len()) as u64;
            add_to_index(&mut index, &entry, frame_offset, frame_len);
            results.push(Appended {
                sequence: entry.sequence,
                hash,
            });
            head = Head {
                next_sequence: head.next_sequence + 1,
                offset: head.offset + frame_len,
                hash,
            };
        }
        let written = (&*self.file)
            .write_all(frames)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Fail closed: nobody is told an entry is safe, the partial
            // write is cut off, and later appends are refused until an
            // operator restarts the broker (after a failed fsync the page
            // cache cannot be trusted to reflect the disk).
            let why = format!("write or sync the audit log: {e}");
            tracing::error!(error = %e, "audit log write failed; refusing lookups until restart");
            let _ = self.file.set_len(start.offset);
            lock(&self.shared.progress).failed = Some(why.clone());
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(AuditError::Unavailable(why.clone())));
            }
            return;
        }
        self.head = head;
        lock(&self.shared.progress).durable = head;
        for (p, r) in batch.drain(..).zip(results) {
            let _ = p.reply.send(Ok(r));
        }
        // The index follows the log; it is not on the answer's path.
        index.insert(K_META, &head.encode()[..]);
        if let Err(e) = self.index.apply_batch(index) {
            tracing::error!(error = %e, "index audit entries; they will be indexed again at restart");
            lock(&self.shared.progress).failed = Some(format!("index the audit log: {e}"));
        } else {
            lock(&self.shared.progress).indexed = head.next_sequence;
        }
        self.shared.indexed_changed.notify_all();
    }
}

fn add_to_index(batch: &mut sled::Batch, entry: &AuditEntry, offset: u64, len: u64) {
    let seq = entry.sequence.to_be_bytes();
    let mut loc = [0u8; 12];
    loc[..8].copy_from_slice(&offset.to_be_bytes());
    loc[8..].copy_from_slice(&(len as u32).to_be_bytes());
    batch.insert([&[K_ENTRY][..], &seq].concat(), &loc[..]);
    if let Some(n) = &entry.record.citizen {
        batch.insert([&[K_CITIZEN][..], n.as_bytes(), &seq].concat(), &[][..]);
    }
    batch.insert(
        [&[K_CONSUMER][..], entry.record.consumer.as_bytes(), &seq].concat(),
        &[][..],
    );
}

fn decode_loc(v: &[u8]) -> Option<(u64, usize)> {
    if v.len() != 12 {
        return None;
    }
    let offset = u64::from_be_bytes(v[..8].try_into().ok()?);
    let len = u32::from_be_bytes(v[8..].try_into().ok()?) as usize;
    Some((offset, len))
}

/// Checks a whole frame; returns its payload and length.
fn check_frame(buf: &[u8]) -> Option<(&[u8], usize)> {
    if buf.len() < HEADER {
        return None;
    }
    let len = u32::from_be_bytes(buf[..4].try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(buf[4..8].try_into().ok()?);
    if len == 0 || len > MAX_FRAME || buf.len() < HEADER + len {
        return None;
    }
    let payload = &buf[HEADER..HEADER + len];
    (crc32fast::hash(payload) == crc).then_some((payload, HEADER + len))
}

/// Reads frames from `start`, calling `f(offset, payload)` for each valid one
/// until it returns false. Returns the offset of the first damaged frame, if
/// any, as `Some`.
fn scan(
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

/// Brings the index up to the end of the log, cutting off a torn tail.
fn recover(file: &mut File, path: &Path, index: &sled::Tree) -> Result<Head, StoreError> {
    let file_len = file.metadata().map_err(io_err("stat audit log"))?.len();
    let mut head = match index.get(K_META).map_err(sled_err("read audit index"))? {
        Some(v) => Head::decode(&v).ok_or_else(|| corrupt("audit index head"))?,
        None => Head {
            next_sequence: 0,
            offset: 0,
            hash: ZERO_HASH,
        },
    };
    if head.offset > file_len {
        return Err(corrupt(&format!(
            "the audit index covers {} bytes but {} holds only {file_len}: the log was truncated",
            head.offset,
            path.display()
        )));
    }
    let mut batch = sled::Batch::default();
    let mut replayed = 0u64;
    let damaged = scan(file, head.offset, |offset, payload| {
        let entry = AuditEntry::decode(payload)
            .map_err(|e| corrupt(&format!("entry at offset {offset}: {e}")))?;
        if entry.sequence != head.next_sequence || entry.previous_hash != head.hash {
            return Err(corrupt(&format!(
                "entry at offset {offset} does not follow entry {} in the hash chain",
                head.next_sequence.wrapping_sub(1)
            )));
        }
        let len = (HEADER + payload.len()) as u64;
        add_to_index(&mut batch, &entry, offset, len);
        head = Head {
            next_sequence: head.next_sequence + 1,
            offset: offset + len,
            hash: entry_hash(payload),
        };
        replayed += 1;
        Ok(true)
    })?;
    if let Some(bad) = damaged {
        // Only a torn tail may be cut: everything from the damage to the end
        // must be unreadable as frames (zeros or a partial frame).
        let mut rest = Vec::new();
        file.seek(SeekFrom::Start(bad))
            .map_err(io_err("seek audit log"))?;
        file.read_to_end(&mut rest)
            .map_err(io_err("read audit log"))?;
        if !is_torn_tail(&rest) {
            return Err(corrupt(&format!(
                "the audit log {} is damaged at offset {bad} (entry {}), with data after it",
                path.display(),
                head.next_sequence
            )));
        }
        tracing::warn!(
            offset = bad,
            bytes = rest.len(),
            "cut a torn write off the end of the audit log"
        );
        file.set_len(bad).map_err(io_err("truncate audit log"))?;
        file.sync_all().map_err(io_err("fsync audit log"))?;
    }
    if replayed > 0 {
        tracing::info!(
            entries = replayed,
            "indexed audit entries found after the index head"
        );
    }
    batch.insert(K_META, &head.encode()[..]);
    index
        .apply_batch(batch)
        .map_err(sled_err("write audit index"))?;
    index.flush().map_err(sled_err("flush audit index"))?;
    Ok(head)
}

/// Whether the bytes after a damaged frame are what an interrupted append
/// leaves: a frame whose declared length runs past the end, or zeros.
fn is_torn_tail(rest: &[u8]) -> bool {
    if rest.iter().all(|&b| b == 0) {
        return true;
    }
    if rest.len() < HEADER {
        return true;
    }
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    len > 0 && len <= MAX_FRAME && HEADER + len > rest.len()
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("audit log: {what}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use semel_core::{AuditDecision, Outcome};

    fn record(i: u8, citizen: Option<&str>) -> AuditRecord {
        AuditRecord {
            request_id: [i; 16],
            time_micros: 1_700_000_000_000_000 + i64::from(i),
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
            decision: AuditDecision::Refused,
            reason: None,
            outcome: Outcome::NotForwarded,
            source: None,
            consumer_reference: String::new(),
            reference_date: None,
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

    #[tokio::test]
    async fn lost_index_is_rebuilt_from_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        append_n(&store, 12).await;
        store.close().expect("close");
        std::fs::remove_dir_all(dir.path().join("db")).expect("remove sled");
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.audit().head().0, 12);
        let all = store
            .audit()
            .query(&AuditQuery {
                limit: 100,
                ..Default::default()
            })
            .expect("query");
        assert_eq!(all.len(), 12);
    }

    #[tokio::test]
    async fn torn_tail_is_cut_and_damage_stops_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        append_n(&store, 4).await;
        store.close().expect("close");
        let log = dir.path().join("audit/log");
        let good_len = std::fs::metadata(&log).expect("stat").len();

        // A torn write: half a frame at the end.
        let mut f = OpenOptions::new().append(true).open(&log).expect("open");
        f.write_all(&[0, 0, 1, 0, 9, 9, 9]).expect("write");
        drop(f);
        std::fs::remove_dir_all(dir.path().join("db")).expect("remove sled");
        let store = Store::open(dir.path()).expect("reopen cuts the tail");
        assert_eq!(store.audit().head().0, 4);
        store.close().expect("close");
        assert_eq!(std::fs::metadata(&log).expect("stat").len(), good_len);

        // A flipped byte inside the second entry, with entries after it.
        let mut bytes = std::fs::read(&log).expect("read");
        let second = {
            let len = u32::from_be_bytes(bytes[..4].try_into().expect("4")) as usize;
            HEADER + len
        };
        bytes[second + HEADER + 3] ^= 0xff;
        std::fs::write(&log, &bytes).expect("write");
        std::fs::remove_dir_all(dir.path().join("db")).expect("remove sled");
        let err = Store::open(dir.path())
            .err()
            .expect("damage must stop the start");
        assert!(
            err.to_string().contains(&format!("offset {second}")),
            "{err}"
        );
    }
}
