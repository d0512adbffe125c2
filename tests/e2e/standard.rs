//! The standard gRPC services and details every gRPC user expects:
//! health, reflection (v1 and v1alpha), RetryInfo, message size limits.

use std::time::Duration;

use semel_demo::seed::datasets::*;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

use crate::harness::*;

#[tokio::test]
async fn health_answers_without_a_client_certificate() {
    let t = TestDemo::start().await;
    let channel = t
        .channel_with(None, &t.pki().ca_cert())
        .await
        .expect("TLS without a client certificate");
    let mut health = HealthClient::new(channel);
    for service in [
        "",
        "semel.v1.LookupService",
        "semel.v1.RegistryService",
        "semel.v1.AuditService",
    ] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let err = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(err.code(), Code::NotFound);
    t.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_services_in_both_versions() {
    let t = TestDemo::start().await;
    let channel = t
        .channel_with(None, &t.pki().ca_cert())
        .await
        .expect("connect");
    {
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut client = ServerReflectionClient::new(channel.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .expect("v1")
            .into_inner();
        let msg = stream.message().await.expect("message").expect("response");
        let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
            panic!("v1: {msg:?}")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for want in [
            "semel.v1.LookupService",
            "semel.v1.RegistryService",
            "semel.v1.AuditService",
            "grpc.health.v1.Health",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "v1 lists {want}: {names:?}"
            );
        }
    }
    {
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut client = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "semel.v1.LookupService".into(),
            )),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .expect("v1alpha")
            .into_inner();
        let msg = stream.message().await.expect("message").expect("response");
        assert!(
            matches!(msg.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
            "v1alpha: {msg:?}"
        );
    }
    t.stop().await;
}

#[tokio::test]
async fn reflection_lists_what_is_served_and_answers_each_request() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let t = TestDemo::start().await;
    let channel = t
        .channel_with(None, &t.pki().ca_cert())
        .await
        .expect("connect");
    let mut client = ServerReflectionClient::new(channel);
    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    // One stream, as grpcurl and buf curl use it: a list, an unknown
    // symbol, then the error details' descriptors.
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol(
                "semel.v1.NoSuchThing".into(),
            )),
            ask(MessageRequest::FileContainingSymbol(
                "google.rpc.ErrorInfo".into(),
            )),
            ask(MessageRequest::FileContainingSymbol(
                "google.rpc.RetryInfo".into(),
            )),
        ]))
        .await
        .expect("reflection")
        .into_inner();
    let mut answers = Vec::new();
    for _ in 0..4 {
        let response = stream
            .message()
            .await
            .expect("the stream goes on")
            .expect("a response");
        answers.push(response.message_response);
    }
    let mut answers = answers.into_iter().flatten();
    let Some(MessageResponse::ListServicesResponse(list)) = answers.next() else {
        panic!("a list of services")
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "semel.v1.AuditService",
            "semel.v1.ConsentService",
            "semel.v1.LookupService",
            "semel.v1.MutationService",
            "semel.v1.PersonsService",
            "semel.v1.RegistryService",
        ],
        "only what the broker serves (no SourceService)"
    );
    let Some(MessageResponse::ErrorResponse(e)) = answers.next() else {
        panic!("an error response for the unknown symbol")
    };
    assert_eq!(e.error_code, Code::NotFound as i32);
    for _ in 0..2 {
        let Some(MessageResponse::FileDescriptorResponse(f)) = answers.next() else {
            panic!("google.rpc.* descriptors")
        };
        let file = <prost_types::FileDescriptorProto as prost::Message>::decode(
            f.file_descriptor_proto[0].as_slice(),
        )
        .expect("a file descriptor");
        assert_eq!(file.name(), "google/rpc/error_details.proto");
    }
    t.stop().await;
}

#[tokio::test]
async fn retryable_errors_say_when_to_retry() {
    let t = TestDemo::start_in(
        tempfile::tempdir().expect("tempdir"),
        Duration::from_millis(400),
    )
    .await;
    let port = unused_port();
    register_test_dataset(&t, "test.gone", &format!("https://127.0.0.1:{port}")).await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let err = c
        .lookup(lookup(KARIM, "test.gone", &["a"], "TEST"))
        .await
        .expect_err("down");
    assert_error(&err, Code::Unavailable, "SOURCE_UNAVAILABLE");
    let retry = err
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(retry > Duration::ZERO);
    // A refusal is not retryable: no RetryInfo.
    let err = c
        .lookup(lookup(KARIM, RESIDENCE, &["street"], "SCHOOL_ENROLMENT"))
        .await
        .expect_err("refused");
    assert!(err.get_error_details().retry_info().is_none());
    t.stop().await;
}

