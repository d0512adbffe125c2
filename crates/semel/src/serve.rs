//! `semel serve`: the broker alone, from a configuration file, and
//! `--check-config`, which checks that file without binding any port.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use semel_server::Config;
use semel_server::config::ConfigExt as _;

use crate::output::{Exit, outln};

#[derive(Args)]
pub struct ServeArgs {
    /// The configuration file (TOML; deploy/semel.example.toml documents every key).
    #[arg(long)]
    pub config: PathBuf,
    /// Check the configuration and exit, without binding any port: every
    /// value, and every certificate, key, CA bundle and JWKS it names is
    /// loaded; all problems are reported.
    #[arg(long)]
    pub check_config: bool,
    /// With --check-config: print the result as JSON
    /// ({"valid": …, "problems": […]}).
    #[arg(long, requires = "check_config")]
    pub json: bool,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let ServeArgs {
        config,
        check_config,
        json,
    } = args;
    if check_config {
        return check_configuration(&config, json);
    }
    let config = Config::load(&config)?;
    // Taken over before the broker prepares: a SIGTERM while it waits for
    // its database ends the wait; one after is a clean stop.
    let mut stop = std::pin::pin!(crate::shutdown_signal());
    // The gRPC port first: while the broker prepares (waits for its
    // database), health answers NOT_SERVING there, so a supervisor sees a
    // live process that is not ready yet.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;
    let waiting = semel_server::server::WaitingHealth::start(&listener, &config)?;
    let prepared = tokio::select! {
        prepared = semel_server::server::prepare(&config) => prepared,
        () = &mut stop => {
            waiting.stop().await;
            tracing::info!("stopped before the broker was ready");
            return Ok(Exit::Done.into());
        }
    };
    waiting.stop().await;
    let prepared = prepared?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind the metrics port {addr}"))?,
        ),
        None => None,
    };
    let http_face = match &config.http {
        Some(http) => Some(semel_http::face(
            tokio::net::TcpListener::bind(http.listen)
                .await
                .with_context(|| format!("bind the HTTP/JSON port {}", http.listen))?,
            http.settings(),
        )),
        None => None,
    };
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = metrics_listener.map(|l| {
        tokio::spawn(semel_server::server::serve_metrics(
            l,
            prepared.broker.clone(),
            async {
                let _ = metrics_stopped.await;
            },
        ))
    });
    semel_server::server::serve_broker_with_face(listener, http_face, prepared, stop).await?;
    let _ = stop_metrics.send(());
    if let Some(m) = metrics {
        m.await.context("metrics task")??;
    }
    Ok(Exit::Done.into())
}

/// `semel serve --check-config`: every problem with the values and the
/// files, at once.
fn check_configuration(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let problems = match Config::read(path) {
        Ok(config) => {
            let mut problems = config.problems();
            problems.extend(config.file_problems());
            problems
        }
        // A file that does not parse has nothing more to check.
        Err(e) => vec![format!("{e:#}")],
    };
    if json {
        let v = serde_json::json!({
            "config": path.display().to_string(),
            "valid": problems.is_empty(),
            "problems": problems,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else if problems.is_empty() {
        outln!("configuration is valid");
    } else {
        for p in &problems {
            eprintln!("error: {p}");
        }
        eprintln!("{} problem(s) in {}", problems.len(), path.display());
    }
    Ok(if problems.is_empty() {
        Exit::Done
    } else {
        Exit::Failed
    }
    .into())
}
