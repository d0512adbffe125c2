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

const CHANNEL: &str = "semel_registry";

/// How long the watch waits for its connection or a read before it treats
/// the connection as lost.
const WATCH_TIMEOUT: Duration = Duration::from_secs(5);

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

/// What the registry's manifest lists of the rows a read returns (see
/// [`crate::manifest`]).
enum Listed<K> {
    /// No sealer: rows are honoured as stored.
    Unchecked,
    /// The rules listed, by their identity, with the entry each must name.
    Rules(std::collections::BTreeMap<K, i64>),
    /// The manifest is not honoured, nor then is any rule.
    Nothing {
        why: &'static str,
        sequence: Option<i64>,
    },
}

/// The rules `writes` seal (`entries[i]` for `writes[i]`), as the manifest
/// lists them.
fn listing(
    writes: &[RegistryWrite],
    entries: &[Appended],
) -> Result<crate::manifest::Manifest, PgError> {
    let mut m = crate::manifest::Manifest::default();
    for (w, at) in writes.iter().zip(entries) {
        let sequence = sequence_of(*at)?;
        match w {
            RegistryWrite::Organisation { after, .. } => list(&mut m, &**after, sequence),
            RegistryWrite::Dataset { after, .. } => list(&mut m, &**after, sequence),
            RegistryWrite::Purpose { after, .. } => list(&mut m, &**after, sequence),
            RegistryWrite::Authorisation { after, .. } => {
                list(&mut m, &**after, sequence);
                m.set_version(after.reference.as_str(), after.version as i32, sequence);
            }
            RegistryWrite::Revocation { after } => list(&mut m, &**after, sequence),
            RegistryWrite::Application { .. } | RegistryWrite::Membership { .. } => {}
        }
    }
    Ok(m)
}

fn list<T: Record>(m: &mut crate::manifest::Manifest, record: &T, sequence: i64) {
    m.set_record(T::KIND, &record.key(), sequence);
}

/// The sealed rules as they stand, each listed with its entry if its seal
/// verifies and that entry is in the log as sealed: what an adoption lists
/// where no manifest is honoured (an upgrade from schema version 15, or an
/// operator's restoration).
async fn as_they_stand(
    c: &(impl GenericClient + Sync),
    sealer: &RowSealer,
) -> Result<crate::manifest::Manifest, PgError> {
    let mut m = crate::manifest::Manifest::default();
    let mut kinds: Vec<&str> = SEALED_KINDS.to_vec();
    kinds.push(REVOCATION);
    let rows = c
        .query(
            &format!(
                "SELECT r.kind, r.key, r.value::text, {} FROM registry_records r \
                   LEFT JOIN audit_entries e ON e.sequence = r.audit_sequence \
                  WHERE r.kind = ANY($1) AND r.seal IS NOT NULL",
                crate::seals::COLUMNS
            ),
            &[&kinds],
        )
        .await?;
    for r in &rows {
        let (kind, key, text): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let parts = match kind.as_str() {
            "organisation" => key_and_canonical::<Organisation>(&text),
            "dataset" => key_and_canonical::<Dataset>(&text),
            "purpose" => key_and_canonical::<Purpose>(&text),
            "authorisation" => key_and_canonical::<Authorisation>(&text),
            _ => key_and_canonical::<RevokedCertificate>(&text),
        };
        let sealed = crate::seals::Sealed::read(r, 3);
        if let (Some((k, canonical)), Some(sequence)) = (parts, sealed.sequence)
            && k == key
            && sealed
                .refusal(sealer, &sealed_table(&kind), canonical.as_bytes())
                .is_none()
        {
            m.set_record(&kind, &key, sequence);
        }
    }
    let versions = c
        .query(
            &format!(
                "SELECT r.reference, r.version, r.value::text, {} \
                   FROM registry_authorisation_history r \
                   LEFT JOIN audit_entries e ON e.sequence = r.audit_sequence \
                  WHERE r.seal IS NOT NULL",
                crate::seals::COLUMNS
            ),
            &[],
        )
        .await?;
    for r in &versions {
        let (reference, version, text): (String, i32, String) = (r.get(0), r.get(1), r.get(2));
        let Ok(a) = decode::<Authorisation>(&text) else {
            continue;
        };
        let sealed = crate::seals::Sealed::read(r, 3);
        if let Some(sequence) = sealed.sequence
            && a.reference.as_str() == reference
            && a.version as i32 == version
            && sealed
                .refusal(sealer, HISTORY_TABLE, encode(&a)?.as_bytes())
                .is_none()
        {
            m.set_version(&reference, version, sequence);
        }
    }
    Ok(m)
}

/// A stored record's key (as its value says) and canonical encoding, if
/// it can be read.
fn key_and_canonical<T: Record>(text: &str) -> Option<(String, String)> {
    let value: T = decode(text).ok()?;
    Some((value.key().into_owned(), encode(&value).ok()?))
}

