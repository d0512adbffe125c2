//! Running the broker and the demo sources: each takes an already bound
//! listener and a shutdown future, so tests bind port 0 and never sleep.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use anyhow::Context;
use semel_core::{Kbo, Role};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tonic::transport::Server;

mod reload;

use reload::reload_files;
pub use reload::{Loaded, ReloadFiles, Reloader, load_all};

use crate::audit::AuditService;
use crate::config::{Config, ConfigExt as _};
use crate::lookup::LookupService;
use crate::proto::source_service_server::{SourceService, SourceServiceServer};
use crate::proto::{
    audit_service_server::AuditServiceServer, consent_service_server::ConsentServiceServer,
    lookup_service_server::LookupServiceServer, persons_service_server::PersonsServiceServer,
    registry_service_server::RegistryServiceServer,
};
use crate::registry::RegistryService;
use crate::state::{Broker, SourceSettings};
use crate::tls;

/// Everything the broker needs, built and checked before any port is bound.
pub struct Prepared {
    pub broker: Arc<Broker>,
    /// Tasks that live as long as the broker serves (following registry
    /// changes made through other brokers); aborted when it stops.
    pub background: Vec<tokio::task::JoinHandle<()>>,
    /// Move audit entries older than this to the archive (none: keep all).
    pub online_window: Option<Duration>,
    pub reloader: Arc<Reloader>,
    /// Check the files for changes this often (SIGHUP reloads at any time).
    pub reload_poll: Option<Duration>,
    /// Witnesses that cosign each new checkpoint, and how the log is held
    /// to what they cosigned.
    pub witnesses: crate::witness::WitnessSettings,
    /// The gRPC port's limits on connections and calls, and its timeouts.
    pub grpc: crate::grpc_limits::GrpcSettings,
    /// How old the oldest entry no checkpoint covers may grow before the
    /// broker reports NOT_SERVING (`audit.checkpoint_age_limit_ms`).
    pub checkpoint_age_limit: Duration,
}

/// Builds the broker from its configuration: TLS, the store (recovering the
/// audit log if needed) and the operator's registration.
pub async fn prepare(config: &Config) -> anyhow::Result<Prepared> {
    let files = reload_files(config)?;
    let (tls, source_tls, tokens) = load_all(&files)?;
    if config.sources.ca.is_none() {
        // Sources are still bound to their dataset's owner, but a CA that
        // issues only sources' server certificates narrows who can answer.
        tracing::warn!(
            "sources.ca is not set: sources' server certificates are checked against tls.client_ca; give the sources' CA its own file where it differs"
        );
    }
    let opened = match config.store.postgresql() {
        None => {
            crate::stores::open_embedded(config.data_dir.clone(), config.checkpoint_settings()?)
                .await?
        }
        Some(url) => {
            crate::stores::open_postgresql_waiting(
                url,
                || config.checkpoint_signer(),
                config.pg_settings(),
                MAX_WAIT_FOR_DATABASE,
            )
            .await?
        }
    };
    crate::stores::adopt_registry(&opened.storage, config.operator_kbo()?).await?;
    crate::stores::ensure_operator(
        &opened.storage,
        config.operator_kbo()?,
        &config.operator.name,
    )
    .await?;
    let broker = Broker::new(
        opened.storage,
        SourceSettings {
            tls: source_tls,
            endpoints: Arc::new(crate::source_channel::EndpointPolicy::new(
                &config.sources.allowed_endpoints,
            )?),
            deadline: config.source_deadline(),
            limits: config.limit_settings(),
            register_dataset: semel_core::DatasetName::new(config.sources.register_dataset.clone())
                .context("sources.register_dataset")?,
            persons: config.persons_settings(),
            mutations: config.mutation_settings(),
        },
        tokens,
    )
    .await?;
    broker.metrics.watch_persons(opened.persons.clone());
    broker
        .metrics
        .watch_registry(broker.storage().registry.clone());
    let mut watching = Vec::new();
    if let Some(url) = config.store.postgresql() {
        // Other brokers change the registry: the snapshot decides only
        // while a read of the database confirms it; and health asks the
        // database, busy or idle.
        broker.bound_registry_freshness(config.store.max_staleness());
        watching.push(crate::stores::watch_registry_freshness(broker.clone()));
        watching.push(crate::stores::probe_database(
            broker.clone(),
            url.to_owned(),
        ));
    }
    let background = opened
        .changes
        .map(|changes| crate::stores::follow_registry(broker.clone(), changes))
        .into_iter()
        .chain(watching)
        .chain(opened.persons_feed)
        .chain(
            opened
                .cluster
                .map(|cluster| crate::stores::follow_cluster(broker.clone(), cluster)),
        )
        .chain(std::iter::once(broker.expire_mutations()))
        // Applies a stopped broker left unsettled, at start and after.
        .chain(std::iter::once(broker.settle_applies_task()))
        .collect();
    let reloader = Reloader::new(files, broker.clone(), tls);
    Ok(Prepared {
        broker,
        background,
        reloader,
        reload_poll: config.reload_poll(),
        witnesses: config.witness_settings()?,
        grpc: config.grpc.settings(),
        checkpoint_age_limit: config.checkpoint_age_limit(),
        online_window: (config.audit.online_days > 0)
            .then(|| Duration::from_secs(u64::from(config.audit.online_days) * 86_400)),
    })
}

