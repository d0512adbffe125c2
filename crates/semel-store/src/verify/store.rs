//! Reading a store's audit directory: its archive files, its log and its
//! checkpoints, verified; its origin and its own verifier key.

use std::fs::File;
use std::path::Path;

use semel_core::checkpoint::NoteVerifier;
use serde_json::Value;

use super::lines::push_lines;
use super::{LogVerifier, TrustPolicy, VerifyFailure, VerifyReport};
use crate::audit::{Tail, read_checkpoints, scan, tail_kind};

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

/// The archive files of an audit directory, oldest first, as parsed lines.
pub(super) fn archive_files(audit_dir: &Path) -> Result<Vec<Vec<Value>>, VerifyFailure> {
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

/// A log frame's header: u32 length, u32 CRC-32.
pub(super) const FRAME_HEADER: usize = 8;
