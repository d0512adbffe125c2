//! `LookupService`: the lookup path.
//!
//! identify the caller → validate the request → `decide()` → forward to the
//! source with a deadline → keep only the authorised fields → append the
//! audit entry and wait until it is durable → answer.
//!
//! Each lookup runs on its own task, so a client that disconnects or whose
//! deadline passes cannot cancel it half-way: the source call finishes or
//! times out, and the audit entry is always written. Exactly one entry per
//! lookup that reached the service, allowed or refused.

use std::collections::BTreeSet;
use std::sync::Arc;

use tracing::Instrument;

use semel_core::{
    Allowance, AuditDecision, AuditRecord, Authorisation, Consent, DatasetName, Decision,
    FieldName, LOOKUP_OPERATION, LookupQuestion, Niss, Organisation, Outcome, PersonFile,
    PurposeCode, Question, ReasonCode, Refusal, brussels_today,
};
use semel_store::Resolved;
use time::{Date, OffsetDateTime};
use tonic::{Code, Request, Response, Status};

use crate::convert::{format_date, parse_date};
use crate::error::ApiError;
use crate::limits::{Pass, SourceRefusal};
use crate::metrics::{DatasetLabel, LookupLabels, SourceLabels};
use crate::proto::{self, FetchRequest, FetchResponse, LookupRequest, LookupResponse};
use crate::state::{Broker, Denied, Route, Snapshot};
use crate::tokens::EndUser;

/// The most fields one lookup may name.
const MAX_FIELDS: usize = 64;
/// The longest consumer reference.
const MAX_REFERENCE: usize = 64;

pub struct LookupService {
    broker: Arc<Broker>,
}

impl LookupService {
    pub fn new(broker: Arc<Broker>) -> Self {
        LookupService { broker }
    }
}

#[tonic::async_trait]
impl proto::lookup_service_server::LookupService for LookupService {
    type LookupBatchStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<proto::LookupBatchResponse, Status>> + Send>,
    >;

    async fn lookup_batch(
        &self,
        request: Request<tonic::Streaming<proto::LookupBatchRequest>>,
    ) -> Result<Response<Self::LookupBatchStream>, Status> {
        // The caller is identified once, for the whole stream; a batch
        // refused for who made it gets one audit entry.
        let caller = self.broker.admit(&request).await?;
        let in_flight = self.broker.limits().batch_in_flight.clamp(1, 1024);
        let (tx, rx) = tokio::sync::mpsc::channel(in_flight);
        let broker = self.broker.clone();
        // What identified the call is kept, to re-check for every item.
        let credentials = {
            let c = crate::state::Credentials::of(&request);
            Held {
                peer: c.peer.cloned(),
                token: c.token.map(str::to_owned),
                rule: c.rule,
            }
        };
        let items = request.into_inner();
        // The driver runs on its own task: items already read are decided,
        // forwarded and audited even if the consumer goes away.
        tokio::spawn(
            batch(broker, caller, credentials, items, in_flight, tx)
                .instrument(tracing::debug_span!("lookup_batch")),
        );
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn lookup(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        let received = OffsetDateTime::now_utc();
        // A lookup refused for who made it is still a lookup: when the
        // organisation is known it gets its audit entry like any other.
        let who = match self.broker.authorize(&request) {
            Ok(caller) => Who {
                org: caller.org,
                user: Some(caller.user),
                denied: None,
            },
            Err(denied) => match denied.org.clone() {
                None => {
                    tracing::info!(
                        reason = denied.error.reason,
                        "lookup refused: caller not identified"
                    );
                    return Err(denied.error.into_status());
                }
                Some(org) => Who {
                    org,
                    user: denied.user.clone(),
                    denied: Some(denied),
                },
            },
        };
        let broker = self.broker.clone();
        let span = lookup_span(&who.org);
        let task = tokio::spawn(
            async move { lookup(&broker, who, request.into_inner(), received).await }
                .instrument(span),
        );
        match task.await {
            Ok(result) => result.map(Response::new).map_err(ApiError::into_status),
            Err(e) => {
                tracing::error!(error = %e, "lookup task failed");
                Err(
                    ApiError::internal("the lookup failed inside the broker; it was not answered")
                        .into_status(),
                )
            }
        }
    }
}

/// The span of one lookup (a `Lookup` call or an item of a batch), inside
/// the call's server span: disabled, and free, when no trace is exported.
fn lookup_span(org: &Organisation) -> tracing::Span {
    tracing::debug_span!(
        "lookup",
        consumer = org.kbo.as_str(),
        request_id = tracing::field::Empty,
        dataset = tracing::field::Empty,
        decision = tracing::field::Empty,
        reason = tracing::field::Empty,
    )
}

/// A stream's credentials, owned.
struct Held {
    peer: Option<Arc<crate::tls::PeerIdentity>>,
    token: Option<String>,
    rule: Option<&'static crate::permissions::Rule>,
}

/// Runs a batch: at most `in_flight` items at once, each a whole lookup.
async fn batch(
    broker: Arc<Broker>,
    caller: crate::state::Caller,
    credentials: Held,
    items: tonic::Streaming<proto::LookupBatchRequest>,
    in_flight: usize,
    tx: tokio::sync::mpsc::Sender<Result<proto::LookupBatchResponse, Status>>,
) {
    use futures::StreamExt;
    let broken = tx.clone();
    let credentials = Arc::new(credentials);
    // The stream ends at its first error (an item that cannot be read, a
    // stream broken): no item is read past it.
    let items = futures::stream::unfold(Some(items), |items| async move {
        let mut items = items?;
        match items.next().await? {
            Ok(item) => Some((Ok(item), Some(items))),
            Err(status) => Some((Err(status), None)),
        }
    });
    let results = items
        .enumerate()
        .map(|(index, item)| {
            batch_item(
                broker.clone(),
                caller.clone(),
                credentials.clone(),
                broken.clone(),
                index,
                item,
            )
        })
        .buffer_unordered(in_flight);
    let mut results = std::pin::pin!(results);
    while let Some(result) = results.next().await {
        let Some(result) = result else { continue };
        // A consumer that went away gets no more results, but the items in
        // flight still finish and are audited.
        let _ = tx.send(Ok(result)).await;
    }
}

/// One item of a batch, a whole lookup: its answer or its error, or
/// nothing when the stream itself failed.
async fn batch_item(
    broker: Arc<Broker>,
    caller: crate::state::Caller,
    credentials: Arc<Held>,
    broken: tokio::sync::mpsc::Sender<Result<proto::LookupBatchResponse, Status>>,
    index: usize,
    item: Result<proto::LookupBatchRequest, Status>,
) -> Option<proto::LookupBatchResponse> {
    let msg = match item {
        Ok(msg) => msg.item.unwrap_or_default(),
        Err(status) => {
            // The stream itself failed: no more items.
            let _ = broken.send(Err(status)).await;
            return None;
        }
    };
    let received = OffsetDateTime::now_utc();
    let consumer_reference = msg.consumer_reference.clone();
    // Every item is authorised again, exactly as a Lookup is: a
    // certificate revoked or expired, an issuer's key withdrawn,
    // a token expired or an organisation suspended during the
    // batch stops covering the items that follow.
    let who = match broker.authorize_parts(&crate::state::Credentials {
        peer: credentials.peer.as_ref(),
        token: credentials.token.as_deref(),
        rule: credentials.rule,
    }) {
        Ok(now) => Who {
            org: now.org,
            user: Some(now.user),
            denied: None,
        },
        Err(denied) => Who {
            org: denied.org.clone().unwrap_or_else(|| caller.org.clone()),
            user: denied.user.clone(),
            denied: Some(denied),
        },
    };
    // Each item on its own task, like a Lookup: it finishes and
    // is audited whatever happens to the stream. Its span is a
    // lookup's, inside the batch's.
    let span = lookup_span(&who.org);
    let task =
        tokio::spawn(async move { lookup(&broker, who, msg, received).await }.instrument(span));
    let result = task.await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "batch item task failed");
        Err(ApiError::internal(
            "the lookup failed inside the broker; it was not answered",
        ))
    });
    Some(proto::LookupBatchResponse {
        index: index as u64,
        consumer_reference,
        result: Some(match result {
            Ok(response) => proto::lookup_batch_response::Result::Response(response),
            Err(e) => proto::lookup_batch_response::Result::Error(e.to_item_error()),
        }),
    })
}

