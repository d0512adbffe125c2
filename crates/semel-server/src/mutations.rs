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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use semel_core::mutation::{MutationFacts, MutationKind, route};
use semel_core::{
    AuditDecision, AuditRecord, DatasetName, FieldName, Kbo, Niss, Outcome, ReasonCode,
    RefusalReason, brussels_today,
};
use semel_storage::{Accepted, QueueState, Queued, Routed, StorageError};
use time::OffsetDateTime;
use tonic::{Code, Request, Response, Status};

use crate::audited::{Change, Undo};
use crate::convert::{format_date, parse_date, timestamp_micros};
use crate::error::ApiError;
use crate::proto;
use crate::state::{Broker, Caller, Credentials};

/// The most changes in one publication.
pub const MAX_PUBLISH: usize = 1000;
/// The largest change (protobuf encoding), values included.
const MAX_CHANGE_BYTES: usize = 64 * 1024;
/// The longest source event id.
const MAX_EVENT_ID: usize = 64;
/// Changes read from a queue at once.
const PAGE: usize = 100;
/// The most changes one pull answers.
const MAX_PULL: usize = 1000;
/// The longest a pull waits for a first change.
const MAX_WAIT_S: i32 = 30;
/// The same, in milliseconds: a unary call's timeout must exceed it.
pub(crate) const MAX_WAIT_MS: u64 = MAX_WAIT_S as u64 * 1000;
/// How long a source's event ids are remembered (a retry within it is a
/// duplicate), at least: longer than any queue keeps the change itself.
const EVENT_IDS_KEPT: Duration = Duration::from_secs(400 * 24 * 3600);
/// The most subscriptions one organisation holds open on one broker.
const MAX_SUBSCRIPTIONS: usize = 4;
/// Pulls of changes one organisation may have in progress on one broker:
/// each may wait 30 seconds and reads the queue at every change, so more
/// would only hold the broker's connections and store for the same changes.
const MAX_PULLS: usize = 4;
/// How often a waiting subscription or pull checks its caller again (a
/// suspension, a revoked certificate, an expired token end it), in memory,
/// without reading its queue.
const RECHECK: Duration = Duration::from_millis(250);

/// Waits until the caller's credentials no longer pass (checked every
/// [`RECHECK`], in memory); for ever while they do.
async fn until_refused(broker: &Broker, credentials: &Held) {
    loop {
        tokio::time::sleep(RECHECK).await;
        if broker.authorize_parts(&credentials.parts()).is_err() {
            return;
        }
    }
}

/// Waits for the fallback poll, while this broker cannot hear changes
/// queued through other brokers; for ever (until woken) while it can.
async fn fallback_poll(broker: &Broker) {
    if broker
        .mutations_heard
        .load(std::sync::atomic::Ordering::Acquire)
    {
        std::future::pending::<()>().await
    } else {
        tokio::time::sleep(broker.mutation_settings().fallback_poll).await
    }
}

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

impl Checked {
    /// SHA-256 of the change as published (its fields in name order, their
    /// values canonically: records by key): the same event id is the same
    /// change only with the same digest.
    fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut text = |s: &str| {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        };
        text(self.dataset.as_str());
        text(self.citizen.as_str());
        text(self.kind.as_str());
        text(&format_date(self.effective));
        for (name, value) in &self.fields {
            text(name);
            canonical(value, &mut text);
        }
        h.finalize().into()
    }
}

