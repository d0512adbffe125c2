//! What the database cannot make the log say (issue 36): the rows are not
//! trusted, their signed encodings are.
//!
//! - [`check_row`]: a row's query columns (citizen, number as given,
//!   consumer, time) are those of its decoded entry, and the entry carries
//!   the row's key as its sequence. A column that disagrees could hide an
//!   entry from the citizen's or an auditor's search (`citizen = NULL`).
//! - [`PgAudit::prove_start`]: at start, the newest checkpoint is the log's
//!   (its signature), the stored tree reproduces its root, the row of its
//!   last entry is the leaf it signed, and every entry since then chains
//!   to it, is the tree's leaf where integrated, and ends at the head.
//! - [`PgAudit::scrub`]: the whole log, a page at a time, checked the same
//!   way (columns, sequence, chain, leaves), for the background scrub and
//!   `semel audit verify --database`.
//!
//! Every failure is [`PgError::Corrupt`] (the database holds what the
//! brokers did not write), every other error is operational. Messages name
//! sequences and columns, never a national number.

use semel_core::checkpoint::NoteVerifier;
use semel_core::{AuditEntry, Hash, entry_hash};

use crate::{PgAudit, PgError};

/// Rows read per round trip by the proof and the scrub.
const PAGE: u64 = 1000;

/// The columns of an `audit_entries` row that queries read, as stored.
#[derive(Debug, Clone, Copy)]
pub struct RowColumns<'a> {
    pub sequence: i64,
    pub citizen: Option<&'a str>,
    pub citizen_as_given: Option<&'a str>,
    pub consumer: &'a str,
    pub time_micros: i64,
}

/// Checks that a row's key and query columns are those of its decoded
/// entry; the message says which column disagrees (never its value).
pub fn check_row(row: &RowColumns<'_>, entry: &AuditEntry) -> Result<(), String> {
    let r = &entry.record;
    let mut wrong = Vec::new();
    if u64::try_from(row.sequence).ok() != Some(entry.sequence) {
        wrong.push("sequence");
    }
    if row.citizen != r.citizen.as_ref().map(|c| c.as_str()) {
        wrong.push("citizen");
    }
    if row.citizen_as_given != r.citizen_as_given.as_ref().map(|c| c.as_str()) {
        wrong.push("citizen_as_given");
    }
    if row.consumer != r.consumer.as_str() {
        wrong.push("consumer");
    }
    if row.time_micros != r.time_micros {
        wrong.push("time_micros");
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the row of entry {} holds {} other than its signed encoding's: the row was altered (a query by that column would miss or misplace the entry)",
            row.sequence,
            wrong.join(", ")
        ))
    }
}

/// What a check of a range of the log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scrubbed {
    /// Entries checked.
    pub entries: u64,
    /// The hash of the last entry checked (what the next one links to).
    pub last_hash: Hash,
    /// Their encodings, when asked for ([`PgAudit::checked_encodings`]).
    pub encodings: Vec<Vec<u8>>,
}

/// What the start-up proof checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartProof {
    /// The newest checkpoint's size (0: none signed yet).
    pub checkpoint: u64,
    /// Entries in the log.
    pub entries: u64,
    /// Entries checked one by one (the tail since the checkpoint).
    pub tail: u64,
}

fn corrupt(why: String) -> PgError {
    PgError::Corrupt(why)
}

fn hash32(bytes: Vec<u8>, what: &str) -> Result<Hash, PgError> {
    bytes
        .try_into()
        .map_err(|_| corrupt(format!("{what} is not 32 bytes")))
}

