//! `semel demo`: the broker in front of the three demo sources, with the
//! demo registry, on the embedded store, all in one process. The end-to-end
//! tests use the same entry point, on port 0 and a temporary directory.

mod credentials;
mod second_broker;
mod seeding;
mod sources;

pub use credentials::client_config;
pub use sources::{SOURCES_FILE, serve_sources};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use semel_client::ClientConfig;
use semel_demo::Population;
use semel_demo::issuer::{DEV_AUDIENCE, DevIssuer, TokenRequest};
use semel_demo::pki::DevPki;
use semel_demo::seed;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use semel_server::server::{self, Prepared, ReloadFiles, Reloader};
use semel_server::state::{Broker, SourceSettings};
use semel_server::tokens::{IssuerSettings, TokenSettings};

use credentials::{dev_pki, write_token};
use second_broker::write_second_broker_config;
use seeding::{seed_files, seed_registry};
use sources::{external_sources, start_sources};

/// How to run the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub data_dir: PathBuf,
    /// The broker's address; port 0 picks a free one.
    pub listen: SocketAddr,
    pub seed: u64,
    pub population: usize,
    pub source_deadline: Duration,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Where to serve the HTTP/JSON face, if anywhere.
    pub http_listen: Option<SocketAddr>,
    /// The HTTP/JSON face's limits and timeouts.
    pub http: semel_server::http_settings::HttpSettings,
    /// The gRPC port's limits and timeouts.
    pub grpc: semel_server::grpc_limits::GrpcSettings,
    pub limits: semel_server::limits::LimitSettings,
    /// How often certificate and key files are checked for changes.
    pub reload_poll: Option<Duration>,
    /// Sign an audit checkpoint after this many entries (or 10 s).
    pub checkpoint_every_entries: u64,
    /// Report NOT_SERVING past this checkpoint age (default: five
    /// checkpoint intervals).
    pub checkpoint_age_limit: Option<Duration>,
    /// A PostgreSQL URL: run the demo on that store rather than the
    /// embedded one, and write a configuration with which `semel serve`
    /// runs a second broker on it.
    pub postgresql: Option<String>,
    /// On PostgreSQL: how long an audit batch may wait to be durable
    /// (`store.max_durability_wait_ms`).
    pub max_durability_wait: Duration,
    /// Run the demo sources in a process of their own, started from this
    /// executable (`semel demo-sources`), rather than in this one: they
    /// then outlive this broker (failover to a second broker).
    pub sources_process: Option<PathBuf>,
}

/// How often the demo signs checkpoints on the embedded store...
const DEMO_CHECKPOINT_EVERY: Duration = Duration::from_secs(10);
/// ...and on PostgreSQL.
const DEMO_PG_CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The demo audit log's name in its checkpoints.
pub const DEMO_ORIGIN: &str = "semel.brussels/audit/demo";

impl DemoOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        DemoOptions {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            seed: 20_170_717,
            population: 10_000,
            source_deadline: Duration::from_secs(5),
            metrics_listen: None,
            http_listen: None,
            http: semel_server::http_settings::HttpSettings::default(),
            grpc: semel_server::grpc_limits::GrpcSettings::default(),
            limits: semel_server::limits::LimitSettings::default(),
            reload_poll: Some(Duration::from_secs(5)),
            checkpoint_every_entries: 100_000,
            checkpoint_age_limit: None,
            postgresql: None,
            max_durability_wait: semel_postgres::DEFAULT_MAX_DURABILITY_WAIT,
            sources_process: None,
        }
    }
}

