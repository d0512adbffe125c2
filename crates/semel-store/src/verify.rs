//! Checking an audit log without trusting the broker: every entry decodes,
//! follows its predecessor in sequence and hash chain, and the Merkle tree
//! recomputed from the entries has, at every signed checkpoint, the root the
//! checkpoint signs. On failure the first entry (or checkpoint) that does
//! not match is named.
//!
//! Two inputs: a store's `audit/` directory (the log file and its
//! checkpoints), and an export written by [`export`] (JSON Lines, which an
//! outside auditor can check on their own machine).

use std::fs::File;
use std::io::{BufRead, Write};
use std::path::Path;

use semel_core::checkpoint::{Checkpoint, NoteVerifier, b64};
use semel_core::merkle::CompactRange;
use semel_core::{AuditEntry, Hash, ZERO_HASH, entry_hash};
use serde_json::{Value, json};

use crate::audit::{Tail, read_checkpoints, scan, tail_kind};
use crate::entry_lines::{entry_line, readable};

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub entries: u64,
    /// Signed checkpoints checked.
    pub checkpoints: usize,
    /// The size of the newest checkpoint, if any.
    pub last_checkpoint: Option<u64>,
    /// The root of all the entries.
    pub root: Hash,
    /// Trusted checkpoints (what auditors saw) the log reached and
    /// reproduced.
    pub trusted: usize,
    /// Set for an excerpt (some entries, each proven by its inclusion
    /// proof in one signed checkpoint), not the whole log.
    pub excerpt: bool,
    /// Where the log is a new epoch of an earlier one: the statement its
    /// first entry makes (see [`semel_core::epoch`]), checked.
    pub epoch: Option<EpochBoundary>,
}

/// The statement that opens a new epoch, as the verifier checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochBoundary {
    pub statement: semel_core::epoch::EpochStatement,
    /// Whether the previous checkpoint is signed by this log's key under
    /// the previous origin (false: another key signed it; check it with
    /// the previous verifier key).
    pub same_key: bool,
}

/// What an auditor brings to a verification: checkpoints seen before (from
/// the API, a witness, a previous audit) and the witnesses whose
/// cosignatures they must carry.
#[derive(Debug, Default)]
pub struct TrustPolicy {
    /// Signed notes, cosignature lines included.
    pub trusted: Vec<String>,
    pub witnesses: Vec<semel_core::checkpoint::CosignatureVerifier>,
    /// How many of `witnesses` must have cosigned each trusted checkpoint.
    pub quorum: usize,
}

impl TrustPolicy {
    /// The trusted checkpoints, each checked: signed by the log's key and
    /// cosigned by at least `quorum` of the witnesses.
    fn checkpoints(&self, key: &NoteVerifier) -> Result<Vec<Checkpoint>, VerifyFailure> {
        self.trusted
            .iter()
            .map(|note| {
                let size = first_number(note);
                let c = key.verify(note).map_err(|e| VerifyFailure::Checkpoint {
                    size,
                    why: format!("the trusted checkpoint is not the log's: {e}"),
                })?;
                self.cosigned(note, size, "the trusted checkpoint")?;
                Ok(c)
            })
            .collect()
    }

    /// Whether a note carries the cosignatures of `quorum` witnesses.
    fn cosigned(&self, note: &str, size: u64, what: &str) -> Result<(), VerifyFailure> {
        // One witness counts once, however often its key was given (under
        // one name or several).
        let cosigned = self
            .witnesses
            .iter()
            .filter(|w| w.verify(note).is_ok())
            .map(|w| w.public_key())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if cosigned < self.quorum {
            return Err(VerifyFailure::Checkpoint {
                size,
                why: format!(
                    "{what} carries {cosigned} valid cosignatures of the {} witnesses required",
                    self.quorum
                ),
            });
        }
        Ok(())
    }
}

/// Where the log stops being what was signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyFailure {
    #[error("entry {sequence}: {why}")]
    Entry { sequence: u64, why: String },
    #[error("checkpoint of {size} entries: {why}")]
    Checkpoint { size: u64, why: String },
    /// The input does not say what it should (a line that is not JSON, an
    /// entry that cannot be decoded): an integrity failure, like the others.
    #[error("{0}")]
    Input(String),
    /// The input could not be checked at all (a file missing or unreadable,
    /// not an export, a check that does not apply to it): an operational
    /// error, not a verdict on the log.
    #[error("{0}")]
    NotChecked(String),
}

impl VerifyFailure {
    /// Whether this says the log or export is not what was signed (exit 4),
    /// rather than that it could not be read (exit 1).
    pub fn is_integrity(&self) -> bool {
        !matches!(self, VerifyFailure::NotChecked(_))
    }
}

/// Recomputes the chain and the tree entry by entry.
pub struct LogVerifier {
    /// Trusted checkpoints among `checkpoints`.
    trusted: usize,
    checkpoints: Vec<Checkpoint>,
    next_checkpoint: usize,
    /// A checkpoint reached, with the root the entries gave at its size:
    /// compared once the next entry's link has been checked, so an altered
    /// entry is named by the chain rather than by the checkpoint.
    reached: Option<(Checkpoint, u64, Hash)>,
    expected: u64,
    previous: Hash,
    range: CompactRange,
    key: NoteVerifier,
    epoch: Option<EpochBoundary>,
}

impl LogVerifier {
    /// Checks every note's signature with `key`, and that the checkpoints
    /// grow.
    pub fn new(notes: &[String], key: &NoteVerifier) -> Result<LogVerifier, VerifyFailure> {
        Self::trusting(notes, key, &[])
    }