/// How long a staged change's transaction may wait for a lock, and stay
/// open waiting for its entry, before PostgreSQL ends it (rolled back):
/// one broker stalled mid-change holds the others back no longer.
const STAGED_LOCK_TIMEOUT: &str = "10s";
const STAGED_IDLE_TIMEOUT: &str = "30s";

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

    /// The rules of one kind that are honoured: with a sealer, those whose
    /// key column says what their value says, whose seal verifies over the
    /// value, its kind and the entry named, whose entry is in the log with
    /// the hash named, and whose entry is the one the registry's manifest
    /// lists for them (read in the same transaction, and verified as
    /// rows are: see [`crate::manifest`]). Every other row is counted and
    /// reported, and left out as if it did not exist; a rule the manifest
    /// lists and the table lacks is reported too. `only` narrows to one key.
    async fn sealed<T: Record>(&self, only: Option<&str>) -> Result<Vec<T>, PgError> {
        let kind = T::KIND;
        let sql = format!(
            "SELECT r.key, r.value::text, {} FROM registry_records r \
               LEFT JOIN audit_entries e ON e.sequence = r.audit_sequence \
              WHERE r.kind = $1 AND ($2::text IS NULL OR r.key = $2) \
              ORDER BY r.key COLLATE \"C\"",
            crate::seals::COLUMNS
        );
        let (rows, listed) = self
            .read_listed(&sql, &[&kind, &only], |m| m.records_of(kind, only))
            .await?;
        self.honoured(
            &sealed_table(kind),
            rows,
            |r| r.get::<_, String>(0),
            |r, v: &T| r.get::<_, &str>(0) == v.key(),
            listed,
        )
    }

    /// Runs `sql` and, with a sealer, reads the registry's manifest in the
    /// same transaction (one snapshot), giving what it lists for the rows
    /// read (`of`).
    async fn read_listed<K: Ord>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        of: impl FnOnce(&crate::manifest::Manifest) -> std::collections::BTreeMap<K, i64>,
    ) -> Result<(Vec<tokio_postgres::Row>, Listed<K>), PgError> {
        let mut conn = self.conn.lock().await;
        let client = conn.client().await?;
        let Some(sealer) = &self.sealer else {
            return Ok((client.query(sql, params).await?, Listed::Unchecked));
        };
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let manifest = self.manifest.load(&tx, sealer, true).await?;
        let rows = tx.query(sql, params).await?;
        tx.commit().await?;
        let listed = match manifest {
            crate::manifest::Read::Absent => Listed::Rules(Default::default()),
            crate::manifest::Read::Verified { manifest, .. } => Listed::Rules(of(&manifest)),
            crate::manifest::Read::Refused { why, sequence } => Listed::Nothing { why, sequence },
        };
        Ok((rows, listed))
    }

    /// Keeps the rows (value in column 1, seal columns from 2) that are
    /// honoured (see [`PgRegistry::sealed`]): `ident` names a row as the
    /// manifest does, `listed` is what the manifest lists of the rows read.
    fn honoured<T: DeserializeOwned + Serialize, K: Ord>(
        &self,
        table: &str,
        rows: Vec<tokio_postgres::Row>,
        ident: impl Fn(&tokio_postgres::Row) -> K,
        belongs: impl Fn(&tokio_postgres::Row, &T) -> bool,
        listed: Listed<K>,
    ) -> Result<Vec<T>, PgError> {
        let mut out = Vec::with_capacity(rows.len());
        let mut listed = match listed {
            Listed::Unchecked => None,
            Listed::Rules(rules) => Some(rules),
            Listed::Nothing { why, sequence } => {
                // Fail closed: no rule of the registry is honoured.
                if !rows.is_empty() {
                    self.unsealed.fetch_add(rows.len() as u64, Relaxed);
                    crate::manifest::report_refused(table, rows.len(), sequence, why);
                }
                return Ok(Vec::new());
            }
        };
        for r in rows {
            let Some(sealer) = &self.sealer else {
                out.push(decode(r.get(1))?);
                continue;
            };
            let sealed = crate::seals::Sealed::read(&r, 2);
            let expected = listed.as_mut().and_then(|l| l.remove(&ident(&r)));
            // A value no broker could have written is a row no broker
            // sealed: left out as the others are.
            let value: T = match decode(r.get(1)) {
                Ok(value) => value,
                Err(_) => {
                    self.unsealed.fetch_add(1, Relaxed);
                    crate::seals::report(table, sealed.sequence, "its value cannot be read");
                    continue;
                }
            };
            let why = if !belongs(&r, &value) {
                Some("its key columns do not say what its value says")
            } else {
                sealed.refusal(sealer, table, encode(&value)?.as_bytes())
            };
            let why = why.or(match (&listed, expected) {
                (None, _) => None,
                (Some(_), Some(s)) if Some(s) == sealed.sequence => None,
                (Some(_), Some(_)) => Some(
                    "the registry's manifest lists another entry for it (an older sealed row put back?)",
                ),
                (Some(_), None) => Some("the registry's manifest does not list it"),
            });
            match why {
                None => out.push(value),
                Some(why) => {
                    self.unsealed.fetch_add(1, Relaxed);
                    crate::seals::report(table, sealed.sequence, why);
                }
            }
        }
        // Listed and not read: deleted by SQL.
        for sequence in listed.into_iter().flat_map(|l| l.into_values()) {
            self.unsealed.fetch_add(1, Relaxed);
            crate::seals::report(
                table,
                Some(sequence),
                "a rule the registry's manifest lists is missing (deleted by SQL?)",
            );
        }
        Ok(out)
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

    /// Every stored version of one authorisation, oldest first (each
    /// honoured as [`PgRegistry::sealed`] says).
    pub async fn authorisation_history(
        &self,
        reference: &str,
    ) -> Result<Vec<Authorisation>, PgError> {
        let sql = format!(
            "SELECT r.reference, r.value::text, {}, r.version FROM registry_authorisation_history r \
               LEFT JOIN audit_entries e ON e.sequence = r.audit_sequence \
              WHERE r.reference = $1 ORDER BY r.version",
            crate::seals::COLUMNS
        );
        let (rows, listed) = self
            .read_listed(&sql, &[&reference], |m| m.versions_of(reference))
            .await?;
        self.honoured(
            HISTORY_TABLE,
            rows,
            |r| r.get::<_, i32>(6),
            |r, a: &Authorisation| {
                r.get::<_, &str>(0) == a.reference.as_str()
                    && r.get::<_, i32>(6) == a.version as i32
            },
            listed,
        )
    }

    /// Records a revocation; revoking again keeps the first record, which
    /// is returned.
    pub async fn revoke_certificate(
        &self,
        revoked: &RevokedCertificate,
    ) -> Result<RevokedCertificate, PgError> {
        let key = revoked.id.key();
        let value = encode(revoked)?;
        let mut conn = self.conn.lock().await;
        let tx = conn.client().await?.transaction().await?;
        let inserted = tx
            .execute(
                "INSERT INTO registry_records (kind, key, value) \
                 VALUES ('revoked_certificate', $1, $2::text::jsonb) ON CONFLICT DO NOTHING",
                &[&key, &value],
            )
            .await?;
        if inserted == 0 {
            let existing = tx
                .query_one(
                    "SELECT value::text FROM registry_records \
                     WHERE kind = 'revoked_certificate' AND key = $1",
                    &[&key],
                )
                .await?;
            return decode(existing.get(0));
        }
        bump(&tx).await?;
        tx.commit().await?;
        Ok(revoked.clone())
    }

    /// Every certificate revoked, failing closed. With a sealer, a
    /// revocation row is honoured as stored when it is sealed and listed
    /// as a rule is (see [`PgRegistry::sealed`]); every other row is
    /// reported at ERROR and counted, but the certificate it names stays
    /// revoked (a row a broker did not write can only refuse a
    /// certificate). And every revocation the registry's manifest lists
    /// whose row is missing, or not honoured, is revoked still, with a
    /// record that says so (its reason and time are in the audit entry the
    /// manifest names): a database administrator who deletes a revocation
    /// does not re-admit its certificate. In key order.
    pub async fn revoked_certificates(&self) -> Result<Vec<RevokedCertificate>, PgError> {
        let sql = format!(
            "SELECT r.key, r.value::text, {} FROM registry_records r \
               LEFT JOIN audit_entries e ON e.sequence = r.audit_sequence \
              WHERE r.kind = $1 ORDER BY r.key COLLATE \"C\"",
            crate::seals::COLUMNS
        );
        let (rows, listed) = self
            .read_listed(&sql, &[&REVOCATION], |m| m.records_of(REVOCATION, None))
            .await?;
        let table = sealed_table(REVOCATION);
        let (sealer, mut listed) = match (&self.sealer, listed) {
            (Some(sealer), Listed::Rules(rules)) => (sealer, Some(rules)),
            (Some(sealer), Listed::Nothing { why, sequence }) => {
                // No revocation is honoured as stored; each still revokes.
                if !rows.is_empty() {
                    self.unsealed.fetch_add(rows.len() as u64, Relaxed);
                    crate::manifest::report_refused(&table, rows.len(), sequence, why);
                }
                (sealer, None)
            }
            (None, _) | (_, Listed::Unchecked) => {
                return rows.iter().map(|r| decode(r.get(1))).collect();
            }
        };
        let mut out = std::collections::BTreeMap::<String, RevokedCertificate>::new();
        for r in &rows {
            let key: String = r.get(0);
            let sealed = crate::seals::Sealed::read(r, 2);
            let expected = listed.as_mut().and_then(|l| l.remove(&key));
            let value = decode::<RevokedCertificate>(r.get(1)).ok();
            let why = match &value {
                None => Some("its value cannot be read"),
                Some(v) if v.id.key() != key => {
                    Some("its key columns do not say what its value says")
                }
                Some(v) => sealed.refusal(sealer, &table, encode(v)?.as_bytes()),
            };
            let why = why.or(match (&listed, expected) {
                (None, _) => Some("the registry's manifest is not honoured"),
                (Some(_), Some(s)) if Some(s) == sealed.sequence => None,
                (Some(_), Some(_)) => Some(
                    "the registry's manifest lists another entry for it (an older sealed row put back?)",
                ),
                (Some(_), None) => Some("the registry's manifest does not list it"),
            });
            let Some(why) = why else {
                if let Some(v) = value {
                    out.insert(key, v);
                }
                continue;
            };
            if listed.is_some() {
                self.unsealed.fetch_add(1, Relaxed);
                report_revocation(&table, sealed.sequence, why);
            }
            // Fail closed: the certificate the manifest lists under this
            // key, and the one the row names, stay revoked.
            if let Some(s) = expected
                && let Some(listed) = still_revoked(&key, s, "its row is not honoured")
            {
                out.insert(key.clone(), listed);
            }
            match value {
                Some(v) => {
                    out.entry(v.id.key()).or_insert(v);
                }
                None => {
                    if let Some(id) = CertificateId::from_key(&key) {
                        out.entry(key).or_insert(RevokedCertificate {
                            id,
                            reason: "its row in the registry cannot be read".into(),
                            revoked_at: time::OffsetDateTime::UNIX_EPOCH,
                        });
                    }
                }
            }
        }
        // Listed and not read: deleted by SQL. Still revoked.
        for (key, sequence) in listed.into_iter().flatten() {
            self.unsealed.fetch_add(1, Relaxed);
            report_revocation(
                &table,
                Some(sequence),
                "a revocation the registry's manifest lists is missing (deleted by SQL?)",
            );
            if let Some(listed) = still_revoked(&key, sequence, "its row is missing") {
                out.insert(key, listed);
            }
        }
        Ok(out.into_values().collect())
    }

    /// One organisation, by KBO number (honoured as
    /// [`PgRegistry::sealed`] says).
    pub async fn organisation(&self, kbo: &Kbo) -> Result<Option<Organisation>, PgError> {
        Ok(self.sealed(Some(kbo.as_str())).await?.pop())
    }

    /// Takes back a change whose audit entry failed, in one transaction
    /// that moves the version (so every broker reloads).
    pub async fn undo(&self, undo: &RegistryUndo) -> Result<u64, PgError> {
        self.undo_all(std::slice::from_ref(undo)).await
    }

    /// Takes back committed writes, last first, in one transaction.
    pub async fn undo_all(&self, undos: &[RegistryUndo]) -> Result<u64, PgError> {
        let mut conn = self.conn.lock().await;
        let tx = conn.client().await?.transaction().await?;
        for undo in undos.iter().rev() {
            undo_in(&tx, undo).await?;
        }
        let version = bump(&tx).await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Writes a change all or nothing (see [`semel_storage::RegistryStore::commit`]):
    /// one transaction, each record locked and compared with what the
    /// change read, the rules on pending applications held by the
    /// database's unique indexes (migration 0011). Other brokers see the
    /// whole change or none of it, and reload on its NOTIFY.
    pub async fn commit(&self, writes: &[RegistryWrite]) -> Result<u64, PgError> {
        self.commit_with(writes, None).await
    }

    /// [`PgRegistry::commit`], turning the marker of apply `apply.0`
    /// committed (closing words `apply.1`) in the same transaction, and
    /// sealing each write with its entry in `apply.2`.
    async fn commit_with(
        &self,
        writes: &[RegistryWrite],
        apply: Option<(&str, &str, &[Appended])>,
    ) -> Result<u64, PgError> {
        let mut conn = self.conn.lock().await;
        let tx = conn.client().await?.transaction().await?;
        if let Some((id, closing, _)) = apply {
            let marked = tx
                .execute(
                    "UPDATE registry_applies \
                        SET committed = true, \
                            value = value || jsonb_build_object('committed', true, 'closing', $2::text) \
                      WHERE id = $1 AND NOT committed",
                    &[&id, &closing],
                )
                .await?;
            if marked == 0 {
                return Err(PgError::Conflict(format!(
                    "registry {id} was settled as not applied by another broker, which found this one stopped"
                )));
            }
        }
        write_all(&tx, writes).await?;
        if let Some((_, _, entries)) = apply {
            seal_writes(&tx, self.sealer.as_ref(), writes, entries).await?;
        }
        let version = bump(&tx).await?;
        // The manifest, under the version's lock, sealed with the
        // change's newest entry.
        if let (Some(sealer), Some((_, _, entries))) = (&self.sealer, apply)
            && let Some(at) = entries.iter().max_by_key(|e| e.sequence)
        {
            let set = listing(writes, entries)?;
            crate::manifest::rewrite(&tx, sealer, &self.manifest, &set, *at, version).await?;
        }
        tx.commit().await.map_err(unique_violation)?;
        Ok(version)
    }

    /// Writes a change in a transaction of its own, left open: in force
    /// only once [`OpenChange::seal`] commits it with its entry.
    async fn stage_open(&self, writes: &[RegistryWrite]) -> Result<PgOpenChange, PgError> {
        let conn = Conn::open(&self.url).await?;
        conn.client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = '{STAGED_LOCK_TIMEOUT}'; \
                 SET LOCAL idle_in_transaction_session_timeout = '{STAGED_IDLE_TIMEOUT}'"
            ))
            .await?;
        write_all(&conn.client, writes).await?;
        Ok(PgOpenChange {
            conn,
            writes: writes.to_vec(),
            adopted: Vec::new(),
            listed: None,
            sealer: self.sealer.clone(),
            manifest: self.manifest.clone(),
        })
    }

    /// Rules written before seals were kept (schema version 14), adopted
    /// once: if adoption is still due, a change left open that holds every
    /// unsealed rule, with the words of the entry that records it (counts,
    /// and a SHA-256 digest of the rows adopted). `None` when none is due.
    /// Committed with that entry, the rows are sealed with it and the
    /// adoption is no longer due.
    pub async fn adoption(&self) -> Result<Option<(Box<dyn OpenChange>, String)>, PgError> {
        use sha2::Digest;
        let conn = Conn::open(&self.url).await?;
        conn.client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = '{STAGED_LOCK_TIMEOUT}'; \
                 SET LOCAL idle_in_transaction_session_timeout = '{STAGED_IDLE_TIMEOUT}'"
            ))
            .await?;
        let due: Option<(bool, bool)> = conn
            .client
            .query_opt(
                "DELETE FROM registry_adoption WHERE id = 0 RETURNING manifest_only, revocations",
                &[],
            )
            .await?
            .map(|r| (r.get(0), r.get(1)));
        let Some((manifest_only, revocations)) = due else {
            return Ok(None);
        };
        // Only listing the sealed rules in the manifest (an upgrade from
        // schema version 15): rules without a seal are not adopted.
        // Revocations without one are adopted when the adoption says so
        // (an upgrade from schema version 16 or before: they were never
        // sealed).
        let mut kinds: Vec<&str> = Vec::new();
        if !manifest_only {
            kinds.extend(SEALED_KINDS);
        }
        if revocations {
            kinds.push(REVOCATION);
        }
        let rows = if kinds.is_empty() {
            Vec::new()
        } else {
            conn.client
                .query(
                    "SELECT kind, key, value::text FROM registry_records \
                      WHERE kind = ANY($1) AND seal IS NULL \
                      ORDER BY kind, key COLLATE \"C\" FOR UPDATE",
                    &[&kinds],
                )
                .await?
        };
        let versions = if manifest_only {
            Vec::new()
        } else {
            conn.client
                .query(
                    "SELECT reference, version, value::text FROM registry_authorisation_history \
                      WHERE seal IS NULL ORDER BY reference COLLATE \"C\", version FOR UPDATE",
                    &[],
                )
                .await?
        };
        // Every other change waits for this one from here (each takes the
        // version's row last, as here): the manifest listed below is the
        // one the adoption seals.
        conn.client
            .execute(
                "SELECT version FROM registry_version WHERE id = 0 FOR UPDATE",
                &[],
            )
            .await?;
        let (listed, manifest_said) = match &self.sealer {
            None => (None, String::new()),
            Some(sealer) => {
                let anew = async || -> Result<AdoptionListing, PgError> {
                    Ok(AdoptionListing {
                        base: Default::default(),
                        adopted: as_they_stand(&conn.client, sealer).await?,
                    })
                };
                let (listing, said) = match self.manifest.load(&conn.client, sealer, false).await? {
                    crate::manifest::Read::Verified { manifest, .. } => (
                        AdoptionListing {
                            base: (*manifest).clone(),
                            adopted: Default::default(),
                        },
                        "kept as it stood, the rules adopted added".to_owned(),
                    ),
                    crate::manifest::Read::Absent => (
                        anew().await?,
                        "written anew from the sealed rules as they stand (those whose seal verifies)"
                            .to_owned(),
                    ),
                    crate::manifest::Read::Refused { why, .. } => (
                        anew().await?,
                        format!(
                            "not honoured ({why}), written anew from the sealed rules as they stand (those whose seal verifies)"
                        ),
                    ),
                };
                let mut listed = listing.base.clone();
                listed.merge(&listing.adopted, 0);
                let records = |kind: &str| listed.records.get(kind).map_or(0, |k| k.len());
                let said = format!(
                    "; the registry's manifest {said}: {} certificate revocations, {} organisations, {} datasets, {} purposes, {} authorisations, {} authorisation versions listed before those adopted ({} rules)",
                    records(REVOCATION),
                    records("organisation"),
                    records("dataset"),
                    records("purpose"),
                    records("authorisation"),
                    listed.versions.values().map(|v| v.len()).sum::<usize>(),
                    listed.len(),
                );
                (Some(listing), said)
            }
        };
        let mut digest = sha2::Sha256::new();
        let mut adopted = Vec::with_capacity(rows.len() + versions.len());
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for r in &rows {
            let (kind, key, text): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            let canonical = canonical(&kind, &text)?;
            digest.update(format!("{kind}\t{key}\t{canonical}\n"));
            *counts.entry(kind.clone()).or_default() += 1;
            adopted.push(Adopted::Record {
                kind,
                key,
                canonical,
            });
        }
        for r in &versions {
            let (reference, version, text): (String, i32, String) = (r.get(0), r.get(1), r.get(2));
            let canonical = encode(&decode::<Authorisation>(&text)?)?;
            digest.update(format!("version\t{reference}\t{version}\t{canonical}\n"));
            adopted.push(Adopted::Version {
                reference,
                version,
                canonical,
            });
        }
        let count = |k: &str| counts.get(k).copied().unwrap_or(0);
        let detail = format!(
            "registry rules written before seals were kept, adopted as they stand: {} certificate revocations, {} organisations, {} datasets, {} purposes, {} authorisations, {} authorisation versions; sha256 of the rows adopted: {}{manifest_said}",
            count(REVOCATION),
            count("organisation"),
            count("dataset"),
            count("purpose"),
            count("authorisation"),
            versions.len(),
            hex(&digest.finalize())
        );
        Ok(Some((
            Box::new(PgOpenChange {
                conn,
                writes: Vec::new(),
                adopted,
                listed,
                sealer: self.sealer.clone(),
                manifest: self.manifest.clone(),
            }),
            detail,
        )))
    }
}

