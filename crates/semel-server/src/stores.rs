//! The store a broker runs on, assembled from its configuration: the
//! embedded store in its data directory, or the PostgreSQL store that any
//! number of brokers share. Everything past this module sees only the
//! storage port ([`semel_storage::Storage`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use semel_core::checkpoint::NoteSigner;
use semel_core::{Kbo, Organisation, OrganisationStatus, Role};
use semel_storage::Storage;
use time::OffsetDateTime;

use crate::state::Broker;

/// An opened store.
pub struct Opened {
    pub storage: Storage,
    /// Registry changes made through other brokers (PostgreSQL): the broker
    /// follows them with [`follow_registry`].
    pub changes: Option<semel_postgres::RegistryWatch>,
    /// The other brokers on the same database (PostgreSQL): the changes
    /// they queue, and how many are alive; the broker follows them with
    /// [`follow_cluster`].
    pub cluster: Option<semel_postgres::Cluster>,
    /// The embedded store itself, when it is the store.
    pub embedded: Option<Arc<semel_store::Store>>,
    /// The task following the persons directory's change feed
    /// (PostgreSQL), so that memory drops what other brokers change.
    pub persons_feed: Option<tokio::task::JoinHandle<()>>,
    /// The persons directory in memory (the same as `storage.persons`),
    /// for its metrics.
    pub persons: semel_storage::CachedPersons,
}

/// The persons directory answered from memory (see
/// [`semel_storage::CachedPersons`]).
fn cached(persons: Arc<dyn semel_storage::PersonsStore>) -> semel_storage::CachedPersons {
    semel_storage::CachedPersons::new(persons, semel_storage::PERSONS_CACHE_CAPACITY)
}

/// Opens the embedded store in `dir` (recovering its audit log if needed).
pub async fn open_embedded(
    dir: std::path::PathBuf,
    checkpoints: semel_store::CheckpointSettings,
) -> anyhow::Result<Opened> {
    let shown = dir.display().to_string();
    let store =
        tokio::task::spawn_blocking(move || semel_store::Store::open_with(&dir, Some(checkpoints)))
            .await
            .context("open the store")?
            .with_context(|| format!("open the store in {shown}"))?;
    let store = Arc::new(store);
    let mut storage = semel_store::storage(store.clone());
    // One writer: every change passes through the cache.
    let persons = cached(storage.persons);
    storage.persons = Arc::new(persons.clone());
    Ok(Opened {
        storage,
        changes: None,
        cluster: None,
        embedded: Some(store),
        persons_feed: None,
        persons,
    })
}

/// Connects to the PostgreSQL store at `url`, applying its migrations: the
/// audit log (its writer, and the integrator that extends the tree and
/// signs a checkpoint at most every `checkpoint_every` whenever this broker
/// holds the integration lock), the registry with its change feed (polled
/// every `registry_poll` besides NOTIFY), and the persons directory,
/// answered from memory and its change feed read every `persons_poll`.
pub async fn open_postgresql(
    url: &str,
    signer: NoteSigner,
    checkpoint_every: Duration,
    registry_poll: Duration,
    persons_poll: Duration,
) -> anyhow::Result<Opened> {
    let registry = semel_postgres::PgRegistry::connect(url)
        .await
        .context("connect to the PostgreSQL store (registry)")?;
    let persons = semel_postgres::PgPersons::connect(url)
        .await
        .context("connect to the PostgreSQL store (persons directory)")?;
    let mutations = semel_postgres::PgMutations::connect(url)
        .await
        .context("connect to the PostgreSQL store (mutation queues)")?;
    // One log, one identity: a broker whose key did not sign the log's
    // checkpoints (a key created anew on this machine, another origin)
    // must not start signing a second history into the same tables.
    let verifier = semel_core::checkpoint::NoteVerifier::parse(&signer.verifier_key())
        .map_err(|e| anyhow::anyhow!("the checkpoint key: {e}"))?;
    let probe = semel_postgres::PgAudit::connect(url)
        .await
        .context("connect to the PostgreSQL store (audit log)")?;
    if let Some(note) = probe
        .latest_checkpoint()
        .await
        .context("read the PostgreSQL store's latest checkpoint")?
    {
        verifier.verify(&note).map_err(|e| {
            anyhow::anyhow!(
                "this broker's checkpoint key ({}) did not sign the PostgreSQL store's checkpoints ({e}): \
                 every broker on one database must use the same audit.signing_key and origin",
                verifier.name()
            )
        })?;
    }
    drop(probe);
    let audit = semel_postgres::PgAuditLog::start(url, signer, checkpoint_every)
        .await
        .context("connect to the PostgreSQL store (audit log)")?;
    let changes = semel_postgres::RegistryWatch::start(url, registry_poll)
        .await
        .context("follow the PostgreSQL store's registry changes")?;
    let broker_id = format!("{}-{}", std::process::id(), crate::state::new_id());
    let cluster = semel_postgres::Cluster::start(url, &broker_id, Default::default())
        .await
        .context("listen for the changes other brokers queue (PostgreSQL store)")?;
    let persons = cached(Arc::new(persons));
    let persons_feed = tokio::spawn(persons.clone().follow(persons_poll, persons_poll * 5));
    Ok(Opened {
        storage: Storage {
            registry: Arc::new(registry),
            persons: Arc::new(persons.clone()),
            audit: Arc::new(audit),
            mutations: Arc::new(mutations),
        },
        changes: Some(changes),
        cluster: Some(cluster),
        embedded: None,
        persons_feed: Some(persons_feed),
        persons,
    })
}

