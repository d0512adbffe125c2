//! The audit log's index: for each citizen and each consumer, the sequence
//! numbers of their entries.
//!
//! The index only ever grows, and the log can always rebuild it, so it is
//! shaped for appending: recent postings live in memory (the *memtable*);
//! every [`FLUSH_EVERY`] entries they are sorted and written as an immutable
//! segment file, fsynced, then renamed into place. A query reads the
//! memtable, then binary-searches each segment with `pread`, newest first,
//! so its cost follows the size of the answer and the number of segments,
//! never the size of the log.
//!
//! Measured on the 2-core development machine, indexing an entry this way
//! costs well under a microsecond of CPU; the same two keys in sled cost
//! about 80 µs (its own inserts plus its I/O threads), which at lookup rates
//! was the largest cost on the lookup path.
//!
//! Segment file `seg-<first>-<end>` (sequences `first..end`):
//!
//! ```text
//! "SEMELIX1" | u64 first | u64 end | u64 record count   (32-byte header)
//! records, sorted: [12] key | u64 sequence            (20 bytes each)
//! ```
//!
//! A key is a kind byte (`c` citizen, `o` consumer) and the 11 digits of the
//! national number or the 10 of the enterprise number (zero-padded).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use semel_core::{Kbo, Niss};

use crate::{StoreError, io_err};

/// Entries per segment written from the memtable.
#[cfg(not(test))]
pub(crate) const FLUSH_EVERY: u64 = 1 << 16;
#[cfg(test)]
pub(crate) const FLUSH_EVERY: u64 = 1 << 8;

/// Segments of one size merged into one: the number of segments (and of
/// open files) grows with the logarithm of the log's size, base 16, and a
/// query's binary searches with it.
const MERGE_FAN_IN: usize = 16;

const MAGIC: &[u8; 8] = b"SEMELIX1";
const HEADER: u64 = 32;
const RECORD: u64 = 20;

pub(crate) type Key = [u8; 12];

pub(crate) fn citizen_key(n: &Niss) -> Key {
    let mut k = [0u8; 12];
    k[0] = b'c';
    k[1..].copy_from_slice(n.as_bytes());
    k
}

/// A key for free text (a person, an authorisation, a dataset): a tag
/// and 88 bits of its SHA-256. A collision only adds candidates, which
/// queries then filter on the entry itself.
pub(crate) fn text_key(tag: u8, text: &str) -> Key {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(text.as_bytes());
    let mut k = [0u8; 12];
    k[0] = tag;
    k[1..].copy_from_slice(&digest[..11]);
    k
}

pub(crate) fn consumer_key(o: &Kbo) -> Key {
    let mut k = [0u8; 12];
    k[0] = b'o';
    k[1..11].copy_from_slice(o.as_bytes());
    k
}

struct Segment {
    first: u64,
    end: u64,
    records: u64,
    file: File,
    path: PathBuf,
}

impl Segment {
    /// Its size class: 0 for a segment written from the memtable, k for one
    /// that merged MERGE_FAN_IN segments of class k-1.
    fn tier(&self) -> u32 {
        let mut tier = 0;
        let mut n = (self.end - self.first) / FLUSH_EVERY;
        while n >= MERGE_FAN_IN as u64 {
            n /= MERGE_FAN_IN as u64;
            tier += 1;
        }
        tier
    }
}

impl Segment {
    fn record(&self, i: u64) -> Result<(Key, u64), StoreError> {
        let mut b = [0u8; RECORD as usize];
        self.file
            .read_exact_at(&mut b, HEADER + i * RECORD)
            .map_err(io_err("read an audit index segment"))?;
        let mut key = [0u8; 12];
        key.copy_from_slice(&b[..12]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&b[12..]);
        Ok((key, u64::from_be_bytes(seq)))
    }

    /// Index of the first record not less than (key, seq).
    fn lower_bound(&self, key: &Key, seq: u64) -> Result<u64, StoreError> {
        let (mut lo, mut hi) = (0, self.records);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.record(mid)? < (*key, seq) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }
}

#[derive(Default)]
struct Memtable {
    postings: HashMap<Key, Vec<u64>>,
    first: u64,
    end: u64,
}

