//! The registry on PostgreSQL, shared by every broker: each change is one
//! transaction that writes the record, bumps `registry_version` and sends
//! `NOTIFY semel_registry`; every broker [`RegistryWatch`]es the version
//! (LISTEN, with polling as the fallback) and reloads its snapshot when it
//! moves.
//!
//! The bound: a change committed through one broker is seen by every other
//! broker's watch at once through NOTIFY, and at the latest one poll
//! interval later when a notification is lost (or one poll interval plus a
//! reconnection when the watch's connection was lost).
//!
//! Its parts: the records and their plain reads (here); reads as honoured,
//! sealed and listed in the manifest (`reads`); changes committed or
//! staged and sealed (`changes`), the rows they write and undo (`writes`);
//! the adoption of rules from before seals (`adoption`); the storage port
//! (`port`); the version watch (`watching`).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use semel_core::seal::RowSealer;
use semel_core::{
    Authorisation, CertificateId, Dataset, Kbo, Organisation, Purpose, RevokedCertificate,
};
use semel_storage::{Appended, OpenChange, RegistryUndo, RegistryWrite, Staged, StorageError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_postgres::GenericClient;

use crate::{Conn, PgError, migrate};

mod adoption;
mod changes;
mod port;
mod reads;
mod watching;
mod writes;

use adoption::*;
use changes::*;
use writes::*;

pub use watching::{Confirmation, RegistryWatch};

const CHANNEL: &str = "semel_registry";

/// One broker's connection to the registry.
pub struct PgRegistry {
    conn: tokio::sync::Mutex<Conn>,
    /// Where a staged change opens a connection of its own.
    url: String,
    /// The broker this connection works for: the owner of the applies it
    /// opens (table `registry_applies`).
    broker: String,
    /// Seals the rules this broker writes and checks every rule read (no
    /// rule without its entry); `None` honours rows as stored, for tests
    /// of this crate that run no log. A broker always seals.
    sealer: Option<RowSealer>,
    /// Rules read and not honoured since start.
    unsealed: AtomicU64,
    /// The newest registry manifest loaded (see [`crate::manifest`]),
    /// shared with the changes this broker stages.
    manifest: std::sync::Arc<crate::manifest::Memory>,
}

/// The kinds of record that decide lookups, and so are sealed (besides
/// revocations: [`REVOCATION`]).
const SEALED_KINDS: [&str; 4] = ["organisation", "dataset", "purpose", "authorisation"];

/// The kind of a certificate's revocation: sealed and listed in the
/// registry's manifest like the rules, but read failing closed (see
/// [`PgRegistry::revoked_certificates`]).
const REVOCATION: &str = "revoked_certificate";

/// What a seal of a record of `kind` is made over: its table and kind.
fn sealed_table(kind: &str) -> String {
    format!("registry_records/{kind}")
}

/// What a seal of an authorisation's version is made over.
const HISTORY_TABLE: &str = "registry_authorisation_history";

impl std::fmt::Debug for PgRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgRegistry").finish_non_exhaustive()
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<String, PgError> {
    serde_json::to_string(value).map_err(|e| PgError::Corrupt(format!("encode a record: {e}")))
}

pub(crate) fn decode<T: DeserializeOwned>(text: &str) -> Result<T, PgError> {
    serde_json::from_str(text).map_err(|e| PgError::Corrupt(format!("a registry record: {e}")))
}

/// Bumps the registry's version and tells every listening broker; both
/// take effect only when the change's transaction commits.
async fn bump(tx: &(impl GenericClient + Sync)) -> Result<u64, PgError> {
    let version: i64 = tx
        .query_one(
            "UPDATE registry_version SET version = version + 1 WHERE id = 0 RETURNING version",
            &[],
        )
        .await?
        .get(0);
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &version.to_string()],
    )
    .await?;
    u64::try_from(version).map_err(|_| PgError::Corrupt("a negative registry version".into()))
}

