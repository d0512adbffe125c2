//! `AuditService`: the auditors' view of the log, and the citizen's.
//!
//! An auditor of an organisation registered as auditor (or of the
//! operator) reads the whole log; an auditor of any other organisation reads
//! that organisation's own calls. A citizen reads who consulted their data.
//!
//! The citizen's view (ListCitizenAccesses) is in `citizen`; summaries
//! (SummariseAuditEntries) in `summary`.

use std::sync::Arc;

use semel_core::{Niss, ReasonCode};
use semel_storage::{AuditQuery, StoredEntry};
use tonic::{Request, Response, Status};

mod citizen;
mod summary;

use crate::audited::{Change, nothing_to_undo};
use crate::convert::{audit_entry_to_proto, micros, parse_kbo, timestamp_micros};
use crate::error::ApiError;
use crate::proto::{self, audit_service_server::AuditService as Rpc};
use crate::state::{Broker, Caller};

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

pub struct AuditService {
    broker: Arc<Broker>,
}

impl AuditService {
    pub fn new(broker: Arc<Broker>) -> Self {
        AuditService { broker }
    }

    /// The archive, when the period from `since` reaches into it.
    fn archived_part(&self, since_micros: Option<i64>) -> Option<semel_storage::ArchiveState> {
        let a = self.broker.storage().audit.archived();
        (a.before > 0 && since_micros.is_none_or(|s| s <= a.until_micros)).then_some(a)
    }

    async fn query(&self, query: AuditQuery) -> Result<Vec<StoredEntry>, ApiError> {
        Ok(self.broker.storage().audit.query(&query).await?)
    }

    async fn query_page(&self, query: AuditQuery) -> Result<semel_storage::AuditPage, ApiError> {
        Ok(self.broker.storage().audit.query_page(&query).await?)
    }

    /// The entries one call may read: a filter no index serves reads the
    /// log newest first, and without a bound one call would read all of it.
    fn scan_budget(&self) -> usize {
        self.broker.limits().audit_scan_budget.max(1)
    }

    /// One of the caller's organisation's places for audit calls, held for
    /// the call: each may read a scan budget of entries, so an organisation
    /// cannot take every core by calling many at once. Beyond, the call is
    /// refused (and recorded, within the refusal budget).
    async fn enter_call(&self, caller: &Caller) -> Result<crate::limits::AuditCall, ApiError> {
        if let Some(call) = self.broker.audit_calls.enter(caller.org.kbo) {
            return Ok(call);
        }
        let error = ApiError::retryable(
            tonic::Code::ResourceExhausted,
            "AUDIT_CALLS_EXCEEDED",
            format!(
                "your organisation has {} audit calls in flight already; wait for one to end, then retry",
                self.broker.limits().audit_calls_in_flight.max(1)
            ),
        );
        Err(self
            .broker
            .refuse(caller, error, ReasonCode::AuditCallsExceeded, None)
            .await)
    }
}

