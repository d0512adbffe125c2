//! The embedded registry behind the storage port.

use semel_core::{Authorisation, Dataset, Kbo, Organisation, Purpose, RevokedCertificate};
use semel_storage::{RegistryUndo, RegistryWrite, StorageError};

use super::Registry;

/// The embedded registry behind the storage port: reads at once, writes
/// (which `fsync`) on tokio's blocking threads.
#[async_trait::async_trait]
impl semel_storage::RegistryStore for Registry {
    async fn put_organisation(&self, org: &Organisation) -> Result<(), StorageError> {
        let (r, org) = (self.clone(), org.clone());
        crate::blocking(move || r.put_organisation(&org)).await
    }

    async fn organisation(&self, kbo: &Kbo) -> Result<Option<Organisation>, StorageError> {
        Ok(Registry::organisation(self, kbo)?)
    }

    async fn insert_organisation(&self, org: &Organisation) -> Result<(), StorageError> {
        let (r, org) = (self.clone(), org.clone());
        crate::blocking(move || r.insert_organisation(&org)).await
    }

    async fn insert_dataset(&self, dataset: &Dataset) -> Result<(), StorageError> {
        let (r, dataset) = (self.clone(), dataset.clone());
        crate::blocking(move || r.insert_dataset(&dataset)).await
    }

    async fn insert_purpose(&self, purpose: &Purpose) -> Result<(), StorageError> {
        let (r, purpose) = (self.clone(), purpose.clone());
        crate::blocking(move || r.insert_purpose(&purpose)).await
    }

    async fn organisations(&self) -> Result<Vec<Organisation>, StorageError> {
        Ok(Registry::organisations(self)?)
    }

    async fn put_dataset(&self, dataset: &Dataset) -> Result<(), StorageError> {
        let (r, dataset) = (self.clone(), dataset.clone());
        crate::blocking(move || r.put_dataset(&dataset)).await
    }

    async fn datasets(&self) -> Result<Vec<Dataset>, StorageError> {
        Ok(Registry::datasets(self)?)
    }

    async fn put_application(
        &self,
        application: &semel_core::AuthorisationApplication,
    ) -> Result<(), StorageError> {
        let (r, a) = (self.clone(), application.clone());
        crate::blocking(move || r.put_application(&a)).await
    }

    async fn applications(
        &self,
    ) -> Result<Vec<semel_core::AuthorisationApplication>, StorageError> {
        Ok(Registry::applications(self)?)
    }

    async fn put_membership(
        &self,
        application: &semel_core::MembershipApplication,
    ) -> Result<(), StorageError> {
        let (r, a) = (self.clone(), application.clone());
        crate::blocking(move || r.put_membership(&a)).await
    }

    async fn memberships(&self) -> Result<Vec<semel_core::MembershipApplication>, StorageError> {
        Ok(Registry::memberships(self)?)
    }

    async fn put_purpose(&self, purpose: &Purpose) -> Result<(), StorageError> {
        let (r, purpose) = (self.clone(), purpose.clone());
        crate::blocking(move || r.put_purpose(&purpose)).await
    }

    async fn purposes(&self) -> Result<Vec<Purpose>, StorageError> {
        Ok(Registry::purposes(self)?)
    }

    async fn put_authorisation(&self, auth: &Authorisation) -> Result<(), StorageError> {
        let (r, auth) = (self.clone(), auth.clone());
        crate::blocking(move || r.put_authorisation(&auth)).await
    }

    async fn authorisations(&self) -> Result<Vec<Authorisation>, StorageError> {
        Ok(Registry::authorisations(self)?)
    }

    async fn authorisation_history(
        &self,
        reference: &str,
    ) -> Result<Vec<Authorisation>, StorageError> {
        Ok(Registry::authorisation_history(self, reference)?)
    }

    async fn revoke_certificate(
        &self,
        revoked: &RevokedCertificate,
    ) -> Result<RevokedCertificate, StorageError> {
        let (r, revoked) = (self.clone(), revoked.clone());
        crate::blocking(move || r.revoke_certificate(&revoked)).await
    }

    async fn revoked_certificates(&self) -> Result<Vec<RevokedCertificate>, StorageError> {
        Ok(Registry::revoked_certificates(self)?)
    }

    async fn undo(&self, undo: &RegistryUndo) -> Result<(), StorageError> {
        let (r, undo) = (self.clone(), undo.clone());
        crate::blocking(move || r.undo_all(std::slice::from_ref(&undo))).await
    }

    async fn undo_all(&self, undos: &[RegistryUndo]) -> Result<(), StorageError> {
        let (r, undos) = (self.clone(), undos.to_vec());
        crate::blocking(move || r.undo_all(&undos)).await
    }

    async fn commit(&self, writes: &[RegistryWrite]) -> Result<(), StorageError> {
        let (r, writes) = (self.clone(), writes.to_vec());
        crate::blocking(move || r.commit(&writes)).await
    }

    async fn open_apply(&self, marker: &semel_storage::ApplyMarker) -> Result<(), StorageError> {
        let (r, marker) = (self.clone(), marker.clone());
        crate::blocking(move || r.open_apply(&marker)).await
    }

    /// Nothing is sealed here: only this broker writes its files.
    async fn commit_apply(
        &self,
        writes: &[RegistryWrite],
        _entries: &[semel_storage::Appended],
        apply: &str,
        closing: &str,
    ) -> Result<(), StorageError> {
        let (r, writes, apply, closing) = (
            self.clone(),
            writes.to_vec(),
            apply.to_owned(),
            closing.to_owned(),
        );
        crate::blocking(move || r.commit_with(&writes, Some((&apply, &closing)))).await
    }

    async fn unsettled_applies(&self) -> Result<Vec<semel_storage::ApplyMarker>, StorageError> {
        let r = self.clone();
        crate::blocking(move || r.unsettled_applies()).await
    }

    async fn close_apply(&self, apply: &str, committed: bool) -> Result<bool, StorageError> {
        let (r, apply) = (self.clone(), apply.to_owned());
        crate::blocking(move || r.close_apply(&apply, committed)).await
    }
}