/// A running demo.
pub struct Demo {
    pub broker_addr: SocketAddr,
    pub pki: DevPki,
    pub population: Arc<Population>,
    pub data_dir: PathBuf,
    /// The demo sources' addresses, by organisation slug.
    pub source_endpoints: std::collections::BTreeMap<String, String>,
    /// Where the metrics are served, if they are.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the HTTP/JSON face is served, if it is.
    pub http_addr: Option<SocketAddr>,
    /// Reloads the broker's certificate, CA bundle and issuer keys.
    pub reloader: Arc<Reloader>,
    /// The broker itself (its storage, for tests that look behind the API).
    pub broker: Arc<Broker>,
    /// The embedded store, when the demo runs on it (tests inject faults).
    pub embedded: Option<Arc<semel_store::Store>>,
    /// On PostgreSQL: the configuration with which `semel serve` runs a
    /// second broker on the same database, and that broker's address.
    pub second_broker: Option<(PathBuf, SocketAddr)>,
    /// The demo's witness (tests read what it cosigned and refused).
    pub witness: Arc<semel_server::witness::Witness>,
    shutdown: watch::Sender<bool>,
    broker_task: JoinHandle<anyhow::Result<()>>,
    source_tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

/// What `semel lookup --data-dir` reads to find the broker and the files.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct DemoManifest {
    pub broker: String,
    pub ca: PathBuf,
    /// The development issuer: its `iss`, private key and public JWKS.
    pub issuer: String,
    pub issuer_key: PathBuf,
    pub issuer_jwks: PathBuf,
    pub audience: String,
    pub organisations: Vec<ManifestOrg>,
    /// A citizen's token (through the demo citizen portal), to try the
    /// citizen's view.
    pub citizen_token: PathBuf,
    /// The HTTP/JSON face's address (`https://…`), when it is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// The demo witness's address and verifier key (cosignatures).
    #[serde(default)]
    pub witness: String,
    #[serde(default)]
    pub witness_key: String,
    /// How many of the witnesses (`witness_key`: the demo runs one) must
    /// have cosigned a checkpoint for an auditor to call it verified
    /// (`semel audit verify --witness-quorum`, the console's sign-in).
    #[serde(default)]
    pub witness_quorum: usize,
    /// The log's verifier key, as an operator publishes it for auditors
    /// (`semel audit verify --verifier-key`, the console's sign-in).
    #[serde(default)]
    pub verifier_key: String,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ManifestOrg {
    pub slug: String,
    pub kbo: String,
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A token for a person of this organisation with every role its
    /// registration allows, valid for a day from the demo's start.
    pub token: PathBuf,
    pub roles: Vec<String>,
}

/// How long the tokens the demo writes stay valid.
const DEMO_TOKEN_SECONDS: i64 = 24 * 3600;
/// How long the citizen's token the demo writes stays valid: as long as
/// the demo broker lets a citizen's token live.
const DEMO_CITIZEN_TOKEN_SECONDS: i64 = semel_server::tokens::DEFAULT_CITIZEN_MAX_LIFETIME_S as i64;
/// The citizen whose token the demo writes (Karim, of the primer).
pub const DEMO_CITIZEN: &str = "93051822361";

pub const MANIFEST: &str = "demo.json";

/// The demo witness's name, as a supervisory body would name its own.
pub const DEMO_WITNESS: &str = "witness.semel-demo.invalid/commission";

impl Demo {
    /// Starts the demo sources and the broker; returns once all listen.
    pub async fn start(opts: DemoOptions) -> anyhow::Result<Demo> {
        std::fs::create_dir_all(&opts.data_dir)
            .with_context(|| format!("create {}", opts.data_dir.display()))?;
        let data_dir =
            std::fs::canonicalize(&opts.data_dir).context("resolve the data directory")?;
        let orgs = seed::organisations();
        let operator = seed::org("operator").context("demo operator missing")?;
        let pki = dev_pki(&data_dir.join("pki"), &orgs, &operator)?;
        let issuer = DevIssuer::ensure(&pki.dir).context("create the development issuer")?;
        let citizen_idp = DevIssuer::ensure_citizen(&pki.dir)
            .context("create the development citizen identity provider")?;
        let population = Arc::new(Population::generate(opts.seed, opts.population));
        let (shutdown, rx) = watch::channel(false);

        // The sources, each on a free port with its own certificate: in
        // this process, or (`sources_process`) in a process of their own
        // that outlives this broker, so that a second broker goes on
        // answering when this one is killed.
        let mut source_tasks = Vec::new();
        let endpoints = match &opts.sources_process {
            Some(exe) => external_sources(exe, &data_dir, &opts).await?,
            None => {
                let (endpoints, tasks) =
                    start_sources(&pki, &population, operator.kbo, &rx).await?;
                source_tasks.extend(tasks);
                endpoints
            }
        };

        // The registry: seeded once, with the sources' current addresses.
        let signing_key =
            semel_store::load_or_create_signing_key(&pki.dir.join("audit-signing.key"))
                .context("the demo's checkpoint signing key")?;
        let signer = semel_core::checkpoint::NoteSigner::new(DEMO_ORIGIN, signing_key);
        // A witness, as the supervisory commission would run one: it follows
        // the log's key and cosigns each checkpoint it can prove consistent.
        let witness = Arc::new(semel_server::witness::Witness::open(
            &data_dir.join("witness"),
            DEMO_WITNESS,
            &[signer.verifier_key()],
        )?);
        let witness_key = witness.verifier_key();
        let verifier_key = signer.verifier_key();
        let witness_listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("bind the demo witness")?;
        let witness_url = format!("http://{}", witness_listener.local_addr()?);
        {
            let served = semel_server::witness::serve_witness(
                witness_listener,
                witness.clone(),
                wait(rx.clone()),
            );
            source_tasks.push(tokio::spawn(async move {
                served.await.context("serve the demo witness")
            }));
        }
        let opened = match &opts.postgresql {
            None => {
                semel_server::stores::open_embedded(
                    data_dir.join("store"),
                    semel_store::CheckpointSettings {
                        signer,
                        every_entries: opts.checkpoint_every_entries,
                        every: DEMO_CHECKPOINT_EVERY,
                    },
                )
                .await?
            }
            Some(url) => {
                semel_server::stores::open_postgresql(
                    url,
                    signer,
                    semel_server::stores::PgSettings {
                        checkpoint_every: DEMO_PG_CHECKPOINT_EVERY,
                        registry_poll: semel_server::config::DEFAULT_REGISTRY_POLL,
                        persons_poll: semel_server::config::DEFAULT_PERSONS_POLL,
                        scrub: semel_postgres::ScrubSettings::default(),
                        max_durability_wait: opts.max_durability_wait,
                    },
                )
                .await?
            }
        };
        semel_server::stores::adopt_registry(&opened.storage, operator.kbo).await?;
        seed_registry(&opened.storage, operator.kbo, &orgs, |slug| {
            endpoints.get(slug).cloned().unwrap_or_default()
        })
        .await?;
        seed_files(&opened.storage, operator.kbo, &population).await?;

        let broker_files = pki.files("broker");
        let files = ReloadFiles {
            cert: broker_files.cert.clone(),
            key: broker_files.key.clone(),
            client_ca: pki.ca_cert(),
            // The development CA's revocation list (`semel pki revoke`),
            // which `DevPki::ensure` always writes.
            client_crls: vec![pki.crl()],
            sources_ca: pki.ca_cert(),
            sources_crls: vec![pki.crl()],
            tokens: TokenSettings {
                audience: DEV_AUDIENCE.to_owned(),
                leeway_s: 30,
                // As in production: the staff's identity provider may grant
                // every role but the citizen's; the citizens' grants that
                // one alone, at a checked level of assurance.
                issuers: vec![
                    IssuerSettings::new(issuer.issuer.clone(), issuer.jwks_file()),
                    IssuerSettings {
                        roles: semel_core::RoleSet::of(&[semel_core::UserRole::Citizen]),
                        required_acr: vec![semel_demo::issuer::DEV_CITIZEN_ACR.to_owned()],
                        max_lifetime_s: semel_server::tokens::DEFAULT_CITIZEN_MAX_LIFETIME_S,
                        ..IssuerSettings::new(citizen_idp.issuer.clone(), citizen_idp.jwks_file())
                    },
                ],
            },
        };
        let (server_tls, source_tls, tokens) = server::load_all(&files)?;
        let embedded = opened.embedded.clone();
        let broker = Broker::new(
            opened.storage,
            SourceSettings {
                tls: source_tls,
                // The demo's sources run on this machine: loopback is
                // allowed explicitly, as an operator would.
                endpoints: Arc::new(semel_server::source_channel::EndpointPolicy::new(&[
                    "127.0.0.1".to_owned(),
                ])?),
                deadline: opts.source_deadline,
                limits: opts.limits,
                register_dataset: semel_core::DatasetName::new(
                    semel_demo::seed::datasets::IDENTITY,
                )?,
                persons: semel_server::state::PersonsSettings::default(),
                mutations: Default::default(),
            },
            tokens,
        )
        .await?;
        broker.metrics.watch_persons(opened.persons.clone());
        broker
            .metrics
            .watch_registry(broker.storage().registry.clone());
        let mut watching = Vec::new();
        if let Some(url) = &opts.postgresql {
            // As `semel serve` on PostgreSQL: the snapshot decides only
            // while confirmed; health asks the database.
            broker.bound_registry_freshness(semel_server::config::DEFAULT_MAX_STALENESS);
            watching.push(semel_server::stores::watch_registry_freshness(
                broker.clone(),
            ));
            watching.push(semel_server::stores::probe_database(
                broker.clone(),
                url.clone(),
            ));
        }
        let background = opened
            .changes
            .map(|changes| semel_server::stores::follow_registry(broker.clone(), changes))
            .into_iter()
            .chain(watching)
            .chain(opened.persons_feed)
            .chain(
                opened
                    .cluster
                    .map(|cluster| semel_server::stores::follow_cluster(broker.clone(), cluster)),
            )
            .chain(std::iter::once(broker.expire_mutations()))
            // Applies a stopped broker left unsettled, at start and after.
            .chain(std::iter::once(broker.settle_applies_task()))
            .collect();
        let reloader = Reloader::new(files, broker.clone(), server_tls);
        let listener = TcpListener::bind(opts.listen)
            .await
            .with_context(|| format!("bind the broker on {}", opts.listen))?;
        let broker_addr = listener.local_addr()?;
        // Known before any call is served: no dataset may point at it.
        broker.endpoint_policy().add_own(broker_addr);
        let mut metrics_addr = None;
        if let Some(addr) = opts.metrics_listen {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind the metrics port {addr}"))?;
            metrics_addr = Some(listener.local_addr()?);
            source_tasks.push(tokio::spawn(server::serve_metrics(
                listener,
                broker.clone(),
                wait(rx.clone()),
            )));
        }
        let http_listener = match opts.http_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("bind the HTTP/JSON port {addr}"))?,
            ),
            None => None,
        };
        let http_addr = match &http_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        // Written once every port of this broker is bound, on a port free
        // now and none of them.
        let second_broker = match &opts.postgresql {
            None => None,
            Some(url) => Some(write_second_broker_config(
                &data_dir,
                url,
                broker_addr,
                &[metrics_addr, http_addr],
                &pki,
                &issuer,
                &operator,
            )?),
        };
        let broker_task = tokio::spawn(server::serve_broker_with_face(
            listener,
            http_listener.map(|l| semel_http::face(l, opts.http.clone())),
            Prepared {
                broker: broker.clone(),
                background,
                reloader: reloader.clone(),
                reload_poll: opts.reload_poll,
                online_window: None,
                witnesses: semel_server::witness::WitnessSettings::new(vec![
                    semel_server::witness::WitnessTarget {
                        url: witness_url.clone(),
                        key: semel_core::checkpoint::CosignatureVerifier::parse(&witness_key)
                            .map_err(|e| anyhow::anyhow!("the demo witness's key: {e}"))?,
                    },
                ]),
                grpc: opts.grpc.clone(),
                checkpoint_age_limit: opts.checkpoint_age_limit.unwrap_or(
                    5 * if opts.postgresql.is_some() {
                        DEMO_PG_CHECKPOINT_EVERY
                    } else {
                        DEMO_CHECKPOINT_EVERY
                    },
                ),
            },
            wait(rx),
        ));

        let tokens_dir = data_dir.join("tokens");
        std::fs::create_dir_all(&tokens_dir)
            .with_context(|| format!("create {}", tokens_dir.display()))?;
        let mut organisations = Vec::new();
        for o in &orgs {
            let f = pki.files(o.kbo.as_str());
            let roles = o.user_roles();
            let token = tokens_dir.join(format!("{}.jwt", o.slug));
            let jwt = issuer.mint(&TokenRequest {
                subject: &format!("demo-user@{}", o.slug),
                organisation: o.kbo,
                roles: &roles,
                audience: DEV_AUDIENCE,
                expires_in: DEMO_TOKEN_SECONDS,
                not_before: None,
                bound_to: None,
            })?;
            write_token(&token, &jwt)?;
            organisations.push(ManifestOrg {
                slug: o.slug.to_owned(),
                kbo: o.kbo.as_str().to_owned(),
                name: o.name.to_owned(),
                cert: f.cert,
                key: f.key,
                token,
                roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
            });
        }
        let portal = seed::org("irisbox").context("demo citizen portal missing")?;
        let citizen_token = tokens_dir.join("citizen.jwt");
        let jwt = citizen_idp.mint(&TokenRequest {
            subject: DEMO_CITIZEN,
            organisation: portal.kbo,
            roles: &[semel_core::UserRole::Citizen],
            audience: DEV_AUDIENCE,
            expires_in: DEMO_CITIZEN_TOKEN_SECONDS,
            not_before: None,
            bound_to: None,
        })?;
        write_token(&citizen_token, &jwt)?;
        // Clients on this machine reach a broker listening on all
        // interfaces through loopback, a name its certificate carries.
        let reachable = if broker_addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], broker_addr.port()))
        } else {
            broker_addr
        };
        let manifest = DemoManifest {
            broker: format!("https://{reachable}"),
            ca: pki.ca_cert(),
            issuer: issuer.issuer.clone(),
            issuer_key: issuer.key_file(),
            issuer_jwks: issuer.jwks_file(),
            audience: DEV_AUDIENCE.to_owned(),
            organisations,
            citizen_token,
            http: http_addr.map(|a| {
                let a = if a.ip().is_unspecified() {
                    SocketAddr::from(([127, 0, 0, 1], a.port()))
                } else {
                    a
                };
                format!("https://{a}")
            }),
            witness: witness_url,
            witness_key,
            witness_quorum: 1,
            verifier_key,
        };
        std::fs::write(
            data_dir.join(MANIFEST),
            serde_json::to_vec_pretty(&manifest)?,
        )
        .context("write the demo manifest")?;
        Ok(Demo {
            broker_addr,
            pki,
            population,
            data_dir,
            source_endpoints: endpoints,
            metrics_addr,
            http_addr,
            reloader,
            broker,
            embedded,
            second_broker,
            witness,
            shutdown,
            broker_task,
            source_tasks,
        })
    }

    /// The client files of a demo organisation, by slug (e.g. `cpas-anderlecht`).
    pub fn client(&self, slug: &str) -> anyhow::Result<ClientConfig> {
        client_config(&self.data_dir, slug)
    }

    /// Stops accepting calls, lets calls in flight finish, closes the audit
    /// log and waits for every server.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.broker_task.await.context("broker task")??;
        for t in self.source_tasks {
            t.await.context("source task")??;
        }
        Ok(())
    }

    /// Waits until the broker stops by itself (an error) or `signal` fires.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            () = signal => self.stop().await,
            r = &mut self.broker_task => {
                let _ = self.shutdown.send(true);
                r.context("broker task")?
            }
        }
    }
}

async fn wait(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
