//! The registry's manifest (issue 36, point 5): one sealed row that lists
//! every rule a broker sealed, with the entry that sealed it. A seal proves
//! a broker wrote a row with its entry, not that the row is still the
//! newest one: an older sealed row put back by SQL (an authorisation as it
//! was before its suspension) verifies. The manifest says which entry each
//! rule must name now; a rule it does not list, or lists with another
//! entry, is not honoured, and one it lists that is missing is reported.
//!
//! Every change that seals rules rewrites it in its own transaction, after
//! `bump()` has taken the `registry_version` row lock (so changes made at
//! once through several brokers are serialised, each reading the manifest
//! the previous one committed), sealed with the change's entry. A broker
//! remembers the newest manifest it has loaded: one sealed with an older
//! entry (the whole registry rolled back while it runs) is an error.

use std::collections::BTreeMap;
use std::sync::Arc;

use semel_core::seal::RowSealer;
use semel_storage::Appended;
use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

use crate::PgError;

/// What the manifest's seal is made over: its table.
pub(crate) const TABLE: &str = "registry_manifest";

/// Every sealed rule's identity with the sequence of the entry that sealed
/// it: records by kind and key, authorisation versions by reference and
/// version; and the registry's version (`generation`) when it was written,
/// and when each rule was last set. Stored as this JSON (its text, as
/// sealed).
///
/// Entries are not sealed in the order changes commit (two brokers'
/// changes race), registry versions are (each change takes the version's
/// row lock): a later manifest has a greater generation, and lists every
/// rule an earlier one listed, either as it was or set at a greater
/// generation.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub generation: i64,
    pub records: BTreeMap<String, BTreeMap<String, Listing>>,
    pub versions: BTreeMap<String, BTreeMap<i32, Listing>>,
}

/// One rule listed: the sequence of the entry that sealed it, and the
/// generation of the manifest that set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Listing(pub i64, pub i64);

impl Manifest {
    /// Lists a rule (of a change, stamped with its generation by
    /// [`Manifest::merge`]).
    pub(crate) fn set_record(&mut self, kind: &str, key: &str, sequence: i64) {
        self.records
            .entry(kind.to_owned())
            .or_default()
            .insert(key.to_owned(), Listing(sequence, self.generation));
    }

    pub(crate) fn set_version(&mut self, reference: &str, version: i32, sequence: i64) {
        self.versions
            .entry(reference.to_owned())
            .or_default()
            .insert(version, Listing(sequence, self.generation));
    }

    /// Becomes the manifest of `generation`, with every rule `other`
    /// lists set at it.
    pub(crate) fn merge(&mut self, other: &Manifest, generation: i64) {
        self.generation = generation;
        for (kind, keys) in &other.records {
            for (key, listing) in keys {
                self.set_record(kind, key, listing.0);
            }
        }
        for (reference, versions) in &other.versions {
            for (version, listing) in versions {
                self.set_version(reference, *version, listing.0);
            }
        }
    }

    /// The records of `kind` listed (only `key`, when given).
    pub(crate) fn records_of(&self, kind: &str, only: Option<&str>) -> BTreeMap<String, i64> {
        let Some(keys) = self.records.get(kind) else {
            return BTreeMap::new();
        };
        match only {
            Some(key) => keys
                .get(key)
                .map(|s| (key.to_owned(), s.0))
                .into_iter()
                .collect(),
            None => keys.iter().map(|(k, s)| (k.clone(), s.0)).collect(),
        }
    }

    /// The versions of one authorisation listed.
    pub(crate) fn versions_of(&self, reference: &str) -> BTreeMap<i32, i64> {
        self.versions
            .get(reference)
            .map(|v| v.iter().map(|(n, s)| (*n, s.0)).collect())
            .unwrap_or_default()
    }

    /// How many rules it lists, records and versions.
    pub(crate) fn len(&self) -> usize {
        self.records.values().map(BTreeMap::len).sum::<usize>()
            + self.versions.values().map(BTreeMap::len).sum::<usize>()
    }

    /// How many rules this manifest lists that `later` does not list as
    /// they were, or set at a greater generation: none, for a manifest
    /// later changes wrote (they set rules at their own generation, and
    /// take none back).
    fn rules_gone_back(&self, later: &Manifest) -> usize {
        let kept = |was: &Listing, now: Option<&Listing>| {
            now.is_some_and(|now| now == was || now.1 > was.1)
        };
        let records = self.records.iter().flat_map(|(kind, keys)| {
            keys.iter().filter(move |(key, was)| {
                !kept(was, later.records.get(kind).and_then(|k| k.get(*key)))
            })
        });
        let versions = self.versions.iter().flat_map(|(reference, versions)| {
            versions.iter().filter(move |(version, was)| {
                !kept(
                    was,
                    later.versions.get(reference).and_then(|v| v.get(*version)),
                )
            })
        });
        records.count() + versions.count()
    }

