//! The broker's state: the store, and an immutable snapshot of the registry
//! that every call reads without touching the disk. A registry change builds
//! a new snapshot and swaps it in atomically, so a suspension takes effect
//! on the very next call.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use semel_core::{
    Authorisation, Dataset, DatasetName, Kbo, Organisation, OrganisationStatus, Role,
};
use semel_store::Store;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::error::ApiError;
use crate::limits::{ConsumerLimits, LimitSettings, SourceGuard};
use crate::proto::source_service_client::SourceServiceClient;
use crate::tls::PeerIdentity;

/// Where a dataset's lookups go.
pub struct Route {
    pub dataset: Dataset,
    pub client: SourceServiceClient<Channel>,
    /// In-flight cap and circuit breaker of the source's endpoint.
    pub guard: Arc<SourceGuard>,
}

/// The registry as one consistent, read-only value.
#[derive(Default)]
pub struct Snapshot {
    pub organisations: BTreeMap<Kbo, Arc<Organisation>>,
    pub routes: BTreeMap<DatasetName, Arc<Route>>,
    pub authorisations: BTreeMap<String, Authorisation>,
    /// Dataset, then consumer: looked up with borrowed keys, no allocation.
    by_dataset_consumer: HashMap<DatasetName, HashMap<Kbo, Vec<Authorisation>>>,
}

impl Snapshot {
    /// The authorisations of one consumer for one dataset: the only ones
    /// `decide()` needs to see.
    pub fn authorisations_for(&self, consumer: Kbo, dataset: &DatasetName) -> &[Authorisation] {
        self.by_dataset_consumer
            .get(dataset)
            .and_then(|by_consumer| by_consumer.get(&consumer))
            .map_or(&[], Vec::as_slice)
    }
}

/// Settings for calling sources.
#[derive(Clone)]
pub struct SourceSettings {
    pub tls: ClientTlsConfig,
    /// How long a source may take to answer one lookup.
    pub deadline: Duration,
    pub limits: LimitSettings,
}

/// The authenticated caller of an RPC.
#[derive(Debug, Clone)]
pub struct Caller {
    pub org: Arc<Organisation>,
}

impl Caller {
    pub fn require(&self, role: Role, what: &str) -> Result<(), ApiError> {
        if self.org.roles.contains(&role) {
            Ok(())
        } else {
            Err(ApiError::denied(
                "ROLE_REQUIRED",
                format!(
                    "{what} is for organisations registered with the {role:?} role; yours is not"
                ),
            )
            .with("required_role", format!("{role:?}").to_lowercase()))
        }
    }
}

/// The broker.
pub struct Broker {
    store: Arc<Store>,
    snapshot: ArcSwap<Snapshot>,
    sources: SourceSettings,
    channels: Mutex<HashMap<String, Channel>>,
    guards: Mutex<HashMap<String, Arc<SourceGuard>>>,
    pub(crate) consumer_limits: ConsumerLimits,
    /// Serialises registry changes, so read-modify-write cannot interleave.
    pub(crate) admin: tokio::sync::Mutex<()>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Broker {
    pub fn new(store: Arc<Store>, sources: SourceSettings) -> anyhow::Result<Arc<Self>> {
        let consumer_limits = ConsumerLimits::new(&sources.limits);
        let broker = Arc::new(Broker {
            store,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            sources,
            channels: Mutex::new(HashMap::new()),
            guards: Mutex::new(HashMap::new()),
            consumer_limits,
            admin: tokio::sync::Mutex::new(()),
            metrics: Arc::default(),
        });
        broker
            .reload()
            .map_err(|e| anyhow::anyhow!("load the registry: {}", e.message))?;
        Ok(broker)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn source_deadline(&self) -> Duration {
        self.sources.deadline
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// Rebuilds the snapshot from the store. Channels to sources are kept
    /// across reloads when their endpoint did not change.
    pub fn reload(&self) -> Result<(), ApiError> {
        let reg = self.store.registry();
        let organisations = reg
            .organisations()?
            .into_iter()
            .map(|o| (o.kbo, Arc::new(o)))
            .collect();
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let mut routes = BTreeMap::new();
        for dataset in reg.datasets()? {
            let channel = match channels.get(&dataset.endpoint) {
                Some(c) => c.clone(),
                None => {
                    let c = self.channel(&dataset.endpoint)?;
                    channels.insert(dataset.endpoint.clone(), c.clone());
                    c
                }
            };
            let client = SourceServiceClient::new(channel);
            let guard = self
                .guards
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(dataset.endpoint.clone())
                .or_insert_with(|| Arc::new(SourceGuard::new(&self.sources.limits)))
                .clone();
            routes.insert(
                dataset.name.clone(),
                Arc::new(Route {
                    dataset,
                    client,
                    guard,
                }),
            );
        }
        let mut authorisations = BTreeMap::new();
        let mut by_dataset_consumer: HashMap<DatasetName, HashMap<Kbo, Vec<Authorisation>>> =
            HashMap::new();
        for a in reg.authorisations()? {
            by_dataset_consumer
                .entry(a.dataset.clone())
                .or_default()
                .entry(a.consumer)
                .or_default()
                .push(a.clone());
            authorisations.insert(a.reference.as_str().to_owned(), a);
        }
        self.snapshot.store(Arc::new(Snapshot {
            organisations,
            routes,
            authorisations,
            by_dataset_consumer,
        }));
        Ok(())
    }

    fn channel(&self, endpoint: &str) -> Result<Channel, ApiError> {
        let bad = |e: tonic::transport::Error| {
            ApiError::invalid(
                "dataset.endpoint",
                "INVALID_ENDPOINT",
                format!("the source endpoint {endpoint} is not usable: {e}"),
            )
        };
        Ok(Endpoint::from_shared(endpoint.to_owned())
            .map_err(bad)?
            .tls_config(self.sources.tls.clone())
            .map_err(bad)?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_lazy())
    }

    /// Identifies the caller from its connection's verified certificate and
    /// the registry. This is the only place a caller's identity is made.
    pub fn authenticate<T>(&self, request: &tonic::Request<T>) -> Result<Caller, ApiError> {
        let peer = request.extensions().get::<Arc<PeerIdentity>>();
        let Some(cert) = peer.and_then(|p| p.certificate.as_ref()) else {
            return Err(ApiError::unauthenticated(
                "CLIENT_CERTIFICATE_REQUIRED",
                "present the client certificate issued to your organisation (mutual TLS)",
            ));
        };
        let kbo = cert.kbo.as_ref().map_err(|why| {
            ApiError::unauthenticated(
                "CERTIFICATE_WITHOUT_ORGANISATION",
                format!("{why}; use a certificate whose subject carries organizationIdentifier NTRBE-<enterprise number>"),
            )
        })?;
        let snapshot = self.snapshot();
        let org = snapshot.organisations.get(kbo).cloned().ok_or_else(|| {
            ApiError::unauthenticated(
                "ORGANISATION_NOT_REGISTERED",
                "your organisation is not registered with this broker; ask the operator to register it",
            )
        })?;
        if org.status == OrganisationStatus::Suspended {
            return Err(ApiError::denied(
                "ORGANISATION_SUSPENDED",
                "your organisation is suspended on this broker; contact the operator",
            ));
        }
        Ok(Caller { org })
    }
}
