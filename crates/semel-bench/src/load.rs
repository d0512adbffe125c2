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

mod process;
mod server;

pub use process::{cpu_seconds, memory_kib};
pub use server::{BenchAddrs, BenchServerOptions, run_bench_server};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use semel_demo::Population;
use semel_demo::seed::{self, datasets};
use serde::Serialize;
use tonic::Status;
use tonic::transport::Endpoint;

use semel_server::proto::{self, source_service_client::SourceServiceClient};
use semel_server::tls;

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
    /// Every target, with the name `semel bench --targets` knows it by.
    pub const ALL: [(&'static str, Target); 6] = [
        ("direct", Target::Direct),
        ("null", Target::NullForwarder),
        ("semel", Target::Semel),
        ("semel-http", Target::SemelHttp),
        ("semel-pg", Target::SemelPostgres),
        ("semel-pg2", Target::SemelPostgresTwo),
    ];

    /// Whether the target runs Semel on the PostgreSQL store (and so needs
    /// `--store`).
    pub fn needs_store(self) -> bool {
        matches!(self, Target::SemelPostgres | Target::SemelPostgresTwo)
    }

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

impl std::str::FromStr for Target {
    type Err = String;

    /// A target by its `--targets` name.
    fn from_str(name: &str) -> Result<Target, String> {
        Target::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let known: Vec<&str> = Target::ALL.iter().map(|(n, _)| *n).collect();
                format!("unknown target {name}; use {}", known.join(", "))
            })
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
