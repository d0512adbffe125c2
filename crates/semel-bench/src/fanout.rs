//! `semel bench-mutations`: the fan-out of published changes to many
//! subscribed consumers, in one process: the demo (broker, sources, a
//! population with files), `consumers` consumer organisations each holding
//! a file on every person under an authorisation that receives residence
//! changes, each subscribed over mutual TLS and acknowledging as it goes;
//! and `publishers` sources' connections publishing batches of changes for
//! random people. It measures changes accepted per second, deliveries per
//! second and the time from a publication's request to each delivery
//! (publish-to-delivery latency: routing, the queue write, the delivery's
//! audit entry, the stream).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use semel_core::{Kbo, UserRole};
use semel_demo::issuer::{DEV_AUDIENCE, DevIssuer, TokenRequest};
use semel_demo::pki::Subject;
use serde::Serialize;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use semel_demo_stack::demo::{Demo, DemoOptions};
use semel_server::proto::{self, mutation_service_client::MutationServiceClient};

/// What `semel bench-mutations` runs.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    /// Consumers subscribed (CPAS d'Anderlecht and `consumers - 1` more).
    pub consumers: usize,
    pub population: usize,
    pub publishers: usize,
    /// Changes per publication.
    pub batch: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Run the broker on this PostgreSQL database instead of the embedded store.
    pub postgresql: Option<String>,
    /// The demo's data directory (a fresh one).
    pub data_dir: std::path::PathBuf,
    /// Publish at this many changes per second in all (an open loop, to
    /// measure latency at a given load); as fast as answers come when
    /// `None` (a closed loop, to measure the most the broker takes).
    pub rate: Option<f64>,
    /// Subscribe through a second broker on the same PostgreSQL database
    /// (the demo's `second-broker.toml`, in this process on a port of its
    /// own), while the sources publish through the first: the latency of a
    /// change across brokers.
    pub second_broker: bool,
    /// With `second_broker`: that broker does not listen for the changes
    /// the first queues and finds them by its fallback poll (every
    /// 250 ms), as brokers did before they listened: the baseline.
    pub second_broker_polls: bool,
}

/// What it measured.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub store: &'static str,
    /// Where the subscribers were: "the publishers' broker", "a second
    /// broker (notified)", "a second broker (polling)".
    pub subscribed_through: &'static str,
    pub consumers: usize,
    pub population: usize,
    pub publishers: usize,
    pub batch: usize,
    /// The publication rate asked for, when open-loop.
    pub rate: Option<f64>,
    pub seconds: f64,
    /// Changes accepted (answered) while measuring.
    pub changes: u64,
    pub changes_per_s: f64,
    /// Changes received by consumers while measuring.
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    /// Publish-to-delivery latency of the deliveries of changes published
    /// while measuring, in milliseconds.
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Deliveries expected (changes × consumers) that had not arrived 30 s
    /// after publishing stopped: must be 0.
    pub missing: u64,
}

/// A valid enterprise number for the `i`th benchmark consumer.
fn bench_kbo(i: usize) -> Kbo {
    let n = 4_000_000 + i as u64;
    let check = 97 - n % 97;
    Kbo::parse(&format!("0{n:07}{check:02}")).expect("a valid benchmark enterprise number")
}

/// Runs the benchmark with a demo in `opts.data_dir`.
pub async fn run_fanout(opts: FanoutOptions) -> anyhow::Result<FanoutReport> {
    let mut demo_opts = DemoOptions::new(&opts.data_dir);
    demo_opts.listen = ([127, 0, 0, 1], 0).into();
    demo_opts.population = opts.population;
    demo_opts.postgresql = opts.postgresql.clone();
    // The benchmark measures what the broker takes, not the source's
    // budget of changes (which a closed loop with large batches can reach).
    demo_opts.limits.source_publications_per_second = 1e9;
    demo_opts.limits.source_publication_burst = 1e9;
    demo_opts.limits = demo_opts.limits.without_organisation_budgets();
    let demo = Demo::start(demo_opts).await?;
    let second = if opts.second_broker {
        match second_broker(&demo, opts.second_broker_polls).await {
            Ok(s) => Some(s),
            Err(e) => {
                demo.stop().await?;
                return Err(e);
            }
        }
    } else {
        None
    };
    let result = fanout(&demo, second.as_ref(), &opts).await;
    if let Some(second) = second {
        let _ = second.stop.send(());
        second.task.await.context("the second broker")??;
    }
    demo.stop().await?;
    result
}

