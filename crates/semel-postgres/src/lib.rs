//! Semel's PostgreSQL store, in progress (issue 16; the design is
//! `docs/storage-postgresql.md`). What exists: versioned schema migrations,
//! applied at start and refused when the database is newer than the binary,
//! and the audit log's sequencing, which any number of brokers share: each
//! batch of entries takes its places in the chain in one short transaction
//! under the single `audit_head` row lock, and is durable (committed, with
//! `synchronous_commit` on) before its callers are answered; the Merkle
//! tree, extended by one broker at a time under the integration lock, with
//! signed checkpoints and inclusion and consistency proofs (`tree.rs`); the
//! registry, whose changes reach every broker through NOTIFY with polling
//! as the fallback (`registry.rs`). Not yet wired to the broker: the
//! storage port comes first.
//!
//! This is the only crate that knows the PostgreSQL client.

mod cluster;
pub mod integrity;
mod log;
mod manifest;
mod mutations;
mod persons;
mod probe;
mod query;
mod registry;
mod seals;
pub mod testing;
mod tree;

pub use cluster::{Cluster, ClusterSettings, MUTATIONS_CHANNEL};
pub use integrity::{RowColumns, StartProof, check_row};
pub use log::{PgAuditLog, ScrubSettings};
pub use mutations::PgMutations;
pub use persons::PgPersons;
pub use probe::{DatabaseProbe, PROBE_TIMEOUT};
pub use registry::{Confirmation, PgRegistry, RegistryWatch};
/// Re-exported from the storage port, where the configuration reads them.
pub use semel_storage::{DEFAULT_MAX_DURABILITY_WAIT, DEFAULT_SCRUB_RATE};
pub use tree::{INTEGRATION_LOCK, Integrated, LockHolder, TreeHead};

use semel_core::{AuditEntry, AuditRecord, Hash, entry_hash};

/// The migrations, in order; the position is the version.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_audit_log.sql"),
    include_str!("../migrations/0002_audit_tree.sql"),
    include_str!("../migrations/0003_registry.sql"),
    include_str!("../migrations/0004_persons.sql"),
    include_str!("../migrations/0005_audit_queries.sql"),
    include_str!("../migrations/0006_persons_feed.sql"),
    include_str!("../migrations/0007_mutations.sql"),
    include_str!("../migrations/0008_applications.sql"),
    include_str!("../migrations/0009_mutation_event_keys.sql"),
    include_str!("../migrations/0010_row_seals.sql"),
    include_str!("../migrations/0011_registry_invariants.sql"),
    include_str!("../migrations/0012_brokers.sql"),
    include_str!("../migrations/0013_registry_applies.sql"),
    include_str!("../migrations/0014_registry_seals.sql"),
    include_str!("../migrations/0015_replacement_seals.sql"),
    include_str!("../migrations/0016_registry_manifest.sql"),
    include_str!("../migrations/0017_sealed_revocations.sql"),
];

/// How long connecting may take, and how long a silent connection is
/// trusted before keepalives probe it.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL: {}", describe(.0))]
    Database(#[from] tokio_postgres::Error),
    #[error(
        "the database's schema is at version {found}, newer than this binary's {supported}: run the newer binary, or restore"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("the database holds a damaged value: {0}")]
    Corrupt(String),
    /// The database no longer agrees with the log's own evidence (an entry
    /// altered, missing or out of chain, a query column that differs from
    /// its entry, a tree or checkpoint moved back): nothing is signed over
    /// it, and the broker's log halts.
    #[error("audit log integrity: {0}")]
    Integrity(String),
    #[error("the tree holds {integrated} entries, not yet {asked}: ask again after integration")]
    NotIntegrated { asked: u64, integrated: u64 },
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    Conflict(String),
    /// A commit PostgreSQL did not confirm replicated (a cancelled or
    /// terminated wait for synchronous replication, or an outcome learned
    /// over a lost connection), not yet confirmed by a later transaction
    /// that waited for the standby.
    #[error("{0}")]
    NotReplicated(String),
    /// The database's log is shorter than, or differs from, what this
    /// broker acknowledged: a promoted standby that was behind, a restored
    /// backup. The log must not be extended.
    #[error("{0}")]
    RolledBack(String),
}

