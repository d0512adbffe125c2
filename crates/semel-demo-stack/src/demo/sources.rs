//! The demo sources: started in the broker's process, or in their own
//! (`semel demo-sources`) so that they outlive a broker.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use semel_core::Kbo;
use semel_demo::Population;
use semel_demo::pki::DevPki;
use semel_demo::seed;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::demo_source::DemoSource;
use semel_server::server;
use semel_server::tls::{self, TlsFiles};

use super::credentials::dev_pki;
use super::{DemoOptions, wait};

/// Starts the demo sources, each on a free port of loopback with its own
/// certificate, until `rx` says stop; their endpoints by slug.
pub(super) async fn start_sources(
    pki: &DevPki,
    population: &Arc<Population>,
    operator: Kbo,
    rx: &watch::Receiver<bool>,
) -> anyhow::Result<(
    std::collections::BTreeMap<String, String>,
    Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
)> {
    let mut source_tasks = Vec::new();
    let mut endpoints = std::collections::BTreeMap::new();
    for (slug, source) in [
        (
            "national-register",
            DemoSource::national_register(population.clone(), operator),
        ),
        (
            "spf-finances",
            DemoSource::spf_finances(population.clone(), operator),
        ),
        ("onem", DemoSource::onem(population.clone(), operator)),
    ] {
        let org = seed::org(slug).context("demo source missing")?;
        let files = pki.files(org.kbo.as_str());
        let tls = tls::server_config(&TlsFiles {
            cert: &files.cert,
            key: &files.key,
            client_ca: &pki.ca_cert(),
            client_crls: &[pki.crl()],
        })?;
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("bind a demo source")?;
        endpoints.insert(
            slug.to_owned(),
            format!("https://127.0.0.1:{}", listener.local_addr()?.port()),
        );
        source_tasks.push(tokio::spawn(server::serve_source(
            listener,
            tls,
            source.into_service(),
            wait(rx.clone()),
        )));
    }

    Ok((endpoints, source_tasks))
}

/// The file in which a demo sources process (`semel demo-sources`) names
/// its endpoints and its process id.
pub const SOURCES_FILE: &str = "sources.json";

#[derive(Debug, Serialize, Deserialize)]
struct SourcesFile {
    pid: u32,
    endpoints: std::collections::BTreeMap<String, String>,
}

/// Serves the demo sources of the demo in `data_dir` (its PKI, its
/// population) until `shutdown`, after writing their endpoints to
/// [`SOURCES_FILE`]: `semel demo-sources`, which a demo on PostgreSQL
/// starts so that its sources outlive either broker.
pub async fn serve_sources(
    data_dir: &Path,
    seed: u64,
    population: usize,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let orgs = seed::organisations();
    let operator = seed::org("operator").context("demo operator missing")?;
    let pki = dev_pki(&data_dir.join("pki"), &orgs, &operator)?;
    let population = Arc::new(Population::generate(seed, population));
    let (stop, rx) = watch::channel(false);
    let (endpoints, tasks) = start_sources(&pki, &population, operator.kbo, &rx).await?;
    let file = SourcesFile {
        pid: std::process::id(),
        endpoints,
    };
    let path = data_dir.join(SOURCES_FILE);
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, serde_json::to_vec_pretty(&file)?)
        .with_context(|| format!("write {}", partial.display()))?;
    std::fs::rename(&partial, &path).with_context(|| format!("write {}", path.display()))?;
    tracing::info!(pid = file.pid, "demo sources serving: {:?}", file.endpoints);
    // Also stops when its file is removed (the data directory deleted):
    // no process outlives the demo it served for long.
    let gone = async {
        while path.exists() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    tokio::select! {
        () = shutdown => {}
        () = gone => tracing::info!("{} removed: the demo sources stop", path.display()),
    }
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// The endpoints of the demo sources process named in [`SOURCES_FILE`]
/// if it still answers, else of a new one started from `exe`
/// (`semel demo-sources`), which lives on when this broker stops.
pub(super) async fn external_sources(
    exe: &Path,
    data_dir: &Path,
    opts: &DemoOptions,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let path = data_dir.join(SOURCES_FILE);
    let answering = |file: &SourcesFile| {
        file.endpoints.values().all(|e| {
            e.strip_prefix("https://")
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .is_some_and(|a| {
                    std::net::TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok()
                })
        })
    };
    if let Some(file) = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<SourcesFile>(&b).ok())
        && !file.endpoints.is_empty()
        && answering(&file)
    {
        tracing::info!(
            pid = file.pid,
            "the demo sources of a previous start still answer"
        );
        return Ok(file.endpoints);
    }
    let _ = std::fs::remove_file(&path);
    let log = std::fs::File::create(data_dir.join("sources.log"))
        .context("create the demo sources' log")?;
    let mut child = std::process::Command::new(exe)
        .arg("demo-sources")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--seed")
        .arg(opts.seed.to_string())
        .arg("--population")
        .arg(opts.population.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("start the demo sources ({} demo-sources)", exe.display()))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(file) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<SourcesFile>(&b).ok())
        {
            return Ok(file.endpoints);
        }
        if let Some(status) = child.try_wait().context("check the demo sources")? {
            anyhow::bail!(
                "the demo sources stopped ({status}); see {}",
                data_dir.join("sources.log").display()
            );
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the demo sources did not start within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
