//! A cheap, periodic question to the database, so that a broker's health
//! says whether the database it depends on answers, busy or idle: an idle
//! broker makes no other query that would notice PostgreSQL gone.

use std::time::Duration;

use crate::PgError;

/// How long a probe waits for its connection and its answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection of its own (named `semel health probe` in
/// `pg_stat_activity`), opened again after every failure.
pub struct DatabaseProbe {
    url: String,
    client: Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)>,
}

impl std::fmt::Debug for DatabaseProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseProbe").finish_non_exhaustive()
    }
}

impl Drop for DatabaseProbe {
    fn drop(&mut self) {
        if let Some((_, task)) = self.client.take() {
            task.abort();
        }
    }
}

impl DatabaseProbe {
    pub fn new(url: &str) -> DatabaseProbe {
        DatabaseProbe {
            url: url.to_owned(),
            client: None,
        }
    }

    /// Asks the database `SELECT 1` within [`PROBE_TIMEOUT`] (connecting
    /// first if needed); a failure drops the connection.
    pub async fn check(&mut self) -> Result<(), PgError> {
        let result = tokio::time::timeout(PROBE_TIMEOUT, self.ask()).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(PgError::Corrupt(format!(
                "no answer within {} ms",
                PROBE_TIMEOUT.as_millis()
            ))),
        };
        if result.is_err()
            && let Some((_, task)) = self.client.take()
        {
            task.abort();
        }
        result
    }

    async fn ask(&mut self) -> Result<(), PgError> {
        if self.client.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            let mut config: tokio_postgres::Config = self.url.parse()?;
            config.application_name("semel health probe");
            config.connect_timeout(PROBE_TIMEOUT);
            config.keepalives_idle(PROBE_TIMEOUT);
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            let task = tokio::spawn(async move {
                let _ = connection.await;
            });
            if let Some((_, old)) = self.client.replace((client, task)) {
                old.abort();
            }
        }
        let Some((client, _)) = &self.client else {
            return Err(PgError::Corrupt("no connection".into()));
        };
        client.simple_query("SELECT 1").await?;
        Ok(())
    }
}