/// The demo's second broker, serving on a port of its own.
struct Second {
    broker: Arc<semel_server::state::Broker>,
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn second_broker(demo: &Demo, polls: bool) -> anyhow::Result<Second> {
    let (path, _) = demo
        .second_broker
        .clone()
        .context("a second broker needs the PostgreSQL store (--store postgresql://…)")?;
    let config = semel_server::Config::load(&path)?;
    let prepared = semel_server::server::prepare(&config).await?;
    let broker = prepared.broker.clone();
    if polls {
        broker.poll_for_other_brokers_changes();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(semel_server::server::serve_broker(
        listener,
        prepared,
        async {
            let _ = stopped.await;
        },
    ));
    Ok(Second {
        broker,
        addr,
        stop,
        task,
    })
}

async fn channel(
    demo: &Demo,
    cert: &std::path::Path,
    key: &std::path::Path,
    token: &str,
) -> anyhow::Result<semel_client::AuthChannel> {
    channel_to(demo, demo.broker_addr, cert, key, token).await
}

async fn channel_to(
    demo: &Demo,
    addr: std::net::SocketAddr,
    cert: &std::path::Path,
    key: &std::path::Path,
    token: &str,
) -> anyhow::Result<semel_client::AuthChannel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(demo.pki.ca_cert())?))
        .identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .tcp_nodelay(true)
        .connect()
        .await?;
    semel_client::with_token(channel, Some(token))
}