/// Who made the lookup, and whether they were refused for that.
struct Who {
    org: Arc<Organisation>,
    user: Option<Arc<EndUser>>,
    denied: Option<Box<Denied>>,
}

/// What the lookup path learnt, for the audit entry.
struct Trace {
    citizen: Option<Niss>,
    authorisation: Option<String>,
    authorisation_version: Option<u32>,
    decision: AuditDecision,
    reason: Option<ReasonCode>,
    outcome: Outcome,
    source: Option<semel_core::Kbo>,
    /// The dataset, once it is known to exist: the only dataset name that
    /// goes into metrics and logs (what a client sent may be anything).
    dataset: Option<DatasetName>,
    fields_returned: Vec<String>,
    reference_date: Option<String>,
    /// The number the consumer named, when it was replaced.
    citizen_as_given: Option<Niss>,
    /// The fields tested.
    checks: Vec<String>,
    /// The rule that allowed or refused.
    detail: String,
}

async fn lookup(
    broker: &Broker,
    who: Who,
    msg: LookupRequest,
    received: OffsetDateTime,
) -> Result<LookupResponse, ApiError> {
    let request_id = crate::state::new_id();
    tracing::Span::current().record("request_id", tracing::field::display(request_id));
    let mut trace = Trace::new();
    let Who { org, user, denied } = who;
    // A refused identity is recorded within the organisation's budget of
    // refusals; beyond it, counted into one summary entry.
    if let Some(d) = &denied
        && !broker.refusal_recorded_alone(org.kbo, d.error.reason)
    {
        return Err(d.error.clone().with("audit", "summarised"));
    }
    let result = match denied {
        Some(denied) => {
            trace.citizen = Niss::parse(&msg.citizen).ok();
            trace.reason = Some(denied.reason);
            Err(denied.error)
        }
        None => process(broker, &org, &msg, request_id, received, &mut trace).await,
    };
    if let Err(e) = &result {
        if trace.reason.is_none() {
            trace.reason = e.reason_code();
        }
        // Every refusal or failure says why in the entry; messages may
        // repeat what the consumer sent, so never with a number in it.
        if trace.detail.is_empty() {
            trace.detail = semel_core::redact_national_numbers(&e.message).into_owned();
        }
    }
    let dataset = trace.dataset.take();
    let record = audit_record(received, request_id, &org, user, &msg, trace);
    let decision = record.decision;
    let reason = record.reason.map(ReasonCode::as_str);
    let answered = record.outcome == Outcome::Answered;
    let span = tracing::Span::current();
    mark_span(&span, &record, dataset.as_ref());
    // A refusal or a failure marks the span, with its reason code.
    if let Err(e) = &result {
        crate::telemetry::set_error(&span, reason.unwrap_or(e.reason));
    }
    append_entry(broker, record, &span, request_id).await?;
    let dataset_label = dataset
        .as_ref()
        .map_or_else(|| "unknown".to_owned(), ToString::to_string);
    count_lookup(
        broker,
        &org,
        &dataset_label,
        decision,
        reason,
        answered,
        received,
    );
    log_lookup(request_id, &org, &dataset_label, decision, reason, answered);
    result.map_err(|e| e.with("request_id", request_id.to_string()))
}

