//! The registry: organisations, datasets and authorisations in sled trees.
//!
//! Values are JSON: the registry is small, read once into memory by the
//! server and written rarely, so readability on disk beats compactness.
//! Every write is made durable before it returns.
//!
//! Records are read and written here; changes all or nothing (commits,
//! undos, the rules on applications) are in `changes`, the storage port's
//! face in `port`.

mod changes;
mod port;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::PathBuf;

use semel_core::{Authorisation, Dataset, Kbo, Organisation, Purpose, RevokedCertificate};
use serde::Serialize;
use serde::de::DeserializeOwned;

use semel_storage::RegistryWrite;

use crate::{StoreError, io_err, sled_err};

/// The registry trees.
#[derive(Clone)]
pub struct Registry {
    db: sled::Db,
    db_path: PathBuf,
    organisations: sled::Tree,
    datasets: sled::Tree,
    authorisations: sled::Tree,
    /// Every version of every authorisation, keyed `reference \0 version`.
    authorisation_history: sled::Tree,
    /// Revoked client certificates, keyed by [`semel_core::CertificateId::key`].
    revoked_certificates: sled::Tree,
    /// The purposes catalogue, keyed by code.
    purposes: sled::Tree,
    /// Applications for authorisations, keyed by id.
    applications: sled::Tree,
    /// Applications for membership, keyed by id.
    memberships: sled::Tree,
    /// Registry applies under way ([`semel_storage::ApplyMarker`]), keyed
    /// by id: opened before an apply's change entries, turned committed in
    /// the apply's own sled transaction, removed after its closing entry.
    applies: sled::Tree,
    /// Serialises commits: each compares what it read and checks the rules
    /// on applications before its one sled transaction (one process opens
    /// the store: sled holds it exclusively).
    writer: std::sync::Arc<std::sync::Mutex<()>>,
}

