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

/// How a broker runs on PostgreSQL (see [`open_postgresql`]).
#[derive(Debug, Clone, Copy)]
pub struct PgSettings {
    pub checkpoint_every: Duration,
    pub registry_poll: Duration,
    pub persons_poll: Duration,
    pub scrub: semel_postgres::ScrubSettings,
    pub max_durability_wait: Duration,
}

/// Connects to the PostgreSQL store at `url`, applying its migrations: the
/// audit log (its writer, and the integrator that extends the tree and
/// signs a checkpoint at most every `checkpoint_every` whenever this broker
/// holds the integration lock), the registry with its change feed (polled
/// every `registry_poll` besides NOTIFY), and the persons directory,
/// answered from memory and its change feed read every `persons_poll`. An
/// audit batch not durable within `max_durability_wait` (a synchronous
/// standby that does not confirm) is refused, and health says so.
pub async fn open_postgresql(
    url: &str,
    signer: NoteSigner,
    settings: PgSettings,
) -> anyhow::Result<Opened> {
    let PgSettings {
        checkpoint_every,
        registry_poll,
        persons_poll,
        scrub,
        max_durability_wait,
    } = settings;
    // This broker's id among the brokers on the database (table
    // `brokers`): the owner of the registry applies it opens.
    let broker_id = format!("{}-{}", std::process::id(), crate::state::new_id());
    // Rules too are sealed with the entry that made them.
    let registry = semel_postgres::PgRegistry::connect(url)
        .await
        .context("connect to the PostgreSQL store (registry)")?
        .owned_by(&broker_id)
        .sealed_by(signer.row_sealer());
    // Files and consents are sealed with the entry that made them, under a
    // key the database never sees: a row written by SQL grants nothing.
    let persons = semel_postgres::PgPersons::connect(url)
        .await
        .context("connect to the PostgreSQL store (persons directory)")?
        .sealed_by(signer.row_sealer());
    let mutations = semel_postgres::PgMutations::connect(url)
        .await
        .context("connect to the PostgreSQL store (mutation queues)")?;
    // One log, one identity, and a log that proves itself, as the embedded
    // store's does at open: the newest checkpoint is this broker's key's,
    // the tree gives its root, and the tail since it chains to the tree up
    // to the head. A broker whose key did not sign the log's checkpoints
    // (a key created anew on this machine, another origin) must not start
    // signing a second history into the same tables.
    let verifier = semel_core::checkpoint::NoteVerifier::parse(&signer.verifier_key())
        .map_err(|e| anyhow::anyhow!("the checkpoint key: {e}"))?;
    let probe = semel_postgres::PgAudit::connect(url)
        .await
        .context("connect to the PostgreSQL store (audit log)")?;
    let proof = probe.prove_start(&verifier).await?;
    tracing::info!(
        entries = proof.entries,
        checkpoint = proof.checkpoint,
        tail = proof.tail,
        "the audit log on PostgreSQL proves itself against its newest checkpoint"
    );
    drop(probe);
    let audit = semel_postgres::PgAuditLog::start_with(url, signer, checkpoint_every, scrub)
        .await
        .context("connect to the PostgreSQL store (audit log)")?;
    audit.set_max_durability_wait(max_durability_wait);
    let changes = semel_postgres::RegistryWatch::start(url, registry_poll)
        .await
        .context("follow the PostgreSQL store's registry changes")?;
    let cluster = semel_postgres::Cluster::start(url, &broker_id, Default::default())
        .await
        .context("listen for the changes other brokers queue (PostgreSQL store)")?;
    let persons = cached(Arc::new(persons));
    // Memory follows the other brokers' changes, and is warmed once it may
    // answer: a citizen's first lookup after a start (a restart, a
    // failover) then reads no storage.
    let persons_feed = tokio::spawn({
        let persons = persons.clone();
        async move {
            tokio::join!(
                persons.clone().follow(persons_poll, persons_poll * 5),
                persons.warm_at_start()
            );
        }
    });
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

/// Keeps the broker's registry snapshot current and says how current it
/// is, until aborted: every read of the registry's version by the watch
/// (at each NOTIFY and each poll) either finds the snapshot's version, and
/// confirms the snapshot as of the read's start, or a newer one, and the
/// snapshot is read again first (until a reading succeeds: a change
/// announced once, a revocation, must not be missed because the first
/// reading after it failed). A snapshot not confirmed within the broker's
/// bound decides nothing ([`Broker::registry_fresh`]).
pub fn follow_registry(
    broker: Arc<Broker>,
    changes: semel_postgres::RegistryWatch,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // The feed runs as long as this task holds it.
        let changes = changes;
        let mut confirmations = changes.confirmations();
        // The version the snapshot holds at least; unknown at first (the
        // snapshot was read around the watch's first reading).
        let mut loaded: Option<u64> = None;
        loop {
            let confirmation = *confirmations.borrow_and_update();
            if loaded != Some(confirmation.version) {
                let mut wait = Duration::from_millis(100);
                loop {
                    match broker.reload().await {
                        Ok(()) => {
                            tracing::debug!(version = confirmation.version, "registry reloaded");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(version = confirmation.version, error = %e.message, "registry reload failed; retrying");
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                // Read after the version was: it holds that version's
                // changes, and perhaps later ones.
                loaded = Some(confirmation.version);
            }
            broker.confirm_registry(confirmation.read_at);
            if confirmations.changed().await.is_err() {
                tracing::error!(
                    "the registry change feed stopped: registry changes made through other brokers no longer reach this one"
                );
                return;
            }
        }
    })
}

/// How often health conditions about the store are looked at.
const HEALTH_EVERY: Duration = Duration::from_millis(250);

/// Sets the readiness condition `registry` while the snapshot is past its
/// freshness bound, and clears it when a read confirms it again, until
/// aborted. Calls are refused by the snapshot's own check; this makes
/// health say so.
pub fn watch_registry_freshness(broker: Arc<Broker>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEALTH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            broker.readiness.set(
                "registry",
                broker.registry_stale_for().map(|late| {
                    format!(
                        "the registry snapshot was not confirmed by a read of the database within its bound (store.max_staleness_ms), for {} ms past it; calls are refused with REGISTRY_STALE",
                        late.as_millis()
                    )
                }),
            );
        }
    })
}

