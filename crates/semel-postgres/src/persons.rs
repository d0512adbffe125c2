//! The persons directory, consents and number replacements on PostgreSQL,
//! behind the storage port ([`semel_storage::PersonsStore`]); the same
//! rules as the embedded store, held by the conformance suite.
//!
//! Replacements serialise on a table lock (they are rare, and a loop check
//! must see every other replacement made at the same time).

use crate::registry::{decode, encode};
use crate::{Conn, PgError, Pool, migrate};
use semel_core::persons::{MAX_REPLACEMENT_CHAIN, MAX_REPLACEMENT_WALK, Resolved};
use semel_core::seal::RowSealer;
use semel_core::{Consent, Kbo, Niss, NumberReplacement, PersonFile};
use semel_storage::{
    Appended, DirectoryPage, PersonsChange, PersonsChanges, PersonsStore, StorageError,
};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

mod resolution;

use resolution::{REPLACEMENTS, RESOLVE};

/// Connections to the persons directory per broker: every lookup reads it
/// (a number's resolution, the consumer's files, consents), so lookups must
/// not queue behind one connection.
const CONNECTIONS: usize = 4;

/// The most changes one read of the feed lists; a reader further behind
/// is told to forget everything instead.
const FEED_PAGE: i64 = 10_000;

/// How long the feed keeps a change: a broker that could not read it for
/// longer forgets everything it holds when it reads it again.
const FEED_KEPT: &str = "1 hour";

/// How often a broker prunes the feed of changes older than `FEED_KEPT`.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// One broker's connections to the persons directory: a pool for reads
/// and writes, and one connection of its own for the change feed, so that
/// reading the feed never queues behind lookups.
pub struct PgPersons {
    pool: Pool,
    feed: tokio::sync::Mutex<Conn>,
    pruning: tokio::task::JoinHandle<()>,
    /// Seals the rows this broker writes and checks every row read (no
    /// rule without its entry); `None` honours rows as stored, for tests
    /// of this crate that run no log. A broker always seals.
    sealer: Option<RowSealer>,
    /// Rows read and not honoured since start.
    unsealed: AtomicU64,
}

/// A row read with what binds it to its entry: its value, then
/// [`crate::seals::COLUMNS`] (the entry it names, its seal, and that
/// entry's encoding as the log holds it).
const SEALED_COLUMNS: &str = "r.value::text, r.audit_sequence, r.audit_hash, r.seal, e.encoding";

impl Drop for PgPersons {
    fn drop(&mut self) {
        self.pruning.abort();
    }
}

impl std::fmt::Debug for PgPersons {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPersons").finish_non_exhaustive()
    }
}

impl From<PgError> for StorageError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Conflict(m) => StorageError::Conflict(m),
            PgError::Corrupt(m) => StorageError::Corrupt(m),
            PgError::Integrity(m) => StorageError::Corrupt(m),
            PgError::OutOfRange(m) => StorageError::OutOfRange(m),
            e => StorageError::Unavailable(e.to_string()),
        }
    }
}

fn parse_niss(s: &str) -> Result<Niss, PgError> {
    Niss::parse(s).map_err(|_| PgError::Corrupt("a stored national number is malformed".into()))
}

fn numbers(citizen: &Resolved) -> Vec<String> {
    citizen.numbers().map(|n| n.as_str().to_owned()).collect()
}

impl PgPersons {
    /// Connects and applies the migrations this binary knows.
    pub async fn connect(url: &str) -> Result<PgPersons, PgError> {
        let pool = Pool::open(url, CONNECTIONS).await?;
        migrate(&pool.first().await.client).await?;
        let feed = tokio::sync::Mutex::new(Conn::open(url).await?);
        let url = url.to_owned();
        // Pruning runs on its own, off the feed's reads; a failure only
        // waits for the next round.
        let pruning = tokio::spawn(async move {
            loop {
                tokio::time::sleep(PRUNE_EVERY).await;
                let pruned = async {
                    let conn = Conn::open(&url).await?;
                    conn.client
                        .execute(
                            &format!(
                                "DELETE FROM persons_changes WHERE at < now() - interval '{FEED_KEPT}'"
                            ),
                            &[],
                        )
                        .await
                        .map_err(PgError::from)
                }
                .await;
                if let Err(e) = pruned {
                    tracing::debug!(error = %e, "pruning the persons change feed failed; retrying later");
                }
            }
        });
        Ok(PgPersons {
            pool,
            feed,
            pruning,
            sealer: None,
            unsealed: AtomicU64::new(0),
        })
    }

