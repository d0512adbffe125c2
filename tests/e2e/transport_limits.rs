//! Security review (issue 35), the gRPC port before any authentication:
//! health and reflection answer without a client certificate, so whoever
//! reaches the port holds only a few connections and a few calls, and
//! twenty thousand `grpc.health.v1.Health/Watch` streams asked for on one
//! connection cost the broker a handful, not hundreds of megabytes;
//! organisations are answered meanwhile. A unary call has a timeout, which
//! cuts no stream.

use std::time::{Duration, Instant};

use semel_demo::seed::datasets::RESIDENCE;
use semel_server::grpc_limits::GrpcSettings;
use semel_server::metrics::RefusedConnectionLabels;
use semel_server::proto::{self, mutation_service_client::MutationServiceClient};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::harness::*;

/// A demo whose gRPC port has these settings.
async fn start_with(grpc: GrpcSettings) -> TestDemo {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut opts, db) = demo_options(dir.path()).await;
    opts.grpc = grpc;
    TestDemo {
        demo: Some(
            semel_demo_stack::Demo::start(opts)
                .await
                .expect("start the demo"),
        ),
        dir,
        db,
    }
}

/// The resident memory of this process (the broker runs in it), in KiB.
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A connection without a client certificate.
async fn anonymous(t: &TestDemo) -> Result<Channel, tonic::transport::Error> {
    t.channel_with(None, &t.pki().ca_cert()).await
}

type Watch = tonic::Streaming<HealthCheckResponse>;

/// Asks for `attempts` Watch streams on `channel`, many at once: those the
/// broker opened, and how many it refused (each with STREAMS_EXCEEDED; the
/// refusals are counted, not kept, so that the test's own memory does not
/// blur the broker's).
async fn watches(channel: &Channel, attempts: usize) -> (Vec<Watch>, usize) {
    const WORKERS: usize = 200;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let mut health = HealthClient::new(channel.clone());
        let mine = attempts / WORKERS + usize::from(w < attempts % WORKERS);
        workers.spawn(async move {
            let (mut opened, mut refused) = (Vec::new(), 0);
            for _ in 0..mine {
                match health.watch(HealthCheckRequest::default()).await {
                    Ok(stream) => opened.push(stream.into_inner()),
                    Err(status) => {
                        assert_error(&status, Code::ResourceExhausted, "STREAMS_EXCEEDED");
                        refused += 1;
                    }
                }
            }
            (opened, refused)
        });
    }
    let (mut opened, mut refused) = (Vec::new(), 0);
    while let Some(done) = workers.join_next().await {
        let (o, r) = done.expect("worker");
        opened.extend(o);
        refused += r;
    }
    (opened, refused)
}

#[tokio::test]
async fn an_outsider_without_a_certificate_holds_few_connections_and_streams_and_lookups_are_answered()
 {
    let timeout = Duration::from_secs(1);
    let t = start_with(GrpcSettings {
        max_connections_per_address_without_certificate: 4,
        max_health_watches_per_connection: 8,
        max_health_watches: 12,
        // Short, to show it cuts no stream; longer than the sources'
        // deadline (400 ms here).
        request_timeout: timeout,
        ..GrpcSettings::default()
    })
    .await;
    let metrics = t.demo().broker.metrics.clone();
    let refused_connections = |reason: &'static str| {
        metrics
            .grpc_connections_refused
            .get_or_create(&RefusedConnectionLabels { reason })
            .get()
    };
    let refused_calls = |reason: &'static str| {
        metrics
            .grpc_calls_refused
            .get_or_create(&RefusedConnectionLabels { reason })
            .get()
    };
    let check = |channel: &Channel| {
        let mut health = HealthClient::new(channel.clone());
        async move { health.check(HealthCheckRequest::default()).await }
    };

    // Connections without a certificate from one address, up to the cap:
    // each is served.
    let mut outsider = Vec::new();
    for _ in 0..4 {
        let channel = anonymous(&t).await.expect("within the cap");
        check(&channel)
            .await
            .expect("health answers without a certificate");
        outsider.push(channel);
    }
    // The next is closed at once, after its handshake.
    if let Ok(extra) = anonymous(&t).await {
        check(&extra)
            .await
            .expect_err("a fifth connection without a certificate is served");
    }
    assert!(refused_connections("per_address_without_certificate") >= 1);

    // On one connection, twenty thousand Watch streams asked for: eight
    // are opened, the rest refused at once, and memory stays bounded
    // (without the caps the broker held every one, about 10 KB each).
    let before = resident_kib();
    let opened_at = Instant::now();
    let (mut held, refused) = watches(&outsider[0], 20_000).await;
    let grown_mib = resident_kib().saturating_sub(before) / 1024;
    assert_eq!(held.len(), 8, "Watch streams opened on one connection");
    assert_eq!(refused, 20_000 - 8);
    assert_eq!(
        refused_calls("health_watches_per_connection"),
        20_000 - 8,
        "refusals counted by their cap"
    );
    assert!(
        grown_mib < 32,
        "memory grew by {grown_mib} MiB for 20,000 Watch streams asked for"
    );
    // Other connections have streams of their own, up to the cap in all.
    let (more, refused) = watches(&outsider[1], 5).await;
    assert_eq!(more.len(), 4, "Watch streams opened up to the cap in all");
    assert_eq!(refused, 1);
    assert_eq!(refused_calls("health_watches"), 1);
    held.extend(more);
    assert_eq!(metrics.grpc_health_watches.get(), 12);
    // A connection full of Watch streams still takes a health check.
    check(&outsider[0]).await.expect("a health check");

    // Meanwhile an organisation's lookup is answered.
    let answered = t
        .lookup_client(ANDERLECHT)
        .await
        .lookup(lookup(KARIM, RESIDENCE, &["street"], "RIS_ELIGIBILITY"))
        .await
        .expect("an organisation's lookup is answered");
    assert!(answered.into_inner().fields.contains_key("street"));

    // A unary call longer than the timeout is cut, and says so: a pull of
    // changes that would wait two seconds for one.
    let mut pulling = MutationServiceClient::new(t.channel(SCHAERBEEK).await);
    let started = Instant::now();
    let cut = pulling
        .pull_mutations(proto::PullMutationsRequest {
            after: 0,
            max_events: 0,
            wait_seconds: 2,
        })
        .await
        .expect_err("a call longer than the timeout is answered");
    assert_error(&cut, Code::DeadlineExceeded, "CALL_TIMEOUT");
    assert!(started.elapsed() < Duration::from_secs(2));

    // The request timeout cuts no stream: past it, every Watch stream has
    // its first status and is still open.
    if let Some(left) = (timeout + Duration::from_millis(500)).checked_sub(opened_at.elapsed()) {
        tokio::time::sleep(left).await;
    }
    for stream in &mut held {
        let first = stream.message().await.expect("the first status");
        assert!(first.is_some(), "a Watch stream ended");
        let next = tokio::time::timeout(Duration::from_millis(50), stream.message()).await;
        assert!(next.is_err(), "a Watch stream ended: {next:?}");
    }
    drop(held);
    drop(outsider);
    t.stop().await;
}
