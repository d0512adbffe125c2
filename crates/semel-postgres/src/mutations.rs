//! The mutation queues on PostgreSQL, behind the storage port
//! ([`semel_storage::MutationStore`]); the same rules as the embedded
//! store, held by the conformance suite.
//!
//! A published change is one transaction: its event id's key (the primary
//! key makes a second publication, through any broker, a duplicate; keys
//! are kept longer than the queue, and the id itself is never stored),
//! then for
//! each consumer routed, in enterprise-number order (so that two
//! publications cannot deadlock), the next position of its queue under the
//! cursor row's lock, and the queue entry. Positions are dense per consumer
//! and in commit order. The same transaction notifies
//! [`crate::MUTATIONS_CHANNEL`], so that every broker's subscriptions wake
//! when it commits (and none when it does not): see [`crate::Cluster`].

use async_trait::async_trait;
use semel_core::Kbo;
use semel_storage::{
    Accepted, Acknowledged, Expired, MutationStore, QueueState, Queued, Routed, StorageError,
};

use crate::{PgError, Pool, migrate};

/// Connections per broker: publications, deliveries and acknowledgements.
const CONNECTIONS: usize = 8;

/// One broker's connections to the mutation queues.
pub struct PgMutations {
    pool: Pool,
}

impl std::fmt::Debug for PgMutations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgMutations").finish_non_exhaustive()
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
        let pool = Pool::open(url, CONNECTIONS).await?;
        migrate(&pool.first().await.client).await?;
        Ok(PgMutations { pool })
    }

    async fn accept_tx(
        &self,
        source: &Kbo,
        event_key: &[u8; 32],
        digest: &[u8; 32],
        accepted_micros: i64,
        routed: &[Routed],
    ) -> Result<Accepted, PgError> {
        let mut conn = self.pool.get().await;
        let result = async {
            let client = conn.client().await?;
            let tx = client.transaction().await?;
            let inserted = tx
                .execute(
                    "INSERT INTO mutation_events (source, event_key, digest, accepted_micros) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[
                        &source.as_str(),
                        &event_key.as_slice(),
                        &digest.as_slice(),
                        &accepted_micros,
                    ],
                )
                .await?;
            if inserted == 0 {
                tx.rollback().await?;
                return Ok(Accepted::Duplicate);
            }
            let mut sorted: Vec<&Routed> = routed.iter().collect();
            sorted.sort_by_key(|r| r.consumer);
            let consumers: Vec<&str> = sorted.iter().map(|r| r.consumer.as_str()).collect();
            let payloads: Vec<&[u8]> = sorted.iter().map(|r| r.payload.as_slice()).collect();
            if !consumers.is_empty() {
                // One statement: each cursor's next position (its row
                // locked, in enterprise-number order), the entries, and the
                // notification that wakes every broker's subscriptions
                // (delivered by PostgreSQL when, and only if, this
                // transaction commits).
                tx.execute(
                    "WITH c AS ( \
                         INSERT INTO mutation_cursors (consumer, head) \
                         SELECT consumer, 1 FROM unnest($1::text[]) WITH ORDINALITY AS u(consumer, n) ORDER BY n \
                         ON CONFLICT (consumer) DO UPDATE SET head = mutation_cursors.head + 1 \
                         RETURNING consumer, head), \
                     told AS (SELECT pg_notify($6, '') AS n) \
                     INSERT INTO mutation_queue (consumer, position, accepted_micros, source, event_key, payload) \
                     SELECT c.consumer, c.head, $2, $3, $4, p.payload \
                     FROM c JOIN unnest($1::text[], $5::bytea[]) AS p(consumer, payload) ON p.consumer = c.consumer \
                     CROSS JOIN told",
                    &[
                        &consumers,
                        &accepted_micros,
                        &source.as_str(),
                        &event_key.as_slice(),
                        &payloads,
                        &crate::MUTATIONS_CHANNEL,
                    ],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(Accepted::New)
        }
        .await;
        conn.suspect = result.is_err();
        result
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
        Ok(self
            .accept_tx(source, event_key, digest, accepted_micros, routed)
            .await?)
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
        let mut conn = self.pool.get().await;
        let result = conn
            .client()
            .await?
            .execute(
                "UPDATE mutation_cursors SET delivered = greatest(delivered, least($3, head)) \
                 WHERE consumer = $1 AND delivered >= $2",
                &[
                    &consumer.as_str(),
                    &(after.min(i64::MAX as u64) as i64),
                    &(through.min(i64::MAX as u64) as i64),
                ],
            )
            .await;
        conn.suspect = result.is_err();
        result.map_err(PgError::from)?;
        Ok(())
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
