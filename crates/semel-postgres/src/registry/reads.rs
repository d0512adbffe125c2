//! Reads of the registry on PostgreSQL as honoured: each rule only if sealed with its entry and listed so in
//! the registry's manifest; revocations failing closed.

use super::*;

/// What the registry's manifest lists of the rows a read returns (see
/// [`crate::manifest`]).
pub(super) enum Listed<K> {
    /// No sealer: rows are honoured as stored.
    Unchecked,
    /// The rules listed, by their identity, with the entry each must name.
    Rules(std::collections::BTreeMap<K, i64>),
    /// The manifest is not honoured, nor then is any rule.
    Nothing {
        why: &'static str,
        sequence: Option<i64>,
    },
}

impl PgRegistry {
    /// The rules of one kind that are honoured: with a sealer, those whose
    /// key column says what their value says, whose seal verifies over the
    /// value, its kind and the entry named, whose entry is in the log with
    /// the hash named, and whose entry is the one the registry's manifest
    /// lists for them (read in the same transaction, and verified as
    /// rows are: see [`crate::manifest`]). Every other row is counted and
    /// reported, and left out as if it did not exist; a rule the manifest
    /// lists and the table lacks is reported too. `only` narrows to one key.
    pub(super) async fn sealed<T: Record>(&self, only: Option<&str>) -> Result<Vec<T>, PgError> {
        let kind = T::KIND;
        let sql = format!(
            "SELECT r.key, r.value::text, {} FROM registry_records r \
               LEFT JOIN audit_entries e ON e.sequence = r.audit_sequence \
              WHERE r.kind = $1 AND ($2::text IS NULL OR r.key = $2) \
              ORDER BY r.key COLLATE \"C\"",
            crate::seals::COLUMNS
        );
        let (rows, listed) = self
            .read_listed(&sql, &[&kind, &only], |m| m.records_of(kind, only))
            .await?;
        self.honoured(
            &sealed_table(kind),
            rows,
            |r| r.get::<_, String>(0),
            |r, v: &T| r.get::<_, &str>(0) == v.key(),
            listed,
        )
    }

