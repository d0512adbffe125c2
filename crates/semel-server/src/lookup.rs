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

use std::sync::Arc;

use tracing::Instrument;

use semel_core::{
    Allowance, AuditDecision, Authorisation, Consent, DatasetName, Decision, FieldName,
    LookupQuestion, Niss, Organisation, Outcome, PersonFile, PurposeCode, Question, ReasonCode,
    Refusal, brussels_today,
};
use semel_store::Resolved;
use time::{Date, OffsetDateTime};
use tonic::{Code, Request, Response, Status};

mod record;
mod source;

pub(crate) use record::recorded_name;
use record::{append_entry, audit_record, count_lookup, log_lookup, mark_span};
use source::{enter_source, fetch_request, filter_answer, forward_to_source};

use crate::convert::{format_date, parse_date};
use crate::error::ApiError;
use crate::proto::{self, LookupRequest, LookupResponse};
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
