//! The broker's state: its storage, and an immutable snapshot of the registry
//! that every call reads without touching the disk. A registry change builds
//! a new snapshot and swaps it in atomically, so a suspension takes effect
//! on the very next call.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use semel_core::{
    AuditDecision, AuditRecord, Authorisation, CertificateId, Dataset, DatasetName, Kbo, Niss,
    Organisation, OrganisationStatus, Outcome, Purpose, ReasonCode, Role, RoleSet, UserRole,
};
use semel_storage::{Storage, StorageError};
use tonic::transport::Channel;

use crate::error::ApiError;
use crate::limits::{
    CallLimits, CallRefusal, CallSlot, ConsumerLimits, LimitSettings, QuestionLimiter,
    RefusalBudget, SourceGuard,
};
use crate::permissions::{Rpc, Rule};
use crate::proto::source_service_client::SourceServiceClient;
use crate::tls::{PeerCertificate, PeerIdentity};
use crate::tokens::{EndUser, TokenError, TokenVerifier};

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
    /// The purposes catalogue, by code.
    pub purposes: BTreeMap<String, Purpose>,
    /// The capacities some authorisation names: those a file may have.
    pub capacities: std::collections::BTreeSet<semel_core::CapacityCode>,
    /// Dataset, then consumer: looked up with borrowed keys, no allocation.
    by_dataset_consumer: HashMap<DatasetName, HashMap<Kbo, Vec<Authorisation>>>,
    /// Revoked certificates, by fingerprint or serial.
    revoked: std::collections::HashSet<CertificateId>,
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

    /// Whether a certificate has been revoked, by fingerprint or serial.
    /// An intermediate CA revoked by fingerprint refuses every certificate
    /// whose presented chain holds it.
    pub fn is_revoked(&self, cert: &PeerCertificate) -> bool {
        !self.revoked.is_empty()
            && (self.revoked.contains(&cert.fingerprint)
                || cert.issuers.iter().any(|i| self.revoked.contains(i))
                || cert
                    .serial
                    .iter()
                    .chain(&cert.legacy_serial)
                    .any(|s| self.revoked.contains(s)))
    }
}

/// Settings for calling sources.
#[derive(Clone)]
pub struct SourceSettings {
    /// The client TLS config towards sources (trusting `sources.ca`).
    pub tls: Arc<rustls::ClientConfig>,
    /// Where sources may be dialled (`sources.allowed_endpoints`).
    pub endpoints: Arc<crate::source_channel::EndpointPolicy>,
    /// How long a source may take to answer one lookup.
    pub deadline: Duration,
    pub limits: LimitSettings,
    /// The dataset whose source is the register of persons.
    pub register_dataset: DatasetName,
    pub persons: PersonsSettings,
    pub mutations: MutationSettings,
}

/// The mutation queues' settings.
#[derive(Debug, Clone)]
pub struct MutationSettings {
    /// How long a change not acknowledged is kept.
    pub retention: Duration,
    /// How often a subscription or a pull reads its queue without being
    /// woken, while this broker cannot hear other brokers' changes (its
    /// PostgreSQL listener is down, or the store has none): the bound on
    /// how late a change published through another broker arrives then.
    pub fallback_poll: Duration,
}

/// The fallback poll when none is configured.
pub const DEFAULT_MUTATIONS_POLL: Duration = Duration::from_millis(250);

impl Default for MutationSettings {
    fn default() -> Self {
        MutationSettings {
            retention: Duration::from_secs(168 * 3600),
            fallback_poll: DEFAULT_MUTATIONS_POLL,
        }
    }
}

/// The persons directory's rules for files.
#[derive(Debug, Clone)]
pub struct PersonsSettings {
    /// How many days before its registration a file may begin.
    pub max_backdate_days: u32,
    /// The same, per capacity.
    pub max_backdate_days_by_capacity: BTreeMap<String, u32>,
}

impl Default for PersonsSettings {
    fn default() -> Self {
        PersonsSettings {
            max_backdate_days: 92,
            max_backdate_days_by_capacity: BTreeMap::new(),
        }
    }
}

impl PersonsSettings {
    /// How far back a file in this capacity may begin, in days.
    pub fn max_backdate(&self, capacity: &str) -> u32 {
        self.max_backdate_days_by_capacity
            .get(capacity)
            .copied()
            .unwrap_or(self.max_backdate_days)
    }
}

/// The caller of an RPC, once the certificate, the token and the
/// permission matrix all agree.
#[derive(Debug, Clone)]
pub struct Caller {
    pub org: Arc<Organisation>,
    pub user: Arc<EndUser>,
    /// The roles the person may exercise here: the token's, bounded by the
    /// organisation's registration.
    pub roles: RoleSet,
    /// The RPC being called.
    pub rule: &'static Rule,
    /// The organisation's slot for this call, when [`Broker::admit`] let it
    /// in: given back when the last copy of the caller is dropped.
    pub slot: Option<Arc<CallSlot>>,
}

impl Caller {
    pub fn has(&self, role: UserRole) -> bool {
        self.roles.contains(role)
    }

    /// Whether the caller's auditors read the whole log, rather than their
    /// own organisation's entries.
    pub fn audits_everything(&self) -> bool {
        self.has(UserRole::Auditor)
            && (self.org.roles.contains(&Role::Auditor) || self.org.roles.contains(&Role::Operator))
    }
}

/// A call refused because of who made it: the error for the caller, and
/// what is known of them for the audit entry.
#[derive(Debug)]
pub struct Denied {
    pub error: ApiError,
    pub reason: ReasonCode,
    /// The organisation, when the certificate names a registered one.
    pub org: Option<Arc<Organisation>>,
    /// The person, when the token was valid.
    pub user: Option<Arc<EndUser>>,
    /// The RPC (`package.Service/Method`).
    pub operation: &'static str,
}