    /// Runs `sql` and, with a sealer, reads the registry's manifest in the
    /// same transaction (one snapshot), giving what it lists for the rows
    /// read (`of`).
    pub(super) async fn read_listed<K: Ord>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        of: impl FnOnce(&crate::manifest::Manifest) -> std::collections::BTreeMap<K, i64>,
    ) -> Result<(Vec<tokio_postgres::Row>, Listed<K>), PgError> {
        let mut conn = self.conn.lock().await;
        let client = conn.client().await?;
        let Some(sealer) = &self.sealer else {
            return Ok((client.query(sql, params).await?, Listed::Unchecked));
        };
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let manifest = self.manifest.load(&tx, sealer, true).await?;
        let rows = tx.query(sql, params).await?;
        tx.commit().await?;
        let listed = match manifest {
            crate::manifest::Read::Absent => Listed::Rules(Default::default()),
            crate::manifest::Read::Verified { manifest, .. } => Listed::Rules(of(&manifest)),
            crate::manifest::Read::Refused { why, sequence } => Listed::Nothing { why, sequence },
        };
        Ok((rows, listed))
    }

    /// Keeps the rows (value in column 1, seal columns from 2) that are
    /// honoured (see [`PgRegistry::sealed`]): `ident` names a row as the
    /// manifest does, `listed` is what the manifest lists of the rows read.
    pub(super) fn honoured<T: DeserializeOwned + Serialize, K: Ord>(
        &self,
        table: &str,
        rows: Vec<tokio_postgres::Row>,
        ident: impl Fn(&tokio_postgres::Row) -> K,
        belongs: impl Fn(&tokio_postgres::Row, &T) -> bool,
        listed: Listed<K>,
    ) -> Result<Vec<T>, PgError> {
        let mut out = Vec::with_capacity(rows.len());
        let mut listed = match listed {
            Listed::Unchecked => None,
            Listed::Rules(rules) => Some(rules),
            Listed::Nothing { why, sequence } => {
                // Fail closed: no rule of the registry is honoured.
                if !rows.is_empty() {
                    self.unsealed.fetch_add(rows.len() as u64, Relaxed);
                    crate::manifest::report_refused(table, rows.len(), sequence, why);
                }
                return Ok(Vec::new());
            }
        };
        for r in rows {
            let Some(sealer) = &self.sealer else {
                out.push(decode(r.get(1))?);
                continue;
            };
            let sealed = crate::seals::Sealed::read(&r, 2);
            let expected = listed.as_mut().and_then(|l| l.remove(&ident(&r)));
            // A value no broker could have written is a row no broker
            // sealed: left out as the others are.
            let value: T = match decode(r.get(1)) {
                Ok(value) => value,
                Err(_) => {
                    self.unsealed.fetch_add(1, Relaxed);
                    crate::seals::report(table, sealed.sequence, "its value cannot be read");
                    continue;
                }
            };
            let why = if !belongs(&r, &value) {
                Some("its key columns do not say what its value says")
            } else {
                sealed.refusal(sealer, table, encode(&value)?.as_bytes())
            };
            let why = why.or(match (&listed, expected) {
                (None, _) => None,
                (Some(_), Some(s)) if Some(s) == sealed.sequence => None,
                (Some(_), Some(_)) => Some(
                    "the registry's manifest lists another entry for it (an older sealed row put back?)",
                ),
                (Some(_), None) => Some("the registry's manifest does not list it"),
            });
            match why {
                None => out.push(value),
                Some(why) => {
                    self.unsealed.fetch_add(1, Relaxed);
                    crate::seals::report(table, sealed.sequence, why);
                }
            }
        }
        // Listed and not read: deleted by SQL.
        for sequence in listed.into_iter().flat_map(|l| l.into_values()) {
            self.unsealed.fetch_add(1, Relaxed);
            crate::seals::report(
                table,
                Some(sequence),
                "a rule the registry's manifest lists is missing (deleted by SQL?)",
            );
        }
        Ok(out)
    }

    /// Every stored version of one authorisation, oldest first (each
    /// honoured as [`PgRegistry::sealed`] says).
    pub async fn authorisation_history(
        &self,
        reference: &str,
    ) -> Result<Vec<Authorisation>, PgError> {
        let sql = format!(
            "SELECT r.reference, r.value::text, {}, r.version FROM registry_authorisation_history r \
               LEFT JOIN audit_entries e ON e.sequence = r.audit_sequence \
              WHERE r.reference = $1 ORDER BY r.version",
            crate::seals::COLUMNS
        );
        let (rows, listed) = self
            .read_listed(&sql, &[&reference], |m| m.versions_of(reference))
            .await?;
        self.honoured(
            HISTORY_TABLE,
            rows,
            |r| r.get::<_, i32>(6),
            |r, a: &Authorisation| {
                r.get::<_, &str>(0) == a.reference.as_str()
                    && r.get::<_, i32>(6) == a.version as i32
            },
            listed,
        )
    }

    /// Every certificate revoked, failing closed. With a sealer, a
    /// revocation row is honoured as stored when it is sealed and listed
    /// as a rule is (see [`PgRegistry::sealed`]); every other row is
    /// reported at ERROR and counted, but the certificate it names stays
    /// revoked (a row a broker did not write can only refuse a
    /// certificate). And every revocation the registry's manifest lists
    /// whose row is missing, or not honoured, is revoked still, with a
    /// record that says so (its reason and time are in the audit entry the
    /// manifest names): a database administrator who deletes a revocation
    /// does not re-admit its certificate. In key order.
    pub async fn revoked_certificates(&self) -> Result<Vec<RevokedCertificate>, PgError> {
        let sql = format!(
            "SELECT r.key, r.value::text, {} FROM registry_records r \
               LEFT JOIN audit_entries e ON e.sequence = r.audit_sequence \
              WHERE r.kind = $1 ORDER BY r.key COLLATE \"C\"",
            crate::seals::COLUMNS
        );
        let (rows, listed) = self
            .read_listed(&sql, &[&REVOCATION], |m| m.records_of(REVOCATION, None))
            .await?;
        let table = sealed_table(REVOCATION);
        let (sealer, mut listed) = match (&self.sealer, listed) {
            (Some(sealer), Listed::Rules(rules)) => (sealer, Some(rules)),
            (Some(sealer), Listed::Nothing { why, sequence }) => {
                // No revocation is honoured as stored; each still revokes.
                if !rows.is_empty() {
                    self.unsealed.fetch_add(rows.len() as u64, Relaxed);
                    crate::manifest::report_refused(&table, rows.len(), sequence, why);
                }
                (sealer, None)
            }
            (None, _) | (_, Listed::Unchecked) => {
                return rows.iter().map(|r| decode(r.get(1))).collect();
            }
        };
        let mut out = std::collections::BTreeMap::<String, RevokedCertificate>::new();
        for r in &rows {
            let key: String = r.get(0);
            let sealed = crate::seals::Sealed::read(r, 2);
            let expected = listed.as_mut().and_then(|l| l.remove(&key));
            let value = decode::<RevokedCertificate>(r.get(1)).ok();
            let why = match &value {
                None => Some("its value cannot be read"),
                Some(v) if v.id.key() != key => {
                    Some("its key columns do not say what its value says")
                }
                Some(v) => sealed.refusal(sealer, &table, encode(v)?.as_bytes()),
            };
            let why = why.or(match (&listed, expected) {
                (None, _) => Some("the registry's manifest is not honoured"),
                (Some(_), Some(s)) if Some(s) == sealed.sequence => None,
                (Some(_), Some(_)) => Some(
                    "the registry's manifest lists another entry for it (an older sealed row put back?)",
                ),
                (Some(_), None) => Some("the registry's manifest does not list it"),
            });
            let Some(why) = why else {
                if let Some(v) = value {
                    out.insert(key, v);
                }
                continue;
            };
            if listed.is_some() {
                self.unsealed.fetch_add(1, Relaxed);
                report_revocation(&table, sealed.sequence, why);
            }
            // Fail closed: the certificate the manifest lists under this
            // key, and the one the row names, stay revoked.
            if let Some(s) = expected
                && let Some(listed) = still_revoked(&key, s, "its row is not honoured")
            {
                out.insert(key.clone(), listed);
            }
            match value {
                Some(v) => {
                    out.entry(v.id.key()).or_insert(v);
                }
                None => {
                    if let Some(id) = CertificateId::from_key(&key) {
                        out.entry(key).or_insert(RevokedCertificate {
                            id,
                            reason: "its row in the registry cannot be read".into(),
                            revoked_at: time::OffsetDateTime::UNIX_EPOCH,
                        });
                    }
                }
            }
        }
        // Listed and not read: deleted by SQL. Still revoked.
        for (key, sequence) in listed.into_iter().flatten() {
            self.unsealed.fetch_add(1, Relaxed);
            report_revocation(
                &table,
                Some(sequence),
                "a revocation the registry's manifest lists is missing (deleted by SQL?)",
            );
            if let Some(listed) = still_revoked(&key, sequence, "its row is missing") {
                out.insert(key, listed);
            }
        }
        Ok(out.into_values().collect())
    }

    /// One organisation, by KBO number (honoured as
    /// [`PgRegistry::sealed`] says).
    pub async fn organisation(&self, kbo: &Kbo) -> Result<Option<Organisation>, PgError> {
        Ok(self.sealed(Some(kbo.as_str())).await?.pop())
    }
}

