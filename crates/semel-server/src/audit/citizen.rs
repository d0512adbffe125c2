//! ListCitizenAccesses: who consulted a citizen's data, as the citizen (or an auditor) is shown it.

use semel_core::{LOOKUP_OPERATION, Niss, ReasonCode, UserRole};
use semel_storage::{AuditQuery, StoredEntry};
use tonic::{Request, Response, Status};

use super::{AuditService, page_limit, page_start};
use crate::audited::{Change, nothing_to_undo};
use crate::convert::{decision_to_proto, timestamp_micros};
use crate::error::ApiError;
use crate::proto;

impl AuditService {
    /// ListCitizenAccesses (the RPC calls this).
    pub(super) async fn citizen_accesses(
        &self,
        req: Request<proto::ListCitizenAccessesRequest>,
    ) -> Result<Response<proto::ListCitizenAccessesResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let proto::ListCitizenAccessesRequest {
            citizen,
            page_size,
            page_token,
        } = req.into_inner();
        let citizen = Niss::parse(&citizen).map_err(|e| {
            ApiError::invalid("citizen", "INVALID_CITIZEN", format!("citizen: {e}"))
        })?;
        let own = caller.has(UserRole::Citizen) && caller.user.citizen() == Some(citizen);
        // An auditor who does not audit everything sees the accesses of
        // their own organisation only.
        let consumer = if own || caller.audits_everything() {
            None
        } else if caller.has(UserRole::Auditor) {
            Some(caller.org.kbo)
        } else {
            let error = ApiError::denied(
                "CITIZEN_MISMATCH",
                "a citizen can only see who consulted their own data",
            );
            return Err(self
                .broker
                .refuse(&caller, error, ReasonCode::CitizenMismatch, None)
                .await
                .into());
        };
        // An auditor's reading counts among the organisation's audit calls;
        // a citizen reading their own accesses does not.
        let _call = if own {
            None
        } else {
            Some(self.enter_call(&caller).await?)
        };
        let limit = page_limit(page_size)?;
        let before_sequence = page_start(&page_token)?;
        let scan = async |change: &mut Change| {
            change.citizen = Some(citizen);
            // Entries made under the numbers this one replaced belong to the
            // same person.
            let resolved = self
                .broker
                .storage()
                .persons
                .resolve(&citizen)
                .await
                .map_err(ApiError::from)?;
            let numbers: std::collections::BTreeSet<Niss> = std::iter::once(citizen)
                .chain(resolved.numbers().copied())
                .collect();
            let snapshot = self.broker.snapshot();
            let today = semel_core::brussels_today(time::OffsetDateTime::now_utc());
            // The citizen sees what concerns them; an auditor everything in
            // their scope.
            let filtered = own && !caller.audits_everything();
            // The versions that were confidential, of the authorisations
            // confidential today (few: investigations).
            let mut confidential = std::collections::HashSet::new();
            if filtered {
                for a in snapshot
                    .authorisations
                    .values()
                    .filter(|a| a.hidden_from_citizen(today))
                {
                    let history = self
                        .broker
                        .authorisation_history(a.reference.as_str())
                        .await?;
                    confidential.extend(
                        history
                            .into_iter()
                            .filter(|v| v.confidential_until.is_some())
                            .map(|v| (v.reference.to_string(), v.version)),
                    );
                }
            }
            let visible = |r: &semel_core::AuditRecord| {
                citizen_action(&r.operation).is_some()
                    && (!filtered || citizen_may_see(r, &snapshot, &confidential, today))
            };
            let page = self
                .visible_page(&numbers, consumer, before_sequence, limit, visible)
                .await?;
            change.detail = format!("citizen's accesses read: {} entries", page.0.len());
            Ok((page, nothing_to_undo()))
        };
        // Recorded, whoever reads: an auditor reading a citizen's history,
        // and the citizen reading their own (a token of theirs in other
        // hands reads it too, and the log must show it). The entry is an
        // AuditService operation, which `citizen_action` keeps out of the
        // citizen's own view.
        let (entries, next_page_token) = self.broker.audited(&caller, scan).await?.0;
        let snapshot = self.broker.snapshot();
        // The law an access rested on is that of the version it was decided
        // under: a later amendment (an investigation's, say) neither
        // rewrites it nor shows early what it says now.
        let mut bases: std::collections::HashMap<(String, u32), (String, String)> =
            std::collections::HashMap::new();
        let references: std::collections::BTreeSet<&str> = entries
            .iter()
            .filter_map(|s| s.entry.record.authorisation.as_deref())
            .collect();
        for reference in references {
            let history = self.broker.authorisation_history(reference).await?;
            for v in history {
                bases.insert(
                    (v.reference.to_string(), v.version),
                    (v.legal_basis, v.issuing_body),
                );
            }
        }
        let basis = |r: &semel_core::AuditRecord| -> (String, String) {
            match (&r.authorisation, r.authorisation_version) {
                (Some(a), Some(v)) => bases.get(&(a.clone(), v)).cloned().unwrap_or_default(),
                // Entries made before versions were recorded: today's
                // version, unless it is an investigation's.
                (Some(a), None) => snapshot
                    .authorisations
                    .get(a)
                    .filter(|a| a.confidential_until.is_none())
                    .map(|a| (a.legal_basis.clone(), a.issuing_body.clone()))
                    .unwrap_or_default(),
                (None, _) => (
                    snapshot
                        .purposes
                        .get(&r.purpose)
                        .map(|p| p.legal_basis.clone())
                        .unwrap_or_default(),
                    String::new(),
                ),
            }
        };
        let name = |k: &semel_core::Kbo| {
            snapshot
                .organisations
                .get(k)
                .map(|o| o.name.clone())
                .unwrap_or_default()
        };
        let accesses = entries
            .iter()
            .map(|s| &s.entry.record)
            .filter_map(|r| citizen_action(&r.operation).map(|action| (r, action)))
            .map(|(r, action)| proto::CitizenAccess {
                time: Some(timestamp_micros(r.time_micros)),
                consumer_kbo: r.consumer.as_str().to_owned(),
                consumer_name: name(&r.consumer),
                source_kbo: r.source.map(|k| k.as_str().to_owned()).unwrap_or_default(),
                source_name: r.source.as_ref().map(name).unwrap_or_default(),
                dataset: r.dataset.clone(),
                fields: r.fields_returned.clone(),
                purpose: r.purpose.clone(),
                authorisation_reference: r.authorisation.clone().unwrap_or_default(),
                decision: decision_to_proto(r.decision),
                reason: r.reason.map(|c| c.as_str().to_owned()).unwrap_or_default(),
                // What was asked about (the data category), not the
                // question's operand or its answer.
                checked_fields: {
                    let mut f: Vec<String> = r
                        .checks
                        .iter()
                        .map(|c| semel_core::Question::field_of(c).to_owned())
                        .collect();
                    f.dedup();
                    f
                },
                action: action.to_owned(),
                purpose_description: snapshot
                    .purposes
                    .get(&r.purpose)
                    .map(|p| p.description.clone())
                    .unwrap_or_default(),
                legal_basis: basis(r).0,
                dataset_description: snapshot
                    .routes
                    .iter()
                    .find(|(d, _)| d.as_str() == r.dataset)
                    .map(|(_, route)| route.dataset.description.clone())
                    .unwrap_or_default(),
                issuing_body: basis(r).1,
            })
            .collect();
        Ok(Response::new(proto::ListCitizenAccessesResponse {
            accesses,
            next_page_token,
            archived_until: self
                .archived_part(None)
                .map(|a| timestamp_micros(a.until_micros)),
        }))
    }

    /// One page of a citizen's entries that `visible` keeps, newest first,
    /// and the token of the next page. Pages are counted in visible entries
    /// and the token is always a visible entry's sequence: hidden entries
    /// leave no trace in either.
    async fn visible_page(
        &self,
        numbers: &std::collections::BTreeSet<Niss>,
        consumer: Option<semel_core::Kbo>,
        before_sequence: Option<u64>,
        limit: usize,
        visible: impl Fn(&semel_core::AuditRecord) -> bool,
    ) -> Result<(Vec<StoredEntry>, String), ApiError> {
        let batch = limit.max(100);
        let mut cursor = before_sequence;
        let mut out = Vec::new();
        loop {
            let mut merged = Vec::new();
            // Below the last entry of a full batch, a number's entries may
            // be missing from this round: stop there, and go on from it.
            let mut floor: Option<u64> = None;
            for n in numbers {
                let part = self
                    .query(AuditQuery {
                        citizen: Some(*n),
                        consumer,
                        before_sequence: cursor,
                        limit: batch,
                        ..AuditQuery::default()
                    })
                    .await?;
                if part.len() == batch
                    && let Some(last) = part.last()
                {
                    floor = Some(floor.map_or(last.entry.sequence, |f| f.max(last.entry.sequence)));
                }
                merged.extend(part);
            }
            merged.sort_by_key(|e| std::cmp::Reverse(e.entry.sequence));
            merged.dedup_by_key(|e| e.entry.sequence);
            if merged.is_empty() {
                return Ok((out, String::new()));
            }
            for e in merged {
                if floor.is_some_and(|f| e.entry.sequence < f) {
                    break;
                }
                cursor = Some(e.entry.sequence);
                if visible(&e.entry.record) {
                    let sequence = e.entry.sequence;
                    out.push(e);
                    if out.len() == limit {
                        let next = if sequence > 0 {
                            sequence.to_string()
                        } else {
                            String::new()
                        };
                        return Ok((out, next));
                    }
                }
            }
            if floor.is_none() {
                return Ok((out, String::new()));
            }
        }
    }
}