/// The posting index of one audit log.
pub(crate) struct PostingIndex {
    dir: PathBuf,
    segments: RwLock<Vec<Segment>>,
    memtable: Mutex<Memtable>,
    /// Whether a merge runs in the background.
    compacting: std::sync::atomic::AtomicBool,
}

impl PostingIndex {
    /// Opens the segments in `dir`. Only a run of segments contiguous from
    /// sequence 0 is kept; anything after a gap is deleted, to be rebuilt.
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(format!("list {}", dir.display())))? {
            let path = entry.map_err(io_err("list audit index"))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.starts_with("seg-") {
                continue;
            }
            match open_segment(&path) {
                Some(s) => found.push((s, path)),
                None => {
                    tracing::warn!(file = %path.display(), "discarding an unreadable audit index segment");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        // A merge interrupted before it removed its inputs leaves both: the
        // merged segment (longest from its first entry) is kept.
        found.sort_by_key(|(s, _)| (s.first, std::cmp::Reverse(s.end)));
        let mut segments = Vec::new();
        let mut covered = 0;
        for (s, path) in found {
            if s.first == covered {
                covered = s.end;
                segments.push(s);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(PostingIndex {
            dir: dir.to_path_buf(),
            segments: RwLock::new(segments),
            memtable: Mutex::new(Memtable {
                first: covered,
                end: covered,
                ..Memtable::default()
            }),
            compacting: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Entries `0..covered()` are in segments.
    pub(crate) fn covered(&self) -> u64 {
        self.segments
            .read()
            .map(|s| s.last().map_or(0, |l| l.end))
            .unwrap_or(0)
    }

    /// Adds entry `seq` (which must be the next one) under its keys; writes a
    /// segment when the memtable is full.
    /// Skips entries that will never be indexed (archived before the
    /// index saw them): the next one added is `seq`.
    pub(crate) fn skip_to(&self, seq: u64) {
        let mut m = self.memtable.lock().unwrap_or_else(|p| p.into_inner());
        if seq > m.end {
            if m.postings.is_empty() {
                m.first = seq;
            }
            m.end = seq;
        }
    }

    pub(crate) fn add(&self, seq: u64, keys: &[Key]) -> Result<(), StoreError> {
        let mut m = self.memtable.lock().unwrap_or_else(|p| p.into_inner());
        if seq != m.end {
            return Err(StoreError::Corrupt(format!(
                "audit index: entry {seq} indexed out of order (expected {})",
                m.end
            )));
        }
        for k in keys {
            m.postings.entry(*k).or_default().push(seq);
        }
        m.end = seq + 1;
        if m.end - m.first >= FLUSH_EVERY {
            self.flush(&mut m)?;
        }
        Ok(())
    }

    fn flush(&self, m: &mut Memtable) -> Result<(), StoreError> {
        let mut records: Vec<(Key, u64)> = m
            .postings
            .iter()
            .flat_map(|(k, seqs)| seqs.iter().map(move |s| (*k, *s)))
            .collect();
        records.sort_unstable();
        let name = format!("seg-{:020}-{:020}", m.first, m.end);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let path = self.dir.join(&name);
        let mut buf = Vec::with_capacity(HEADER as usize + records.len() * RECORD as usize);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&m.first.to_be_bytes());
        buf.extend_from_slice(&m.end.to_be_bytes());
        buf.extend_from_slice(&(records.len() as u64).to_be_bytes());
        for (k, s) in &records {
            buf.extend_from_slice(k);
            buf.extend_from_slice(&s.to_be_bytes());
        }
        // Complete on disk before it gets its name: a named segment is whole.
        let mut f = File::create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
        f.write_all(&buf)
            .and_then(|()| f.sync_all())
            .map_err(io_err(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io_err(format!("name {}", path.display())))?;
        let segment = open_segment(&path).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "audit index: {} unreadable after writing",
                path.display()
            ))
        })?;
        self.segments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(segment);
        m.postings.clear();
        m.first = m.end;
        Ok(())
    }

    /// Merges runs of MERGE_FAN_IN contiguous segments of the same size
    /// class into one, until none is left: a streaming merge of sorted
    /// files, written and synced under a temporary name, then named, then
    /// swapped in for its inputs, which are removed. Queries see either the
    /// inputs or the merged segment, never a mix.
    pub(crate) fn compact(&self) -> Result<(), StoreError> {
        loop {
            let run: Vec<(PathBuf, u64, u64)> = {
                let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
                let Some(start) = merge_run(&segments) else {
                    return Ok(());
                };
                segments[start..start + MERGE_FAN_IN]
                    .iter()
                    .map(|s| (s.path.clone(), s.first, s.end))
                    .collect()
            };
            let (first, end) = (run[0].1, run[run.len() - 1].2);
            let name = format!("seg-{first:020}-{end:020}");
            let tmp = self.dir.join(format!("{name}.tmp"));
            let path = self.dir.join(&name);
            merge_files(&run, first, end, &tmp)?;
            std::fs::rename(&tmp, &path).map_err(io_err(format!("name {}", path.display())))?;
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(format!("fsync {}", self.dir.display())))?;
            let merged = open_segment(&path).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "audit index: {} unreadable after merging",
                    path.display()
                ))
            })?;
            {
                let mut segments = self.segments.write().unwrap_or_else(|p| p.into_inner());
                let at = segments
                    .iter()
                    .position(|s| s.first == first)
                    .ok_or_else(|| {
                        StoreError::Corrupt("audit index: merged run vanished".into())
                    })?;
                segments.splice(at..at + run.len(), [merged]);
            }
            for (input, _, _) in &run {
                let _ = std::fs::remove_file(input);
            }
        }
    }

    /// Starts merging on a thread of its own when a run of segments is due
    /// (and no merge runs yet): indexing and queries go on meanwhile.
    pub(crate) fn compact_in_background(self: &std::sync::Arc<Self>) {
        use std::sync::atomic::Ordering;
        let due = {
            let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
            merge_run(&segments).is_some()
        };
        if !due || self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let index = self.clone();
        let spawned = std::thread::Builder::new()
            .name("audit-index-merge".into())
            .spawn(move || {
                if let Err(e) = index.compact() {
                    tracing::error!(error = %e, "merging audit index segments failed; the index stays as it was");
                }
                index.compacting.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.compacting.store(false, Ordering::Release);
        }
    }

    /// Segment files: what the index keeps open.
    #[cfg(test)]
    pub(crate) fn segment_count(&self) -> usize {
        self.segments.read().map(|s| s.len()).unwrap_or(0)
    }

    /// How many sequences `key` holds below `before`: two binary searches
    /// per segment, no posting read.
    pub(crate) fn count(&self, key: &Key, before: u64) -> Result<u64, StoreError> {
        let mut n = {
            let m = self.memtable.lock().unwrap_or_else(|p| p.into_inner());
            m.postings
                .get(key)
                .map_or(0, |v| v.iter().filter(|s| **s < before).count() as u64)
        };
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        for seg in segments.iter().filter(|s| s.first < before) {
            n += seg.lower_bound(key, before)? - seg.lower_bound(key, 0)?;
        }
        Ok(n)
    }

    /// Calls `f` with every sequence under `key` below `before`, newest
    /// first, until it returns false.
    pub(crate) fn postings(
        &self,
        key: &Key,
        before: u64,
        mut f: impl FnMut(u64) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let recent: Vec<u64> = {
            let m = self.memtable.lock().unwrap_or_else(|p| p.into_inner());
            m.postings
                .get(key)
                .map(|v| v.iter().rev().copied().filter(|s| *s < before).collect())
                .unwrap_or_default()
        };
        for s in recent {
            if !f(s)? {
                return Ok(());
            }
        }
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        for seg in segments.iter().rev().filter(|s| s.first < before) {
            // Records of `key` lie in [lower_bound(key, 0), lower_bound(key, before)).
            let start = seg.lower_bound(key, 0)?;
            let mut i = seg.lower_bound(key, before)?;
            while i > start {
                i -= 1;
                let (_, s) = seg.record(i)?;
                if !f(s)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// Where a run of MERGE_FAN_IN contiguous segments of one size class
/// starts, the smallest class first.
fn merge_run(segments: &[Segment]) -> Option<usize> {
    let mut best: Option<(u32, usize)> = None;
    let mut i = 0;
    while i + MERGE_FAN_IN <= segments.len() {
        let tier = segments[i].tier();
        if segments[i..i + MERGE_FAN_IN]
            .iter()
            .all(|s| s.tier() == tier)
        {
            if best.is_none_or(|(t, _)| tier < t) {
                best = Some((tier, i));
            }
            i += MERGE_FAN_IN;
        } else {
            i += 1;
        }
    }
    best.map(|(_, i)| i)
}

/// Writes the merge of sorted segment files to `out`, synced.
fn merge_files(
    run: &[(PathBuf, u64, u64)],
    first: u64,
    end: u64,
    out: &Path,
) -> Result<(), StoreError> {
    use std::io::{BufReader, BufWriter, Read};
    let mut inputs = Vec::with_capacity(run.len());
    let mut total = 0u64;
    for (path, _, _) in run {
        let mut r = BufReader::with_capacity(
            64 * 1024,
            File::open(path).map_err(io_err(format!("open {}", path.display())))?,
        );
        let mut h = [0u8; HEADER as usize];
        r.read_exact(&mut h)
            .map_err(io_err(format!("read {}", path.display())))?;
        let mut n = [0u8; 8];
        n.copy_from_slice(&h[24..32]);
        let records = u64::from_be_bytes(n);
        total += records;
        inputs.push((r, records));
    }
    let read = |r: &mut BufReader<File>| -> Result<(Key, u64), StoreError> {
        let mut b = [0u8; RECORD as usize];
        r.read_exact(&mut b)
            .map_err(io_err("read an audit index segment"))?;
        let mut key = [0u8; 12];
        key.copy_from_slice(&b[..12]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&b[12..]);
        Ok((key, u64::from_be_bytes(seq)))
    };
    // The next record of each input, smallest first.
    let mut heads = std::collections::BinaryHeap::new();
    for (i, (r, left)) in inputs.iter_mut().enumerate() {
        if *left > 0 {
            *left -= 1;
            heads.push(std::cmp::Reverse((read(r)?, i)));
        }
    }
    let file = File::create(out).map_err(io_err(format!("create {}", out.display())))?;
    let mut w = BufWriter::with_capacity(256 * 1024, file);
    let write = |w: &mut BufWriter<File>, bytes: &[u8]| {
        w.write_all(bytes)
            .map_err(io_err(format!("write {}", out.display())))
    };
    write(&mut w, MAGIC)?;
    write(&mut w, &first.to_be_bytes())?;
    write(&mut w, &end.to_be_bytes())?;
    write(&mut w, &total.to_be_bytes())?;
    while let Some(std::cmp::Reverse(((key, seq), i))) = heads.pop() {
        write(&mut w, &key)?;
        write(&mut w, &seq.to_be_bytes())?;
        let (r, left) = &mut inputs[i];
        if *left > 0 {
            *left -= 1;
            heads.push(std::cmp::Reverse((read(r)?, i)));
        }
    }
    let file = w
        .into_inner()
        .map_err(|e| StoreError::Corrupt(format!("write {}: {e}", out.display())))?;
    file.sync_all()
        .map_err(io_err(format!("fsync {}", out.display())))
}

fn open_segment(path: &Path) -> Option<Segment> {
    let file = OpenOptions::new().read(true).open(path).ok()?;
    let mut h = [0u8; HEADER as usize];
    file.read_exact_at(&mut h, 0).ok()?;
    if &h[..8] != MAGIC {
        return None;
    }
    let num = |i: usize| h[i..i + 8].try_into().ok().map(u64::from_be_bytes);
    let (first, end, records) = (num(8)?, num(16)?, num(24)?);
    let len = file.metadata().ok()?.len();
    (end > first && len == HEADER + records * RECORD).then_some(Segment {
        first,
        end,
        records,
        file,
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> Key {
        let mut k = [0u8; 12];
        k[0] = b'c';
        k[4..].copy_from_slice(&i.to_be_bytes());
        k
    }

    fn collect(ix: &PostingIndex, k: &Key, before: u64) -> Vec<u64> {
        let mut out = Vec::new();
        ix.postings(k, before, |s| {
            out.push(s);
            Ok(true)
        })
        .expect("postings");
        out
    }

    #[test]
    fn segments_merge_so_files_grow_with_the_logarithm_of_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ix = PostingIndex::open(dir.path()).expect("open");
        // 17 × 16 segments of the smallest class, and a few entries more.
        let n = FLUSH_EVERY * 17 * 16 + 10;
        for seq in 0..n {
            ix.add(seq, &[key(seq % 5), key(1000)]).expect("add");
        }
        assert_eq!(ix.segment_count(), 17 * 16);
        let before: Vec<Vec<u64>> = [0, 3, 1000, 99]
            .iter()
            .map(|k| collect(&ix, &key(*k), u64::MAX))
            .collect();
        ix.compact().expect("compact");
        // 272 segments: 17 of the next class, then one of the class above
        // and one left: two files.
        assert_eq!(ix.segment_count(), 2);
        for (k, want) in [0, 3, 1000, 99].iter().zip(&before) {
            assert_eq!(&collect(&ix, &key(*k), u64::MAX), want, "key {k}");
            assert_eq!(
                ix.count(&key(*k), u64::MAX).expect("count"),
                want.len() as u64
            );
        }
        let mid = FLUSH_EVERY * 100 + 3;
        assert_eq!(
            collect(&ix, &key(3), mid),
            before[1]
                .iter()
                .copied()
                .filter(|s| *s < mid)
                .collect::<Vec<_>>()
        );
        drop(ix);
        // The inputs are gone; the merged segments are read back.
        let files = std::fs::read_dir(dir.path()).expect("list").count();
        assert_eq!(files, 2);
        let ix = PostingIndex::open(dir.path()).expect("reopen");
        assert_eq!(ix.covered(), FLUSH_EVERY * 17 * 16);
        assert_eq!(
            collect(&ix, &key(1000), u64::MAX).len() as u64,
            FLUSH_EVERY * 17 * 16
        );
    }

    #[test]
    fn postings_span_segments_and_the_memtable_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ix = PostingIndex::open(dir.path()).expect("open");
        let n = FLUSH_EVERY * 2 + 100;
        for seq in 0..n {
            ix.add(seq, &[key(seq % 7), key(1000)]).expect("add");
        }
        assert_eq!(ix.covered(), FLUSH_EVERY * 2);
        let want: Vec<u64> = (0..n).rev().filter(|s| s % 7 == 3).collect();
        assert_eq!(collect(&ix, &key(3), u64::MAX), want);
        let before = FLUSH_EVERY + 5;
        assert_eq!(
            collect(&ix, &key(3), before),
            want.iter()
                .copied()
                .filter(|s| *s < before)
                .collect::<Vec<_>>()
        );
        assert_eq!(collect(&ix, &key(1000), u64::MAX).len() as u64, n);
        assert!(collect(&ix, &key(99), u64::MAX).is_empty());
        // Counts agree with the postings, across segments and the memtable.
        for (k, before) in [(3, u64::MAX), (3, before), (1000, u64::MAX), (99, u64::MAX)] {
            assert_eq!(
                ix.count(&key(k), before).expect("count"),
                collect(&ix, &key(k), before).len() as u64,
                "key {k} before {before}"
            );
        }
        assert!(ix.add(n + 1, &[key(1)]).is_err(), "out of order");
        drop(ix);

        // The memtable is gone; the segments are back; a gap is dropped.
        let ix = PostingIndex::open(dir.path()).expect("reopen");
        assert_eq!(ix.covered(), FLUSH_EVERY * 2);
        std::fs::remove_file(
            dir.path()
                .join(format!("seg-{:020}-{:020}", 0, FLUSH_EVERY)),
        )
        .expect("remove first");
        drop(ix);
        let ix = PostingIndex::open(dir.path()).expect("reopen");
        assert_eq!(ix.covered(), 0, "a segment after a gap is discarded");
    }
}