/// The revocation the registry's manifest lists under `key`, sealed by
/// audit entry `sequence`, whose row is not honoured (`state`): the
/// certificate stays revoked, its reason and time are those of that entry.
pub(super) fn still_revoked(key: &str, sequence: i64, state: &str) -> Option<RevokedCertificate> {
    let Some(id) = CertificateId::from_key(key) else {
        // Sealed by a broker, so one it wrote: not this one.
        report_revocation(
            &sealed_table(REVOCATION),
            Some(sequence),
            "the registry's manifest lists a key that names no certificate",
        );
        return None;
    };
    Some(RevokedCertificate {
        id,
        reason: format!(
            "listed in the registry's manifest; {state}: see audit entry {sequence} for its reason and time"
        ),
        revoked_at: time::OffsetDateTime::UNIX_EPOCH,
    })
}

/// Says, at ERROR, that a revocation row was not honoured as stored, and
/// that the certificate it names stays revoked (never its value).
pub(super) fn report_revocation(table: &str, sequence: Option<i64>, why: &str) {
    tracing::error!(
        table,
        audit_sequence = ?sequence,
        "a certificate revocation was not honoured as stored: {why}; the certificate stays revoked (fail closed): the database holds a revocation no broker made as it stands, or lacks one a broker made (docs/storage-postgresql.md, \"The registry's manifest\")"
    );
}
