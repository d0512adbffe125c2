//! The call to the source on the lookup path: a source at its cap or with
//! its circuit open is not called; the request names the allowed and the
//! tested fields; the call runs under the broker's deadline, in a CLIENT
//! span that carries the trace on; its failure becomes the consumer's
//! error; and of its answer the consumer gets the checks' answers and the
//! allowed fields only.

use std::collections::BTreeSet;

use semel_core::{Allowance, DatasetName, FieldName, Niss, Organisation, Outcome, Question};
use tonic::{Code, Request, Status};
use tracing::Instrument;

use super::record::bounded;
use super::{Asked, Trace};
use crate::error::ApiError;
use crate::limits::{Pass, SourceRefusal};
use crate::metrics::{DatasetLabel, SourceLabels};
use crate::proto::{self, FetchRequest, FetchResponse, LookupResponse};
use crate::state::{Broker, Route};

/// A source at its cap, or whose circuit is open, is not called: its
/// trouble stays with the lookups that need it.
pub(super) fn enter_source(route: &Route, dataset: &DatasetName) -> Result<Pass, ApiError> {
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
pub(super) fn fetch_request(
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
pub(super) async fn forward_to_source(
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
pub(super) fn filter_answer(
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
