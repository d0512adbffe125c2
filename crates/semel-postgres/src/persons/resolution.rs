//! A number's resolution on PostgreSQL: the replacements followed to the number in force and back, in one
//! round trip, or step by step following only sealed replacements when one is not honoured.

use super::*;

impl PgPersons {
    pub(super) async fn replacement(
        client: &impl tokio_postgres::GenericClient,
        old: &Niss,
    ) -> Result<Option<NumberReplacement>, PgError> {
        client
            .query_opt(
                "SELECT value::text FROM number_replacements WHERE old = $1",
                &[&old.as_str()],
            )
            .await?
            .map(|r| decode(r.get(0)))
            .transpose()
    }

    /// Whether following replacements from `from` reaches `target`, however
    /// long the chain (the loop check; resolving stops after a few steps).
    pub(super) async fn leads_to(
        client: &impl tokio_postgres::GenericClient,
        from: &Niss,
        target: &Niss,
    ) -> Result<bool, PgError> {
        let mut current = *from;
        for _ in 0..MAX_REPLACEMENT_WALK {
            if current == *target {
                return Ok(true);
            }
            match Self::replacement(client, &current).await? {
                Some(r) => current = r.new,
                None => return Ok(false),
            }
        }
        Err(PgError::Corrupt(
            "a chain of number replacements does not end".into(),
        ))
    }

    /// A number's resolution in one round trip (every lookup asks it): the
    /// replacements followed forward to the number in force (at most
    /// `MAX_REPLACEMENT_CHAIN` steps), then back to every number it
    /// replaced, level by level, each level in number order, at most
    /// `4 × MAX_REPLACEMENT_CHAIN` of them. With a sealer, every
    /// replacement followed comes back with its seal and entry; `None` if
    /// one of them is not honoured (then [`PgPersons::resolve_honoured`]
    /// resolves again, following only sealed replacements).
    pub(super) async fn resolve_with(
        &self,
        client: &tokio_postgres::Client,
        statement: &tokio_postgres::Statement,
        given: &Niss,
    ) -> Result<Option<Resolved>, PgError> {
        let chain = MAX_REPLACEMENT_CHAIN as i32;
        let formers = (MAX_REPLACEMENT_CHAIN * 4) as i64;
        let row = client
            .query_one(
                statement,
                &[&given.as_str(), &chain, &(formers as i32), &formers],
            )
            .await?;
        if let Some(sealer) = &self.sealer {
            let olds: Vec<String> = row.get(2);
            let values: Vec<String> = row.get(3);
            let sequences: Vec<Option<i64>> = row.get(4);
            let hashes: Vec<Option<Vec<u8>>> = row.get(5);
            let seals: Vec<Option<Vec<u8>>> = row.get(6);
            let encodings: Vec<Option<Vec<u8>>> = row.get(7);
            let mut all_honoured = true;
            for (i, old) in olds.iter().enumerate() {
                let sealed = crate::seals::Sealed::of(
                    sequences[i],
                    hashes[i].clone(),
                    seals[i].clone(),
                    encodings[i].clone(),
                );
                let why = match decode::<NumberReplacement>(&values[i]) {
                    Err(_) => Some("its value cannot be read"),
                    Ok(r) if r.old.as_str() != old => {
                        Some("its key columns do not say what its value says")
                    }
                    Ok(r) => sealed.refusal(sealer, REPLACEMENTS, encode(&r)?.as_bytes()),
                };
                if let Some(why) = why {
                    self.unsealed.fetch_add(1, Relaxed);
                    crate::seals::report(REPLACEMENTS, sealed.sequence, why);
                    all_honoured = false;
                }
            }
            if !all_honoured {
                return Ok(None);
            }
        }
        let current = parse_niss(row.get(0))?;
        let mut former: Vec<Niss> = Vec::new();
        for n in row.get::<_, Vec<String>>(1) {
            let n = parse_niss(&n)?;
            if !former.contains(&n) {
                former.push(n);
            }
        }
        Ok(Some(Resolved {
            current,
            given: (current != *given).then_some(*given),
            former,
        }))
    }