/// Reloads the broker's registry snapshot whenever the registry's version
/// moves (a change made through any broker), until aborted.
pub fn follow_registry(
    broker: Arc<Broker>,
    changes: semel_postgres::RegistryWatch,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // The feed runs as long as this task holds it.
        let changes = changes;
        let mut versions = changes.subscribe();
        loop {
            if versions.changed().await.is_err() {
                tracing::error!(
                    "the registry change feed stopped: registry changes made through other brokers no longer reach this one"
                );
                return;
            }
            let version = *versions.borrow_and_update();
            // Until a reading succeeds: a change announced once (a
            // revocation) must not be missed because the first reading
            // after it failed.
            let mut wait = Duration::from_millis(100);
            loop {
                match broker.reload().await {
                    Ok(()) => {
                        tracing::debug!(version, "registry reloaded");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(version, error = %e.message, "registry reload failed; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    })
}

/// Follows the other brokers on the database, until aborted: a change
/// they queue wakes this broker's subscriptions and pulls; while its
/// listener is down they poll instead (and say so); and this broker holds
/// its share of every organisation's limits, by the brokers alive.
pub fn follow_cluster(
    broker: Arc<Broker>,
    cluster: semel_postgres::Cluster,
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let mut wakes = cluster.wakes();
        let mut listening = cluster.listening();
        let mut live = cluster.live();
        let poll = broker.mutation_settings().fallback_poll;
        let deaf = || broker.deaf_to_other_brokers.load(Ordering::Relaxed);
        let heard = |up: bool| {
            let up = up && !deaf();
            broker.mutations_heard.store(up, Ordering::Release);
            broker.metrics.mutations_listener_up.set(i64::from(up));
            if !up {
                tracing::warn!(
                    poll_ms = poll.as_millis() as u64,
                    "changes published through other brokers are found by polling until the mutation listener is back"
                );
            }
            // Waiters read their queue again and take up (or drop) the poll.
            broker
                .mutations_queued
                .send_modify(|n| *n = n.wrapping_add(1));
        };
        let alive = |n: usize| {
            tracing::info!(
                brokers = n,
                "brokers alive on the store: each organisation's limits are shared among them"
            );
            broker.limit_share.set_brokers(n);
            broker.metrics.live_brokers.set(n as i64);
        };
        heard(*listening.borrow_and_update());
        alive(*live.borrow_and_update());
        loop {
            tokio::select! {
                r = wakes.changed() => {
                    if r.is_err() {
                        return;
                    }
                    if !deaf() {
                        broker.mutations_queued.send_modify(|n| *n = n.wrapping_add(1));
                    }
                }
                r = listening.changed() => {
                    if r.is_err() {
                        return;
                    }
                    heard(*listening.borrow_and_update());
                }
                r = live.changed() => {
                    if r.is_err() {
                        return;
                    }
                    alive(*live.borrow_and_update());
                }
            }
        }
    })
}

/// Registers the operator organisation if it is missing.
pub async fn ensure_operator(storage: &Storage, kbo: Kbo, name: &str) -> anyhow::Result<()> {
    if storage.registry.organisation(&kbo).await?.is_none() {
        storage
            .registry
            .put_organisation(&Organisation {
                kbo,
                name: name.to_owned(),
                roles: [Role::Operator].into_iter().collect(),
                status: OrganisationStatus::Active,
                created_at: OffsetDateTime::now_utc(),
            })
            .await?;
        tracing::info!(kbo = kbo.as_str(), "operator organisation registered");
    }
    Ok(())
}
