//! Running the broker and the demo sources: each takes an already bound
//! listener and a shutdown future, so tests bind port 0 and never sleep.
//!
//! The router and its layers are in `routes`, the health service in
//! `health`, the work done in the background while serving in `tasks`, and
//! the files reloaded while running in `reload`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::transport::Server;

mod health;
mod reload;
mod routes;
mod tasks;

pub use health::{WaitingHealth, source_health_name};
use health::{watch_checkpoint_age, watch_health};
use reload::reload_files;
pub use reload::{Loaded, ReloadFiles, Reloader, load_all};
pub use routes::{Layered, MAX_REQUEST, SERVED_SERVICES, broker_routes, with_layers};
use tasks::{apply_verdict, archive_old_entries, submit_checkpoints, summarise_refusals};

use crate::audit::AuditService;
use crate::config::{Config, ConfigExt as _};
use crate::lookup::LookupService;
use crate::proto::source_service_server::{SourceService, SourceServiceServer};
use crate::proto::{
    audit_service_server::AuditServiceServer, lookup_service_server::LookupServiceServer,
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

/// How long a broker waits at start for its witnesses' first answers
/// before it serves (NOT_SERVING until they confirm the log).
const WITNESS_START_WAIT: Duration = Duration::from_secs(25);

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
