//! The integration lock: who holds it, ending a holder that stalled, and the
//! time limits that free it when a broker freezes mid-round.

use std::time::Duration;

use super::{INTEGRATION_LOCK, MIN_INTEGRATION_LIMIT, limits_sql};
use crate::{PgAudit, PgError};

/// Who holds the integration lock, when another session does.
#[derive(Debug, Clone, PartialEq)]
pub struct LockHolder {
    pub pid: i32,
    pub application_name: String,
    /// `pg_stat_activity.state`: `idle in transaction` for a transaction
    /// lock whose holder stopped answering, `idle` for a session lock.
    pub state: String,
    /// Seconds since the holder last changed state.
    pub still_for: f64,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PostgreSQL backend {} ({:?}, {} for {:.0} s)",
            self.pid, self.application_name, self.state, self.still_for
        )
    }
}

impl PgAudit {
    /// Who holds the integration lock, if a session other than this one
    /// does.
    pub async fn integration_lock_holder(&self) -> Result<Option<LockHolder>, PgError> {
        let row = self
            .conn
            .client
            .query_opt(
                "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.state, ''), \
                        coalesce(extract(epoch FROM now() - a.state_change), 0)::float8 \
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                   AND l.classid = ($1::bigint >> 32)::oid AND l.objid = ($1::bigint & 4294967295)::oid \
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                   AND a.pid <> pg_backend_pid() \
                 LIMIT 1",
                &[&INTEGRATION_LOCK],
            )
            .await?;
        Ok(row.map(|r| LockHolder {
            pid: r.get(0),
            application_name: r.get(1),
            state: r.get(2),
            still_for: r.get(3),
        }))
    }

    /// Ends the session holding the integration lock when it has sat idle
    /// inside its transaction for longer than `stalled`: an integrator
    /// never does (its rounds run statement after statement), so that
    /// holder is frozen or gone (a broker stopped with `kill -STOP`, a
    /// host that vanished) and its lock would otherwise stop every
    /// broker's signing. A session lock (`pg_advisory_lock`, taken
    /// outside a transaction, as an administrator would) is not ended:
    /// it is reported, and the checkpoint age says the rest. Returns the
    /// holder found, and whether it was ended.
    pub async fn free_stalled_integration_lock(
        &self,
        stalled: Duration,
    ) -> Result<Option<(LockHolder, bool)>, PgError> {
        let Some(holder) = self.integration_lock_holder().await? else {
            return Ok(None);
        };
        if holder.state != "idle in transaction" || holder.still_for < stalled.as_secs_f64() {
            return Ok(Some((holder, false)));
        }
        let ended: bool = self
            .conn
            .client
            .query_one("SELECT pg_terminate_backend($1)", &[&holder.pid])
            .await?
            .get(0);
        Ok(Some((holder, ended)))
    }

    /// For tests: starts an integration transaction with this
    /// connection's limits, takes the integration lock and returns with
    /// the transaction left open, as a broker frozen mid-round leaves it.
    #[doc(hidden)]
    pub async fn begin_integration_and_freeze(&mut self) -> Result<(), PgError> {
        let limits = self.integration_limit.map(limits_sql).unwrap_or_default();
        self.conn
            .client()
            .await?
            .batch_execute(&format!(
                "BEGIN; {limits}; SELECT pg_advisory_xact_lock({INTEGRATION_LOCK})"
            ))
            .await?;
        Ok(())
    }

    /// Gives this connection's integration transactions time limits: a
    /// lock wait or a statement longer than twice `every`, or the session
    /// idle for `every` inside the transaction (the broker frozen, its
    /// host gone), ends the transaction and frees the integration lock, so
    /// another broker signs within two intervals. Without it (the
    /// default), the server's own settings apply.
    pub fn set_integration_limits(&mut self, every: Duration) {
        self.integration_limit = Some(every.max(MIN_INTEGRATION_LIMIT));
    }
}
