//! Changes to the registry on PostgreSQL: committed at once, or staged in an open transaction and sealed
//! with their audit entry (the manifest rewritten with them), and undone.

use super::*;

/// The rules `writes` seal (`entries[i]` for `writes[i]`), as the manifest
/// lists them.
pub(super) fn listing(
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

pub(super) fn list<T: Record>(m: &mut crate::manifest::Manifest, record: &T, sequence: i64) {
    m.set_record(T::KIND, &record.key(), sequence);
}

/// How long a staged change's transaction may wait for a lock, and stay
/// open waiting for its entry, before PostgreSQL ends it (rolled back):
/// one broker stalled mid-change holds the others back no longer.
pub(super) const STAGED_LOCK_TIMEOUT: &str = "10s";
pub(super) const STAGED_IDLE_TIMEOUT: &str = "30s";

impl PgRegistry {
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
    pub(super) async fn commit_with(
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
    pub(super) async fn stage_open(
        &self,
        writes: &[RegistryWrite],
    ) -> Result<PgOpenChange, PgError> {
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
}

/// A registry change written in a transaction still open, on a connection
/// of its own (dropped: the connection closes and the change rolls back).
pub(super) struct PgOpenChange {
    pub(super) conn: Conn,
    pub(super) writes: Vec<RegistryWrite>,
    pub(super) adopted: Vec<Adopted>,
    /// An adoption's manifest, as listed before the rules it adopts
    /// (`None`: a change, which rewrites the manifest as it stands).
    pub(super) listed: Option<AdoptionListing>,
    pub(super) sealer: Option<RowSealer>,
    pub(super) manifest: std::sync::Arc<crate::manifest::Memory>,
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

pub(super) fn sequence_of(entry: Appended) -> Result<i64, PgError> {
    i64::try_from(entry.sequence)
        .map_err(|_| PgError::Corrupt("an audit sequence beyond i64".into()))
}

pub(super) async fn set_record_seal(
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

pub(super) async fn set_version_seal(
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
pub(super) async fn seal_writes(
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