    fn encode(&self) -> Result<String, PgError> {
        serde_json::to_string(self)
            .map_err(|e| PgError::Corrupt(format!("encode the registry's manifest: {e}")))
    }
}

/// The manifest as read.
#[derive(Debug, Clone)]
pub(crate) enum Read {
    /// None stored: no broker has sealed a rule in this registry yet.
    Absent,
    /// Its seal verifies over it and the entry it names, which is in the
    /// log with the hash named; `sequence` is that entry's.
    Verified {
        manifest: Arc<Manifest>,
        sequence: u64,
    },
    /// Not honoured, and why (then no rule is honoured).
    Refused {
        why: &'static str,
        sequence: Option<i64>,
    },
}

/// A manifest verified once, kept so that a reading whose seal has not
/// changed neither fetches nor parses it again.
struct Cached {
    seal: Vec<u8>,
    /// The SHA-256 of its text.
    digest: Vec<u8>,
    text: String,
    manifest: Arc<Manifest>,
}

/// What one broker's registry remembers of the manifest.
#[derive(Default)]
pub(crate) struct Memory {
    /// The newest manifest loaded by a read of this broker's registry, and
    /// the sequence of its entry.
    loaded: std::sync::Mutex<Option<(u64, Arc<Manifest>)>>,
    cache: std::sync::Mutex<Option<Arc<Cached>>>,
}

impl Memory {
    /// Reads the manifest and checks it against the newest this broker has
    /// loaded: a manifest sealed with an older entry, none where one was,
    /// or one that lists a rule under an older entry than that one did, or
    /// not at all (no change takes a sealed rule back), is an error: the
    /// registry rolled back while this broker runs, said at ERROR.
    /// `remember`: this reading becomes the newest loaded (readings that
    /// remember must come in the order of their snapshots: the registry's
    /// reads, one at a time on its connection).
    pub(crate) async fn load(
        &self,
        c: &(impl GenericClient + Sync),
        sealer: &RowSealer,
        remember: bool,
    ) -> Result<Read, PgError> {
        let read = self.read(c, sealer).await?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let (manifest, sequence) = match &read {
            // Not honoured at all: nothing to compare.
            Read::Refused { .. } => return Ok(read),
            Read::Absent => match loaded.as_ref() {
                None => return Ok(read),
                Some((seen, _)) => {
                    return Err(rolled_back(format!(
                        "the registry's manifest is gone, where this broker loaded one sealed by audit entry {seen}"
                    )));
                }
            },
            Read::Verified { manifest, sequence } => (manifest, *sequence),
        };
        if let Some((seen, before)) = loaded.as_ref() {
            if manifest.generation < before.generation {
                return Err(rolled_back(format!(
                    "the registry's manifest of registry version {} (sealed by audit entry {sequence}) is older than the one of version {} (entry {seen}) this broker already loaded",
                    manifest.generation, before.generation
                )));
            }
            if !Arc::ptr_eq(manifest, before) {
                let back = before.rules_gone_back(manifest);
                if back > 0 {
                    return Err(rolled_back(format!(
                        "the registry's manifest of registry version {} (sealed by audit entry {sequence}) lists {back} rules under an older entry than, or without, the one of version {} (entry {seen}) this broker already loaded",
                        manifest.generation, before.generation
                    )));
                }
            }
        }
        if remember
            && loaded
                .as_ref()
                .is_none_or(|(_, before)| manifest.generation >= before.generation)
        {
            *loaded = Some((sequence, manifest.clone()));
        }
        Ok(read)
    }

