//! `MutationService`: sources publish changes of their data; the broker
//! routes each to the consumers concerned and holds it in their durable
//! queues until they acknowledge it.
//!
//! Publishing: every change of a request is checked first (the caller is
//! the dataset's source, the number is valid, the fields are the dataset's)
//! and the request is refused whole if one is not. Then each change, in
//! order, is routed (`semel_core::mutation::route`: the lookup's rules,
//! asked on each consumer's behalf), stored with its queue entries, and
//! recorded in the audit log; the answer leaves once all are durable.
//!
//! Delivering: a change is recorded in the audit log (who received which
//! fields about whom, under which authorisation) before it is sent, and the
//! authorisation is checked again at that moment: one suspended or ended
//! since the change was routed delivers nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use semel_core::mutation::{MutationFacts, MutationKind, route};
use semel_core::{
    AuditDecision, AuthorisationStatus, DatasetName, FieldName, Kbo, Niss, Outcome, ReasonCode,
    RefusalReason, brussels_today,
};
use semel_storage::{Accepted, QueueState, Queued, Routed, StorageError};
use time::OffsetDateTime;
use tonic::{Code, Request, Response, Status};

use crate::audited::{Change, Undo, nothing_to_undo};
use crate::convert::{format_date, parse_date, timestamp_micros};
use crate::error::ApiError;
use crate::proto;
use crate::state::{Broker, Caller, Credentials};

/// The most changes in one publication.
pub const MAX_PUBLISH: usize = 1000;
/// The longest source event id.
const MAX_EVENT_ID: usize = 64;
/// Changes read from a queue at once.
const PAGE: usize = 100;
/// The most changes one pull answers.
const MAX_PULL: usize = 1000;
/// The longest a pull waits for a first change.
const MAX_WAIT_S: i32 = 30;
/// How often a subscription looks at its queue without being woken: the
/// bound on how late a change published through another broker arrives.
const POLL: Duration = Duration::from_millis(250);

pub struct MutationService {
    broker: Arc<Broker>,
}

impl MutationService {
    pub fn new(broker: Arc<Broker>) -> Self {
        MutationService { broker }
    }
}

fn kind_from_proto(k: i32) -> Option<MutationKind> {
    match proto::MutationKind::try_from(k) {
        Ok(proto::MutationKind::Created) => Some(MutationKind::Created),
        Ok(proto::MutationKind::Changed) => Some(MutationKind::Changed),
        Ok(proto::MutationKind::Ended) => Some(MutationKind::Ended),
        _ => None,
    }
}

/// A published change, checked.
struct Checked {
    event_id: String,
    dataset: DatasetName,
    citizen: Niss,
    kind: MutationKind,
    effective: time::Date,
    fields: BTreeMap<String, proto::Value>,
    changed: BTreeSet<FieldName>,
}

