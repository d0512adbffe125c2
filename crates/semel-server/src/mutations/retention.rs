//! Retention: changes not acknowledged in time dropped, and each consumer's
//! loss recorded.

use super::*;

impl Broker {
    /// Drops changes not acknowledged within the retention period, every
    /// minute, until aborted; event ids are remembered for
    /// [`EVENT_IDS_KEPT`] at least.
    pub fn expire_mutations(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let broker = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                broker
                    .expire_mutations_as_of(OffsetDateTime::now_utc())
                    .await;
            }
        })
    }

    /// One round of [`Broker::expire_mutations`], as of `now` (a test runs
    /// it as of a later day): drops what outlived the retention period and
    /// records, per consumer, what it lost.
    pub async fn expire_mutations_as_of(&self, now: OffsetDateTime) {
        let retention = self.mutation_settings().retention;
        let micros = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1000) as i64;
        let before = micros(now - retention);
        let ids_before = micros(now - retention.max(EVENT_IDS_KEPT));
        match self.storage().mutations.expire(before, ids_before).await {
            Ok(expired) if expired.is_empty() => {}
            Ok(expired) => {
                tracing::warn!(
                    dropped = expired.iter().map(|e| e.dropped).sum::<u64>(),
                    consumers = expired.len(),
                    "changes not acknowledged within the retention period were dropped; their consumers are told"
                );
                self.record_expiries(&expired, retention).await;
            }
            Err(e) => tracing::warn!(
                error = %semel_core::redact_national_numbers(&e.to_string()),
                "could not drop expired changes; trying again in a minute"
            ),
        }
    }
}

impl Broker {
    /// Records, per consumer, the changes dropped unacknowledged at the end
    /// of the retention period: the organisation's auditors (and the whole
    /// log's) see what it lost, and when. The changes are gone already (the
    /// positions to drop are known only as they are dropped): an entry that
    /// cannot be written is said in the broker's log.
    async fn record_expiries(&self, expired: &[semel_storage::Expired], retention: Duration) {
        let entries = expired.iter().map(|e| {
            let mut r = crate::state::blank_record(
                crate::state::new_id(),
                semel_core::mutation::EXPIRE_OPERATION,
                e.consumer,
                None,
            );
            r.detail = format!(
                "{} change(s) at positions {} to {} dropped unacknowledged: older than the retention period ({} hours)",
                e.dropped,
                e.first,
                e.last,
                retention.as_secs() / 3600
            );
            r
        });
        if self.append_all_durably(entries).await.is_err() {
            tracing::error!(
                consumers = expired.len(),
                "changes dropped at the end of the retention period could not be recorded in the audit log"
            );
        }
    }
}