/// The registry as read from storage, before it becomes a [`Snapshot`].
struct RegistryData {
    organisations: Vec<Organisation>,
    datasets: Vec<Dataset>,
    authorisations: Vec<Authorisation>,
    purposes: Vec<Purpose>,
    revoked: Vec<CertificateId>,
}

/// The broker.
pub struct Broker {
    storage: Storage,
    snapshot: ArcSwap<Snapshot>,
    sources: SourceSettings,
    /// The client TLS config for sources (the broker's certificate); it
    /// changes when certificates are reloaded.
    source_tls: Mutex<Arc<rustls::ClientConfig>>,
    /// By endpoint and the organisation the source must prove to be.
    channels: Mutex<HashMap<(String, Kbo), Channel>>,
    guards: Mutex<HashMap<String, Arc<SourceGuard>>>,
    pub(crate) consumer_limits: ConsumerLimits,
    /// Changes each source may publish: a bucket per source.
    pub(crate) publication_limits: ConsumerLimits,
    /// Different yes/no questions per consumer, citizen and field per day.
    pub(crate) questions: QuestionLimiter,
    /// Refused calls recorded one by one per organisation; the rest summarised.
    pub(crate) refusals: RefusalBudget,
    /// Audit calls in flight per organisation, and summaries per second.
    pub(crate) audit_calls: crate::limits::AuditCalls,
    pub(crate) audit_summaries: ConsumerLimits,
    /// Every RPC but the lookups: a budget and a cap in flight per organisation.
    pub(crate) calls: CallLimits,
    /// Serialises registry changes, so read-modify-write cannot interleave.
    pub(crate) admin: tokio::sync::Mutex<()>,
    /// Snapshot rebuilds in order: each reading of the registry takes a
    /// ticket before it reads, and is installed only if no later reading
    /// was installed first. Two at once (a registry change here and one
    /// announced by another broker) could otherwise store the older reading
    /// last and undo a change the API had confirmed.
    readings: std::sync::atomic::AtomicU64,
    /// The ticket of the reading the snapshot was built from; held while a
    /// snapshot is built and swapped in.
    installed: Mutex<u64>,
    /// Whether the audit log's unavailability has been logged.
    audit_unavailable_said: std::sync::atomic::AtomicBool,
    pub metrics: Arc<crate::metrics::Metrics>,
    tokens: ArcSwap<TokenVerifier>,
    /// Moves on at every change this broker queues for consumers, and at
    /// every change another broker queues while this one listens for them
    /// (PostgreSQL's NOTIFY, [`crate::stores::follow_cluster`]): wakes its
    /// subscriptions and pulls.
    pub(crate) mutations_queued: tokio::sync::watch::Sender<u64>,
    /// Whether changes queued through other brokers wake this one's
    /// subscriptions (its listener is up); while not, they poll every
    /// `MutationSettings::fallback_poll`.
    pub(crate) mutations_heard: std::sync::atomic::AtomicBool,
    /// Set by `semel bench-mutations --second-broker-polls` only: changes
    /// queued through other brokers are left to the fallback poll, as
    /// before brokers listened for them, to measure the difference.
    pub(crate) deaf_to_other_brokers: std::sync::atomic::AtomicBool,
    /// This broker's share of every organisation's limits.
    pub limit_share: crate::limits::Share,
    /// Set when the broker begins to shut down: subscriptions end (their
    /// consumers resume from their last acknowledgement elsewhere), so
    /// the server's drain does not wait on streams that never end.
    pub(crate) closing: tokio::sync::watch::Sender<bool>,
    /// Subscriptions to changes open on this broker, per organisation.
    pub(crate) subscriptions: std::sync::Mutex<HashMap<Kbo, usize>>,
    /// Pulls of changes in progress on this broker, per organisation.
    pub(crate) pulls: std::sync::Mutex<HashMap<Kbo, usize>>,
    /// Why the broker should not be sent lookups now, besides its audit
    /// log failing (health reports NOT_SERVING while any condition holds).
    pub readiness: crate::readiness::Readiness,
    /// How long the registry snapshot answers after a read of the
    /// database last confirmed it ([`Broker::registry_fresh`]).
    pub(crate) registry_freshness: RegistryFreshness,
}

/// Until when the registry snapshot may decide: one atomic, read by every
/// call. A broker alone on its store (the embedded store: every change
/// passes through it) is always fresh; a broker sharing a database is fresh
/// only within its bound after the last read that confirmed the snapshot.
pub(crate) struct RegistryFreshness {
    base: std::time::Instant,
    /// Microseconds after `base`; `u64::MAX`: always fresh.
    until: std::sync::atomic::AtomicU64,
    /// `None`: always fresh.
    bound: Mutex<Option<Duration>>,
}

impl RegistryFreshness {
    fn always() -> Self {
        RegistryFreshness {
            base: std::time::Instant::now(),
            until: std::sync::atomic::AtomicU64::new(u64::MAX),
            bound: Mutex::new(None),
        }
    }

    fn micros(&self, at: std::time::Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_micros()).unwrap_or(u64::MAX)
    }
}