#[tokio::test]
async fn an_oversized_request_is_refused_and_the_broker_carries_on() {
    let t = TestDemo::start().await;
    let mut c = t.lookup_client(ANDERLECHT).await;
    let mut req = lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY");
    req.consumer_reference = "x".repeat(200 * 1024);
    let err = c.lookup(req).await.expect_err("too large");
    // Refused by the codec, before any handler: with ErrorInfo and a
    // request id all the same.
    assert_error(&err, Code::OutOfRange, "REQUEST_TOO_LARGE");
    let request_id = error_info(&err).2["request_id"].clone();
    // A lookup that reached the broker is recorded, even unreadable.
    let e = t.audit_entries().await.pop().expect("an entry");
    assert_eq!(e.request_id, request_id);
    assert_eq!(e.operation, semel_core::LOOKUP_OPERATION);
    assert_eq!(
        e.decision,
        semel_server::proto::AuditDecision::Refused as i32
    );
    assert_eq!(
        e.consumer_kbo,
        semel_demo::seed::org(ANDERLECHT).expect("org").kbo.as_str()
    );
    // A body that is not a LookupRequest at all (field 1, the citizen, as
    // bytes that are not UTF-8): bad input, answered and recorded as such.
    #[derive(Clone, PartialEq, prost::Message)]
    struct NotALookup {
        #[prost(bytes = "vec", tag = "1")]
        citizen: Vec<u8>,
    }
    let mut grpc = tonic::client::Grpc::new(t.channel(ANDERLECHT).await);
    grpc.ready().await.expect("ready");
    let err = grpc
        .unary::<_, semel_server::proto::LookupResponse, _>(
            tonic::Request::new(NotALookup {
                citizen: vec![0xff, 0xfe, 0xfd],
            }),
            tonic::codegen::http::uri::PathAndQuery::from_static("/semel.v1.LookupService/Lookup"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("undecodable");
    assert_error(&err, Code::InvalidArgument, "MALFORMED_REQUEST");
    let e = t.audit_entries().await.pop().expect("an entry");
    assert_eq!(e.request_id, error_info(&err).2["request_id"]);
    assert_eq!(e.operation, semel_core::LOOKUP_OPERATION);
    c.lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect("the next lookup is answered");
    t.stop().await;
}

#[tokio::test]
async fn metrics_count_lookups_without_personal_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut opts, db) = demo_options(dir.path()).await;
    opts.metrics_listen = Some(([127, 0, 0, 1], 0).into());
    let t = TestDemo {
        demo: Some(semel_demo_stack::Demo::start(opts).await.expect("start")),
        dir,
        db,
    };
    let mut c = t.lookup_client(ANDERLECHT).await;
    c.lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect("allowed");
    c.lookup(lookup(JAN, RESIDENCE, &["street"], "SCHOOL_ENROLMENT"))
        .await
        .expect_err("refused");
    c.lookup(lookup(
        JAN,
        "made.up.by.a.client",
        &["street"],
        "RIS_ELIGIBILITY",
    ))
    .await
    .expect_err("unknown dataset");
    // Allowed, but the source cannot be reached: not an allowed lookup.
    register_test_dataset(
        &t,
        "test.gone",
        &format!("https://127.0.0.1:{}", unused_port()),
    )
    .await;
    c.lookup(lookup(KARIM, "test.gone", &["a"], "TEST"))
        .await
        .expect_err("the source is down");

    let addr = t.demo().metrics_addr.expect("metrics served");
    let scrape = async |accept: &str| {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: x\r\n{accept}\r\n").as_bytes())
            .await
            .expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("response");
        out
    };
    let openmetrics = scrape(
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
    )
    .await;
    assert!(
        openmetrics.contains("content-type: application/openmetrics-text")
            && openmetrics.ends_with("# EOF\n"),
        "{openmetrics}"
    );
    let body = scrape("").await;
    assert!(
        body.contains("content-type: text/plain; version=0.0.4") && !body.contains("# EOF"),
        "{body}"
    );
    assert!(
        body.contains("decision=\"failed\",reason=\"SOURCE_UNAVAILABLE\"} 1")
            && !body.contains("decision=\"allowed\",reason=\"SOURCE_UNAVAILABLE\""),
        "{body}"
    );
    assert!(
        body.contains("semel_grpc_server_handled_total{method=\"semel.v1.LookupService/Lookup\",code=\"OK\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("semel_grpc_server_handled_total{method=\"semel.v1.LookupService/Lookup\",code=\"PERMISSION_DENIED\"}"),
        "{body}"
    );
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    let anderlecht = semel_demo::seed::org(ANDERLECHT).expect("org").kbo;
    let has = |needle: &str| body.lines().any(|l| l.contains(needle));
    assert!(
        has(&format!(
            "semel_lookups_total{{consumer=\"{}\",dataset=\"national_register.residence\",decision=\"allowed\",reason=\"\"}} 1",
            anderlecht.as_str()
        )),
        "{body}"
    );
    assert!(has("reason=\"PURPOSE_NOT_ALLOWED\"} 1"), "{body}");
    assert!(
        has("dataset=\"unknown\",decision=\"refused\",reason=\"UNKNOWN_DATASET\"} 1"),
        "{body}"
    );
    assert!(
        !body.contains("made.up.by.a.client"),
        "a client's made-up name never becomes a label"
    );
    assert!(has("semel_audit_entries "), "{body}");
    // The persons directory in memory reports how often it answered, and
    // that it may.
    assert!(has("semel_persons_memory_hits_total "), "{body}");
    assert!(has("semel_persons_memory_misses_total "), "{body}");
    assert!(has("semel_persons_memory_fresh 1"), "{body}");
    assert!(has("semel_source_calls_total{source="), "{body}");
    assert!(has("semel_lookup_duration_seconds_bucket"), "{body}");
    for n in [KARIM, JAN] {
        assert!(!body.contains(n), "metrics leak a national number");
    }
    t.stop().await;
}

#[tokio::test]
async fn the_health_client_reports_serving() {
    let t = TestDemo::start().await;
    let broker = format!("https://{}", t.demo().broker_addr);
    let ca = t.pki().ca_cert();
    assert_eq!(
        semel_client::check_health(&broker, &ca, None, "")
            .await
            .expect("health"),
        "SERVING"
    );
    assert_eq!(
        semel_client::check_health(&broker, &ca, None, "semel.v1.LookupService")
            .await
            .expect("health"),
        "SERVING"
    );
    assert!(
        semel_client::check_health(&broker, &ca, None, "no.such.Service")
            .await
            .is_err()
    );
    t.stop().await;
}
