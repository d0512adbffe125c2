//! `semel demo`: the broker with the demo sources and registry on the
//! embedded store (or PostgreSQL with `--store`), and the banner that says
//! how to try it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use semel_demo_stack::{Demo, DemoOptions};

use crate::output::{Exit, outln};

#[derive(Args)]
pub struct DemoArgs {
    /// Where the store, the development PKI and demo.json live.
    #[arg(long, default_value = "semel-data")]
    pub data_dir: PathBuf,
    /// The broker's address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Seed of the synthetic population.
    #[arg(long, default_value_t = 20_170_717)]
    pub seed: u64,
    /// At least this many synthetic people.
    #[arg(long, default_value_t = 10_000)]
    pub population: usize,
    /// Where to serve Prometheus metrics (plain HTTP, /metrics).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_listen: SocketAddr,
    /// Serve no metrics.
    #[arg(long)]
    pub no_metrics: bool,
    /// Where to serve the HTTP/JSON face (HTTPS, mutual TLS; OpenAPI at /openapi.json).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub http_listen: SocketAddr,
    /// Serve no HTTP/JSON face.
    #[arg(long)]
    pub no_http: bool,
    /// Export trace spans to this OpenTelemetry collector (OTLP/gRPC), e.g. http://127.0.0.1:4317.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// Run on this PostgreSQL database (postgresql://user@host:port/db)
    /// instead of the embedded store; a configuration for a second broker
    /// on it is written to <data-dir>/second-broker.toml.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
}

#[derive(Args)]
pub struct DemoSourcesArgs {
    /// The demo's data directory (its development PKI).
    #[arg(long, default_value = "semel-data")]
    pub data_dir: PathBuf,
    /// Seed of the synthetic population (the demo's).
    #[arg(long, default_value_t = 20_170_717)]
    pub seed: u64,
    /// At least this many synthetic people (the demo's).
    #[arg(long, default_value_t = 10_000)]
    pub population: usize,
}

pub async fn run_sources(args: DemoSourcesArgs) -> anyhow::Result<ExitCode> {
    semel_demo_stack::demo::serve_sources(
        &args.data_dir,
        args.seed,
        args.population,
        crate::shutdown_signal(),
    )
    .await?;
    Ok(Exit::Done.into())
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let DemoArgs {
        data_dir,
        listen,
        seed,
        population,
        metrics_listen,
        no_metrics,
        http_listen,
        no_http,
        otlp_endpoint: _,
        store,
    } = args;
    if let Some(url) = &store {
        anyhow::ensure!(
            url.starts_with("postgresql://") || url.starts_with("postgres://"),
            "--store: give a postgresql:// URL (leave it out for the embedded store)"
        );
    }
    let opts = DemoOptions {
        listen,
        seed,
        population,
        metrics_listen: (!no_metrics).then_some(metrics_listen),
        http_listen: (!no_http).then_some(http_listen),
        // On PostgreSQL, the sources in a process of their own: they
        // outlive either broker, so that failover can be shown.
        sources_process: store.as_ref().and(std::env::current_exe().ok()),
        postgresql: store,
        ..DemoOptions::new(data_dir)
    };
    // Taken over before the start: a SIGTERM during it is a clean stop.
    let stop = crate::shutdown_signal();
    let demo = Demo::start(opts).await?;
    // The broker runs whether or not anyone reads the banner.
    if let Err(e) = print_demo_banner(&demo) {
        tracing::warn!(error = %e, "print the demo banner");
    }
    demo.run_until(stop).await?;
    Ok(Exit::Done.into())
}