impl Broker {
    pub async fn new(
        storage: Storage,
        sources: SourceSettings,
        tokens: TokenVerifier,
    ) -> anyhow::Result<Arc<Self>> {
        let limit_share = crate::limits::Share::default();
        let consumer_limits = ConsumerLimits::new(&sources.limits).shared(&limit_share);
        let publication_limits = ConsumerLimits::publications(&sources.limits).shared(&limit_share);
        let questions = QuestionLimiter::new(&sources.limits).shared(&limit_share);
        let refusals = RefusalBudget::new(&sources.limits);
        let audit_calls = crate::limits::AuditCalls::new(&sources.limits);
        let audit_summaries = ConsumerLimits::audit_summaries(&sources.limits).shared(&limit_share);
        let calls = CallLimits::new(&sources.limits).shared(&limit_share);
        let broker = Arc::new(Broker {
            storage,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            source_tls: Mutex::new(sources.tls.clone()),
            sources,
            channels: Mutex::new(HashMap::new()),
            guards: Mutex::new(HashMap::new()),
            consumer_limits,
            publication_limits,
            questions,
            refusals,
            audit_calls,
            audit_summaries,
            calls,
            admin: tokio::sync::Mutex::new(()),
            readings: std::sync::atomic::AtomicU64::new(0),
            installed: Mutex::new(0),
            audit_unavailable_said: std::sync::atomic::AtomicBool::new(false),
            metrics: Arc::default(),
            tokens: ArcSwap::from_pointee(tokens),
            mutations_queued: tokio::sync::watch::Sender::new(0),
            mutations_heard: std::sync::atomic::AtomicBool::new(false),
            deaf_to_other_brokers: std::sync::atomic::AtomicBool::new(false),
            limit_share,
            closing: tokio::sync::watch::Sender::new(false),
            subscriptions: std::sync::Mutex::default(),
            pulls: std::sync::Mutex::default(),
            readiness: crate::readiness::Readiness::default(),
            registry_freshness: RegistryFreshness::always(),
        });
        broker
            .reload()
            .await
            .map_err(|e| anyhow::anyhow!("load the registry: {}", e.message))?;
        Ok(broker)
    }

    /// The broker's storage, behind the port.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Every version of an authorisation, oldest first.
    pub async fn authorisation_history(
        &self,
        reference: &str,
    ) -> Result<Vec<semel_core::Authorisation>, crate::error::ApiError> {
        Ok(self
            .storage
            .registry
            .authorisation_history(reference)
            .await?)
    }

    pub fn source_deadline(&self) -> Duration {
        self.sources.deadline
    }

    pub fn limits(&self) -> &LimitSettings {
        &self.sources.limits
    }

    /// Takes one of an organisation's places for audit calls, as an audit
    /// call in flight would, so that a test can hold them without racing
    /// calls. Not for production use.
    #[doc(hidden)]
    pub fn hold_audit_call(&self, org: Kbo) -> Option<crate::limits::AuditCall> {
        self.audit_calls.enter(org)
    }

    /// Ends the subscriptions to changes: the broker is shutting down.
    pub fn begin_shutdown(&self) {
        self.closing.send_replace(true);
    }

    /// For `semel bench-mutations --second-broker-polls` only: changes
    /// queued through other brokers are left to the fallback poll, as
    /// before brokers listened for them, to measure the difference.
    pub fn poll_for_other_brokers_changes(&self) {
        self.deaf_to_other_brokers
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.mutations_heard
            .store(false, std::sync::atomic::Ordering::Release);
    }

    pub fn mutation_settings(&self) -> &MutationSettings {
        &self.sources.mutations
    }

    pub fn persons_settings(&self) -> &PersonsSettings {
        &self.sources.persons
    }

