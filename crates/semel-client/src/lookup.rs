//! The lookup: one question of a consumer to a source, through the broker.

use semel_proto as proto;
use serde_json::{Value as Json, json};

use crate::Client;
use crate::error::CallResult;
use crate::json::{sorted, value_json};

/// What `semel lookup` asks.
#[derive(Debug, Clone, Default)]
pub struct LookupArgs {
    pub citizen: String,
    pub dataset: String,
    pub fields: Vec<String>,
    pub purpose: String,
    pub reference_date: Option<String>,
    pub consumer_reference: Option<String>,
    /// Yes/no checks, see [`parse_check`](crate::parse_check).
    pub checks: Vec<proto::Check>,
}

impl Client {
    pub async fn lookup(&self, args: LookupArgs) -> CallResult {
        let mut client =
            proto::lookup_service_client::LookupServiceClient::new(self.channel.clone());
        let r = client
            .lookup(proto::LookupRequest {
                citizen: args.citizen,
                dataset: args.dataset,
                fields: args.fields,
                purpose: args.purpose,
                reference_date: args.reference_date.unwrap_or_default(),
                consumer_reference: args.consumer_reference.unwrap_or_default(),
                checks: args.checks,
            })
            .await?
            .into_inner();
        let fields: serde_json::Map<String, Json> = r
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect();
        Ok(json!({
            "request_id": r.request_id,
            "authorisation_reference": r.authorisation_reference,
            "source_kbo": r.source_kbo,
            "fields": sorted(fields),
            "checks": r.checks.iter().map(|c| json!({
                "field": c.field,
                "answer": proto::CheckAnswer::try_from(c.answer).map_or("UNKNOWN", |a| {
                    a.as_str_name().trim_start_matches("CHECK_ANSWER_")
                }),
            })).collect::<Vec<_>>(),
        }))
    }
}