/// The longest wait between two attempts to reach a broker's database at
/// start.
pub const MAX_WAIT_FOR_DATABASE: Duration = Duration::from_secs(10);

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

/// Serves the broker's gRPC services on `listener` until `shutdown`
/// resolves, then lets calls in flight finish and closes the audit log
/// after every accepted entry is durable.
pub async fn serve_broker(
    listener: TcpListener,
    prepared: Prepared,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve_broker_with_face(listener, None, prepared, shutdown).await
}

/// A future that ends when the face is to stop taking calls.
pub type FaceShutdown = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// A face's serving, until its shutdown and its calls in flight are done.
pub type FaceServing = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// What the broker hands a face other than gRPC: the broker, its services
/// behind the very layers the gRPC server runs (`with_layers`), and the
/// reloadable TLS configuration of its port.
pub struct FaceParts {
    pub broker: Arc<Broker>,
    pub service: Layered<tonic::service::Routes>,
    pub tls: Arc<ArcSwap<rustls::ServerConfig>>,
}

/// Another face of the broker on a listener of its own (the HTTP/JSON
/// face, `semel-http`, which the binary and the demo hand to
/// [`serve_broker_with_face`]). It calls the services it is handed in
/// process, so there is one lookup path however the broker is reached; and
/// this crate serves it without knowing what it speaks.
pub trait Face: Send {
    /// Where it listens: the broker never dials itself as a source.
    fn local_addr(&self) -> Option<std::net::SocketAddr>;
    /// Builds the face on `parts` (an error here stops the broker before it
    /// serves anything), and returns its serving: it stops taking calls when
    /// `shutdown` ends and returns once its calls in flight are done.
    fn start(
        self: Box<Self>,
        parts: FaceParts,
        shutdown: FaceShutdown,
    ) -> anyhow::Result<FaceServing>;
}

