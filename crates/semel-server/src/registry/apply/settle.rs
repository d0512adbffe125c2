//! Settling the applies whose broker stopped between their first change entry and their closing entry.

use crate::error::ApiError;

/// The operation named by an apply's entries, the settling ones too.
const APPLY_OPERATION: &str = "semel.v1.RegistryService/ApplyRegistry";

impl crate::state::Broker {
    /// Settles every apply whose closing entry may be missing (a broker
    /// stopped between its first change entry and its closing entry): one
    /// committed gets its closing entry (applied), one still open is first
    /// removed (its broker can no longer commit it) and then recorded as
    /// not applied. Takes the lock applies take, so none of this broker's
    /// own is under way. Returns how many were settled.
    pub async fn settle_applies(&self) -> Result<usize, ApiError> {
        let _guard = self.admin.lock().await;
        self.settle_applies_locked().await
    }

    /// [`crate::state::Broker::settle_applies`], the admin lock held.
    pub(crate) async fn settle_applies_locked(&self) -> Result<usize, ApiError> {
        let registry = self.storage().registry.clone();
        let mut settled = 0;
        for marker in registry.unsettled_applies().await? {
            let mut record = crate::state::blank_record(
                crate::state::new_id(),
                APPLY_OPERATION,
                marker.organisation,
                Some(marker.end_user.clone()),
            );
            record.consumer_reference =
                semel_core::redact_national_numbers(&marker.id).into_owned();
            if marker.committed {
                record.outcome = semel_core::Outcome::Answered;
                record.detail = semel_core::redact_national_numbers(&format!(
                    "{}; recorded on settling: the broker that applied it ({}) stopped after its commit, before this entry",
                    marker.closing, marker.broker
                ))
                .into_owned();
                self.append_durably(record).await?;
                registry.close_apply(&marker.id, true).await?;
            } else {
                if !registry.close_apply(&marker.id, false).await? {
                    // Committed or settled meanwhile: the next round sees.
                    continue;
                }
                record.decision = semel_core::AuditDecision::Refused;
                record.reason = Some(semel_core::ReasonCode::ApplyInterrupted);
                record.detail = semel_core::redact_national_numbers(&format!(
                    "registry not applied: the broker applying it ({}) stopped before its commit; the change entries of {} took no effect; apply the files again",
                    marker.broker, marker.id
                ))
                .into_owned();
                self.append_durably(record).await?;
            }
            settled += 1;
            tracing::warn!(
                committed = marker.committed,
                "a registry apply whose broker stopped was settled in the audit log"
            );
        }
        Ok(settled)
    }

    /// Settles applies at start and every few seconds after, until
    /// aborted: on a shared database, the applies of a broker that stopped
    /// are settled by the brokers still running.
    pub fn settle_applies_task(self: &std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        let broker = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = broker.settle_applies().await {
                    tracing::warn!(error = %e.message, "could not settle registry applies; trying again");
                }
            }
        })
    }
}