/// A value, canonically (a record's fields sorted by name), to a digest.
fn canonical(v: &proto::Value, out: &mut impl FnMut(&str)) {
    use proto::value::Kind;
    match &v.kind {
        None => out("n"),
        Some(Kind::StringValue(s)) => {
            out("s");
            out(s)
        }
        Some(Kind::IntValue(i)) => {
            out("i");
            out(&i.to_string())
        }
        Some(Kind::BoolValue(b)) => out(if *b { "t" } else { "f" }),
        Some(Kind::DateValue(d)) => {
            out("d");
            out(d)
        }
        Some(Kind::RecordValue(r)) => {
            out("r");
            let mut keys: Vec<&String> = r.fields.keys().collect();
            keys.sort();
            out(&keys.len().to_string());
            for k in keys {
                out(k);
                canonical(&r.fields[k], out);
            }
        }
        Some(Kind::ListValue(l)) => {
            out("l");
            out(&l.values.len().to_string());
            for item in &l.values {
                canonical(item, out);
            }
        }
    }
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
    // Each consumer's queue holds a copy until it acknowledges: one change
    // is bounded, whatever the request's size.
    if m.encoded_len() > MAX_CHANGE_BYTES {
        return Err(ApiError::new(
            Code::OutOfRange,
            "REQUEST_TOO_LARGE",
            format!(
                "mutations[{at}] is {} bytes; a change carries at most {MAX_CHANGE_BYTES} bytes of new values",
                m.encoded_len()
            ),
        ));
    }
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
    if dataset.withdrawn {
        return Err(ApiError::new(
            Code::FailedPrecondition,
            "DATASET_WITHDRAWN",
            format!("mutations[{at}]: dataset {} was withdrawn", dataset.name),
        ));
    }
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
    let today = brussels_today(OffsetDateTime::now_utc());
    if effective.year() < 1900 || effective > today.saturating_add(time::Duration::days(3653)) {
        return Err(say(
            "mutations.effective_date",
            "INVALID_DATE",
            "effective_date must lie between 1900 and ten years from now".into(),
        ));
    }
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
    /// Routes one checked change: what each consumer concerned receives.
    async fn route_change(
        &self,
        caller: &Caller,
        c: &Checked,
        resolved: &semel_store::Resolved,
        now: OffsetDateTime,
    ) -> Result<(Vec<semel_core::mutation::Route>, Vec<Routed>), ApiError> {
        let persons = &self.storage().persons;
        let snapshot = self.snapshot();
        // A suspended organisation's lookups are refused: its queue gets no
        // citizen values either while it is suspended, and nothing of what
        // it missed when it is reinstated.
        let may_receive = |consumer: &Kbo| {
            snapshot
                .organisations
                .get(consumer)
                .is_some_and(|o| o.status != semel_core::OrganisationStatus::Suspended)
        };
        let candidates: Vec<&semel_core::Authorisation> = snapshot
            .authorisations
            .values()
            .filter(|a| a.dataset == c.dataset && a.receives_mutations && may_receive(&a.consumer))
            .collect();
        let consumers: BTreeSet<Kbo> = candidates.iter().map(|a| a.consumer).collect();
        // Each consumer's files, read at once rather than one after the
        // other (a round trip each on PostgreSQL when not in memory: one
        // after the other, 38 of them were most of a publication's time),
        // with the consents.
        let consents = async {
            if candidates.iter().any(|a| a.consent_required) {
                persons.consents_of(resolved).await
            } else {
                Ok(Vec::new())
            }
        };
        let (files, consents) = futures::future::try_join(
            futures::future::try_join_all(consumers.iter().map(|c| persons.files_of(c, resolved))),
            consents,
        )
        .await?;
        let files: Vec<_> = files.into_iter().flatten().collect();
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
        let routed = routes
            .iter()
            .map(|r| {
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
                Routed {
                    consumer: r.consumer,
                    payload: event.encode_to_vec(),
                }
            })
            .collect();
        Ok((routes, routed))
    }

    /// Publishes one checked change. Its audit entries are made durable
    /// first (sharing their syncs), then the change is stored and queued:
    /// a change is never readable by a consumer before the entries that say
    /// it was accepted and queued. The source's entry says only that the
    /// change was accepted; who is told, and whether anyone is, is in one
    /// entry per consumer, attributed to that consumer
    /// ([`semel_core::mutation::QUEUE_OPERATION`]): the source's auditors
    /// read their own organisation's entries, and a list (or a count) of
    /// the consumers told would tell them which administrations hold a
    /// file on the citizen. If storing fails after the entries, further
    /// entries say so, to the same readers.
    async fn publish_one(
        &self,
        caller: &Caller,
        c: Checked,
    ) -> Result<proto::PublishedMutation, ApiError> {
        let request_id = crate::state::new_id();
        let mut record = self.audit_record(caller, request_id);
        record.citizen = Some(c.citizen);
        record.dataset = c.dataset.to_string();
        record.source = Some(caller.org.kbo);
        record.consumer_reference = semel_core::redact_national_numbers(&c.event_id).into_owned();
        record.reference_date = Some(format_date(c.effective));
        record.fields_requested = c.changed.iter().map(ToString::to_string).collect();
        let event = semel_core::redact_national_numbers(&c.event_id).into_owned();
        let store = &self.storage().mutations;
        let now = OffsetDateTime::now_utc();
        let digest = c.digest();
        // The id is remembered by its key only: a source's own ids may
        // carry a national number, and they are kept 400 days.
        let key = semel_core::mutation::event_key(&caller.org.kbo, &c.event_id);
        let prepared = async {
            let resolved = self.storage().persons.resolve(&c.citizen).await?;
            match store.known(&caller.org.kbo, &key).await? {
                Some(stored) if stored == digest => return Ok((resolved, None)),
                Some(_) => {
                    return Err(ApiError::new(
                        Code::AlreadyExists,
                        "EVENT_ID_REUSED",
                        format!(
                            "event id {:?} was published before for a different change; give each change its own id",
                            c.event_id
                        ),
                    ));
                }
                None => {}
            }
            let routed = self.route_change(caller, &c, &resolved, now).await?;
            Ok::<_, ApiError>((resolved, Some(routed)))
        }
        .await;
        let id = request_id.to_string();
        let answer = |duplicate| proto::PublishedMutation {
            source_event_id: c.event_id.clone(),
            duplicate,
            request_id: id.clone(),
        };
        let (resolved, routed) = match prepared {
            Ok(p) => p,
            Err(e) => {
                record.decision = AuditDecision::Refused;
                record.reason = e.reason_code();
                record.detail = semel_core::redact_national_numbers(&e.message).into_owned();
                self.append_durably(record).await?;
                return Err(e.with("request_id", id));
            }
        };
        record.citizen = Some(resolved.current);
        record.citizen_as_given = resolved.given;
        record.outcome = Outcome::Answered;
        let Some((routes, routed)) = routed else {
            record.detail =
                format!("change {event} published again: already stored, nothing queued");
            self.append_durably(record).await?;
            return Ok(answer(true));
        };
        record.detail = format!(
            "change {event} ({}, effective {}) accepted",
            c.kind.as_str(),
            format_date(c.effective),
        );
        let queued: Vec<AuditRecord> = routes
            .iter()
            .map(|r| self.queued_record(&record, r, &event, c.kind))
            .collect();
        // Entries that take back what the first ones said, if the change
        // is not stored after all: each to the readers of the entry it
        // corrects.
        let second = |of: &AuditRecord, detail: &str| {
            let mut r = of.clone();
            r.request_id = *crate::state::new_id().as_bytes();
            r.time_micros = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64;
            r.detail = format!("change {event} {detail}");
            r
        };
        let corrections = |detail: &str, queued_detail: &str| {
            std::iter::once(second(&record, detail))
                .chain(queued.iter().map(|q| second(q, queued_detail)))
                .collect::<Vec<_>>()
        };
        // Appended together, the entries share their syncs. If some fail
        // (the log is failing: it refuses every entry from then on), the
        // change is not stored and the source is told to publish again.
        self.append_all_durably(std::iter::once(record.clone()).chain(queued.iter().cloned()))
            .await?;
        let now_micros = (now.unix_timestamp_nanos() / 1000) as i64;
        let count = |outcome| {
            self.metrics
                .mutations_published
                .get_or_create(&crate::metrics::MutationLabels {
                    organisation: caller.org.kbo.as_str().to_owned(),
                    dataset: c.dataset.to_string(),
                    outcome,
                })
                .inc();
        };
        match store
            .accept(&caller.org.kbo, &key, &digest, now_micros, &routed)
            .await
        {
            Ok(Accepted::New) => {
                count("queued");
                Ok(answer(false))
            }
            Ok(Accepted::Duplicate) => {
                count("duplicate");
                // Published at the same moment through another broker: that
                // publication stored it (and queued it under its own
                // entries).
                let _ = self
                    .append_all_durably(corrections(
                        "was stored by a publication made at the same time: this one queued nothing",
                        "was not queued by this publication after all: a publication made at the same time queued it",
                    ))
                    .await;
                Ok(answer(true))
            }
            Err(e) => {
                let e = ApiError::from(e);
                let why = semel_core::redact_national_numbers(&e.message).into_owned();
                let mut entries = corrections(
                    &format!("could not be stored: nothing was queued ({why})"),
                    &format!("was not queued after all: it could not be stored ({why})"),
                );
                for r in &mut entries {
                    r.decision = AuditDecision::Refused;
                    r.reason = e.reason_code();
                    r.outcome = Outcome::NotForwarded;
                    r.fields_returned.clear();
                }
                let _ = self.append_all_durably(entries).await;
                Err(e.with("request_id", id))
            }
        }
    }

    /// The entry saying that a change was queued for one consumer: its
    /// own, whose auditors (and those of the whole log) read it; the
    /// source's do not. It names the source, the citizen, the
    /// authorisation (and its version) and the fields the consumer
    /// receives, and carries no end user (no one of the consumer's acted).
    fn queued_record(
        &self,
        publication: &AuditRecord,
        r: &semel_core::mutation::Route,
        event: &str,
        kind: MutationKind,
    ) -> AuditRecord {
        let snapshot = self.snapshot();
        let auth = snapshot.authorisations.get(r.authorisation.as_str());
        let mut q = crate::state::blank_record(
            crate::state::new_id(),
            semel_core::mutation::QUEUE_OPERATION,
            r.consumer,
            None,
        );
        q.time_micros = publication.time_micros;
        q.citizen = publication.citizen;
        q.citizen_as_given = publication.citizen_as_given;
        q.dataset = publication.dataset.clone();
        q.source = publication.source;
        q.consumer_reference = publication.consumer_reference.clone();
        q.reference_date = publication.reference_date.clone();
        q.authorisation = Some(r.authorisation.to_string());
        q.authorisation_version = auth.map(|a| a.version);
        q.purpose = auth.map(|a| a.purpose.to_string()).unwrap_or_default();
        q.fields_requested = publication.fields_requested.clone();
        q.fields_returned = r.fields.iter().map(ToString::to_string).collect();
        q.outcome = Outcome::Answered;
        let source = publication.source.as_ref().map_or("", |k| k.as_str());
        q.detail = format!(
            "change {event} of {source} ({}, effective {}) queued under {}, file {}",
            kind.as_str(),
            publication.reference_date.as_deref().unwrap_or(""),
            r.authorisation,
            semel_core::redact_national_numbers(&r.file),
        );
        if !r.checked.is_empty() {
            q.detail.push_str(&format!(
                "; fields it may only test changed: {}",
                r.checked
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        q
    }

    /// Appends entries together (they share the log's syncs) and waits
    /// until all are durable.
    async fn append_all_durably(
        &self,
        records: impl IntoIterator<Item = AuditRecord>,
    ) -> Result<(), ApiError> {
        futures::future::try_join_all(records.into_iter().map(|r| self.append_durably(r)))
            .await
            .map(|_| ())
    }

    /// Records one change delivered to `caller` and returns it to send,
    /// as its authorisation allows it now: the fields it may still read
    /// (a narrowed authorisation narrows what was queued), through a file
    /// still open. Or, when the authorisation or the file no longer allows
    /// it, records why, drops it from the queue and returns `None`.
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
        let citizen = Niss::parse(&event.citizen).ok();
        record.citizen = citizen;
        record.dataset = event.dataset.clone();
        record.source = Kbo::parse(&event.source_kbo).ok();
        record.authorisation = Some(event.authorisation_reference.clone());
        let event_id = semel_core::redact_national_numbers(&event.source_event_id).into_owned();
        record.consumer_reference = event_id.clone();
        record.reference_date = Some(event.effective_date.clone());
        let kind = kind_from_proto(event.kind).map_or("changed", MutationKind::as_str);
        record.detail = format!(
            "change {event_id} of {} ({kind}, effective {}) at position {}",
            event.source_kbo, event.effective_date, queued.position,
        );
        let now = OffsetDateTime::now_utc();
        let today = brussels_today(now);
        let snapshot = self.snapshot();
        let auth = snapshot.authorisations.get(&event.authorisation_reference);
        record.purpose = auth.map(|a| a.purpose.to_string()).unwrap_or_default();
        record.authorisation_version = auth.map(|a| a.version);
        let mut refusal = match auth {
            None => Some(RefusalReason::NoAuthorisation),
            Some(a) if a.consumer != caller.org.kbo || !a.receives_mutations => {
                Some(RefusalReason::NoAuthorisation)
            }
            Some(a) => a.in_force(today).err(),
        };
        // The lookup's rule again, for today: a file open now in a capacity
        // the authorisation names (it may have replaced the one at routing),
        // the citizen's consent where it requires one.
        if refusal.is_none()
            && let (Some(citizen), Some(a)) = (citizen, auth)
        {
            let persons = &self.storage().persons;
            let resolved = persons.resolve(&citizen).await?;
            let files = persons.files_of(&caller.org.kbo, &resolved).await?;
            let consents = if a.consent_required {
                persons.consents_of(&resolved).await?
            } else {
                Vec::new()
            };
            match semel_core::mutation::still_told(a, &a.dataset, &files, &consents, today, now) {
                Ok((file, _consent)) => event.file_id = file,
                Err(reason) => refusal = Some(reason),
            }
        }
        // A change of a dataset withdrawn since it was queued is not served.
        let withdrawn = snapshot
            .routes
            .get(event.dataset.as_str())
            .is_some_and(|r| r.dataset.withdrawn);
        if withdrawn || refusal.is_some() {
            record.decision = AuditDecision::Refused;
            record.outcome = Outcome::NotForwarded;
            if let Some(reason) = refusal {
                record.reason = Some(ReasonCode::Refused(reason));
                record
                    .detail
                    .push_str(": not sent, its authorisation or file no longer allows it; dropped");
            } else {
                record.reason = Some(ReasonCode::DatasetWithdrawn);
                record
                    .detail
                    .push_str(": not sent, its dataset was withdrawn; dropped");
            }
            self.append_durably(record).await?;
            self.storage()
                .mutations
                .withhold(&caller.org.kbo, queued.position)
                .await?;
            self.count_delivery(caller, &event.dataset, "withheld");
            return Ok(None);
        }
        if let Some(a) = auth {
            // What the authorisation allows today: fields it may no longer
            // read become, at most, fields it may test.
            let mut checked: BTreeSet<String> = event.checked_fields.iter().cloned().collect();
            event.fields.retain(|name, _| {
                let readable = a.fields.iter().any(|f| f.as_str() == name);
                if !readable
                    && (a.check_fields.iter().any(|f| f.as_str() == name)
                        || a.checks.iter().any(|r| r.field.as_str() == name))
                {
                    checked.insert(name.clone());
                }
                readable
            });
            checked.retain(|name| {
                a.check_fields.iter().any(|f| f.as_str() == name)
                    || a.checks.iter().any(|r| r.field.as_str() == name)
            });
            event.checked_fields = checked.into_iter().collect();
        }
        let mut fields: Vec<String> = event.fields.keys().cloned().collect();
        fields.sort();
        if !event.checked_fields.is_empty() {
            record.detail.push_str(&format!(
                "; fields it may only test changed: {}",
                event.checked_fields.join(", ")
            ));
        }
        record.fields_requested = fields.clone();
        record.fields_returned = fields;
        record.outcome = Outcome::Answered;
        self.append_durably(record).await?;
        self.count_delivery(caller, &event.dataset, "delivered");
        Ok(Some(event))
    }

    /// Counts a delivery under a dataset name that is registered (a
    /// payload is the broker's own, but a label must never carry anything
    /// else).
    fn count_delivery(&self, caller: &Caller, dataset: &str, outcome: &'static str) {
        let dataset = DatasetName::new(dataset.to_owned())
            .ok()
            .filter(|d| self.snapshot().routes.contains_key(d))
            .map_or_else(|| "unknown".to_owned(), |d| d.to_string());
        self.metrics
            .mutations_delivered
            .get_or_create(&crate::metrics::MutationLabels {
                organisation: caller.org.kbo.as_str().to_owned(),
                dataset,
                outcome,
            })
            .inc();
    }

    /// Reads the caller's queue after `after`: the changes to deliver (each
    /// through [`Broker::deliver_one`], then sent at once), the notice of
    /// changes lost, and the last position read. `pending` need not read
    /// a snapshot (sled's scan may see an expiry half-way): the state is
    /// read after the queue unless the read is contiguous from `after`,
    /// and positions expire as a prefix recorded with the deletion, so a
    /// state read after the queue tells of every position a read skipped.
    async fn next_changes(
        &self,
        caller: &Caller,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Queued>, Option<proto::MutationsLost>, u64), ApiError> {
        let store = &self.storage().mutations;
        let consumer = caller.org.kbo;
        let queued = store.pending(&consumer, after, limit).await?;
        let contiguous =
            !queued.is_empty() && queued.iter().zip(after + 1..).all(|(q, p)| q.position == p);
        let lost_through = if contiguous {
            0
        } else {
            store.queue_state(&consumer).await?.lost_through
        };
        let mut lost = None;
        let mut skip_through = after;
        if lost_through > after {
            lost = Some(proto::MutationsLost {
                first_position: after + 1,
                last_position: lost_through,
            });
            skip_through = lost_through;
        }
        let queued: Vec<Queued> = queued
            .into_iter()
            .filter(|q| q.position > skip_through)
            .collect();
        let last = queued.last().map_or(skip_through, |q| q.position);
        Ok((queued, lost, last))
    }

    /// Delivers a page read by [`Broker::next_changes`]: each change
    /// recorded, then the page marked delivered up to `last` (if it was
    /// read from where delivery stands: a page read ahead, after a
    /// position the consumer was never sent, leaves the changes it skipped
    /// unsent, and so not to be acknowledged); returns the changes to
    /// send, in order.
    async fn deliver_page(
        &self,
        caller: &Caller,
        queued: &[Queued],
        after: u64,
        last: u64,
    ) -> Result<Vec<proto::MutationEvent>, ApiError> {
        // One after the other: a subscriber's entries then join the group
        // commits of everything else, and publications are not queued
        // behind a page's hundred entries at once.
        let mut events = Vec::with_capacity(queued.len());
        for q in queued {
            if let Some(e) = self.deliver_one(caller, q).await? {
                events.push(e);
            }
        }
        if last > after {
            self.storage()
                .mutations
                .delivered(&caller.org.kbo, after, last)
                .await?;
        }
        Ok(events)
    }

    /// Drops changes not acknowledged within the retention period, every
    /// minute, until aborted; event ids are remembered for
    /// [`EVENT_IDS_KEPT`] at least.
    pub fn expire_mutations(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let broker = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                broker
                    .expire_mutations_as_of(OffsetDateTime::now_utc())
                    .await;
            }
        })
    }

    /// How many subscriptions and pulls wait for changes on this broker
    /// (a test waits for its pull to be waiting).
    pub fn waiting_for_changes(&self) -> usize {
        self.mutations_queued.receiver_count()
    }

    /// One round of [`Broker::expire_mutations`], as of `now` (a test runs
    /// it as of a later day): drops what outlived the retention period and
    /// records, per consumer, what it lost.
    pub async fn expire_mutations_as_of(&self, now: OffsetDateTime) {
        let retention = self.mutation_settings().retention;
        let micros = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1000) as i64;
        let before = micros(now - retention);
        let ids_before = micros(now - retention.max(EVENT_IDS_KEPT));
        match self.storage().mutations.expire(before, ids_before).await {
            Ok(expired) if expired.is_empty() => {}
            Ok(expired) => {
                tracing::warn!(
                    dropped = expired.iter().map(|e| e.dropped).sum::<u64>(),
                    consumers = expired.len(),
                    "changes not acknowledged within the retention period were dropped; their consumers are told"
                );
                self.record_expiries(&expired, retention).await;
            }
            Err(e) => tracing::warn!(
                error = %semel_core::redact_national_numbers(&e.to_string()),
                "could not drop expired changes; trying again in a minute"
            ),
        }
    }
}

