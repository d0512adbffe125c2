//! Semel's storage: the registry (organisations, datasets, authorisations)
//! and the audit log. This is the only crate that knows sled; the rest of
//! Semel sees [`Store`], [`Registry`] and [`AuditLog`].
//!
//! Layout of a data directory:
//!
//! ```text
//! <data-dir>/db/            sled: the registry, persons directory and consents
//! <data-dir>/audit/log      the audit log: framed, hash-chained entries
//! <data-dir>/audit/ends     where each entry ends (rebuilt from the log)
//! <data-dir>/audit/index/   entries by citizen and consumer (rebuilt from the log)
//! ```
//!
//! The audit log file is the truth for the audit and is made durable with
//! `fdatasync`; sled's `flush()` (which is `sync_file_range`, not `fsync`)
//! never decides whether an entry survives.

mod audit;
mod entry_lines;
mod keys;
mod mutations;
mod persons;
mod port;
mod postings;
mod registry;
pub mod tree;
pub mod verify;

pub use keys::{load_or_create_signing_key, read_signing_key};

use std::path::{Path, PathBuf};

pub use audit::{Appended, AuditError, AuditLog, ChainReport, CheckpointSettings};
pub use mutations::Mutations;
pub use persons::Persons;
pub use port::{EmbeddedAudit, storage};
pub use registry::Registry;
pub use semel_core::persons::Resolved;
pub use semel_storage::{
    ArchiveReport, ArchiveState, AuditQuery, AuditStats, RegistryUndo, SignedCheckpoint,
    StoredEntry,
};

/// A storage failure. `Io` and `Sled` leave the outcome of a write unknown;
/// `Corrupt` means the data on disk is not what Semel wrote.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Sled {
        context: String,
        #[source]
        source: sled::Error,
    },
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Conflict(String),
    /// A request for something the log does not hold (yet): a tree size
    /// beyond its end, an entry beyond a checkpoint.
    #[error("{0}")]
    OutOfRange(String),
}

impl From<StoreError> for semel_storage::StorageError {
    fn from(e: StoreError) -> Self {
        use semel_storage::StorageError as S;
        match e {
            StoreError::Conflict(m) => S::Conflict(m),
            StoreError::Corrupt(m) => S::Corrupt(m),
            StoreError::OutOfRange(m) => S::OutOfRange(m),
            e @ (StoreError::Io { .. } | StoreError::Sled { .. }) => S::Unavailable(e.to_string()),
        }
    }
}

/// Runs a synchronous store call on tokio's blocking threads (when there
/// is a runtime), so an `fsync` never holds up a worker.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, semel_storage::StorageError> {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => rt.spawn_blocking(f).await.map_err(|e| {
            semel_storage::StorageError::Unavailable(format!("a storage task failed: {e}"))
        })?,
        Err(_) => f(),
    }
    .map_err(Into::into)
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

pub(crate) fn sled_err(context: impl Into<String>) -> impl FnOnce(sled::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Sled { context, source }
}

/// The embedded store of one broker: a sled database and the audit log.
pub struct Store {
    registry: Registry,
    persons: Persons,
    mutations: Mutations,
    audit: AuditLog,
}

impl Store {
    /// Opens (or creates) the store in `dir`, recovering the audit log's
    /// tail and indexes if the broker stopped abruptly.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, None)
    }

    /// Like [`Store::open`], signing audit checkpoints as `checkpoints` says.
    ///
    /// The data directory is its owner's only (0700, tightened if it was
    /// created wider): the log, the store and the keys under it hold
    /// personal data and secrets, whatever mode the files themselves get.
    pub fn open_with(
        dir: &Path,
        checkpoints: Option<CheckpointSettings>,
    ) -> Result<Self, StoreError> {
        let db_path: PathBuf = dir.join("db");
        private_dir(dir)?;
        // sled's lock outlives a closed database by as long as its
        // background flusher takes to notice: a store reopened at once in
        // the same process (tests, a restart in place) waits for it, up to
        // two seconds. Another process holding it still fails the start.
        let mut attempts = 0;
        let db = loop {
            match sled::Config::new()
                .path(&db_path)
                .flush_every_ms(Some(1000))
                .open()
            {
                // sled reports its lock as an `Other` I/O error with this text.
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && attempts < 40 =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => {
                    break other.map_err(sled_err(format!(
                        "open sled database {}",
                        db_path.display()
                    )))?;
                }
            }
        };
        let registry = Registry::open(db.clone(), db_path)?;
        let persons = Persons::open(&db, registry.clone())?;
        let mutations = Mutations::open(&db, registry.clone())?;
        let audit = AuditLog::open(&dir.join("audit"), checkpoints)?;
        Ok(Store {
            registry,
            persons,
            mutations,
            audit,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The persons directory, consents and replaced numbers.
    pub fn persons(&self) -> &Persons {
        &self.persons
    }

    /// The mutation queues.
    pub fn mutations(&self) -> &Mutations {
        &self.mutations
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Stops the audit writer after it has made every accepted entry durable,
    /// and flushes sled.
    pub fn close(self) -> Result<(), StoreError> {
        self.audit.close()?;
        self.registry.sync()
    }
}

/// Creates `dir` (and its missing parents) readable by its owner only, or
/// takes away the group's and others' access to it if it exists. A
/// directory this process may not restrict (a volume owned by another
/// user, shared through its group) is left as it is, with a warning.
fn private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(format!("create {}", dir.display())))?;
    let meta = std::fs::metadata(dir).map_err(io_err(format!("read {}", dir.display())))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0
        && let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))
    {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{:o}", mode & 0o777),
            error = %e,
            "the data directory is readable by others and could not be restricted; restrict it (chmod 700)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod reopen_tests {
    /// A store closed and opened again at once, as a restart in place or a
    /// test does, opens: sled's lock is waited for.
    #[test]
    fn a_store_reopened_at_once_in_the_same_process_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        for _ in 0..20 {
            let store = crate::Store::open(dir.path()).expect("opens again at once");
            store.close().expect("close");
        }
    }
}
