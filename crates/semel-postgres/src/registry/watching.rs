//! The registry's version watched by every broker (LISTEN/NOTIFY, with polling as the fallback).

use super::*;

/// How long the watch waits for its connection or a read before it treats
/// the connection as lost.
pub(super) const WATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A broker's view of the registry's version, kept current by a task of
/// its own: LISTEN on a dedicated connection, a poll every `poll` as the
/// fallback for lost notifications, and a new connection when that one is
/// lost (reading the version at once, so nothing missed meanwhile is lost).
#[derive(Debug)]
pub struct RegistryWatch {
    pub(super) receiver: watch::Receiver<u64>,
    pub(super) confirmations: watch::Receiver<Confirmation>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

/// One successful read of the registry's version: every change committed
/// before `read_at` has a version no greater than `version`. A broker whose
/// snapshot was read at or after that version is known current as of
/// `read_at` (the freshness bound counts from there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmation {
    pub version: u64,
    /// When the read began (a read that began earlier proves less).
    pub read_at: std::time::Instant,
}

impl Drop for RegistryWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RegistryWatch {
    /// Starts watching; the first version is read before this returns.
    pub async fn start(url: &str, poll: Duration) -> Result<RegistryWatch, PgError> {
        let first = listen(url).await?;
        let read_at = std::time::Instant::now();
        let version = read_version(&first.0).await?;
        let (sender, receiver) = watch::channel(version);
        let (confirmed, confirmations) = watch::channel(Confirmation { version, read_at });
        let url = url.to_owned();
        let task = tokio::spawn(async move {
            let mut current = Some(first);
            loop {
                let (client, notified) = match current.take() {
                    Some(c) => c,
                    None => match listen(&url).await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "registry watch: PostgreSQL unreachable, retrying");
                            tokio::time::sleep(poll).await;
                            continue;
                        }
                    },
                };
                if let Err(e) = follow(&client, notified, poll, &sender, &confirmed).await {
                    tracing::warn!(error = %e, "registry watch: connection lost, reconnecting");
                }
                if sender.is_closed() {
                    return;
                }
            }
        });
        Ok(RegistryWatch {
            receiver,
            confirmations,
            task,
        })
    }

    /// A receiver woken by every successful read of the version (at each
    /// notification and each poll), whether or not the version moved: what
    /// proves a snapshot still current.
    pub fn confirmations(&self) -> watch::Receiver<Confirmation> {
        self.confirmations.clone()
    }

    /// The version last seen.
    pub fn version(&self) -> u64 {
        *self.receiver.borrow()
    }

    /// A receiver that wakes when the version moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.receiver.clone()
    }
}

pub(super) async fn read_version(client: &tokio_postgres::Client) -> Result<u64, PgError> {
    let v: i64 = client
        .query_one("SELECT version FROM registry_version WHERE id = 0", &[])
        .await?
        .get(0);
    u64::try_from(v).map_err(|_| PgError::Corrupt("a negative registry version".into()))
}

/// A connection listening on the registry channel, and a receiver woken by
/// each notification (closed when the connection ends).
pub(super) async fn listen(
    url: &str,
) -> Result<(tokio_postgres::Client, tokio::sync::mpsc::Receiver<()>), PgError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    // Named, so that an operator looking at pg_stat_activity knows it.
    config.application_name("semel registry watch");
    // A half-open connection (a primary gone without closing it) must not
    // hold the watch for the operating system's minutes.
    config.connect_timeout(WATCH_TIMEOUT);
    config.keepalives_idle(WATCH_TIMEOUT);
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    let (wake, notified) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                    // One pending wake is enough: the version is read anew.
                    let _ = wake.try_send(());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    Ok((client, notified))
}

/// Reads the version at each notification and each poll, until the
/// connection fails.
pub(super) async fn follow(
    client: &tokio_postgres::Client,
    mut notified: tokio::sync::mpsc::Receiver<()>,
    poll: Duration,
    sender: &watch::Sender<u64>,
    confirmed: &watch::Sender<Confirmation>,
) -> Result<(), PgError> {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A read that does not come back within the bound counts as a lost
        // connection: the watch reconnects rather than waiting.
        let read_at = std::time::Instant::now();
        let version = tokio::time::timeout(WATCH_TIMEOUT, read_version(client))
            .await
            .map_err(|_| PgError::Corrupt("the registry version read timed out".into()))??;
        confirmed.send_replace(Confirmation { version, read_at });
        sender.send_if_modified(|v| {
            let moved = *v != version;
            *v = version;
            moved
        });
        if sender.is_closed() {
            return Ok(());
        }
        tokio::select! {
            woke = notified.recv() => if woke.is_none() {
                return Err(PgError::Corrupt("the listening connection ended".into()));
            },
            _ = tick.tick() => {}
        }
    }
}