fn print_demo_banner(demo: &Demo) -> anyhow::Result<()> {
    let exe = std::env::current_exe().ok();
    let cwd = std::env::current_dir().ok();
    let semel = match (&exe, &cwd) {
        (Some(e), Some(c)) => e
            .strip_prefix(c)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| e.clone()),
        (Some(e), None) => e.clone(),
        _ => PathBuf::from("semel"),
    };
    let dd = demo.data_dir.display();
    let flag = match &cwd {
        Some(c) if demo.data_dir == c.join("semel-data") => String::new(),
        _ => format!(" --data-dir {dd}"),
    };
    let s = semel.display();
    outln!(
        "\nSemel demo broker listening on https://{addr} (mutual TLS)\n\
         \n  data directory   {dd}\n  audit log        {log}\n  development PKI  {dd}/pki (ca.crt, broker.crt, <enterprise number>.crt/.key per organisation, issuer.key/issuer.jwks.json)\n  tokens           {dd}/tokens (<organisation>.jwt, citizen.jwt; valid for a day)\n  population       {people} synthetic people in {households} households\n\
         \nTry, in another terminal:\n\
         \n  # a CPAS checks an RIS applicant's residence (allowed)\
         \n  {s} lookup{flag} --as cpas-anderlecht --citizen 93.05.18-223.61 --dataset national_register.residence --fields street,house_number,postal_code,municipality --purpose RIS_ELIGIBILITY\
         \n  # ...and the household composition\
         \n  {s} lookup{flag} --as cpas-anderlecht --citizen 93051822361 --dataset national_register.household --fields household_size,members --purpose RIS_ELIGIBILITY\
         \n  # a commune asks for more than school enrolment allows (refused: FIELD_NOT_ALLOWED)\
         \n  {s} lookup{flag} --as commune-schaerbeek --citizen 93051822361 --dataset national_register.residence --fields street,nis_code --purpose SCHOOL_ENROLMENT\
         \n  # an expired authorisation (refused: AUTHORISATION_EXPIRED)\
         \n  {s} lookup{flag} --as ville-bruxelles --citizen 85073003328 --dataset spf_finances.taxable_income --fields latest_taxable_income_cents --purpose SOCIAL_HOUSING\
         \n  # what the audit log recorded about that citizen\
         \n  {s} audit list{flag} --citizen 93051822361\
         \n  # ...and what the citizen sees of it, through the citizen portal\
         \n  {s} audit accesses{flag} --as irisbox --token-file {dd}/tokens/citizen.jwt --citizen 93051822361\
         \n  {s} admin{flag} authorisation list\n\
         \nStop with Ctrl-C; the state survives a restart.{metrics}{http}{second}\n",
        addr = demo.broker_addr,
        log = if demo.embedded.is_some() {
            format!("{dd}/store/audit/log")
        } else {
            "PostgreSQL (table audit_entries)".to_owned()
        },
        second = demo
            .second_broker
            .as_ref()
            .map(|(config, addr)| format!(
                "\n\nA second broker on the same PostgreSQL database, in another terminal (listens on {addr}):\n\n  {s} serve --config {}\n\nLookups through either broker land in the one audit log; a suspension made through one takes effect on the other within a second. The demo sources run in a process of their own (pid in {dd}/sources.json): kill either broker and the other goes on answering.",
                config.display()
            ))
            .unwrap_or_default(),
        http = http_banner(demo).unwrap_or_default(),
        metrics = demo
            .metrics_addr
            .map(|a| format!(" Metrics: http://{a}/metrics"))
            .unwrap_or_default(),
        people = demo.population.people.len(),
        households = demo.population.households.len(),
    );
    Ok(())
}

/// The HTTP/JSON face's lines of the banner: its address and a lookup with
/// `curl`, the demo's certificate and a token.
fn http_banner(demo: &Demo) -> Option<String> {
    let addr = demo.http_addr?;
    let addr = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let client = demo.client("cpas-anderlecht").ok()?;
    let auditor = demo.client("control-commission").ok()?;
    // The keys an auditor signs in to the console with, as demo.json holds
    // them (an operator publishes them; so does the witnesses' keeper).
    let manifest: semel_demo_stack::demo::DemoManifest = serde_json::from_slice(
        &std::fs::read(demo.data_dir.join(semel_demo_stack::demo::MANIFEST)).ok()?,
    )
    .ok()?;
    let dd = demo.data_dir.display();
    Some(format!(
        "\n\nHTTP/JSON on https://{addr} (mutual TLS; OpenAPI at /openapi.json). The first lookup above, with curl:\n\
         \n  curl --cacert {ca} --cert {cert} --key {key} \\\
         \n    -H @{dd}/tokens/cpas-anderlecht.header -H 'Content-Type: application/json' \\\
         \n    https://{addr}/v1/lookups -d '{{\"citizen\": \"93051822361\", \"dataset\": \"national_register.residence\", \"fields\": [\"street\", \"municipality\"], \"purpose\": \"RIS_ELIGIBILITY\"}}'\
         \n\nThe web console for auditors: https://{addr}/console/ (give the browser {auditor_cert} and its key,\
         \nthe supervisory body's, as a PKCS#12 file; sign in with {dd}/tokens/control-commission.jwt, the\
         \nlog's verifier key and the demo witness's key, quorum {quorum}: verifier_key, witness_key and\
         \nwitness_quorum of {dd}/demo.json):\
         \n  verifier key  {verifier_key}\
         \n  witness key   {witness_key}\
         \nThe citizen's page, as the portal serves it: https://{addr}/console/citizen.html",
        verifier_key = manifest.verifier_key,
        witness_key = manifest.witness_key,
        quorum = manifest.witness_quorum,
        auditor_cert = auditor.cert.display(),
        ca = client.ca.display(),
        cert = client.cert.display(),
        key = client.key.display(),
    ))
}
