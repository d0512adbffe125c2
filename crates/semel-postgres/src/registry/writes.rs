//! The rows a change writes: each record compared with what the change read, and undone.

use super::*;

/// A kind of registry record: its `kind` column and its key.
pub(super) trait Record: Serialize + DeserializeOwned + PartialEq + Sync {
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
pub(super) fn sealed_parts<T: Record>(
    record: &T,
) -> Result<(&'static str, String, String), PgError> {
    Ok((T::KIND, record.key().into_owned(), encode(record)?))
}

/// [`swap`] for a record of a known kind.
pub(super) async fn swap_record<T: Record>(
    tx: &(impl GenericClient + Sync),
    after: &T,
    before: Option<&T>,
    what: &str,
) -> Result<(), PgError> {
    swap(tx, T::KIND, &after.key(), after, before, what).await
}

/// Writes each record only over what the change read (see
/// [`semel_storage::RegistryStore::commit`]), within a transaction.
pub(super) async fn write_all(
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

pub(super) fn conflict(what: &str) -> PgError {
    match semel_storage::changed_since(what) {
        StorageError::Conflict(m) => PgError::Conflict(m),
        _ => unreachable!("changed_since is a conflict"),
    }
}

/// A write refused by one of the registry's unique indexes (a second
/// pending application) is a conflict, not an outage.
pub(super) fn unique_violation(e: tokio_postgres::Error) -> PgError {
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
pub(super) async fn swap<T: Serialize + DeserializeOwned + PartialEq>(
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
pub(super) async fn undo_in(
    tx: &(impl GenericClient + Sync),
    undo: &RegistryUndo,
) -> Result<(), PgError> {
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
