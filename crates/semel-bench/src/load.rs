//! The load generator behind `semel bench`, and the system it measures.
//!
//! `semel bench` starts `semel bench-server` as a child process: the demo
//! sources, the broker on the embedded store, and a *null forwarder* (the
//! same transport and the same source, but no checks and no audit). It then
//! drives, one after the other and with the same closed-loop generator:
//! (a) the National Register source directly, (b) the null forwarder, and
//! (c) Semel; and prints throughput, latency percentiles and the ratios.
//! The machine is shared and noisy, so only ratios measured side by side
//! are to be trusted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use semel_core::{AuditDecision, AuditRecord, Kbo, Niss, Outcome};
use semel_demo::Population;
use semel_demo::seed::{self, datasets};
use semel_store::Store;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

use semel_demo_stack::demo::{Demo, DemoOptions};
use semel_server::proto::{
    self, lookup_service_server::LookupServiceServer, source_service_client::SourceServiceClient,
};
use semel_server::tls::{self, TlsFiles};

/// What `semel bench-server` writes once it listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchAddrs {
    pub broker: String,
    pub null_forwarder: String,
    pub source: String,
    pub pki_dir: PathBuf,
    pub seed: u64,
    pub population: usize,
    /// Entries in the audit log when the broker started.
    pub preloaded_entries: u64,
    /// Time to open the store (recovering the log) and start the broker.
    pub startup_ms: f64,
    /// The broker's HTTP/JSON face (`host:port`).
    #[serde(default)]
    pub http: Option<String>,
    /// The broker's metrics endpoint (`host:port`), read for the audit
    /// log's syncs.
    #[serde(default)]
    pub metrics: Option<String>,
    /// A second broker, on the PostgreSQL store, with the same PKI and
    /// its own demo sources (`semel bench --store`).
    #[serde(default)]
    pub broker_postgresql: Option<String>,
    #[serde(default)]
    pub metrics_postgresql: Option<String>,
    /// Another broker on the same PostgreSQL database (the demo's
    /// `second-broker.toml`), for the target that spreads the load over
    /// both.
    #[serde(default)]
    pub broker_postgresql_second: Option<String>,
    /// The PostgreSQL URL, for counting its transactions while measuring.
    #[serde(default)]
    pub postgresql: Option<String>,
}

/// Options of `semel bench-server`.
#[derive(Debug, Clone)]
pub struct BenchServerOptions {
    pub data_dir: PathBuf,
    pub seed: u64,
    pub population: usize,
    /// Append this many synthetic entries to the audit log before starting
    /// (skipped if the log already holds at least that many).
    pub preload_audit: u64,
    /// Also run a broker on this PostgreSQL database.
    pub postgresql: Option<String>,
}

