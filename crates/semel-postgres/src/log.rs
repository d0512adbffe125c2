//! The audit log on PostgreSQL behind the storage port: a writer task that
//! takes every queued entry at once and sequences the batch in one
//! transaction (as the embedded writer shares one `fdatasync`), an
//! integrator task that extends the tree and signs checkpoints whenever it
//! holds the integration lock, and reads on a connection of their own.

use std::time::Duration;

use semel_core::checkpoint::NoteSigner;
use semel_core::{AuditRecord, Hash};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use semel_storage::{
    Appended, ArchiveReport, ArchiveState, AuditPage, AuditQuery, AuditStats, AuditStore,
    DEFAULT_MAX_DURABILITY_WAIT, DEFAULT_SCRUB_RATE, SignedCheckpoint, StorageError,
};
use tokio::sync::{Mutex, MutexGuard, mpsc, oneshot};

use crate::{Integrated, PgAudit, PgError, Placed};

/// The most entries one sequencing transaction takes.
const MAX_BATCH: usize = 4096;

/// How often an idle writer whose last batch failed checks whether
/// PostgreSQL answers again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The most entries one integration round takes into the tree.
const INTEGRATE_MAX: u64 = 100_000;

/// How long a proof waits for the integrator to reach a durable size.
const INTEGRATION_WAIT: Duration = Duration::from_secs(10);

/// How long a clean stop tries to sign its last checkpoint.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// An integrity failure halts the log, counted and said at ERROR (by
/// `halt`); any other error is retried.
fn report(counters: &Counters, e: PgError) {
    match e {
        PgError::Integrity(why) => counters.halt(format!("audit log integrity: {why}")),
        e => tracing::warn!(error = %e, "audit integration failed; retrying"),
    }
}