impl Broker {
    /// Records, per consumer, the changes dropped unacknowledged at the end
    /// of the retention period: the organisation's auditors (and the whole
    /// log's) see what it lost, and when. The changes are gone already (the
    /// positions to drop are known only as they are dropped): an entry that
    /// cannot be written is said in the broker's log.
    async fn record_expiries(&self, expired: &[semel_storage::Expired], retention: Duration) {
        let entries = expired.iter().map(|e| {
            let mut r = crate::state::blank_record(
                crate::state::new_id(),
                semel_core::mutation::EXPIRE_OPERATION,
                e.consumer,
                None,
            );
            r.detail = format!(
                "{} change(s) at positions {} to {} dropped unacknowledged: older than the retention period ({} hours)",
                e.dropped,
                e.first,
                e.last,
                retention.as_secs() / 3600
            );
            r
        });
        if self.append_all_durably(entries).await.is_err() {
            tracing::error!(
                consumers = expired.len(),
                "changes dropped at the end of the retention period could not be recorded in the audit log"
            );
        }
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

/// Where a read starts: after `after`, or after the last acknowledged
/// position; a position not queued yet is refused (the changes up to it
/// would be skipped unseen).
fn start_after(after: u64, state: &QueueState) -> Result<u64, ApiError> {
    if after > state.head {
        return Err(ApiError::new(
            Code::OutOfRange,
            "OUT_OF_RANGE",
            format!(
                "after: position {after} is beyond your queue's last ({}); give 0 to resume after your last acknowledgement",
                state.head
            ),
        ));
    }
    Ok(if after == 0 {
        state.acknowledged
    } else {
        after
    })
}

type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<proto::SubscribeResponse, Status>> + Send>>;

/// Which of an organisation's open reads a [`Slot`] counts.
#[derive(Clone, Copy)]
enum Reads {
    Subscriptions,
    Pulls,
}

impl Reads {
    fn counts(self, broker: &Broker) -> &std::sync::Mutex<HashMap<Kbo, usize>> {
        match self {
            Reads::Subscriptions => &broker.subscriptions,
            Reads::Pulls => &broker.pulls,
        }
    }
}

/// One of an organisation's subscriptions (or pulls) on this broker, given
/// back when it ends.
struct Slot {
    broker: Arc<Broker>,
    org: Kbo,
    reads: Reads,
}

impl Slot {
    fn take(broker: &Arc<Broker>, org: Kbo, reads: Reads) -> Option<Slot> {
        let mut open = reads
            .counts(broker)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(org).or_insert(0);
        let most = match reads {
            Reads::Subscriptions => MAX_SUBSCRIPTIONS,
            Reads::Pulls => MAX_PULLS,
        };
        if *n >= most {
            return None;
        }
        *n += 1;
        Some(Slot {
            broker: broker.clone(),
            org,
            reads,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .reads
            .counts(&self.broker)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.org) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.org);
            }
        }
    }
}