/// Runs the system under test until `shutdown`; writes the addresses to
/// `ready_file` once everything listens.
pub async fn run_bench_server(
    opts: BenchServerOptions,
    ready_file: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let store_dir = opts.data_dir.join("store");
    let mut preloaded = 0;
    if opts.preload_audit > 0 {
        preloaded = preload_audit(
            &store_dir,
            &opts.data_dir.join("pki").join("audit-signing.key"),
            opts.preload_audit,
            opts.seed,
        )
        .await?;
    }
    let started = Instant::now();
    let mut demo_opts = DemoOptions::new(&opts.data_dir);
    demo_opts.listen = ([127, 0, 0, 1], 0).into();
    demo_opts.seed = opts.seed;
    demo_opts.population = opts.population;
    // The audit log's syncs are read from the metrics endpoint.
    demo_opts.metrics_listen = Some(([127, 0, 0, 1], 0).into());
    demo_opts.http_listen = Some(([127, 0, 0, 1], 0).into());
    // The load generator holds one HTTP/1.1 connection per worker, all
    // from one address: the cap per address is the face's whole.
    demo_opts.http.max_connections_per_address = demo_opts.http.max_connections;
    // Likewise its gRPC connections (`--connections`), all from one address.
    demo_opts.grpc.max_connections_per_address = demo_opts.grpc.max_connections;
    // It measures what the broker takes from one consumer, not that
    // consumer's budget of lookups.
    demo_opts.limits = demo_opts.limits.without_organisation_budgets();
    let demo = Demo::start(demo_opts).await?;
    let startup_ms = started.elapsed().as_secs_f64() * 1000.0;

    // The null forwarder: the broker's certificate and transport, the same
    // source, nothing else.
    let broker_files = demo.pki.files("broker");
    let server_tls = tls::server_config(&TlsFiles {
        cert: &broker_files.cert,
        key: &broker_files.key,
        client_ca: &demo.pki.ca_cert(),
        client_crls: &[],
    })?;
    let source_tls = tls::client_tls(&demo.pki.ca_cert(), &broker_files.cert, &broker_files.key)?;
    let source = demo
        .source_endpoints
        .get("national-register")
        .cloned()
        .context("national register endpoint")?;
    let channel = Endpoint::from_shared(source.clone())?
        .tls_config(source_tls)?
        .tcp_nodelay(true)
        .connect_lazy();
    let null = NullForwarder {
        client: SourceServiceClient::new(channel),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let null_addr = listener.local_addr()?;
    let (stop_null, null_stopped) = tokio::sync::oneshot::channel::<()>();
    let null_task = tokio::spawn(
        Server::builder()
            .add_service(LookupServiceServer::new(null))
            .serve_with_incoming_shutdown(
                tls::incoming(listener, Arc::new(arc_swap::ArcSwap::from(server_tls))),
                async {
                    let _ = null_stopped.await;
                },
            ),
    );

    // The same system on PostgreSQL: a second demo with the same PKI (so
    // the generator's certificates and tokens serve for both), its own
    // sources, witness and database.
    let pg_demo = match &opts.postgresql {
        None => None,
        Some(url) => {
            let dir = opts.data_dir.join("postgresql");
            std::fs::create_dir_all(&dir)?;
            let pki = dir.join("pki");
            if !pki.exists() {
                std::os::unix::fs::symlink(&demo.pki.dir, &pki)
                    .context("share the PKI with the PostgreSQL broker")?;
            }
            let mut o = DemoOptions::new(&dir);
            o.listen = ([127, 0, 0, 1], 0).into();
            o.seed = opts.seed;
            o.population = opts.population;
            o.metrics_listen = Some(([127, 0, 0, 1], 0).into());
            o.postgresql = Some(url.clone());
            // As the embedded broker: what the brokers take, not one
            // consumer's budget (which two brokers would share).
            o.limits = o.limits.without_organisation_budgets();
            Some(
                Demo::start(o)
                    .await
                    .context("start the broker on PostgreSQL")?,
            )
        }
    };
    // A second broker on the same database, in this process on a port of
    // its own: the target semel-pg2 spreads its connections over both.
    let pg_second = match pg_demo.as_ref().and_then(|d| d.second_broker.clone()) {
        None => None,
        Some((path, _)) => {
            let mut config = semel_server::Config::load(&path)?;
            config.limits.consumer_lookups_per_second = Some(1e9);
            config.limits.consumer_burst = Some(1e9);
            config.limits.consumer_lookups_per_day = Some(1 << 50);
            config.limits.calls_per_second = Some(1e9);
            config.limits.call_burst = Some(1e9);
            config.limits.calls_in_flight = Some(1 << 20);
            config.grpc.max_connections_per_address = config.grpc.max_connections;
            let prepared = semel_server::server::prepare(&config)
                .await
                .context("prepare the second broker on PostgreSQL")?;
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(semel_server::server::serve_broker(
                listener,
                prepared,
                async {
                    let _ = stopped.await;
                },
            ));
            Some((addr, stop, task))
        }
    };
    let addrs = BenchAddrs {
        broker_postgresql_second: pg_second
            .as_ref()
            .map(|(addr, _, _)| format!("https://{addr}")),
        broker_postgresql: pg_demo
            .as_ref()
            .map(|d| format!("https://{}", d.broker_addr)),
        metrics_postgresql: pg_demo
            .as_ref()
            .and_then(|d| d.metrics_addr.map(|a| a.to_string())),
        postgresql: opts.postgresql.clone(),
        broker: format!("https://{}", demo.broker_addr),
        null_forwarder: format!("https://{null_addr}"),
        source,
        pki_dir: demo.pki.dir.clone(),
        seed: opts.seed,
        population: opts.population,
        preloaded_entries: preloaded,
        startup_ms,
        metrics: demo.metrics_addr.map(|a| a.to_string()),
        http: demo.http_addr.map(|a| a.to_string()),
    };
    let tmp = ready_file.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&addrs)?)?;
    std::fs::rename(&tmp, ready_file)?;
    match pg_demo {
        None => demo.run_until(shutdown).await?,
        Some(pg) => {
            demo.run_until(shutdown).await?;
            if let Some((_, stop, task)) = pg_second {
                let _ = stop.send(());
                task.await??;
            }
            pg.stop().await?;
        }
    }
    let _ = stop_null.send(());
    null_task.await??;
    Ok(())
}