fn mint(issuer: &DevIssuer, subject: &str, org: Kbo, role: UserRole) -> anyhow::Result<String> {
    Ok(issuer.mint(&TokenRequest {
        subject,
        organisation: org,
        roles: &[role],
        audience: DEV_AUDIENCE,
        expires_in: 3600,
        not_before: None,
        bound_to: None,
    })?)
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

async fn fanout(
    demo: &Demo,
    second: Option<&Second>,
    opts: &FanoutOptions,
) -> anyhow::Result<FanoutReport> {
    let subscribe_at = second.map_or(demo.broker_addr, |s| s.addr);
    use semel_demo::seed;
    let issuer = DevIssuer::ensure(&demo.pki.dir).context("the demo issuer")?;
    let operator = seed::org("operator").context("operator")?;
    let admin_token = mint(&issuer, "bench-admin", operator.kbo, UserRole::Admin)?;
    let op_files = demo.pki.files(operator.kbo.as_str());
    let mut registry = proto::registry_service_client::RegistryServiceClient::new(
        channel(demo, &op_files.cert, &op_files.key, &admin_token).await?,
    );
    // The subscribers: CPAS d'Anderlecht (the demo's files) and more.
    let anderlecht = seed::org("cpas-anderlecht").context("cpas-anderlecht")?;
    let mut subscribers = vec![(anderlecht.kbo, demo.pki.files(anderlecht.kbo.as_str()))];
    let today = time::OffsetDateTime::now_utc();
    let mut files = Vec::new();
    for i in 1..opts.consumers {
        let kbo = bench_kbo(i);
        let name = format!("Benchmark consumer {i}");
        registry
            .create_organisation(proto::CreateOrganisationRequest {
                organisation: Some(proto::Organisation {
                    kbo: kbo.as_str().to_owned(),
                    name: name.clone(),
                    roles: vec![proto::OrganisationRole::Consumer as i32],
                    ..Default::default()
                }),
            })
            .await
            .context("register a benchmark consumer")?;
        registry
            .create_authorisation(proto::CreateAuthorisationRequest {
                authorisation: Some(proto::Authorisation {
                    reference: format!("BENCH/{i}"),
                    consumer_kbo: kbo.as_str().to_owned(),
                    dataset: seed::datasets::RESIDENCE.to_owned(),
                    fields: vec!["street".into(), "house_number".into(), "nis_code".into()],
                    purpose: "RIS_ELIGIBILITY".into(),
                    legal_basis: seed::RIS_LEGAL_BASIS.into(),
                    issuing_body: "benchmark".into(),
                    valid_from: "2024-01-01".into(),
                    capacities: vec![seed::capacities::RIS_BENEFICIARY.into()],
                    receives_mutations: true,
                    ..Default::default()
                }),
            })
            .await
            .context("authorise a benchmark consumer")?;
        let stem = format!("bench-{i}");
        let certs = demo.pki.issue(&Subject {
            file_stem: &stem,
            kbo,
            name: &name,
        })?;
        subscribers.push((kbo, certs));
        for (n, p) in demo.population.people.iter().enumerate() {
            files.push(semel_core::PersonFile {
                id: format!("bench-{i}-{n}"),
                consumer: kbo,
                citizen: p.niss,
                capacity: semel_core::CapacityCode::new(seed::capacities::RIS_BENEFICIARY)?,
                phase: semel_core::FilePhase::Definitive,
                begins: time::macros::date!(2024 - 01 - 01),
                ends: None,
                consumer_reference: String::new(),
                registered_by: "bench".into(),
                registered_at: today,
                closed_at: None,
            });
        }
    }
    for chunk in files.chunks(50_000) {
        semel_server::stores::seed_files(
            demo.broker.storage(),
            operator.kbo,
            chunk,
            "the mutation benchmark's subscribers",
        )
        .await?;
    }
    drop(files);

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let measured_received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for (i, (kbo, certs)) in subscribers.iter().enumerate() {
        let token = mint(
            &issuer,
            &format!("bench-reader-{i}"),
            *kbo,
            UserRole::Consumer,
        )?;
        let mut client = MutationServiceClient::new(
            channel_to(demo, subscribe_at, &certs.cert, &certs.key, &token).await?,
        );
        let mut stream = client
            .subscribe(proto::SubscribeRequest { after: 0 })
            .await?
            .into_inner();
        let (measuring, delivered, measured_received) = (
            measuring.clone(),
            delivered.clone(),
            measured_received.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::new();
            let mut since_ack = 0;
            let mut received = 0u64;
            while let Ok(Some(item)) = stream.message().await {
                let Some(proto::subscribe_response::Item::Event(e)) = item.item else {
                    continue;
                };
                received += 1;
                // The event id carries when its publication was sent, and
                // whether it was sent while measuring.
                let mut parts = e.source_event_id.split('-');
                let measured = parts.next() == Some("m");
                let sent: u64 = parts.nth(1).and_then(|t| t.parse().ok()).unwrap_or(0);
                if measured {
                    let us = now_micros().saturating_sub(sent);
                    latencies.push(us.min(u32::MAX as u64) as u32);
                    measured_received.fetch_add(1, Ordering::Relaxed);
                }
                if measuring.load(Ordering::Relaxed) {
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                since_ack += 1;
                if since_ack >= 64 {
                    since_ack = 0;
                    if client
                        .acknowledge_mutations(proto::AcknowledgeMutationsRequest {
                            position: e.position,
                        })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
            (latencies, received)
        }));
    }

    let register = seed::org("national-register").context("national-register")?;
    let people: Arc<Vec<String>> = Arc::new(
        demo.population
            .people
            .iter()
            .map(|p| p.niss.as_str().to_owned())
            .collect(),
    );
    let accepted = Arc::new(AtomicU64::new(0));
    let published_measured = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for w in 0..opts.publishers {
        let token = mint(
            &issuer,
            &format!("bench-source-{w}"),
            register.kbo,
            UserRole::Source,
        )?;
        let files = demo.pki.files(register.kbo.as_str());
        let mut client =
            MutationServiceClient::new(channel(demo, &files.cert, &files.key, &token).await?);
        // Open loop: each publisher's calls on a fixed schedule.
        let every = opts.rate.map(|r| {
            Duration::from_secs_f64(opts.publishers as f64 * opts.batch as f64 / r.max(0.001))
        });
        let (people, stop, measuring, accepted, published_measured, batch) = (
            people.clone(),
            stop.clone(),
            measuring.clone(),
            accepted.clone(),
            published_measured.clone(),
            opts.batch,
        );
        publishers.push(tokio::spawn(async move {
            let mut seq = 0u64;
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1);
            let mut next = tokio::time::Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(every) = every {
                    tokio::time::sleep_until(next).await;
                    next += every;
                }
                let measured = measuring.load(Ordering::Relaxed);
                let sent = now_micros();
                let mutations = (0..batch)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        seq += 1;
                        let citizen = &people[(rng % people.len() as u64) as usize];
                        proto::Mutation {
                            source_event_id: format!(
                                "{}-{w}.{seq}-{sent}",
                                if measured { "m" } else { "w" }
                            ),
                            dataset: semel_demo::seed::datasets::RESIDENCE.to_owned(),
                            citizen: citizen.clone(),
                            kind: proto::MutationKind::Changed as i32,
                            effective_date: String::new(),
                            fields: [(
                                "street".to_owned(),
                                proto::Value {
                                    kind: Some(proto::value::Kind::StringValue(format!(
                                        "Rue {seq}"
                                    ))),
                                },
                            )]
                            .into(),
                        }
                    })
                    .collect();
                match client
                    .publish_mutations(proto::PublishMutationsRequest { mutations })
                    .await
                {
                    Ok(r) => {
                        let n = r.into_inner().results.len() as u64;
                        if measuring.load(Ordering::Relaxed) {
                            accepted.fetch_add(n, Ordering::Relaxed);
                        }
                        if measured {
                            published_measured.fetch_add(n, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(code = ?e.code(), "a publication failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(opts.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(opts.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        let _ = p.await;
    }
    let changes = accepted.load(Ordering::Relaxed);
    let deliveries = delivered.load(Ordering::Relaxed);
    // Let every measured change arrive everywhere, then end the streams.
    let expected = published_measured.load(Ordering::Relaxed) * subscribers.len() as u64;
    let waited = Instant::now();
    while measured_received.load(Ordering::Relaxed) < expected
        && waited.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    demo.broker.begin_shutdown();
    if let Some(second) = second {
        second.broker.begin_shutdown();
    }
    let mut latencies: Vec<u32> = Vec::new();
    for r in readers {
        let (mut l, _) = tokio::time::timeout(Duration::from_secs(30), r)
            .await
            .context("a subscriber did not end")??;
        latencies.append(&mut l);
    }
    let missing = expected.saturating_sub(latencies.len() as u64);
    latencies.sort_unstable();
    let pct = |q: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i] as f64 / 1000.0
    };
    Ok(FanoutReport {
        store: if opts.postgresql.is_some() {
            "postgresql"
        } else {
            "embedded"
        },
        subscribed_through: match second {
            None => "the publishers' broker",
            Some(_) if opts.second_broker_polls => "a second broker (polling)",
            Some(_) => "a second broker (notified)",
        },
        consumers: subscribers.len(),
        population: opts.population,
        publishers: opts.publishers,
        batch: opts.batch,
        rate: opts.rate,
        seconds,
        changes,
        changes_per_s: changes as f64 / seconds,
        deliveries,
        deliveries_per_s: deliveries as f64 / seconds,
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: latencies.last().map_or(0.0, |&l| l as f64 / 1000.0),
        missing,
    })
}
