//! The system `semel bench` measures: `semel bench-server` starts the demo
//! sources, the broker on the embedded store (its audit log preloaded) and
//! the null forwarder, and writes where each listens.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

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