    async fn read(
        &self,
        c: &(impl GenericClient + Sync),
        sealer: &RowSealer,
    ) -> Result<Read, PgError> {
        let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let cached_seal = cached.as_ref().map(|c| c.seal.as_slice()).unwrap_or(&[]);
        let cached_digest = cached.as_ref().map(|c| c.digest.as_slice()).unwrap_or(&[]);
        // Its text only when it or its seal differs from the one verified
        // last (the text compared by its SHA-256, computed by the server).
        let Some(row) = c
            .query_opt(
                "SELECT m.audit_sequence, m.audit_hash, m.seal, e.encoding, \
                        CASE WHEN m.seal = $1 AND sha256(convert_to(m.rules, 'UTF8')) = $2 \
                             THEN NULL ELSE m.rules END \
                   FROM registry_manifest m \
                   LEFT JOIN audit_entries e ON e.sequence = m.audit_sequence \
                  WHERE m.id = 0",
                &[&cached_seal, &cached_digest],
            )
            .await?
        else {
            return Ok(Read::Absent);
        };
        let sealed = crate::seals::Sealed::read(&row, 0);
        let seal: Option<Vec<u8>> = row.get(2);
        let text: Option<String> = row.get(4);
        let (text, parsed) = match (text, &cached) {
            (Some(text), _) => (std::borrow::Cow::Owned(text), None),
            // The seal and the text are the ones cached.
            (None, Some(c)) => (
                std::borrow::Cow::Borrowed(c.text.as_str()),
                Some(c.manifest.clone()),
            ),
            (None, None) => {
                return Ok(Read::Refused {
                    why: "it carries no list of rules",
                    sequence: sealed.sequence,
                });
            }
        };
        if let Some(why) = sealed.refusal(sealer, TABLE, text.as_bytes()) {
            return Ok(Read::Refused {
                why,
                sequence: sealed.sequence,
            });
        }
        let manifest = match parsed {
            Some(m) => m,
            None => {
                let Ok(m) = serde_json::from_str::<Manifest>(&text) else {
                    // Sealed by a broker, so readable by one: not this one.
                    return Ok(Read::Refused {
                        why: "it cannot be read",
                        sequence: sealed.sequence,
                    });
                };
                let m = Arc::new(m);
                *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(Cached {
                    seal: seal.clone().unwrap_or_default(),
                    digest: {
                        use sha2::Digest;
                        sha2::Sha256::digest(text.as_bytes()).to_vec()
                    },
                    text: text.into_owned(),
                    manifest: m.clone(),
                }));
                m
            }
        };
        let sequence = sealed
            .sequence
            .and_then(|s| u64::try_from(s).ok())
            .ok_or_else(|| PgError::Corrupt("the registry manifest's entry".into()))?;
        Ok(Read::Verified { manifest, sequence })
    }
}

/// The error of a manifest older than one loaded, said at ERROR.
fn rolled_back(what: String) -> PgError {
    let message = format!(
        "{what}: the registry was rolled back (restored from an older copy?) while the broker ran; it is not honoured (docs/storage-postgresql.md, \"The registry's manifest\")"
    );
    tracing::error!(table = TABLE, "{message}");
    PgError::Integrity(message)
}

/// Says, at ERROR, that the manifest is not honoured, and so no rule of
/// `table` read (`rows` of them) is (never a value).
pub(crate) fn report_refused(table: &str, rows: usize, sequence: Option<i64>, why: &str) {
    tracing::error!(
        table,
        manifest_audit_sequence = ?sequence,
        rows,
        "the registry's manifest is not honoured: {why}; no rule is honoured until an operator restores the registry (docs/storage-postgresql.md, \"The registry's manifest\")"
    );
}

/// Stores `manifest`, sealed with `at`, the entry of the change that
/// wrote it (in that change's transaction, after `bump()`).
pub(crate) async fn write(
    c: &(impl GenericClient + Sync),
    sealer: &RowSealer,
    manifest: &Manifest,
    at: Appended,
) -> Result<(), PgError> {
    let text = manifest.encode()?;
    let sequence = i64::try_from(at.sequence)
        .map_err(|_| PgError::Corrupt("an audit sequence beyond i64".into()))?;
    let seal = sealer.seal(TABLE, text.as_bytes(), &crate::seals::entry(at));
    c.execute(
        "INSERT INTO registry_manifest (id, rules, audit_sequence, audit_hash, seal) \
         VALUES (0, $1, $2, $3, $4) \
         ON CONFLICT (id) DO UPDATE SET rules = EXCLUDED.rules, \
            audit_sequence = EXCLUDED.audit_sequence, audit_hash = EXCLUDED.audit_hash, \
            seal = EXCLUDED.seal",
        &[&text, &sequence, &at.hash.as_slice(), &seal.as_slice()],
    )
    .await?;
    Ok(())
}

/// Rewrites the manifest for a change sealed with `at` that sealed the
/// rules `set` lists: the manifest as it stands (verified, and not older
/// than one this broker loaded) with those rules set, at `generation`,
/// the registry's version `bump()` gave the change (which serialises
/// changes). A manifest that does not verify refuses the change: no rule
/// is honoured until an operator restores it.
pub(crate) async fn rewrite(
    c: &(impl GenericClient + Sync),
    sealer: &RowSealer,
    memory: &Memory,
    set: &Manifest,
    at: Appended,
    generation: u64,
) -> Result<(), PgError> {
    let mut manifest = match memory.load(c, sealer, false).await? {
        Read::Verified { manifest, .. } => (*manifest).clone(),
        Read::Absent => Manifest::default(),
        Read::Refused { why, sequence } => {
            report_refused(TABLE, 0, sequence, why);
            return Err(PgError::Integrity(format!(
                "the registry's manifest is not honoured ({why}): no registry change is made until an operator restores it (docs/storage-postgresql.md, \"The registry's manifest\")"
            )));
        }
    };
    manifest.merge(set, generation_of(generation)?);
    write(c, sealer, &manifest, at).await
}

pub(crate) fn generation_of(version: u64) -> Result<i64, PgError> {
    i64::try_from(version).map_err(|_| PgError::Corrupt("a registry version beyond i64".into()))
}