/// The revocation the registry's manifest lists under `key`, sealed by
/// audit entry `sequence`, whose row is not honoured (`state`): the
/// certificate stays revoked, its reason and time are those of that entry.
fn still_revoked(key: &str, sequence: i64, state: &str) -> Option<RevokedCertificate> {
    let Some(id) = CertificateId::from_key(key) else {
        // Sealed by a broker, so one it wrote: not this one.
        report_revocation(
            &sealed_table(REVOCATION),
            Some(sequence),
            "the registry's manifest lists a key that names no certificate",
        );
        return None;
    };
    Some(RevokedCertificate {
        id,
        reason: format!(
            "listed in the registry's manifest; {state}: see audit entry {sequence} for its reason and time"
        ),
        revoked_at: time::OffsetDateTime::UNIX_EPOCH,
    })
}

/// Says, at ERROR, that a revocation row was not honoured as stored, and
/// that the certificate it names stays revoked (never its value).
fn report_revocation(table: &str, sequence: Option<i64>, why: &str) {
    tracing::error!(
        table,
        audit_sequence = ?sequence,
        "a certificate revocation was not honoured as stored: {why}; the certificate stays revoked (fail closed): the database holds a revocation no broker made as it stands, or lacks one a broker made (docs/storage-postgresql.md, \"The registry's manifest\")"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A record's canonical encoding (as a broker writes and seals it).
fn canonical(kind: &str, text: &str) -> Result<String, PgError> {
    match kind {
        "organisation" => encode(&decode::<Organisation>(text)?),
        "dataset" => encode(&decode::<Dataset>(text)?),
        "purpose" => encode(&decode::<Purpose>(text)?),
        "authorisation" => encode(&decode::<Authorisation>(text)?),
        REVOCATION => encode(&decode::<RevokedCertificate>(text)?),
        other => Err(PgError::Corrupt(format!("no sealed kind {other}"))),
    }
}

/// What an adoption's manifest starts from: the manifest that verified
/// (`base`, kept as it stood), or none and the sealed rules as they stand
/// (`adopted`, listed at the adoption's generation).
struct AdoptionListing {
    base: crate::manifest::Manifest,
    adopted: crate::manifest::Manifest,
}

/// A rule adopted as it stood (see [`PgRegistry::adoption`]).
enum Adopted {
    Record {
        kind: String,
        key: String,
        canonical: String,
    },
    Version {
        reference: String,
        version: i32,
        canonical: String,
    },
}

/// A registry change written in a transaction still open, on a connection
/// of its own (dropped: the connection closes and the change rolls back).
struct PgOpenChange {
    conn: Conn,
    writes: Vec<RegistryWrite>,
    adopted: Vec<Adopted>,
    /// An adoption's manifest, as listed before the rules it adopts
    /// (`None`: a change, which rewrites the manifest as it stands).
    listed: Option<AdoptionListing>,
    sealer: Option<RowSealer>,
    manifest: std::sync::Arc<crate::manifest::Memory>,
}

#[async_trait::async_trait]
impl OpenChange for PgOpenChange {
    async fn seal(self: Box<Self>, entry: Appended) -> Result<(), StorageError> {
        let client = &self.conn.client;
        let entries = vec![entry; self.writes.len()];
        seal_writes(client, self.sealer.as_ref(), &self.writes, &entries).await?;
        let mut set = listing(&self.writes, &entries)?;
        if let Some(sealer) = &self.sealer {
            let at = crate::seals::entry(entry);
            let sequence = sequence_of(entry)?;
            for a in &self.adopted {
                match a {
                    Adopted::Record {
                        kind,
                        key,
                        canonical,
                    } => {
                        let seal = sealer.seal(&sealed_table(kind), canonical.as_bytes(), &at);
                        set_record_seal(client, kind, key, sequence, &entry, &seal).await?;
                        set.set_record(kind, key, sequence);
                    }
                    Adopted::Version {
                        reference,
                        version,
                        canonical,
                    } => {
                        let seal = sealer.seal(HISTORY_TABLE, canonical.as_bytes(), &at);
                        set_version_seal(client, reference, *version, sequence, &entry, &seal)
                            .await?;
                        set.set_version(reference, *version, sequence);
                    }
                }
            }
        }
        let version = bump(client).await?;
        // The manifest, under the version's lock (taken by `bump`, or by
        // the adoption already), sealed with the change's entry.
        if let Some(sealer) = &self.sealer {
            match &self.listed {
                Some(listed) => {
                    let generation = crate::manifest::generation_of(version)?;
                    let mut m = listed.base.clone();
                    m.merge(&listed.adopted, generation);
                    m.merge(&set, generation);
                    crate::manifest::write(client, sealer, &m, entry).await?;
                }
                None => {
                    crate::manifest::rewrite(client, sealer, &self.manifest, &set, entry, version)
                        .await?
                }
            }
        }
        client
            .batch_execute("COMMIT")
            .await
            .map_err(unique_violation)?;
        Ok(())
    }
}

fn sequence_of(entry: Appended) -> Result<i64, PgError> {
    i64::try_from(entry.sequence)
        .map_err(|_| PgError::Corrupt("an audit sequence beyond i64".into()))
}

async fn set_record_seal(
    c: &(impl GenericClient + Sync),
    kind: &str,
    key: &str,
    sequence: i64,
    entry: &Appended,
    seal: &[u8; 32],
) -> Result<(), PgError> {
    c.execute(
        "UPDATE registry_records SET audit_sequence = $3, audit_hash = $4, seal = $5 \
          WHERE kind = $1 AND key = $2",
        &[
            &kind,
            &key,
            &sequence,
            &entry.hash.as_slice(),
            &seal.as_slice(),
        ],
    )
    .await?;
    Ok(())
}

async fn set_version_seal(
    c: &(impl GenericClient + Sync),
    reference: &str,
    version: i32,
    sequence: i64,
    entry: &Appended,
    seal: &[u8; 32],
) -> Result<(), PgError> {
    c.execute(
        "UPDATE registry_authorisation_history SET audit_sequence = $3, audit_hash = $4, seal = $5 \
          WHERE reference = $1 AND version = $2",
        &[
            &reference,
            &version,
            &sequence,
            &entry.hash.as_slice(),
            &seal.as_slice(),
        ],
    )
    .await?;
    Ok(())
}

/// Seals each write of a sealed kind with its entry (`entries[i]` for
/// `writes[i]`), where it was written in this transaction.
async fn seal_writes(
    c: &(impl GenericClient + Sync),
    sealer: Option<&RowSealer>,
    writes: &[RegistryWrite],
    entries: &[Appended],
) -> Result<(), PgError> {
    let Some(sealer) = sealer else {
        return Ok(());
    };
    if entries.len() != writes.len() {
        return Err(PgError::Corrupt(format!(
            "{} writes to seal with {} entries",
            writes.len(),
            entries.len()
        )));
    }
    for (w, at) in writes.iter().zip(entries) {
        let sequence = sequence_of(*at)?;
        let entry = crate::seals::entry(*at);
        let (kind, key, canonical) = match w {
            RegistryWrite::Organisation { after, .. } => sealed_parts(&**after)?,
            RegistryWrite::Dataset { after, .. } => sealed_parts(&**after)?,
            RegistryWrite::Purpose { after, .. } => sealed_parts(&**after)?,
            RegistryWrite::Authorisation { after, .. } => {
                let parts = sealed_parts(&**after)?;
                let seal = sealer.seal(HISTORY_TABLE, parts.2.as_bytes(), &entry);
                set_version_seal(
                    c,
                    after.reference.as_str(),
                    after.version as i32,
                    sequence,
                    at,
                    &seal,
                )
                .await?;
                parts
            }
            RegistryWrite::Revocation { after } => sealed_parts(&**after)?,
            // Applications are requests, decided by an operator into
            // rules: they decide no lookup and carry no seal.
            RegistryWrite::Application { .. } | RegistryWrite::Membership { .. } => continue,
        };
        let seal = sealer.seal(&sealed_table(kind), canonical.as_bytes(), &entry);
        set_record_seal(c, kind, &key, sequence, at, &seal).await?;
    }
    Ok(())
}

/// A kind of registry record: its `kind` column and its key.
trait Record: Serialize + DeserializeOwned + PartialEq + Sync {
    const KIND: &'static str;
    fn key(&self) -> Cow<'_, str>;
}

impl Record for Organisation {
    const KIND: &'static str = "organisation";
    fn key(&self) -> Cow<'_, str> {
        self.kbo.as_str().into()
    }
}

impl Record for Dataset {
    const KIND: &'static str = "dataset";
    fn key(&self) -> Cow<'_, str> {
        self.name.as_str().into()
    }
}