    /// Seals rows with `sealer` and honours only rows whose seal verifies
    /// and whose entry is in the log as sealed.
    pub fn sealed_by(mut self, sealer: RowSealer) -> PgPersons {
        self.sealer = Some(sealer);
        self
    }

    /// Runs a query over `SEALED_COLUMNS` and keeps the rows honoured:
    /// those whose value `belongs` where it was found (its key columns say
    /// what its value says), and, when sealing, whose seal verifies over
    /// the value, the table and the entry named, and whose entry is in the
    /// log with the hash named. Every other row is counted and reported.
    async fn honoured<T>(
        &self,
        table: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        belongs: impl Fn(&T) -> bool,
    ) -> Result<Vec<T>, StorageError>
    where
        T: serde::de::DeserializeOwned + serde::Serialize,
    {
        let rows = self.rows(sql, params).await?;
        self.keep_honoured(table, rows, |_, v| belongs(v))
    }

    /// Runs a prepared query on a connection of the pool.
    async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StorageError> {
        let mut conn = self.pool.get().await;
        let statement = conn.prepared(sql).await?;
        let result = conn.client.query(&statement, params).await;
        conn.suspect = result.is_err();
        Ok(result.map_err(PgError::from)?)
    }

    /// The rows (value in column 0, `SEALED_COLUMNS` after it) that are
    /// honoured (see [`PgPersons::honoured`]).
    fn keep_honoured<T>(
        &self,
        table: &'static str,
        rows: Vec<tokio_postgres::Row>,
        belongs: impl Fn(&tokio_postgres::Row, &T) -> bool,
    ) -> Result<Vec<T>, StorageError>
    where
        T: serde::de::DeserializeOwned + serde::Serialize,
    {
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let value: T = decode(r.get(0))?;
            let sealed = crate::seals::Sealed::read(&r, 1);
            let why = if !belongs(&r, &value) {
                Some("its key columns do not say what its value says")
            } else if let Some(sealer) = &self.sealer {
                sealed.refusal(sealer, table, encode(&value)?.as_bytes())
            } else {
                None
            };
            match why {
                None => out.push(value),
                Some(why) => {
                    self.unsealed.fetch_add(1, Relaxed);
                    crate::seals::report(table, sealed.sequence, why);
                }
            }
        }
        Ok(out)
    }

    /// Seals rows of `table` as made by `entry`, where their value is
    /// still the one given (keys and canonical values in the same order).
    async fn seal_rows(
        &self,
        table: &'static str,
        keys: &[Vec<String>],
        values: Vec<String>,
        entry: Appended,
    ) -> Result<(), StorageError> {
        let Some(sealer) = &self.sealer else {
            return Ok(());
        };
        let at = crate::seals::entry(entry);
        let seals: Vec<Vec<u8>> = values
            .iter()
            .map(|v| sealer.seal(table, v.as_bytes(), &at).to_vec())
            .collect();
        let sequence = i64::try_from(entry.sequence)
            .map_err(|_| StorageError::OutOfRange("an audit sequence beyond i64".into()))?;
        let hash = entry.hash.to_vec();
        match table {
            "person_files" => {
                self.execute(
                    "UPDATE person_files AS r SET audit_sequence = $5, audit_hash = $6, seal = t.s \
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $7::bytea[]) AS t(c, n, i, v, s) \
                     WHERE r.consumer = t.c AND r.citizen = t.n AND r.id = t.i AND r.value = t.v::jsonb",
                    &[&keys[0], &keys[1], &keys[2], &values, &sequence, &hash, &seals],
                )
                .await?;
            }
            "consents" => {
                self.execute(
                    "UPDATE consents AS r SET audit_sequence = $4, audit_hash = $5, seal = t.s \
                     FROM unnest($1::text[], $2::text[], $3::text[], $6::bytea[]) AS t(n, i, v, s) \
                     WHERE r.citizen = t.n AND r.id = t.i AND r.value = t.v::jsonb",
                    &[&keys[0], &keys[1], &values, &sequence, &hash, &seals],
                )
                .await?;
            }
            "number_replacements" => {
                self.execute(
                    "UPDATE number_replacements AS r SET audit_sequence = $3, audit_hash = $4, seal = t.s \
                     FROM unnest($1::text[], $2::text[], $5::bytea[]) AS t(o, v, s) \
                     WHERE r.old = t.o AND r.value = t.v::jsonb",
                    &[&keys[0], &values, &sequence, &hash, &seals],
                )
                .await?;
            }
            other => {
                return Err(StorageError::Unsupported(format!(
                    "no sealed table {other}"
                )));
            }
        }
        Ok(())
    }

    /// Runs one statement on the (reconnected if need be) connection.
    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StorageError> {
        let mut conn = self.pool.get().await;
        let result = conn.client().await?.execute(sql, params).await;
        // A failed statement may be the first sign of a dying connection:
        // the next use opens a new one.
        conn.suspect = result.is_err();
        Ok(result.map_err(PgError::from)?)
    }

    /// Runs a query whose first column is a JSON value, and decodes each.
    async fn values<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<T>, StorageError> {
        let mut conn = self.pool.get().await;
        let result = conn.client().await?.query(sql, params).await;
        conn.suspect = result.is_err();
        let rows = result.map_err(PgError::from)?;
        Ok(rows
            .iter()
            .map(|r| decode(r.get(0)))
            .collect::<Result<_, _>>()?)
    }
}

