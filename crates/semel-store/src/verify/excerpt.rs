//! Verifying an excerpt: some entries, each proven by its inclusion proof in
//! the tree of one signed checkpoint.

use semel_core::checkpoint::{NoteVerifier, b64};
use semel_core::{AuditEntry, Hash, entry_hash};
use serde_json::Value;

use super::lines::altered_field;
use super::trust::first_number;
use super::{TrustPolicy, VerifyFailure, VerifyReport};

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
pub(super) fn verify_excerpt(
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
