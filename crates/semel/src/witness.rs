//! `semel witness`: a witness of audit logs (c2sp.org/tlog-witness) and
//! its verifier key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use crate::output::outln;

#[derive(Subcommand)]
pub enum WitnessCommand {
    /// Serve POST /add-checkpoint until SIGTERM or Ctrl-C.
    Serve {
        /// Address to listen on (plain HTTP: cosignatures carry their own integrity).
        #[arg(long, default_value = "127.0.0.1:8701")]
        listen: std::net::SocketAddr,
        /// The witness's directory: its key (witness.key, created if missing) and state.json.
        #[arg(long)]
        dir: PathBuf,
        /// The witness's name, e.g. witness.commission.brussels/w1.
        #[arg(long)]
        name: String,
        /// The verifier key of a log it follows (name+hash+key), as its operator published it; repeatable.
        #[arg(long = "log", required = true)]
        logs: Vec<String>,
    },
    /// Print the witness's verifier key, for brokers (audit.witnesses) and auditors (--witness-key).
    Key {
        /// The witness's directory (its key is created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The witness's name.
        #[arg(long)]
        name: String,
    },
}

pub async fn run(command: WitnessCommand) -> anyhow::Result<ExitCode> {
    match command {
        WitnessCommand::Key { dir, name } => {
            let w = semel_server::witness::Witness::open(&dir, &name, &[])?;
            outln!("{}", w.verifier_key());
        }
        WitnessCommand::Serve {
            listen,
            dir,
            name,
            logs,
        } => {
            let w = std::sync::Arc::new(semel_server::witness::Witness::open(&dir, &name, &logs)?);
            eprintln!("witness {name}: key {}", w.verifier_key());
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("bind {listen}"))?;
            semel_server::witness::serve_witness(listener, w, crate::shutdown_signal()).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
