//! The archive: a prefix of the log moved to `audit/archive/` with the
//! checkpoints that cover it, its space released in the log.

use super::*;

impl AuditLog {
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
}

/// The archive state in `audit/archived`; nothing archived when absent.
pub(crate) fn read_archive_state(dir: &Path) -> Result<ArchiveState, StoreError> {
    match std::fs::read(dir.join("archived")) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| corrupt(&format!("audit/archived: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ArchiveState::default()),
        Err(e) => Err(io_err("read audit/archived")(e)),
    }
}