    /// Like [`LogVerifier::new`], and the log must also reach and reproduce
    /// each of `trusted` (checkpoints an auditor saw), whether or not the
    /// log still holds them: removing checkpoints cannot hide a change.
    pub fn trusting(
        notes: &[String],
        key: &NoteVerifier,
        trusted: &[Checkpoint],
    ) -> Result<LogVerifier, VerifyFailure> {
        let mut checkpoints: Vec<Checkpoint> = Vec::new();
        for note in notes {
            let c = key.verify(note).map_err(|e| VerifyFailure::Checkpoint {
                size: first_number(note),
                why: e.to_string(),
            })?;
            if let Some(last) = checkpoints.last()
                && c.size <= last.size
            {
                return Err(VerifyFailure::Checkpoint {
                    size: c.size,
                    why: format!(
                        "it follows a checkpoint of {} entries: checkpoints must grow",
                        last.size
                    ),
                });
            }
            checkpoints.push(c);
        }
        for t in trusted {
            match checkpoints.iter().find(|c| c.size == t.size) {
                Some(c) if c.root == t.root => {}
                Some(_) => {
                    return Err(VerifyFailure::Checkpoint {
                        size: t.size,
                        why: "the log's own checkpoint at this size has another root than the trusted one: the log shows auditors different histories".into(),
                    });
                }
                None => {
                    let at = checkpoints.partition_point(|c| c.size < t.size);
                    checkpoints.insert(at, t.clone());
                }
            }
        }
        Ok(LogVerifier {
            trusted: trusted.len(),
            checkpoints,
            next_checkpoint: 0,
            reached: None,
            expected: 0,
            previous: ZERO_HASH,
            range: CompactRange::new(),
            key: key.clone(),
            epoch: None,
        })
    }

    /// Takes the next entry's canonical encoding.
    pub fn push(&mut self, encoding: &[u8]) -> Result<AuditEntry, VerifyFailure> {
        let n = self.expected;
        let entry = AuditEntry::decode(encoding).map_err(|e| VerifyFailure::Entry {
            sequence: n,
            why: format!("cannot be decoded: {e}"),
        })?;
        if entry.sequence != n {
            return Err(VerifyFailure::Entry {
                sequence: n,
                why: format!(
                    "the entry in its place carries sequence {}: entries were removed or reordered",
                    entry.sequence
                ),
            });
        }
        if entry.previous_hash != self.previous {
            return Err(match n {
                0 => VerifyFailure::Entry {
                    sequence: 0,
                    why: "the first entry links to a previous one: the log's beginning was removed"
                        .into(),
                },
                _ => VerifyFailure::Entry {
                    sequence: n - 1,
                    why: format!(
                        "it does not match the hash entry {n} records for it: it was altered"
                    ),
                },
            });
        }
        self.check_reached()?;
        if entry.record.operation == semel_core::epoch::NEW_EPOCH_OPERATION {
            self.epoch = Some(self.epoch_boundary(&entry)?);
        }
        let leaf = entry_hash(encoding);
        self.range.push(leaf);
        self.previous = leaf;
        self.expected += 1;
        while let Some(c) = self.checkpoints.get(self.next_checkpoint) {
            if c.size != self.expected {
                break;
            }
            let from = self
                .next_checkpoint
                .checked_sub(1)
                .and_then(|i| self.checkpoints.get(i))
                .map_or(0, |p| p.size);
            self.reached = Some((c.clone(), from, self.range.root()));
            self.next_checkpoint += 1;
        }
        Ok(entry)
    }

    /// Checks a new-epoch statement: only a log's first entry makes one,
    /// about another origin, and it holds together (its note carries the
    /// checkpoint it states; a note signed by this log's key verifies).
    fn epoch_boundary(&self, entry: &AuditEntry) -> Result<EpochBoundary, VerifyFailure> {
        let failure = |why: String| VerifyFailure::Entry {
            sequence: entry.sequence,
            why,
        };
        if entry.sequence != 0 {
            return Err(failure(
                "it states a new epoch, which only a log's first entry may: a log goes on under its origin or begins anew".into(),
            ));
        }
        let statement = semel_core::epoch::EpochStatement::parse(&entry.record.detail)
            .map_err(|e| failure(e.to_string()))?;
        if statement.previous.origin == self.key.name() {
            return Err(failure(format!(
                "it states a new epoch after {}, this log's own origin: a new epoch has a new origin",
                statement.previous.origin
            )));
        }
        let same_key = statement
            .signed_by_same_key(&self.key)
            .map_err(|e| failure(e.to_string()))?;
        Ok(EpochBoundary {
            statement,
            same_key,
        })
    }

    fn check_reached(&mut self) -> Result<(), VerifyFailure> {
        if let Some((c, from, root)) = self.reached.take()
            && root != c.root
        {
            return Err(VerifyFailure::Checkpoint {
                size: c.size,
                why: format!(
                    "the entries do not produce its signed root: an entry from {from} to {} was altered",
                    c.size - 1
                ),
            });
        }
        Ok(())
    }

    /// Checks that no checkpoint covers entries the log no longer has.
    pub fn finish(mut self) -> Result<VerifyReport, VerifyFailure> {
        self.check_reached()?;
        if let Some(c) = self.checkpoints.get(self.next_checkpoint) {
            return Err(VerifyFailure::Checkpoint {
                size: c.size,
                why: format!(
                    "the log ends after {} entries but this checkpoint covers {}: entries were removed from the end",
                    self.expected, c.size
                ),
            });
        }
        Ok(VerifyReport {
            entries: self.expected,
            checkpoints: self.checkpoints.len(),
            last_checkpoint: self.checkpoints.last().map(|c| c.size),
            root: self.range.root(),
            trusted: self.trusted,
            excerpt: false,
            epoch: self.epoch,
        })
    }
}

fn first_number(note: &str) -> u64 {
    note.lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or(0)
}

/// Verifies a store's audit directory (`<data_dir>/audit`).
pub fn verify_dir(audit_dir: &Path, key: &NoteVerifier) -> Result<VerifyReport, VerifyFailure> {
    verify_dir_trusting(audit_dir, key, &TrustPolicy::default())
}