/// Refuses an undo unless the record (locked until the transaction ends)
/// is still the one the change wrote: a change made since, through another
/// broker, stands.
async fn still<T: DeserializeOwned + PartialEq>(
    tx: &(impl GenericClient + Sync),
    kind: &str,
    key: &str,
    written: &T,
) -> Result<(), PgError> {
    let current: Option<T> = tx
        .query_opt(
            "SELECT value::text FROM registry_records WHERE kind = $1 AND key = $2 FOR UPDATE",
            &[&kind, &key],
        )
        .await?
        .map(|r| decode(r.get(0)))
        .transpose()?;
    if current.as_ref() != Some(written) {
        return Err(PgError::Conflict(format!(
            "{kind} {key} has changed since: the change is not undone"
        )));
    }
    Ok(())
}

impl PgRegistry {
    /// Connects and applies the migrations this binary knows.
    pub async fn connect(url: &str) -> Result<PgRegistry, PgError> {
        let conn = Conn::open(url).await?;
        migrate(&conn.client).await?;
        Ok(PgRegistry {
            conn: tokio::sync::Mutex::new(conn),
            url: url.to_owned(),
            broker: format!("registry-{}", std::process::id()),
            sealer: None,
            unsealed: AtomicU64::new(0),
            manifest: Default::default(),
        })
    }

    /// Seals the rules this broker writes with `sealer`, and honours only
    /// rules whose seal verifies and whose entry is in the log as sealed.
    pub fn sealed_by(mut self, sealer: RowSealer) -> Self {
        self.sealer = Some(sealer);
        self
    }

    /// Names the broker this connection works for (its id in table
    /// `brokers`): the applies it opens are its own, settled by others
    /// only once it is no longer alive there.
    pub fn owned_by(mut self, broker: &str) -> Self {
        broker.clone_into(&mut self.broker);
        self
    }

    /// The registry's version: it moves with every change.
    pub async fn version(&self) -> Result<u64, PgError> {
        let v: i64 = self
            .conn
            .lock()
            .await
            .client()
            .await?
            .query_one("SELECT version FROM registry_version WHERE id = 0", &[])
            .await?
            .get(0);
        u64::try_from(v).map_err(|_| PgError::Corrupt("a negative registry version".into()))
    }

