//! The mutation queues on PostgreSQL, behind the storage port
//! ([`semel_storage::MutationStore`]); the same rules as the embedded
//! store, held by the conformance suite.
//!
//! A published change is stored by one statement, and so commits whole or
//! not at all: its event id's key (the primary key makes a second
//! publication, through any broker, a duplicate; keys are kept longer than
//! the queue, and the id itself is never stored), then for each consumer
//! routed, in enterprise-number order (so that two publications cannot
//! deadlock), the next position of its queue under the cursor row's lock,
//! and the queue entry. Positions are dense per consumer and in commit
//! order. The same statement notifies [`crate::MUTATIONS_CHANNEL`], so that
//! every broker's subscriptions wake when it commits (and none when it does
//! not): see [`crate::Cluster`].
//!
//! Publications made at the same time share that statement and its commit
//! (as the audit log's entries share theirs): one writer per broker takes
//! every publication waiting and stores them together. One commit each
//! serialised them on the cursor rows they all lock, and on the
//! notification queue, which PostgreSQL holds from a notifying commit's
//! start to its end: about 44 a second on the benchmark's machine.

use std::sync::Arc;

use async_trait::async_trait;
use semel_core::Kbo;
use semel_storage::{
    Accepted, Acknowledged, Expired, MutationStore, QueueState, Queued, Routed, StorageError,
};
use tokio::sync::{mpsc, oneshot};

use crate::{PgError, Pool, migrate};

/// Connections per broker: publications, deliveries and acknowledgements.
const CONNECTIONS: usize = 8;

/// The most publications one transaction stores.
const MAX_BATCH: usize = 256;

/// The most queue entries one transaction writes (past it, the batch is
/// closed; a single publication routed to more is stored alone).
const MAX_BATCH_ENTRIES: usize = 8192;

/// Publications waiting for the writer.
const WAITING: usize = 4096;

/// The statement that stores a batch of publications: each one's event
/// key (the primary key refuses a key seen before, through any broker:
/// only the publications whose key is new are queued), then, per consumer
/// routed, in enterprise-number order (so that two batches cannot
/// deadlock), its cursor moved past all of the batch's entries for it
/// under the row's lock, and the entries at the positions in between, in
/// the batch's order; and the notification that wakes every broker's
/// subscriptions (delivered by PostgreSQL when, and only if, the
/// statement commits). The keys are taken in their own order for the same
/// reason. It answers the batch's publications that were new.
const STORE_BATCH: &str = "\
    WITH p AS ( \
        SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::bigint[]) \
            WITH ORDINALITY AS p(source, event_key, digest, accepted_micros, n)), \
    ev AS ( \
        INSERT INTO mutation_events (source, event_key, digest, accepted_micros) \
        SELECT source, event_key, digest, accepted_micros FROM p ORDER BY source, event_key \
        ON CONFLICT DO NOTHING \
        RETURNING source, event_key), \
    fresh AS ( \
        SELECT p.n, p.source, p.event_key, p.accepted_micros FROM p JOIN ev USING (source, event_key)), \
    e AS ( \
        SELECT r.consumer, r.payload, fresh.n, fresh.source, fresh.event_key, fresh.accepted_micros \
        FROM unnest($5::bigint[], $6::text[], $7::bytea[]) AS r(n, consumer, payload) \
        JOIN fresh ON fresh.n = r.n), \
    k AS (SELECT consumer, count(*) AS k FROM e GROUP BY consumer), \
    c AS ( \
        INSERT INTO mutation_cursors (consumer, head) \
        SELECT consumer, k FROM k ORDER BY consumer \
        ON CONFLICT (consumer) DO UPDATE SET head = mutation_cursors.head + EXCLUDED.head \
        RETURNING consumer, head), \
    q AS ( \
        INSERT INTO mutation_queue (consumer, position, accepted_micros, source, event_key, payload) \
        SELECT e.consumer, c.head - k.k + row_number() OVER (PARTITION BY e.consumer ORDER BY e.n), \
               e.accepted_micros, e.source, e.event_key, e.payload \
        FROM e JOIN k USING (consumer) JOIN c USING (consumer) \
        RETURNING 1), \
    told AS (SELECT pg_notify($8, '') FROM (SELECT 1 FROM q LIMIT 1) AS queued) \
    SELECT fresh.n, (SELECT count(*) FROM told) FROM fresh";

