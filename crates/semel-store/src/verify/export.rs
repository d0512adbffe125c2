//! Writing an export of the log, in JSON Lines (verifiable) or CSV (for
//! spreadsheets), from a store's directory or from entries read elsewhere.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use semel_core::AuditEntry;
use semel_core::checkpoint::b64;
use serde_json::{Value, json};

use super::VerifyFailure;
use super::store::{FRAME_HEADER, archive_files};
use crate::audit::{read_checkpoints, scan};
use crate::entry_lines::{entry_line, readable};

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object a line: a header, entries (readable fields and the
    /// canonical encoding) and the signed checkpoints after the entry that
    /// completes them. Verifiable with [`verify_export`](super::verify_export).
    JsonLines,
    /// One row per entry, readable fields only, for spreadsheets.
    Csv,
}

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

pub(super) fn csv_cell(v: &Value) -> String {
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