impl Trace {
    /// Nothing learnt yet: a lookup is refused and not forwarded until
    /// the path says otherwise.
    fn new() -> Self {
        Trace {
            citizen: None,
            authorisation: None,
            authorisation_version: None,
            decision: AuditDecision::Refused,
            reason: None,
            outcome: Outcome::NotForwarded,
            source: None,
            dataset: None,
            fields_returned: Vec::new(),
            reference_date: None,
            citizen_as_given: None,
            checks: Vec::new(),
            detail: String::new(),
        }
    }
}

/// The lookup's audit entry: what the path learnt, and of what the caller
/// sent only what is well formed.
fn audit_record(
    received: OffsetDateTime,
    request_id: uuid::Uuid,
    org: &Organisation,
    user: Option<Arc<EndUser>>,
    msg: &LookupRequest,
    trace: Trace,
) -> AuditRecord {
    AuditRecord {
        request_id: *request_id.as_bytes(),
        time_micros: (received.unix_timestamp_nanos() / 1000) as i64,
        operation: LOOKUP_OPERATION.into(),
        consumer: org.kbo,
        end_user: user.map(|u| u.subject.clone()),
        citizen: trace.citizen,
        dataset: recorded_name(&msg.dataset, |s| DatasetName::new(s).is_ok()),
        fields_requested: msg
            .fields
            .iter()
            .take(MAX_FIELDS)
            .map(|f| recorded_name(f, |s| FieldName::new(s).is_ok()))
            .collect(),
        fields_returned: trace.fields_returned,
        purpose: recorded_name(&msg.purpose, |s| PurposeCode::new(s).is_ok()),
        authorisation: trace.authorisation,
        authorisation_version: trace.authorisation_version,
        decision: trace.decision,
        reason: trace.reason,
        outcome: trace.outcome,
        source: trace.source,
        consumer_reference: semel_core::redact_national_numbers(&bounded(
            &msg.consumer_reference.replace(char::is_control, " "),
            MAX_REFERENCE,
        ))
        .into_owned(),
        reference_date: trace.reference_date,
        citizen_as_given: trace.citizen_as_given,
        checks: if trace.checks.is_empty() {
            msg.checks
                .iter()
                .take(crate::checks::MAX_CHECKS)
                .map(|c| recorded_name(&c.field, |s| FieldName::new(s).is_ok()))
                .collect()
        } else {
            trace.checks
        },
        detail: trace.detail,
    }
}

/// The lookup's span gets its dataset (once known to exist), decision and
/// reason.
fn mark_span(span: &tracing::Span, record: &AuditRecord, dataset: Option<&DatasetName>) {
    if let Some(d) = dataset {
        span.record("dataset", d.as_str());
    }
    span.record(
        "decision",
        match record.decision {
            AuditDecision::Allowed => "allowed",
            AuditDecision::Refused => "refused",
        },
    );
    if let Some(r) = record.reason {
        span.record("reason", r.as_str());
    }
}

/// Appends the lookup's entry and waits until it is durable; fails closed
/// when it cannot be.
async fn append_entry(
    broker: &Broker,
    record: AuditRecord,
    span: &tracing::Span,
    request_id: uuid::Uuid,
) -> Result<(), ApiError> {
    if let Err(e) = broker
        .storage()
        .audit
        .append(record)
        .instrument(tracing::debug_span!("audit.append"))
        .await
    {
        // Fail closed: no answer leaves without its entry.
        broker.audit_unavailable(&e);
        crate::telemetry::set_error(span, "AUDIT_UNAVAILABLE");
        return Err(ApiError::retryable(
            Code::Unavailable,
            "AUDIT_UNAVAILABLE",
            "the broker cannot record lookups right now, so it answers none; try again later",
        )
        .with("request_id", request_id.to_string()));
    }
    broker.audit_recorded();
    Ok(())
}

/// Every lookup is in the audit log; the operator's log shows those that
/// did not get an answer (and, at debug level, the others).
fn log_lookup(
    request_id: uuid::Uuid,
    org: &Organisation,
    dataset_label: &str,
    decision: AuditDecision,
    reason: Option<&'static str>,
    answered: bool,
) {
    if answered {
        tracing::debug!(request_id = %request_id, consumer = org.kbo.as_str(), dataset = %dataset_label, "lookup answered");
    } else {
        tracing::info!(
            request_id = %request_id,
            consumer = org.kbo.as_str(),
            dataset = %dataset_label,
            decision = ?decision,
            reason = reason.unwrap_or(""),
            "lookup not answered"
        );
    }
}

