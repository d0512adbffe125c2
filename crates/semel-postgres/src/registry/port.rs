//! The storage port ([`semel_storage::RegistryStore`]) on [`PgRegistry`].

use super::*;

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