/// [`serve_broker`], with another face (the HTTP/JSON face) on its own
/// listener when one is given: it stops taking calls when `shutdown`
/// resolves, and the broker waits for its calls in flight before closing
/// the audit log.
pub async fn serve_broker_with_face(
    listener: TcpListener,
    face: Option<Box<dyn Face>>,
    prepared: Prepared,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Prepared {
        broker,
        background,
        reloader,
        reload_poll,
        online_window,
        witnesses,
        grpc: limits,
        checkpoint_age_limit,
    } = prepared;
    let checkpoint_age = tokio::spawn(watch_checkpoint_age(broker.clone(), checkpoint_age_limit));
    // Before anything is served: the log must be consistent with what its
    // witnesses cosigned (a restore from an older copy, a promoted standby
    // that was behind, a rewritten history halt it here).
    let mut witnessing =
        (!witnesses.targets.is_empty()).then(|| crate::witness::Witnessing::new(witnesses));
    if let Some(w) = witnessing.as_mut() {
        // Nothing is served until this round is done (the health service
        // included), so a clean start sets no condition and says nothing.
        // Bounded: witnesses that do not answer leave the broker NOT_SERVING
        // until the background rounds reach them.
        match tokio::time::timeout(WITNESS_START_WAIT, w.round(&*broker.storage().audit)).await {
            Ok(verdict) => {
                if apply_verdict(&broker, verdict) {
                    // Halted: nothing more to ask until an operator restarts.
                    witnessing = None;
                }
            }
            Err(_) => broker.readiness.set(
                crate::witness::CONDITION,
                Some(format!(
                    "the witnesses did not answer within {} s of the start; the log is not confirmed",
                    WITNESS_START_WAIT.as_secs()
                )),
            ),
        }
    }
    let witnessing = witnessing.map(|w| tokio::spawn(submit_checkpoints(broker.clone(), w)));
    let archiving = online_window.map(|w| tokio::spawn(archive_old_entries(broker.clone(), w)));
    let tls = reloader.tls.clone();
    let reloading = reloader.watch(reload_poll);
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "broker listening (mutual TLS)");
    // The broker never dials itself as a source.
    for own in addr
        .into_iter()
        .chain(face.as_ref().and_then(|f| f.local_addr()))
    {
        broker.endpoint_policy().add_own(own);
    }

    // grpc.health.v1: overall ("") and per service. Lookups report
    // NOT_SERVING once the audit log refuses appends (the broker then
    // answers no lookup), and everything does when shutdown begins, so a
    // load balancer drains the broker. Health and reflection need no client
    // certificate: probes and tools can call them.
    let (health, health_service) = tonic_health::server::health_reporter();
    if broker.storage().audit.failure().is_some() || broker.readiness.why().is_some() {
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        health
            .set_not_serving::<LookupServiceServer<LookupService>>()
            .await;
    } else {
        health
            .set_serving::<LookupServiceServer<LookupService>>()
            .await;
    }
    health
        .set_serving::<RegistryServiceServer<RegistryService>>()
        .await;
    health
        .set_serving::<AuditServiceServer<AuditService>>()
        .await;
    let watch = tokio::spawn(watch_health(broker.clone(), health.clone()));
    let summarising = tokio::spawn(summarise_refusals(broker.clone()));
    // Both reflection versions: older tools speak only v1alpha. Only the
    // services served are listed; google.rpc.* lets clients decode errors.
    let reflection = Arc::new(crate::reflection::ReflectionIndex::new(
        &[
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_types::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ],
        &SERVED_SERVICES,
    )?);
    let reflection_v1 = crate::reflection::v1::ServerReflectionServer::new(
        crate::reflection::v1::Reflection(reflection.clone()),
    );
    let reflection_v1alpha = crate::reflection::v1alpha::ServerReflectionServer::new(
        crate::reflection::v1alpha::Reflection(reflection),
    );

    let draining = health.clone();
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let closing = broker.clone();
    let shutdown = async move {
        shutdown.await;
        let _ = stopping.send(true);
        closing.begin_shutdown();
        draining
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        draining
            .set_not_serving::<LookupServiceServer<LookupService>>()
            .await;
    };
    let routes = broker_routes(&broker)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let layered = broker.clone();
    // Anyone who reaches the port may connect and call health and
    // reflection: what a peer holds is bounded (`grpc_limits`), connections
    // when they are accepted and identified, streams per connection by
    // HTTP/2 itself, calls held open by `CallSlots` before any other layer.
    let connections = crate::connection_slots::ConnectionSlots::new(
        limits.caps(),
        crate::connection_slots::ConnectionMetrics {
            face: "grpc",
            open: broker.metrics.grpc_connections.clone(),
            refused: broker.metrics.grpc_connections_refused.clone(),
        },
    );
    // The calls' timeout is `CallSlotsLayer`'s rather than tonic's, so
    // that it is DEADLINE_EXCEEDED with a reason code (tonic's is
    // CANCELLED, as for a client's own deadline).
    let grpc = Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .concurrency_limit_per_connection(limits.concurrency_limit_per_connection)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .layer(crate::grpc_limits::CallSlotsLayer::new(
            &limits,
            broker.metrics.clone(),
        ))
        .layer(tower::layer::layer_fn(move |routes| {
            with_layers(&layered, routes)
        }))
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            tls::incoming_admitted(listener, tls.clone(), None, Some(Arc::new(connections))),
            shutdown,
        );
    // The HTTP/JSON face calls the same services through the same layers,
    // in process: one lookup path, two faces.
    let face = match face {
        Some(face) => {
            let parts = FaceParts {
                broker: broker.clone(),
                service: with_layers(&broker, broker_routes(&broker)),
                tls,
            };
            let mut stopped = stopped;
            let serving = face.start(
                parts,
                Box::pin(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                }),
            )?;
            Some(tokio::spawn(serving))
        }
        None => None,
    };
    let served = grpc.await.context("serve gRPC");
    if let Some(face) = face {
        match face.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "the HTTP/JSON face failed"),
            Err(e) => tracing::error!(error = %e, "the HTTP/JSON face's task failed"),
        }
    }
    served?;
    watch.abort();
    checkpoint_age.abort();
    summarising.abort();
    if let Some(w) = witnessing {
        w.abort();
    }
    broker.record_refusal_floods().await;
    reloading.abort();
    for task in background {
        task.abort();
    }
    if let Some(a) = archiving {
        a.abort();
    }
    broker
        .storage()
        .audit
        .close()
        .await
        .context("close the audit log")?;
    tracing::info!("broker stopped; audit log closed");
    Ok(())
}