    /// Inserts or replaces one record; returns the registry's new version.
    async fn put<T: Serialize>(&self, kind: &str, key: &str, value: &T) -> Result<u64, PgError> {
        let value = encode(value)?;
        let mut conn = self.conn.lock().await;
        let tx = conn.client().await?.transaction().await?;
        tx.execute(
            "INSERT INTO registry_records (kind, key, value) VALUES ($1, $2, $3::text::jsonb) \
             ON CONFLICT (kind, key) DO UPDATE SET value = EXCLUDED.value",
            &[&kind, &key, &value],
        )
        .await
        .map_err(unique_violation)?;
        let version = bump(&tx).await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Inserts a record whose key must be free (across every broker: the
    /// primary key decides); returns the registry's new version.
    async fn insert<T: Serialize>(&self, kind: &str, key: &str, value: &T) -> Result<u64, PgError> {
        let value = encode(value)?;
        let mut conn = self.conn.lock().await;
        let tx = conn.client().await?.transaction().await?;
        let inserted = tx
            .execute(
                "INSERT INTO registry_records (kind, key, value) VALUES ($1, $2, $3::text::jsonb) \
                 ON CONFLICT (kind, key) DO NOTHING",
                &[&kind, &key, &value],
            )
            .await
            .map_err(unique_violation)?;
        if inserted == 0 {
            return Err(PgError::Conflict(format!("{kind} {key} already exists")));
        }
        let version = bump(&tx).await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn all<T: DeserializeOwned>(&self, kind: &str) -> Result<Vec<T>, PgError> {
        self.conn
            .lock()
            .await
            .client()
            .await?
            .query(
                "SELECT value::text FROM registry_records WHERE kind = $1 ORDER BY key COLLATE \"C\"",
                &[&kind],
            )
            .await?
            .iter()
            .map(|r| decode(r.get(0)))
            .collect()
    }

    /// Stores an organisation (insert or replace): a suspension, for one.
    pub async fn put_organisation(&self, org: &Organisation) -> Result<u64, PgError> {
        self.put("organisation", org.kbo.as_str(), org).await
    }

    pub async fn organisations(&self) -> Result<Vec<Organisation>, PgError> {
        self.sealed(None).await
    }

    pub async fn put_dataset(&self, dataset: &Dataset) -> Result<u64, PgError> {
        self.put("dataset", dataset.name.as_str(), dataset).await
    }

    pub async fn datasets(&self) -> Result<Vec<Dataset>, PgError> {
        self.sealed(None).await
    }

    pub async fn put_purpose(&self, purpose: &Purpose) -> Result<u64, PgError> {
        self.put("purpose", purpose.code.as_str(), purpose).await
    }

    pub async fn purposes(&self) -> Result<Vec<Purpose>, PgError> {
        self.sealed(None).await
    }

    pub async fn put_application(
        &self,
        application: &semel_core::AuthorisationApplication,
    ) -> Result<u64, PgError> {
        self.put("application", &application.id, application).await
    }

    pub async fn applications(&self) -> Result<Vec<semel_core::AuthorisationApplication>, PgError> {
        self.all("application").await
    }

    pub async fn put_membership(
        &self,
        application: &semel_core::MembershipApplication,
    ) -> Result<u64, PgError> {
        self.put("membership", &application.id, application).await
    }

    pub async fn memberships(&self) -> Result<Vec<semel_core::MembershipApplication>, PgError> {
        self.all("membership").await
    }

    /// Stores a new version of an authorisation. The version must follow
    /// the stored one, so two changes made at once through two brokers
    /// cannot silently overwrite each other: the second gets
    /// [`PgError::Conflict`].
    pub async fn put_authorisation(&self, auth: &Authorisation) -> Result<u64, PgError> {
        let value = encode(auth)?;
        let reference = auth.reference.as_str();
        let mut conn = self.conn.lock().await;
        let tx = conn.client().await?.transaction().await?;
        let current: Option<Authorisation> = tx
            .query_opt(
                "SELECT value::text FROM registry_records \
                 WHERE kind = 'authorisation' AND key = $1 FOR UPDATE",
                &[&reference],
            )
            .await?
            .map(|r| decode(r.get(0)))
            .transpose()?;
        let expected = current.as_ref().map_or(1, |c| c.version + 1);
        let conflict = || {
            PgError::Conflict(format!(
                "authorisation {reference} is at version {}, cannot store version {}",
                expected - 1,
                auth.version
            ))
        };
        if auth.version != expected {
            return Err(conflict());
        }
        // A first version written at once by two brokers: the history's
        // primary key lets one through.
        let inserted = tx
            .execute(
                "INSERT INTO registry_authorisation_history (reference, version, value) \
                 VALUES ($1, $2, $3::text::jsonb) ON CONFLICT DO NOTHING",
                &[&reference, &(auth.version as i32), &value],
            )
            .await?;
        if inserted == 0 {
            return Err(conflict());
        }
        tx.execute(
            "INSERT INTO registry_records (kind, key, value) VALUES ('authorisation', $1, $2::text::jsonb) \
             ON CONFLICT (kind, key) DO UPDATE SET value = EXCLUDED.value",
            &[&reference, &value],
        )
        .await?;
        let version = bump(&tx).await?;
        tx.commit().await?;
        Ok(version)
    }

    pub async fn authorisations(&self) -> Result<Vec<Authorisation>, PgError> {
        self.sealed(None).await
    }
}