impl PgError {
    /// Whether a statement was cancelled by a time limit (a statement or
    /// lock timeout), rather than failed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, PgError::Database(e) if e.code().is_some_and(|c| {
            *c == tokio_postgres::error::SqlState::QUERY_CANCELED
                || *c == tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE
        }))
    }
}

/// The client's error with the server's message and SQLSTATE, which its
/// own Display leaves out ("db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// A connection of one broker to the audit log on PostgreSQL.
pub struct PgAudit {
    conn: Conn,
    /// Where this connection's last append left the head: the next batch
    /// is chained to it without reading the head first (checked by the
    /// statement that moves it; another broker's append in between makes
    /// the statement change nothing, and the head is read again).
    head: Option<(u64, Hash)>,
    /// The last entry (sequence, hash) of a batch committed without the
    /// server confirming it replicated: not to be acknowledged until
    /// [`PgAudit::confirm`] says a later transaction that waited for the
    /// standby saw it.
    unconfirmed: Option<(u64, Hash)>,
    /// The newest size this broker acknowledged, and the hash of the
    /// entry before it: a database whose head is below it (a promoted
    /// standby that was behind, a restored backup) is never extended.
    acknowledged: Option<(u64, Hash)>,
    /// The newest tree head this connection signed or saw (integration):
    /// a database whose tree or checkpoints fall behind it or disagree
    /// with it was rolled back or rewritten.
    seen: Option<tree::TreeHead>,
    /// The last leaf this connection integrated: the next round's first
    /// entry must chain to it, if no other broker integrated in between.
    last_leaf: Option<(u64, Hash)>,
    /// The time limits of this connection's integration transactions.
    integration_limit: Option<std::time::Duration>,
}

impl std::fmt::Debug for PgAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgAudit").finish_non_exhaustive()
    }
}

/// A connection whose commits wait for durability, driven on its own task,
/// and opened again when it was lost (the database restarted, a failover):
/// the broker recovers without a restart. A transaction that failed with
/// the connection left nothing behind.
pub(crate) struct Conn {
    url: String,
    /// Set when a statement failed: the connection may be dying without
    /// the client knowing yet (a terminated backend answers with an error
    /// first), so the next use opens a new one rather than fail again.
    pub(crate) suspect: bool,
    pub(crate) client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
    /// How many of this connection's commits the server reported as
    /// perhaps not replicated (the WARNING "canceling wait for synchronous
    /// replication ... might not have been replicated"): counted by the
    /// task that drives the connection as the notice arrives, which is
    /// before the statement's own answer reaches the client.
    unreplicated: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The statements this connection prepared, by their text: the hot
    /// ones (an append, a citizen's reads) are parsed and planned once per
    /// connection, and each use is one round trip instead of two. Lost with
    /// the connection (a new one prepares again).
    prepared: std::collections::HashMap<String, tokio_postgres::Statement>,
}