impl PgAudit {
    /// Checks entries `from..to` (`to` at most the head): each row is
    /// present, decodes, carries its key as sequence and its entry's query
    /// columns, links to the one before (`previous`: the hash of entry
    /// `from - 1`, or `None` to take entry `from`'s link on trust), and
    /// is the tree's leaf where the tree holds it. One round trip per
    /// [`PAGE`] entries, on `client` (a transaction, or the connection).
    pub(crate) async fn check_range(
        client: &impl tokio_postgres::GenericClient,
        from: u64,
        to: u64,
        mut previous: Option<Hash>,
        tree_size: u64,
        keep: bool,
    ) -> Result<Scrubbed, PgError> {
        let mut at = from;
        let mut last_hash = previous.unwrap_or([0; 32]);
        let mut kept = Vec::new();
        while at < to {
            let end = to.min(at + PAGE);
            let rows = client
                .query(
                    "SELECT e.sequence, e.encoding, e.citizen, e.citizen_as_given, e.consumer, \
                            e.time_micros, t.hash \
                     FROM audit_entries e \
                     LEFT JOIN audit_tree t ON t.level = 0 AND t.index = e.sequence \
                         AND t.index >= $1 AND t.index < $2 \
                     WHERE e.sequence >= $1 AND e.sequence < $2 ORDER BY e.sequence",
                    &[&(at as i64), &(end as i64)],
                )
                .await?;
            for row in rows {
                let sequence: i64 = row.get(0);
                if sequence != at as i64 {
                    return Err(corrupt(format!(
                        "entry {at} is missing from audit_entries (the next row is {sequence}): an entry was deleted"
                    )));
                }
                let encoding: &[u8] = row.get(1);
                let entry = AuditEntry::decode(encoding)
                    .map_err(|e| corrupt(format!("entry {at} cannot be decoded: {e}")))?;
                check_row(
                    &RowColumns {
                        sequence,
                        citizen: row.get(2),
                        citizen_as_given: row.get(3),
                        consumer: row.get(4),
                        time_micros: row.get(5),
                    },
                    &entry,
                )
                .map_err(corrupt)?;
                if let Some(p) = previous
                    && entry.previous_hash != p
                {
                    return Err(corrupt(format!(
                        "entry {at} does not link to the entry before it: entry {} was altered, or entries were removed or reordered",
                        at.saturating_sub(1)
                    )));
                }
                let hash = entry_hash(encoding);
                match row.get::<_, Option<&[u8]>>(6) {
                    Some(leaf) if leaf != hash.as_slice() => {
                        return Err(corrupt(format!(
                            "entry {at} is not the entry the tree (and the checkpoints signed over it) recorded: it was altered"
                        )));
                    }
                    None if at < tree_size => {
                        return Err(corrupt(format!(
                            "the tree's leaf for entry {at} is missing: the tree was altered"
                        )));
                    }
                    _ => {}
                }
                previous = Some(hash);
                last_hash = hash;
                if keep {
                    kept.push(encoding.to_vec());
                }
                at += 1;
            }
            if at < end {
                return Err(corrupt(format!(
                    "entry {at} is missing from audit_entries: entries were deleted"
                )));
            }
        }
        Ok(Scrubbed {
            entries: to - from,
            last_hash,
            encodings: kept,
        })
    }

    /// Checks entries `from..to` against their columns, chain and leaves
    /// (see [`Self::check_range`]), linking entry `from` to entry
    /// `from - 1` as stored. For the scrub and `semel audit verify`.
    pub async fn scrub(&self, from: u64, to: u64) -> Result<Scrubbed, PgError> {
        self.scrub_keeping(from, to, false).await
    }

    /// The encodings of entries `from..to`, each checked as
    /// [`Self::scrub`] checks it: what `semel audit verify --database`
    /// reads.
    pub async fn checked_encodings(&self, from: u64, to: u64) -> Result<Vec<Vec<u8>>, PgError> {
        Ok(self.scrub_keeping(from, to, true).await?.encodings)
    }

    async fn scrub_keeping(&self, from: u64, to: u64, keep: bool) -> Result<Scrubbed, PgError> {
        let tree_size = self.tree_head().await?.size;
        let previous = if from == 0 {
            Some([0; 32])
        } else {
            let row = self
                .conn
                .client
                .query_opt(
                    "SELECT encoding FROM audit_entries WHERE sequence = $1",
                    &[&(from as i64 - 1)],
                )
                .await?
                .ok_or_else(|| {
                    corrupt(format!(
                        "entry {} is missing from audit_entries: an entry was deleted",
                        from - 1
                    ))
                })?;
            Some(entry_hash(row.get::<_, &[u8]>(0)))
        };
        Self::check_range(&self.conn.client, from, to, previous, tree_size, keep).await
    }