    pub fn register_dataset(&self) -> &DatasetName {
        &self.sources.register_dataset
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// Binds the registry snapshot's freshness to `max_staleness` after a
    /// read of the database confirmed it ([`Broker::confirm_registry`]):
    /// for a broker that shares its database with others. Until the first
    /// confirmation, the snapshot is fresh for `max_staleness` from now
    /// (it was read from the database just before).
    pub fn bound_registry_freshness(&self, max_staleness: Duration) {
        let f = &self.registry_freshness;
        *f.bound.lock().unwrap_or_else(|p| p.into_inner()) = Some(max_staleness);
        let until = f.micros(std::time::Instant::now() + max_staleness);
        f.until.store(until, std::sync::atomic::Ordering::Release);
    }

    /// A read of the database that began at `read_at` found the snapshot
    /// current: it may decide until `read_at` plus the bound.
    pub fn confirm_registry(&self, read_at: std::time::Instant) {
        let f = &self.registry_freshness;
        let Some(bound) = *f.bound.lock().unwrap_or_else(|p| p.into_inner()) else {
            return;
        };
        let until = f.micros(read_at + bound);
        f.until
            .fetch_max(until, std::sync::atomic::Ordering::AcqRel);
    }

    /// Whether the registry snapshot may decide now (one atomic load and
    /// a clock read: on every call's path).
    pub fn registry_fresh(&self) -> bool {
        let f = &self.registry_freshness;
        let until = f.until.load(std::sync::atomic::Ordering::Acquire);
        until == u64::MAX || f.micros(std::time::Instant::now()) < until
    }

    /// How long the snapshot has gone unconfirmed past its bound, when it
    /// has (for health and the log).
    pub fn registry_stale_for(&self) -> Option<Duration> {
        let f = &self.registry_freshness;
        let until = f.until.load(std::sync::atomic::Ordering::Acquire);
        let now = f.micros(std::time::Instant::now());
        (until != u64::MAX && now >= until).then(|| Duration::from_micros(now - until))
    }

    /// Rebuilds the snapshot from storage. Channels to sources are kept
    /// across reloads when their endpoint did not change.
    pub async fn reload(&self) -> Result<(), ApiError> {
        let ticket = self
            .readings
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let reg = &self.storage.registry;
        let data = RegistryData {
            organisations: reg.organisations().await?,
            datasets: reg.datasets().await?,
            authorisations: reg.authorisations().await?,
            purposes: reg.purposes().await?,
            revoked: reg
                .revoked_certificates()
                .await?
                .into_iter()
                .map(|r| r.id)
                .collect(),
        };
        #[cfg(test)]
        rebuild_tests::after_reading().await;
        let mut installed = self.installed.lock().unwrap_or_else(|p| p.into_inner());
        if ticket < *installed {
            // A later reading is in place already.
            return Ok(());
        }
        self.install(data)?;
        *installed = ticket;
        Ok(())
    }

    /// Builds a snapshot from a reading and swaps it in; the caller holds
    /// `installed`.
    fn install(&self, data: RegistryData) -> Result<(), ApiError> {
        let organisations = data
            .organisations
            .into_iter()
            .map(|o| (o.kbo, Arc::new(o)))
            .collect();
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let mut routes = BTreeMap::new();
        for dataset in data.datasets {
            let key = (dataset.endpoint.clone(), dataset.source);
            let channel = match channels.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let c = self.channel(&dataset.endpoint, dataset.source)?;
                    channels.insert(key, c.clone());
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
        let mut capacities = std::collections::BTreeSet::new();
        let mut by_dataset_consumer: HashMap<DatasetName, HashMap<Kbo, Vec<Authorisation>>> =
            HashMap::new();
        for a in data.authorisations {
            by_dataset_consumer
                .entry(a.dataset.clone())
                .or_default()
                .entry(a.consumer)
                .or_default()
                .push(a.clone());
            capacities.extend(a.capacities.iter().cloned());
            authorisations.insert(a.reference.as_str().to_owned(), a);
        }
        let purposes = data
            .purposes
            .into_iter()
            .map(|p| (p.code.as_str().to_owned(), p))
            .collect();
        self.snapshot.store(Arc::new(Snapshot {
            organisations,
            routes,
            authorisations,
            by_dataset_consumer,
            revoked: data.revoked.into_iter().collect(),
            purposes,
            capacities,
        }));
        Ok(())
    }

    /// Uses a new client certificate towards sources: channels are made
    /// anew; lookups in flight finish on the old ones. The registry is the
    /// snapshot's: only the channels change.
    pub fn set_source_tls(&self, tls: Arc<rustls::ClientConfig>) -> Result<(), ApiError> {
        let before = std::mem::replace(
            &mut *self.source_tls.lock().unwrap_or_else(|p| p.into_inner()),
            tls,
        );
        let _installed = self.installed.lock().unwrap_or_else(|p| p.into_inner());
        let channels =
            std::mem::take(&mut *self.channels.lock().unwrap_or_else(|p| p.into_inner()));
        let current = self.snapshot.load_full();
        let installed = self.install(RegistryData {
            organisations: current
                .organisations
                .values()
                .map(|o| (**o).clone())
                .collect(),
            datasets: current.routes.values().map(|r| r.dataset.clone()).collect(),
            authorisations: current.authorisations.values().cloned().collect(),
            purposes: current.purposes.values().cloned().collect(),
            revoked: current.revoked.iter().cloned().collect(),
        });
        // A configuration that cannot reach a source is not half taken:
        // the previous one and its channels stay (the snapshot was not
        // swapped).
        if installed.is_err() {
            *self.source_tls.lock().unwrap_or_else(|p| p.into_inner()) = before;
            *self.channels.lock().unwrap_or_else(|p| p.into_inner()) = channels;
        }
        installed
    }

    /// A lazy channel to the source at `endpoint`, which must prove to be
    /// `owner` before any request is sent over it.
    fn channel(&self, endpoint: &str, owner: Kbo) -> Result<Channel, ApiError> {
        let tls = self
            .source_tls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        crate::source_channel::channel(endpoint, owner, tls, self.sources.endpoints.clone())
            .map_err(|m| ApiError::invalid("dataset.endpoint", "INVALID_ENDPOINT", m))
    }

    /// Where sources may be dialled.
    pub fn endpoint_policy(&self) -> &crate::source_channel::EndpointPolicy {
        &self.sources.endpoints
    }

    /// Refuses an endpoint that resolves to an address sources may not use
    /// (loopback, link-local, private, unspecified, the broker's own) and
    /// the operator did not allow.
    pub async fn check_endpoint(&self, endpoint: &str) -> Result<(), ApiError> {
        self.sources
            .endpoints
            .check_endpoint(endpoint)
            .await
            .map_err(|why| {
                ApiError::invalid(
                    "dataset.endpoint",
                    "INVALID_ENDPOINT",
                    format!("the source endpoint {endpoint} is refused: {why}"),
                )
            })
    }

    /// Identifies and authorises the caller: the connection's verified
    /// certificate names the organisation, the token names the person, and
    /// the permission matrix says whether their roles may call this RPC.
    /// This is the only place a caller's identity is made.
    pub fn authorize<T>(&self, request: &tonic::Request<T>) -> Result<Caller, Box<Denied>> {
        self.authorize_parts(&Credentials::of(request))
    }

    /// [`Broker::authorize`] from the parts of a call kept aside: a stream
    /// re-checks them for every item, so a certificate revoked, a key
    /// withdrawn, a token expired or an organisation suspended during the
    /// stream stops covering the items that follow.
    /// The organisation a connection's certificate identifies: present,
    /// naming an organisation, not revoked, registered, not expired and
    /// the organisation not suspended. What every call checks first (and
    /// the HTTP/JSON face's own answers, which call no RPC).
    pub fn certified<'p>(
        &self,
        peer: Option<&'p Arc<PeerIdentity>>,
        operation: &'static str,
    ) -> Result<(Arc<Organisation>, &'p crate::tls::PeerCertificate), Box<Denied>> {
        let deny = |error: ApiError,
                    reason,
                    org: Option<&Arc<Organisation>>,
                    user: Option<&Arc<EndUser>>| {
            denied(error, reason, org, user, operation)
        };
        let Some(cert) = peer.and_then(|p| p.certificate.as_ref()) else {
            return Err(deny(
                ApiError::unauthenticated(
                    "CLIENT_CERTIFICATE_REQUIRED",
                    "present the client certificate issued to your organisation (mutual TLS)",
                ),
                ReasonCode::InvalidArgument,
                None,
                None,
            ));
        };
        let kbo = cert.kbo.as_ref().map_err(|why| {
            deny(
                ApiError::unauthenticated(
                    "CERTIFICATE_WITHOUT_ORGANISATION",
                    format!("{why}; use a certificate whose subject carries organizationIdentifier NTRBE-<enterprise number>"),
                ),
                ReasonCode::InvalidArgument,
                None,
                None,
            )
        })?;
        let snapshot = self.snapshot();
        let org = snapshot.organisations.get(kbo);
        // A snapshot not confirmed current decides nothing: a suspension
        // or a revocation made through another broker may be missing.
        if !self.registry_fresh() {
            return Err(deny(
                ApiError::retryable(
                    tonic::Code::Unavailable,
                    "REGISTRY_STALE",
                    "this broker cannot confirm that its copy of the registry is current (its database is not answering it), so it decides nothing; try again later or through another broker",
                ),
                ReasonCode::RegistryStale,
                org,
                None,
            ));
        }
        if snapshot.is_revoked(cert) {
            return Err(deny(
                ApiError::unauthenticated(
                    "CERTIFICATE_REVOKED",
                    "this certificate has been revoked; ask your organisation for its new certificate",
                ),
                ReasonCode::CertificateRevoked,
                org,
                None,
            ));
        }
        let Some(org) = org else {
            return Err(deny(
                ApiError::unauthenticated(
                    "ORGANISATION_NOT_REGISTERED",
                    "your organisation is not registered with this broker; ask the operator to register it",
                ),
                ReasonCode::InvalidArgument,
                None,
                None,
            ));
        };
        if cert.expired_at(std::time::SystemTime::now()) {
            return Err(deny(
                ApiError::unauthenticated(
                    "CERTIFICATE_EXPIRED",
                    "this certificate has expired; connect again with your organisation's new certificate",
                ),
                ReasonCode::CertificateExpired,
                Some(org),
                None,
            ));
        }
        if org.status == OrganisationStatus::Suspended {
            return Err(deny(
                ApiError::denied(
                    "ORGANISATION_SUSPENDED",
                    "your organisation is suspended on this broker; contact the operator",
                ),
                ReasonCode::OrganisationSuspended,
                Some(org),
                None,
            ));
        }
        Ok((org.clone(), cert))
    }

    pub fn authorize_parts(&self, credentials: &Credentials<'_>) -> Result<Caller, Box<Denied>> {
        let rule = credentials.rule;
        let operation = rule.map_or("unknown", |r| r.method);
        let deny = |error: ApiError,
                    reason,
                    org: Option<&Arc<Organisation>>,
                    user: Option<&Arc<EndUser>>| {
            denied(error, reason, org, user, operation)
        };
        let (org, cert) = self.certified(credentials.peer, operation)?;
        let org = &org;
        let tokens = self.tokens.load();
        let user = credentials
            .token
            .ok_or(TokenError::Missing)
            .and_then(|t| tokens.verify(t, cert.sha256))
            .map_err(|e| {
                deny(
                    ApiError::unauthenticated(e.reason().as_str(), e.message(tokens.audience())),
                    e.reason(),
                    Some(org),
                    None,
                )
            })?;
        if user.organisation != org.kbo {
            return Err(deny(
                ApiError::unauthenticated(
                    "TOKEN_ORGANISATION_MISMATCH",
                    "the token was issued for another organisation than the one your certificate names; one administration cannot act for another",
                ),
                ReasonCode::TokenOrganisationMismatch,
                Some(org),
                None,
            ));
        }
        let Some(rule) = rule else {
            return Err(deny(
                ApiError::denied("ROLE_NOT_PERMITTED", "this RPC is open to no role"),
                ReasonCode::RoleNotPermitted,
                Some(org),
                Some(&user),
            ));
        };
        let needed: RoleSet = rule.roles.iter().copied().collect();
        let roles = user.roles.allowed_for(&org.roles);
        if !roles.intersects(needed) {
            let (reason, code, message) = if user.roles.intersects(needed) {
                (
                    "ORGANISATION_ROLE_MISSING",
                    ReasonCode::OrganisationRoleMissing,
                    format!(
                        "this call needs one of the roles {needed}; your token grants one, but your organisation is not registered for it; ask the operator"
                    ),
                )
            } else {
                (
                    "ROLE_NOT_PERMITTED",
                    ReasonCode::RoleNotPermitted,
                    format!(
                        "this call needs one of the roles {needed}; your token grants {}",
                        if user.roles.is_empty() {
                            "none".to_owned()
                        } else {
                            user.roles.to_string()
                        }
                    ),
                )
            };
            return Err(deny(
                ApiError::denied(reason, message).with("required_roles", needed.to_string()),
                code,
                Some(org),
                Some(&user),
            ));
        }
        Ok(Caller {
            org: org.clone(),
            user,
            roles,
            rule,
            slot: None,
        })
    }

    /// Like [`Broker::authorize`], for RPCs other than lookups: a refusal
    /// whose organisation is known is recorded in the audit log. The call
    /// then counts against its organisation's budget of calls and takes one
    /// of its slots in flight (held by the caller returned), on both faces:
    /// a script that loops on ListFiles, GiveConsent or PullMutations is
    /// held to its own budget and leaves the store to the others. Lookups
    /// (LookupBatch's stream too) have their own rate and quota per item.
    pub async fn admit<T>(&self, request: &tonic::Request<T>) -> Result<Caller, ApiError> {
        let mut caller = match self.authorize(request) {
            Ok(caller) => caller,
            Err(denied) => return Err(self.record_refusal(*denied, None).await),
        };
        if caller.rule.method.starts_with("semel.v1.LookupService/") {
            return Ok(caller);
        }
        match self.calls.enter(caller.org.kbo, std::time::Instant::now()) {
            Ok(slot) => {
                caller.slot = Some(Arc::new(slot));
                Ok(caller)
            }
            Err(CallRefusal::Rate(wait)) => {
                let error = ApiError {
                    retry_after: Some(wait),
                    ..ApiError::new(
                        tonic::Code::ResourceExhausted,
                        "RATE_LIMITED",
                        format!(
                            "your organisation exceeded its rate of calls ({} per second); retry in {} ms",
                            self.sources.limits.calls_per_second,
                            wait.as_millis().max(1)
                        ),
                    )
                };
                Err(self
                    .refuse(&caller, error, ReasonCode::RateLimited, None)
                    .await)
            }
            Err(CallRefusal::InFlight(cap)) => {
                let error = ApiError {
                    retry_after: Some(Duration::from_millis(100)),
                    ..ApiError::new(
                        tonic::Code::ResourceExhausted,
                        "RATE_LIMITED",
                        format!(
                            "your organisation has {cap} calls in progress on this broker already; wait for their answers, then retry"
                        ),
                    )
                };
                Err(self
                    .refuse(&caller, error, ReasonCode::RateLimited, None)
                    .await)
            }
        }
    }

    /// Whether a refusal of `org`'s gets its own audit entry: within the
    /// organisation's budget of refusals it does; beyond it, it is counted
    /// and recorded later as part of one summary entry, so that a flood of
    /// refused calls (a revoked certificate, a caller without a token) cannot
    /// fill the disk or citizens' views.
    pub fn refusal_recorded_alone(&self, org: Kbo, reason: &'static str) -> bool {
        let now = time::OffsetDateTime::now_utc();
        self.refusals.admit(
            org,
            std::time::Instant::now(),
            reason,
            (now.unix_timestamp_nanos() / 1000) as i64,
        )
    }

    /// Records the refusals counted beyond organisations' budgets, one
    /// summary entry per organisation: how many, why, from when to when.
    pub async fn record_refusal_floods(&self) {
        let floods = self.refusals.take_floods();
        let mut failed = Vec::new();
        for (org, flood) in floods {
            let mut record = blank_record(new_id(), REFUSALS_SUMMARY_OPERATION, org, None);
            record.time_micros = flood.last_micros;
            record.decision = AuditDecision::Refused;
            let top = flood
                .reasons
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(r, _)| *r);
            record.reason = top.and_then(ReasonCode::parse);
            record.detail = format!(
                "{} refused calls not recorded one by one (over {} per second) between {} and {} (µs since the epoch): {}",
                flood.count,
                self.sources.limits.refusals_per_second,
                flood.first_micros,
                flood.last_micros,
                flood
                    .reasons
                    .iter()
                    .map(|(r, n)| format!("{r} ×{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if let Err(e) = self.storage.audit.append(record).await {
                self.audit_unavailable(&e);
                failed.push((org, flood));
            } else {
                tracing::warn!(
                    organisation = org.as_str(),
                    refused = flood.count,
                    "refused calls summarised in the audit log"
                );
            }
        }
        if !failed.is_empty() {
            self.refusals.restore(failed);
        }
    }

    /// Records a refused call (when its organisation is known) and returns
    /// the error to send.
    pub async fn record_refusal(&self, denied: Denied, citizen: Option<Niss>) -> ApiError {
        let Denied {
            error,
            reason,
            org,
            user,
            operation,
        } = denied;
        let request_id = new_id();
        let Some(org) = org else {
            // `authorize_parts` gave it its request id.
            tracing::info!(
                operation,
                reason = error.reason,
                "call refused: caller not identified"
            );
            return error;
        };
        if !self.refusal_recorded_alone(org.kbo, error.reason) {
            return error
                .with("audit", "summarised")
                .with("request_id", request_id.to_string());
        }
        let mut record = blank_record(
            request_id,
            operation,
            org.kbo,
            user.map(|u| recorded_end_user(&u, citizen, None)),
        );
        record.citizen = citizen;
        record.decision = AuditDecision::Refused;
        record.reason = Some(reason);
        record.detail = semel_core::redact_national_numbers(&error.message).into_owned();
        if let Err(e) = self.storage.audit.append(record).await {
            self.audit_unavailable(&e);
        }
        tracing::info!(
            request_id = %request_id,
            operation,
            organisation = org.kbo.as_str(),
            reason = error.reason,
            "call refused"
        );
        error.with("request_id", request_id.to_string())
    }

    /// Refuses an authorised caller for what they asked (another citizen,
    /// another organisation), recording the refusal.
    pub async fn refuse(
        &self,
        caller: &Caller,
        error: ApiError,
        reason: ReasonCode,
        citizen: Option<Niss>,
    ) -> ApiError {
        let denied = Denied {
            error,
            reason,
            org: Some(caller.org.clone()),
            user: Some(caller.user.clone()),
            operation: caller.rule.method,
        };
        self.record_refusal(denied, citizen).await
    }

    /// A blank audit entry for the caller's call: allowed, nothing forwarded.
    pub fn audit_record(&self, caller: &Caller, request_id: uuid::Uuid) -> AuditRecord {
        blank_record(
            request_id,
            caller.rule.method,
            caller.org.kbo,
            Some(caller.user.subject.clone()),
        )
    }

    /// Appends an entry and waits until it is durable: a change is not
    /// acknowledged without its entry.
    pub async fn append_durably(&self, record: AuditRecord) -> Result<(), ApiError> {
        self.append_durably_at(record).await.map(|_| ())
    }

    /// [`Broker::append_durably`], saying where the entry landed.
    pub async fn append_durably_at(
        &self,
        record: AuditRecord,
    ) -> Result<semel_storage::Appended, ApiError> {
        self.storage
            .audit
            .append(record)
            .await
            .inspect(|_| self.audit_recorded())
            .map_err(|e| {
                self.audit_unavailable(&e);
                ApiError::retryable(
                    tonic::Code::Unavailable,
                    "AUDIT_UNAVAILABLE",
                    "the broker cannot record changes right now, so it makes none; try again later",
                )
            })
    }

    /// Counts a call refused because its entry could not be made durable,
    /// and says so in the log once: the embedded log refuses every append
    /// from its first failure until a restart (PostgreSQL's until it can be
    /// reached again), and a line per refused call (tens of thousands a
    /// second) would only add to the pressure on a disk that is often the
    /// same one.
    pub fn audit_unavailable(&self, error: &StorageError) {
        self.metrics.audit_unavailable.inc();
        if !self
            .audit_unavailable_said
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::error!(
                error = %semel_core::redact_national_numbers(&error.to_string()),
                "audit log unavailable: every call is refused until it can record again (the embedded store: fixed and the broker restarted; PostgreSQL: reachable again); semel_audit_unavailable_refusals_total counts them"
            );
        }
    }

    /// Notes that the audit log records again, so that its next failure is
    /// said in the log again (PostgreSQL recovers without a restart).
    pub fn audit_recorded(&self) {
        if self
            .audit_unavailable_said
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.audit_unavailable_said
                .store(false, std::sync::atomic::Ordering::Relaxed);
            tracing::info!("audit log records again");
        }
    }