/// Whether a notice says a commit may not have reached the synchronous
/// standby: PostgreSQL committed locally after its wait was cancelled
/// (`pg_cancel_backend`, a statement timeout) or the backend terminated.
fn says_not_replicated(notice: &tokio_postgres::error::DbError) -> bool {
    notice.message().contains("synchronous replication")
        || notice
            .detail()
            .is_some_and(|d| d.contains("might not have been replicated"))
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Conn {
    pub(crate) async fn open(url: &str) -> Result<Conn, PgError> {
        let mut config: tokio_postgres::Config = url.parse()?;
        if config.get_application_name().is_none() {
            config.application_name("semel broker");
        }
        // A primary that vanishes without closing its connections (a
        // failover, a cut network) must not hold a broker for minutes:
        // connecting and idle connections give up after seconds, unless
        // the URL says otherwise.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives_idle(CONNECT_TIMEOUT);
        let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
        let unreplicated = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = unreplicated.clone();
        // Driven here rather than awaited, to see the server's notices:
        // a commit's warning that it may not be replicated must reach the
        // writer, not only the log.
        let connection = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notice(notice))) => {
                        if says_not_replicated(&notice) {
                            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tracing::warn!(
                                notice = %notice.message(),
                                "PostgreSQL committed without confirming synchronous replication: the commit is not acknowledged until a later transaction confirms it"
                            );
                        } else {
                            tracing::info!(notice = %notice.message(), "PostgreSQL notice");
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "PostgreSQL connection closed");
                        break;
                    }
                    None => break,
                }
            }
        });
        client
            .batch_execute("SET synchronous_commit = on; SET client_min_messages = warning")
            .await?;
        Ok(Conn {
            url: url.to_owned(),
            suspect: false,
            client,
            connection,
            unreplicated,
            prepared: std::collections::HashMap::new(),
        })
    }

    /// `sql` prepared on this connection (reconnected first if it was
    /// lost), once: later calls reuse it. Only for the fixed statements of
    /// hot paths (the cache grows by one per distinct text).
    pub(crate) async fn prepared(
        &mut self,
        sql: &str,
    ) -> Result<tokio_postgres::Statement, PgError> {
        self.client().await?;
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = match self.client.prepare(sql).await {
            Ok(statement) => statement,
            Err(e) => {
                self.suspect = true;
                return Err(e.into());
            }
        };
        self.prepared.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// How many commits on this connection the server reported as perhaps
    /// not replicated so far.
    pub(crate) fn unreplicated(&self) -> u64 {
        self.unreplicated.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The client, connected again first if the connection was lost.
    pub(crate) async fn client(&mut self) -> Result<&mut tokio_postgres::Client, PgError> {
        if self.suspect || self.client.is_closed() {
            let fresh = Conn::open(&self.url).await?;
            *self = fresh;
            tracing::info!("PostgreSQL connection re-established");
        }
        Ok(&mut self.client)
    }
}

/// A few connections, for reads many lookups make at once (a lookup's
/// persons reads): a call takes a free one, or waits its turn on one.
pub(crate) struct Pool {
    conns: Vec<tokio::sync::Mutex<Conn>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Pool {
    pub(crate) async fn open(url: &str, size: usize) -> Result<Pool, PgError> {
        let mut conns = Vec::with_capacity(size.max(1));
        for _ in 0..size.max(1) {
            conns.push(tokio::sync::Mutex::new(Conn::open(url).await?));
        }
        Ok(Pool {
            conns,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The first connection of the pool, for migrations.
    pub(crate) async fn first(&self) -> tokio::sync::MutexGuard<'_, Conn> {
        self.conns[0].lock().await
    }

    pub(crate) async fn get(&self) -> tokio::sync::MutexGuard<'_, Conn> {
        let n = self.conns.len();
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n;
        for i in 0..n {
            if let Ok(conn) = self.conns[(start + i) % n].try_lock() {
                return conn;
            }
        }
        self.conns[start].lock().await
    }
}

/// Applies the migrations not applied yet, each in its transaction;
/// refuses a schema newer than this binary. Brokers starting at once
/// serialise on an advisory lock.
async fn migrate(client: &tokio_postgres::Client) -> Result<(), PgError> {
    client
        .batch_execute(
            "SELECT pg_advisory_lock(495891105132); \
             CREATE TABLE IF NOT EXISTS schema_migrations ( \
                 version bigint PRIMARY KEY, \
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let result = apply_migrations(client).await;
    if result.is_err() {
        // A failed migration leaves its transaction aborted: end it, so the
        // unlock runs and the migration's own error is the one reported.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    let unlocked = client
        .batch_execute("SELECT pg_advisory_unlock(495891105132)")
        .await;
    result?;
    unlocked?;
    Ok(())
}

/// The schema version the database is at (0: none applied).
async fn schema_version(client: &tokio_postgres::Client) -> Result<i64, PgError> {
    Ok(client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0))
}

async fn apply_migrations(client: &tokio_postgres::Client) -> Result<(), PgError> {
    let found = schema_version(client).await?;
    let supported = MIGRATIONS.len() as i64;
    if found > supported {
        return Err(PgError::SchemaTooNew { found, supported });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i64 + 1;
        client
            .batch_execute(&format!(
                "BEGIN; {sql}; INSERT INTO schema_migrations (version) VALUES ({version}); COMMIT;"
            ))
            .await?;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    Ok(())
}

impl PgAudit {
    fn on(conn: Conn) -> PgAudit {
        PgAudit {
            conn,
            head: None,
            unconfirmed: None,
            acknowledged: None,
            seen: None,
            last_leaf: None,
            integration_limit: None,
        }
    }

    /// Whether the last append committed without the server confirming it
    /// replicated: its callers must not be answered before
    /// [`PgAudit::confirm`] succeeds.
    pub fn unconfirmed(&self) -> bool {
        self.unconfirmed.is_some()
    }

    /// Confirms the last append replicated: a small transaction that
    /// writes (the head row, rewritten as it is: a transaction that only
    /// takes an id writes no WAL before its commit record, and PostgreSQL
    /// then neither flushes nor waits for the standby) and reads the
    /// batch's last entry; its commit waits for the synchronous standby. WAL is replayed in order, so a
    /// standby that confirmed this commit holds the batch too; and the
    /// entry read in it says the batch is in the database that confirmed
    /// (after a failover, the promoted one). `NotReplicated` while the
    /// server still does not confirm, or the connection failed (the batch
    /// stays unconfirmed: ask again); a batch no longer in the database is
    /// an error that clears it (its callers are refused: nothing to
    /// confirm).
    pub async fn confirm(&mut self) -> Result<(), PgError> {
        let Some((sequence, hash)) = self.unconfirmed else {
            return Ok(());
        };
        self.conn.client().await?;
        let before = self.conn.unreplicated();
        let result = self
            .conn
            .client
            .query_one(
                "UPDATE audit_head SET next_sequence = next_sequence WHERE id = 0 \
                 RETURNING (SELECT encoding FROM audit_entries WHERE sequence = $1)",
                &[&(sequence as i64)],
            )
            .await;
        let row = match result {
            Ok(row) => row,
            Err(e) => {
                self.conn.suspect = true;
                return Err(e.into());
            }
        };
        if self.conn.unreplicated() != before {
            return Err(PgError::NotReplicated(format!(
                "audit entry {sequence} is committed but PostgreSQL does not confirm it reached the synchronous standby (its wait was cancelled): it is not acknowledged until a transaction that waits for the standby confirms it"
            )));
        }
        self.unconfirmed = None;
        match row.get::<_, Option<&[u8]>>(0) {
            Some(encoding) if entry_hash(encoding) == hash => Ok(()),
            _ => {
                self.head = None;
                Err(PgError::NotReplicated(format!(
                    "audit entry {sequence}, committed without confirmed replication, is not in the database any more (a failover to a standby that never received it): its callers are refused"
                )))
            }
        }
    }

    /// Records that the log up to `size` entries (the last one's hash
    /// `hash`) was acknowledged to callers: a database whose head is
    /// found below it is never extended.
    pub fn acknowledge(&mut self, size: u64, hash: Hash) {
        if self.acknowledged.is_none_or(|(s, _)| size > s) {
            self.acknowledged = Some((size, hash));
        }
    }

    /// Refuses a head below what this broker acknowledged, or at the same
    /// size with another last entry.
    fn check_head(&self, size: u64, hash: &Hash) -> Result<(), PgError> {
        let Some((acked, acked_hash)) = self.acknowledged else {
            return Ok(());
        };
        if size < acked || (size == acked && *hash != acked_hash) {
            let what = if size < acked {
                format!("holds {size} entries, but this broker acknowledged {acked}")
            } else {
                format!(
                    "holds {size} entries, as many as this broker acknowledged, but its last entry differs"
                )
            };
            return Err(PgError::RolledBack(format!(
                "the PostgreSQL audit log {what}: acknowledged entries are missing (a promoted standby that was behind, or a restored backup). \
                 The broker will not extend this log, which would reuse sequence numbers it answered for and sign a fork. \
                 Restore the newest copy of the database or replay the missing entries (from the old primary, a standby or an export), then restart the brokers; \
                 if the entries are lost for good, start a new log epoch (docs/operator-guide.md, \"The database lost acknowledged entries\")"
            )));
        }
        Ok(())
    }

    /// Reads the head (connecting again if the connection was lost) and
    /// refuses one below what this broker acknowledged.
    pub async fn check_rollback(&mut self) -> Result<(), PgError> {
        self.read_head().await.map(|_| ())
    }
}

/// An entry's place in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub sequence: u64,
    pub hash: Hash,
}

impl PgAudit {
    /// Connects (a `postgresql://` URL or key-value string), with every
    /// commit waiting for durability, and applies the migrations this
    /// binary knows.
    pub async fn connect(url: &str) -> Result<PgAudit, PgError> {
        let conn = Conn::open(url).await?;
        migrate(&conn.client).await?;
        Ok(PgAudit::on(conn))
    }

    /// Connects to read only (an auditor's export or verification): no
    /// migration is applied, the session is read-only, and a schema this
    /// binary does not know exactly is refused.
    pub async fn connect_read_only(url: &str) -> Result<PgAudit, PgError> {
        let conn = Conn::open(url).await?;
        conn.client
            .batch_execute("SET default_transaction_read_only = on")
            .await?;
        let found = schema_version(&conn.client).await?;
        let supported = MIGRATIONS.len() as i64;
        if found > supported {
            return Err(PgError::SchemaTooNew { found, supported });
        }
        if found < supported {
            return Err(PgError::Corrupt(format!(
                "the database's schema is at version {found}, this tool reads version {supported}: use the brokers' version of semel"
            )));
        }
        Ok(PgAudit::on(conn))
    }

    /// Gives a batch of records their places in the chain and makes them
    /// durable, in one transaction: the head row is locked (the only row
    /// brokers contend for), the entries are encoded and chained here, all
    /// inserted in one statement, and the head moved on. When this returns
    /// Ok, every entry is committed; when it fails, none has a place.
    pub async fn append(&mut self, records: Vec<AuditRecord>) -> Result<Vec<Placed>, PgError> {
        let result = self.append_batch(records).await;
        self.conn.suspect = result.is_err();
        result
    }

    async fn append_batch(&mut self, records: Vec<AuditRecord>) -> Result<Vec<Placed>, PgError> {
        self.unconfirmed = None;
        // One statement, so one round trip and its own transaction: the
        // head moves from where this batch was chained only if it is still
        // there (a data-modifying CTE; the row lock makes a concurrent
        // broker's statement wait, then find the head moved), and the
        // entries are inserted only if it moved. Durable when it returns
        // (synchronous_commit on).
        const APPEND: &str = "WITH moved AS ( \
                 UPDATE audit_head SET next_sequence = $6, last_hash = $7 \
                 WHERE id = 0 AND next_sequence = $8 AND last_hash = $9 RETURNING 1) \
             INSERT INTO audit_entries (sequence, encoding, citizen, consumer, time_micros, citizen_as_given) \
             SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::text[], $4::text[], $5::bigint[], $10::text[]) \
             WHERE EXISTS (SELECT 1 FROM moved)";
        let n = records.len();
        let mut citizens = Vec::with_capacity(n);
        let mut consumers = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        let mut as_given = Vec::with_capacity(n);
        for record in &records {
            citizens.push(record.citizen.map(|c| c.as_str().to_owned()));
            as_given.push(record.citizen_as_given.map(|c| c.as_str().to_owned()));
            consumers.push(record.consumer.as_str().to_owned());
            times.push(record.time_micros);
        }
        let mut records = records;
        for _ in 0..1000 {
            let (start, start_hash) = match self.head {
                Some(h) => h,
                None => self.read_head().await?,
            };
            let mut next = start;
            let mut previous = start_hash;
            let mut sequences = Vec::with_capacity(n);
            let mut encodings = Vec::with_capacity(n);
            let mut placed = Vec::with_capacity(n);
            let mut entries = Vec::with_capacity(n);
            for record in records {
                let entry = AuditEntry {
                    format: semel_core::FORMAT,
                    sequence: next,
                    previous_hash: previous,
                    record,
                };
                let encoding = entry.to_bytes();
                previous = entry_hash(&encoding);
                placed.push(Placed {
                    sequence: next,
                    hash: previous,
                });
                sequences.push(next as i64);
                encodings.push(encoding);
                entries.push(entry.record);
                next += 1;
            }
            let append = self.conn.prepared(APPEND).await?;
            let notices = self.conn.unreplicated();
            let result = self
                .conn
                .client
                .execute(
                    &append,
                    &[
                        &sequences,
                        &encodings,
                        &citizens,
                        &consumers,
                        &times,
                        &(next as i64),
                        &previous.to_vec(),
                        &(start as i64),
                        &start_hash.to_vec(),
                        &as_given,
                    ],
                )
                .await;
            match result {
                Ok(inserted) if inserted as usize == n => {
                    self.head = Some((next, previous));
                    if self.conn.unreplicated() != notices {
                        // Committed locally, its wait for the synchronous
                        // standby cancelled: not acknowledged until
                        // confirmed.
                        self.unconfirmed = Some((next - 1, previous));
                    }
                    return Ok(placed);
                }
                Ok(_) => {
                    // Another broker appended since: chain to the head as
                    // it is now.
                    self.head = None;
                    records = entries;
                }
                Err(e) => {
                    self.head = None;
                    self.conn.suspect = true;
                    // The connection may have dropped after the commit
                    // reached the server: then the batch has its places,
                    // and its callers must be answered. Its last entry,
                    // read once connected again, says (its hash chains the
                    // whole batch); if it cannot be asked, the callers
                    // refuse (an entry without an answer is safe; an answer
                    // without an entry is not).
                    if let Ok(client) = self.conn.client().await
                        && let Ok(Some(row)) = client
                            .query_opt(
                                "SELECT encoding FROM audit_entries WHERE sequence = $1",
                                &[&(next as i64 - 1)],
                            )
                            .await
                        && entry_hash(row.get::<_, &[u8]>(0)) == previous
                    {
                        tracing::warn!(
                            "an audit batch's commit was answered by a lost connection, but it is committed: not acknowledged until a transaction that waits for the standby confirms it"
                        );
                        // Whether it reached the standby is unknown.
                        self.unconfirmed = Some((next - 1, previous));
                        return Ok(placed);
                    }
                    return Err(e.into());
                }
            }
        }
        Err(PgError::Conflict(
            "the audit head kept moving under this broker's batch".into(),
        ))
    }

    /// The head as stored, on a connection opened again if it was lost.
    async fn read_head(&mut self) -> Result<(u64, Hash), PgError> {
        self.reconnect_if_lost().await?;
        let (size, hash) = self.head().await?;
        self.check_head(size, &hash)?;
        Ok((size, hash))
    }

    /// Connects again if the connection was lost: reads (which take
    /// `&self`) call this first through their owner.
    pub(crate) async fn reconnect_if_lost(&mut self) -> Result<(), PgError> {
        self.conn.client().await.map(|_| ())
    }

    /// The number of entries in the log and the hash of the last one.
    pub async fn head(&self) -> Result<(u64, Hash), PgError> {
        let row = self
            .conn
            .client
            .query_one(
                "SELECT next_sequence, last_hash FROM audit_head WHERE id = 0",
                &[],
            )
            .await?;
        let size = u64::try_from(row.get::<_, i64>(0))
            .map_err(|_| PgError::Corrupt("a negative size".into()))?;
        let hash = row
            .get::<_, Vec<u8>>(1)
            .try_into()
            .map_err(|_| PgError::Corrupt("the last hash is not 32 bytes".into()))?;
        Ok((size, hash))
    }

    /// Entries in the log.
    pub async fn size(&self) -> Result<u64, PgError> {
        let n: i64 = self
            .conn
            .client
            .query_one("SELECT next_sequence FROM audit_head WHERE id = 0", &[])
            .await?
            .get(0);
        u64::try_from(n).map_err(|_| PgError::Corrupt("a negative size".into()))
    }

    /// The canonical encodings of entries `from..to`, in order.
    pub async fn encodings(&self, from: u64, to: u64) -> Result<Vec<Vec<u8>>, PgError> {
        let rows = self
            .conn
            .client
            .query(
                "SELECT sequence, encoding FROM audit_entries \
                 WHERE sequence >= $1 AND sequence < $2 ORDER BY sequence",
                &[&(from as i64), &(to as i64)],
            )
            .await?;
        let mut expected = from as i64;
        rows.into_iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                if seq != expected {
                    return Err(PgError::Corrupt(format!(
                        "entry {expected} is missing (found {seq})"
                    )));
                }
                expected += 1;
                Ok(r.get(1))
            })
            .collect()
    }
}

/// Transactions committed in the URL's database so far, as PostgreSQL's
/// statistics count them (each statement outside a transaction is one);
/// backends report theirs at most once a second. For benchmarks.
pub async fn transactions(url: &str) -> Result<u64, PgError> {
    let conn = Conn::open(url).await?;
    let n: i64 = conn
        .client
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}