    /// A number's resolution following only the replacements honoured
    /// (sealed with their entry), one step at a time: the resolution when
    /// the database holds a replacement no broker sealed on its way.
    pub(super) async fn resolve_honoured(&self, given: &Niss) -> Result<Resolved, StorageError> {
        let by_old = format!(
            "SELECT {SEALED_COLUMNS} FROM number_replacements r \
               LEFT JOIN audit_entries e ON e.sequence = r.audit_sequence \
              WHERE r.old = $1"
        );
        let mut current = *given;
        for _ in 0..MAX_REPLACEMENT_CHAIN {
            let next = self
                .honoured(
                    REPLACEMENTS,
                    &by_old,
                    &[&current.as_str()],
                    |r: &NumberReplacement| r.old == current,
                )
                .await?
                .pop();
            match next {
                Some(r) => current = r.new,
                None => break,
            }
        }
        let by_new = format!(
            "SELECT {SEALED_COLUMNS} FROM number_replacements r \
               LEFT JOIN audit_entries e ON e.sequence = r.audit_sequence \
              WHERE r.new = ANY($1) ORDER BY r.old"
        );
        let most = MAX_REPLACEMENT_CHAIN * 4;
        let mut former: Vec<Niss> = Vec::new();
        let mut level = vec![current];
        for _ in 0..most {
            if level.is_empty() || former.len() >= most {
                break;
            }
            let numbers: Vec<&str> = level.iter().map(Niss::as_str).collect();
            let found = self
                .honoured(
                    REPLACEMENTS,
                    &by_new,
                    &[&numbers],
                    |r: &NumberReplacement| level.contains(&r.new),
                )
                .await?;
            level = found
                .into_iter()
                .map(|r| r.old)
                .filter(|n| *n != current && !former.contains(n))
                .collect();
            level.dedup();
            for n in &level {
                if former.len() < most {
                    former.push(*n);
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

/// A number's resolution, with every replacement it followed, their seals
/// and entries ([`PgPersons::resolve_with`]).
pub(super) const RESOLVE: &str = "WITH RECURSIVE fwd(n, depth, old) AS ( \
         SELECT $1::text, 0, NULL::text \
         UNION ALL \
         SELECT r.new, f.depth + 1, r.old FROM number_replacements r JOIN fwd f ON r.old = f.n \
         WHERE f.depth < $2), \
     cur AS (SELECT n FROM fwd ORDER BY depth DESC LIMIT 1), \
     bwd(n, depth) AS ( \
         SELECT n, 0 FROM cur \
         UNION ALL \
         SELECT r.old, b.depth + 1 FROM number_replacements r JOIN bwd b ON r.new = b.n \
         WHERE b.depth < $3), \
     followed AS (SELECT old FROM fwd WHERE old IS NOT NULL \
                  UNION SELECT n FROM bwd WHERE depth > 0), \
     edges AS (SELECT r.old, r.value::text AS value, r.audit_sequence, r.audit_hash, \
                      r.seal, e.encoding \
                 FROM number_replacements r JOIN followed f ON r.old = f.old \
                 LEFT JOIN audit_entries e ON e.sequence = r.audit_sequence) \
     SELECT (SELECT n FROM cur), \
            array(SELECT n FROM bwd WHERE depth > 0 AND n <> (SELECT n FROM cur) \
                  ORDER BY depth, n LIMIT $4), \
            array(SELECT old FROM edges ORDER BY old), \
            array(SELECT value FROM edges ORDER BY old), \
            array(SELECT audit_sequence FROM edges ORDER BY old), \
            array(SELECT audit_hash FROM edges ORDER BY old), \
            array(SELECT seal FROM edges ORDER BY old), \
            array(SELECT encoding FROM edges ORDER BY old)";

/// What a replacement's seal is made over.
pub(super) const REPLACEMENTS: &str = "number_replacements";