    /// The token verifier in use.
    pub fn tokens(&self) -> Arc<TokenVerifier> {
        self.tokens.load_full()
    }

    /// Swaps in new issuer keys; calls in flight keep the old ones.
    pub fn set_tokens(&self, tokens: Arc<TokenVerifier>) {
        self.tokens.store(tokens);
    }
}

/// The end user an entry names when it is the citizen it is about, acting
/// themselves (their token's `sub` is their national number, which the
/// entry's `citizen` field already holds).
pub const CITIZEN_THEMSELVES: &str = "(the citizen)";

/// The end user an entry about `citizen` (given as `as_given`) records for
/// `user`: the token's subject, but never a citizen's national number twice
/// in one entry.
pub(crate) fn recorded_end_user(
    user: &EndUser,
    citizen: Option<semel_core::Niss>,
    as_given: Option<semel_core::Niss>,
) -> String {
    match user.citizen() {
        Some(own) if Some(own) == citizen || Some(own) == as_given => CITIZEN_THEMSELVES.to_owned(),
        _ => user.subject.clone(),
    }
}

/// The operation of an entry that summarises refused calls beyond an
/// organisation's budget.
pub const REFUSALS_SUMMARY_OPERATION: &str = "semel.broker/RefusedCallsSummary";

/// An entry for a call other than a lookup, made now: allowed, about
/// nobody, nothing forwarded, until the caller says otherwise.
pub(crate) fn blank_record(
    request_id: uuid::Uuid,
    operation: &'static str,
    organisation: semel_core::Kbo,
    end_user: Option<String>,
) -> AuditRecord {
    AuditRecord {
        request_id: *request_id.as_bytes(),
        time_micros: (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64,
        operation: operation.into(),
        consumer: organisation,
        end_user,
        citizen: None,
        dataset: String::new(),
        fields_requested: Vec::new(),
        fields_returned: Vec::new(),
        purpose: String::new(),
        authorisation: None,
        authorisation_version: None,
        decision: AuditDecision::Allowed,
        reason: None,
        outcome: Outcome::NotForwarded,
        source: None,
        consumer_reference: String::new(),
        reference_date: None,
        citizen_as_given: None,
        checks: Vec::new(),
        detail: String::new(),
    }
}

/// What identifies a call: the connection's certificate, the end user's
/// token and the RPC. Kept by a stream to re-check every item.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    pub peer: Option<&'a Arc<PeerIdentity>>,
    pub token: Option<&'a str>,
    pub rule: Option<&'static Rule>,
}