/// Appends synthetic entries, as many appenders at once as a busy broker
/// would have, so the log and its indexes look like months of traffic.
async fn preload_audit(
    store_dir: &Path,
    signing_key: &Path,
    target: u64,
    seed: u64,
) -> anyhow::Result<u64> {
    // Signed as the demo signs, so the log has the checkpoints a broker's
    // log of that size would have (and the start checks what it would).
    if let Some(dir) = signing_key.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let key = semel_store::load_or_create_signing_key(signing_key)?;
    let store = Arc::new(Store::open_with(
        store_dir,
        Some(semel_store::CheckpointSettings {
            signer: semel_core::checkpoint::NoteSigner::new(
                semel_demo_stack::demo::DEMO_ORIGIN,
                key,
            ),
            every_entries: 100_000,
            every: std::time::Duration::from_secs(10),
        }),
    )?);
    let have = store.audit().head().0;
    if have < target {
        let population = Population::generate(seed, 10_000);
        let citizens: Arc<Vec<Niss>> = Arc::new(population.people.iter().map(|p| p.niss).collect());
        let consumers: Arc<Vec<Kbo>> =
            Arc::new(seed::organisations().iter().map(|o| o.kbo).collect());
        let remaining = target - have;
        let tasks = 256u64;
        let mut handles = Vec::new();
        for t in 0..tasks {
            let store = store.clone();
            let citizens = citizens.clone();
            let consumers = consumers.clone();
            let n = remaining / tasks + u64::from(t < remaining % tasks);
            handles.push(tokio::spawn(async move {
                let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for _ in 0..n {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let record = synthetic_record(&citizens, &consumers, x);
                    store.audit().append(record).await?;
                }
                anyhow::Ok(())
            }));
        }
        for h in handles {
            h.await??;
        }
    }
    let size = store.audit().head().0;
    Arc::try_unwrap(store)
        .map_err(|_| anyhow::anyhow!("store still shared"))?
        .close()?;
    Ok(size)
}

fn synthetic_record(citizens: &[Niss], consumers: &[Kbo], x: u64) -> AuditRecord {
    AuditRecord {
        request_id: (u128::from(x) << 64 | u128::from(x.rotate_left(17))).to_be_bytes(),
        time_micros: 1_700_000_000_000_000 + (x % 1_000_000_000) as i64,
        operation: semel_core::LOOKUP_OPERATION.into(),
        consumer: consumers[(x % consumers.len() as u64) as usize],
        end_user: None,
        citizen: Some(citizens[((x >> 8) % citizens.len() as u64) as usize]),
        dataset: datasets::RESIDENCE.to_owned(),
        fields_requested: vec!["street".into(), "postal_code".into()],
        fields_returned: vec!["postal_code".into(), "street".into()],
        purpose: "RIS_ELIGIBILITY".into(),
        authorisation: Some("BSC/2024/017".into()),
        authorisation_version: None,
        decision: AuditDecision::Allowed,
        reason: None,
        outcome: Outcome::Answered,
        source: None,
        consumer_reference: String::new(),
        reference_date: None,
        citizen_as_given: None,
        checks: Vec::new(),
        detail: String::new(),
    }
}

/// Forwards lookups to the source without any check and without audit:
/// the cost of the transport alone.
struct NullForwarder {
    client: SourceServiceClient<Channel>,
}