/// A subscription's (or a waiting pull's) credentials, owned: checked
/// again before each round.
struct Held {
    peer: Option<Arc<crate::tls::PeerIdentity>>,
    token: Option<String>,
    rule: Option<&'static crate::permissions::Rule>,
}

impl Held {
    fn parts(&self) -> Credentials<'_> {
        Credentials {
            peer: self.peer.as_ref(),
            token: self.token.as_deref(),
            rule: self.rule,
        }
    }
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
        // A source's budget of changes: a flood would fill every consumer's
        // queue and the audit log. The whole request is admitted or none of
        // it; the refusal is recorded (within the refusal budget).
        if let Err(wait) = broker.publication_limits.admit_many(
            caller.org.kbo,
            checked.len(),
            std::time::Instant::now(),
        ) {
            let error = ApiError {
                retry_after: Some(wait),
                ..ApiError::new(
                    Code::ResourceExhausted,
                    "PUBLICATION_RATE_LIMITED",
                    format!(
                        "your organisation exceeded its rate of published changes; nothing of this request was stored; publish it again in {} ms",
                        wait.as_millis().max(1)
                    ),
                )
            };
            return Err(broker
                .refuse(&caller, error, ReasonCode::PublicationRateLimited, None)
                .await
                .into());
        }
        let mut results = Vec::with_capacity(checked.len());
        for c in checked {
            results.push(broker.publish_one(&caller, c).await?);
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
        let mut caller = self.broker.admit(&req).await?;
        // A subscription is bounded by its own cap below, for as long as it
        // is open; it does not hold one of the slots for calls in flight.
        caller.slot = None;
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
        // A few subscriptions per organisation: each reads the queue, and
        // more would only send the same changes again.
        let slot = Slot::take(&broker, caller.org.kbo, Reads::Subscriptions).ok_or_else(|| {
            ApiError::retryable(
                Code::ResourceExhausted,
                "SUBSCRIPTIONS_EXCEEDED",
                format!(
                    "your organisation holds {MAX_SUBSCRIPTIONS} subscriptions on this broker already; close one, or read with PullMutations"
                ),
            )
        })?;
        let state = broker
            .storage()
            .mutations
            .queue_state(&caller.org.kbo)
            .await
            .map_err(ApiError::from)?;
        let mut position = start_after(after, &state)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<proto::SubscribeResponse, Status>>(16);
        tokio::spawn(async move {
            let _slot = slot;
            let mut woken = broker.mutations_queued.subscribe();
            let mut closing = broker.closing.subscribe();
            // Sends one item, unless the broker begins to shut down or the
            // consumer went away first.
            macro_rules! send {
                ($item:expr) => {
                    tokio::select! {
                        sent = tx.send($item) => if sent.is_err() { return },
                        _ = closing.changed() => {
                            return;
                        }
                    }
                };
            }
            loop {
                if *closing.borrow_and_update() {
                    return;
                }
                // Checked again before each round, as a batch's items are: a
                // revoked certificate, an expired token or a suspension ends
                // the subscription.
                let caller = match broker.authorize_parts(&credentials.parts()) {
                    Ok(c) => c,
                    Err(denied) => {
                        let e = broker.record_refusal(*denied, None).await;
                        send!(Err(e.into()));
                        return;
                    }
                };
                woken.borrow_and_update();
                let (queued, lost, last) = match broker.next_changes(&caller, position, PAGE).await
                {
                    Ok(r) => r,
                    Err(e) => {
                        send!(Err(e.into()));
                        return;
                    }
                };
                let read_any = last != position;
                if let Some(lost) = lost {
                    let item = proto::subscribe_response::Item::Lost(lost);
                    send!(Ok(proto::SubscribeResponse { item: Some(item) }));
                }
                // Every change of the page is recorded (the entries share
                // syncs), the page marked delivered (so that the consumer may
                // acknowledge what it gets at once), then sent in order.
                let events = match broker.deliver_page(&caller, &queued, position, last).await {
                    Ok(events) => events,
                    Err(e) => {
                        send!(Err(e.into()));
                        return;
                    }
                };
                for e in events {
                    // What the consumer does not acknowledge comes again
                    // when it returns.
                    let item = proto::subscribe_response::Item::Event(e);
                    send!(Ok(proto::SubscribeResponse { item: Some(item) }));
                }
                position = last;
                if read_any {
                    continue;
                }
                // Until a change is queued (through any broker), the
                // broker closes, the fallback poll (while other brokers'
                // changes cannot be heard), or the caller no longer passes
                // (the next round refuses it).
                tokio::select! {
                    _ = woken.changed() => {}
                    _ = closing.changed() => {}
                    _ = fallback_poll(&broker) => {}
                    _ = until_refused(&broker, &credentials) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        // The response ends when the broker begins to shut down, whatever
        // is buffered and however slowly the consumer reads, with a status
        // that says to subscribe again; a drain never waits on it.
        use futures::StreamExt as _;
        let mut until = self.broker.closing.subscribe();
        let mut after_close = self.broker.closing.subscribe();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .take_until(async move {
                let _ = until.wait_for(|closing| *closing).await;
            })
            .chain(
                futures::stream::once(async move { *after_close.borrow_and_update() }).filter_map(
                    |closing| async move { closing.then(|| Err(shutting_down().into())) },
                ),
            );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn pull_mutations(
        &self,
        req: Request<proto::PullMutationsRequest>,
    ) -> Result<Response<proto::PullMutationsResponse>, Status> {
        let mut caller = self.broker.admit(&req).await?;
        // The call's slot in flight is held to the end, whichever caller
        // the rounds below check.
        let _in_flight = caller.slot.take();
        let _pull = Slot::take(&self.broker, caller.org.kbo, Reads::Pulls).ok_or_else(|| {
            ApiError::retryable(
                Code::ResourceExhausted,
                "SUBSCRIPTIONS_EXCEEDED",
                format!(
                    "your organisation has {MAX_PULLS} pulls in progress on this broker already; wait for their answers, then pull again"
                ),
            )
        })?;
        let credentials = {
            let c = Credentials::of(&req);
            Held {
                peer: c.peer.cloned(),
                token: c.token.map(str::to_owned),
                rule: c.rule,
            }
        };
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
        let mut after = start_after(r.after, &state)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(r.wait_seconds as u64);
        let mut woken = broker.mutations_queued.subscribe();
        let mut closing = broker.closing.subscribe();
        let mut first = true;
        loop {
            // Checked again before each round but the first, as a
            // subscription's are: a pull waits up to 30 seconds, and a
            // certificate revoked, a token expired or an organisation
            // suspended meanwhile must not be sent what comes.
            if !std::mem::take(&mut first) {
                caller = match broker.authorize_parts(&credentials.parts()) {
                    Ok(c) => c,
                    Err(denied) => return Err(broker.record_refusal(*denied, None).await.into()),
                };
            }
            woken.borrow_and_update();
            let closing_now = *closing.borrow_and_update();
            let (queued, lost, last) = broker.next_changes(&caller, after, limit).await?;
            let events = broker.deliver_page(&caller, &queued, after, last).await?;
            // Changes withheld (their authorisation no longer allows them)
            // are behind us: the next round reads after them.
            after = last;
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
                    last_position: last,
                }));
            }
            tokio::select! {
                _ = woken.changed() => {}
                _ = fallback_poll(broker) => {}
                _ = until_refused(broker, &credentials) => {}
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
        let broker = &self.broker;
        // Recorded, allowed or refused: an acknowledgement drops changes
        // from the organisation's queue for good, so the log says who
        // dropped which. It stands if its entry cannot be written (the
        // changes are gone, and the consumer has them); the call fails.
        let (acked, _) = broker
            .audited(&caller, async |change: &mut Change| {
                let a = match broker
                    .storage()
                    .mutations
                    .acknowledge(&caller.org.kbo, position)
                    .await
                {
                    Ok(a) => a,
                    Err(StorageError::OutOfRange(m)) => {
                        return Err(ApiError::new(
                            Code::OutOfRange,
                            "NOT_DELIVERED",
                            format!("{m}: acknowledge only positions you received"),
                        ));
                    }
                    Err(e) => return Err(ApiError::from(e)),
                };
                change.detail = if a.state.acknowledged > a.previous {
                    format!(
                        "changes acknowledged through position {}: {} dropped from the queue (positions {} to {})",
                        a.state.acknowledged,
                        a.dropped,
                        a.previous + 1,
                        a.state.acknowledged
                    )
                } else {
                    format!(
                        "position {position} acknowledged again: nothing dropped (acknowledged through {})",
                        a.state.acknowledged
                    )
                };
                Ok((a.state, crate::audited::nothing_to_undo()))
            })
            .await?;
        Ok(Response::new(proto::AcknowledgeMutationsResponse {
            acknowledged: acked.acknowledged,
            pending: acked.head.saturating_sub(acked.acknowledged),
        }))
    }
}