    /// The start-up proof, as the embedded store makes it: the newest
    /// checkpoint verifies with the log's key, the tree's stored nodes give
    /// its root, the row of its last entry is the leaf it covers, and every
    /// entry from there to the head links to the one before, carries its
    /// query columns, is the tree's leaf where integrated, and the head's
    /// hash is the last one's. Read in one snapshot (other brokers may be
    /// appending). A [`PgError::Corrupt`] says what was found and what to do.
    pub async fn prove_start(&self, key: &NoteVerifier) -> Result<StartProof, PgError> {
        self.prove(key).await.map_err(|e| match e {
            PgError::Corrupt(why) => corrupt(format!(
                "the audit log on PostgreSQL does not prove itself: {why}. \
                 Nothing was changed; the broker refuses to start rather than extend or sign it. \
                 Run `semel audit verify --database` with the log's verifier key to see the first \
                 entry that differs, and treat it as an incident (docs/operator-guide.md, \
                 \"The audit log refuses to start\")"
            )),
            e => e,
        })
    }

    /// The proof [`Self::prove_start`] makes, its failure said plainly
    /// (for `semel audit verify --database`).
    pub async fn prove(&self, key: &NoteVerifier) -> Result<StartProof, PgError> {
        let client = &self.conn.client;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let result = self.prove_in_snapshot(key).await;
        let _ = client.batch_execute("ROLLBACK").await;
        result
    }

    async fn prove_in_snapshot(&self, key: &NoteVerifier) -> Result<StartProof, PgError> {
        let client = &self.conn.client;
        let (size, head_hash) = self.head().await?;
        let tree = self.tree_head().await?;
        let beyond: Option<i64> = client
            .query_one("SELECT max(sequence) FROM audit_entries", &[])
            .await?
            .get(0);
        if let Some(max) = beyond
            && max >= size as i64
        {
            return Err(corrupt(format!(
                "audit_entries holds entry {max} but the head says the log holds {size}: the head was wound back"
            )));
        }
        if tree.size > size {
            return Err(corrupt(format!(
                "the tree holds {} entries but the log only {size}: acknowledged entries were removed and the head wound back",
                tree.size
            )));
        }
        let newest = client
            .query_opt(
                "SELECT size, root, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1",
                &[],
            )
            .await?;
        let (checkpoint, start, previous) = match newest {
            None => (0, 0, Some([0; 32])),
            Some(row) => {
                let note: String = row.get(2);
                let c = key.verify(&note).map_err(|e| {
                    corrupt(format!(
                        "the newest checkpoint does not verify with this broker's key {} ({e}): the checkpoints were altered, or this broker's audit.signing_key or origin is not the log's (every broker on one database uses the same)",
                        key.name()
                    ))
                })?;
                let n = c.size;
                let stored_size: i64 = row.get(0);
                let stored_root = hash32(row.get(1), "a checkpoint root")?;
                if stored_size != n as i64 || stored_root != c.root {
                    return Err(corrupt(format!(
                        "the newest checkpoint's row (size {stored_size}) does not say what its signed note says (size {n})"
                    )));
                }
                if size < n {
                    return Err(corrupt(format!(
                        "the newest signed checkpoint covers {n} entries but the log holds {size}: acknowledged entries were removed and the head wound back"
                    )));
                }
                if tree.size < n {
                    return Err(corrupt(format!(
                        "the newest signed checkpoint covers {n} entries but the tree holds {}: the tree was rolled back",
                        tree.size
                    )));
                }
                if self.root(n).await? != c.root {
                    return Err(corrupt(format!(
                        "the tree's stored nodes do not give the root the newest checkpoint (size {n}) signed: the tree was altered"
                    )));
                }
                // From the checkpoint's last entry: its row must be the
                // leaf it signed (the link before it is covered by the
                // root).
                (n, n.saturating_sub(1), None)
            }
        };
        let checked = Self::check_range(client, start, size, previous, tree.size, false).await?;
        if size > 0 && checked.last_hash != head_hash {
            return Err(corrupt(format!(
                "the head's last hash is not the hash of entry {}: the head or the last entry was altered",
                size - 1
            )));
        }
        Ok(StartProof {
            checkpoint,
            entries: size,
            tail: checked.entries,
        })
    }
}
