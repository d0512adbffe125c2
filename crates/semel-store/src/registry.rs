//! The registry: organisations, datasets and authorisations in sled trees.
//!
//! Values are JSON: the registry is small, read once into memory by the
//! server and written rarely, so readability on disk beats compactness.
//! Every write is made durable before it returns.

use std::fs::File;
use std::path::PathBuf;

use semel_core::{Authorisation, Dataset, Kbo, Organisation, Purpose, RevokedCertificate};
use serde::Serialize;
use serde::de::DeserializeOwned;

use semel_storage::{RegistryUndo, RegistryWrite, StorageError};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

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

    /// Takes back a registry write whose audit entry could not be made
    /// durable: the record is put back as it was (or removed, if it did not
    /// exist). Nothing else may have changed it meanwhile: registry changes
    /// are serialised by the broker and the entry is appended under the same
    /// lock.
    pub fn undo(&self, undo: &RegistryUndo) -> Result<(), StoreError> {
        match undo {
            RegistryUndo::Organisation(written, before) => restore(
                &self.organisations,
                written.kbo.as_bytes(),
                &**written,
                before.as_deref(),
                &format!("organisation {}", written.kbo),
            )?,
            RegistryUndo::Dataset(written, before) => restore(
                &self.datasets,
                written.name.as_str().as_bytes(),
                &**written,
                before.as_deref(),
                &format!("dataset {}", written.name),
            )?,
            RegistryUndo::Purpose(written, before) => restore(
                &self.purposes,
                written.code.as_str().as_bytes(),
                &**written,
                before.as_deref(),
                &format!("purpose {}", written.code),
            )?,
            RegistryUndo::Membership(written, before) => restore(
                &self.memberships,
                written.id.as_bytes(),
                &**written,
                before.as_deref(),
                &format!("membership application {}", written.id),
            )?,
            RegistryUndo::Application(written, before) => restore(
                &self.applications,
                written.id.as_bytes(),
                &**written,
                before.as_deref(),
                &format!("application {}", written.id),
            )?,
            RegistryUndo::Revocation(id) => {
                self.revoked_certificates
                    .remove(id.key().as_bytes())
                    .map_err(sled_err("undo a revocation"))?;
            }
            RegistryUndo::Authorisation(after, before) => {
                let key = after.reference.as_str().as_bytes();
                // Only the version this change wrote is taken back: a later
                // one stands on it (its history would break without it).
                let current: Option<Authorisation> = get(&self.authorisations, key)?;
                if current.as_ref().map(|c| c.version) != Some(after.version) {
                    return Err(StoreError::Conflict(format!(
                        "authorisation {} has moved past version {}: the change is not undone",
                        after.reference, after.version
                    )));
                }
                let mut hkey = key.to_vec();
                hkey.push(0);
                hkey.extend_from_slice(&after.version.to_be_bytes());
                self.authorisation_history
                    .remove(hkey)
                    .map_err(sled_err("undo an authorisation version"))?;
                put_back(&self.authorisations, key, before.as_deref())?;
            }
        }
        self.sync()
    }

    /// Writes a change all or nothing: compared with what the change read
    /// and checked against the rules on applications under the writer's
    /// lock, then one sled transaction (atomic on a crash too), then made
    /// durable.
    pub fn commit(&self, writes: &[RegistryWrite]) -> Result<(), StoreError> {
        self.commit_with(writes, None)
    }

    /// Records a registry apply under way (not committed).
    pub fn open_apply(&self, marker: &semel_storage::ApplyMarker) -> Result<(), StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let marker = semel_storage::ApplyMarker {
            committed: false,
            ..marker.clone()
        };
        insert(&self.applies, marker.id.as_bytes(), &marker, &marker.id)?;
        self.sync()
    }

    /// Every apply marker: one process opens the store, so every marker
    /// found under the caller's apply lock was left by an apply that ended
    /// (or by a process that stopped).
    pub fn unsettled_applies(&self) -> Result<Vec<semel_storage::ApplyMarker>, StoreError> {
        self.applies
            .iter()
            .values()
            .map(|v| decode(&v.map_err(sled_err("read registry applies"))?))
            .collect()
    }

    /// Removes an apply's marker if it is still `committed` as given.
    pub fn close_apply(&self, apply: &str, committed: bool) -> Result<bool, StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(v) = self
            .applies
            .get(apply.as_bytes())
            .map_err(sled_err("read registry applies"))?
        else {
            return Ok(false);
        };
        let marker: semel_storage::ApplyMarker = decode(&v)?;
        if marker.committed != committed {
            return Ok(false);
        }
        self.applies
            .remove(apply.as_bytes())
            .map_err(sled_err("remove a registry apply"))?;
        self.sync()?;
        Ok(true)
    }

    /// [`Registry::commit`], turning the marker of apply `apply.0`
    /// committed (closing words `apply.1`) in the same sled transaction.
    pub fn commit_with(
        &self,
        writes: &[RegistryWrite],
        apply: Option<(&str, &str)>,
    ) -> Result<(), StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // What each write replaces must be what is stored; the same record
        // twice in one change compares with the earlier write.
        let mut staged: std::collections::HashMap<(u8, Vec<u8>), Vec<u8>> = Default::default();
        let mut ops: Vec<(u8, Vec<u8>, Vec<u8>)> = Vec::new();
        for w in writes {
            let (tree, key, after, before) = match w {
                RegistryWrite::Organisation { after, before } => (
                    0,
                    after.kbo.as_bytes().to_vec(),
                    encode(&**after)?,
                    before.as_deref().map(encode).transpose()?,
                ),
                RegistryWrite::Dataset { after, before } => (
                    1,
                    after.name.as_str().as_bytes().to_vec(),
                    encode(&**after)?,
                    before.as_deref().map(encode).transpose()?,
                ),
                RegistryWrite::Purpose { after, before } => (
                    2,
                    after.code.as_str().as_bytes().to_vec(),
                    encode(&**after)?,
                    before.as_deref().map(encode).transpose()?,
                ),
                RegistryWrite::Authorisation { after, before } => {
                    let expected = before.as_ref().map_or(1, |b| b.version + 1);
                    if after.version != expected {
                        return Err(StoreError::Conflict(format!(
                            "authorisation {}: version {} does not follow the version read ({}); nothing was written",
                            after.reference,
                            after.version,
                            expected - 1
                        )));
                    }
                    let mut hkey = after.reference.as_str().as_bytes().to_vec();
                    hkey.push(0);
                    hkey.extend_from_slice(&after.version.to_be_bytes());
                    if self
                        .authorisation_history
                        .contains_key(&hkey)
                        .map_err(sled_err("read registry"))?
                    {
                        return Err(conflict(&w.name()));
                    }
                    ops.push((4, hkey, encode(&**after)?));
                    (
                        3,
                        after.reference.as_str().as_bytes().to_vec(),
                        encode(&**after)?,
                        before.as_deref().map(encode).transpose()?,
                    )
                }
                RegistryWrite::Application { after, before } => (
                    5,
                    after.id.as_bytes().to_vec(),
                    encode(&**after)?,
                    before.as_deref().map(encode).transpose()?,
                ),
                RegistryWrite::Membership { after, before } => (
                    6,
                    after.id.as_bytes().to_vec(),
                    encode(&**after)?,
                    before.as_deref().map(encode).transpose()?,
                ),
                // Only while the certificate is not revoked yet.
                RegistryWrite::Revocation { after } => {
                    (7, after.id.key().into_bytes(), encode(&**after)?, None)
                }
            };
            let current = match staged.get(&(tree, key.clone())) {
                Some(v) => Some(v.clone()),
                None => self
                    .tree(tree)
                    .get(&key)
                    .map_err(sled_err("read registry"))?
                    .map(|v| v.to_vec()),
            };
            // Compared as records, not bytes: a record read back may be
            // encoded anew.
            if !same_record(w, current.as_deref(), before.as_deref())? {
                return Err(conflict(&w.name()));
            }
            staged.insert((tree, key.clone()), after.clone());
            ops.push((tree, key, after));
        }
        // The rules on applications, over the registry as it will be.
        let staged: Staged = staged.into_iter().map(|(k, v)| (k, Some(v))).collect();
        self.check_rules(&staged)?;
        if let Some((id, closing)) = apply {
            let open: Option<semel_storage::ApplyMarker> = self
                .applies
                .get(id.as_bytes())
                .map_err(sled_err("read registry applies"))?
                .map(|v| decode(&v))
                .transpose()?;
            let Some(marker) = open.filter(|m| !m.committed) else {
                return Err(StoreError::Conflict(format!(
                    "registry {id} was settled as not applied (its broker was found stopped)"
                )));
            };
            let committed = semel_storage::ApplyMarker {
                committed: true,
                closing: closing.to_owned(),
                ..marker
            };
            ops.push((8, id.as_bytes().to_vec(), encode(&committed)?));
        }
        let trees = self.trees();
        let result: Result<(), TransactionError<()>> =
            trees.as_slice().transaction(|t: &Vec<TransactionalTree>| {
                for (tree, key, value) in &ops {
                    t[*tree as usize].insert(key.as_slice(), value.as_slice())?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        result.map_err(|e| match e {
            TransactionError::Storage(e) => sled_err("commit a registry change")(e),
            TransactionError::Abort(()) => {
                StoreError::Conflict("the registry change was aborted".into())
            }
        })?;
        self.sync()
    }

    /// Takes back committed writes, last first, in one sled transaction,
    /// each only while its record is still as written.
    pub fn undo_all(&self, undos: &[RegistryUndo]) -> Result<(), StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // Checked first (against what the later undos leave), then written
        // together.
        let mut ops: Vec<(u8, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut staged: std::collections::HashMap<(u8, Vec<u8>), Option<Vec<u8>>> =
            Default::default();
        let current = |staged: &std::collections::HashMap<(u8, Vec<u8>), Option<Vec<u8>>>,
                       tree: u8,
                       key: &[u8]|
         -> Result<Option<Vec<u8>>, StoreError> {
            match staged.get(&(tree, key.to_vec())) {
                Some(v) => Ok(v.clone()),
                None => Ok(self
                    .tree(tree)
                    .get(key)
                    .map_err(sled_err("read registry"))?
                    .map(|v| v.to_vec())),
            }
        };
        for undo in undos.iter().rev() {
            let (tree, key, written, before, what): UndoStep = match undo {
                RegistryUndo::Organisation(w, b) => (
                    0,
                    w.kbo.as_bytes().to_vec(),
                    Some(encode(&**w)?),
                    b.as_deref().map(encode).transpose()?,
                    format!("organisation {}", w.kbo),
                ),
                RegistryUndo::Dataset(w, b) => (
                    1,
                    w.name.as_str().as_bytes().to_vec(),
                    Some(encode(&**w)?),
                    b.as_deref().map(encode).transpose()?,
                    format!("dataset {}", w.name),
                ),
                RegistryUndo::Purpose(w, b) => (
                    2,
                    w.code.as_str().as_bytes().to_vec(),
                    Some(encode(&**w)?),
                    b.as_deref().map(encode).transpose()?,
                    format!("purpose {}", w.code),
                ),
                RegistryUndo::Application(w, b) => (
                    5,
                    w.id.as_bytes().to_vec(),
                    Some(encode(&**w)?),
                    b.as_deref().map(encode).transpose()?,
                    format!("application {}", w.id),
                ),
                RegistryUndo::Membership(w, b) => (
                    6,
                    w.id.as_bytes().to_vec(),
                    Some(encode(&**w)?),
                    b.as_deref().map(encode).transpose()?,
                    format!("membership application {}", w.id),
                ),
                RegistryUndo::Revocation(id) => {
                    (7, id.key().into_bytes(), None, None, String::new())
                }
                RegistryUndo::Authorisation(after, b) => {
                    let key = after.reference.as_str().as_bytes().to_vec();
                    let now: Option<Authorisation> =
                        current(&staged, 3, &key)?.map(|v| decode(&v)).transpose()?;
                    if now.map(|c| c.version) != Some(after.version) {
                        return Err(StoreError::Conflict(format!(
                            "authorisation {} has moved past version {}: the change is not undone",
                            after.reference, after.version
                        )));
                    }
                    let mut hkey = key.clone();
                    hkey.push(0);
                    hkey.extend_from_slice(&after.version.to_be_bytes());
                    ops.push((4, hkey, None));
                    (
                        3,
                        key,
                        None,
                        b.as_deref().map(encode).transpose()?,
                        String::new(),
                    )
                }
            };
            if let Some(written) = &written {
                let now = current(&staged, tree, &key)?;
                let same = match now {
                    Some(now) => {
                        serde_json::from_slice::<serde_json::Value>(&now).ok()
                            == serde_json::from_slice::<serde_json::Value>(written).ok()
                    }
                    None => false,
                };
                if !same {
                    return Err(StoreError::Conflict(format!(
                        "{what} has changed since: the change is not undone"
                    )));
                }
            }
            staged.insert((tree, key.clone()), before.clone());
            ops.push((tree, key, before));
        }
        // Taking a decision back must not leave two applications pending.
        self.check_rules(&staged)?;
        let trees = self.trees();
        let result: Result<(), TransactionError<()>> =
            trees.as_slice().transaction(|t: &Vec<TransactionalTree>| {
                for (tree, key, value) in &ops {
                    match value {
                        Some(v) => {
                            t[*tree as usize].insert(key.as_slice(), v.as_slice())?;
                        }
                        None => {
                            t[*tree as usize].remove(key.as_slice())?;
                        }
                    }
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        result.map_err(|e| match e {
            TransactionError::Storage(e) => sled_err("undo a registry change")(e),
            TransactionError::Abort(()) => {
                StoreError::Conflict("the registry undo was aborted".into())
            }
        })?;
        self.sync()
    }

    /// The rules on applications over the registry as `staged` (records to
    /// be written, `None`: removed) leaves it: one pending application per
    /// reference and applicant, one pending application for membership per
    /// enterprise number.
    fn check_rules(&self, staged: &Staged) -> Result<(), StoreError> {
        if let Some(a) = second_pending(staged, 5, self.applications()?, |a| {
            (a.applicant, a.proposed.reference.as_str().to_owned())
        })? {
            return Err(StoreError::Conflict(pending_message(
                semel_storage::second_pending_application(
                    a.proposed.reference.as_str(),
                    &a.applicant,
                ),
            )));
        }
        if let Some(a) = second_pending(staged, 6, self.memberships()?, |a| a.kbo)? {
            return Err(StoreError::Conflict(pending_message(
                semel_storage::second_pending_membership(&a.kbo),
            )));
        }
        Ok(())
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

fn conflict(what: &str) -> StoreError {
    StoreError::Conflict(pending_message(semel_storage::changed_since(what)))
}

fn pending_message(e: StorageError) -> String {
    match e {
        StorageError::Conflict(m) => m,
        e => e.to_string(),
    }
}

/// Whether the stored bytes hold the record `before` names (both absent,
/// or the same record).
fn same_record(
    w: &RegistryWrite,
    current: Option<&[u8]>,
    before: Option<&[u8]>,
) -> Result<bool, StoreError> {
    let _ = w;
    Ok(match (current, before) {
        (None, None) => true,
        (Some(c), Some(b)) => {
            let c: serde_json::Value = decode(c)?;
            let b: serde_json::Value = decode(b)?;
            c == b
        }
        _ => false,
    })
}

/// One record an undo puts back: its tree, key, the record as written
/// (compared), as it was (`None`: removed) and its name for messages.
type UndoStep = (u8, Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>, String);

/// Records a change will write, by tree number and key (`None`: removed).
type Staged = std::collections::HashMap<(u8, Vec<u8>), Option<Vec<u8>>>;

/// Puts a record back as it was, if it is still the one `written`.
fn restore<T: Serialize + serde::de::DeserializeOwned + PartialEq>(
    tree: &sled::Tree,
    key: &[u8],
    written: &T,
    before: Option<&T>,
    what: &str,
) -> Result<(), StoreError> {
    let current: Option<T> = get(tree, key)?;
    if current.as_ref() != Some(written) {
        return Err(StoreError::Conflict(format!(
            "{what} has changed since: the change is not undone"
        )));
    }
    put_back(tree, key, before)
}

/// Puts a record back as it was (removes it if it did not exist).
fn put_back<T: Serialize>(
    tree: &sled::Tree,
    key: &[u8],
    before: Option<&T>,
) -> Result<(), StoreError> {
    match before {
        Some(v) => put(tree, key, v),
        None => tree
            .remove(key)
            .map(|_| ())
            .map_err(sled_err("undo a registry write")),
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

/// An application of tree `tree` the registry as `staged` leaves it would
/// hold pending beside another with the same `rule` key (the second one
/// found), when `staged` writes that tree: `stored` is the tree as it is.
fn second_pending<A, K>(
    staged: &Staged,
    tree: u8,
    stored: Vec<A>,
    rule: impl Fn(&A) -> K,
) -> Result<Option<A>, StoreError>
where
    A: Pending + DeserializeOwned,
    K: Eq + std::hash::Hash,
{
    if !staged.keys().any(|(t, _)| *t == tree) {
        return Ok(None);
    }
    let mut all: std::collections::BTreeMap<Vec<u8>, Option<A>> = stored
        .into_iter()
        .map(|a| (a.id().as_bytes().to_vec(), Some(a)))
        .collect();
    for ((t, key), v) in staged {
        if *t == tree {
            all.insert(key.clone(), v.as_deref().map(decode).transpose()?);
        }
    }
    let mut seen = std::collections::HashSet::new();
    Ok(all
        .into_values()
        .flatten()
        .filter(|a| a.pending())
        .find(|a| !seen.insert(rule(a))))
}

/// What [`second_pending`] needs of an application.
trait Pending {
    fn id(&self) -> &str;
    fn pending(&self) -> bool;
}

impl Pending for semel_core::AuthorisationApplication {
    fn id(&self) -> &str {
        &self.id
    }
    fn pending(&self) -> bool {
        self.state == semel_core::ApplicationState::Pending
    }
}

impl Pending for semel_core::MembershipApplication {
    fn id(&self) -> &str {
        &self.id
    }
    fn pending(&self) -> bool {
        self.state == semel_core::ApplicationState::Pending
    }
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("decode registry record: {e}")))
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn authorisations_keep_every_version_and_refuse_a_stale_write() {
        use semel_core::{
            Authorisation, AuthorisationRef, AuthorisationStatus, DatasetName, FieldName, Kbo,
            PurposeCode,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::Store::open(dir.path()).expect("open");
        let reg = store.registry();
        let mut a = Authorisation {
            reference: AuthorisationRef::new("BSC/2024/017").expect("ref"),
            consumer: Kbo::parse("0212345668").expect("kbo"),
            dataset: DatasetName::new("national_register.residence").expect("dataset"),
            fields: [FieldName::new("street").expect("field")]
                .into_iter()
                .collect(),
            purpose: PurposeCode::new("RIS_ELIGIBILITY").expect("purpose"),
            legal_basis: "test".into(),
            issuing_body: "test".into(),
            valid_from: time::Date::MIN,
            valid_until: None,
            status: AuthorisationStatus::Active,
            version: 1,
            updated_at: time::OffsetDateTime::UNIX_EPOCH,
            confidential_until: None,
            check_fields: Default::default(),
            checks: Vec::new(),
            capacities: Default::default(),
            consent_required: false,
            receives_mutations: false,
        };
        reg.put_authorisation(&a).expect("version 1");
        a.status = AuthorisationStatus::Suspended;
        a.version = 2;
        reg.put_authorisation(&a).expect("version 2");
        assert!(
            matches!(
                reg.put_authorisation(&a),
                Err(crate::StoreError::Conflict(_))
            ),
            "version 2 again is stale"
        );
        let history = reg.authorisation_history("BSC/2024/017").expect("history");
        assert_eq!(
            history
                .iter()
                .map(|v| (v.version, v.status))
                .collect::<Vec<_>>(),
            vec![
                (1, AuthorisationStatus::Active),
                (2, AuthorisationStatus::Suspended)
            ]
        );
    }

    #[test]
    fn sled_keeps_its_data_in_a_file_named_db() {
        // Registry::sync fsyncs `<db>/db` by name: this test fails if a sled
        // upgrade moves its data elsewhere.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::Store::open(dir.path()).expect("open");
        store.registry().sync().expect("sync");
        assert!(dir.path().join("db/db").is_file());
    }
}