/// The metrics of one lookup, once its entry is recorded.
fn count_lookup(
    broker: &Broker,
    org: &Organisation,
    dataset_label: &str,
    decision: AuditDecision,
    reason: Option<&'static str>,
    answered: bool,
    received: OffsetDateTime,
) {
    broker
        .metrics
        .lookups
        .get_or_create(&LookupLabels {
            consumer: org.kbo.as_str().to_owned(),
            dataset: dataset_label.to_owned(),
            // Allowed but not answered (the source failed, the answer was
            // unusable) is not counted as allowed: it did not happen.
            decision: match (decision, answered) {
                (AuditDecision::Allowed, true) => "allowed",
                (AuditDecision::Allowed, false) => "failed",
                (AuditDecision::Refused, _) => "refused",
            },
            reason: reason.unwrap_or(if answered { "" } else { "OTHER" }),
        })
        .inc();
    broker
        .metrics
        .lookup_seconds
        .get_or_create(&DatasetLabel {
            dataset: dataset_label.to_owned(),
        })
        .observe(
            (OffsetDateTime::now_utc() - received)
                .unsigned_abs()
                .as_secs_f64(),
        );
}

/// The lookup's decision, step by step, in the order its checks are made:
/// each step either passes what it learnt to the next or refuses with the
/// reason the consumer is given, and notes in `trace` what the audit entry
/// keeps.
async fn process(
    broker: &Broker,
    org: &Organisation,
    msg: &LookupRequest,
    request_id: uuid::Uuid,
    received: OffsetDateTime,
    trace: &mut Trace,
) -> Result<LookupResponse, ApiError> {
    let today = admit_consumer(broker, org, received)?;
    let resolved = resolve_citizen(broker, msg, trace).await?;
    let (snapshot, asked) = validate_request(broker, msg, today, trace)?;
    let authorisations = snapshot.authorisations_for(org.kbo, &asked.dataset);
    let (files, consents) =
        read_files_and_consents(broker, org, &resolved, authorisations, &asked.purpose).await?;
    let question = LookupQuestion {
        consumer: org.kbo,
        dataset: &asked.dataset,
        fields: &asked.fields,
        checks: &asked.checks,
        purpose: &asked.purpose,
        today,
        date: asked.date,
        now: received,
        files: &files,
        consents: &consents,
    };
    let allowance = find_authorisation(&question, authorisations, trace)?;
    drop(snapshot);
    trace.authorisation = Some(allowance.authorisation.to_string());
    trace.authorisation_version = Some(allowance.authorisation_version);
    bound_questions(broker, org, &resolved.current, &allowance, today, received)?;
    trace.detail = allowance.explain();
    trace.decision = AuditDecision::Allowed;
    trace.authorisation = Some(allowance.authorisation.to_string());
    trace.source = Some(asked.route.dataset.source);
    let pass = enter_source(&asked.route, &asked.dataset)?;
    let request_id = request_id.to_string();
    let fetch = fetch_request(
        org,
        &asked,
        &resolved.current,
        &allowance,
        &request_id,
        trace,
    );
    let answer = forward_to_source(broker, &asked, fetch, pass, trace).await?;
    Ok(filter_answer(answer, &asked, &allowance, request_id, trace))
}

/// What the consumer asked, each part validated against the registry.
struct Asked {
    dataset: DatasetName,
    route: Arc<Route>,
    /// The fields to read, without repeats.
    fields: Vec<FieldName>,
    /// The questions asked (yes/no answers).
    checks: Vec<Question>,
    purpose: PurposeCode,
    /// The day the data are asked for: the reference date, or today.
    date: Date,
}

/// The consumer's rate of lookups and its daily quota: today's date (in
/// Brussels) when both leave room for this lookup.
fn admit_consumer(
    broker: &Broker,
    org: &Organisation,
    received: OffsetDateTime,
) -> Result<Date, ApiError> {
    if let Err(wait) = broker
        .consumer_limits
        .admit(org.kbo, std::time::Instant::now())
    {
        return Err(ApiError {
            retry_after: Some(wait),
            ..ApiError::new(
                Code::ResourceExhausted,
                "RATE_LIMITED",
                format!(
                    "your organisation exceeded its rate of lookups; retry in {} ms",
                    wait.as_millis().max(1)
                ),
            )
        });
    }
    let today = brussels_today(received);
    if let Err(quota) = broker.consumer_limits.take_quota(org.kbo, today) {
        return Err(until_midnight(
            received,
            "QUOTA_EXCEEDED",
            format!(
                "your organisation made its {quota} lookups for today; the quota starts again at midnight (Brussels time)"
            ),
        ));
    }
    Ok(today)
}

/// The citizen: the number given, and the number in force when it was
/// replaced.
async fn resolve_citizen(
    broker: &Broker,
    msg: &LookupRequest,
    trace: &mut Trace,
) -> Result<Resolved, ApiError> {
    let given = Niss::parse(&msg.citizen)
        .map_err(|e| ApiError::invalid("citizen", "INVALID_CITIZEN", format!("citizen: {e}")))?;
    trace.citizen = Some(given);
    // A replaced number is looked up as the number in force; the entry
    // keeps both.
    let resolved = broker.storage().persons.resolve(&given).await?;
    trace.citizen = Some(resolved.current);
    trace.citizen_as_given = resolved.given;
    Ok(resolved)
}

