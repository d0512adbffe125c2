//! The audit log on PostgreSQL behind the storage port: a writer task that
//! takes every queued entry at once and sequences the batch in one
//! transaction (as the embedded writer shares one `fdatasync`), an
//! integrator task that extends the tree and signs checkpoints whenever it
//! holds the integration lock, and reads on a connection of their own.

use std::time::Duration;

use semel_core::checkpoint::NoteSigner;
use semel_core::{AuditRecord, Hash};
use semel_storage::{Appended, AuditStore, StorageError};
use tokio::sync::{Mutex, MutexGuard, mpsc, oneshot};

use crate::{Integrated, PgAudit, PgError, Placed};

/// The most entries one sequencing transaction takes.
const MAX_BATCH: usize = 4096;

/// How long a proof waits for the integrator to reach a durable size.
const INTEGRATION_WAIT: Duration = Duration::from_secs(10);

struct Pending {
    record: AuditRecord,
    reply: oneshot::Sender<Result<Placed, String>>,
}

/// One broker's audit log on PostgreSQL.
pub struct PgAuditLog {
    queue: mpsc::UnboundedSender<Pending>,
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
        let mut writer = PgAudit::connect(url).await?;
        let mut integrator = PgAudit::connect(url).await?;
        let reader = Mutex::new(PgAudit::connect(url).await?);
        let (queue, mut rx) = mpsc::unbounded_channel::<Pending>();
        let write = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                let (records, replies): (Vec<_>, Vec<_>) =
                    batch.into_iter().map(|p| (p.record, p.reply)).unzip();
                match writer.append(records).await {
                    Ok(placed) => {
                        for (reply, p) in replies.into_iter().zip(placed) {
                            let _ = reply.send(Ok(p));
                        }
                    }
                    Err(e) => {
                        // No entry of the batch has a place: every caller
                        // is told, and refuses.
                        let why = e.to_string();
                        tracing::error!(error = %why, "audit batch not recorded");
                        for reply in replies {
                            let _ = reply.send(Err(why.clone()));
                        }
                    }
                }
            }
        });
        let integrate = tokio::spawn(async move {
            loop {
                match integrator.integrate(100_000, &signer).await {
                    Ok(Integrated::Done {
                        checkpoint: Some(_),
                        ..
                    }) => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "audit integration failed; retrying"),
                }
                tokio::time::sleep(integrate_every).await;
            }
        });
        Ok(PgAuditLog {
            queue,
            reader,
            tasks: vec![write, integrate],
        })
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
        let deadline = tokio::time::Instant::now() + INTEGRATION_WAIT;
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

#[async_trait::async_trait]
impl AuditStore for PgAuditLog {
    async fn append(&self, record: AuditRecord) -> Result<Appended, StorageError> {
        let (reply, rx) = oneshot::channel();
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
}
