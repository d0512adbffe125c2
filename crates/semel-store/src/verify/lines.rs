//! Verifying JSON Lines (an export, an archive file): each entry pushed into
//! the verifier, and its readable fields held to its signed encoding.

use std::io::BufRead;

use semel_core::AuditEntry;
use semel_core::checkpoint::{NoteVerifier, b64};
use serde_json::Value;

use super::excerpt::{EXCERPT_FORMAT, verify_excerpt};
use super::store::FRAME_HEADER;
use super::{LogVerifier, TrustPolicy, VerifyFailure, VerifyReport};
use crate::entry_lines::readable;

/// Pushes the entries of parsed JSON Lines into the verifier, checking
/// that each readable field is its signed encoding's.
/// Returns the bytes those entries took in the log (their frames).
pub(super) fn push_lines(
    verifier: &mut LogVerifier,
    lines: &[Value],
) -> Result<u64, VerifyFailure> {
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
pub(super) fn altered_field(
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
