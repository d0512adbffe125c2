//! Recovery at start: the frames read and checked, `ends` and the index
//! brought up to the end of the log, a torn write at its end zeroed, damage
//! anywhere else refused, and the log, its tree and the newest signed
//! checkpoint proved to agree.

use super::*;

/// Checks a whole frame; returns its payload.
pub(super) fn check_frame(buf: &[u8]) -> Option<&[u8]> {
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
pub(super) fn recover(
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
pub(super) fn check_start(
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