impl Record for Purpose {
    const KIND: &'static str = "purpose";
    fn key(&self) -> Cow<'_, str> {
        self.code.as_str().into()
    }
}

impl Record for Authorisation {
    const KIND: &'static str = "authorisation";
    fn key(&self) -> Cow<'_, str> {
        self.reference.as_str().into()
    }
}

impl Record for semel_core::AuthorisationApplication {
    const KIND: &'static str = "application";
    fn key(&self) -> Cow<'_, str> {
        self.id.as_str().into()
    }
}

impl Record for semel_core::MembershipApplication {
    const KIND: &'static str = "membership";
    fn key(&self) -> Cow<'_, str> {
        self.id.as_str().into()
    }
}

/// A revocation is keyed by its certificate's id ([`CertificateId::key`]).
impl Record for RevokedCertificate {
    const KIND: &'static str = REVOCATION;
    fn key(&self) -> Cow<'_, str> {
        self.id.key().into()
    }
}

/// A record's kind, key and canonical encoding, as its seal covers it.
fn sealed_parts<T: Record>(record: &T) -> Result<(&'static str, String, String), PgError> {
    Ok((T::KIND, record.key().into_owned(), encode(record)?))
}

/// [`swap`] for a record of a known kind.
async fn swap_record<T: Record>(
    tx: &(impl GenericClient + Sync),
    after: &T,
    before: Option<&T>,
    what: &str,
) -> Result<(), PgError> {
    swap(tx, T::KIND, &after.key(), after, before, what).await
}