/// The dataset, fields, checks, purpose, reference date and consumer
/// reference of the request, in that order, against the registry snapshot
/// it returns.
fn validate_request(
    broker: &Broker,
    msg: &LookupRequest,
    today: Date,
    trace: &mut Trace,
) -> Result<(arc_swap::Guard<Arc<Snapshot>>, Asked), ApiError> {
    let dataset = DatasetName::new(msg.dataset.clone())
        .map_err(|e| ApiError::invalid("dataset", "INVALID_ARGUMENT", format!("dataset: {e}")))?;
    let snapshot = broker.snapshot();
    let route = find_dataset(&snapshot, &dataset)?;
    trace.dataset = Some(dataset.clone());
    if route.dataset.withdrawn {
        return Err(ApiError::new(
            Code::FailedPrecondition,
            "DATASET_WITHDRAWN",
            format!("dataset {dataset} was withdrawn by its source; it serves no lookup any more"),
        ));
    }
    let fields = validate_fields(&msg.fields, !msg.checks.is_empty(), &route)?;
    let checks = crate::checks::validate(msg.checks.clone(), &route.dataset)?;
    // Every question asked is recorded, allowed or refused.
    trace.checks = checks.iter().map(Question::describe).collect();
    let purpose = PurposeCode::new(msg.purpose.clone())
        .map_err(|e| ApiError::invalid("purpose", "INVALID_ARGUMENT", format!("purpose: {e}")))?;
    if !snapshot.purposes.contains_key(purpose.as_str()) {
        return Err(ApiError::invalid(
            "purpose",
            "UNKNOWN_PURPOSE",
            format!("there is no purpose {purpose} in the catalogue; ListPurposes shows them"),
        ));
    }
    let date = reference_date(msg, &dataset, &route, today, trace)?;
    validate_consumer_reference(&msg.consumer_reference)?;
    let asked = Asked {
        dataset,
        route,
        fields,
        checks,
        purpose,
        date,
    };
    Ok((snapshot, asked))
}

/// The published dataset of that name, with its source.
fn find_dataset(snapshot: &Snapshot, dataset: &DatasetName) -> Result<Arc<Route>, ApiError> {
    snapshot.routes.get(dataset).cloned().ok_or_else(|| {
        ApiError::not_found(
            "UNKNOWN_DATASET",
            format!("there is no dataset named {dataset}; ListDatasets shows the published ones"),
        )
        .with("dataset", dataset.to_string())
    })
}

/// The day the data are asked for: the reference date, or today.
fn reference_date(
    msg: &LookupRequest,
    dataset: &DatasetName,
    route: &Route,
    today: Date,
    trace: &mut Trace,
) -> Result<Date, ApiError> {
    if msg.reference_date.is_empty() {
        return Ok(today);
    }
    let date = parse_date("reference_date", &msg.reference_date)?;
    if date > today {
        return Err(ApiError::invalid(
            "reference_date",
            "INVALID_ARGUMENT",
            "reference_date lies in the future",
        ));
    }
    if date != today && !route.dataset.keeps_history {
        return Err(ApiError::invalid(
            "reference_date",
            "HISTORY_NOT_KEPT",
            format!("the source of {dataset} keeps no history; leave reference_date empty"),
        ));
    }
    trace.reference_date = Some(format_date(date));
    Ok(date)
}

fn validate_consumer_reference(reference: &str) -> Result<(), ApiError> {
    if reference.chars().count() > MAX_REFERENCE || reference.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "consumer_reference",
            "INVALID_ARGUMENT",
            format!("consumer_reference must be at most {MAX_REFERENCE} printable characters"),
        ));
    }
    Ok(())
}

/// The consumer's files on the citizen and the citizen's consents, as far
/// as the decision may need them.
async fn read_files_and_consents(
    broker: &Broker,
    org: &Organisation,
    resolved: &Resolved,
    authorisations: &[Authorisation],
    purpose: &PurposeCode,
) -> Result<(Vec<PersonFile>, Vec<Consent>), ApiError> {
    let persons = &broker.storage().persons;
    // The persons directory and consents are read only when an
    // authorisation could use them.
    let files = if authorisations.iter().any(|a| &a.purpose == purpose) {
        persons.files_of(&org.kbo, resolved).await?
    } else {
        Vec::new()
    };
    let consents = if authorisations
        .iter()
        .any(|a| &a.purpose == purpose && a.consent_required)
    {
        persons.consents_of(resolved).await?
    } else {
        Vec::new()
    };
    Ok((files, consents))
}

/// The authorisation that allows the question (file and consent checked
/// by `decide()`), or the refusal of the one that came furthest.
fn find_authorisation(
    question: &LookupQuestion<'_>,
    authorisations: &[Authorisation],
    trace: &mut Trace,
) -> Result<Allowance, ApiError> {
    match semel_core::decide(question, authorisations) {
        Decision::Allow(allowance) => Ok(allowance),
        Decision::Deny(refusal) => {
            trace.authorisation = refusal.authorisation.as_ref().map(ToString::to_string);
            trace.authorisation_version = refusal.authorisation_version;
            trace.reason = Some(ReasonCode::Refused(refusal.reason));
            trace.detail = refusal.explain(question.dataset, question.purpose);
            Err(refusal_error(&refusal, trace.detail.clone()))
        }
    }
}

/// Different questions about one citizen are bounded: enumeration and
/// sweeps stop here, whatever the authorisation allows.
fn bound_questions(
    broker: &Broker,
    org: &Organisation,
    citizen: &Niss,
    allowance: &Allowance,
    today: Date,
    received: OffsetDateTime,
) -> Result<(), ApiError> {
    if let Err(field) = broker
        .questions
        .admit(org.kbo, citizen, &allowance.checks, today)
    {
        return Err(until_midnight(
            received,
            "CHECK_LIMIT_REACHED",
            format!(
                "your organisation asked {} different questions about this citizen's {field} today, as many as it may; the same questions may be asked again, new ones tomorrow",
                broker.questions.per_key()
            ),
        ));
    }
    Ok(())
}

