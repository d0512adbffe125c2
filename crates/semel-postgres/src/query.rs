//! Audit queries and kept checkpoints on PostgreSQL. Queries read newest
//! first by sequence through the citizen or consumer index when the query
//! names one (the indexes an auditor's and a citizen's queries use), and
//! check every other filter on the decoded entry, as the embedded store
//! does: the columns only find entries, the encoding is the truth.

use semel_core::checkpoint::Checkpoint;
use semel_core::{AuditEntry, entry_hash};
use semel_storage::{AuditPage, AuditQuery, SignedCheckpoint, StoredEntry};
use tokio_postgres::types::ToSql;

use crate::{PgAudit, PgError};

/// Rows read per round trip while filtering.
const PAGE: i64 = 512;

impl PgAudit {
    /// Entries matching `query`, newest first, at most `query.limit`.
    pub async fn query(&self, query: &AuditQuery) -> Result<Vec<StoredEntry>, PgError> {
        Ok(self.query_page(query).await?.entries)
    }

    /// The time of an entry, read from its encoding (the columns only find
    /// entries), with its sequence: the first entry at or after `sequence`.
    async fn time_at(&self, sequence: i64) -> Result<Option<(i64, i64)>, PgError> {
        let Some(row) = self
            .conn
            .client
            .query_opt(
                "SELECT sequence, encoding FROM audit_entries WHERE sequence >= $1 \
                 ORDER BY sequence LIMIT 1",
                &[&sequence],
            )
            .await?
        else {
            return Ok(None);
        };
        let found: i64 = row.get(0);
        let encoding: &[u8] = row.get(1);
        let entry = AuditEntry::decode(encoding)
            .map_err(|e| PgError::Corrupt(format!("audit entry {found} cannot be decoded: {e}")))?;
        Ok(Some((found, entry.record.time_micros)))
    }

    /// [`Self::query`] within the query's scan limit, starting below the
    /// newest entry that can match its `until`: found by bisection over the
    /// sequence (the primary key), a few dozen lookups at most.
    pub async fn query_page(&self, query: &AuditQuery) -> Result<AuditPage, PgError> {
        let mut out = AuditPage::default();
        if query.limit == 0 {
            return Ok(out);
        }
        let citizen = query.citizen.map(|c| c.as_str().to_owned());
        let consumer = query.consumer.map(|c| c.as_str().to_owned());
        let mut before = query
            .before_sequence
            .unwrap_or(u64::MAX)
            .min(i64::MAX as u64) as i64;
        if let Some(t) = query.until_seek_time() {
            let (mut low, mut high) = (0i64, before);
            while low < high {
                let middle = low + (high - low) / 2;
                match self.time_at(middle).await? {
                    Some((found, time)) if found < high => {
                        if time >= t {
                            high = found;
                        } else {
                            low = found + 1;
                        }
                    }
                    // Nothing from the middle up to the bound.
                    _ => high = middle,
                }
            }
            before = low;
        }
        let budget = query.scan_limit.unwrap_or(usize::MAX);
        loop {
            let rows_wanted = (budget - out.examined).min(PAGE as usize) as i64;
            let mut sql =
                String::from("SELECT sequence, encoding FROM audit_entries WHERE sequence < $1");
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&before];
            if let Some(c) = &citizen {
                params.push(c);
                sql += &format!(
                    " AND (citizen = ${n} OR citizen_as_given = ${n})",
                    n = params.len()
                );
            }
            if let Some(k) = &consumer {
                params.push(k);
                sql += &format!(" AND consumer = ${}", params.len());
            }
            sql += &format!(" ORDER BY sequence DESC LIMIT {rows_wanted}");
            let rows = self.conn.client.query(sql.as_str(), &params).await?;
            let read = rows.len() as i64;
            for row in rows {
                let sequence: i64 = row.get(0);
                let encoding: &[u8] = row.get(1);
                let entry = AuditEntry::decode(encoding).map_err(|e| {
                    PgError::Corrupt(format!("audit entry {sequence} cannot be decoded: {e}"))
                })?;
                if entry.sequence != sequence as u64 {
                    return Err(PgError::Corrupt(format!(
                        "the row of entry {sequence} holds entry {}",
                        entry.sequence
                    )));
                }
                out.examined += 1;
                before = sequence;
                if query.past_since(&entry.record) {
                    return Ok(out);
                }
                if query.matches(&entry.record) {
                    out.entries.push(StoredEntry {
                        hash: entry_hash(encoding),
                        entry,
                    });
                    if out.entries.len() >= query.limit {
                        return Ok(out);
                    }
                }
            }
            if read < rows_wanted {
                return Ok(out);
            }
            if out.examined >= budget {
                // The budget is spent with the page not full: go on below
                // the last entry read (nowhere, when it was the first).
                out.resume_before = (before > 0).then_some(before as u64);
                return Ok(out);
            }
        }
    }

    /// The signed checkpoints of at most `size` entries (the newest tree
    /// size confirmed replicated), oldest first.
    pub async fn checkpoints(&self, size: u64) -> Result<Vec<SignedCheckpoint>, PgError> {
        let rows = self
            .conn
            .client
            .query(
                "SELECT note FROM audit_checkpoints WHERE size <= $1 ORDER BY size",
                &[&(size.min(i64::MAX as u64) as i64)],
            )
            .await?;
        rows.into_iter().map(|r| signed(r.get(0))).collect()
    }

    /// Keeps a checkpoint's cosigned note with the checkpoint it cosigns.
    pub async fn set_cosigned(&self, note: &str) -> Result<(), PgError> {
        let size = signed(note.to_owned())?.checkpoint.size;
        let n = self
            .conn
            .client
            .execute(
                "UPDATE audit_checkpoints SET cosigned = $2 WHERE size = $1",
                &[&(size as i64), &note],
            )
            .await?;
        if n == 0 {
            return Err(PgError::OutOfRange(format!(
                "no checkpoint of size {size} was signed here"
            )));
        }
        Ok(())
    }

    /// The newest cosigned note.
    pub async fn cosigned(&self) -> Result<Option<String>, PgError> {
        Ok(self
            .conn
            .client
            .query_opt(
                "SELECT cosigned FROM audit_checkpoints WHERE cosigned IS NOT NULL \
                 ORDER BY size DESC LIMIT 1",
                &[],
            )
            .await?
            .map(|r| r.get(0)))
    }
}

/// A kept note with its checkpoint read from the body.
pub(crate) fn signed(note: String) -> Result<SignedCheckpoint, PgError> {
    let checkpoint = Checkpoint::of_note(&note)
        .map_err(|e| PgError::Corrupt(format!("a kept checkpoint: {e}")))?;
    Ok(SignedCheckpoint { checkpoint, note })
}