/// Writes each record only over what the change read (see
/// [`semel_storage::RegistryStore::commit`]), within a transaction.
async fn write_all(
    tx: &(impl GenericClient + Sync),
    writes: &[RegistryWrite],
) -> Result<(), PgError> {
    for w in writes {
        let what = w.name();
        match w {
            RegistryWrite::Organisation { after, before } => {
                swap_record(tx, &**after, before.as_deref(), &what).await?
            }
            RegistryWrite::Dataset { after, before } => {
                swap_record(tx, &**after, before.as_deref(), &what).await?
            }
            RegistryWrite::Purpose { after, before } => {
                swap_record(tx, &**after, before.as_deref(), &what).await?
            }
            RegistryWrite::Application { after, before } => {
                swap_record(tx, &**after, before.as_deref(), &what).await?
            }
            RegistryWrite::Membership { after, before } => {
                swap_record(tx, &**after, before.as_deref(), &what).await?
            }
            // Only while the certificate is not revoked yet.
            RegistryWrite::Revocation { after } => swap_record(tx, &**after, None, &what).await?,
            RegistryWrite::Authorisation { after, before } => {
                let expected = before.as_ref().map_or(1, |b| b.version + 1);
                if after.version != expected {
                    return Err(PgError::Conflict(format!(
                        "authorisation {}: version {} does not follow the version read ({}); nothing was written",
                        after.reference,
                        after.version,
                        expected - 1
                    )));
                }
                swap_record(tx, &**after, before.as_deref(), &what).await?;
                let inserted = tx
                    .execute(
                        "INSERT INTO registry_authorisation_history (reference, version, value) \
                             VALUES ($1, $2, $3::text::jsonb) ON CONFLICT DO NOTHING",
                        &[
                            &after.reference.as_str(),
                            &(after.version as i32),
                            &encode(&**after)?,
                        ],
                    )
                    .await?;
                if inserted == 0 {
                    return Err(conflict(&w.name()));
                }
            }
        }
    }
    Ok(())
}

