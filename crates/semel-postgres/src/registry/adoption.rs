//! Adopting rules written before seals and the manifest were kept (an upgrade): once, under one operator entry.

use super::*;

/// The sealed rules as they stand, each listed with its entry if its seal
/// verifies and that entry is in the log as sealed: what an adoption lists
/// where no manifest is honoured (an upgrade from schema version 15, or an
/// operator's restoration).
pub(super) async fn as_they_stand(
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
pub(super) fn key_and_canonical<T: Record>(text: &str) -> Option<(String, String)> {
    let value: T = decode(text).ok()?;
    Some((value.key().into_owned(), encode(&value).ok()?))
}

impl PgRegistry {
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

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A record's canonical encoding (as a broker writes and seals it).
pub(super) fn canonical(kind: &str, text: &str) -> Result<String, PgError> {
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
pub(super) struct AdoptionListing {
    pub(super) base: crate::manifest::Manifest,
    pub(super) adopted: crate::manifest::Manifest,
}

/// A rule adopted as it stood (see [`PgRegistry::adoption`]).
pub(super) enum Adopted {
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
