//! The gRPC health service: NOT_SERVING while the broker prepares, then kept current from the audit log, the readiness conditions and the sources' circuits.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use semel_core::{Kbo, Role};
use tokio::net::TcpListener;
use tonic::transport::Server;

use super::reload::{load_all, reload_files};
use crate::config::Config;
use crate::lookup::LookupService;
use crate::proto::lookup_service_server::LookupServiceServer;
use crate::state::Broker;
use crate::tls;

/// The gRPC port's health while the broker prepares (waiting for its
/// database, recovering its log): NOT_SERVING, overall and for lookups, so
/// that a probe sees a live process that is not ready rather than a closed
/// port. It answers on a copy of the broker's own listening socket; the
/// broker's server takes over the socket when [`WaitingHealth::stop`] ends
/// this one (a connection already made to it is closed; its client
/// connects again).
pub struct WaitingHealth {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl WaitingHealth {
    /// Answers NOT_SERVING on `listener` (with the configured TLS
    /// certificate) until stopped.
    pub fn start(listener: &TcpListener, config: &Config) -> anyhow::Result<WaitingHealth> {
        use std::os::fd::AsFd;
        let (tls, _, _) = load_all(&reload_files(config)?)?;
        let copy = std::net::TcpListener::from(
            listener
                .as_fd()
                .try_clone_to_owned()
                .context("copy the listening socket")?,
        );
        copy.set_nonblocking(true)
            .context("copy the listening socket")?;
        let copy = TcpListener::from_std(copy).context("copy the listening socket")?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let (health, service) = tonic_health::server::health_reporter();
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            health
                .set_not_serving::<LookupServiceServer<LookupService>>()
                .await;
            let served = Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tls::incoming_admitted(copy, Arc::new(ArcSwap::from(tls)), None, None),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the health endpoint for the broker's start failed");
            }
        });
        Ok(WaitingHealth {
            stop: Some(stop),
            task,
        })
    }

    /// Stops answering: the broker's own server takes the port over.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // A `Watch` stream would hold a graceful stop for ever.
        if tokio::time::timeout(Duration::from_secs(1), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// The health service name of a registered source, e.g.
/// `semel.source/0314595348`.
pub fn source_health_name(kbo: &Kbo) -> String {
    format!("semel.source/{}", kbo.as_str())
}

/// Keeps the checkpoint age current, every second: how long the oldest
/// entry no signed checkpoint covers has waited, by its recorded time (read
/// from the log, so a broker that restarts does not restart the count).
/// Past `limit`, the broker reports NOT_SERVING (readiness condition
/// `checkpoint`): entries are being answered that nobody has signed, be it
/// because every broker is stopped from integrating (a session holding the
/// integration lock) or because signing fails.
pub(super) async fn watch_checkpoint_age(broker: Arc<Broker>, limit: Duration) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match broker.storage().audit.oldest_uncovered().await {
            Ok(None) => {
                broker.metrics.set_checkpoint_age(0.0);
                broker.readiness.set("checkpoint", None);
            }
            Ok(Some((sequence, time_micros))) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as i64);
                let age = Duration::from_micros(now.saturating_sub(time_micros).max(0) as u64);
                broker.metrics.set_checkpoint_age(age.as_secs_f64());
                broker.readiness.set(
                    "checkpoint",
                    (age > limit).then(|| {
                        format!(
                            "audit entry {sequence}, the oldest no signed checkpoint covers, is older than the {} s bound (audit.checkpoint_age_limit_ms): \
                             checkpoints are not being signed; on PostgreSQL look for a session holding the integration lock (docs/operator-guide.md)",
                            limit.as_secs()
                        )
                    }),
                );
            }
            Err(e) => tracing::warn!(error = %e, "the checkpoint age could not be read"),
        }
    }
}

/// Keeps `grpc.health.v1` current, every second: lookups are NOT_SERVING
/// while the audit log refuses entries (the embedded log, once failed
/// closed, until a restart; PostgreSQL until it can be reached again, or
/// until a restart once it stopped for an integrity failure) or while one
/// of the broker's readiness conditions holds, and each registered source
/// is NOT_SERVING while its circuit is open.
pub(super) async fn watch_health(
    broker: Arc<Broker>,
    mut health: tonic_health::server::HealthReporter,
) {
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut unready: Option<String> = None;
    let mut known: std::collections::HashMap<Kbo, bool> = std::collections::HashMap::new();
    loop {
        interval.tick().await;
        let why = match (broker.storage().audit.failure(), broker.readiness.why()) {
            (Some(audit), Some(other)) => Some(format!("audit log: {audit}; {other}")),
            (Some(audit), None) => Some(format!("audit log: {audit}")),
            (None, other) => other,
        };
        match (&why, &unready) {
            (Some(why), None) => {
                tracing::error!(reason = %why, "lookups reported NOT_SERVING");
                health
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
                health
                    .set_not_serving::<LookupServiceServer<LookupService>>()
                    .await;
            }
            (None, Some(_)) => {
                tracing::info!("lookups reported SERVING again");
                health
                    .set_service_status("", tonic_health::ServingStatus::Serving)
                    .await;
                health
                    .set_serving::<LookupServiceServer<LookupService>>()
                    .await;
            }
            _ => {}
        }
        unready = why;
        // A source is serving unless the circuit of one of its endpoints
        // opened and no call has succeeded since (the cooldown's end alone
        // proves nothing).
        let mut current: std::collections::HashMap<Kbo, bool> = std::collections::HashMap::new();
        let snapshot = broker.snapshot();
        for org in snapshot.organisations.values() {
            if org.roles.contains(&Role::Source) {
                current.insert(org.kbo, true);
            }
        }
        for route in snapshot.routes.values() {
            if !route.guard.is_serving() {
                current.insert(route.dataset.source, false);
            }
        }
        drop(snapshot);
        for (kbo, serving) in &current {
            if known.get(kbo) != Some(serving) {
                let status = if *serving {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                health
                    .set_service_status(source_health_name(kbo), status)
                    .await;
            }
        }
        for gone in known.keys().filter(|k| !current.contains_key(k)) {
            health.clear_service_status(&source_health_name(gone)).await;
        }
        known = current;
    }
}