/// A source at its cap, or whose circuit is open, is not called: its
/// trouble stays with the lookups that need it.
fn enter_source(route: &Route, dataset: &DatasetName) -> Result<Pass, ApiError> {
    route.guard.enter(std::time::Instant::now()).map_err(|refusal| {
        let e = match refusal {
            SourceRefusal::Busy => ApiError {
                retry_after: Some(std::time::Duration::from_millis(100)),
                ..ApiError::new(
                    Code::ResourceExhausted,
                    "SOURCE_BUSY",
                    format!("the source of {dataset} has as many lookups in flight as it may take; retry shortly"),
                )
            },
            SourceRefusal::CircuitOpen(wait) => ApiError {
                retry_after: Some(wait),
                ..ApiError::new(
                    Code::Unavailable,
                    "SOURCE_CIRCUIT_OPEN",
                    format!("the source of {dataset} failed repeatedly; lookups to it fail fast for {} ms", wait.as_millis()),
                )
            },
        };
        e.with("source_kbo", route.dataset.source.as_str())
    })
}

/// The call to the source: the allowed fields and the fields tested, and
/// what the source learns for its own log.
fn fetch_request(
    org: &Organisation,
    asked: &Asked,
    citizen: &Niss,
    allowance: &Allowance,
    request_id: &str,
    trace: &Trace,
) -> Request<FetchRequest> {
    // The source is asked for the fields read and the fields tested.
    let forwarded: BTreeSet<&str> = allowance
        .fields
        .iter()
        .map(FieldName::as_str)
        .chain(allowance.checks.iter().map(|q| q.field.as_str()))
        .collect();
    let mut fetch = Request::new(FetchRequest {
        request_id: request_id.to_owned(),
        dataset: asked.dataset.to_string(),
        citizen: citizen.as_str().to_owned(),
        fields: forwarded.iter().map(|f| (*f).to_owned()).collect(),
        reference_date: trace.reference_date.clone().unwrap_or_default(),
        consumer_kbo: org.kbo.as_str().to_owned(),
        purpose: asked.purpose.to_string(),
        authorisation_reference: allowance.authorisation.to_string(),
    });
    if let Ok(v) = request_id.parse() {
        fetch.metadata_mut().insert("x-request-id", v);
    }
    fetch
}

/// The CLIENT span of the call to the source, named and described as the
/// OpenTelemetry conventions say for a gRPC call.
fn source_span(route: &Route, fetch: &mut Request<FetchRequest>) -> tracing::Span {
    let source_span = tracing::debug_span!(
        "source.fetch",
        otel.name = "semel.v1.SourceService/Fetch",
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = "semel.v1.SourceService",
        rpc.method = "Fetch",
        rpc.grpc.status_code = tracing::field::Empty,
        server.address = tracing::field::Empty,
        server.port = tracing::field::Empty,
        source = route.dataset.source.as_str(),
    );
    // The trace continues at the source (W3C traceparent), when traces are
    // exported; otherwise the span is disabled and nothing is done here.
    if !source_span.is_disabled() {
        // The endpoint is the operator's registration, not caller text.
        if let Ok(uri) = route.dataset.endpoint.parse::<tonic::codegen::http::Uri>() {
            if let Some(host) = uri.host() {
                source_span.record("server.address", host);
            }
            if let Some(port) = uri.port_u16() {
                source_span.record("server.port", i64::from(port));
            }
        }
        for (k, v) in source_span.in_scope(crate::telemetry::trace_headers) {
            if let (Ok(k), Ok(v)) = (
                tonic::metadata::AsciiMetadataKey::from_bytes(k.as_bytes()),
                v.parse(),
            ) {
                fetch.metadata_mut().insert(k, v);
            }
        }
    }
    source_span
}

/// Forwards the call to the source under the broker's deadline, and
/// records what happened there: in the span, the metrics and the source's
/// circuit breaker.
async fn forward_to_source(
    broker: &Broker,
    asked: &Asked,
    mut fetch: Request<FetchRequest>,
    pass: Pass,
    trace: &mut Trace,
) -> Result<FetchResponse, ApiError> {
    let route = &asked.route;
    let source_span = source_span(route, &mut fetch);
    let deadline = broker.source_deadline();
    let mut client = route.client.clone();
    // The broker's timer is the deadline: it also covers a source that
    // accepts the connection and never answers. Dropping the call on
    // timeout resets the HTTP/2 stream, so the source stops working on it.
    let called = std::time::Instant::now();
    let answer = match tokio::time::timeout(deadline, client.fetch(fetch))
        .instrument(source_span.clone())
        .await
    {
        Ok(r) => r,
        Err(_) => Err(Status::deadline_exceeded("source deadline")),
    };
    if !source_span.is_disabled() {
        match &answer {
            Ok(_) => {
                source_span.record("rpc.grpc.status_code", 0_i64);
            }
            // The source's code, and the reason the consumer is given.
            Err(status) => crate::telemetry::fail(
                &source_span,
                status.code(),
                Some(source_failure(status.code()).2),
            ),
        }
    }
    let answer = answer
        .map(tonic::Response::into_inner)
        .map_err(|status| source_error(status, route, deadline, trace));
    if answer.is_ok() {
        trace.outcome = Outcome::Answered;
    }
    record_source_call(broker, asked, trace.outcome, called);
    let reachable = !matches!(
        trace.outcome,
        Outcome::SourceUnavailable | Outcome::SourceTimeout
    );
    route
        .guard
        .record(pass, reachable, std::time::Instant::now());
    answer
}

