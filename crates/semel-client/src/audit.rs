//! The audit log's calls: entries by filter, a citizen's view of who consulted
//! their data, the signed checkpoint and the head.

use semel_proto as proto;
use serde_json::{Value as Json, json};

use crate::Client;
use crate::error::{CallResult, usage};
use crate::json::{audit_json, enum_name, hex, parse_time, timestamp_text};

/// Filters of `semel audit list`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub citizen: Option<String>,
    pub consumer: Option<String>,
    /// The person (token `sub`).
    pub end_user: Option<String>,
    pub authorisation: Option<String>,
    pub dataset: Option<String>,
    /// "allowed" or "refused".
    pub decision: Option<String>,
    /// A reason code, e.g. NO_ACTIVE_FILE.
    pub reason: Option<String>,
    /// RFC 3339 times.
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: i32,
    pub page_token: Option<String>,
}

impl Client {
    pub async fn audit_list(&self, filter: AuditFilter) -> CallResult {
        let mut client = proto::audit_service_client::AuditServiceClient::new(self.channel.clone());
        let r = client
            .list_audit_entries(proto::ListAuditEntriesRequest {
                citizen: filter.citizen.unwrap_or_default(),
                consumer_kbo: filter.consumer.unwrap_or_default(),
                since: filter.since.as_deref().map(parse_time).transpose()?,
                until: filter.until.as_deref().map(parse_time).transpose()?,
                page_size: filter.limit,
                page_token: filter.page_token.unwrap_or_default(),
                end_user: filter.end_user.unwrap_or_default(),
                authorisation_reference: filter.authorisation.unwrap_or_default(),
                dataset: filter.dataset.unwrap_or_default(),
                reason: filter.reason.unwrap_or_default(),
                decision: match filter.decision.as_deref() {
                    None => proto::AuditDecision::Unspecified,
                    Some("allowed") => proto::AuditDecision::Allowed,
                    Some("refused") => proto::AuditDecision::Refused,
                    Some(other) => {
                        return Err(usage(format!("--decision {other}: use allowed or refused")));
                    }
                } as i32,
            })
            .await?
            .into_inner();
        Ok(json!({
            "entries": r.entries.iter().map(audit_json).collect::<Vec<_>>(),
            "next_page_token": r.next_page_token,
        }))
    }

    /// The citizen's view: who consulted a citizen's data.
    pub async fn citizen_accesses(&self, citizen: String, limit: i32) -> CallResult {
        let mut client = proto::audit_service_client::AuditServiceClient::new(self.channel.clone());
        let r = client
            .list_citizen_accesses(proto::ListCitizenAccessesRequest {
                citizen,
                page_size: limit,
                page_token: String::new(),
            })
            .await?
            .into_inner();
        let accesses: Vec<Json> = r
            .accesses
            .iter()
            .map(|a| {
                let proto::CitizenAccess {
                    time,
                    consumer_kbo,
                    consumer_name,
                    source_kbo,
                    source_name,
                    dataset,
                    fields,
                    purpose,
                    authorisation_reference,
                    decision,
                    reason,
                    checked_fields,
                    action,
                    purpose_description,
                    legal_basis,
                    issuing_body,
                    dataset_description,
                } = a;
                json!({
                    "time": time.as_ref().map(timestamp_text),
                    "consumer_kbo": consumer_kbo,
                    "consumer_name": consumer_name,
                    "source_kbo": source_kbo,
                    "source_name": source_name,
                    "dataset": dataset,
                    "fields": fields,
                    "checked_fields": checked_fields,
                    "action": action,
                    "purpose": purpose,
                    "purpose_description": purpose_description,
                    "legal_basis": legal_basis,
                    "issuing_body": issuing_body,
                    "dataset_description": dataset_description,
                    "authorisation": authorisation_reference,
                    "decision": enum_name(proto::AuditDecision::try_from(*decision).ok().map(|s| s.as_str_name()), "AUDIT_DECISION_"),
                    "reason": reason,
                })
            })
            .collect();
        Ok(json!({"accesses": accesses, "next_page_token": r.next_page_token}))
    }

    /// The newest signed checkpoint and the verifier key.
    pub async fn latest_checkpoint(&self) -> CallResult {
        let mut client = proto::audit_service_client::AuditServiceClient::new(self.channel.clone());
        let r = client
            .get_latest_checkpoint(proto::GetLatestCheckpointRequest {})
            .await?
            .into_inner();
        Ok(json!({
            "verifier_key": r.verifier_key,
            "origin": r.checkpoint.as_ref().map(|c| c.origin.clone()),
            "tree_size": r.checkpoint.as_ref().map(|c| c.tree_size),
            "root_hash": r.checkpoint.as_ref().map(|c| hex(&c.root_hash)),
            "signed_note": r.checkpoint.as_ref().map(|c| c.signed_note.clone()),
        }))
    }

    pub async fn audit_head(&self) -> CallResult {
        let mut client = proto::audit_service_client::AuditServiceClient::new(self.channel.clone());
        let r = client
            .get_audit_head(proto::GetAuditHeadRequest {})
            .await?
            .into_inner();
        Ok(json!({"size": r.size, "head_hash": hex(&r.head_hash)}))
    }
}