impl<'a> Credentials<'a> {
    pub fn of<T>(request: &'a tonic::Request<T>) -> Self {
        Credentials {
            peer: request.extensions().get::<Arc<PeerIdentity>>(),
            token: bearer(request),
            rule: request.extensions().get::<Rpc>().and_then(|r| r.0),
        }
    }
}

/// The token of a request's `authorization: Bearer ...` metadata.
fn bearer<T>(request: &tonic::Request<T>) -> Option<&str> {
    bearer_token(request.metadata().get("authorization")?.to_str().ok()?)
}

/// The token of an `authorization: Bearer ...` value.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A new id, for a request, a file or a consent: a UUIDv7 (the time in
/// milliseconds, so ids sort by time) whose 74 other bits come from a
/// per-thread SipHash keyed once from the operating system's randomness.
/// `Uuid::now_v7` would take a global lock and make a `getrandom` system
/// call for every lookup.
/// A refusal for who made a call. A caller nobody can be attributed to
/// gets no audit entry, but its refusal still carries a request id, so that
/// an operator can find the log line the caller quotes.
fn denied(
    error: ApiError,
    reason: ReasonCode,
    org: Option<&Arc<Organisation>>,
    user: Option<&Arc<EndUser>>,
    operation: &'static str,
) -> Box<Denied> {
    let error = match org {
        None => error.with("request_id", new_id().to_string()),
        Some(_) => error,
    };
    Box::new(Denied {
        error,
        reason,
        org: org.cloned(),
        user: user.cloned(),
        operation,
    })
}