/// The metrics of one call to a source.
fn record_source_call(
    broker: &Broker,
    asked: &Asked,
    outcome: Outcome,
    called: std::time::Instant,
) {
    broker
        .metrics
        .source_calls
        .get_or_create(&SourceLabels {
            source: asked.route.dataset.source.as_str().to_owned(),
            dataset: asked.dataset.to_string(),
            outcome: outcome_label(outcome),
        })
        .inc();
    broker
        .metrics
        .source_seconds
        .get_or_create(&DatasetLabel {
            dataset: asked.dataset.to_string(),
        })
        .observe(called.elapsed().as_secs_f64());
}

/// The answer the consumer gets: the checks answered from the values, and
/// of the values only the allowed fields.
fn filter_answer(
    mut answer: FetchResponse,
    asked: &Asked,
    allowance: &Allowance,
    request_id: String,
    trace: &mut Trace,
) -> LookupResponse {
    // Checks are answered from the values, which then go no further.
    let answer_of = |q: &Question| crate::checks::answer(q, answer.fields.get(q.field.as_str()));
    let check_results = asked
        .checks
        .iter()
        .map(|q| proto::CheckResult {
            field: q.field.to_string(),
            answer: answer_of(q) as i32,
        })
        .collect();
    // The entry keeps each question with its answer: an auditor sees exactly
    // what the consumer learnt.
    trace.checks = allowance
        .checks
        .iter()
        .map(|q| {
            format!(
                "{}: {}",
                q.describe(),
                crate::checks::answer_word(answer_of(q))
            )
        })
        .collect();
    let allowed: BTreeSet<&str> = allowance.fields.iter().map(FieldName::as_str).collect();
    answer.fields.retain(|k, _| allowed.contains(k.as_str()));
    let fields = answer.fields;
    let mut returned: Vec<String> = fields.keys().cloned().collect();
    returned.sort();
    trace.fields_returned = returned;
    LookupResponse {
        request_id,
        authorisation_reference: allowance.authorisation.to_string(),
        source_kbo: asked.route.dataset.source.as_str().to_owned(),
        fields,
        checks: check_results,
    }
}

/// A daily allowance used up: RESOURCE_EXHAUSTED, to retry after midnight
/// in Brussels.
fn until_midnight(received: OffsetDateTime, reason: &'static str, message: String) -> ApiError {
    ApiError {
        retry_after: Some(
            semel_core::until_brussels_midnight(received).max(std::time::Duration::from_secs(1)),
        ),
        ..ApiError::new(Code::ResourceExhausted, reason, message)
    }
}