fn conflict(what: &str) -> PgError {
    match semel_storage::changed_since(what) {
        StorageError::Conflict(m) => PgError::Conflict(m),
        _ => unreachable!("changed_since is a conflict"),
    }
}

/// A write refused by one of the registry's unique indexes (a second
/// pending application) is a conflict, not an outage.
fn unique_violation(e: tokio_postgres::Error) -> PgError {
    let Some(db) = e.as_db_error() else {
        return PgError::Database(e);
    };
    if *db.code() != tokio_postgres::error::SqlState::UNIQUE_VIOLATION {
        return PgError::Database(e);
    }
    let message = match db.constraint() {
        Some("registry_one_pending_application") => {
            "an application for this reference by this applicant is already pending: one at a time per reference; nothing was written"
        }
        Some("registry_one_pending_membership") => {
            "an application for membership of this enterprise number is already pending; nothing was written"
        }
        _ => "the change contradicts a record stored meanwhile; nothing was written",
    };
    PgError::Conflict(message.to_owned())
}

/// Writes `after` under `kind`/`key` only while the stored record is
/// `before` (`None`: absent), locking it until the transaction ends.
async fn swap<T: Serialize + DeserializeOwned + PartialEq>(
    tx: &(impl GenericClient + Sync),
    kind: &str,
    key: &str,
    after: &T,
    before: Option<&T>,
    what: &str,
) -> Result<(), PgError> {
    let value = encode(after)?;
    match before {
        None => {
            let inserted = tx
                .execute(
                    "INSERT INTO registry_records (kind, key, value) VALUES ($1, $2, $3::text::jsonb) \
                     ON CONFLICT (kind, key) DO NOTHING",
                    &[&kind, &key, &value],
                )
                .await
                .map_err(unique_violation)?;
            if inserted == 0 {
                return Err(conflict(what));
            }
        }
        Some(before) => {
            let current: Option<T> = tx
                .query_opt(
                    "SELECT value::text FROM registry_records WHERE kind = $1 AND key = $2 FOR UPDATE",
                    &[&kind, &key],
                )
                .await?
                .map(|r| decode(r.get(0)))
                .transpose()?;
            if current.as_ref() != Some(before) {
                return Err(conflict(what));
            }
            tx.execute(
                "UPDATE registry_records SET value = $3::text::jsonb WHERE kind = $1 AND key = $2",
                &[&kind, &key, &value],
            )
            .await
            .map_err(unique_violation)?;
        }
    }
    Ok(())
}