/// Asks PostgreSQL a cheap question every second, busy or idle, and sets
/// the readiness condition `database` while it does not answer, until
/// aborted.
pub fn probe_database(broker: Arc<Broker>, url: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut probe = semel_postgres::DatabaseProbe::new(&url);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let why = probe
                .check()
                .await
                .err()
                .map(|e| format!("PostgreSQL does not answer the broker's probe: {e}"));
            broker.readiness.set("database", why);
        }
    })
}

/// [`open_postgresql`] until the database can be reached: a broker started
/// before its database waits for it (one line in the log per attempt, the
/// attempts further apart up to `max_wait`), rather than exiting and
/// looping under its supervisor. A failure that retrying cannot mend (a
/// schema newer than this binary, another log's key) ends it at once.
pub async fn open_postgresql_waiting(
    url: &str,
    signer: impl Fn() -> anyhow::Result<NoteSigner>,
    settings: PgSettings,
    max_wait: Duration,
) -> anyhow::Result<Opened> {
    let mut wait = Duration::from_millis(250).min(max_wait);
    let mut attempt = 1u32;
    loop {
        match open_postgresql(url, signer()?, settings).await {
            Ok(opened) => {
                if attempt > 1 {
                    tracing::info!(attempt, "PostgreSQL reached; the broker starts");
                }
                return Ok(opened);
            }
            Err(e) if unreachable(&e) => {
                tracing::warn!(
                    attempt,
                    retry_in_ms = wait.as_millis() as u64,
                    error = %format!("{e:#}"),
                    "waiting for the PostgreSQL store (store.url) to accept connections; health says NOT_SERVING meanwhile"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(max_wait);
                attempt = attempt.saturating_add(1);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether opening the store failed for want of a database to talk to (a
/// connection refused, timed out or cut, the server starting or shutting
/// down, connections not allowed yet), as opposed to what it said.
fn unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let Some(pg) = cause.downcast_ref::<semel_postgres::PgError>() else {
            return cause.downcast_ref::<std::io::Error>().is_some();
        };
        let semel_postgres::PgError::Database(db) = pg else {
            return false;
        };
        match db.as_db_error() {
            // Class 08: connection exception; 57P03: cannot connect now
            // (starting up); 57P01/57P02: shut down; 55000 with
            // ALLOW_CONNECTIONS false is "database does not allow
            // connections" (SQLSTATE 55000).
            Some(d) => {
                let code = d.code().code();
                code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "55000")
            }
            // No server answer at all: an I/O error, a timeout, a closed
            // connection.
            None => true,
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

/// Stores files written outside any call (the demo's and the benchmarks'
/// seeds) under one audit entry of the operator's that says so, and seals
/// them with it: no rule without its entry, on either store.
pub async fn seed_files(
    storage: &Storage,
    operator: Kbo,
    files: &[semel_core::PersonFile],
    what: &str,
) -> anyhow::Result<()> {
    storage.persons.put_files(files).await?;
    let mut record =
        crate::state::blank_record(crate::state::new_id(), "semel.seed/Files", operator, None);
    record.outcome = semel_core::Outcome::Answered;
    record.detail = format!("{what}: {} files stored", files.len());
    let at = storage
        .audit
        .append(record)
        .await
        .context("record the seeded files in the audit log")?;
    storage
        .persons
        .seal_files(files, at)
        .await
        .context("seal the seeded files")?;
    Ok(())
}

/// Opens a new epoch of the audit log (see [`semel_core::epoch`]): its
/// first entry, the operator's, states the previous origin's newest
/// cosigned checkpoint and the entries lost. Only an empty log begins an
/// epoch: the previous one is kept elsewhere, as evidence.
pub async fn begin_epoch(
    storage: &Storage,
    operator: Kbo,
    statement: &semel_core::epoch::EpochStatement,
) -> anyhow::Result<u64> {
    let (size, _) = storage.audit.head().await.context("read the log's head")?;
    if size != 0 {
        anyhow::bail!(
            "the store's log holds {size} entries: a new epoch begins an empty log; keep this store as the previous epoch's evidence and point the configuration (data_dir, or store.url) at an empty one"
        );
    }
    let mut record = crate::state::blank_record(
        crate::state::new_id(),
        semel_core::epoch::NEW_EPOCH_OPERATION,
        operator,
        None,
    );
    record.outcome = semel_core::Outcome::Answered;
    record.detail = statement.to_detail();
    let at = storage
        .audit
        .append(record)
        .await
        .context("record the new epoch's statement")?;
    Ok(at.sequence)
}

/// The operation of the entry that adopts rules stored before seals were
/// kept (see `RegistryStore::adoption`).
pub const ADOPT_REGISTRY_OPERATION: &str = "semel.seal/AdoptRegistry";

/// Adopts, once, the rules a store holds from before it sealed them (a
/// PostgreSQL database from before schema version 14): one entry, the
/// operator's, counts them and gives their digest, and seals them.
pub async fn adopt_registry(storage: &Storage, operator: Kbo) -> anyhow::Result<()> {
    let Some((open, detail)) = storage
        .registry
        .adoption()
        .await
        .context("read the registry's rules stored before seals were kept")?
    else {
        return Ok(());
    };
    let mut record = crate::state::blank_record(
        crate::state::new_id(),
        ADOPT_REGISTRY_OPERATION,
        operator,
        None,
    );
    record.outcome = semel_core::Outcome::Answered;
    record.detail = detail;
    let at = storage
        .audit
        .append(record)
        .await
        .context("record the adoption of the registry's rules")?;
    open.seal(at)
        .await
        .context("seal the registry's adopted rules")?;
    tracing::warn!(
        sequence = at.sequence,
        "registry rules stored before seals were kept were adopted as they stood, under one audit entry"
    );
    Ok(())
}

/// Stores registry writes with the audit entry that records them, the
/// operator's, under `operation` (no rule without its entry): staged, then
/// in force once the entry is durable; never without it.
pub async fn record_registry(
    storage: &Storage,
    operator: Kbo,
    operation: &'static str,
    detail: &str,
    writes: &[semel_storage::RegistryWrite],
) -> anyhow::Result<()> {
    if writes.is_empty() {
        return Ok(());
    }
    let staged = storage
        .registry
        .stage(writes)
        .await
        .context("store the registry change")?;
    let mut record = crate::state::blank_record(crate::state::new_id(), operation, operator, None);
    record.outcome = semel_core::Outcome::Answered;
    record.detail = semel_core::redact_national_numbers(detail).into_owned();
    match storage.audit.append(record).await {
        Ok(at) => {
            if let semel_storage::Staged::Open(open) = staged {
                open.seal(at)
                    .await
                    .context("commit the registry change with its entry")?;
            }
            Ok(())
        }
        Err(e) => {
            if let semel_storage::Staged::Committed(undos) = staged {
                crate::audited::retry_undo("registry change", || storage.registry.undo_all(&undos))
                    .await;
            }
            Err(e).context("record the registry change in the audit log")
        }
    }
}

/// Registers the operator organisation if it is missing, with its entry.
pub async fn ensure_operator(storage: &Storage, kbo: Kbo, name: &str) -> anyhow::Result<()> {
    if storage.registry.organisation(&kbo).await?.is_none() {
        let org = Organisation {
            kbo,
            name: name.to_owned(),
            roles: [Role::Operator].into_iter().collect(),
            status: OrganisationStatus::Active,
            created_at: OffsetDateTime::now_utc(),
        };
        record_registry(
            storage,
            kbo,
            "semel.seed/Operator",
            &format!(
                "operator organisation {kbo} registered from the broker's configuration; name: {name:?}"
            ),
            &[semel_storage::RegistryWrite::Organisation {
                after: Box::new(org),
                before: None,
            }],
        )
        .await?;
        tracing::info!(kbo = kbo.as_str(), "operator organisation registered");
    }
    Ok(())
}