impl AuditService {
    /// The query the filters ask for (those of ListAuditEntries and
    /// SummariseAuditEntries, as the latter's message carries them), within
    /// what the caller may read: an auditor of an organisation that does not
    /// audit everything reads its own organisation's entries (asking for
    /// another's is refused, and recorded).
    async fn scoped_query(
        &self,
        caller: &Caller,
        f: proto::SummariseAuditEntriesRequest,
    ) -> Result<AuditQuery, ApiError> {
        let text = |s: String| (!s.is_empty()).then_some(s);
        let decision = match proto::AuditDecision::try_from(f.decision) {
            Ok(proto::AuditDecision::Allowed) => Some(semel_core::AuditDecision::Allowed),
            Ok(proto::AuditDecision::Refused) => Some(semel_core::AuditDecision::Refused),
            Ok(proto::AuditDecision::Unspecified) => None,
            Err(_) => {
                return Err(ApiError::invalid(
                    "decision",
                    "INVALID_ARGUMENT",
                    "decision must be AUDIT_DECISION_ALLOWED or AUDIT_DECISION_REFUSED",
                ));
            }
        };
        let reason = match f.reason.trim() {
            "" => None,
            r => Some(ReasonCode::parse(r).ok_or_else(|| {
                ApiError::invalid(
                    "reason",
                    "INVALID_ARGUMENT",
                    "reason must be a reason code of the integration guide's table, e.g. NO_ACTIVE_FILE",
                )
            })?),
        };
        let citizen = if f.citizen.is_empty() {
            None
        } else {
            Some(Niss::parse(&f.citizen).map_err(|e| {
                ApiError::invalid("citizen", "INVALID_CITIZEN", format!("citizen: {e}"))
            })?)
        };
        let mut consumer = if f.consumer_kbo.is_empty() {
            None
        } else {
            Some(parse_kbo("consumer_kbo", &f.consumer_kbo)?)
        };
        if !caller.audits_everything() {
            match consumer {
                None => consumer = Some(caller.org.kbo),
                Some(k) if k == caller.org.kbo => {}
                Some(_) => {
                    let error = ApiError::denied(
                        "OTHER_ORGANISATION",
                        "your auditors read your own organisation's entries; leave consumer_kbo empty or set it to your enterprise number",
                    );
                    return Err(self
                        .broker
                        .refuse(caller, error, ReasonCode::OtherOrganisation, None)
                        .await);
                }
            }
        }
        Ok(AuditQuery {
            citizen,
            consumer,
            end_user: text(f.end_user),
            authorisation: text(f.authorisation_reference),
            dataset: text(f.dataset),
            decision,
            reason,
            since_micros: f.since.as_ref().map(micros),
            until_micros: f.until.as_ref().map(micros),
            before_sequence: (f.before_sequence > 0).then_some(f.before_sequence),
            limit: 0,
            scan_limit: None,
        })
    }
}

/// What an auditor's query records in its own audit entry: the citizen,
/// dataset and authorisation it names in their fields; returns the rest in
/// words for its detail. The dataset and authorisation are the auditor's
/// text, kept only when they are well-formed names (else `(not a valid
/// name)`), as a refused lookup's are: the entry is shown in the console,
/// which looks an entry's authorisation up by its reference.
fn record_query(change: &mut Change, q: &AuditQuery) -> String {
    use crate::lookup::recorded_name;
    change.citizen = q.citizen;
    change.dataset = recorded_name(q.dataset.as_deref().unwrap_or_default(), |s| {
        semel_core::DatasetName::new(s).is_ok()
    });
    change.authorisation = q
        .authorisation
        .as_deref()
        .map(|a| recorded_name(a, |s| semel_core::AuthorisationRef::new(s).is_ok()));
    describe_query(q)
}

/// An auditor's query in words, for its own audit entry. The citizen is in
/// the entry's own field, never here.
fn describe_query(q: &AuditQuery) -> String {
    let mut parts = Vec::new();
    if q.citizen.is_some() {
        parts.push("citizen".to_owned());
    }
    if let Some(c) = q.consumer {
        parts.push(format!("consumer {c}"));
    }
    if let Some(u) = &q.end_user {
        parts.push(format!("person {}", semel_core::redact_national_numbers(u)));
    }
    if let Some(a) = &q.authorisation {
        parts.push(format!("authorisation {a}"));
    }
    if let Some(d) = &q.dataset {
        parts.push(format!("dataset {d}"));
    }
    if let Some(d) = q.decision {
        parts.push(format!("decision {d:?}").to_lowercase());
    }
    if let Some(r) = q.reason {
        parts.push(format!("reason {}", r.as_str()));
    }
    if q.since_micros.is_some() || q.until_micros.is_some() {
        parts.push(format!(
            "period {}..{}",
            q.since_micros.map(|m| m.to_string()).unwrap_or_default(),
            q.until_micros.map(|m| m.to_string()).unwrap_or_default()
        ));
    }
    if parts.is_empty() {
        "audit log read, no filter".to_owned()
    } else {
        format!("audit log read by {}", parts.join(", "))
    }
}