/// Takes back one write within a transaction.
async fn undo_in(tx: &(impl GenericClient + Sync), undo: &RegistryUndo) -> Result<(), PgError> {
    let (kind, key, before) = match undo {
        RegistryUndo::Organisation(written, b) => {
            let key = written.kbo.as_str().to_owned();
            still(tx, "organisation", &key, &**written).await?;
            ("organisation", key, b.as_deref().map(encode).transpose()?)
        }
        RegistryUndo::Dataset(written, b) => {
            let key = written.name.as_str().to_owned();
            still(tx, "dataset", &key, &**written).await?;
            ("dataset", key, b.as_deref().map(encode).transpose()?)
        }
        RegistryUndo::Purpose(written, b) => {
            let key = written.code.as_str().to_owned();
            still(tx, "purpose", &key, &**written).await?;
            ("purpose", key, b.as_deref().map(encode).transpose()?)
        }
        RegistryUndo::Membership(written, b) => {
            let key = written.id.clone();
            still(tx, "membership", &key, &**written).await?;
            ("membership", key, b.as_deref().map(encode).transpose()?)
        }
        RegistryUndo::Application(written, b) => {
            let key = written.id.clone();
            still(tx, "application", &key, &**written).await?;
            ("application", key, b.as_deref().map(encode).transpose()?)
        }
        RegistryUndo::Revocation(id) => (REVOCATION, id.key(), None),
        RegistryUndo::Authorisation(after, b) => {
            // Only the version this change wrote is taken back: a later
            // one, written through another broker, stands on it.
            let current: Option<i32> = tx
                .query_opt(
                    "SELECT (value->>'version')::int FROM registry_records \
                     WHERE kind = 'authorisation' AND key = $1 FOR UPDATE",
                    &[&after.reference.as_str()],
                )
                .await?
                .map(|r| r.get(0));
            if current != Some(after.version as i32) {
                return Err(PgError::Conflict(format!(
                    "authorisation {} has moved past version {}: the change is not undone",
                    after.reference, after.version
                )));
            }
            tx.execute(
                "DELETE FROM registry_authorisation_history WHERE reference = $1 AND version = $2",
                &[&after.reference.as_str(), &(after.version as i32)],
            )
            .await?;
            (
                "authorisation",
                after.reference.as_str().to_owned(),
                b.as_deref().map(encode).transpose()?,
            )
        }
    };
    match before {
        Some(value) => {
            tx.execute(
                "INSERT INTO registry_records (kind, key, value) VALUES ($1, $2, $3::text::jsonb) \
                 ON CONFLICT (kind, key) DO UPDATE SET value = EXCLUDED.value",
                &[&kind, &key, &value],
            )
            .await
            .map_err(unique_violation)?;
        }
        None => {
            tx.execute(
                "DELETE FROM registry_records WHERE kind = $1 AND key = $2",
                &[&kind, &key],
            )
            .await?;
        }
    }
    Ok(())
}

/// Key order is byte order (`COLLATE "C"`), as the embedded store lists.
#[async_trait::async_trait]
impl semel_storage::RegistryStore for PgRegistry {
    async fn put_organisation(&self, org: &Organisation) -> Result<(), StorageError> {
        PgRegistry::put_organisation(self, org).await?;
        Ok(())
    }

    async fn organisations(&self) -> Result<Vec<Organisation>, StorageError> {
        Ok(PgRegistry::organisations(self).await?)
    }

    async fn put_dataset(&self, dataset: &Dataset) -> Result<(), StorageError> {
        PgRegistry::put_dataset(self, dataset).await?;
        Ok(())
    }

    async fn datasets(&self) -> Result<Vec<Dataset>, StorageError> {
        Ok(PgRegistry::datasets(self).await?)
    }

    async fn put_purpose(&self, purpose: &Purpose) -> Result<(), StorageError> {
        PgRegistry::put_purpose(self, purpose).await?;
        Ok(())
    }

    async fn put_application(
        &self,
        application: &semel_core::AuthorisationApplication,
    ) -> Result<(), StorageError> {
        PgRegistry::put_application(self, application).await?;
        Ok(())
    }

    async fn applications(
        &self,
    ) -> Result<Vec<semel_core::AuthorisationApplication>, StorageError> {
        Ok(PgRegistry::applications(self).await?)
    }

    async fn put_membership(
        &self,
        application: &semel_core::MembershipApplication,
    ) -> Result<(), StorageError> {
        PgRegistry::put_membership(self, application).await?;
        Ok(())
    }

    async fn memberships(&self) -> Result<Vec<semel_core::MembershipApplication>, StorageError> {
        Ok(PgRegistry::memberships(self).await?)
    }

    async fn purposes(&self) -> Result<Vec<Purpose>, StorageError> {
        Ok(PgRegistry::purposes(self).await?)
    }

    async fn put_authorisation(&self, auth: &Authorisation) -> Result<(), StorageError> {
        PgRegistry::put_authorisation(self, auth).await?;
        Ok(())
    }

    async fn authorisations(&self) -> Result<Vec<Authorisation>, StorageError> {
        Ok(PgRegistry::authorisations(self).await?)
    }

    async fn authorisation_history(
        &self,
        reference: &str,
    ) -> Result<Vec<Authorisation>, StorageError> {
        Ok(PgRegistry::authorisation_history(self, reference).await?)
    }

    async fn revoke_certificate(
        &self,
        revoked: &RevokedCertificate,
    ) -> Result<RevokedCertificate, StorageError> {
        Ok(PgRegistry::revoke_certificate(self, revoked).await?)
    }

    async fn organisation(&self, kbo: &Kbo) -> Result<Option<Organisation>, StorageError> {
        Ok(PgRegistry::organisation(self, kbo).await?)
    }

    async fn insert_organisation(&self, org: &Organisation) -> Result<(), StorageError> {
        self.insert("organisation", org.kbo.as_str(), org).await?;
        Ok(())
    }

    async fn insert_dataset(&self, dataset: &Dataset) -> Result<(), StorageError> {
        self.insert("dataset", dataset.name.as_str(), dataset)
            .await?;
        Ok(())
    }

    async fn insert_purpose(&self, purpose: &Purpose) -> Result<(), StorageError> {
        self.insert("purpose", purpose.code.as_str(), purpose)
            .await?;
        Ok(())
    }

    async fn undo(&self, undo: &RegistryUndo) -> Result<(), StorageError> {
        PgRegistry::undo(self, undo).await?;
        Ok(())
    }

    async fn undo_all(&self, undos: &[RegistryUndo]) -> Result<(), StorageError> {
        PgRegistry::undo_all(self, undos).await?;
        Ok(())
    }

    async fn commit(&self, writes: &[RegistryWrite]) -> Result<(), StorageError> {
        PgRegistry::commit(self, writes).await?;
        Ok(())
    }

    async fn stage(&self, writes: &[RegistryWrite]) -> Result<Staged, StorageError> {
        Ok(Staged::Open(Box::new(self.stage_open(writes).await?)))
    }

    fn unsealed(&self) -> u64 {
        self.unsealed.load(Relaxed)
    }

    async fn adoption(&self) -> Result<Option<(Box<dyn OpenChange>, String)>, StorageError> {
        Ok(PgRegistry::adoption(self).await?)
    }

