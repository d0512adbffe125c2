//! How the commands that call a broker reach it ([`Conn`]: a demo
//! organisation, or explicit files and a token) and how they print its
//! answer or its refusal ([`report`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use semel_client::{CallError, Client, ClientConfig};
use serde_json::Value as Json;

use crate::output::{self, Exit, out, outln};

/// How to reach the broker: a demo data directory and an organisation, or
/// explicit files.
#[derive(Args)]
pub struct Conn {
    /// The demo's data directory (its demo.json names the broker and files).
    #[arg(
        long,
        global = true,
        default_value = "semel-data",
        env = "SEMEL_DEMO_DIR"
    )]
    pub data_dir: PathBuf,
    /// Act as this demo organisation: a slug such as cpas-anderlecht, or its enterprise number.
    #[arg(long = "as", global = true)]
    pub as_org: Option<String>,
    /// Broker address, e.g. https://broker.example:50051 (instead of the demo's).
    #[arg(long, global = true, requires_all = ["ca", "cert", "key"])]
    pub broker: Option<String>,
    /// CA bundle that the broker's certificate chains to.
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// Your organisation's client certificate.
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    /// Its private key.
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// A file holding the person's token (JWT); the demo mints one when omitted.
    #[arg(long, global = true, env = "SEMEL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A client of the broker `conn` points at: with its files, or with the
/// demo's files of the organisation it acts as (`default_org` when `--as`
/// is not given).
pub async fn connect(conn: &Conn, default_org: Option<&str>) -> anyhow::Result<Client> {
    let config = match (&conn.broker, &conn.ca, &conn.cert, &conn.key) {
        (Some(broker), Some(ca), Some(cert), Some(key)) => ClientConfig {
            broker: broker.clone(),
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
            token: None,
        },
        _ => {
            let who = conn
                .as_org
                .as_deref()
                .or(default_org)
                .context("say which organisation you act as: --as cpas-anderlecht (or give --broker, --ca, --cert and --key)")?;
            semel_demo_stack::demo::client_config(&conn.data_dir, who)?
        }
    };
    let config = match &conn.token_file {
        Some(path) => ClientConfig {
            token: Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("read the token {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            ..config
        },
        None => config,
    };
    Client::connect(&config).await
}

/// Prints an answer (or the broker's error) and says how the command ends:
/// `--json` prints the whole answer, or the error's code, reason, message
/// and request id, on stdout; otherwise `text` renders it for people and
/// errors go to stderr.
pub fn report(
    json: bool,
    result: Result<Json, CallError>,
    text: impl FnOnce(&Json) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    match result {
        Ok(v) => {
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                text(&v)?;
            }
            Ok(Exit::Done.into())
        }
        Err(e) => {
            if json {
                outln!("{}", serde_json::to_string_pretty(&e.to_json())?);
            } else {
                let label = match e.code.as_str() {
                    "PermissionDenied" | "Unauthenticated" => "refused",
                    "NotFound" => "not found",
                    _ => "error",
                };
                eprintln!("{label}: {e}");
            }
            Ok(Exit::Refused.into())
        }
    }
}

/// A list as a table of `columns`, or an object field by field.
pub fn print_value(v: &Json, columns: &[&str]) -> anyhow::Result<()> {
    match v {
        Json::Array(items) => out!("{}", output::table(items, columns)),
        other => out!("{}", output::record(other)),
    }
    Ok(())
}