/// Serves the broker's Prometheus metrics (`GET /metrics`, plain HTTP) on
/// `listener` until `shutdown`.
pub async fn serve_metrics(
    listener: TcpListener,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(url = %format!("http://{addr}/metrics"), "metrics");
    }
    let metrics = broker.metrics.clone();
    crate::metrics::serve(
        listener,
        metrics,
        move || broker.storage().audit.stats(),
        shutdown,
    )
    .await
    .context("serve metrics")
}

/// The methods served: the only method names metrics and spans show.
fn served_methods() -> impl Iterator<Item = &'static str> + Clone {
    crate::permissions::RULES.iter().map(|r| r.method).chain([
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ])
}

/// The broker's own services (not health nor reflection), as one router:
/// the gRPC server serves them, and the HTTP/JSON face calls them.
pub fn broker_routes(broker: &Arc<Broker>) -> tonic::service::Routes {
    tonic::service::Routes::new(
        LookupServiceServer::new(LookupService::new(broker.clone()))
            .max_decoding_message_size(MAX_REQUEST),
    )
    .add_service(
        RegistryServiceServer::new(RegistryService::new(broker.clone()))
            .max_decoding_message_size(MAX_REGISTRY_REQUEST),
    )
    .add_service(
        AuditServiceServer::new(AuditService::new(broker.clone()))
            .max_decoding_message_size(MAX_REQUEST),
    )
    .add_service(
        PersonsServiceServer::new(crate::persons::PersonsService::new(broker.clone()))
            .max_decoding_message_size(MAX_REQUEST),
    )
    .add_service(
        ConsentServiceServer::new(crate::persons::ConsentService::new(broker.clone()))
            .max_decoding_message_size(MAX_REQUEST),
    )
    .add_service(
        crate::proto::mutation_service_server::MutationServiceServer::new(
            crate::mutations::MutationService::new(broker.clone()),
        )
        .max_decoding_message_size(MAX_PUBLISH_REQUEST),
    )
}