#[async_trait::async_trait]
impl PersonsStore for PgPersons {
    async fn put_files(&self, files: &[PersonFile]) -> Result<(), StorageError> {
        let (mut consumers, mut citizens, mut ids, mut values) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for f in files {
            consumers.push(f.consumer.as_str().to_owned());
            citizens.push(f.citizen.as_str().to_owned());
            ids.push(f.id.clone());
            values.push(encode(f)?);
        }
        self.execute(
            "INSERT INTO person_files (consumer, citizen, id, value) \
             SELECT c, n, i, v::jsonb FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(c, n, i, v) \
             ON CONFLICT (consumer, citizen, id) DO UPDATE SET value = EXCLUDED.value, \
                 audit_sequence = NULL, audit_hash = NULL, seal = NULL",
            &[&consumers, &citizens, &ids, &values],
        )
        .await?;
        Ok(())
    }

    async fn delete_file(&self, file: &PersonFile) -> Result<(), StorageError> {
        self.execute(
            "DELETE FROM person_files WHERE consumer = $1 AND citizen = $2 AND id = $3",
            &[&file.consumer.as_str(), &file.citizen.as_str(), &file.id],
        )
        .await?;
        Ok(())
    }

    async fn file(
        &self,
        consumer: &Kbo,
        citizen: &Niss,
        id: &str,
    ) -> Result<Option<PersonFile>, StorageError> {
        Ok(self
            .honoured(
                "person_files",
                &format!(
                    "SELECT {SEALED_COLUMNS} FROM person_files r \
                     LEFT JOIN audit_entries e ON e.sequence = r.audit_sequence \
                     WHERE r.consumer = $1 AND r.citizen = $2 AND r.id = $3"
                ),
                &[&consumer.as_str(), &citizen.as_str(), &id],
                |f: &PersonFile| f.consumer == *consumer && f.citizen == *citizen && f.id == id,
            )
            .await?
            .pop())
    }

    async fn files_of(
        &self,
        consumer: &Kbo,
        citizen: &Resolved,
    ) -> Result<Vec<PersonFile>, StorageError> {
        self.honoured(
            "person_files",
            &format!(
                "SELECT {SEALED_COLUMNS} FROM person_files r \
                 LEFT JOIN audit_entries e ON e.sequence = r.audit_sequence \
                 WHERE r.consumer = $1 AND r.citizen = ANY($2) ORDER BY r.citizen, r.id"
            ),
            &[&consumer.as_str(), &numbers(citizen)],
            |f: &PersonFile| f.consumer == *consumer && citizen.numbers().any(|n| *n == f.citizen),
        )
        .await
    }