/// The integrator: one round (and one checkpoint) per `every`, unless the
/// round was full (then the backlog is worked off at once); after each
/// round, this broker's own entries the tree now covers are checked. An
/// integrity failure halts the log and ends the loop: this broker signs
/// nothing more until it restarts.
async fn integrate_loop(
    integrator: Arc<Mutex<PgAudit>>,
    signer: Arc<NoteSigner>,
    counters: Arc<Counters>,
    every: Duration,
) {
    let mut integrated = 0u64;
    let mut round = INTEGRATE_MAX;
    loop {
        if counters.halted().is_some() {
            return;
        }
        let mut audit = integrator.lock().await;
        let mut full = false;
        let known = counters
            .own
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let outcome = match audit.integrate_knowing(round, &signer, &known).await {
            Ok(Integrated::Done { head, .. }) => {
                let grew = head.size.saturating_sub(integrated);
                integrated = head.size;
                full = grew >= round;
                round = INTEGRATE_MAX;
                Ok(())
            }
            Ok(Integrated::Busy) => {
                // Held by a frozen session, the lock is taken back after
                // two intervals; held by an administrator's session, it
                // is said (the checkpoint age and health say the rest).
                match audit.free_stalled_integration_lock(every * 2).await {
                    Ok(Some((holder, true))) => tracing::warn!(
                        holder = %holder,
                        "ended a session that held the audit integration lock idle in its transaction"
                    ),
                    Ok(Some((holder, false))) if holder.still_for > (every * 2).as_secs_f64() => {
                        tracing::warn!(
                            holder = %holder,
                            "another session holds the audit integration lock: no checkpoint is signed until it lets go"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "who holds the audit integration lock"),
                }
                Ok(())
            }
            Err(e) if e.is_timeout() => {
                // A round too large for the time limits: smaller ones.
                round = (round / 2).max(1000);
                Err(e)
            }
            Err(e) => Err(e),
        };
        let outcome = match outcome {
            Ok(()) => {
                let mut own =
                    std::mem::take(&mut *counters.own.lock().unwrap_or_else(|p| p.into_inner()));
                let checked = audit.check_own(&mut own).await.map(|_| ());
                // Entries committed meanwhile were appended after these.
                let mut kept = counters.own.lock().unwrap_or_else(|p| p.into_inner());
                own.append(&mut kept);
                *kept = own;
                checked
            }
            e => e,
        };
        if let Some(head) = audit.seen_head() {
            counters.confirmed_tree.fetch_max(head.size, Relaxed);
        }
        drop(audit);
        if let Err(e) = outcome {
            let integrity = matches!(e, PgError::Integrity(_));
            report(&counters, e);
            if integrity {
                return;
            }
        }
        if !full {
            tokio::time::sleep(every).await;
        }
    }
}

struct Pending {
    record: AuditRecord,
    reply: oneshot::Sender<Result<Placed, String>>,
}

/// What the writer has done, for metrics and health.
#[derive(Default)]
struct Counters {
    submitted: AtomicU64,
    answered: AtomicU64,
    /// The durable size after this broker's last batch.
    entries: AtomicU64,
    commits: AtomicU64,
    commit_micros: AtomicU64,
    /// Why the last batch failed, until one succeeds.
    failure: std::sync::Mutex<Option<String>>,
    /// Why the log stopped taking entries for good (an integrity failure):
    /// every batch is refused with it until the broker restarts.
    halted: std::sync::Mutex<Option<String>>,
    /// Entries the background scrub checked, whole passes over the log it
    /// finished, and what it found (rows that are not what was signed).
    scrubbed: AtomicU64,
    scrub_passes: AtomicU64,
    scrub_findings: AtomicU64,
    /// Why the writer's batch has waited past the durability bound (a
    /// synchronous standby that does not confirm): appends are refused and
    /// health is NOT_SERVING until the batch is confirmed or refused.
    stalled: std::sync::Mutex<Option<String>>,
    /// The durability bound, in milliseconds (0: the default).
    max_durability_wait_ms: AtomicU64,
    /// Integrity failures found (by the integrator, or reported by the
    /// broker through `halt`).
    integrity_failures: AtomicU64,
    /// This broker's committed entries (sequence, hash) that no tree head
    /// it has read covers yet: once covered, each must be a leaf with that
    /// hash, whichever broker integrated it.
    own: std::sync::Mutex<Vec<(u64, Hash)>>,
    /// The newest tree size this broker's integrator saw confirmed
    /// replicated: checkpoints above it are not shown (to auditors, to
    /// witnesses) yet, since a failover may forget them.
    confirmed_tree: AtomicU64,
}

impl Counters {
    fn halted(&self) -> Option<String> {
        self.halted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn stalled(&self) -> Option<String> {
        self.stalled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_stalled(&self, why: Option<String>) {
        *self.stalled.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    fn max_durability_wait(&self) -> Duration {
        match self.max_durability_wait_ms.load(Relaxed) {
            0 => DEFAULT_MAX_DURABILITY_WAIT,
            ms => Duration::from_millis(ms),
        }
    }

    /// Stops the log taking entries until restart; the first reason stands.
    fn halt(&self, why: String) {
        self.integrity_failures.fetch_add(1, Relaxed);
        let mut halted = self.halted.lock().unwrap_or_else(|p| p.into_inner());
        if halted.is_none() {
            tracing::error!(reason = %why, "the audit log stops taking entries until restart");
            *halted = Some(why);
        }
    }
}

/// The background scrub: the whole log, checked again and again at a
/// bounded rate (each row's query columns against its signed encoding, its
/// sequence, its link to the entry before and its leaf in the tree), so
/// that a row altered in the database is found even when no one queries
/// it. A finding halts the log ([`AuditStore::halt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubSettings {
    /// Entries checked per second at most; 0 turns the scrub off.
    pub entries_per_second: u64,
}

impl Default for ScrubSettings {
    fn default() -> Self {
        ScrubSettings {
            entries_per_second: DEFAULT_SCRUB_RATE,
        }
    }
}

/// How long the scrub rests at the end of a pass, or after an error.
const SCRUB_REST: Duration = Duration::from_secs(1);

/// Checks the log from its first entry to its head, again and again, at
/// most `rate` entries a second; halts the log on a finding.
async fn scrub(mut audit: PgAudit, rate: u64, c: Arc<Counters>) {
    let step = rate.clamp(1, 1000);
    let mut position = 0u64;
    loop {
        let size = match audit.head().await {
            Ok((size, _)) => size,
            Err(e) => {
                tracing::warn!(error = %e, "the audit scrub cannot read the head; retrying");
                tokio::time::sleep(SCRUB_REST).await;
                let _ = audit.reconnect_if_lost().await;
                continue;
            }
        };
        if position >= size {
            if size > 0 {
                c.scrub_passes.fetch_add(1, Relaxed);
            }
            position = 0;
            tokio::time::sleep(SCRUB_REST).await;
            continue;
        }
        let from = position;
        let to = size.min(position + step);
        let started = tokio::time::Instant::now();
        match audit.scrub(position, to).await {
            Ok(done) => {
                position = to;
                c.scrubbed.fetch_add(done.entries, Relaxed);
            }
            Err(PgError::Corrupt(why)) => {
                c.scrub_findings.fetch_add(1, Relaxed);
                c.halt(format!(
                    "the audit scrub found a row that is not what was signed: {why}; the log takes no more entries until restart (run `semel audit verify --database`; docs/operator-guide.md)"
                ));
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the audit scrub cannot read the log; retrying");
                audit.conn.suspect = true;
                tokio::time::sleep(SCRUB_REST).await;
                let _ = audit.reconnect_if_lost().await;
                continue;
            }
        }
        let budget = Duration::from_secs_f64((to - from) as f64 / rate as f64);
        tokio::time::sleep_until(started + budget).await;
    }
}

/// One broker's audit log on PostgreSQL.
pub struct PgAuditLog {
    queue: mpsc::UnboundedSender<Pending>,
    /// The integrator's connection and the key it signs with: the task's,
    /// and `close`'s for the last checkpoint.
    integrator: Arc<Mutex<PgAudit>>,
    signer: Arc<NoteSigner>,
    counters: Arc<Counters>,
    verifier_key: String,
    /// How long a proof waits for the tree to reach a durable size.
    integration_wait: Duration,
    /// Reads, on a connection that reconnects when lost.
    reader: Mutex<PgAudit>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for PgAuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgAuditLog").finish_non_exhaustive()
    }
}

impl Drop for PgAuditLog {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl PgAuditLog {
    /// Connects (three connections: writer, integrator, reads), applies the
    /// migrations and starts the writer and the integrator, which tries the
    /// integration lock every `integrate_every` while there is nothing to
    /// do. `signer` is the log's key, the same on every broker.
    pub async fn start(
        url: &str,
        signer: NoteSigner,
        integrate_every: Duration,
    ) -> Result<PgAuditLog, PgError> {
        Self::start_with(url, signer, integrate_every, ScrubSettings::default()).await
    }

    /// [`Self::start`], with the background scrub's settings (a fourth
    /// connection, when it runs).
    pub async fn start_with(
        url: &str,
        signer: NoteSigner,
        integrate_every: Duration,
        scrub_settings: ScrubSettings,
    ) -> Result<PgAuditLog, PgError> {
        let mut writer = PgAudit::connect(url).await?;
        let mut integrator = PgAudit::connect(url).await?;
        let reader = PgAudit::connect(url).await?;
        let counters = Arc::new(Counters::default());
        counters.entries.store(reader.head().await?.0, Relaxed);
        let reader = Mutex::new(reader);
        let verifier_key = signer.verifier_key();
        let (queue, mut rx) = mpsc::unbounded_channel::<Pending>();
        let c = counters.clone();
        let write = tokio::spawn(async move {
            loop {
                let first = match tokio::time::timeout(PROBE_EVERY, rx.recv()).await {
                    Ok(Some(p)) => p,
                    Ok(None) => break,
                    Err(_) => {
                        // Idle after a failure: whether PostgreSQL is back
                        // decides health, and a broker reported unready
                        // gets no appends that could say so.
                        let failed = c
                            .failure
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .is_some();
                        // Whether the database still holds what this broker
                        // acknowledged (a failover to a standby that was
                        // behind is found without waiting for an append).
                        match writer.check_rollback().await {
                            Err(PgError::RolledBack(why)) => {
                                c.halt(why);
                                continue;
                            }
                            Err(_) => continue,
                            Ok(()) => {}
                        }
                        if failed {
                            tracing::info!(
                                "PostgreSQL answers again: audit entries can be recorded"
                            );
                            *c.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        }
                        continue;
                    }
                };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                let (records, replies): (Vec<_>, Vec<_>) =
                    batch.into_iter().map(|p| (p.record, p.reply)).unzip();
                let n = replies.len() as u64;
                if let Some(why) = c.halted() {
                    c.answered.fetch_add(n, Relaxed);
                    for reply in replies {
                        let _ = reply.send(Err(why.clone()));
                    }
                    continue;
                }
                let started = std::time::Instant::now();
                let bound = c.max_durability_wait();
                // The batch is answered only once durable where replication
                // is configured: committed with the standby's confirmation,
                // or confirmed by a later transaction that waited for it.
                // Past the bound its callers are refused and health says
                // why, while the writer goes on waiting (the commit cannot
                // be taken back).
                let mut replies = Some(replies);
                let result = {
                    let work = durable_append(&mut writer, records);
                    tokio::pin!(work);
                    tokio::select! {
                        r = &mut work => r,
                        () = tokio::time::sleep(bound) => {
                            let why = format!(
                                "an audit batch has waited more than {} ms to be durable (committed and confirmed by the synchronous standby): lookups are refused until PostgreSQL confirms it; is the standby running and connected (pg_stat_replication)?",
                                bound.as_millis()
                            );
                            tracing::error!(reason = %why, "audit log stalled");
                            c.set_stalled(Some(why.clone()));
                            for reply in replies.take().into_iter().flatten() {
                                let _ = reply.send(Err(why.clone()));
                            }
                            work.await
                        }
                    }
                };
                let late = replies.is_none();
                c.set_stalled(None);
                c.commits.fetch_add(1, Relaxed);
                c.commit_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
                c.answered.fetch_add(n, Relaxed);
                match result {
                    Ok(placed) => {
                        if let Some(last) = placed.last() {
                            c.entries.store(last.sequence + 1, Relaxed);
                            if !late {
                                writer.acknowledge(last.sequence + 1, last.hash);
                            }
                        }
                        c.own
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .extend(placed.iter().map(|p| (p.sequence, p.hash)));
                        *c.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        if late {
                            tracing::info!(
                                "the stalled audit batch is durable now; its callers were refused"
                            );
                        }
                        for (reply, p) in replies.into_iter().flatten().zip(placed) {
                            let _ = reply.send(Ok(p));
                        }
                    }
                    Err(PgError::RolledBack(why)) => {
                        c.halt(why.clone());
                        for reply in replies.into_iter().flatten() {
                            let _ = reply.send(Err(why.clone()));
                        }
                    }
                    Err(e) => {
                        // No entry of the batch has a place: every caller
                        // is told, and refuses.
                        let why = e.to_string();
                        tracing::error!(error = %why, "audit batch not recorded");
                        *c.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
                        for reply in replies.into_iter().flatten() {
                            let _ = reply.send(Err(why.clone()));
                        }
                    }
                }
            }
        });
        integrator.set_integration_limits(integrate_every);
        let integrator = Arc::new(Mutex::new(integrator));
        let signer = Arc::new(signer);
        let integrate = tokio::spawn(integrate_loop(
            integrator.clone(),
            signer.clone(),
            counters.clone(),
            integrate_every,
        ));
        let mut tasks = vec![write, integrate];
        if scrub_settings.entries_per_second > 0 {
            let scrubber = PgAudit::connect(url).await?;
            tasks.push(tokio::spawn(scrub(
                scrubber,
                scrub_settings.entries_per_second,
                counters.clone(),
            )));
        }
        Ok(PgAuditLog {
            queue,
            integrator,
            signer,
            counters,
            verifier_key,
            integration_wait: INTEGRATION_WAIT.max(integrate_every * 3),
            reader,
            tasks,
        })
    }

    /// How long a batch may wait to be durable (committed and confirmed by
    /// the synchronous standby, where one is configured) before its callers
    /// are refused and health says NOT_SERVING.
    pub fn set_max_durability_wait(&self, bound: Duration) {
        self.counters
            .max_durability_wait_ms
            .store(bound.as_millis().max(1) as u64, Relaxed);
    }

    /// The read connection, connected again first if it was lost.
    async fn reader(&self) -> Result<MutexGuard<'_, PgAudit>, StorageError> {
        let mut reader = self.reader.lock().await;
        reader.reconnect_if_lost().await?;
        Ok(reader)
    }

    /// Waits until the tree holds `size` entries, if they are durable.
    async fn integrated(&self, size: u64) -> Result<(), StorageError> {
        let (durable, _) = self.reader().await?.head().await?;
        if size > durable {
            return Err(StorageError::OutOfRange(format!(
                "the log holds {durable} entries, not {size}"
            )));
        }
        let deadline = tokio::time::Instant::now() + self.integration_wait;
        while self.reader().await?.tree_head().await?.size < size {
            if tokio::time::Instant::now() > deadline {
                return Err(StorageError::Unavailable(
                    "the audit tree has not caught up with the log: is an integrator running?"
                        .into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

/// Appends a batch and, when PostgreSQL did not confirm it replicated,
/// confirms it by a later transaction that waits for the standby, asking
/// again until it does or the batch is found gone (then its callers are
/// refused).
async fn durable_append(
    writer: &mut PgAudit,
    records: Vec<AuditRecord>,
) -> Result<Vec<Placed>, PgError> {
    let placed = writer.append(records).await?;
    let mut pause = Duration::from_millis(20);
    while writer.unconfirmed() {
        match writer.confirm().await {
            Ok(()) => break,
            Err(e) if writer.unconfirmed() => {
                tracing::warn!(error = %e, "an audit batch is not confirmed replicated yet; asking again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(PROBE_EVERY);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(placed)
}

#[async_trait::async_trait]
impl AuditStore for PgAuditLog {
    async fn append(&self, record: AuditRecord) -> Result<Appended, StorageError> {
        // A writer stalled past the durability bound, or halted, refuses at
        // once rather than queue callers behind it.
        if let Some(why) = self.counters.halted().or_else(|| self.counters.stalled()) {
            return Err(StorageError::Unavailable(why));
        }
        let (reply, rx) = oneshot::channel();
        self.counters.submitted.fetch_add(1, Relaxed);
        self.queue
            .send(Pending { record, reply })
            .map_err(|_| StorageError::Unavailable("the audit writer has stopped".into()))?;
        match rx.await {
            Ok(Ok(p)) => Ok(Appended {
                sequence: p.sequence,
                hash: p.hash,
            }),
            Ok(Err(why)) => Err(StorageError::Unavailable(why)),
            Err(_) => Err(StorageError::Unavailable(
                "the audit writer has stopped".into(),
            )),
        }
    }

    async fn head(&self) -> Result<(u64, Hash), StorageError> {
        Ok(self.reader().await?.head().await?)
    }

    async fn entry(&self, sequence: u64) -> Result<Vec<u8>, StorageError> {
        let (size, _) = self.reader().await?.head().await?;
        if sequence >= size {
            return Err(StorageError::OutOfRange(format!(
                "the log holds {size} entries, not entry {sequence}"
            )));
        }
        let mut one = self
            .reader()
            .await?
            .encodings(sequence, sequence + 1)
            .await?;
        one.pop()
            .ok_or_else(|| StorageError::Corrupt(format!("entry {sequence} is missing")))
    }

    async fn root(&self, size: u64) -> Result<Hash, StorageError> {
        self.integrated(size).await?;
        Ok(self.reader().await?.root(size).await?)
    }

    async fn inclusion_proof(&self, sequence: u64, size: u64) -> Result<Vec<Hash>, StorageError> {
        if sequence >= size {
            return Err(StorageError::OutOfRange(format!(
                "entry {sequence} is not in a tree of {size} entries"
            )));
        }
        self.integrated(size).await?;
        Ok(self.reader().await?.inclusion_proof(sequence, size).await?)
    }

    async fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StorageError> {
        if old == 0 || old > new {
            return Err(StorageError::OutOfRange(format!(
                "no consistency proof from {old} to {new} entries: the first size must be between 1 and the second"
            )));
        }
        self.integrated(new).await?;
        Ok(self.reader().await?.consistency_proof(old, new).await?)
    }

    async fn query_page(&self, query: &AuditQuery) -> Result<AuditPage, StorageError> {
        Ok(self.reader().await?.query_page(query).await?)
    }

    async fn latest_checkpoint(&self) -> Result<Option<SignedCheckpoint>, StorageError> {
        let confirmed = self.counters.confirmed_tree.load(Relaxed);
        match self.reader().await?.latest_checkpoint(confirmed).await? {
            Some(note) => Ok(Some(crate::query::signed(note)?)),
            None => Ok(None),
        }
    }

    async fn checkpoints(&self) -> Result<Vec<SignedCheckpoint>, StorageError> {
        let confirmed = self.counters.confirmed_tree.load(Relaxed);
        Ok(self.reader().await?.checkpoints(confirmed).await?)
    }

    async fn set_cosigned(&self, note: &str) -> Result<(), StorageError> {
        Ok(self.reader().await?.set_cosigned(note).await?)
    }

    async fn cosigned(&self) -> Result<Option<String>, StorageError> {
        Ok(self.reader().await?.cosigned().await?)
    }

    fn verifier_key(&self) -> Option<String> {
        Some(self.verifier_key.clone())
    }

    fn stats(&self) -> AuditStats {
        let c = &self.counters;
        AuditStats {
            entries: c.entries.load(Relaxed),
            queued: c
                .submitted
                .load(Relaxed)
                .saturating_sub(c.answered.load(Relaxed)),
            syncs: c.commits.load(Relaxed),
            sync_micros: c.commit_micros.load(Relaxed),
            scrubbed: c.scrubbed.load(Relaxed),
            scrub_passes: c.scrub_passes.load(Relaxed),
            scrub_findings: c.scrub_findings.load(Relaxed),
            integrity_failures: c.integrity_failures.load(Relaxed),
        }
    }

    fn failure(&self) -> Option<String> {
        self.counters
            .halted()
            .or_else(|| self.counters.stalled())
            .or_else(|| {
                self.counters
                    .failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
            })
    }

    fn halt(&self, why: String) {
        self.counters.halt(why)
    }

    fn archived(&self) -> ArchiveState {
        ArchiveState::default()
    }

    async fn archive_before(
        &self,
        _cutoff_micros: i64,
    ) -> Result<Option<ArchiveReport>, StorageError> {
        Err(StorageError::Unsupported(
            "archiving is not built for the PostgreSQL store yet: its entries stay in audit_entries (docs/storage-postgresql.md)".into(),
        ))
    }

    async fn close(&self) -> Result<(), StorageError> {
        // Every append is answered only once committed: nothing accepted
        // is left to write. A last checkpoint covers every entry, as on
        // the embedded store, unless the log halted (nothing is signed
        // over a database that failed a check) or another broker keeps
        // the lock past the wait (it signs them).
        if self.counters.halted().is_some() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
        let mut integrator = self.integrator.lock().await;
        loop {
            let size = self.counters.entries.load(Relaxed);
            match integrator.integrate(INTEGRATE_MAX, &self.signer).await {
                Ok(Integrated::Done { head, .. }) if head.size >= size => {
                    let mut own = std::mem::take(
                        &mut *self.counters.own.lock().unwrap_or_else(|p| p.into_inner()),
                    );
                    if let Err(e) = integrator.check_own(&mut own).await {
                        report(&self.counters, e);
                    }
                    if let Some(head) = integrator.seen_head() {
                        self.counters.confirmed_tree.fetch_max(head.size, Relaxed);
                    }
                    tracing::info!(size = head.size, "last audit checkpoint signed");
                    return Ok(());
                }
                Ok(_) => {}
                Err(e @ PgError::Integrity(_)) => {
                    let why = e.to_string();
                    report(&self.counters, e);
                    return Err(StorageError::Corrupt(why));
                }
                Err(e) => tracing::warn!(error = %e, "the last audit checkpoint: retrying"),
            }
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(
                    "the last audit checkpoint was not signed: another broker holds the integration lock; it signs these entries"
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
