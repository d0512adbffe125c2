//! The broker's state: its storage, and an immutable snapshot of the registry
//! that every call reads without touching the disk. A registry change builds
//! a new snapshot and swaps it in atomically, so a suspension takes effect
//! on the very next call.
//!
//! Here: the broker's parts, its construction and its settings. By duty:
//! `registry` (the snapshot rebuilt and swapped in, and its freshness),
//! `calls` (who calls: identified, authorised, admitted), `audit` (the
//! audit entries of calls other than lookups, refusals included) and
//! `sources` (the channels to sources).

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

mod audit;
mod calls;
mod registry;
mod sources;

pub use audit::{CITIZEN_THEMSELVES, REFUSALS_SUMMARY_OPERATION};
pub(crate) use audit::{blank_record, recorded_end_user};
pub use calls::Credentials;
pub(crate) use calls::bearer_token;
use registry::RegistryFreshness;

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

pub use semel_config::settings::{DEFAULT_MUTATIONS_POLL, MutationSettings, PersonsSettings};

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

    /// The token verifier in use.
    pub fn tokens(&self) -> Arc<TokenVerifier> {
        self.tokens.load_full()
    }

    /// Swaps in new issuer keys; calls in flight keep the old ones.
    pub fn set_tokens(&self, tokens: Arc<TokenVerifier>) {
        self.tokens.store(tokens);
    }
}

/// A new id, for a request, a file or a consent: a UUIDv7 (the time in
/// milliseconds, so ids sort by time) whose 74 other bits come from a
/// per-thread SipHash keyed once from the operating system's randomness.
/// `Uuid::now_v7` would take a global lock and make a `getrandom` system
/// call for every lookup.
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