    async fn put_consent(&self, consent: &Consent) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO consents (citizen, id, value) VALUES ($1, $2, $3::text::jsonb) \
             ON CONFLICT (citizen, id) DO UPDATE SET value = EXCLUDED.value, \
                 audit_sequence = NULL, audit_hash = NULL, seal = NULL",
            &[&consent.citizen.as_str(), &consent.id, &encode(consent)?],
        )
        .await?;
        Ok(())
    }

    async fn delete_consent(&self, consent: &Consent) -> Result<(), StorageError> {
        self.execute(
            "DELETE FROM consents WHERE citizen = $1 AND id = $2",
            &[&consent.citizen.as_str(), &consent.id],
        )
        .await?;
        Ok(())
    }

    async fn consents_of(&self, citizen: &Resolved) -> Result<Vec<Consent>, StorageError> {
        self.honoured(
            "consents",
            &format!(
                "SELECT {SEALED_COLUMNS} FROM consents r \
                 LEFT JOIN audit_entries e ON e.sequence = r.audit_sequence \
                 WHERE r.citizen = ANY($1) ORDER BY r.citizen, r.id"
            ),
            &[&numbers(citizen)],
            |c: &Consent| citizen.numbers().any(|n| *n == c.citizen),
        )
        .await
    }

    async fn replace(&self, r: &NumberReplacement) -> Result<NumberReplacement, StorageError> {
        if r.old == r.new {
            return Err(StorageError::Conflict(
                "a number cannot replace itself".into(),
            ));
        }
        let mut conn = self.pool.get().await;
        let client = conn.client().await?;
        let tx = client.transaction().await.map_err(PgError::from)?;
        tx.batch_execute("LOCK TABLE number_replacements IN SHARE ROW EXCLUSIVE MODE")
            .await
            .map_err(PgError::from)?;
        if let Some(existing) = Self::replacement(&tx, &r.old).await? {
            if existing.new == r.new {
                return Ok(existing);
            }
            return Err(StorageError::Conflict(
                "this number was already replaced by another one".into(),
            ));
        }
        if Self::leads_to(&tx, &r.new, &r.old).await? {
            return Err(StorageError::Conflict(
                "the new number already leads to the old one; this replacement would make a loop"
                    .into(),
            ));
        }
        tx.execute(
            "INSERT INTO number_replacements (old, new, value) VALUES ($1, $2, $3::text::jsonb)",
            &[&r.old.as_str(), &r.new.as_str(), &encode(r)?],
        )
        .await
        .map_err(PgError::from)?;
        tx.commit().await.map_err(PgError::from)?;
        Ok(r.clone())
    }

    async fn unreplace(&self, old: &Niss) -> Result<Option<NumberReplacement>, StorageError> {
        Ok(self
            .values(
                "DELETE FROM number_replacements WHERE old = $1 RETURNING value::text",
                &[&old.as_str()],
            )
            .await?
            .pop())
    }

    async fn resolve(&self, given: &Niss) -> Result<Resolved, StorageError> {
        let mut conn = self.pool.get().await;
        let statement = conn.prepared(RESOLVE).await?;
        let resolved = self.resolve_with(&conn.client, &statement, given).await;
        conn.suspect = resolved.is_err();
        drop(conn);
        match resolved? {
            Some(resolved) => Ok(resolved),
            None => self.resolve_honoured(given).await,
        }
    }

    fn keeps_feed(&self) -> bool {
        true
    }

    async fn directory_page(
        &self,
        after: Option<&(Kbo, Niss)>,
        limit: usize,
    ) -> Result<DirectoryPage, StorageError> {
        let limit = limit.max(1);
        let (consumer, citizen) = after
            .map(|(c, n)| (c.as_str(), n.as_str()))
            .unwrap_or(("", ""));
        let mut rows = self
            .rows(
                &format!(
                    "SELECT {SEALED_COLUMNS}, r.consumer, r.citizen FROM person_files r \
                       LEFT JOIN audit_entries e ON e.sequence = r.audit_sequence \
                      WHERE (r.consumer, r.citizen) > ($1, $2) \
                      ORDER BY r.consumer, r.citizen, r.id LIMIT $3"
                ),
                &[&consumer, &citizen, &(limit as i64 + 1)],
            )
            .await?;
        let pair = |r: &tokio_postgres::Row| (r.get::<_, String>(5), r.get::<_, String>(6));
        // One row more than the page: when it is there, the pair it belongs
        // to may not be whole in this page, and is read by the next (or,
        // when that pair alone is over the page, left out).
        let next = if rows.len() > limit {
            let last = pair(&rows[limit]);
            let cut = rows.iter().position(|r| pair(r) == last).unwrap_or(0);
            let next = if cut == 0 { last } else { pair(&rows[cut - 1]) };
            rows.truncate(cut);
            let consumer = Kbo::parse(&next.0)
                .map_err(|_| PgError::Corrupt("a stored enterprise number is malformed".into()))?;
            Some((consumer, parse_niss(&next.1)?))
        } else {
            None
        };
        let files: Vec<PersonFile> =
            self.keep_honoured("person_files", rows, |r, f: &PersonFile| {
                let (consumer, citizen) = pair(r);
                f.consumer.as_str() == consumer && f.citizen.as_str() == citizen
            })?;
        let mut numbers: Vec<String> = files
            .iter()
            .map(|f| f.citizen.as_str().to_owned())
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        let consents = self
            .honoured(
                "consents",
                &format!(
                    "SELECT {SEALED_COLUMNS} FROM consents r \
                     LEFT JOIN audit_entries e ON e.sequence = r.audit_sequence \
                     WHERE r.citizen = ANY($1) ORDER BY r.citizen, r.id"
                ),
                &[&numbers],
                |c: &Consent| {
                    numbers
                        .binary_search(&c.citizen.as_str().to_owned())
                        .is_ok()
                },
            )
            .await?;
        let mut replaced = Vec::new();
        for r in self
            .rows(
                "SELECT old, new FROM number_replacements WHERE old = ANY($1) OR new = ANY($1)",
                &[&numbers],
            )
            .await?
        {
            for column in [0, 1] {
                // Unparseable numbers name no number of this page.
                if let Ok(n) = Niss::parse(r.get::<_, &str>(column)) {
                    replaced.push(n);
                }
            }
        }
        Ok(DirectoryPage {
            files,
            consents,
            replaced,
            next,
        })
    }

    async fn seal_files(&self, files: &[PersonFile], entry: Appended) -> Result<(), StorageError> {
        let mut keys = vec![Vec::new(), Vec::new(), Vec::new()];
        let mut values = Vec::with_capacity(files.len());
        for f in files {
            keys[0].push(f.consumer.as_str().to_owned());
            keys[1].push(f.citizen.as_str().to_owned());
            keys[2].push(f.id.clone());
            values.push(encode(f)?);
        }
        self.seal_rows("person_files", &keys, values, entry).await
    }

    async fn seal_consent(&self, consent: &Consent, entry: Appended) -> Result<(), StorageError> {
        let keys = vec![
            vec![consent.citizen.as_str().to_owned()],
            vec![consent.id.clone()],
        ];
        self.seal_rows("consents", &keys, vec![encode(consent)?], entry)
            .await
    }

    async fn seal_replacement(
        &self,
        replacement: &NumberReplacement,
        entry: Appended,
    ) -> Result<(), StorageError> {
        let keys = vec![vec![replacement.old.as_str().to_owned()]];
        self.seal_rows(REPLACEMENTS, &keys, vec![encode(replacement)?], entry)
            .await
    }

    fn unsealed(&self) -> u64 {
        self.unsealed.load(Relaxed)
    }

    async fn changes_since(&self, after: u64) -> Result<PersonsChanges, StorageError> {
        let Ok(from) = i64::try_from(after) else {
            return Err(StorageError::OutOfRange(format!(
                "no position {after} in the persons feed"
            )));
        };
        let mut conn = self.feed.lock().await;
        let result = conn
            .client()
            .await?
            .query_one(
                "SELECT (SELECT position FROM persons_feed_head WHERE id = 0), \
                        array(SELECT citizen FROM persons_changes WHERE position > $1 \
                              ORDER BY position LIMIT $2)",
                &[&from, &FEED_PAGE],
            )
            .await;
        conn.suspect = result.is_err();
        let row = result.map_err(PgError::from)?;
        drop(conn);
        let head: Option<i64> = row.try_get(0).map_err(PgError::from)?;
        let citizens: Vec<String> = row.try_get(1).map_err(PgError::from)?;
        let head = head
            .and_then(|h| u64::try_from(h).ok())
            .ok_or_else(|| PgError::Corrupt("the persons feed has no head".into()))?;
        // Positions are dense: every one after `after` up to the head is
        // listed, or some were pruned (or not listed) and the reader must
        // forget everything. A row it cannot read counts as not listed.
        let mut complete = head >= after && citizens.len() as u64 == head - after;
        let mut changes = Vec::new();
        if complete {
            for c in &citizens {
                match c.as_str() {
                    "*" => changes.push(PersonsChange::Replacements),
                    n => match Niss::parse(n) {
                        Ok(n) => changes.push(PersonsChange::Citizen(n)),
                        Err(_) => {
                            complete = false;
                            changes.clear();
                            break;
                        }
                    },
                }
            }
        }
        Ok(PersonsChanges {
            head,
            changes,
            complete,
        })
    }
}
