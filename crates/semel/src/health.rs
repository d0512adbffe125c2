//! `semel health`: a probe of a broker's grpc.health.v1, over TLS without
//! a client certificate.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::output::{Exit, outln};

#[derive(Args)]
pub struct HealthArgs {
    /// Broker address; by default the demo's.
    #[arg(long)]
    pub broker: Option<String>,
    /// CA bundle the broker's certificate chains to; by default the demo's.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// A service name such as semel.v1.LookupService; the whole broker by default.
    #[arg(long, default_value = "")]
    pub service: String,
    /// The name the broker's certificate must carry, when it is not the
    /// host in --broker: a production certificate names its DNS name
    /// only, so a probe of https://127.0.0.1:50051 gives that name here.
    #[arg(long, env = "SEMEL_SERVER_NAME")]
    pub server_name: Option<String>,
    /// The demo's data directory, when --broker and --ca are not given.
    #[arg(long, default_value = "semel-data", env = "SEMEL_DEMO_DIR")]
    pub data_dir: PathBuf,
    /// Print JSON ({"broker", "service", "status", "error"}) instead of the status.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: HealthArgs) -> anyhow::Result<ExitCode> {
    let HealthArgs {
        broker,
        ca,
        service,
        data_dir,
        server_name,
        json,
    } = args;
    let (broker, ca) = match (broker, ca) {
        (Some(b), Some(c)) => (b, c),
        (b, c) => {
            let demo = semel_demo_stack::demo::client_config(&data_dir, "operator")?;
            (b.unwrap_or(demo.broker), c.unwrap_or(demo.ca))
        }
    };
    let checked = semel_client::check_health(
        &broker,
        &ca,
        server_name.as_deref().filter(|n| !n.is_empty()),
        &service,
    )
    .await;
    let status = if json {
        let (status, error) = match &checked {
            Ok(s) => (Some(s.clone()), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        let v = serde_json::json!({
            "broker": broker,
            "service": service,
            "status": status,
            "error": error,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
        status.unwrap_or_default()
    } else {
        let status = checked?;
        outln!("{status}");
        status
    };
    Ok(if status == "SERVING" {
        Exit::Done
    } else {
        Exit::Failed
    }
    .into())
}
