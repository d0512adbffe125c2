//! The broker's background work while it serves: archiving old entries, submitting checkpoints to the witnesses, summarising refusals.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::state::Broker;

/// Moves audit entries older than `window` to the archive, at start and
/// every hour.
pub(super) async fn archive_old_entries(broker: Arc<Broker>, window: Duration) {
    let mut interval = tokio::time::interval(Duration::from_secs(3600));
    loop {
        interval.tick().await;
        let cutoff = (OffsetDateTime::now_utc() - window).unix_timestamp_nanos() / 1000;
        match broker.storage().audit.archive_before(cutoff as i64).await {
            Ok(Some(r)) => tracing::info!(
                from = r.from,
                to = r.to,
                file = %r.file.display(),
                "audit entries past the online window archived"
            ),
            Ok(None) => {}
            Err(semel_storage::StorageError::Unsupported(why)) => {
                tracing::warn!(reason = %why, "audit.online_days is set but this store does not archive");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "archiving audit entries failed; retrying in an hour")
            }
        }
    }
}

/// Acts on what the witnesses said: a refusal halts the log (every lookup
/// refused, NOT_SERVING, until an operator has dealt with it and
/// restarted); too few confirmations set the `witnesses` readiness
/// condition; a quorum clears it. True once the log is halted.
pub(super) fn apply_verdict(broker: &Broker, verdict: crate::witness::Verdict) -> bool {
    use crate::witness::{CONDITION, Verdict};
    match verdict {
        Verdict::Confirmed => {
            broker.readiness.set(CONDITION, None);
            false
        }
        Verdict::Unconfirmed(why) => {
            broker.readiness.set(CONDITION, Some(why));
            false
        }
        Verdict::Refused(why) => {
            tracing::error!(reason = %why, "the audit log halts: it is not the history its witnesses cosigned");
            broker.storage().audit.halt(why);
            broker.readiness.set(CONDITION, None);
            true
        }
    }
}

/// Submits every new signed checkpoint to the witnesses, each from the last
/// size it cosigned (learnt from a 409 the first time), with a consistency
/// proof, and keeps the cosignatures that verify with the witnesses' keys
/// on the newest checkpoint ([`crate::witness::Witnessing::round`]). A
/// witness that cosigned more than this log holds, or another history,
/// halts the log.
pub(super) async fn submit_checkpoints(
    broker: Arc<Broker>,
    mut witnessing: crate::witness::Witnessing,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let verdict = witnessing.round(&*broker.storage().audit).await;
        if apply_verdict(&broker, verdict) {
            return;
        }
    }
}

/// Records refused calls counted beyond organisations' budgets as summary
/// entries, every ten seconds.
pub(super) async fn summarise_refusals(broker: Arc<Broker>) {
    let mut interval = tokio::time::interval(Duration::from_secs(10));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        broker.record_refusal_floods().await;
    }
}