#[tonic::async_trait]
impl proto::lookup_service_server::LookupService for NullForwarder {
    type LookupBatchStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<proto::LookupBatchResponse, Status>> + Send>,
    >;

    async fn lookup_batch(
        &self,
        _request: Request<tonic::Streaming<proto::LookupBatchRequest>>,
    ) -> Result<Response<Self::LookupBatchStream>, Status> {
        Err(Status::unimplemented(
            "the null forwarder forwards single lookups only",
        ))
    }

    async fn lookup(
        &self,
        request: Request<proto::LookupRequest>,
    ) -> Result<Response<proto::LookupResponse>, Status> {
        let msg = request.into_inner();
        let mut client = self.client.clone();
        let answer = client
            .fetch(proto::FetchRequest {
                request_id: String::new(),
                dataset: msg.dataset,
                citizen: msg.citizen,
                fields: msg.fields,
                reference_date: msg.reference_date,
                consumer_kbo: String::new(),
                purpose: msg.purpose,
                authorisation_reference: String::new(),
            })
            .await?
            .into_inner();
        Ok(Response::new(proto::LookupResponse {
            fields: answer.fields,
            ..Default::default()
        }))
    }
}

/// Which system the generator drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The National Register source itself (as the broker would call it).
    Direct,
    /// The null forwarder.
    NullForwarder,
    /// Semel.
    Semel,
    /// Semel's HTTP/JSON face (HTTP/1.1, one connection per worker).
    SemelHttp,
    /// Semel on the PostgreSQL store.
    SemelPostgres,
    /// Two Semel brokers on one PostgreSQL database, the connections
    /// spread over both.
    SemelPostgresTwo,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct source",
            Target::NullForwarder => "null forwarder",
            Target::Semel => "semel",
            Target::SemelHttp => "semel http",
            Target::SemelPostgres => "semel postgresql",
            Target::SemelPostgresTwo => "semel postgresql, two brokers",
        }
    }

    /// Whether this is Semel, which refuses some lookups.
    pub fn is_semel(self) -> bool {
        matches!(
            self,
            Target::Semel | Target::SemelHttp | Target::SemelPostgres | Target::SemelPostgresTwo
        )
    }
}

/// Options of one load run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub concurrency: usize,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Share of lookups that Semel must refuse (a purpose the consumer has
    /// no authorisation for), in percent.
    pub refused_percent: u64,
    /// Stop after this many measured requests instead of after `duration`
    /// (for instruction counts, which need a fixed amount of work).
    pub requests: Option<u64>,
    /// The server process, whose CPU time is counted while measuring.
    pub server_pid: Option<u32>,
}

/// The result of one load run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub target: &'static str,
    pub requests: u64,
    /// Answers that were not what the request should get.
    pub errors: u64,
    /// Expected refusals (Semel only).
    pub refused: u64,
    pub seconds: f64,
    pub throughput: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// CPU time of the server process (user + system) per measured request,
    /// in microseconds: the broker or null forwarder *and* the source. It
    /// drifts with the machine's speed too, but not with how the generator
    /// and the server share the cores.
    pub server_cpu_us: Option<f64>,
    /// CPU time of the generator (this process) per measured request.
    pub generator_cpu_us: Option<f64>,
    /// Audit log syncs while measuring (Semel only), and their mean time.
    /// On PostgreSQL a sync is a sequencing transaction's commit.
    pub audit_syncs: Option<u64>,
    /// Transactions PostgreSQL committed in the database while measuring
    /// (each statement outside a transaction is one): its round trips, give
    /// or take the statements of a transaction.
    pub postgresql_transactions: Option<u64>,
    pub audit_sync_mean_us: Option<f64>,
}