type Tagging = fn(
    tonic::codegen::http::Request<tonic::body::Body>,
) -> tonic::codegen::http::Request<tonic::body::Body>;

/// A service with the layers every call to the broker goes through,
/// whichever face it came in by.
pub type Layered<S> = crate::telemetry::RpcSpans<
    crate::metrics::RpcMetrics<tower::util::MapRequest<crate::codec::CodecErrors<S>, Tagging>>,
>;

/// Wraps `routes` in the layers, outermost first: the server span covers
/// everything else, refusals by the permission layer and the codec
/// included; metrics; the permission rule's tag; codec refusals.
pub fn with_layers<S>(broker: &Arc<Broker>, routes: S) -> Layered<S> {
    use tower::Layer;
    let tagged = crate::permissions::layer::<tonic::body::Body>().layer(
        crate::codec::CodecErrorsLayer {
            broker: broker.clone(),
        }
        .layer(routes),
    );
    let metered = crate::metrics::RpcMetricsLayer::new(broker.metrics.clone(), served_methods())
        .layer(tagged);
    crate::telemetry::RpcSpanLayer::new(served_methods()).layer(metered)
}

/// The largest lookup or audit request the broker reads.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The services the broker serves, as reflection lists them
/// (`semel.v1.SourceService` is the sources' to serve, not the broker's).
pub const SERVED_SERVICES: [&str; 9] = {
    use tonic::server::NamedService as N;
    [
        <LookupServiceServer<LookupService> as N>::NAME,
        <RegistryServiceServer<RegistryService> as N>::NAME,
        <AuditServiceServer<AuditService> as N>::NAME,
        <PersonsServiceServer<crate::persons::PersonsService> as N>::NAME,
        <ConsentServiceServer<crate::persons::ConsentService> as N>::NAME,
        <crate::proto::mutation_service_server::MutationServiceServer<
            crate::mutations::MutationService,
        > as N>::NAME,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
};

/// The largest publication of changes (up to a thousand, with values).
pub(crate) const MAX_PUBLISH_REQUEST: usize = 4 * 1024 * 1024;

/// The largest registry request (a dataset with many described fields).
pub(crate) const MAX_REGISTRY_REQUEST: usize = 1024 * 1024;

/// Moves audit entries older than `window` to the archive, at start and
/// every hour.
async fn archive_old_entries(broker: Arc<Broker>, window: Duration) {
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

/// How long a broker waits at start for its witnesses' first answers
/// before it serves (NOT_SERVING until they confirm the log).
const WITNESS_START_WAIT: Duration = Duration::from_secs(25);

/// Acts on what the witnesses said: a refusal halts the log (every lookup
/// refused, NOT_SERVING, until an operator has dealt with it and
/// restarted); too few confirmations set the `witnesses` readiness
/// condition; a quorum clears it. True once the log is halted.
fn apply_verdict(broker: &Broker, verdict: crate::witness::Verdict) -> bool {
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
async fn submit_checkpoints(broker: Arc<Broker>, mut witnessing: crate::witness::Witnessing) {
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
async fn summarise_refusals(broker: Arc<Broker>) {
    let mut interval = tokio::time::interval(Duration::from_secs(10));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        broker.record_refusal_floods().await;
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
async fn watch_checkpoint_age(broker: Arc<Broker>, limit: Duration) {
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
async fn watch_health(broker: Arc<Broker>, mut health: tonic_health::server::HealthReporter) {
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

/// Serves one source (a demo source, or a test double).
pub async fn serve_source<S: SourceService>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    source: SourceServiceServer<S>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    Server::builder()
        // A source that traces joins the broker's trace: the demo sources
        // show what an authentic source's side of a lookup looks like.
        .layer(crate::telemetry::RpcSpanLayer::new([
            "semel.v1.SourceService/Fetch",
        ]))
        .add_service(source)
        .serve_with_incoming_shutdown(
            tls::incoming(listener, Arc::new(ArcSwap::from(tls))),
            shutdown,
        )
        .await
        .context("serve demo source")
}