fn page_limit(page_size: i32) -> Result<usize, ApiError> {
    match page_size {
        0 => Ok(DEFAULT_PAGE),
        n if n < 0 => Err(ApiError::invalid(
            "page_size",
            "INVALID_ARGUMENT",
            "page_size cannot be negative",
        )),
        n => Ok((n as usize).min(MAX_PAGE)),
    }
}

fn page_start(page_token: &str) -> Result<Option<u64>, ApiError> {
    if page_token.is_empty() {
        return Ok(None);
    }
    page_token.parse::<u64>().map(Some).map_err(|_| {
        ApiError::invalid(
            "page_token",
            "INVALID_ARGUMENT",
            "page_token must be copied from a previous response's next_page_token",
        )
    })
}

fn next_page(entries: &[StoredEntry], limit: usize) -> String {
    match entries.last() {
        Some(last) if entries.len() == limit && last.entry.sequence > 0 => {
            last.entry.sequence.to_string()
        }
        _ => String::new(),
    }
}

#[tonic::async_trait]
impl Rpc for AuditService {
    async fn list_audit_entries(
        &self,
        req: Request<proto::ListAuditEntriesRequest>,
    ) -> Result<Response<proto::ListAuditEntriesResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let _call = self.enter_call(&caller).await?;
        let mut r = req.into_inner();
        let limit = page_limit(r.page_size)?;
        let before_sequence = page_start(&std::mem::take(&mut r.page_token))?;
        // The same filters as a summary's, read by one function.
        let filter = proto::SummariseAuditEntriesRequest {
            citizen: r.citizen,
            consumer_kbo: r.consumer_kbo,
            since: r.since,
            until: r.until,
            end_user: r.end_user,
            authorisation_reference: r.authorisation_reference,
            dataset: r.dataset,
            decision: r.decision,
            reason: r.reason,
            before_sequence: 0,
        };
        let mut query = self.scoped_query(&caller, filter).await?;
        query.before_sequence = before_sequence;
        query.limit = limit;
        // At most a budget of entries read per page: a page cut short by it
        // says where to go on, and a short page with a token means "keep
        // going" (proto/semel/v1/audit.proto).
        query.scan_limit = Some(self.scan_budget());
        let since_micros = query.since_micros;
        // An auditor reading the log reads personal data: the query itself
        // is recorded (who asked, about whom, with which filters) before
        // the answer leaves.
        let (page, _) = self
            .broker
            .audited(&caller, async |change: &mut Change| {
                let described = record_query(change, &query);
                let page = self.query_page(query).await?;
                change.detail = format!("{described}: {} entries read", page.entries.len());
                Ok((page, nothing_to_undo()))
            })
            .await?;
        let entries = page.entries;
        let next_page_token = match page.resume_before {
            Some(resume) if entries.len() < limit => resume.to_string(),
            _ => next_page(&entries, limit),
        };
        let archived = self.archived_part(since_micros);
        Ok(Response::new(proto::ListAuditEntriesResponse {
            entries: entries.iter().map(audit_entry_to_proto).collect(),
            next_page_token,
            archived_before_sequence: archived.map_or(0, |a| a.before),
            archived_until: archived.map(|a| timestamp_micros(a.until_micros)),
        }))
    }

    async fn get_audit_head(
        &self,
        req: Request<proto::GetAuditHeadRequest>,
    ) -> Result<Response<proto::GetAuditHeadResponse>, Status> {
        self.broker.admit(&req).await?;
        let (size, head) = self
            .broker
            .storage()
            .audit
            .head()
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(proto::GetAuditHeadResponse {
            size,
            head_hash: head.to_vec(),
        }))
    }

    async fn list_citizen_accesses(
        &self,
        req: Request<proto::ListCitizenAccessesRequest>,
    ) -> Result<Response<proto::ListCitizenAccessesResponse>, Status> {
        self.citizen_accesses(req).await
    }

    async fn get_latest_checkpoint(
        &self,
        req: Request<proto::GetLatestCheckpointRequest>,
    ) -> Result<Response<proto::GetLatestCheckpointResponse>, Status> {
        self.broker.admit(&req).await?;
        let log = &self.broker.storage().audit;
        // The newest checkpoint with its witnesses' cosignatures, once they
        // have cosigned it (the note's log signature comes first either way).
        let cosigned = log.cosigned().await.map_err(ApiError::from)?;
        let latest = log.latest_checkpoint().await.map_err(ApiError::from)?;
        Ok(Response::new(proto::GetLatestCheckpointResponse {
            checkpoint: latest.map(|c| proto::Checkpoint {
                origin: c.checkpoint.origin,
                tree_size: c.checkpoint.size,
                root_hash: c.checkpoint.root.to_vec(),
                signed_note: cosigned
                    .filter(|n| n.starts_with(&c.note))
                    .unwrap_or(c.note),
            }),
            verifier_key: log.verifier_key().unwrap_or_default(),
        }))
    }

    async fn get_inclusion_proof(
        &self,
        req: Request<proto::GetInclusionProofRequest>,
    ) -> Result<Response<proto::GetInclusionProofResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let proto::GetInclusionProofRequest {
            sequence,
            tree_size,
        } = req.into_inner();
        let size = match tree_size {
            0 => self
                .broker
                .storage()
                .audit
                .latest_checkpoint()
                .await
                .map_err(ApiError::from)?
                .map(|c| c.checkpoint.size)
                .ok_or_else(|| {
                    ApiError::new(
                        tonic::Code::FailedPrecondition,
                        "NO_CHECKPOINT",
                        "no checkpoint has been signed yet; give tree_size, or retry shortly",
                    )
                })?,
            n => n,
        };
        let broker = self.broker.clone();
        // The proof returns the entry, national number included: a read of
        // personal data, recorded before it leaves.
        let ((stored, proof), _) = self
            .broker
            .audited(&caller, async |change: &mut Change| {
                change.detail = format!("inclusion proof of entry {sequence} in tree size {size}");
                let log = &broker.storage().audit;
                let proof = log.inclusion_proof(sequence, size).await?;
                let encoding = log.entry(sequence).await?;
                let stored = StoredEntry {
                    entry: semel_core::AuditEntry::decode(&encoding).map_err(|e| {
                        ApiError::from(semel_storage::StorageError::Corrupt(format!(
                            "audit entry {sequence}: {e}"
                        )))
                    })?,
                    hash: semel_core::entry_hash(&encoding),
                };
                // Checked before anything of the entry goes into the call's
                // own record: a refusal records what was asked (the
                // sequence number), never what was refused, since the
                // caller's own auditor reads the caller's entries.
                if !caller.audits_everything() && stored.entry.record.consumer != caller.org.kbo {
                    return Err(ApiError::denied(
                        "OTHER_ORGANISATION",
                        "your auditors prove your own organisation's entries only",
                    ));
                }
                change.citizen = stored.entry.record.citizen;
                Ok(((stored, proof), nothing_to_undo()))
            })
            .await?;
        let mut entry = audit_entry_to_proto(&stored);
        entry.encoding = stored.entry.to_bytes();
        Ok(Response::new(proto::GetInclusionProofResponse {
            entry: Some(entry),
            tree_size: size,
            proof: proof.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn list_checkpoints(
        &self,
        req: Request<proto::ListCheckpointsRequest>,
    ) -> Result<Response<proto::ListCheckpointsResponse>, Status> {
        self.broker.admit(&req).await?;
        let proto::ListCheckpointsRequest {
            page_size,
            page_token,
        } = req.into_inner();
        let limit = page_limit(page_size)?;
        let below = page_start(&page_token)?.unwrap_or(u64::MAX);
        let log = &self.broker.storage().audit;
        let mut all = log.checkpoints().await.map_err(ApiError::from)?;
        all.retain(|c| c.checkpoint.size < below);
        all.sort_by_key(|c| std::cmp::Reverse(c.checkpoint.size));
        // Two checkpoints of one size with different roots are a split
        // view: both are shown.
        all.dedup_by(|a, b| a.checkpoint == b.checkpoint);
        let more = all.len() > limit;
        all.truncate(limit);
        let next_page_token = match all.last() {
            Some(last) if more => last.checkpoint.size.to_string(),
            _ => String::new(),
        };
        // The newest checkpoint the witnesses cosigned carries their
        // cosignatures here too: while they have not yet cosigned the
        // latest, an auditor who requires them proves against that one.
        let cosigned = log.cosigned().await.map_err(ApiError::from)?;
        Ok(Response::new(proto::ListCheckpointsResponse {
            checkpoints: all
                .into_iter()
                .map(|c| proto::Checkpoint {
                    origin: c.checkpoint.origin,
                    tree_size: c.checkpoint.size,
                    root_hash: c.checkpoint.root.to_vec(),
                    signed_note: cosigned
                        .as_ref()
                        .filter(|n| n.starts_with(&c.note))
                        .cloned()
                        .unwrap_or(c.note),
                })
                .collect(),
            next_page_token,
            verifier_key: log.verifier_key().unwrap_or_default(),
        }))
    }

    async fn summarise_audit_entries(
        &self,
        req: Request<proto::SummariseAuditEntriesRequest>,
    ) -> Result<Response<proto::SummariseAuditEntriesResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        // A summary reads up to a scan budget of entries: rationed per
        // organisation, as lookups are, and counted among its audit calls.
        if let Err(wait) = self
            .broker
            .audit_summaries
            .admit(caller.org.kbo, std::time::Instant::now())
        {
            let error = ApiError {
                retry_after: Some(wait),
                ..ApiError::new(
                    tonic::Code::ResourceExhausted,
                    "RATE_LIMITED",
                    format!(
                        "your organisation asked for more summaries of the audit log than it may; retry in {} ms",
                        wait.as_millis().max(1)
                    ),
                )
            };
            return Err(self
                .broker
                .refuse(&caller, error, ReasonCode::RateLimited, None)
                .await
                .into());
        }
        let _call = self.enter_call(&caller).await?;
        let query = self.scoped_query(&caller, req.into_inner()).await?;
        let since_micros = query.since_micros;
        // Counting entries reads them: recorded like a search.
        let (summary, _) = self
            .broker
            .audited(&caller, async |change: &mut Change| {
                let described = record_query(change, &query);
                let summary = self.summarise(query).await?;
                change.detail = format!("{described}: {} entries counted", summary.total);
                Ok((summary, nothing_to_undo()))
            })
            .await?;
        let archived = self.archived_part(since_micros);
        Ok(Response::new(proto::SummariseAuditEntriesResponse {
            archived_until: archived.map(|a| timestamp_micros(a.until_micros)),
            ..summary
        }))
    }

    async fn get_consistency_proof(
        &self,
        req: Request<proto::GetConsistencyProofRequest>,
    ) -> Result<Response<proto::GetConsistencyProofResponse>, Status> {
        self.broker.admit(&req).await?;
        let proto::GetConsistencyProofRequest {
            first_tree_size,
            second_tree_size,
        } = req.into_inner();
        let proof = self
            .broker
            .storage()
            .audit
            .consistency_proof(first_tree_size, second_tree_size)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(proto::GetConsistencyProofResponse {
            proof: proof.iter().map(|h| h.to_vec()).collect(),
        }))
    }
}
