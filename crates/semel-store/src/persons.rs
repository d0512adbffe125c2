//! The persons directory, the consent register and replaced national
//! numbers, in sled trees next to the registry.
//!
//! Keys are fixed-width binary so one prefix scan answers what the lookup
//! path asks:
//!
//! ```text
//! files          consumer KBO (10) | citizen (11) | file id     → PersonFile (JSON)
//! consents       citizen (11) | consent id                     → Consent (JSON)
//! replacements   old number (11)                               → NumberReplacement (JSON)
//! replaced_by    new number (11) | old number (11)             → (empty)
//! ```
//!
//! Every write is made durable (sled flush and fsync) before it returns.

use semel_core::persons::{
    MAX_REPLACEMENT_CHAIN as MAX_CHAIN, MAX_REPLACEMENT_WALK as MAX_WALK, Resolved,
};
use semel_core::{Consent, Kbo, Niss, NumberReplacement, PersonFile};

use crate::registry::{decode, encode};
use crate::{Registry, StoreError, sled_err};

/// The persons directory and consents.
#[derive(Clone)]
pub struct Persons {
    registry: Registry,
    files: sled::Tree,
    consents: sled::Tree,
    replacements: sled::Tree,
    replaced_by: sled::Tree,
}

fn file_key(consumer: &Kbo, citizen: &Niss, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(21 + id.len());
    k.extend_from_slice(consumer.as_bytes());
    k.extend_from_slice(citizen.as_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

fn consent_key(citizen: &Niss, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(11 + id.len());
    k.extend_from_slice(citizen.as_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

impl Persons {
    pub(crate) fn open(db: &sled::Db, registry: Registry) -> Result<Self, StoreError> {
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(sled_err(format!("open tree {name}")))
        };
        Ok(Persons {
            files: tree("person_files")?,
            consents: tree("consents")?,
            replacements: tree("number_replacements")?,
            replaced_by: tree("number_replaced_by")?,
            registry,
        })
    }

    /// Stores a file (insert or replace), durably.
    pub fn put_file(&self, file: &PersonFile) -> Result<(), StoreError> {
        self.put_files(std::slice::from_ref(file))
    }

    /// Stores many files with one sync (the demo's seed, bulk imports).
    pub fn put_files(&self, files: &[PersonFile]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for f in files {
            batch.insert(file_key(&f.consumer, &f.citizen, &f.id), encode(f)?);
        }
        self.files
            .apply_batch(batch)
            .map_err(sled_err("write person files"))?;
        self.registry.sync()
    }

    /// Removes a file (undoing a registration whose audit entry failed).
    pub fn delete_file(&self, file: &PersonFile) -> Result<(), StoreError> {
        self.files
            .remove(file_key(&file.consumer, &file.citizen, &file.id))
            .map_err(sled_err("remove person file"))?;
        self.registry.sync()
    }

    /// Removes a consent (undoing a registration whose audit entry failed).
    pub fn delete_consent(&self, consent: &Consent) -> Result<(), StoreError> {
        self.consents
            .remove(consent_key(&consent.citizen, &consent.id))
            .map_err(sled_err("remove consent"))?;
        self.registry.sync()
    }

    /// One file of a consumer on a citizen.
    pub fn file(
        &self,
        consumer: &Kbo,
        citizen: &Niss,
        id: &str,
    ) -> Result<Option<PersonFile>, StoreError> {
        self.files
            .get(file_key(consumer, citizen, id))
            .map_err(sled_err("read person file"))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Every file of a consumer on a citizen, under any of the citizen's
    /// numbers.
    pub fn files_of(
        &self,
        consumer: &Kbo,
        citizen: &Resolved,
    ) -> Result<Vec<PersonFile>, StoreError> {
        let mut out = Vec::new();
        for n in citizen.numbers() {
            for kv in self.files.scan_prefix(file_key(consumer, n, "")) {
                let (_, v) = kv.map_err(sled_err("read person files"))?;
                out.push(decode(&v)?);
            }
        }
        Ok(out)
    }

    /// Stores a consent (insert or replace), durably.
    pub fn put_consent(&self, consent: &Consent) -> Result<(), StoreError> {
        self.consents
            .insert(consent_key(&consent.citizen, &consent.id), encode(consent)?)
            .map_err(sled_err("write consent"))?;
        self.registry.sync()
    }

    /// Every consent of a citizen, under any of their numbers.
    pub fn consents_of(&self, citizen: &Resolved) -> Result<Vec<Consent>, StoreError> {
        let mut out = Vec::new();
        for n in citizen.numbers() {
            for kv in self.consents.scan_prefix(n.as_bytes()) {
                let (_, v) = kv.map_err(sled_err("read consents"))?;
                out.push(decode(&v)?);
            }
        }
        Ok(out)
    }

    /// Records that `old` was replaced by `new`. Refused if `old` is
    /// already replaced (by another number) or if it would make a loop.
    pub fn replace(&self, r: &NumberReplacement) -> Result<NumberReplacement, StoreError> {
        if r.old == r.new {
            return Err(StoreError::Conflict(
                "a number cannot replace itself".into(),
            ));
        }
        if let Some(existing) = self.replacement(&r.old)? {
            if existing.new == r.new {
                return Ok(existing);
            }
            return Err(StoreError::Conflict(
                "this number was already replaced by another one".into(),
            ));
        }
        if self.leads_to(&r.new, &r.old)? {
            return Err(StoreError::Conflict(
                "the new number already leads to the old one; this replacement would make a loop"
                    .into(),
            ));
        }
        let mut link = r.new.as_bytes().to_vec();
        link.extend_from_slice(r.old.as_bytes());
        self.replaced_by
            .insert(link, &[])
            .map_err(sled_err("write replacement"))?;
        self.replacements
            .insert(r.old.as_bytes(), encode(r)?)
            .map_err(sled_err("write replacement"))?;
        self.registry.sync()?;
        Ok(r.clone())
    }

    /// Takes back a replacement (a wrong one would merge two people): the
    /// old number stands on its own again. Returns what was removed.
    pub fn unreplace(&self, old: &Niss) -> Result<Option<NumberReplacement>, StoreError> {
        let Some(r) = self.replacement(old)? else {
            return Ok(None);
        };
        let mut link = r.new.as_bytes().to_vec();
        link.extend_from_slice(r.old.as_bytes());
        self.replaced_by
            .remove(link)
            .map_err(sled_err("remove replacement"))?;
        self.replacements
            .remove(r.old.as_bytes())
            .map_err(sled_err("remove replacement"))?;
        self.registry.sync()?;
        Ok(Some(r))
    }

    /// Whether following replacements from `from` reaches `target`, however
    /// long the chain (the loop check: resolving stops after a few steps).
    /// The graph has no loop (this check keeps it so), so the walk ends.
    fn leads_to(&self, from: &Niss, target: &Niss) -> Result<bool, StoreError> {
        let mut current = *from;
        for _ in 0..MAX_WALK {
            if current == *target {
                return Ok(true);
            }
            match self.replacement(&current)? {
                Some(r) => current = r.new,
                None => return Ok(false),
            }
        }
        Err(StoreError::Corrupt(
            "a chain of number replacements does not end".into(),
        ))
    }

    fn replacement(&self, old: &Niss) -> Result<Option<NumberReplacement>, StoreError> {
        self.replacements
            .get(old.as_bytes())
            .map_err(sled_err("read replacement"))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Follows replacements from `given` to the number in force, and finds
    /// the numbers that one replaced.
    pub fn resolve(&self, given: &Niss) -> Result<Resolved, StoreError> {
        let mut current = *given;
        for _ in 0..MAX_CHAIN {
            match self.replacement(&current)? {
                Some(r) => current = r.new,
                None => break,
            }
        }
        let mut former = Vec::new();
        let mut queue = vec![current];
        while let Some(n) = queue.pop() {
            for kv in self.replaced_by.scan_prefix(n.as_bytes()) {
                let (k, _) = kv.map_err(sled_err("read replacements"))?;
                let old = std::str::from_utf8(&k[11..])
                    .ok()
                    .and_then(|s| Niss::parse(s).ok())
                    .ok_or_else(|| StoreError::Corrupt("replacement key".into()))?;
                if old != current && !former.contains(&old) && former.len() < MAX_CHAIN * 4 {
                    former.push(old);
                    queue.push(old);
                }
            }
        }
        Ok(Resolved {
            current,
            given: (current != *given).then_some(*given),
            former,
        })
    }
}

/// The embedded store behind the storage port. Reads are answered at once
/// (sled reads are fast, mostly from its cache, and the lookup path must
/// not hop threads for them); writes, which `fsync`, run on tokio's
/// blocking threads.
#[async_trait::async_trait]
impl semel_storage::PersonsStore for Persons {
    async fn put_files(&self, files: &[PersonFile]) -> Result<(), semel_storage::StorageError> {
        let (p, files) = (self.clone(), files.to_vec());
        crate::blocking(move || p.put_files(&files)).await
    }

    async fn delete_file(&self, file: &PersonFile) -> Result<(), semel_storage::StorageError> {
        let (p, file) = (self.clone(), file.clone());
        crate::blocking(move || p.delete_file(&file)).await
    }

    async fn file(
        &self,
        consumer: &Kbo,
        citizen: &Niss,
        id: &str,
    ) -> Result<Option<PersonFile>, semel_storage::StorageError> {
        Ok(Persons::file(self, consumer, citizen, id)?)
    }

    async fn files_of(
        &self,
        consumer: &Kbo,
        citizen: &Resolved,
    ) -> Result<Vec<PersonFile>, semel_storage::StorageError> {
        Ok(Persons::files_of(self, consumer, citizen)?)
    }

    async fn put_consent(&self, consent: &Consent) -> Result<(), semel_storage::StorageError> {
        let (p, consent) = (self.clone(), consent.clone());
        crate::blocking(move || p.put_consent(&consent)).await
    }

    async fn delete_consent(&self, consent: &Consent) -> Result<(), semel_storage::StorageError> {
        let (p, consent) = (self.clone(), consent.clone());
        crate::blocking(move || p.delete_consent(&consent)).await
    }

    async fn consents_of(
        &self,
        citizen: &Resolved,
    ) -> Result<Vec<Consent>, semel_storage::StorageError> {
        Ok(Persons::consents_of(self, citizen)?)
    }

    async fn replace(
        &self,
        r: &NumberReplacement,
    ) -> Result<NumberReplacement, semel_storage::StorageError> {
        let (p, r) = (self.clone(), r.clone());
        crate::blocking(move || p.replace(&r)).await
    }

    async fn unreplace(
        &self,
        old: &Niss,
    ) -> Result<Option<NumberReplacement>, semel_storage::StorageError> {
        let (p, old) = (self.clone(), *old);
        crate::blocking(move || p.unreplace(&old)).await
    }

    async fn resolve(&self, given: &Niss) -> Result<Resolved, semel_storage::StorageError> {
        Ok(Persons::resolve(self, given)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use semel_core::{CapacityCode, FilePhase};
    use time::macros::{date, datetime};

    fn niss(s: &str) -> Niss {
        Niss::parse(s).expect("niss")
    }

    #[test]
    fn replacements_resolve_both_ways_and_refuse_loops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::Store::open(dir.path()).expect("open");
        let p = store.persons();
        let (bis, nr, other) = (
            niss("98472899765"),
            niss("93051822361"),
            niss("85073003328"),
        );
        let r = |old, new| NumberReplacement {
            old,
            new,
            replaced_on: date!(2026 - 01 - 01),
            registered_by: Kbo::parse("0314595348").expect("kbo"),
            registered_at: datetime!(2026-01-01 0:00 UTC),
        };
        p.replace(&r(bis, nr)).expect("replace");
        p.replace(&r(bis, nr))
            .expect("the same replacement again is accepted");
        assert!(p.replace(&r(bis, other)).is_err(), "already replaced");
        assert!(p.replace(&r(nr, bis)).is_err(), "a loop");
        let resolved = p.resolve(&bis).expect("resolve");
        assert_eq!(resolved.current, nr);
        assert_eq!(resolved.given, Some(bis));
        assert_eq!(resolved.former, vec![bis]);
        let direct = p.resolve(&nr).expect("resolve");
        assert_eq!((direct.current, direct.given), (nr, None));
        assert_eq!(direct.former, vec![bis]);

        // A file registered under the old number counts for the new one.
        let consumer = Kbo::parse("0566988259").expect("kbo");
        let file = PersonFile {
            id: "f1".into(),
            consumer,
            citizen: bis,
            capacity: CapacityCode::new("RIS_APPLICANT").expect("c"),
            phase: FilePhase::Provisional,
            begins: date!(2026 - 01 - 01),
            ends: None,
            consumer_reference: String::new(),
            registered_by: "clerk".into(),
            registered_at: datetime!(2026-01-01 0:00 UTC),
            closed_at: None,
        };
        p.put_file(&file).expect("file");
        assert_eq!(
            p.files_of(&consumer, &direct).expect("files"),
            vec![file.clone()]
        );
        assert_eq!(
            p.file(&consumer, &bis, "f1").expect("file"),
            Some(file.clone())
        );
        let other_consumer = Kbo::parse("0314595348").expect("kbo");
        assert!(
            p.files_of(&other_consumer, &direct)
                .expect("files")
                .is_empty()
        );
    }
}
