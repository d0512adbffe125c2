//! What one broker knows of the others on the same database, through one
//! connection of its own: the changes they queue (LISTEN on
//! [`MUTATIONS_CHANNEL`], notified by the publishing transaction itself),
//! and how many brokers are alive (a heartbeat row in `brokers` every
//! `heartbeat`, counted by the database's clock), from which each broker
//! takes its share of every organisation's limits.
//!
//! When the connection is lost the task connects again (backing off);
//! meanwhile it says it is not listening, so that subscriptions fall back
//! to polling, and the count of live brokers stays what it was last (a
//! broker never takes a larger share because it cannot see the others).

use std::time::Duration;

use tokio::sync::watch;

use crate::PgError;

/// The channel a publishing transaction notifies when it queued changes.
pub const MUTATIONS_CHANNEL: &str = "semel_mutations";

/// How long a statement or a connection attempt of the cluster
/// connection may take before it counts as lost.
const TIMEOUT: Duration = Duration::from_secs(5);

/// How often a broker says it is alive, and how long the others count it
/// as alive after it last did.
#[derive(Debug, Clone, Copy)]
pub struct ClusterSettings {
    pub heartbeat: Duration,
    pub live_within: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            heartbeat: Duration::from_secs(1),
            live_within: Duration::from_secs(5),
        }
    }
}

/// One broker's view of the others (see the module's documentation).
#[derive(Debug)]
pub struct Cluster {
    wakes: watch::Receiver<u64>,
    listening: watch::Receiver<bool>,
    live: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Cluster {
    /// Connects (applying the migrations this binary knows), says this broker (`id`, unique per process) is alive and
    /// counts the live brokers before returning, then follows on a task of
    /// its own.
    pub async fn start(url: &str, id: &str, settings: ClusterSettings) -> Result<Cluster, PgError> {
        let first = listen(url).await?;
        crate::migrate(&first.0).await?;
        let live = heartbeat(&first.0, id, settings.live_within).await?;
        let (wakes_tx, wakes) = watch::channel(0u64);
        let (listening_tx, listening) = watch::channel(true);
        let (live_tx, live_rx) = watch::channel(live);
        let (url_owned, id_owned) = (url.to_owned(), id.to_owned());
        let task = tokio::spawn(async move {
            let mut current = Some(first);
            let mut wait = settings.heartbeat;
            loop {
                let (client, notified) = match current.take() {
                    Some(c) => c,
                    None => match listen(&url_owned).await {
                        Ok(c) => {
                            tracing::info!(
                                "mutation listener: connected again; changes published through other brokers wake subscriptions at once"
                            );
                            // Whatever was queued while not listening is
                            // read now.
                            wakes_tx.send_modify(|n| *n = n.wrapping_add(1));
                            c
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "mutation listener: PostgreSQL unreachable, retrying");
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(Duration::from_secs(10));
                            continue;
                        }
                    },
                };
                wait = settings.heartbeat;
                listening_tx.send_if_modified(|l| !std::mem::replace(l, true));
                let lost =
                    follow(&client, notified, &id_owned, settings, &wakes_tx, &live_tx).await;
                listening_tx.send_if_modified(|l| std::mem::replace(l, false));
                if wakes_tx.is_closed() && live_tx.is_closed() && listening_tx.is_closed() {
                    return;
                }
                tracing::warn!(
                    error = %lost,
                    "mutation listener: connection lost; subscriptions poll for changes published through other brokers until it is back"
                );
            }
        });
        Ok(Cluster {
            wakes,
            listening,
            live: live_rx,
            task,
        })
    }

    /// Moves on at each change queued through any broker (and when the
    /// listener connects again, for what it may have missed).
    pub fn wakes(&self) -> watch::Receiver<u64> {
        self.wakes.clone()
    }

    /// Whether notifications are being received.
    pub fn listening(&self) -> watch::Receiver<bool> {
        self.listening.clone()
    }

    /// Brokers alive on the database, this one included (at least 1).
    pub fn live(&self) -> watch::Receiver<usize> {
        self.live.clone()
    }
}

/// A connection listening on the mutations channel, and a receiver woken
/// by each notification (closed when the connection ends).
async fn listen(
    url: &str,
) -> Result<(tokio_postgres::Client, tokio::sync::mpsc::Receiver<()>), PgError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    // Named, so that an operator looking at pg_stat_activity knows it.
    config.application_name("semel mutation listener");
    config.connect_timeout(TIMEOUT);
    config.keepalives_idle(TIMEOUT);
    let (client, mut connection) =
        tokio::time::timeout(TIMEOUT, config.connect(tokio_postgres::NoTls))
            .await
            .map_err(|_| PgError::Corrupt("connecting timed out".into()))??;
    let (wake, notified) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                    // One pending wake is enough: queues are read anew.
                    let _ = wake.try_send(());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {MUTATIONS_CHANNEL}"))
        .await?;
    Ok((client, notified))
}

/// Says this broker is alive and counts the brokers alive.
async fn heartbeat(
    client: &tokio_postgres::Client,
    id: &str,
    live_within: Duration,
) -> Result<usize, PgError> {
    let work = async {
        client
            .execute(
                "INSERT INTO brokers (id) VALUES ($1) \
                 ON CONFLICT (id) DO UPDATE SET seen_at = now()",
                &[&id],
            )
            .await?;
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM brokers \
                 WHERE seen_at >= now() - make_interval(secs => $1)",
                &[&live_within.as_secs_f64()],
            )
            .await?
            .get(0);
        // Brokers long gone are forgotten.
        client
            .execute(
                "DELETE FROM brokers WHERE seen_at < now() - interval '1 day'",
                &[],
            )
            .await?;
        Ok::<_, PgError>(usize::try_from(n).unwrap_or(1).max(1))
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| PgError::Corrupt("the heartbeat timed out".into()))?
}

/// Wakes at each notification and beats at each tick, until the
/// connection fails; returns why.
async fn follow(
    client: &tokio_postgres::Client,
    mut notified: tokio::sync::mpsc::Receiver<()>,
    id: &str,
    settings: ClusterSettings,
    wakes: &watch::Sender<u64>,
    live: &watch::Sender<usize>,
) -> PgError {
    let mut tick = tokio::time::interval(settings.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            woke = notified.recv() => match woke {
                Some(()) => wakes.send_modify(|n| *n = n.wrapping_add(1)),
                None => return PgError::Corrupt("the listening connection ended".into()),
            },
            _ = tick.tick() => match heartbeat(client, id, settings.live_within).await {
                Ok(n) => {
                    live.send_if_modified(|v| std::mem::replace(v, n) != n);
                }
                Err(e) => return e,
            },
        }
        if wakes.is_closed() && live.is_closed() {
            return PgError::Corrupt("nobody follows the cluster any more".into());
        }
    }
}