impl Registry {
    pub(crate) fn open(db: sled::Db, db_path: PathBuf) -> Result<Self, StoreError> {
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(sled_err(format!("open tree {name}")))
        };
        Ok(Registry {
            organisations: tree("organisations")?,
            datasets: tree("datasets")?,
            authorisations: tree("authorisations")?,
            authorisation_history: tree("authorisation_history")?,
            revoked_certificates: tree("revoked_certificates")?,
            purposes: tree("purposes")?,
            applications: tree("authorisation_applications")?,
            memberships: tree("membership_applications")?,
            applies: tree("registry_applies")?,
            writer: Default::default(),
            db,
            db_path,
        })
    }

    /// Stores an organisation (insert or replace).
    pub fn put_organisation(&self, org: &Organisation) -> Result<(), StoreError> {
        put(&self.organisations, org.kbo.as_bytes(), org)?;
        self.sync()
    }

    /// Stores a new organisation; a conflict if its number is taken.
    pub fn insert_organisation(&self, org: &Organisation) -> Result<(), StoreError> {
        insert(
            &self.organisations,
            org.kbo.as_bytes(),
            org,
            &format!("organisation {}", org.kbo),
        )?;
        self.sync()
    }

    /// Stores a new dataset; a conflict if its name is taken.
    pub fn insert_dataset(&self, dataset: &Dataset) -> Result<(), StoreError> {
        insert(
            &self.datasets,
            dataset.name.as_str().as_bytes(),
            dataset,
            &format!("dataset {}", dataset.name),
        )?;
        self.sync()
    }

    /// Stores a new purpose; a conflict if its code is taken.
    pub fn insert_purpose(&self, purpose: &Purpose) -> Result<(), StoreError> {
        insert(
            &self.purposes,
            purpose.code.as_str().as_bytes(),
            purpose,
            &format!("purpose {}", purpose.code),
        )?;
        self.sync()
    }

    pub fn organisation(&self, kbo: &Kbo) -> Result<Option<Organisation>, StoreError> {
        get(&self.organisations, kbo.as_bytes())
    }

    pub fn organisations(&self) -> Result<Vec<Organisation>, StoreError> {
        all(&self.organisations)
    }

    /// Stores a dataset (insert or replace).
    pub fn put_dataset(&self, dataset: &Dataset) -> Result<(), StoreError> {
        put(&self.datasets, dataset.name.as_str().as_bytes(), dataset)?;
        self.sync()
    }

    /// Stores an application (insert or replace).
    pub fn put_application(
        &self,
        application: &semel_core::AuthorisationApplication,
    ) -> Result<(), StoreError> {
        // Through a commit, so that the rules on applications hold.
        let before: Option<semel_core::AuthorisationApplication> =
            get(&self.applications, application.id.as_bytes())?;
        self.commit(&[RegistryWrite::Application {
            after: Box::new(application.clone()),
            before: before.map(Box::new),
        }])
    }

    pub fn applications(&self) -> Result<Vec<semel_core::AuthorisationApplication>, StoreError> {
        all(&self.applications)
    }

    /// Stores an application for membership (insert or replace).
    pub fn put_membership(
        &self,
        application: &semel_core::MembershipApplication,
    ) -> Result<(), StoreError> {
        let before: Option<semel_core::MembershipApplication> =
            get(&self.memberships, application.id.as_bytes())?;
        self.commit(&[RegistryWrite::Membership {
            after: Box::new(application.clone()),
            before: before.map(Box::new),
        }])
    }

    pub fn memberships(&self) -> Result<Vec<semel_core::MembershipApplication>, StoreError> {
        all(&self.memberships)
    }

    /// Stores a purpose (insert or replace).
    pub fn put_purpose(&self, purpose: &Purpose) -> Result<(), StoreError> {
        put(&self.purposes, purpose.code.as_str().as_bytes(), purpose)?;
        self.sync()
    }

    pub fn purposes(&self) -> Result<Vec<Purpose>, StoreError> {
        all(&self.purposes)
    }

    pub fn datasets(&self) -> Result<Vec<Dataset>, StoreError> {
        all(&self.datasets)
    }

    /// Stores a new version of an authorisation. The version must follow the
    /// stored one, so two concurrent changes cannot silently overwrite each
    /// other.
    pub fn put_authorisation(&self, auth: &Authorisation) -> Result<(), StoreError> {
        let key = auth.reference.as_str().as_bytes();
        let current: Option<Authorisation> = get(&self.authorisations, key)?;
        let expected = current.as_ref().map_or(1, |c| c.version + 1);
        if auth.version != expected {
            return Err(StoreError::Conflict(format!(
                "authorisation {} is at version {}, cannot store version {}",
                auth.reference,
                expected - 1,
                auth.version
            )));
        }
        let mut hkey = key.to_vec();
        hkey.push(0);
        hkey.extend_from_slice(&auth.version.to_be_bytes());
        put(&self.authorisation_history, &hkey, auth)?;
        put(&self.authorisations, key, auth)?;
        self.sync()
    }

    pub fn authorisations(&self) -> Result<Vec<Authorisation>, StoreError> {
        all(&self.authorisations)
    }

    /// Every stored version of one authorisation, oldest first.
    pub fn authorisation_history(&self, reference: &str) -> Result<Vec<Authorisation>, StoreError> {
        let mut prefix = reference.as_bytes().to_vec();
        prefix.push(0);
        self.authorisation_history
            .scan_prefix(prefix)
            .map(|kv| {
                let (_, v) = kv.map_err(sled_err("read authorisation history"))?;
                decode(&v)
            })
            .collect()
    }

    /// Records a revocation; revoking again keeps the first record.
    /// Returns the stored record.
    pub fn revoke_certificate(
        &self,
        revoked: &RevokedCertificate,
    ) -> Result<RevokedCertificate, StoreError> {
        let key = revoked.id.key();
        if let Some(existing) = get(&self.revoked_certificates, key.as_bytes())? {
            return Ok(existing);
        }
        put(&self.revoked_certificates, key.as_bytes(), revoked)?;
        self.sync()?;
        Ok(revoked.clone())
    }

    pub fn revoked_certificates(&self) -> Result<Vec<RevokedCertificate>, StoreError> {
        all(&self.revoked_certificates)
    }

    /// The trees a commit writes, by the numbers `commit` uses.
    fn trees(&self) -> Vec<&sled::Tree> {
        vec![
            &self.organisations,
            &self.datasets,
            &self.purposes,
            &self.authorisations,
            &self.authorisation_history,
            &self.applications,
            &self.memberships,
            &self.revoked_certificates,
            &self.applies,
        ]
    }

    fn tree(&self, n: u8) -> &sled::Tree {
        self.trees()[n as usize]
    }

    /// Makes every registry write durable: sled's flush writes its log with
    /// `sync_file_range`, so the data file is then `fsync`ed as well.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(sled_err("flush sled"))?;
        let data = self.db_path.join("db");
        if data.exists() {
            File::open(&data)
                .and_then(|f| f.sync_all())
                .map_err(io_err(format!("fsync {}", data.display())))?;
        }
        Ok(())
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value)
        .map_err(|e| StoreError::Corrupt(format!("encode registry record: {e}")))
}

fn put<T: Serialize>(tree: &sled::Tree, key: &[u8], value: &T) -> Result<(), StoreError> {
    tree.insert(key, encode(value)?)
        .map_err(sled_err("write registry"))?;
    Ok(())
}

/// Inserts a record whose key must be free.
fn insert<T: Serialize>(
    tree: &sled::Tree,
    key: &[u8],
    value: &T,
    what: &str,
) -> Result<(), StoreError> {
    match tree
        .compare_and_swap(key, None as Option<&[u8]>, Some(encode(value)?))
        .map_err(sled_err("write registry"))?
    {
        Ok(()) => Ok(()),
        Err(_) => Err(StoreError::Conflict(format!("{what} already exists"))),
    }
}

fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
    tree.get(key)
        .map_err(sled_err("read registry"))?
        .map(|v| decode(&v))
        .transpose()
}

fn all<T: DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>, StoreError> {
    tree.iter()
        .map(|kv| {
            let (_, v) = kv.map_err(sled_err("read registry"))?;
            decode(&v)
        })
        .collect()
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("decode registry record: {e}")))
}