/// [`verify_dir`], against what auditors saw.
pub fn verify_dir_trusting(
    audit_dir: &Path,
    key: &NoteVerifier,
    policy: &TrustPolicy,
) -> Result<VerifyReport, VerifyFailure> {
    let notes: Vec<String> = read_checkpoints(&audit_dir.join("checkpoints"))
        .map_err(|e| match e {
            crate::StoreError::Corrupt(m) => VerifyFailure::Input(m),
            e => VerifyFailure::NotChecked(e.to_string()),
        })?
        .into_iter()
        .map(|c| c.note)
        .collect();
    let mut verifier = LogVerifier::trusting(&notes, key, &policy.checkpoints(key)?)?;
    // Archived entries first, from their files; the log resumes where the
    // archive ends (the offset is the sum of the archived frames, computed
    // here rather than trusted).
    let mut start = 0u64;
    for lines in archive_files(audit_dir)? {
        start += push_lines(&mut verifier, &lines)?;
    }
    let path = audit_dir.join("log");
    let mut file = File::open(&path)
        .map_err(|e| VerifyFailure::NotChecked(format!("open {}: {e}", path.display())))?;
    let mut failure = None;
    let damaged = scan(&mut file, start, |_, payload| {
        match verifier.push(payload) {
            Ok(_) => Ok(true),
            Err(f) => {
                failure = Some(f);
                Ok(false)
            }
        }
    })
    .map_err(|e| match e {
        crate::StoreError::Corrupt(m) => VerifyFailure::Input(m),
        e => VerifyFailure::NotChecked(e.to_string()),
    })?;
    if let Some(f) = failure {
        return Err(f);
    }
    if let Some(offset) = damaged {
        let mut rest = Vec::new();
        use std::io::{Read, Seek, SeekFrom};
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_to_end(&mut rest))
            .map_err(|e| VerifyFailure::NotChecked(format!("read {}: {e}", path.display())))?;
        // Zeros after the last frame are a crash's leftovers (the broker
        // zeroes a torn write at start); anything else is damage.
        if !matches!(tail_kind(&rest), Tail::Zeros) {
            return Err(VerifyFailure::Entry {
                sequence: verifier.expected,
                why: format!(
                    "its frame at offset {offset} is damaged (length or checksum): the log was altered"
                ),
            });
        }
    }
    verifier.finish()
}

/// The origin (log name) of a store's checkpoints, if it has any.
pub fn origin_of(audit_dir: &Path) -> Result<Option<String>, crate::StoreError> {
    Ok(read_checkpoints(&audit_dir.join("checkpoints"))?
        .first()
        .map(|c| c.checkpoint.origin.clone()))
}

/// The verifier key of a store's own signing key, for an operator checking
/// their own store: the key next to the data directory
/// (`<data_dir>/audit-signing.key`, or the demo's `pki/`), named by the
/// store's checkpoints. `None` when there is no such key or no checkpoint.
/// Returns the key's path with it.
pub fn own_verifier_key(
    data_dir: &Path,
    origin_hint: Option<&str>,
) -> Result<Option<(std::path::PathBuf, String)>, crate::StoreError> {
    let Some(path) = [
        data_dir.join("audit-signing.key"),
        data_dir.join("../pki/audit-signing.key"),
    ]
    .into_iter()
    .find(|p| p.exists()) else {
        return Ok(None);
    };
    // The log's name: its checkpoints', or else the hint's (a trusted
    // checkpoint); with neither, no checkpoint will be checked with the key,
    // which then only needs to be well formed.
    let origin = origin_of(&data_dir.join("audit"))?
        .or_else(|| origin_hint.map(str::to_owned))
        .unwrap_or_else(|| "semel.brussels/audit/unsigned".to_owned());
    let key = crate::load_or_create_signing_key(&path)?;
    let verifier = semel_core::checkpoint::NoteSigner::new(&origin, key).verifier_key();
    Ok(Some((path, verifier)))
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object a line: a header, entries (readable fields and the
    /// canonical encoding) and the signed checkpoints after the entry that
    /// completes them. Verifiable with [`verify_export`].
    JsonLines,
    /// One row per entry, readable fields only, for spreadsheets.
    Csv,
}

/// The archive files of an audit directory, oldest first, as parsed lines.
fn archive_files(audit_dir: &Path) -> Result<Vec<Vec<Value>>, VerifyFailure> {
    let dir = audit_dir.join("archive");
    let mut names: Vec<std::path::PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(VerifyFailure::NotChecked(format!(
                "read {}: {e}",
                dir.display()
            )));
        }
    };
    names.sort();
    let mut files = Vec::new();
    for name in names {
        let text = std::fs::read_to_string(&name)
            .map_err(|e| VerifyFailure::NotChecked(format!("read {}: {e}", name.display())))?;
        let lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| {
                    VerifyFailure::Input(format!(
                        "{} line {}: not JSON: {e}",
                        name.display(),
                        i + 1
                    ))
                })
            })
            .collect::<Result<Vec<Value>, _>>()?;
        files.push(lines);
    }
    Ok(files)
}

/// Pushes the entries of parsed JSON Lines into the verifier, checking
/// that each readable field is its signed encoding's.
/// Returns the bytes those entries took in the log (their frames).
fn push_lines(verifier: &mut LogVerifier, lines: &[Value]) -> Result<u64, VerifyFailure> {
    let mut frames = 0u64;
    for v in lines.iter().filter(|v| v["type"] == "entry") {
        let sequence = verifier.expected;
        let encoding = v["encoding"]
            .as_str()
            .and_then(b64::decode)
            .ok_or_else(|| VerifyFailure::Entry {
                sequence,
                why: "its encoding is missing or not base64".into(),
            })?;
        let entry = verifier.push(&encoding)?;
        frames += (FRAME_HEADER + encoding.len()) as u64;
        // Exports made before a field was shown lack it: absent is not
        // altered (the signed encoding holds it anyway); a different value is.
        if let Some(field) = altered_field(v, &entry, &["type", "encoding"], &ADDED_LATER) {
            return Err(VerifyFailure::Entry {
                sequence,
                why: format!(
                    "its readable field {field} differs from its signed encoding: the export or archive was altered"
                ),
            });
        }
    }
    Ok(frames)
}

/// The readable field of a line that differs from its entry's signed
/// encoding (`?` when the line adds a field of its own), if any. `envelope`
/// names the line's keys that are not readable fields, `added_later` the
/// fields an older writer may have left out.
fn altered_field(
    line: &Value,
    entry: &AuditEntry,
    envelope: &[&str],
    added_later: &[&str],
) -> Option<String> {
    let mut shown = line.clone();
    if let Some(o) = shown.as_object_mut() {
        for k in envelope {
            o.remove(*k);
        }
    }
    let mut signed = readable(entry);
    if let (Some(sig), Some(sh)) = (signed.as_object_mut(), shown.as_object()) {
        for k in added_later {
            if !sh.contains_key(*k) {
                sig.remove(*k);
            }
        }
    }
    (shown != signed).then(|| {
        signed
            .as_object()
            .and_then(|o| o.iter().find(|(k, s)| shown.get(k.as_str()) != Some(s)))
            .map_or("?".to_owned(), |(k, _)| k.clone())
    })
}

/// Readable fields that exports made by older versions do not carry.
const ADDED_LATER: [&str; 3] = ["checks", "detail", "authorisation_version"];