/// One broker's connections to the mutation queues, its publications'
/// writer and its deliveries' writer.
pub struct PgMutations {
    pool: Arc<Pool>,
    publications: mpsc::Sender<Publication>,
    writer: tokio::task::JoinHandle<()>,
    deliveries: mpsc::Sender<Delivery>,
    marker: tokio::task::JoinHandle<()>,
}

impl Drop for PgMutations {
    fn drop(&mut self) {
        self.writer.abort();
        self.marker.abort();
    }
}

impl std::fmt::Debug for PgMutations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgMutations").finish_non_exhaustive()
    }
}

/// The same error again, for each publication of a batch.
fn same(e: &StorageError) -> StorageError {
    match e {
        StorageError::Conflict(m) => StorageError::Conflict(m.clone()),
        StorageError::Corrupt(m) => StorageError::Corrupt(m.clone()),
        StorageError::Unavailable(m) => StorageError::Unavailable(m.clone()),
        StorageError::OutOfRange(m) => StorageError::OutOfRange(m.clone()),
        StorageError::Unsupported(m) => StorageError::Unsupported(m.clone()),
    }
}

/// A publication waiting for the writer.
struct Publication {
    source: Kbo,
    event_key: [u8; 32],
    digest: [u8; 32],
    accepted_micros: i64,
    routed: Vec<Routed>,
    reply: oneshot::Sender<Result<Accepted, StorageError>>,
}

/// A page of a consumer's queue sent (or about to be), waiting for the
/// deliveries' writer to mark it delivered.
struct Delivery {
    consumer: Kbo,
    after: i64,
    through: i64,
    reply: oneshot::Sender<Result<(), StorageError>>,
}

/// The deliveries' writer: every subscription woken by one publication
/// marks its page delivered at about the same moment (38 in the
/// benchmark); one commit each serialised them on the log's syncs and on
/// the cursor rows the publications lock. The writer takes every mark
/// waiting (up to a batch) and makes them in one transaction, one commit,
/// then answers each.
async fn write_deliveries(pool: Arc<Pool>, mut waiting: mpsc::Receiver<Delivery>) {
    while let Some(first) = waiting.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        let outcome = mark_delivered(&pool, &batch).await;
        for d in batch {
            let _ = d.reply.send(outcome.as_ref().map(|_| ()).map_err(same));
        }
    }
}

/// Marks a batch of pages delivered in one transaction: the cursor rows
/// locked first in enterprise-number order (the order publications lock
/// them in, so that neither deadlocks the other), then each page's mark as
/// a single mark would make it (only where delivery reached the page's
/// start; never past the queue's head). A consumer marked twice in the
/// batch is marked in rounds, in the order asked (one `UPDATE … FROM`
/// updates a row once).
async fn mark_delivered(pool: &Pool, batch: &[Delivery]) -> Result<(), StorageError> {
    let mut rounds: Vec<(Vec<&str>, Vec<i64>, Vec<i64>)> = Vec::new();
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for d in batch {
        let round = seen.entry(d.consumer.as_str()).or_default();
        if rounds.len() <= *round {
            rounds.push(Default::default());
        }
        let (consumers, after, through) = &mut rounds[*round];
        consumers.push(d.consumer.as_str());
        after.push(d.after);
        through.push(d.through);
        *round += 1;
    }
    let mut all: Vec<&str> = seen.keys().copied().collect();
    all.sort_unstable();
    let mut conn = pool.get().await;
    let result = async {
        let client = conn.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT 1 FROM mutation_cursors WHERE consumer = ANY($1) \
             ORDER BY consumer FOR UPDATE",
            &[&all],
        )
        .await?;
        for (consumers, after, through) in &rounds {
            tx.execute(
                "UPDATE mutation_cursors AS c \
                    SET delivered = greatest(c.delivered, least(t.through, c.head)) \
                   FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS t(consumer, after, through) \
                  WHERE c.consumer = t.consumer AND c.delivered >= t.after",
                &[consumers, after, through],
            )
            .await?;
        }
        tx.commit().await?;
        Ok::<(), PgError>(())
    }
    .await;
    conn.suspect = result.is_err();
    Ok(result?)
}

