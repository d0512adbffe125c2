//! OpenTelemetry: a lookup's spans reach an OTLP collector, linked in one
//! trace, with no national number in any attribute.
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
use opentelemetry_proto::tonic::trace::v1::Span;
use semel_demo::seed::datasets::*;
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
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            other => Some(format!("{other:?}")),
        }
    })
}

// One thread: the subscriber installed here is this thread's, and every
// task of the broker runs on it.
#[tokio::test(flavor = "current_thread")]
async fn a_lookup_is_traced_to_the_collector_without_personal_data() {
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
    tracing_subscriber::registry().with(layer).init();

    let t = TestDemo::start().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let answer = c
        .lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect("allowed")
        .into_inner();
    c.lookup(lookup(KARIM, RESIDENCE, &["street"], "SCHOOL_ENROLMENT"))
        .await
        .expect_err("refused");
    t.stop().await;
    // Flush: the exporter's thread sends while this runtime serves the collector.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .expect("flush");

    let spans = collector.0.lock().expect("lock").clone();
    let lookups: Vec<&Span> = spans.iter().filter(|s| s.name == "lookup").collect();
    assert_eq!(
        lookups.len(),
        2,
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let allowed = lookups
        .iter()
        .find(|s| attribute(s, "request_id").as_deref() == Some(answer.request_id.as_str()))
        .expect("the allowed lookup's span");
    assert_eq!(attribute(allowed, "decision").as_deref(), Some("allowed"));
    assert_eq!(attribute(allowed, "dataset").as_deref(), Some(RESIDENCE));
    let refused = lookups
        .iter()
        .find(|s| attribute(s, "decision").as_deref() == Some("refused"))
        .expect("the refused lookup's span");
    assert_eq!(
        attribute(refused, "reason").as_deref(),
        Some("PURPOSE_NOT_ALLOWED")
    );
    // The source call and the audit append are children in the same trace.
    for child in ["source.fetch", "audit.append"] {
        let s = spans
            .iter()
            .find(|s| s.name == child && s.trace_id == allowed.trace_id)
            .unwrap_or_else(|| panic!("no {child} span in the lookup's trace"));
        assert!(!s.parent_span_id.is_empty());
    }
    for s in &spans {
        for a in &s.attributes {
            let text = format!("{:?}", a.value);
            assert!(
                !text.contains(KARIM),
                "span {} carries a national number in {}",
                s.name,
                a.key
            );
        }
    }
}