/// A log frame's header: u32 length, u32 CRC-32.
const FRAME_HEADER: usize = 8;

const CSV_COLUMNS: [&str; 16] = [
    "sequence",
    "time_micros",
    "operation",
    "consumer_kbo",
    "end_user",
    "citizen",
    "dataset",
    "fields_returned",
    "purpose",
    "authorisation",
    "authorisation_version",
    "decision",
    "reason",
    "source_kbo",
    "checks",
    "detail",
];

fn csv_cell(v: &Value) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        // Several questions each hold spaces: a list reads as "a; b".
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    };
    // A cell a spreadsheet would read as a formula (a purpose sent as
    // `=HYPERLINK(…)`) is kept as text.
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text
    };
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// Writes every entry of a store's audit directory (and, in JSON Lines, its
/// checkpoints) to `out`; `progress(done, total_bytes_read)` is called as
/// it goes. Returns the number of entries.
pub fn export(
    audit_dir: &Path,
    format: ExportFormat,
    verifier_key: Option<&str>,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, VerifyFailure> {
    let io = |e: std::io::Error| VerifyFailure::Input(format!("write the export: {e}"));
    let checkpoints = read_checkpoints(&audit_dir.join("checkpoints"))
        .map_err(|e| VerifyFailure::Input(e.to_string()))?;
    let path = audit_dir.join("log");
    let mut file = File::open(&path)
        .map_err(|e| VerifyFailure::Input(format!("open {}: {e}", path.display())))?;
    write_header(out, format, &checkpoints, verifier_key).map_err(io)?;
    let mut count = 0u64;
    let mut next = checkpoints.iter().peekable();
    let mut write_error = None;
    let mut start = 0u64;
    for lines in archive_files(audit_dir)? {
        for v in lines.iter().filter(|v| v["type"] == "entry") {
            let encoding = v["encoding"]
                .as_str()
                .and_then(b64::decode)
                .unwrap_or_default();
            start += (FRAME_HEADER + encoding.len()) as u64;
            let entry = AuditEntry::decode(&encoding)
                .map_err(|e| VerifyFailure::Input(format!("an archived entry: {e}")))?;
            count += 1;
            write_entry(out, format, &entry, &encoding, count, &mut next).map_err(io)?;
        }
    }
    scan(&mut file, start, |offset, payload| {
        let entry = AuditEntry::decode(payload)
            .map_err(|e| crate::StoreError::Corrupt(format!("entry at offset {offset}: {e}")))?;
        count += 1;
        if let Err(e) = write_entry(out, format, &entry, payload, count, &mut next) {
            write_error = Some(e);
            return Ok(false);
        }
        progress(count, offset);
        Ok(true)
    })
    .map_err(|e| VerifyFailure::Input(e.to_string()))?;
    if let Some(e) = write_error {
        return Err(io(e));
    }
    Ok(count)
}

/// Writes entry number `count` and, in JSON Lines, the checkpoints it
/// completes.
fn write_header(
    out: &mut dyn Write,
    format: ExportFormat,
    checkpoints: &[crate::SignedCheckpoint],
    verifier_key: Option<&str>,
) -> std::io::Result<()> {
    match format {
        ExportFormat::JsonLines => writeln!(
            out,
            "{}",
            json!({
                "format": "semel-audit-export/1",
                "origin": checkpoints.first().map(|c| c.checkpoint.origin.clone()),
                "verifier_key": verifier_key,
            })
        ),
        ExportFormat::Csv => writeln!(out, "{}", CSV_COLUMNS.join(",")),
    }
}

/// Writes an export, in the same format as [`export`], of a log read
/// elsewhere (the PostgreSQL store): its kept checkpoints, and its entries'
/// encodings in order, batch by batch from `next` until it gives none.
pub fn export_entries(
    checkpoints: &[crate::SignedCheckpoint],
    next: &mut dyn FnMut() -> Result<Vec<Vec<u8>>, VerifyFailure>,
    format: ExportFormat,
    verifier_key: Option<&str>,
    out: &mut dyn Write,
) -> Result<u64, VerifyFailure> {
    let io = |e: std::io::Error| VerifyFailure::Input(format!("write the export: {e}"));
    write_header(out, format, checkpoints, verifier_key).map_err(io)?;
    let mut pending = checkpoints.iter().peekable();
    let mut count = 0u64;
    loop {
        let batch = next()?;
        if batch.is_empty() {
            return Ok(count);
        }
        for encoding in batch {
            let entry = AuditEntry::decode(&encoding)
                .map_err(|e| VerifyFailure::Input(format!("entry {count}: {e}")))?;
            count += 1;
            write_entry(out, format, &entry, &encoding, count, &mut pending).map_err(io)?;
        }
    }
}

fn write_entry<'a>(
    out: &mut dyn Write,
    format: ExportFormat,
    entry: &AuditEntry,
    encoding: &[u8],
    count: u64,
    checkpoints: &mut std::iter::Peekable<std::slice::Iter<'a, crate::SignedCheckpoint>>,
) -> std::io::Result<()> {
    match format {
        ExportFormat::JsonLines => {
            writeln!(out, "{}", entry_line(entry, encoding))?;
            while let Some(c) = checkpoints.next_if(|c| c.checkpoint.size <= count) {
                let line = json!({"type": "checkpoint", "size": c.checkpoint.size, "note": c.note});
                writeln!(out, "{line}")?;
            }
        }
        ExportFormat::Csv => {
            let v = readable(entry);
            let row: Vec<String> = CSV_COLUMNS.iter().map(|c| csv_cell(&v[*c])).collect();
            writeln!(out, "{}", row.join(","))?;
        }
    }
    Ok(())
}

/// Verifies a JSON Lines export with the broker's verifier key, and that
/// every entry's readable fields are those of its signed encoding.
pub fn verify_export(
    input: &mut dyn BufRead,
    key: &NoteVerifier,
) -> Result<VerifyReport, VerifyFailure> {
    verify_export_trusting(input, key, &TrustPolicy::default())
}

