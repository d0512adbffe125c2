//! OpenTelemetry: every RPC's SERVER span and a lookup's spans reach an
//! OTLP collector, linked in one trace that continues the consumer's, with
//! the `rpc.*` attributes, error status on refusals and failures, no
//! internal attributes and no national number anywhere.
//!
//! A test binary of its own: the tracing subscriber is process-wide state,
//! and other tests running beside it on other threads would race it for
//! the callsites' interest.

#[allow(dead_code)]
#[path = "../e2e/harness.rs"]
mod harness;

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{Span, Status};
use semel_demo::seed::datasets::*;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::harness::*;

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().expect("lock");
        for r in request.into_inner().resource_spans {
            for s in r.scope_spans {
                spans.extend(s.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        }
    })
}

fn error_status(span: &Span) -> Option<String> {
    match &span.status {
        Some(Status { code, message }) if *code == StatusCode::Error as i32 => {
            Some(message.clone())
        }
        _ => None,
    }
}

/// The consumer's own span, as its tracing library would send it.
const CONSUMER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CONSUMER_SPAN: &str = "00f067aa0ba902b7";
const HTTP_TRACE: &str = "5cf92f3577b34da6a3ce929d0e0e4737";
const HTTP_SPAN: &str = "11f067aa0ba902b8";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// One thread: the subscriber installed here is this thread's, and every
// task of the broker runs on it.
#[tokio::test(flavor = "current_thread")]
async fn rpcs_are_traced_to_the_collector_as_the_conventions_say_without_personal_data() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let (layer, guard) =
        semel_server::telemetry::otlp_layer(&semel_server::telemetry::TelemetrySettings {
            otlp_endpoint: format!("http://{addr}"),
            service_name: "semel-test".into(),
            sample_ratio: 1.0,
        })
        .expect("exporter");
    // Filtered as `semel serve` filters it.
    tracing_subscriber::registry()
        .with(layer.with_filter(semel_server::telemetry::export_filter()))
        .init();

    let t = TestDemo::start().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    // The consumer traces too: its context comes with the call.
    let mut traced = tonic::Request::new(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"));
    traced.metadata_mut().insert(
        "traceparent",
        format!("00-{CONSUMER_TRACE}-{CONSUMER_SPAN}-01")
            .parse()
            .expect("ascii"),
    );
    traced
        .metadata_mut()
        .insert("tracestate", "cpas=1".parse().expect("ascii"));
    let answer = c.lookup(traced).await.expect("allowed").into_inner();
    c.lookup(lookup(KARIM, RESIDENCE, &["street"], "SCHOOL_ENROLMENT"))
        .await
        .expect_err("refused");
    // Over HTTP/JSON, the back office's traceparent is honoured the same way.
    let org = semel_demo::seed::org(ANDERLECHT).expect("org");
    let over_http = http_call_with(
        &t,
        Some(ANDERLECHT),
        Some(&t.token(ANDERLECHT, &org.user_roles())),
        "POST",
        "/v1/lookups",
        Some(
            br#"{"citizen":"93051822361","dataset":"national_register.residence","fields":["street"],"purpose":"RIS_ELIGIBILITY"}"#,
        ),
        &[("traceparent", &format!("00-{HTTP_TRACE}-{HTTP_SPAN}-01"))],
    )
    .await;
    assert_eq!(over_http.status, 200);
    // A source that is down: the call to it fails.
    let port = unused_port();
    register_test_dataset(&t, "test.down", &format!("https://127.0.0.1:{port}")).await;
    c.lookup(lookup(KARIM, "test.down", &["a"], "TEST"))
        .await
        .expect_err("down");
    // A batch: one span for the stream, a lookup span per item.
    let mut results = c
        .lookup_batch(tokio_stream::iter(
            [
                lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"),
                lookup(KARIM, RESIDENCE, &["street"], "SCHOOL_ENROLMENT"),
            ]
            .map(|item| semel_server::proto::LookupBatchRequest { item: Some(item) }),
        ))
        .await
        .expect("batch")
        .into_inner();
    while results.message().await.expect("stream").is_some() {}
    // Calls other than lookups have their server spans too.
    let _ = t
        .persons_client(ANDERLECHT)
        .await
        .register_file(semel_server::proto::RegisterFileRequest {
            file: Some(semel_server::proto::PersonFile {
                citizen: JAN.into(),
                capacity: semel_demo::seed::capacities::RIS_APPLICANT.into(),
                phase: semel_server::proto::FilePhase::Provisional as i32,
                begin_date: "2026-01-01".into(),
                ..Default::default()
            }),
        })
        .await;
    t.audit_entries().await;
    t.stop().await;
    // Flush: the exporter's thread sends while this runtime serves the collector.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .expect("flush");

    let spans = collector.0.lock().expect("lock").clone();
    let names = || spans.iter().map(|s| &s.name).collect::<Vec<_>>();
    let by_id = |id: &[u8]| spans.iter().find(|s| s.span_id == id);

    // Every RPC has a SERVER span named and described as the conventions say.
    for s in spans.iter().filter(|s| s.kind == SpanKind::Server as i32) {
        let (service, method) = s.name.split_once('/').expect("service/method");
        assert_eq!(attribute(s, "rpc.system").as_deref(), Some("grpc"));
        assert_eq!(attribute(s, "rpc.service").as_deref(), Some(service));
        assert_eq!(attribute(s, "rpc.method").as_deref(), Some(method));
        assert!(attribute(s, "rpc.grpc.status_code").is_some(), "{}", s.name);
        assert_eq!(
            attribute(s, "server.address").as_deref(),
            Some("127.0.0.1"),
            "{}",
            s.name
        );
    }
    let server = |name: &str| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| s.kind == SpanKind::Server as i32 && s.name == name)
            .collect()
    };
    for rpc in [
        "semel.v1.PersonsService/RegisterFile",
        "semel.v1.AuditService/ListAuditEntries",
        "semel.v1.RegistryService/CreateDataset",
    ] {
        assert!(!server(rpc).is_empty(), "no span for {rpc}: {:?}", names());
    }
    assert_eq!(
        server("semel.v1.LookupService/Lookup").len(),
        4,
        "{:?}",
        names()
    );
    // The HTTP/JSON call's server span continues the back office's trace.
    assert!(
        server("semel.v1.LookupService/Lookup")
            .iter()
            .any(|s| hex(&s.trace_id) == HTTP_TRACE && hex(&s.parent_span_id) == HTTP_SPAN),
        "the HTTP/JSON lookup's span does not continue its traceparent"
    );

    // The batch's items are lookups inside the stream's span, which ends
    // with the stream (its status comes in the trailers).
    let batch = server("semel.v1.LookupService/LookupBatch");
    assert_eq!(batch.len(), 1, "{:?}", names());
    assert_eq!(
        attribute(batch[0], "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    let items: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.name == "lookup"
                && by_id(&s.parent_span_id).is_some_and(|p| {
                    p.name == "lookup_batch" && p.parent_span_id == batch[0].span_id
                })
        })
        .collect();
    assert_eq!(items.len(), 2, "{:?}", names());
    assert_eq!(
        items.iter().filter(|s| error_status(s).is_some()).count(),
        1,
        "the refused item is marked"
    );
    let lookups: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "lookup" && !items.iter().any(|i| i.span_id == s.span_id))
        .collect();
    assert_eq!(lookups.len(), 4, "{:?}", names());
    // Each lookup's span is a child of its call's server span.
    let call_of = |s: &Span| -> &Span {
        let parent = by_id(&s.parent_span_id).expect("the lookup's parent");
        assert_eq!(parent.kind, SpanKind::Server as i32);
        assert_eq!(parent.name, "semel.v1.LookupService/Lookup");
        parent
    };

    let allowed = lookups
        .iter()
        .find(|s| attribute(s, "request_id").as_deref() == Some(answer.request_id.as_str()))
        .expect("the allowed lookup's span");
    assert_eq!(attribute(allowed, "decision").as_deref(), Some("allowed"));
    assert_eq!(attribute(allowed, "dataset").as_deref(), Some(RESIDENCE));
    assert_eq!(error_status(allowed), None);
    // The consumer's trace goes on through the broker: same trace, and the
    // broker's server span is the child of the consumer's span.
    let call = call_of(allowed);
    assert_eq!(hex(&call.trace_id), CONSUMER_TRACE);
    assert_eq!(hex(&call.parent_span_id), CONSUMER_SPAN);
    assert_eq!(call.trace_state, "cpas=1");
    assert_eq!(
        attribute(call, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    assert_eq!(error_status(call), None);
    // The call to the source is a CLIENT span in the lookup, and the audit
    // append is inside it too.
    let fetch = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32 && s.trace_id == allowed.trace_id)
        .unwrap_or_else(|| panic!("no source call in the lookup's trace: {:?}", names()));
    assert_eq!(fetch.kind, SpanKind::Client as i32);
    assert_eq!(fetch.parent_span_id, allowed.span_id);
    assert_eq!(attribute(fetch, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attribute(fetch, "rpc.service").as_deref(),
        Some("semel.v1.SourceService")
    );
    assert_eq!(attribute(fetch, "rpc.method").as_deref(), Some("Fetch"));
    assert_eq!(
        attribute(fetch, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    assert!(attribute(fetch, "server.address").is_some());
    assert!(attribute(fetch, "server.port").is_some());
    // The (demo) source's own server span continues the trace from there.
    assert!(
        server("semel.v1.SourceService/Fetch")
            .iter()
            .any(|s| s.trace_id == fetch.trace_id && s.parent_span_id == fetch.span_id),
        "the source's span is not the child of the broker's call"
    );
    let append = spans
        .iter()
        .find(|s| s.name == "audit.append" && s.trace_id == allowed.trace_id)
        .expect("the audit append in the lookup's trace");
    assert_eq!(append.parent_span_id, allowed.span_id);

    // A refusal: Error, with the reason code, on the lookup and on its call.
    let refused = lookups
        .iter()
        .find(|s| attribute(s, "reason").as_deref() == Some("PURPOSE_NOT_ALLOWED"))
        .expect("the refused lookup's span");
    assert_eq!(attribute(refused, "decision").as_deref(), Some("refused"));
    assert_eq!(
        error_status(refused).as_deref(),
        Some("PURPOSE_NOT_ALLOWED")
    );
    let call = call_of(refused);
    assert_eq!(error_status(call).as_deref(), Some("PURPOSE_NOT_ALLOWED"));
    assert_eq!(
        attribute(call, "rpc.grpc.status_code").as_deref(),
        Some("7")
    );
    // Without the consumer's context, the broker starts a trace of its own.
    assert!(call.parent_span_id.is_empty());
    assert_ne!(hex(&call.trace_id), CONSUMER_TRACE);

    // A failed source call: Error on the client span, the lookup and the call.
    let failed = lookups
        .iter()
        .find(|s| attribute(s, "reason").as_deref() == Some("SOURCE_UNAVAILABLE"))
        .expect("the failed lookup's span");
    assert_eq!(error_status(failed).as_deref(), Some("SOURCE_UNAVAILABLE"));
    assert_eq!(
        error_status(call_of(failed)).as_deref(),
        Some("SOURCE_UNAVAILABLE")
    );
    let fetch = spans
        .iter()
        .find(|s| s.name == "semel.v1.SourceService/Fetch" && s.parent_span_id == failed.span_id)
        .expect("the failed source call's span");
    assert_eq!(fetch.kind, SpanKind::Client as i32);
    assert_eq!(error_status(fetch).as_deref(), Some("SOURCE_UNAVAILABLE"));
    assert_eq!(
        attribute(fetch, "rpc.grpc.status_code").as_deref(),
        Some("14")
    );
    assert_eq!(
        attribute(fetch, "server.port"),
        Some(port.to_string()),
        "the source's address"
    );

    // Only what Semel sets is exported, and never a national number.
    for s in &spans {
        let internal = |key: &str| {
            ["busy_ns", "idle_ns"].contains(&key)
                || key.starts_with("code.")
                || key.starts_with("thread.")
        };
        for a in &s.attributes {
            assert!(
                !internal(&a.key) && a.key != "level" && a.key != "target",
                "span {} exports the internal attribute {}",
                s.name,
                a.key
            );
        }
        // An event (a log line inside a span) keeps its level and target.
        for a in s.events.iter().flat_map(|e| &e.attributes) {
            assert!(
                !internal(&a.key),
                "an event of span {} exports the internal attribute {}",
                s.name,
                a.key
            );
        }
        let texts = s
            .attributes
            .iter()
            .chain(s.events.iter().flat_map(|e| &e.attributes))
            .map(|a| format!("{:?}", a.value))
            .chain(s.events.iter().map(|e| e.name.clone()))
            .chain([s.name.clone(), format!("{:?}", s.status)]);
        for text in texts {
            for niss in [KARIM, JAN] {
                assert!(
                    !text.contains(niss),
                    "span {} carries a national number: {text}",
                    s.name
                );
            }
        }
    }
}