    async fn open_apply(&self, marker: &semel_storage::ApplyMarker) -> Result<(), StorageError> {
        let marker = semel_storage::ApplyMarker {
            broker: self.broker.clone(),
            committed: false,
            ..marker.clone()
        };
        let value = encode(&marker)?;
        self.conn
            .lock()
            .await
            .client()
            .await?
            .execute(
                "INSERT INTO registry_applies (id, broker, value) VALUES ($1, $2, $3::text::jsonb)",
                &[&marker.id, &marker.broker, &value],
            )
            .await
            .map_err(PgError::from)?;
        Ok(())
    }

    async fn commit_apply(
        &self,
        writes: &[RegistryWrite],
        entries: &[Appended],
        apply: &str,
        closing: &str,
    ) -> Result<(), StorageError> {
        PgRegistry::commit_with(self, writes, Some((apply, closing, entries))).await?;
        Ok(())
    }

    async fn unsettled_applies(&self) -> Result<Vec<semel_storage::ApplyMarker>, StorageError> {
        let live_within = crate::cluster::ClusterSettings::default()
            .live_within
            .as_secs_f64();
        let rows = self
            .conn
            .lock()
            .await
            .client()
            .await?
            .query(
                "SELECT value::text, committed FROM registry_applies a \
                  WHERE a.broker = $1 \
                     OR NOT EXISTS (SELECT 1 FROM brokers b WHERE b.id = a.broker \
                                       AND b.seen_at >= now() - make_interval(secs => $2)) \
                  ORDER BY opened_at, id",
                &[&self.broker, &live_within],
            )
            .await
            .map_err(PgError::from)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut marker: semel_storage::ApplyMarker = decode(row.get(0))?;
            marker.committed = row.get(1);
            out.push(marker);
        }
        Ok(out)
    }

    async fn close_apply(&self, apply: &str, committed: bool) -> Result<bool, StorageError> {
        let removed = self
            .conn
            .lock()
            .await
            .client()
            .await?
            .execute(
                "DELETE FROM registry_applies WHERE id = $1 AND committed = $2",
                &[&apply, &committed],
            )
            .await
            .map_err(PgError::from)?;
        Ok(removed > 0)
    }

    async fn revoked_certificates(&self) -> Result<Vec<RevokedCertificate>, StorageError> {
        Ok(PgRegistry::revoked_certificates(self).await?)
    }
}

/// A broker's view of the registry's version, kept current by a task of
/// its own: LISTEN on a dedicated connection, a poll every `poll` as the
/// fallback for lost notifications, and a new connection when that one is
/// lost (reading the version at once, so nothing missed meanwhile is lost).
#[derive(Debug)]
pub struct RegistryWatch {
    receiver: watch::Receiver<u64>,
    confirmations: watch::Receiver<Confirmation>,
    task: tokio::task::JoinHandle<()>,
}

/// One successful read of the registry's version: every change committed
/// before `read_at` has a version no greater than `version`. A broker whose
/// snapshot was read at or after that version is known current as of
/// `read_at` (the freshness bound counts from there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmation {
    pub version: u64,
    /// When the read began (a read that began earlier proves less).
    pub read_at: std::time::Instant,
}

impl Drop for RegistryWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RegistryWatch {
    /// Starts watching; the first version is read before this returns.
    pub async fn start(url: &str, poll: Duration) -> Result<RegistryWatch, PgError> {
        let first = listen(url).await?;
        let read_at = std::time::Instant::now();
        let version = read_version(&first.0).await?;
        let (sender, receiver) = watch::channel(version);
        let (confirmed, confirmations) = watch::channel(Confirmation { version, read_at });
        let url = url.to_owned();
        let task = tokio::spawn(async move {
            let mut current = Some(first);
            loop {
                let (client, notified) = match current.take() {
                    Some(c) => c,
                    None => match listen(&url).await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "registry watch: PostgreSQL unreachable, retrying");
                            tokio::time::sleep(poll).await;
                            continue;
                        }
                    },
                };
                if let Err(e) = follow(&client, notified, poll, &sender, &confirmed).await {
                    tracing::warn!(error = %e, "registry watch: connection lost, reconnecting");
                }
                if sender.is_closed() {
                    return;
                }
            }
        });
        Ok(RegistryWatch {
            receiver,
            confirmations,
            task,
        })
    }

    /// A receiver woken by every successful read of the version (at each
    /// notification and each poll), whether or not the version moved: what
    /// proves a snapshot still current.
    pub fn confirmations(&self) -> watch::Receiver<Confirmation> {
        self.confirmations.clone()
    }

    /// The version last seen.
    pub fn version(&self) -> u64 {
        *self.receiver.borrow()
    }

    /// A receiver that wakes when the version moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.receiver.clone()
    }
}

async fn read_version(client: &tokio_postgres::Client) -> Result<u64, PgError> {
    let v: i64 = client
        .query_one("SELECT version FROM registry_version WHERE id = 0", &[])
        .await?
        .get(0);
    u64::try_from(v).map_err(|_| PgError::Corrupt("a negative registry version".into()))
}

/// A connection listening on the registry channel, and a receiver woken by
/// each notification (closed when the connection ends).
async fn listen(
    url: &str,
) -> Result<(tokio_postgres::Client, tokio::sync::mpsc::Receiver<()>), PgError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    // Named, so that an operator looking at pg_stat_activity knows it.
    config.application_name("semel registry watch");
    // A half-open connection (a primary gone without closing it) must not
    // hold the watch for the operating system's minutes.
    config.connect_timeout(WATCH_TIMEOUT);
    config.keepalives_idle(WATCH_TIMEOUT);
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    let (wake, notified) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                    // One pending wake is enough: the version is read anew.
                    let _ = wake.try_send(());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    Ok((client, notified))
}

/// Reads the version at each notification and each poll, until the
/// connection fails.
async fn follow(
    client: &tokio_postgres::Client,
    mut notified: tokio::sync::mpsc::Receiver<()>,
    poll: Duration,
    sender: &watch::Sender<u64>,
    confirmed: &watch::Sender<Confirmation>,
) -> Result<(), PgError> {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A read that does not come back within the bound counts as a lost
        // connection: the watch reconnects rather than waiting.
        let read_at = std::time::Instant::now();
        let version = tokio::time::timeout(WATCH_TIMEOUT, read_version(client))
            .await
            .map_err(|_| PgError::Corrupt("the registry version read timed out".into()))??;
        confirmed.send_replace(Confirmation { version, read_at });
        sender.send_if_modified(|v| {
            let moved = *v != version;
            *v = version;
            moved
        });
        if sender.is_closed() {
            return Ok(());
        }
        tokio::select! {
            woke = notified.recv() => if woke.is_none() {
                return Err(PgError::Corrupt("the listening connection ended".into()));
            },
            _ = tick.tick() => {}
        }
    }
}