fn validate_fields(
    requested: &[String],
    has_checks: bool,
    route: &Route,
) -> Result<Vec<FieldName>, ApiError> {
    if requested.is_empty() && !has_checks {
        return Err(ApiError::invalid(
            "fields",
            "INVALID_ARGUMENT",
            "name at least one field or one check; ask only for what the purpose needs",
        ));
    }
    if requested.len() > MAX_FIELDS {
        return Err(ApiError::invalid(
            "fields",
            "INVALID_ARGUMENT",
            format!("at most {MAX_FIELDS} fields per lookup"),
        ));
    }
    let mut out = Vec::with_capacity(requested.len());
    for f in requested {
        let name = FieldName::new(f.clone())
            .map_err(|e| ApiError::invalid("fields", "INVALID_ARGUMENT", format!("fields: {e}")))?;
        if route.dataset.field(name.as_str()).is_none() {
            return Err(ApiError::invalid(
                "fields",
                "UNKNOWN_FIELD",
                format!("dataset {} has no field {name}", route.dataset.name),
            )
            .with("field", name.to_string()));
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

fn refusal_error(refusal: &Refusal, message: String) -> ApiError {
    let join = |items: Vec<&str>| items.join(",");
    let mut e = ApiError::denied(refusal.reason.code(), message);
    if let Some(a) = &refusal.authorisation {
        e = e.with("authorisation_reference", a.to_string());
    }
    if !refusal.fields_not_allowed.is_empty() {
        e = e.with(
            "fields_not_allowed",
            join(
                refusal
                    .fields_not_allowed
                    .iter()
                    .map(FieldName::as_str)
                    .collect(),
            ),
        );
    }
    if let Some(c) = &refusal.checks {
        e = e.with("checks_not_allowed", c.asked.join("; "));
    }
    if refusal.reason == semel_core::RefusalReason::NoActiveFile {
        e = e.with(
            "capacities_required",
            join(
                refusal
                    .capacities_required
                    .iter()
                    .map(|c| c.as_str())
                    .collect(),
            ),
        );
    }
    if let Some((id, state)) = refusal.consent.as_deref() {
        e = e.with("consent_id", id.clone()).with(
            "consent_state",
            match state {
                semel_core::ConsentState::Withdrawn => "withdrawn",
                semel_core::ConsentState::Expired => "expired",
                semel_core::ConsentState::NotYetGiven => "not_yet_given",
                semel_core::ConsentState::Valid => "valid",
            },
        );
    }
    e
}

/// What a source's error means for the consumer. A source's own refusal
/// (it does not accept the request, or finds it invalid) is final: telling
/// the consumer to retry would send it round in circles. Only failures a
/// later call may not meet are retryable.
fn source_failure(code: Code) -> (Outcome, Code, &'static str, bool) {
    match code {
        Code::NotFound => (Outcome::NoData, Code::NotFound, "SUBJECT_NOT_FOUND", false),
        Code::DeadlineExceeded | Code::Cancelled => (
            Outcome::SourceTimeout,
            Code::DeadlineExceeded,
            "SOURCE_TIMEOUT",
            true,
        ),
        Code::Unavailable => (
            Outcome::SourceUnavailable,
            Code::Unavailable,
            "SOURCE_UNAVAILABLE",
            true,
        ),
        Code::PermissionDenied | Code::Unauthenticated => (
            Outcome::SourceError,
            Code::PermissionDenied,
            "SOURCE_REFUSED",
            false,
        ),
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => (
            Outcome::SourceError,
            Code::FailedPrecondition,
            "SOURCE_REJECTED_REQUEST",
            false,
        ),
        Code::ResourceExhausted => (
            Outcome::SourceError,
            Code::ResourceExhausted,
            "SOURCE_BUSY",
            true,
        ),
        _ => (
            Outcome::SourceError,
            Code::Unavailable,
            "SOURCE_ERROR",
            true,
        ),
    }
}

fn source_error(
    status: Status,
    route: &Route,
    deadline: std::time::Duration,
    trace: &mut Trace,
) -> ApiError {
    let ds = &route.dataset.name;
    let source = route.dataset.source.as_str().to_owned();
    // The broker refused to send the request: the server at the endpoint
    // is not the dataset's owner, or its address is not one for sources.
    // Retrying will not help until the operator or the source acts.
    if let Some(refusal) = crate::source_channel::refusal(&status) {
        trace.outcome = Outcome::SourceUnavailable;
        let err = match refusal {
            crate::source_channel::Refusal::NotAuthentic(why) => ApiError::new(
                Code::Unavailable,
                "SOURCE_NOT_AUTHENTIC",
                format!(
                    "the source of {ds} was sent nothing: {why}; the operator has been told (the endpoint or the source's certificate must be corrected)"
                ),
            ),
            crate::source_channel::Refusal::Forbidden(why) => ApiError::new(
                Code::Unavailable,
                "SOURCE_UNAVAILABLE",
                format!("the source of {ds} was not called: {why}"),
            ),
        };
        return err.with("source_kbo", source);
    }
    let (outcome, code, reason, retryable) = source_failure(status.code());
    let message = match reason {
        "SUBJECT_NOT_FOUND" => format!("the source of {ds} holds no data about this citizen"),
        "SOURCE_TIMEOUT" => format!(
            "the source of {ds} did not answer within {} ms; try again later",
            deadline.as_millis()
        ),
        "SOURCE_UNAVAILABLE" => format!("the source of {ds} cannot be reached; try again later"),
        // The source's own words help the consumer (or the operator) see
        // what it objects to; national numbers in them are masked when the
        // error becomes a Status.
        "SOURCE_REFUSED" => format!(
            "the source of {ds} refused this request under its own rules ({}); retrying will not help: ask the operator or the source",
            bounded(status.message(), 200)
        ),
        "SOURCE_REJECTED_REQUEST" => format!(
            "the source of {ds} does not accept this request ({}); retrying the same request will not help",
            bounded(status.message(), 200)
        ),
        "SOURCE_BUSY" => format!("the source of {ds} is overloaded; retry shortly"),
        _ => format!("the source of {ds} answered with an error; try again later"),
    };
    if outcome == Outcome::SourceError {
        tracing::warn!(dataset = %ds, source = %source, code = ?status.code(), "source answered with an error");
    }
    trace.outcome = outcome;
    let err = if retryable {
        ApiError::retryable(code, reason, message)
    } else {
        ApiError::new(code, reason, message)
    };
    err.with("source_kbo", source)
}

/// The metrics label of what happened at the source.
fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Answered => "answered",
        Outcome::NoData => "no_data",
        Outcome::SourceTimeout => "timeout",
        Outcome::SourceUnavailable => "unavailable",
        Outcome::SourceError | Outcome::NotForwarded => "error",
    }
}

/// What an entry keeps of a name the caller sent: the name when it is well
/// formed (and holds nothing shaped like a national number), else a
/// placeholder. Raw caller text would otherwise stay in the log forever and
/// reach citizens' views and spreadsheets.
pub(crate) fn recorded_name(s: &str, valid: impl Fn(&str) -> bool) -> String {
    if s.is_empty() {
        String::new()
    } else if valid(s)
        && matches!(
            semel_core::redact_national_numbers(s),
            std::borrow::Cow::Borrowed(_)
        )
    {
        s.to_owned()
    } else {
        INVALID_NAME.to_owned()
    }
}

/// What an entry shows for a name that was not well formed.
const INVALID_NAME: &str = "(not a valid name)";

fn bounded(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sources_refusal_is_final_and_its_failures_retryable() {
        for (code, reason, retryable) in [
            (Code::PermissionDenied, "SOURCE_REFUSED", false),
            (Code::Unauthenticated, "SOURCE_REFUSED", false),
            (Code::InvalidArgument, "SOURCE_REJECTED_REQUEST", false),
            (Code::FailedPrecondition, "SOURCE_REJECTED_REQUEST", false),
            (Code::NotFound, "SUBJECT_NOT_FOUND", false),
            (Code::Unavailable, "SOURCE_UNAVAILABLE", true),
            (Code::DeadlineExceeded, "SOURCE_TIMEOUT", true),
            (Code::ResourceExhausted, "SOURCE_BUSY", true),
            (Code::Internal, "SOURCE_ERROR", true),
        ] {
            let (_, sent, r, retry) = source_failure(code);
            assert_eq!((r, retry), (reason, retryable), "{code:?}");
            // A client retries on UNAVAILABLE: never for a final answer.
            assert_eq!(
                sent == Code::Unavailable,
                retryable && sent != Code::DeadlineExceeded && sent != Code::ResourceExhausted,
                "{code:?}"
            );
            assert!(
                semel_core::ReasonCode::parse(r).is_some(),
                "{r} is recorded in the audit log"
            );
        }
    }
}
