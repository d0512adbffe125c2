//! Running the broker and the demo sources: each takes an already bound
//! listener and a shutdown future, so tests bind port 0 and never sleep.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use semel_core::{Kbo, Organisation, OrganisationStatus, Role};
use semel_store::Store;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::audit::AuditService;
use crate::config::Config;
use crate::lookup::LookupService;
use crate::proto::source_service_server::{SourceService, SourceServiceServer};
use crate::proto::{
    audit_service_server::AuditServiceServer, lookup_service_server::LookupServiceServer,
    registry_service_server::RegistryServiceServer,
};
use crate::registry::RegistryService;
use crate::state::{Broker, SourceSettings};
use crate::tls::{self, TlsFiles};

/// Everything the broker needs, built and checked before any port is bound.
pub struct Prepared {
    pub broker: Arc<Broker>,
    pub tls: Arc<rustls::ServerConfig>,
}

/// Builds the broker from its configuration: TLS, the store (recovering the
/// audit log if needed) and the operator's registration.
pub async fn prepare(config: &Config) -> anyhow::Result<Prepared> {
    let tls = tls::server_config(&TlsFiles {
        cert: &config.tls.cert,
        key: &config.tls.key,
        client_ca: &config.tls.client_ca,
    })?;
    let source_tls = tls::client_tls(config.sources_ca(), &config.tls.cert, &config.tls.key)?;
    let dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&dir))
        .await
        .context("open the store")?
        .with_context(|| format!("open the store in {}", config.data_dir.display()))?;
    ensure_operator(&store, config.operator_kbo()?, &config.operator.name)?;
    let broker = Broker::new(
        Arc::new(store),
        SourceSettings {
            tls: source_tls,
            deadline: config.source_deadline(),
        },
    )?;
    Ok(Prepared { broker, tls })
}

/// Registers the operator organisation if it is missing.
pub fn ensure_operator(store: &Store, kbo: Kbo, name: &str) -> anyhow::Result<()> {
    if store.registry().organisation(&kbo)?.is_none() {
        store.registry().put_organisation(&Organisation {
            kbo,
            name: name.to_owned(),
            roles: [Role::Operator].into_iter().collect(),
            status: OrganisationStatus::Active,
            created_at: OffsetDateTime::now_utc(),
        })?;
        tracing::info!(kbo = kbo.as_str(), "operator organisation registered");
    }
    Ok(())
}

/// Serves the broker's gRPC services on `listener` until `shutdown`
/// resolves, then lets calls in flight finish and closes the audit log
/// after every accepted entry is durable.
pub async fn serve_broker(
    listener: TcpListener,
    prepared: Prepared,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Prepared { broker, tls } = prepared;
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "broker listening (mutual TLS)");
    Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(LookupServiceServer::new(LookupService::new(broker.clone())))
        .add_service(RegistryServiceServer::new(RegistryService::new(
            broker.clone(),
        )))
        .add_service(AuditServiceServer::new(AuditService::new(broker.clone())))
        .serve_with_incoming_shutdown(tls::incoming(listener, tls), shutdown)
        .await
        .context("serve gRPC")?;
    broker
        .store()
        .audit()
        .close()
        .context("close the audit log")?;
    broker
        .store()
        .registry()
        .sync()
        .context("sync the registry")?;
    tracing::info!("broker stopped; audit log closed");
    Ok(())
}

/// Serves one source (a demo source, or a test double).
pub async fn serve_source<S: SourceService>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    source: SourceServiceServer<S>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    Server::builder()
        .add_service(source)
        .serve_with_incoming_shutdown(tls::incoming(listener, tls), shutdown)
        .await
        .context("serve demo source")
}
