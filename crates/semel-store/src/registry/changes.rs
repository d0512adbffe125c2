//! Changes all or nothing: a commit compared with what it read (and an
//! apply's marker committed with it), undos, and the rules on applications
//! checked over the registry as the change leaves it.

use semel_core::Authorisation;
use semel_storage::{RegistryUndo, RegistryWrite, StorageError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::{Registry, decode, encode, get, insert, put};
use crate::{StoreError, sled_err};

impl Registry {
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