/// Drives `target` with a closed loop: `concurrency` workers over
/// `connections` HTTP/2 connections, each sending its next request when the
/// previous one is answered.
pub async fn run_load(
    addrs: &BenchAddrs,
    target: Target,
    opts: &LoadOptions,
) -> anyhow::Result<LoadReport> {
    let population = Population::generate(addrs.seed, addrs.population);
    let citizens: Arc<Vec<String>> = Arc::new(
        population
            .people
            .iter()
            .filter(|p| p.in_national_register)
            .map(|p| p.niss.as_str().to_owned())
            .collect(),
    );
    let (url, who) = match target {
        Target::Direct => (&addrs.source, "broker".to_owned()),
        Target::NullForwarder => (&addrs.null_forwarder, consumer_stem()?),
        Target::Semel => (&addrs.broker, consumer_stem()?),
        // The gRPC address: the channels below are made but not used.
        Target::SemelHttp => (&addrs.broker, consumer_stem()?),
        Target::SemelPostgres | Target::SemelPostgresTwo => (
            addrs
                .broker_postgresql
                .as_ref()
                .context("no broker on PostgreSQL: give semel bench --store")?,
            consumer_stem()?,
        ),
    };
    // Every other connection to the second broker, for two brokers.
    let second = match target {
        Target::SemelPostgresTwo => Some(
            addrs
                .broker_postgresql_second
                .as_ref()
                .context("no second broker on PostgreSQL: give semel bench --store")?,
        ),
        _ => None,
    };
    let ca = addrs.pki_dir.join("ca.crt");
    let tls = tls::client_tls(
        &ca,
        &addrs.pki_dir.join(format!("{who}.crt")),
        &addrs.pki_dir.join(format!("{who}.key")),
    )?;
    // The broker wants a person's token; the other targets ignore it.
    let token = person_token(&addrs.pki_dir, "cpas-anderlecht")?;
    let mut channels = Vec::new();
    let connections = if second.is_some() {
        opts.connections.max(2)
    } else {
        opts.connections.max(1)
    };
    for i in 0..connections {
        let url = match second {
            Some(b) if i % 2 == 1 => b,
            _ => url,
        };
        let channel = Endpoint::from_shared(url.clone())?
            .tls_config(tls.clone())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connect to {url}"))?;
        channels.push(channel);
    }
    let recording = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let budget = Arc::new(std::sync::atomic::AtomicU64::new(
        opts.requests.unwrap_or(u64::MAX),
    ));
    // HTTP/1.1 has no multiplexing: one connection per worker, as an
    // HTTP client's pool would hold.
    let http = match target {
        Target::SemelHttp => {
            let addr = addrs
                .http
                .clone()
                .context("the bench server serves no HTTP/JSON face")?;
            let config = tls::https_client_config(
                &ca,
                &addrs.pki_dir.join(format!("{who}.crt")),
                &addrs.pki_dir.join(format!("{who}.key")),
            )?;
            let mut senders = Vec::new();
            for _ in 0..opts.concurrency {
                senders.push(Some(http_connection(&addr, config.clone()).await?));
            }
            senders
        }
        _ => Vec::new(),
    };
    let mut http = http.into_iter();
    let bearer = format!("Bearer {token}");
    let mut workers = Vec::new();
    for w in 0..opts.concurrency {
        let mut http = http.next().flatten();
        let bearer = bearer.clone();
        let channel = channels[w % channels.len()].clone();
        let authed = semel_client::with_token(channel.clone(), Some(&token))?;
        let citizens = citizens.clone();
        let recording = recording.clone();
        let stop = stop.clone();
        let budget = budget.clone();
        let counted = opts.requests.is_some();
        let refused_percent = opts.refused_percent;
        workers.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
            let (mut errors, mut refused) = (0u64, 0u64);
            let mut x = (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut lookup = proto::lookup_service_client::LookupServiceClient::new(authed);
            let mut source = SourceServiceClient::new(channel);
            while !stop.load(Ordering::Relaxed) {
                if counted
                    && recording.load(Ordering::Relaxed)
                    && budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                        .is_err()
                {
                    break;
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let citizen = citizens[(x % citizens.len() as u64) as usize].clone();
                let refuse = (x >> 32) % 100 < refused_percent;
                let purpose = if refuse {
                    "SCHOOL_ENROLMENT"
                } else {
                    "RIS_ELIGIBILITY"
                };
                let fields = vec![
                    "street".to_owned(),
                    "postal_code".to_owned(),
                    "municipality".to_owned(),
                ];
                let t0 = Instant::now();
                let outcome = match target {
                    Target::Direct => source
                        .fetch(proto::FetchRequest {
                            request_id: String::new(),
                            dataset: datasets::RESIDENCE.into(),
                            citizen,
                            fields,
                            reference_date: String::new(),
                            consumer_kbo: String::new(),
                            purpose: purpose.into(),
                            authorisation_reference: String::new(),
                        })
                        .await
                        .map(|_| ()),
                    Target::SemelHttp => match http.as_mut() {
                        Some(sender) => {
                            http_lookup(sender, &bearer, &citizen, &fields, purpose).await
                        }
                        None => Err(Status::internal("no HTTP connection")),
                    },
                    _ => lookup
                        .lookup(proto::LookupRequest {
                            citizen,
                            dataset: datasets::RESIDENCE.into(),
                            fields,
                            purpose: purpose.into(),
                            ..Default::default()
                        })
                        .await
                        .map(|_| ()),
                };
                let micros = t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                if !recording.load(Ordering::Relaxed) {
                    continue;
                }
                lat.push(micros);
                match outcome {
                    Ok(()) if !(refuse && target.is_semel()) => {}
                    Err(s)
                        if refuse
                            && target.is_semel()
                            && s.code() == tonic::Code::PermissionDenied =>
                    {
                        refused += 1
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors, refused)
        }));
    }
    tokio::time::sleep(opts.warmup).await;
    recording.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let cpu_at_start = (
        opts.server_pid.and_then(cpu_seconds),
        cpu_seconds(std::process::id()),
    );
    let metrics = match target {
        Target::Semel => addrs.metrics.as_ref(),
        Target::SemelPostgres => addrs.metrics_postgresql.as_ref(),
        _ => None,
    };
    let syncs_at_start = match metrics {
        Some(m) => audit_syncs(m).await,
        None => None,
    };
    let pg_at_start = match (target, &addrs.postgresql) {
        (Target::SemelPostgres | Target::SemelPostgresTwo, Some(url)) => {
            semel_postgres::transactions(url).await.ok()
        }
        _ => None,
    };
    if opts.requests.is_none() {
        tokio::time::sleep(opts.duration).await;
        recording.store(false, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
    }
    let mut all = Vec::new();
    let (mut errors, mut refused) = (0, 0);
    let mut results = Vec::new();
    for w in workers {
        results.push(w.await?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_at_end = (
        opts.server_pid.and_then(cpu_seconds),
        cpu_seconds(std::process::id()),
    );
    let pg_transactions = match (pg_at_start, &addrs.postgresql) {
        (Some(start), Some(url)) => semel_postgres::transactions(url)
            .await
            .ok()
            .map(|end| end.saturating_sub(start)),
        _ => None,
    };
    let syncs = match (syncs_at_start, metrics) {
        (Some(start), Some(m)) => audit_syncs(m)
            .await
            .map(|end| (end.0.saturating_sub(start.0), end.1 - start.1)),
        _ => None,
    };
    for (lat, e, r) in results {
        all.extend(lat);
        errors += e;
        refused += r;
    }
    all.sort_unstable();
    let pct = |p: f64| -> u64 {
        if all.is_empty() {
            return 0;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        u64::from(all[i])
    };
    Ok(LoadReport {
        target: target.name(),
        requests: all.len() as u64,
        errors,
        refused,
        seconds,
        throughput: all.len() as f64 / seconds,
        p50_us: pct(0.50),
        p90_us: pct(0.90),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: all.last().map_or(0, |m| u64::from(*m)),
        server_cpu_us: per_request(cpu_at_start.0, cpu_at_end.0, all.len()),
        generator_cpu_us: per_request(cpu_at_start.1, cpu_at_end.1, all.len()),
        audit_syncs: syncs.map(|s| s.0),
        postgresql_transactions: pg_transactions,
        audit_sync_mean_us: syncs.and_then(|(n, secs)| (n > 0).then(|| secs * 1e6 / n as f64)),
    })
}

/// An HTTP/1.1 connection to the HTTP/JSON face, over mutual TLS.
async fn http_connection(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>>
{
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned(),
            tcp,
        )
        .await
        .context("TLS handshake with the HTTP/JSON face")?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One lookup over the HTTP/JSON face; a refusal is the status of its HTTP
/// status's code (403: PERMISSION_DENIED).
async fn http_lookup(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>,
    bearer: &str,
    citizen: &str,
    fields: &[String],
    purpose: &str,
) -> Result<(), Status> {
    use http_body_util::BodyExt;
    let body = serde_json::json!({
        "citizen": citizen,
        "dataset": datasets::RESIDENCE,
        "fields": fields,
        "purpose": purpose,
    });
    let req = hyper::Request::post("/v1/lookups")
        .header(hyper::header::HOST, "127.0.0.1")
        .header(hyper::header::AUTHORIZATION, bearer)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(
            serde_json::to_vec(&body).unwrap_or_default(),
        )))
        .map_err(|e| Status::internal(e.to_string()))?;
    sender
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    match status.as_u16() {
        200 => Ok(()),
        403 => Err(Status::permission_denied("refused")),
        other => Err(Status::unknown(format!("HTTP {other}"))),
    }
}

/// The audit log's syncs so far and the seconds they took, from the
/// broker's metrics endpoint (plain HTTP, one GET).
async fn audit_syncs(addr: &str) -> Option<(u64, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some((
        value("semel_audit_syncs_total")? as u64,
        value("semel_audit_sync_seconds_total")?,
    ))
}

/// CPU microseconds per request between two readings.
fn per_request(start: Option<f64>, end: Option<f64>, requests: usize) -> Option<f64> {
    let (start, end) = (start?, end?);
    (requests > 0).then(|| (end - start) * 1e6 / requests as f64)
}

/// User + system CPU time of a process so far, in seconds (Linux
/// `/proc/<pid>/stat`; `None` elsewhere). The kernel reports it in
/// USER_HZ ticks, 100 per second on Linux.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted
    // from the last ')'. utime and stime are fields 14 and 15, so the 12th
    // and 13th after the name.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// A token of the demo issuer for a person of a demo organisation.
fn person_token(pki_dir: &std::path::Path, slug: &str) -> anyhow::Result<String> {
    let org = seed::org(slug).with_context(|| format!("demo organisation {slug}"))?;
    let issuer = semel_demo::issuer::DevIssuer::at(pki_dir);
    Ok(issuer.mint(&semel_demo::issuer::TokenRequest {
        subject: &format!("bench@{slug}"),
        organisation: org.kbo,
        roles: &org.user_roles(),
        audience: semel_demo::issuer::DEV_AUDIENCE,
        expires_in: 24 * 3600,
        not_before: None,
        bound_to: None,
    })?)
}

fn consumer_stem() -> anyhow::Result<String> {
    Ok(seed::org("cpas-anderlecht")
        .context("demo consumer")?
        .kbo
        .as_str()
        .to_owned())
}

/// Peak and current resident memory of a process, in KiB, from /proc.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// Times an auditor's query by citizen against the broker, as the operator.
pub async fn time_citizen_query(
    addrs: &BenchAddrs,
    citizen: &str,
    rounds: usize,
) -> anyhow::Result<(Duration, usize)> {
    let operator = seed::org("operator")
        .context("operator")?
        .kbo
        .as_str()
        .to_owned();
    let tls = tls::client_tls(
        &addrs.pki_dir.join("ca.crt"),
        &addrs.pki_dir.join(format!("{operator}.crt")),
        &addrs.pki_dir.join(format!("{operator}.key")),
    )?;
    let channel = Endpoint::from_shared(addrs.broker.clone())?
        .tls_config(tls)?
        .connect()
        .await?;
    let token = person_token(&addrs.pki_dir, "operator")?;
    let mut client = proto::audit_service_client::AuditServiceClient::new(
        semel_client::with_token(channel, Some(&token))?,
    );
    let mut best = Duration::MAX;
    let mut found = 0;
    for _ in 0..rounds.max(1) {
        let t0 = Instant::now();
        let r = client
            .list_audit_entries(proto::ListAuditEntriesRequest {
                citizen: citizen.to_owned(),
                page_size: 100,
                ..Default::default()
            })
            .await?
            .into_inner();
        best = best.min(t0.elapsed());
        found = r.entries.len();
    }
    Ok((best, found))
}
