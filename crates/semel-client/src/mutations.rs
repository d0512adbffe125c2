//! Changes of a source's datasets: published by the source, pulled,
//! streamed and acknowledged by the consumers told of them.

use std::collections::{BTreeMap, HashMap};

use semel_proto::{self as proto, value::Kind};
use serde_json::{Value as Json, json};

use crate::Client;
use crate::error::{CallError, CallResult, usage};
use crate::json::{lost_json, mutation_event_json};

/// A change for `semel source publish`.
#[derive(Debug, Clone, Default)]
pub struct NewMutation {
    /// Your own id of the event; publishing it again stores nothing new.
    pub event_id: String,
    pub dataset: String,
    pub citizen: String,
    /// `created`, `changed` or `ended`.
    pub kind: String,
    /// YYYY-MM-DD
    pub effective_date: String,
    /// `name=value`, typed by the dataset's definition of the field.
    pub fields: Vec<String>,
}

/// A subscription to the caller's changes (`semel subscribe`).
pub struct Subscription {
    stream: tonic::Streaming<proto::SubscribeResponse>,
}

impl Subscription {
    /// The next change (or notice of changes lost), as JSON; `None` when
    /// the broker ended the stream.
    pub async fn next(&mut self) -> Result<Option<Json>, CallError> {
        Ok(self.stream.message().await?.map(|r| match r.item {
            Some(proto::subscribe_response::Item::Event(e)) => mutation_event_json(&e),
            Some(proto::subscribe_response::Item::Lost(l)) => lost_json(&l),
            None => Json::Null,
        }))
    }
}

impl Client {
    /// Publishes changes of the caller's datasets (a source). Field values
    /// are typed by the dataset's definition, read from the registry.
    pub async fn publish_mutations(&self, changes: Vec<NewMutation>) -> CallResult {
        let mut datasets: BTreeMap<String, proto::Dataset> = BTreeMap::new();
        let mut mutations = Vec::with_capacity(changes.len());
        for c in changes {
            if !datasets.contains_key(&c.dataset) {
                let d = self
                    .registry()
                    .get_dataset(proto::GetDatasetRequest {
                        name: c.dataset.clone(),
                    })
                    .await?
                    .into_inner()
                    .dataset
                    .unwrap_or_default();
                datasets.insert(c.dataset.clone(), d);
            }
            let dataset = &datasets[&c.dataset];
            let kind = match c.kind.as_str() {
                "created" => proto::MutationKind::Created,
                "changed" => proto::MutationKind::Changed,
                "ended" => proto::MutationKind::Ended,
                other => {
                    return Err(usage(format!(
                        "{other}: a change is created, changed or ended"
                    )));
                }
            };
            let mut fields = HashMap::new();
            for f in &c.fields {
                let (name, text) = f
                    .split_once('=')
                    .ok_or_else(|| usage(format!("{f}: write a field as name=value")))?;
                let def = dataset
                    .fields
                    .iter()
                    .find(|d| d.name == name)
                    .ok_or_else(|| {
                        usage(format!(
                            "{} has no field {name}; its fields are {}",
                            c.dataset,
                            dataset
                                .fields
                                .iter()
                                .map(|d| d.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?;
                let value = match proto::FieldType::try_from(def.r#type) {
                    Ok(proto::FieldType::String) => Kind::StringValue(text.to_owned()),
                    Ok(proto::FieldType::Date) => Kind::DateValue(text.to_owned()),
                    Ok(proto::FieldType::Int) => Kind::IntValue(
                        text.parse()
                            .map_err(|_| usage(format!("{name}: {text} is not a whole number")))?,
                    ),
                    Ok(proto::FieldType::Bool) => {
                        Kind::BoolValue(text.parse().map_err(|_| {
                            usage(format!("{name}: write true or false, not {text}"))
                        })?)
                    }
                    _ => {
                        return Err(usage(format!(
                            "{name} holds records or lists: publish it through the API"
                        )));
                    }
                };
                fields.insert(name.to_owned(), proto::Value { kind: Some(value) });
            }
            mutations.push(proto::Mutation {
                source_event_id: c.event_id,
                dataset: c.dataset,
                citizen: c.citizen,
                kind: kind as i32,
                effective_date: c.effective_date,
                fields,
            });
        }
        let r = self
            .mutations()
            .publish_mutations(proto::PublishMutationsRequest { mutations })
            .await?
            .into_inner();
        Ok(Json::Array(
            r.results
                .iter()
                .map(|p| {
                    json!({
                        "source_event_id": p.source_event_id,
                        "duplicate": p.duplicate,
                        "request_id": p.request_id,
                    })
                })
                .collect(),
        ))
    }

    /// Subscribes to the caller's changes after `after` (0: after the last
    /// acknowledged one).
    pub async fn subscribe(&self, after: u64) -> Result<Subscription, CallError> {
        let stream = self
            .mutations()
            .subscribe(proto::SubscribeRequest { after })
            .await?
            .into_inner();
        Ok(Subscription { stream })
    }

    /// The caller's changes after `after`, waiting up to `wait_seconds`.
    pub async fn pull_mutations(&self, after: u64, max: i32, wait_seconds: i32) -> CallResult {
        let r = self
            .mutations()
            .pull_mutations(proto::PullMutationsRequest {
                after,
                max_events: max,
                wait_seconds,
            })
            .await?
            .into_inner();
        Ok(json!({
            "events": r.events.iter().map(mutation_event_json).collect::<Vec<_>>(),
            "lost": r.lost.as_ref().map(lost_json),
            "acknowledged": r.acknowledged,
            "last_position": r.last_position,
        }))
    }

    /// Acknowledges the caller's changes up to `position`.
    pub async fn acknowledge_mutations(&self, position: u64) -> CallResult {
        let r = self
            .mutations()
            .acknowledge_mutations(proto::AcknowledgeMutationsRequest { position })
            .await?
            .into_inner();
        Ok(json!({"acknowledged": r.acknowledged, "pending": r.pending}))
    }
}