/// [`verify_export`], against what auditors saw.
pub fn verify_export_trusting(
    input: &mut dyn BufRead,
    key: &NoteVerifier,
    policy: &TrustPolicy,
) -> Result<VerifyReport, VerifyFailure> {
    let mut lines = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(|e| VerifyFailure::NotChecked(format!("read the export: {e}")))?;
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| VerifyFailure::Input(format!("line {}: not JSON: {e}", i + 1)))?;
        lines.push(v);
    }
    match lines.first().and_then(|h| h["format"].as_str()) {
        Some("semel-audit-export/1") => {}
        Some(EXCERPT_FORMAT) => return verify_excerpt(&lines, key, policy),
        _ => {
            return Err(VerifyFailure::NotChecked(
                "not a Semel audit export (semel-audit-export/1 or semel-audit-excerpt/1)".into(),
            ));
        }
    }
    let notes: Vec<String> = lines
        .iter()
        .filter(|v| v["type"] == "checkpoint")
        .filter_map(|v| v["note"].as_str().map(str::to_owned))
        .collect();
    let mut verifier = LogVerifier::trusting(&notes, key, &policy.checkpoints(key)?)?;
    push_lines(&mut verifier, &lines)?;
    verifier.finish()
}

/// The format of an excerpt: the entries a query matched (the web
/// console's export), each with its inclusion proof in the tree of one
/// signed checkpoint, named in the header.
pub const EXCERPT_FORMAT: &str = "semel-audit-excerpt/1";

/// Verifies an excerpt: the checkpoint's signature, then for each entry that
/// its readable fields are those of its encoding and that the encoding is
/// leaf `sequence` of the checkpoint's tree. Entries left out are not
/// vouched for (an excerpt proves what it holds, not that it is complete).
///
/// An excerpt holds one checkpoint: it is checked against the witnesses
/// (their quorum of cosignatures on it), but checkpoints an auditor kept
/// (`--trusted`) need the whole log to be reached, so they are refused here
/// rather than silently not checked.
fn verify_excerpt(
    lines: &[Value],
    key: &NoteVerifier,
    policy: &TrustPolicy,
) -> Result<VerifyReport, VerifyFailure> {
    if !policy.trusted.is_empty() {
        return Err(VerifyFailure::NotChecked(
            "an excerpt proves its entries against its own checkpoint; checkpoints you kept (--trusted) are checked against a whole log (semel audit export)".into(),
        ));
    }
    let note = lines[0]["checkpoint"]
        .as_str()
        .ok_or_else(|| VerifyFailure::Input("the excerpt names no checkpoint".into()))?;
    let size = first_number(note);
    let checkpoint = key.verify(note).map_err(|e| VerifyFailure::Checkpoint {
        size,
        why: e.to_string(),
    })?;
    policy.cosigned(note, size, "the excerpt's checkpoint")?;
    let mut entries = 0u64;
    for (i, v) in lines.iter().enumerate().skip(1) {
        let sequence = v["sequence"].as_u64().unwrap_or(u64::MAX);
        let failure = |why: String| VerifyFailure::Entry { sequence, why };
        if v["type"] != "entry" {
            return Err(VerifyFailure::Input(format!(
                "line {}: an excerpt holds entries only",
                i + 1
            )));
        }
        let encoding = v["encoding"]
            .as_str()
            .and_then(b64::decode)
            .ok_or_else(|| failure("its encoding is missing or not base64".into()))?;
        let entry = AuditEntry::decode(&encoding).map_err(|e| failure(e.to_string()))?;
        let proof = v["proof"]
            .as_array()
            .map(|p| {
                p.iter()
                    .map(|h| {
                        h.as_str()
                            .and_then(b64::decode)
                            .and_then(|b| <Hash>::try_from(b.as_slice()).ok())
                    })
                    .collect::<Option<Vec<Hash>>>()
            })
            .and_then(|p| p)
            .ok_or_else(|| failure("its inclusion proof is missing or malformed".into()))?;
        if entry.sequence != sequence {
            return Err(failure(format!(
                "its encoding is entry {}: the excerpt was altered",
                entry.sequence
            )));
        }
        if !semel_core::merkle::verify_inclusion(
            &entry_hash(&encoding),
            sequence,
            checkpoint.size,
            &proof,
            &checkpoint.root,
        ) {
            return Err(failure(format!(
                "its inclusion proof does not lead to the root of the signed checkpoint of {} entries: the entry or the proof was altered",
                checkpoint.size
            )));
        }
        if let Some(field) = altered_field(v, &entry, &["type", "encoding", "proof"], &[]) {
            return Err(failure(format!(
                "its readable field {field} differs from its signed encoding: the excerpt was altered"
            )));
        }
        entries += 1;
    }
    Ok(VerifyReport {
        entries,
        checkpoints: 1,
        last_checkpoint: Some(checkpoint.size),
        root: checkpoint.root,
        trusted: 0,
        excerpt: true,
        epoch: None,
    })
}

#[cfg(test)]
mod tampering {
    //! Change a byte, delete an entry, reorder two, truncate: verification
    //! fails every time and says where.

    use super::*;
    use crate::{CheckpointSettings, Store};
    use semel_core::checkpoint::NoteSigner;

    const HEADER: usize = 8;

    fn signer() -> NoteSigner {
        NoteSigner::new(
            "semel.test/audit",
            ed25519_dalek::SigningKey::from_bytes(&[3; 32]),
        )
    }

    fn key() -> NoteVerifier {
        NoteVerifier::parse(&signer().verifier_key()).expect("key")
    }

    /// A test entry about Karim.
    pub(super) fn record(i: u64) -> semel_core::AuditRecord {
        crate::audit::tests::record(i as u8, Some("93051822361"))
    }

