//! The persons directory, consents and number replacements on PostgreSQL,
//! behind the storage port ([`semel_storage::PersonsStore`]); the same
//! rules as the embedded store, held by the conformance suite.
//!
//! Replacements serialise on a table lock (they are rare, and a loop check
//! must see every other replacement made at the same time).

use crate::registry::{decode, encode};
use crate::{Conn, PgError, Pool, migrate};
use semel_core::persons::{MAX_REPLACEMENT_CHAIN, MAX_REPLACEMENT_WALK, Resolved};
use semel_core::{Consent, Kbo, Niss, NumberReplacement, PersonFile};
use semel_storage::{PersonsChange, PersonsChanges, PersonsStore, StorageError};

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
}

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
        })
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

    async fn replacement(
        client: &impl tokio_postgres::GenericClient,
        old: &Niss,
    ) -> Result<Option<NumberReplacement>, PgError> {
        client
            .query_opt(
                "SELECT value::text FROM number_replacements WHERE old = $1",
                &[&old.as_str()],
            )
            .await?
            .map(|r| decode(r.get(0)))
            .transpose()
    }

    /// Whether following replacements from `from` reaches `target`, however
    /// long the chain (the loop check; resolving stops after a few steps).
    async fn leads_to(
        client: &impl tokio_postgres::GenericClient,
        from: &Niss,
        target: &Niss,
    ) -> Result<bool, PgError> {
        let mut current = *from;
        for _ in 0..MAX_REPLACEMENT_WALK {
            if current == *target {
                return Ok(true);
            }
            match Self::replacement(client, &current).await? {
                Some(r) => current = r.new,
                None => return Ok(false),
            }
        }
        Err(PgError::Corrupt(
            "a chain of number replacements does not end".into(),
        ))
    }

    /// A number's resolution in one round trip (every lookup asks it): the
    /// replacements followed forward to the number in force (at most
    /// `MAX_REPLACEMENT_CHAIN` steps), then back to every number it
    /// replaced, level by level, each level in number order, at most
    /// `4 × MAX_REPLACEMENT_CHAIN` of them.
    async fn resolve_with(
        client: &impl tokio_postgres::GenericClient,
        given: &Niss,
    ) -> Result<Resolved, PgError> {
        let chain = MAX_REPLACEMENT_CHAIN as i32;
        let formers = (MAX_REPLACEMENT_CHAIN * 4) as i64;
        let row = client
            .query_one(
                "WITH RECURSIVE fwd(n, depth) AS ( \
                     SELECT $1::text, 0 \
                     UNION ALL \
                     SELECT r.new, f.depth + 1 FROM number_replacements r JOIN fwd f ON r.old = f.n \
                     WHERE f.depth < $2), \
                 cur AS (SELECT n FROM fwd ORDER BY depth DESC LIMIT 1), \
                 bwd(n, depth) AS ( \
                     SELECT n, 0 FROM cur \
                     UNION ALL \
                     SELECT r.old, b.depth + 1 FROM number_replacements r JOIN bwd b ON r.new = b.n \
                     WHERE b.depth < $3) \
                 SELECT (SELECT n FROM cur), \
                        array(SELECT n FROM bwd WHERE depth > 0 AND n <> (SELECT n FROM cur) \
                              ORDER BY depth, n LIMIT $4)",
                &[&given.as_str(), &chain, &(formers as i32), &formers],
            )
            .await?;
        let current = parse_niss(row.get(0))?;
        let mut former: Vec<Niss> = Vec::new();
        for n in row.get::<_, Vec<String>>(1) {
            let n = parse_niss(&n)?;
            if !former.contains(&n) {
                former.push(n);
            }
        }
        Ok(Resolved {
            current,
            given: (current != *given).then_some(*given),
            former,
        })
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
             ON CONFLICT (consumer, citizen, id) DO UPDATE SET value = EXCLUDED.value",
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
            .values(
                "SELECT value::text FROM person_files WHERE consumer = $1 AND citizen = $2 AND id = $3",
                &[&consumer.as_str(), &citizen.as_str(), &id],
            )
            .await?
            .pop())
    }

    async fn files_of(
        &self,
        consumer: &Kbo,
        citizen: &Resolved,
    ) -> Result<Vec<PersonFile>, StorageError> {
        self.values(
            "SELECT value::text FROM person_files WHERE consumer = $1 AND citizen = ANY($2) \
             ORDER BY citizen, id",
            &[&consumer.as_str(), &numbers(citizen)],
        )
        .await
    }

    async fn put_consent(&self, consent: &Consent) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO consents (citizen, id, value) VALUES ($1, $2, $3::text::jsonb) \
             ON CONFLICT (citizen, id) DO UPDATE SET value = EXCLUDED.value",
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
        self.values(
            "SELECT value::text FROM consents WHERE citizen = ANY($1) ORDER BY citizen, id",
            &[&numbers(citizen)],
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
        let client = conn.client().await?;
        Ok(Self::resolve_with(&*client, given).await?)
    }

    fn keeps_feed(&self) -> bool {
        true
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