/// Whether the citizen sees this entry in their view now.
///
/// A caller whose identity was not established (token or certificate
/// refused) is not shown: the view says who consulted the citizen, and
/// that caller's "who" is unproven. An investigation stays out of view until
/// its disclosure date, judged by what the entry is about and not only by
/// the authorisation it was decided under. An entry decided under an
/// authorisation follows that authorisation. A refusal made before any
/// authorisation was chosen (an unknown field, a bad reference date, a
/// purpose not allowed) follows its purpose: hidden while the organisation
/// holds a confidential authorisation for that purpose; when the purpose is
/// not one the catalogue knows, its dataset (or, unknown too, any
/// confidential authorisation of the organisation) decides.
///
/// Confidentiality is not retroactive: an entry decided under a version
/// that was not confidential stays in view when a later amendment makes the
/// authorisation confidential (`confidential` holds the versions that were).
/// The disclosure date is today's version's, so a prolonged or shortened
/// investigation moves it for every entry made under it.
fn citizen_may_see(
    r: &semel_core::AuditRecord,
    snapshot: &crate::state::Snapshot,
    confidential: &std::collections::HashSet<(String, u32)>,
    today: time::Date,
) -> bool {
    use semel_core::ReasonCode as R;
    if matches!(
        r.reason,
        Some(
            R::CertificateRevoked
                | R::CertificateExpired
                | R::TokenMissing
                | R::TokenMalformed
                | R::TokenExpired
                | R::TokenNotYetValid
                | R::TokenAudience
                | R::TokenUntrustedIssuer
                | R::TokenSignature
                | R::TokenOrganisationMismatch
        )
    ) {
        return false;
    }
    if let Some(reference) = &r.authorisation {
        return !snapshot.authorisations.get(reference).is_some_and(|a| {
            a.hidden_from_citizen(today)
                && r.authorisation_version
                    .is_none_or(|v| confidential.contains(&(reference.clone(), v)))
        });
    }
    let known_purpose = snapshot.purposes.contains_key(&r.purpose);
    let known_dataset = snapshot.routes.keys().any(|d| d.as_str() == r.dataset);
    !snapshot.authorisations.values().any(|a| {
        a.consumer == r.consumer
            && a.hidden_from_citizen(today)
            && if known_purpose {
                a.purpose.as_str() == r.purpose
            } else {
                !known_dataset || a.dataset.as_str() == r.dataset
            }
    })
}

/// What a citizen is shown an entry as: consultations of their data and
/// changes to their consents. Other operations are not shown: an auditor's
/// query is not about them, and files in the persons directory stay out of
/// view (a file opened for an investigation must not warn its subject;
/// lookups under it follow their authorisation's disclosure date).
fn citizen_action(operation: &str) -> Option<&'static str> {
    Some(match operation {
        LOOKUP_OPERATION => "lookup",
        "semel.v1.ConsentService/GiveConsent" => "consent given",
        "semel.v1.ConsentService/WithdrawConsent" => "consent withdrawn",
        // A change the source published, as each consumer was told of it.
        semel_core::mutation::DELIVER_OPERATION | semel_core::mutation::PULL_OPERATION => {
            "told of a change"
        }
        _ => return None,
    })
}