    /// A closed store of 20 entries, checkpoints every 4.
    fn log() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_with(
            dir.path(),
            Some(CheckpointSettings {
                signer: signer(),
                every_entries: 4,
                every: std::time::Duration::from_secs(3600),
            }),
        )
        .expect("open");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        for i in 0..20 {
            rt.block_on(store.audit().append(record(i)))
                .expect("append");
            // The checkpointer runs on its own thread: wait for each
            // checkpoint due, so that the log holds one per four entries
            // however loaded the machine (a test saw two under load).
            if (i + 1) % 4 == 0 {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                while store
                    .audit()
                    .latest_checkpoint()
                    .is_none_or(|c| c.checkpoint.size < i + 1)
                {
                    assert!(std::time::Instant::now() < deadline, "no checkpoint signed");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
        store.close().expect("close");
        dir
    }

    /// An excerpt of some entries of `log()`, as the console writes one.
    fn excerpt(sequences: &[u64]) -> Vec<Value> {
        let dir = log();
        let store = Store::open_with(dir.path(), None).expect("open");
        let audit = store.audit();
        let checkpoint = audit.latest_checkpoint().expect("checkpoint");
        let mut lines = vec![json!({
            "format": EXCERPT_FORMAT,
            "checkpoint": checkpoint.note,
        })];
        for &seq in sequences {
            let (stored, proof) = audit
                .inclusion_proof(seq, checkpoint.checkpoint.size)
                .expect("proof");
            let encoding = stored.entry.to_bytes();
            let mut v = readable(&stored.entry);
            v["type"] = json!("entry");
            v["encoding"] = json!(b64::encode(&encoding));
            v["proof"] = json!(proof.iter().map(|h| b64::encode(h)).collect::<Vec<_>>());
            lines.push(v);
        }
        store.close().expect("close");
        lines
    }

    fn verify_lines(lines: &[Value]) -> Result<VerifyReport, VerifyFailure> {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        verify_export(&mut text.as_bytes(), &key())
    }

    /// The encodings of `records`, chained from the start.
    fn chained(records: Vec<semel_core::AuditRecord>) -> Vec<Vec<u8>> {
        let mut previous = ZERO_HASH;
        records
            .into_iter()
            .enumerate()
            .map(|(i, record)| {
                let bytes = AuditEntry {
                    sequence: i as u64,
                    previous_hash: previous,
                    record,
                    format: semel_core::FORMAT,
                }
                .to_bytes();
                previous = entry_hash(&bytes);
                bytes
            })
            .collect()
    }

    fn epoch_record(origin: &str, held: u64) -> semel_core::AuditRecord {
        let note = NoteSigner::new(origin, ed25519_dalek::SigningKey::from_bytes(&[3; 32])).sign(
            &Checkpoint {
                origin: origin.into(),
                size: 40,
                root: [5; 32],
            },
        );
        let mut r = record(0);
        r.citizen = None;
        r.operation = semel_core::epoch::NEW_EPOCH_OPERATION.into();
        r.detail = semel_core::epoch::EpochStatement::new(&note, held)
            .expect("statement")
            .to_detail();
        r
    }

    fn verify_encodings(encodings: &[Vec<u8>]) -> Result<VerifyReport, VerifyFailure> {
        let mut v = LogVerifier::new(&[], &key())?;
        for e in encodings {
            v.push(e)?;
        }
        v.finish()
    }

    #[test]
    fn a_new_epoch_is_stated_by_the_first_entry_only_and_about_another_origin() {
        // The first entry: reported, with the previous checkpoint checked
        // under this log's key.
        let log = chained(vec![epoch_record("semel.test/audit/old", 31), record(1)]);
        let report = verify_encodings(&log).expect("verifies");
        let epoch = report.epoch.expect("an epoch");
        assert_eq!(epoch.statement.lost(), 31..40);
        assert!(epoch.same_key);
        // Anywhere else: a failure, naming the entry.
        let log = chained(vec![record(0), epoch_record("semel.test/audit/old", 31)]);
        match verify_encodings(&log) {
            Err(VerifyFailure::Entry { sequence: 1, why }) => {
                assert!(why.contains("first entry"), "{why}")
            }
            other => panic!("an epoch statement in the middle of a log: {other:?}"),
        }
        // About this log's own origin: a fork dressed as an epoch.
        let log = chained(vec![epoch_record("semel.test/audit", 31)]);
        assert!(matches!(
            verify_encodings(&log),
            Err(VerifyFailure::Entry { sequence: 0, .. })
        ));
        // A statement that does not hold together.
        let mut r = epoch_record("semel.test/audit/old", 31);
        r.detail = r.detail.replace("previous size: 40", "previous size: 41");
        let log = chained(vec![r]);
        assert!(matches!(
            verify_encodings(&log),
            Err(VerifyFailure::Entry { sequence: 0, .. })
        ));
    }

    #[test]
    fn an_excerpt_proves_its_entries_and_refuses_any_change() {
        let lines = excerpt(&[17, 3, 0]);
        let report = verify_lines(&lines).expect("verifies");
        assert!(report.excerpt);
        assert_eq!((report.entries, report.last_checkpoint), (3, Some(20)));
        // A readable field changed.
        let mut altered = lines.clone();
        altered[1]["purpose"] = json!("SOMETHING_ELSE");
        let err = verify_lines(&altered).expect_err("altered field");
        assert!(err.to_string().contains("purpose"), "{err}");
        // A proof hash changed.
        let mut altered = lines.clone();
        let mut hash = altered[2]["proof"][0]
            .as_str()
            .and_then(b64::decode)
            .expect("a proof hash");
        hash[0] ^= 1;
        altered[2]["proof"][0] = json!(b64::encode(&hash));
        let err = verify_lines(&altered).expect_err("altered proof");
        assert!(err.to_string().contains("inclusion proof"), "{err}");
        // An entry given another place.
        let mut altered = lines.clone();
        altered[3]["sequence"] = json!(1);
        assert!(verify_lines(&altered).is_err());
        // A checkpoint signed by another key.
        let mut altered = lines;
        let other = NoteSigner::new(
            "semel.test/audit",
            ed25519_dalek::SigningKey::from_bytes(&[4; 32]),
        );
        altered[0]["checkpoint"] = json!(other.sign(&Checkpoint {
            origin: "semel.test/audit".into(),
            size: 20,
            root: [0; 32],
        }));
        let err = verify_lines(&altered).expect_err("other key");
        assert!(matches!(err, VerifyFailure::Checkpoint { .. }), "{err}");
    }

    #[test]
    fn an_excerpt_honours_the_witnesses_and_refuses_kept_checkpoints() {
        use semel_core::checkpoint::{CosignatureVerifier, Cosigner};
        let lines = excerpt(&[5]);
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let witness = Cosigner::new(
            "witness.test",
            ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
        );
        let policy = |quorum| TrustPolicy {
            trusted: Vec::new(),
            witnesses: vec![CosignatureVerifier::parse(&witness.verifier_key()).expect("vkey")],
            quorum,
        };
        // Not cosigned: a quorum of one refuses it.
        let err = verify_export_trusting(&mut text.as_bytes(), &key(), &policy(1))
            .expect_err("no cosignature");
        assert!(err.to_string().contains("cosignatures"), "{err}");
        // Cosigned: accepted.
        let note = lines[0]["checkpoint"].as_str().expect("note");
        let cp = Checkpoint::of_note(note).expect("checkpoint");
        let cosigned = format!("{note}{}", witness.cosign(&cp, 1_767_225_600));
        let mut with = lines.clone();
        with[0]["checkpoint"] = json!(cosigned);
        let text: String = with.iter().map(|l| format!("{l}\n")).collect();
        verify_export_trusting(&mut text.as_bytes(), &key(), &policy(1)).expect("cosigned");
        // One witness given twice is one witness: a quorum of two is not met.
        let twice = TrustPolicy {
            witnesses: vec![
                CosignatureVerifier::parse(&witness.verifier_key()).expect("vkey"),
                CosignatureVerifier::parse(&witness.verifier_key()).expect("vkey"),
            ],
            ..policy(2)
        };
        let err = verify_export_trusting(&mut text.as_bytes(), &key(), &twice)
            .expect_err("one witness twice");
        assert!(err.to_string().contains("cosignatures"), "{err}");
        // Checkpoints an auditor kept need the whole log.
        let kept = TrustPolicy {
            trusted: vec![note.to_owned()],
            ..TrustPolicy::default()
        };
        let err = verify_export_trusting(&mut text.as_bytes(), &key(), &kept)
            .expect_err("kept checkpoints");
        assert!(err.to_string().contains("--trusted"), "{err}");
    }

    /// The frames of the log: (offset, total length).
    fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + HEADER <= bytes.len() {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
            if len == 0 {
                break;
            }
            out.push((at, HEADER + len));
            at += HEADER + len;
        }
        out
    }

    fn tamper(dir: &Path, f: impl FnOnce(&mut Vec<u8>)) -> Result<VerifyReport, VerifyFailure> {
        let path = dir.join("audit/log");
        let mut bytes = std::fs::read(&path).expect("read");
        f(&mut bytes);
        std::fs::write(&path, bytes).expect("write");
        verify_dir(&dir.join("audit"), &key())
    }

    /// Rewrites a frame's checksum, as a careful forger would.
    fn fix_crc(bytes: &mut [u8], (at, len): (usize, usize)) {
        let crc = crc32fast::hash(&bytes[at + HEADER..at + len]);
        bytes[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
    }

    fn entry_failure(r: Result<VerifyReport, VerifyFailure>) -> (u64, String) {
        match r {
            Err(VerifyFailure::Entry { sequence, why }) => (sequence, why),
            other => panic!("expected an entry to be named, got {other:?}"),
        }
    }

    #[test]
    fn an_untouched_log_verifies() {
        let dir = log();
        let report = verify_dir(&dir.path().join("audit"), &key()).expect("verifies");
        assert_eq!((report.entries, report.last_checkpoint), (20, Some(20)));
        assert!(report.checkpoints >= 4, "{report:?}");
        // With another key, nothing verifies.
        let other = NoteSigner::new(
            "semel.test/audit",
            ed25519_dalek::SigningKey::from_bytes(&[4; 32]),
        );
        let other = NoteVerifier::parse(&other.verifier_key()).expect("key");
        assert!(matches!(
            verify_dir(&dir.path().join("audit"), &other),
            Err(VerifyFailure::Checkpoint { .. })
        ));
    }

    #[test]
    fn a_changed_byte_is_found_in_its_entry() {
        let dir = log();
        let r = tamper(dir.path(), |b| {
            let (at, _) = frames(b)[7];
            b[at + HEADER + 40] ^= 1;
        });
        let (seq, why) = entry_failure(r);
        assert_eq!(seq, 7, "{why}");
        assert!(why.contains("checksum"), "{why}");
    }

    #[test]
    fn a_changed_byte_with_a_forged_checksum_is_found_in_its_entry() {
        let dir = log();
        let r = tamper(dir.path(), |b| {
            let frame = frames(b)[7];
            // The purpose's last letter: still a valid entry.
            let text = b"RIS_ELIGIBILITY";
            let at = b[frame.0..frame.0 + frame.1]
                .windows(text.len())
                .position(|w| w == text)
                .expect("purpose")
                + frame.0
                + text.len()
                - 1;
            b[at] = b'X';
            fix_crc(b, frame);
        });
        let (seq, why) = entry_failure(r);
        assert_eq!(seq, 7, "{why}");
        assert!(why.contains("altered"), "{why}");
    }

    #[test]
    fn the_last_entry_changed_is_caught_by_its_checkpoint() {
        let dir = log();
        let r = tamper(dir.path(), |b| {
            let frame = *frames(b).last().expect("frames");
            let at = frame.0 + HEADER + 30;
            b[at] ^= 1;
            fix_crc(b, frame);
        });
        match r {
            Err(VerifyFailure::Checkpoint { size, why }) => {
                assert_eq!(size, 20, "{why}");
                assert!(why.contains("to 19 was altered"), "{why}");
            }
            // A byte that no longer decodes is named at once.
            Err(VerifyFailure::Entry { sequence, .. }) => assert_eq!(sequence, 19),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_deleted_entry_is_named() {
        let dir = log();
        let r = tamper(dir.path(), |b| {
            let (at, len) = frames(b)[5];
            b.drain(at..at + len);
        });
        let (seq, why) = entry_failure(r);
        assert_eq!(seq, 5, "{why}");
        assert!(why.contains("removed or reordered"), "{why}");
    }

    #[test]
    fn two_reordered_entries_are_named() {
        let dir = log();
        let r = tamper(dir.path(), |b| {
            let f = frames(b);
            let (a, b_) = (f[9], f[10]);
            let first = b[a.0..a.0 + a.1].to_vec();
            let second = b[b_.0..b_.0 + b_.1].to_vec();
            let mut swapped = second;
            swapped.extend_from_slice(&first);
            b.splice(a.0..b_.0 + b_.1, swapped);
        });
        let (seq, why) = entry_failure(r);
        assert_eq!(seq, 9, "{why}");
    }

    #[test]
    fn a_truncated_log_is_caught_by_its_last_checkpoint() {
        let dir = log();
        let r = tamper(dir.path(), |b| {
            let (at, _) = frames(b)[15];
            b.truncate(at);
        });
        match r {
            Err(VerifyFailure::Checkpoint { size, why }) => {
                // The first checkpoint beyond the 15 entries left.
                assert!(size > 15, "{why}");
                assert!(why.contains("ends after 15"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stripped_checkpoints_hide_nothing_from_an_auditor_who_kept_one() {
        use semel_core::checkpoint::{CosignatureVerifier, Cosigner};
        let dir = log();
        let mut out = Vec::new();
        export(
            &dir.path().join("audit"),
            ExportFormat::JsonLines,
            Some(&signer().verifier_key()),
            &mut out,
            &mut |_, _| {},
        )
        .expect("export");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        // What an auditor kept: the newest checkpoint, cosigned by a witness.
        let newest = lines
            .iter()
            .rev()
            .find(|v| v["type"] == "checkpoint")
            .and_then(|v| v["note"].as_str())
            .expect("a checkpoint")
            .to_owned();
        let checkpoint = key().verify(&newest).expect("the log's note");
        assert_eq!(checkpoint.size, 20);
        let witness = Cosigner::new(
            "witness.test/w1",
            ed25519_dalek::SigningKey::from_bytes(&[4; 32]),
        );
        let cosigned = format!("{newest}{}", witness.cosign(&checkpoint, 1_700_000_000));
        let trusting = |notes: Vec<String>, quorum: usize| TrustPolicy {
            trusted: notes,
            witnesses: vec![CosignatureVerifier::parse(&witness.verifier_key()).expect("vkey")],
            quorum,
        };
        // The operator removes the last three entries and every checkpoint.
        let cut: String = lines
            .iter()
            .filter(|v| v["type"] != "checkpoint")
            .filter(|v| v["type"] != "entry" || v["sequence"].as_u64().is_some_and(|s| s < 17))
            .map(|v| format!("{v}\n"))
            .collect();
        let alone = verify_export(&mut cut.as_bytes(), &key()).expect("nothing to compare with");
        assert_eq!(alone.entries, 17);
        assert_eq!(alone.last_checkpoint, None, "and it says so: no checkpoint");
        match verify_export_trusting(
            &mut cut.as_bytes(),
            &key(),
            &trusting(vec![cosigned.clone()], 1),
        ) {
            Err(VerifyFailure::Checkpoint { size, why }) => {
                assert_eq!(size, 20);
                assert!(why.contains("ends after 17"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // The untouched export reaches the trusted checkpoint.
        let r = verify_export_trusting(
            &mut text.as_bytes(),
            &key(),
            &trusting(vec![cosigned.clone()], 1),
        )
        .expect("verifies");
        assert_eq!(r.trusted, 1);
        // A trusted checkpoint without the required cosignature is refused.
        match verify_export_trusting(
            &mut text.as_bytes(),
            &key(),
            &trusting(vec![newest.clone()], 1),
        ) {
            Err(VerifyFailure::Checkpoint { why, .. }) => {
                assert!(why.contains("cosignatures"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        // A split view: the log signed another root at the trusted size.
        let other = signer().sign(&semel_core::checkpoint::Checkpoint {
            root: [9; 32],
            ..checkpoint.clone()
        });
        match verify_export_trusting(&mut text.as_bytes(), &key(), &trusting(vec![other], 0)) {
            Err(VerifyFailure::Checkpoint { why, .. }) => {
                assert!(why.contains("different histories"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_export_verifies_and_an_edited_one_does_not() {
        let dir = log();
        let mut out = Vec::new();
        let n = export(
            &dir.path().join("audit"),
            ExportFormat::JsonLines,
            Some(&signer().verifier_key()),
            &mut out,
            &mut |_, _| {},
        )
        .expect("export");
        assert_eq!(n, 20);
        let report = verify_export(&mut out.as_slice(), &key()).expect("verifies");
        assert_eq!(report.entries, 20);
        assert!(report.checkpoints >= 4);
        // Someone changes the citizen shown in entry 3.
        let text = String::from_utf8(out.clone()).expect("utf8");
        let edited: String = text
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i == 4 {
                    l.replace("93051822361", "85073003328")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        match verify_export(&mut edited.as_bytes(), &key()) {
            Err(VerifyFailure::Entry { sequence, why }) => {
                assert_eq!(sequence, 3);
                assert!(why.contains("citizen"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // An export made before entries showed their questions and detail
        // lacks those fields: it still verifies. A changed question does not.
        let edit_line = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
            text.lines()
                .enumerate()
                .map(|(i, l)| {
                    let mut v: Value = serde_json::from_str(l).expect("json");
                    if i == 4
                        && let Some(o) = v.as_object_mut()
                    {
                        f(o);
                    }
                    v.to_string()
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        let older = edit_line(&|o| {
            o.remove("checks");
            o.remove("detail");
            o.remove("authorisation_version");
        });
        verify_export(&mut older.as_bytes(), &key()).expect("an older export verifies");
        let asked = edit_line(&|o| {
            o.insert("checks".into(), json!(["nis_code = \"21015\": YES"]));
        });
        match verify_export(&mut asked.as_bytes(), &key()) {
            Err(VerifyFailure::Entry { sequence, why }) => {
                assert_eq!(sequence, 3);
                assert!(why.contains("checks"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // CSV is for reading.
        let mut csv = Vec::new();
        export(
            &dir.path().join("audit"),
            ExportFormat::Csv,
            None,
            &mut csv,
            &mut |_, _| {},
        )
        .expect("csv");
        let csv = String::from_utf8(csv).expect("utf8");
        assert_eq!(csv.lines().count(), 21);
        assert!(csv.starts_with("sequence,time_micros,operation"));
        assert!(
            csv.lines()
                .next()
                .is_some_and(|h| h.ends_with(",checks,detail"))
        );
    }

    #[test]
    fn csv_cells_never_read_as_formulas() {
        for (v, cell) in [
            (
                json!("=HYPERLINK(\"http://x\")"),
                "\"'=HYPERLINK(\"\"http://x\"\")\"",
            ),
            (json!("+1"), "'+1"),
            (json!("-2"), "'-2"),
            (json!("@SUM(A1)"), "'@SUM(A1)"),
            (json!("RIS_ELIGIBILITY"), "RIS_ELIGIBILITY"),
            (json!(["a < 1: YES", "b = 2: NO"]), "a < 1: YES; b = 2: NO"),
        ] {
            assert_eq!(csv_cell(&v), cell, "{v}");
        }
    }
}

#[cfg(test)]
mod archiving {
    //! Old entries move to archive files; the log stays verifiable across
    //! the archive and the live store, and queries say what is archived.

    use super::*;
    use crate::{AuditQuery, CheckpointSettings, Store, StoreError};
    use semel_core::checkpoint::NoteSigner;

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
}