pub fn new_id() -> uuid::Uuid {
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static IDS: (std::collections::hash_map::RandomState, std::cell::Cell<u64>) =
            (std::collections::hash_map::RandomState::new(), std::cell::Cell::new(0));
    }
    let random = IDS.with(|(keys, counter)| {
        let n = counter.get();
        counter.set(n.wrapping_add(1));
        let half = |lane: u64| {
            let mut h = keys.build_hasher();
            h.write_u64(n);
            h.write_u64(lane);
            h.finish()
        };
        let mut bytes = [0u8; 10];
        bytes[..8].copy_from_slice(&half(0).to_le_bytes());
        bytes[8..].copy_from_slice(&half(1).to_le_bytes()[..2]);
        bytes
    });
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

#[cfg(test)]
mod id_tests {
    #[test]
    fn ids_are_v7_distinct_and_ordered_by_time() {
        let ids: Vec<uuid::Uuid> = (0..10_000).map(|_| super::new_id()).collect();
        assert!(ids.iter().all(|id| id.get_version_num() == 7));
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        let (secs, nanos) = ids[0].get_timestamp().expect("timestamp").to_unix();
        let first = secs * 1000 + u64::from(nanos) / 1_000_000;
        assert!(first <= now && now - first < 60_000);
        // Another thread draws from its own keys.
        let other = std::thread::spawn(super::new_id).join().expect("thread");
        assert!(!distinct.contains(&other));
    }
}