/// The writer: takes every publication waiting (up to a batch) and stores
/// them in one statement, one commit, one notification, then answers each.
/// A publication waits for the commit before it (as publications to the
/// same consumers did on the cursors' row locks), and every publication
/// that arrived meanwhile shares the next.
async fn write_publications(pool: Arc<Pool>, mut waiting: mpsc::Receiver<Publication>) {
    while let Some(first) = waiting.recv().await {
        let mut entries = first.routed.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && entries < MAX_BATCH_ENTRIES {
            match waiting.try_recv() {
                Ok(p) => {
                    entries += p.routed.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let outcome = store_batch(&pool, &batch).await;
        for (p, outcome) in batch.into_iter().zip(outcome) {
            let _ = p.reply.send(outcome);
        }
    }
}

/// Stores a batch (see [`STORE_BATCH`]) and says what became of each.
/// A publication whose event key appeared earlier in the same batch is
/// left out of the statement: a duplicate once the statement commits.
async fn store_batch(pool: &Pool, batch: &[Publication]) -> Vec<Result<Accepted, StorageError>> {
    let mut seen = std::collections::HashSet::new();
    let first: Vec<bool> = batch
        .iter()
        .map(|p| seen.insert((p.source, p.event_key)))
        .collect();
    let mut sources = Vec::new();
    let mut keys: Vec<&[u8]> = Vec::new();
    let mut digests: Vec<&[u8]> = Vec::new();
    let mut micros = Vec::new();
    let mut of = Vec::new();
    let mut consumers = Vec::new();
    let mut payloads: Vec<&[u8]> = Vec::new();
    // The statement's publication numbers (from 1), per publication of the batch.
    let mut numbers = Vec::with_capacity(batch.len());
    for (p, first) in batch.iter().zip(&first) {
        if !first {
            numbers.push(None);
            continue;
        }
        sources.push(p.source.as_str());
        keys.push(p.event_key.as_slice());
        digests.push(p.digest.as_slice());
        micros.push(p.accepted_micros);
        let n = sources.len() as i64;
        numbers.push(Some(n));
        for r in &p.routed {
            of.push(n);
            consumers.push(r.consumer.as_str());
            payloads.push(r.payload.as_slice());
        }
    }
    let mut conn = pool.get().await;
    let result = async {
        conn.client()
            .await?
            .query(
                STORE_BATCH,
                &[
                    &sources,
                    &keys,
                    &digests,
                    &micros,
                    &of,
                    &consumers,
                    &payloads,
                    &crate::MUTATIONS_CHANNEL,
                ],
            )
            .await
            .map_err(PgError::from)
    }
    .await;
    conn.suspect = result.is_err();
    drop(conn);
    match result {
        Ok(rows) => {
            let fresh: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
            numbers
                .iter()
                .map(|n| {
                    Ok(match n {
                        Some(n) if fresh.contains(n) => Accepted::New,
                        _ => Accepted::Duplicate,
                    })
                })
                .collect()
        }
        Err(e) => {
            // The statement failed, so nothing of the batch was stored:
            // each publication is refused with the same error.
            let e = StorageError::from(e);
            batch.iter().map(|_| Err(same(&e))).collect()
        }
    }
}

fn state(row: &tokio_postgres::Row) -> QueueState {
    QueueState {
        head: row.get::<_, i64>(0) as u64,
        delivered: row.get::<_, i64>(1) as u64,
        acknowledged: row.get::<_, i64>(2) as u64,
        lost_through: row.get::<_, i64>(3) as u64,
    }
}

impl PgMutations {
    /// Connects and applies the migrations this binary knows.
    pub async fn connect(url: &str) -> Result<PgMutations, PgError> {
        let pool = Arc::new(Pool::open(url, CONNECTIONS).await?);
        migrate(&pool.first().await.client).await?;
        let (publications, waiting) = mpsc::channel(WAITING);
        let writer = tokio::spawn(write_publications(pool.clone(), waiting));
        let (deliveries, marks) = mpsc::channel(WAITING);
        let marker = tokio::spawn(write_deliveries(pool.clone(), marks));
        Ok(PgMutations {
            pool,
            publications,
            writer,
            deliveries,
            marker,
        })
    }

    async fn acknowledge_tx(&self, consumer: &Kbo, position: u64) -> Result<Acknowledged, PgError> {
        let mut conn = self.pool.get().await;
        let result = async {
            let client = conn.client().await?;
            let tx = client.transaction().await?;
            let row = tx
                .query_opt(
                    "SELECT head, delivered, acknowledged, lost_through FROM mutation_cursors \
                     WHERE consumer = $1 FOR UPDATE",
                    &[&consumer.as_str()],
                )
                .await?;
            let mut s = row.as_ref().map(state).unwrap_or_default();
            let previous = s.acknowledged;
            if position > s.delivered {
                return Err(PgError::OutOfRange(format!(
                    "position {position} was not delivered yet (delivered up to {})",
                    s.delivered
                )));
            }
            if position > s.acknowledged {
                s.acknowledged = position;
                tx.execute(
                    "UPDATE mutation_cursors SET acknowledged = $2 WHERE consumer = $1",
                    &[&consumer.as_str(), &(position as i64)],
                )
                .await?;
            }
            let dropped = tx
                .execute(
                    "DELETE FROM mutation_queue WHERE consumer = $1 AND position <= $2",
                    &[&consumer.as_str(), &(s.acknowledged as i64)],
                )
                .await?;
            tx.commit().await?;
            Ok(Acknowledged {
                state: s,
                previous,
                dropped,
            })
        }
        .await;
        conn.suspect = result.is_err() && !matches!(result, Err(PgError::OutOfRange(_)));
        result
    }

    async fn expire_tx(
        &self,
        before_micros: i64,
        ids_before_micros: i64,
    ) -> Result<Vec<Expired>, PgError> {
        let mut conn = self.pool.get().await;
        let result = async {
            let client = conn.client().await?;
            // Per consumer, the last position accepted before the horizon:
            // the prefix up to it goes, with the record of what was lost, in
            // one transaction that takes the cursor row first (as
            // acknowledgements do: no lock cycle between them).
            let horizons = client
                .query(
                    "SELECT consumer, max(position) FROM mutation_queue WHERE accepted_micros < $1 \
                     GROUP BY consumer ORDER BY consumer",
                    &[&before_micros],
                )
                .await?;
            let mut expired = Vec::new();
            for row in &horizons {
                let (consumer, last): (String, i64) = (row.get(0), row.get(1));
                let tx = client.transaction().await?;
                tx.execute(
                    "SELECT 1 FROM mutation_cursors WHERE consumer = $1 FOR UPDATE",
                    &[&consumer],
                )
                .await?;
                let gone = tx
                    .query_one(
                        "WITH gone AS (DELETE FROM mutation_queue WHERE consumer = $1 AND position <= $2 \
                         RETURNING position) SELECT count(*), min(position) FROM gone",
                        &[&consumer, &last],
                    )
                    .await?;
                tx.execute(
                    "UPDATE mutation_cursors SET lost_through = greatest(lost_through, $2), \
                     delivered = greatest(delivered, $2) WHERE consumer = $1 AND acknowledged < $2",
                    &[&consumer, &last],
                )
                .await?;
                tx.commit().await?;
                let (dropped, first): (i64, Option<i64>) = (gone.get(0), gone.get(1));
                if let (Some(first), Ok(consumer)) = (first, Kbo::parse(&consumer)) {
                    expired.push(Expired {
                        consumer,
                        first: first as u64,
                        last: last as u64,
                        dropped: dropped as u64,
                    });
                }
            }
            client
                .execute(
                    "DELETE FROM mutation_events WHERE accepted_micros < $1",
                    &[&ids_before_micros],
                )
                .await?;
            Ok(expired)
        }
        .await;
        conn.suspect = result.is_err();
        result
    }
}

#[async_trait]
impl MutationStore for PgMutations {
    async fn accept(
        &self,
        source: &Kbo,
        event_key: &[u8; 32],
        digest: &[u8; 32],
        accepted_micros: i64,
        routed: &[Routed],
    ) -> Result<Accepted, StorageError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StorageError::Unavailable("the publication writer has stopped".into());
        self.publications
            .send(Publication {
                source: *source,
                event_key: *event_key,
                digest: *digest,
                accepted_micros,
                routed: routed.to_vec(),
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn known(
        &self,
        source: &Kbo,
        event_key: &[u8; 32],
    ) -> Result<Option<[u8; 32]>, StorageError> {
        let mut conn = self.pool.get().await;
        let result = conn
            .client()
            .await?
            .query_opt(
                "SELECT digest FROM mutation_events WHERE source = $1 AND event_key = $2",
                &[&source.as_str(), &event_key.as_slice()],
            )
            .await;
        conn.suspect = result.is_err();
        match result.map_err(PgError::from)? {
            None => Ok(None),
            Some(row) => {
                let d: Vec<u8> = row.get(0);
                Ok(Some(d.try_into().map_err(|_| {
                    StorageError::Corrupt("a published change's digest is malformed".into())
                })?))
            }
        }
    }

    async fn withhold(&self, consumer: &Kbo, position: u64) -> Result<(), StorageError> {
        let mut conn = self.pool.get().await;
        let result = conn
            .client()
            .await?
            .execute(
                "DELETE FROM mutation_queue WHERE consumer = $1 AND position = $2",
                &[&consumer.as_str(), &(position.min(i64::MAX as u64) as i64)],
            )
            .await;
        conn.suspect = result.is_err();
        result.map_err(PgError::from)?;
        Ok(())
    }

    async fn pending(
        &self,
        consumer: &Kbo,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Queued>, StorageError> {
        let mut conn = self.pool.get().await;
        let result = conn
            .client()
            .await?
            .query(
                "SELECT position, accepted_micros, payload FROM mutation_queue \
                 WHERE consumer = $1 AND position > $2 ORDER BY position LIMIT $3",
                &[
                    &consumer.as_str(),
                    &(after.min(i64::MAX as u64) as i64),
                    &(limit as i64),
                ],
            )
            .await;
        conn.suspect = result.is_err();
        Ok(result
            .map_err(PgError::from)?
            .iter()
            .map(|r| Queued {
                position: r.get::<_, i64>(0) as u64,
                accepted_micros: r.get(1),
                payload: r.get(2),
            })
            .collect())
    }

    async fn delivered(
        &self,
        consumer: &Kbo,
        after: u64,
        through: u64,
    ) -> Result<(), StorageError> {
        let (reply, answer) = oneshot::channel();
        let delivery = Delivery {
            consumer: *consumer,
            after: after.min(i64::MAX as u64) as i64,
            through: through.min(i64::MAX as u64) as i64,
            reply,
        };
        let stopped = || StorageError::Unavailable("the deliveries' writer stopped".into());
        self.deliveries
            .send(delivery)
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn acknowledge(
        &self,
        consumer: &Kbo,
        position: u64,
    ) -> Result<Acknowledged, StorageError> {
        Ok(self
            .acknowledge_tx(consumer, position.min(i64::MAX as u64))
            .await?)
    }

    async fn queue_state(&self, consumer: &Kbo) -> Result<QueueState, StorageError> {
        let mut conn = self.pool.get().await;
        let result = conn
            .client()
            .await?
            .query_opt(
                "SELECT head, delivered, acknowledged, lost_through FROM mutation_cursors WHERE consumer = $1",
                &[&consumer.as_str()],
            )
            .await;
        conn.suspect = result.is_err();
        Ok(result
            .map_err(PgError::from)?
            .as_ref()
            .map(state)
            .unwrap_or_default())
    }

    async fn expire(
        &self,
        before_micros: i64,
        ids_before_micros: i64,
    ) -> Result<Vec<Expired>, StorageError> {
        Ok(self.expire_tx(before_micros, ids_before_micros).await?)
    }
}