/// Checks one change of a publication; `at` names it in messages.
fn check(
    broker: &Broker,
    caller: &Caller,
    at: usize,
    m: proto::Mutation,
) -> Result<Checked, ApiError> {
    let say = |field: &'static str, reason: &'static str, what: String| {
        ApiError::invalid(field, reason, format!("mutations[{at}]: {what}"))
    };
    let id = m.source_event_id;
    if id.is_empty() || id.chars().count() > MAX_EVENT_ID || id.chars().any(char::is_control) {
        return Err(say(
            "mutations.source_event_id",
            "INVALID_ARGUMENT",
            format!(
                "source_event_id must be 1 to {MAX_EVENT_ID} printable characters, your own id of the event"
            ),
        ));
    }
    let citizen = Niss::parse(&m.citizen).map_err(|e| {
        say(
            "mutations.citizen",
            "INVALID_CITIZEN",
            format!("citizen: {e}"),
        )
    })?;
    let snapshot = broker.snapshot();
    let dataset = DatasetName::new(m.dataset.clone())
        .ok()
        .and_then(|d| snapshot.routes.get(&d).map(|r| r.dataset.clone()))
        .ok_or_else(|| {
            ApiError::not_found(
                "UNKNOWN_DATASET",
                format!(
                    "mutations[{at}]: no dataset {:?} is registered; ListDatasets shows those that are",
                    m.dataset
                ),
            )
        })?;
    if dataset.source != caller.org.kbo {
        return Err(ApiError::new(
            Code::PermissionDenied,
            "NOT_DATASET_SOURCE",
            format!(
                "mutations[{at}]: {} is published by {}, not by your organisation: only a dataset's source publishes its changes",
                dataset.name,
                dataset.source.as_str()
            ),
        ));
    }
    let kind = kind_from_proto(m.kind).ok_or_else(|| {
        say(
            "mutations.kind",
            "INVALID_ARGUMENT",
            "kind must be CREATED, CHANGED or ENDED".into(),
        )
    })?;
    let effective = if m.effective_date.is_empty() {
        brussels_today(OffsetDateTime::now_utc())
    } else {
        parse_date("mutations.effective_date", &m.effective_date)
            .map_err(|e| say("mutations.effective_date", "INVALID_DATE", e.message))?
    };
    let mut changed = BTreeSet::new();
    for name in m.fields.keys() {
        match dataset.field(name) {
            Some(f) => {
                changed.insert(f.name.clone());
            }
            None => {
                return Err(say(
                    "mutations.fields",
                    "UNKNOWN_FIELD",
                    format!(
                        "{} has no field {name:?}; its fields are {}",
                        dataset.name,
                        dataset
                            .fields
                            .iter()
                            .map(|f| f.name.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }
    if changed.is_empty() && kind != MutationKind::Ended {
        return Err(say(
            "mutations.fields",
            "INVALID_ARGUMENT",
            "a creation or change carries the new values of the fields it changes".into(),
        ));
    }
    Ok(Checked {
        event_id: id,
        dataset: dataset.name,
        citizen,
        kind,
        effective,
        fields: m.fields.into_iter().collect(),
        changed,
    })
}

impl Broker {
    /// Routes one checked change, stores it with its queue entries and
    /// says what was done (for the audit entry).
    async fn publish_one(
        &self,
        caller: &Caller,
        c: Checked,
        change: &mut Change,
    ) -> Result<(proto::PublishedMutation, Undo), ApiError> {
        change.citizen = Some(c.citizen);
        change.dataset = c.dataset.to_string();
        change.source = Some(caller.org.kbo);
        change.reference = c.event_id.clone();
        let persons = &self.storage().persons;
        let resolved = persons.resolve(&c.citizen).await?;
        change.citizen = Some(resolved.current);
        change.citizen_as_given = resolved.given;
        let snapshot = self.snapshot();
        let candidates: Vec<&semel_core::Authorisation> = snapshot
            .authorisations
            .values()
            .filter(|a| a.dataset == c.dataset && a.receives_mutations)
            .collect();
        let consumers: BTreeSet<Kbo> = candidates.iter().map(|a| a.consumer).collect();
        let mut files = Vec::new();
        for consumer in &consumers {
            files.extend(persons.files_of(consumer, &resolved).await?);
        }
        let consents = if candidates.iter().any(|a| a.consent_required) {
            persons.consents_of(&resolved).await?
        } else {
            Vec::new()
        };
        let now = OffsetDateTime::now_utc();
        let now_micros = (now.unix_timestamp_nanos() / 1000) as i64;
        let routes = route(
            &MutationFacts {
                dataset: &c.dataset,
                changed: &c.changed,
                effective: c.effective,
                today: brussels_today(now),
                now,
                files: &files,
                consents: &consents,
            },
            candidates.iter().copied(),
        );
        let mut routed = Vec::with_capacity(routes.len());
        for r in &routes {
            let event = proto::MutationEvent {
                position: 0,
                source_kbo: caller.org.kbo.as_str().to_owned(),
                source_event_id: c.event_id.clone(),
                dataset: c.dataset.to_string(),
                citizen: resolved.current.as_str().to_owned(),
                kind: match c.kind {
                    MutationKind::Created => proto::MutationKind::Created,
                    MutationKind::Changed => proto::MutationKind::Changed,
                    MutationKind::Ended => proto::MutationKind::Ended,
                } as i32,
                effective_date: format_date(c.effective),
                fields: c
                    .fields
                    .iter()
                    .filter(|(k, _)| r.fields.iter().any(|f| f.as_str() == k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                checked_fields: r.checked.iter().map(ToString::to_string).collect(),
                authorisation_reference: r.authorisation.to_string(),
                file_id: r.file.clone(),
                published_at: Some(timestamp_micros(now_micros)),
            };
            routed.push(Routed {
                consumer: r.consumer,
                payload: event.encode_to_vec(),
            });
        }
        let accepted = self
            .storage()
            .mutations
            .accept(&caller.org.kbo, &c.event_id, now_micros, &routed)
            .await?;
        let fields: Vec<String> = c.changed.iter().map(ToString::to_string).collect();
        change.fields = fields.clone();
        let told: Vec<String> = routes
            .iter()
            .map(|r| format!("{} under {}", r.consumer.as_str(), r.authorisation))
            .collect();
        let (duplicate, undo): (bool, Undo) = match accepted {
            Accepted::Duplicate => {
                change.detail = format!(
                    "change {} published again: already stored, nothing queued",
                    c.event_id
                );
                (true, nothing_to_undo())
            }
            Accepted::New => {
                change.detail = format!(
                    "change {} ({}, effective {}) of fields [{}] queued for {} consumer(s){}{}",
                    c.event_id,
                    c.kind.as_str(),
                    format_date(c.effective),
                    fields.join(", "),
                    routes.len(),
                    if told.is_empty() { "" } else { ": " },
                    told.join("; ")
                );
                let store = self.storage().mutations.clone();
                let (source, id) = (caller.org.kbo, c.event_id.clone());
                (
                    false,
                    Box::pin(async move {
                        crate::audited::retry_undo("a published change", || {
                            let (store, id) = (store.clone(), id.clone());
                            async move { store.retract(&source, &id).await }
                        })
                        .await;
                    }),
                )
            }
        };
        Ok((
            proto::PublishedMutation {
                source_event_id: c.event_id,
                duplicate,
                consumers: if duplicate { 0 } else { routes.len() as u32 },
                request_id: String::new(),
            },
            undo,
        ))
    }

    /// Records one change delivered to `caller` and returns it to send; or
    /// records why it is not delivered (its authorisation no longer
    /// allows it) and returns `None`.
    async fn deliver_one(
        &self,
        caller: &Caller,
        queued: &Queued,
    ) -> Result<Option<proto::MutationEvent>, ApiError> {
        let mut event = proto::MutationEvent::decode(queued.payload.as_slice()).map_err(|e| {
            ApiError::from(StorageError::Corrupt(format!(
                "a queued change cannot be read: {e}"
            )))
        })?;
        event.position = queued.position;
        let mut record = self.audit_record(caller, crate::state::new_id());
        record.citizen = Niss::parse(&event.citizen).ok();
        record.dataset = event.dataset.clone();
        record.source = Kbo::parse(&event.source_kbo).ok();
        record.authorisation = Some(event.authorisation_reference.clone());
        record.consumer_reference = event.source_event_id.clone();
        record.reference_date = Some(event.effective_date.clone());
        let mut fields: Vec<String> = event.fields.keys().cloned().collect();
        fields.sort();
        let kind = kind_from_proto(event.kind).map_or("changed", MutationKind::as_str);
        record.detail = format!(
            "change {} of {} ({kind}, effective {}) delivered at position {}{}",
            event.source_event_id,
            event.source_kbo,
            event.effective_date,
            queued.position,
            if event.checked_fields.is_empty() {
                String::new()
            } else {
                format!(
                    "; fields it may only test changed: {}",
                    event.checked_fields.join(", ")
                )
            }
        );
        let snapshot = self.snapshot();
        let today = brussels_today(OffsetDateTime::now_utc());
        let auth = snapshot.authorisations.get(&event.authorisation_reference);
        record.purpose = auth.map(|a| a.purpose.to_string()).unwrap_or_default();
        let refusal = match auth {
            None => Some(RefusalReason::NoAuthorisation),
            Some(a) if a.consumer != caller.org.kbo || !a.receives_mutations => {
                Some(RefusalReason::NoAuthorisation)
            }
            Some(a) if a.status == AuthorisationStatus::Suspended => {
                Some(RefusalReason::AuthorisationSuspended)
            }
            Some(a) if a.valid_until.is_some_and(|u| today > u) => {
                Some(RefusalReason::AuthorisationExpired)
            }
            Some(_) => None,
        };
        if let Some(reason) = refusal {
            record.decision = AuditDecision::Refused;
            record.reason = Some(ReasonCode::Refused(reason));
            record.outcome = Outcome::NotForwarded;
            record
                .detail
                .push_str(": not sent, the authorisation no longer allows it");
            self.append_durably(record).await?;
            return Ok(None);
        }
        record.fields_requested = fields.clone();
        record.fields_returned = fields;
        record.outcome = Outcome::Answered;
        self.append_durably(record).await?;
        Ok(Some(event))
    }

    /// Reads the caller's queue after `after`: the changes to send (each
    /// recorded), the notice of changes lost, and the last position looked
    /// at.
    async fn next_changes(
        &self,
        caller: &Caller,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<proto::MutationEvent>, Option<proto::MutationsLost>, u64), ApiError> {
        let store = &self.storage().mutations;
        let consumer = caller.org.kbo;
        let state = store.queue_state(&consumer).await?;
        let mut position = after;
        let mut lost = None;
        if state.lost_through > position {
            lost = Some(proto::MutationsLost {
                first_position: position + 1,
                last_position: state.lost_through,
            });
            position = state.lost_through;
        }
        let queued = store.pending(&consumer, position, limit).await?;
        let mut events = Vec::with_capacity(queued.len());
        for q in &queued {
            if let Some(e) = self.deliver_one(caller, q).await? {
                events.push(e);
            }
            position = q.position;
        }
        if !queued.is_empty() {
            store.delivered(&consumer, position).await?;
        }
        Ok((events, lost, position))
    }

    /// Drops changes not acknowledged within the retention period, every
    /// minute, until aborted.
    pub(crate) fn expire_mutations(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let broker = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let retention = broker.mutation_settings().retention;
                let before = OffsetDateTime::now_utc() - retention;
                let before = (before.unix_timestamp_nanos() / 1000) as i64;
                match broker.storage().mutations.expire(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(
                        dropped = n,
                        "changes not acknowledged within the retention period were dropped; their consumers are told"
                    ),
                    Err(e) => tracing::warn!(
                        error = %semel_core::redact_national_numbers(&e.to_string()),
                        "could not drop expired changes; trying again in a minute"
                    ),
                }
            }
        })
    }
}

/// The end of a subscription when the broker shuts down.
fn shutting_down() -> ApiError {
    ApiError::retryable(
        Code::Unavailable,
        "SHUTTING_DOWN",
        "the broker is shutting down; subscribe again (through another broker): delivery resumes after your last acknowledgement",
    )
}

fn start_after(after: u64, state: &QueueState) -> u64 {
    if after == 0 {
        state.acknowledged
    } else {
        after
    }
}

type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<proto::SubscribeResponse, Status>> + Send>>;

/// A subscription's credentials, owned: checked again before each change.
struct Held {
    peer: Option<Arc<crate::tls::PeerIdentity>>,
    token: Option<String>,
    rule: Option<&'static crate::permissions::Rule>,
}

#[tonic::async_trait]
impl proto::mutation_service_server::MutationService for MutationService {
    async fn publish_mutations(
        &self,
        req: Request<proto::PublishMutationsRequest>,
    ) -> Result<Response<proto::PublishMutationsResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let broker = &self.broker;
        let mutations = req.into_inner().mutations;
        // Every change is checked before any is stored: a bad one refuses
        // the request whole, and the refusal is recorded. An accepted
        // request gets one entry per change.
        let checked = (|| {
            if mutations.is_empty() || mutations.len() > MAX_PUBLISH {
                return Err(Box::new((
                    String::new(),
                    ApiError::invalid(
                        "mutations",
                        "INVALID_ARGUMENT",
                        format!(
                            "publish 1 to {MAX_PUBLISH} changes at once, not {}",
                            mutations.len()
                        ),
                    ),
                )));
            }
            let mut checked = Vec::with_capacity(mutations.len());
            for (at, m) in mutations.into_iter().enumerate() {
                let dataset = m.dataset.clone();
                checked.push(check(broker, &caller, at, m).map_err(|e| Box::new((dataset, e)))?);
            }
            Ok(checked)
        })();
        let checked = match checked {
            Ok(checked) => checked,
            Err(refused) => {
                let (dataset, e) = *refused;
                let refused = broker
                    .audited(&caller, async |change: &mut Change| {
                        if let Ok(d) = DatasetName::new(dataset)
                            && broker.snapshot().routes.contains_key(&d)
                        {
                            change.dataset = d.to_string();
                        }
                        Err::<((), Undo), _>(e)
                    })
                    .await;
                return Err(match refused {
                    Err(e) => e.into(),
                    Ok(_) => ApiError::internal("a refused publication was not refused").into(),
                });
            }
        };
        let mut results = Vec::with_capacity(checked.len());
        for c in checked {
            let (mut published, request_id) = broker
                .audited(&caller, async |change: &mut Change| {
                    broker.publish_one(&caller, c, change).await
                })
                .await?;
            published.request_id = request_id;
            results.push(published);
        }
        broker
            .mutations_queued
            .send_modify(|n| *n = n.wrapping_add(1));
        Ok(Response::new(proto::PublishMutationsResponse { results }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        req: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = self.broker.admit(&req).await?;
        let credentials = {
            let c = Credentials::of(&req);
            Held {
                peer: c.peer.cloned(),
                token: c.token.map(str::to_owned),
                rule: c.rule,
            }
        };
        let after = req.into_inner().after;
        let broker = self.broker.clone();
        let state = broker
            .storage()
            .mutations
            .queue_state(&caller.org.kbo)
            .await
            .map_err(ApiError::from)?;
        let mut position = start_after(after, &state);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<proto::SubscribeResponse, Status>>(16);
        tokio::spawn(async move {
            let mut woken = broker.mutations_queued.subscribe();
            let mut closing = broker.closing.subscribe();
            loop {
                if *closing.borrow_and_update() {
                    let _ = tx.send(Err(shutting_down().into())).await;
                    return;
                }
                // Checked again before each round, as a batch's items are: a
                // revoked certificate, an expired token or a suspension ends
                // the subscription.
                let caller = match broker.authorize_parts(&Credentials {
                    peer: credentials.peer.as_ref(),
                    token: credentials.token.as_deref(),
                    rule: credentials.rule,
                }) {
                    Ok(c) => c,
                    Err(denied) => {
                        let e = broker.record_refusal(*denied, None).await;
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                woken.borrow_and_update();
                let round = broker.next_changes(&caller, position, PAGE).await;
                let (events, lost, last) = match round {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let read_any = last != position || lost.is_some();
                position = last;
                if let Some(lost) = lost {
                    let item = proto::subscribe_response::Item::Lost(lost);
                    if tx
                        .send(Ok(proto::SubscribeResponse { item: Some(item) }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                for e in events {
                    let item = proto::subscribe_response::Item::Event(e);
                    if tx
                        .send(Ok(proto::SubscribeResponse { item: Some(item) }))
                        .await
                        .is_err()
                    {
                        // The consumer went away: what it was not sent stays
                        // unacknowledged and comes again when it returns.
                        return;
                    }
                }
                if read_any {
                    continue;
                }
                tokio::select! {
                    _ = woken.changed() => {}
                    _ = closing.changed() => {}
                    _ = tokio::time::sleep(POLL) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn pull_mutations(
        &self,
        req: Request<proto::PullMutationsRequest>,
    ) -> Result<Response<proto::PullMutationsResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let r = req.into_inner();
        if r.max_events < 0 || r.max_events as usize > MAX_PULL {
            return Err(ApiError::invalid(
                "max_events",
                "INVALID_ARGUMENT",
                format!("max_events must lie between 1 and {MAX_PULL} (0: 100)"),
            )
            .into());
        }
        if !(0..=MAX_WAIT_S).contains(&r.wait_seconds) {
            return Err(ApiError::invalid(
                "wait_seconds",
                "INVALID_ARGUMENT",
                format!("wait_seconds must lie between 0 and {MAX_WAIT_S}"),
            )
            .into());
        }
        let limit = if r.max_events == 0 {
            PAGE
        } else {
            r.max_events as usize
        };
        let broker = &self.broker;
        let store = &broker.storage().mutations;
        let state = store
            .queue_state(&caller.org.kbo)
            .await
            .map_err(ApiError::from)?;
        let after = start_after(r.after, &state);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(r.wait_seconds as u64);
        let mut woken = broker.mutations_queued.subscribe();
        let mut closing = broker.closing.subscribe();
        loop {
            woken.borrow_and_update();
            let closing_now = *closing.borrow_and_update();
            let (events, lost, _) = broker.next_changes(&caller, after, limit).await?;
            if !events.is_empty()
                || lost.is_some()
                || closing_now
                || tokio::time::Instant::now() >= deadline
            {
                let acknowledged = store
                    .queue_state(&caller.org.kbo)
                    .await
                    .map_err(ApiError::from)?
                    .acknowledged;
                return Ok(Response::new(proto::PullMutationsResponse {
                    events,
                    lost,
                    acknowledged,
                }));
            }
            tokio::select! {
                _ = woken.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = closing.changed() => {}
            }
        }
    }

    async fn acknowledge_mutations(
        &self,
        req: Request<proto::AcknowledgeMutationsRequest>,
    ) -> Result<Response<proto::AcknowledgeMutationsResponse>, Status> {
        let caller = self.broker.admit(&req).await?;
        let position = req.into_inner().position;
        let state = match self
            .broker
            .storage()
            .mutations
            .acknowledge(&caller.org.kbo, position)
            .await
        {
            Ok(s) => s,
            Err(StorageError::OutOfRange(m)) => {
                return Err(ApiError::new(
                    Code::OutOfRange,
                    "NOT_DELIVERED",
                    format!("{m}: acknowledge only positions you received"),
                )
                .into());
            }
            Err(e) => return Err(ApiError::from(e).into()),
        };
        Ok(Response::new(proto::AcknowledgeMutationsResponse {
            acknowledged: state.acknowledged,
            pending: state.head.saturating_sub(state.acknowledged),
        }))
    }
}