#[cfg(test)]
mod rebuild_tests {
    //! Two snapshot rebuilds at once (a registry change here and one
    //! announced by another broker) must not store the older reading last.

    use super::*;
    use tokio::sync::oneshot;

    type Hook = Box<dyn FnOnce() -> oneshot::Receiver<()> + Send>;
    static HOOK: Mutex<Option<Hook>> = Mutex::new(None);

    /// Called by `reload` between reading the registry and storing it.
    pub(super) async fn after_reading() {
        let hook = HOOK.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(hook) = hook {
            let _ = tokio::time::timeout(Duration::from_millis(500), hook()).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rebuild_never_stores_an_older_reading_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(semel_store::Store::open(dir.path()).expect("store"));
        let kbo = Kbo::parse("0566988259").expect("kbo");
        let org = |status| Organisation {
            kbo,
            name: "CPAS".into(),
            roles: [Role::Consumer].into(),
            status,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        store
            .registry()
            .put_organisation(&org(OrganisationStatus::Active))
            .expect("org");
        let tokens = TokenVerifier::load(&crate::tokens::TokenSettings {
            audience: "semel".into(),
            leeway_s: 30,
            issuers: Vec::new(),
        })
        .expect("tokens");
        let broker = Broker::new(
            semel_store::storage(store.clone()),
            SourceSettings {
                tls: Arc::new(
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()
                    .expect("versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
                ),
                endpoints: Arc::default(),
                deadline: Duration::from_secs(1),
                limits: LimitSettings::default(),
                register_dataset: DatasetName::new("x.register").expect("name"),
                persons: PersonsSettings::default(),
                mutations: Default::default(),
            },
            tokens,
        )
        .await
        .expect("broker");
        // Rebuild A reads the registry (organisation active), then waits
        // until B, which reads after the suspension, has finished.
        let (read_tx, read_rx) = oneshot::channel::<()>();
        let (go_tx, go_rx) = oneshot::channel::<()>();
        *HOOK.lock().expect("hook") = Some(Box::new(move || {
            let _ = read_tx.send(());
            go_rx
        }));
        let a = {
            let broker = broker.clone();
            tokio::spawn(async move { broker.reload().await.map_err(|e| e.message) })
        };
        read_rx.await.expect("A has read");
        store
            .registry()
            .put_organisation(&org(OrganisationStatus::Suspended))
            .expect("suspend");
        broker.reload().await.expect("B reloads");
        let _ = go_tx.send(());
        a.await.expect("A").expect("A reloads");
        assert_eq!(
            broker.snapshot().organisations[&kbo].status,
            OrganisationStatus::Suspended,
            "the suspension the API confirmed was undone by an older rebuild"
        );
    }
}

#[cfg(test)]
mod revocation_tests {
    use super::*;

    fn cert(issuers: Vec<CertificateId>) -> PeerCertificate {
        PeerCertificate {
            kbo: Kbo::parse("0212345668").map_err(|e| e.to_string()),
            fingerprint: CertificateId::sha256_of(&[1; 32]),
            serial: Some(CertificateId::issued_serial_from(&[7; 32], &[0x1f, 0xab])),
            legacy_serial: Some(CertificateId::serial_from_bytes(&[0x1f, 0xab])),
            sha256: [1; 32],
            not_after: i64::MAX,
            issuers,
        }
    }

    fn revoking(ids: &[CertificateId]) -> Snapshot {
        Snapshot {
            revoked: ids.iter().cloned().collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn revocations_reach_intermediates_and_serials_stay_with_their_issuer() {
        let intermediate = CertificateId::sha256_of(&[9; 32]);
        let leaf = cert(vec![intermediate.clone()]);
        assert!(!revoking(&[]).is_revoked(&leaf));
        assert!(revoking(&[CertificateId::sha256_of(&[1; 32])]).is_revoked(&leaf));
        // An intermediate CA revoked by fingerprint: every certificate
        // presented with it is refused.
        assert!(revoking(&[intermediate]).is_revoked(&leaf));
        // A serial from its issuer; the same serial from another issuer is
        // another certificate.
        let own = CertificateId::issued_serial(&"07".repeat(32), "1f:ab").expect("id");
        let other = CertificateId::issued_serial(&"08".repeat(32), "1fab").expect("id");
        assert!(revoking(&[own]).is_revoked(&leaf));
        assert!(!revoking(&[other]).is_revoked(&leaf));
        // A serial recorded without its issuer (older versions) still holds.
        assert!(revoking(&[CertificateId::serial("1fab").expect("id")]).is_revoked(&leaf));
    }
}
