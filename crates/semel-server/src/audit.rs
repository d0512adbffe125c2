//! `AuditService`: auditors' view of the log. For now the operator's
//! organisation reads it; per-person roles (auditor, citizen) come with
//! end-user identity.

use std::sync::Arc;

use semel_core::{Niss, Role};
use semel_store::AuditQuery;
use tonic::{Request, Response, Status};

use crate::convert::{audit_entry_to_proto, micros, parse_kbo};
use crate::error::ApiError;
use crate::proto::{self, audit_service_server::AuditService as Rpc};
use crate::state::Broker;

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

pub struct AuditService {
    broker: Arc<Broker>,
}

impl AuditService {
    pub fn new(broker: Arc<Broker>) -> Self {
        AuditService { broker }
    }
}

#[tonic::async_trait]
impl Rpc for AuditService {
    async fn list_audit_entries(
        &self,
        req: Request<proto::ListAuditEntriesRequest>,
    ) -> Result<Response<proto::ListAuditEntriesResponse>, Status> {
        self.broker
            .authenticate(&req)?
            .require(Role::Operator, "reading the audit log")?;
        let proto::ListAuditEntriesRequest {
            citizen,
            consumer_kbo,
            since,
            until,
            page_size,
            page_token,
        } = req.into_inner();
        let citizen = if citizen.is_empty() {
            None
        } else {
            Some(Niss::parse(&citizen).map_err(|e| {
                ApiError::invalid("citizen", "INVALID_CITIZEN", format!("citizen: {e}"))
            })?)
        };
        let consumer = if consumer_kbo.is_empty() {
            None
        } else {
            Some(parse_kbo("consumer_kbo", &consumer_kbo)?)
        };
        let limit = match page_size {
            0 => DEFAULT_PAGE,
            n if n < 0 => {
                return Err(ApiError::invalid(
                    "page_size",
                    "INVALID_ARGUMENT",
                    "page_size cannot be negative",
                )
                .into());
            }
            n => (n as usize).min(MAX_PAGE),
        };
        let before_sequence = if page_token.is_empty() {
            None
        } else {
            Some(page_token.parse::<u64>().map_err(|_| {
                ApiError::invalid(
                    "page_token",
                    "INVALID_ARGUMENT",
                    "page_token must be copied from a previous response's next_page_token",
                )
            })?)
        };
        let query = AuditQuery {
            citizen,
            consumer,
            since_micros: since.as_ref().map(micros),
            until_micros: until.as_ref().map(micros),
            before_sequence,
            limit,
        };
        let broker = self.broker.clone();
        let entries = tokio::task::spawn_blocking(move || broker.store().audit().query(&query))
            .await
            .map_err(|e| ApiError::internal(format!("audit query failed: {e}")))?
            .map_err(ApiError::from)?;
        let next_page_token = match entries.last() {
            Some(last) if entries.len() == limit && last.entry.sequence > 0 => {
                last.entry.sequence.to_string()
            }
            _ => String::new(),
        };
        Ok(Response::new(proto::ListAuditEntriesResponse {
            entries: entries.iter().map(audit_entry_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn get_audit_head(
        &self,
        req: Request<proto::GetAuditHeadRequest>,
    ) -> Result<Response<proto::GetAuditHeadResponse>, Status> {
        self.broker
            .authenticate(&req)?
            .require(Role::Operator, "reading the audit log")?;
        let (size, head) = self.broker.store().audit().head();
        Ok(Response::new(proto::GetAuditHeadResponse {
            size,
            head_hash: head.to_vec(),
        }))
    }
}
