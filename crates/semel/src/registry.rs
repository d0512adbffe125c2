//! `semel registry`: the registry as reviewed files. `export` writes it,
//! `apply --dry-run` prints what applying them would create, amend or end,
//! and `apply` does it, all or nothing.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value as Json;

use crate::conn::{Conn, connect, report};
use crate::output;

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Write the whole registry as TOML files (organisations, purposes, datasets,
    /// authorisations), to keep in git and review.
    Export {
        /// The directory to write them in (created if missing; files there are replaced).
        #[arg(long, default_value = "registry")]
        dir: PathBuf,
    },
    /// Apply the registry described by the *.toml files of a directory: creates what is new,
    /// amends what differs, ends what they end (status = "suspended" or "revoked"); leaves
    /// what they do not describe. All or nothing; every error at once, by file and line.
    Apply {
        /// The directory of the files.
        #[arg(long, default_value = "registry")]
        dir: PathBuf,
        /// Only print the plan: nothing changes.
        #[arg(long)]
        dry_run: bool,
        /// Why, for the record (e.g. the reviewed commit).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

pub async fn run(conn: Conn, command: RegistryCommand) -> anyhow::Result<ExitCode> {
    let client = connect(&conn, Some("operator")).await?;
    match command {
        RegistryCommand::Export { dir } => {
            let result = client.registry_export(&dir).await;
            report(conn.json, result, |v| {
                output::out!(
                    "{} organisations, {} purposes, {} datasets, {} authorisations written to:\n  {}\n",
                    v["organisations"],
                    v["purposes"],
                    v["datasets"],
                    v["authorisations"],
                    v["files"]
                        .as_array()
                        .map(|f| f
                            .iter()
                            .filter_map(Json::as_str)
                            .collect::<Vec<_>>()
                            .join("\n  "))
                        .unwrap_or_default()
                );
                Ok(())
            })
        }
        RegistryCommand::Apply {
            dir,
            dry_run,
            reason,
        } => {
            let result = client.registry_apply(&dir, dry_run, reason).await;
            report(conn.json, result, |v| {
                let changes: Vec<Json> = v["changes"].as_array().cloned().unwrap_or_default();
                let changed: Vec<Json> = changes
                    .iter()
                    .filter(|c| c["action"] != "unchanged")
                    .cloned()
                    .collect();
                let unchanged = changes.len() - changed.len();
                let verdict = match (v["applied"].as_bool(), changed.is_empty()) {
                    (_, true) => "nothing to change: the registry is as the files describe it",
                    (Some(true), false) => "applied",
                    _ => "dry run: nothing changed; run without --dry-run to apply",
                };
                output::out!(
                    "{}{unchanged} unchanged\n{verdict}\n",
                    if changed.is_empty() {
                        String::new()
                    } else {
                        output::table(&changed, &["action", "kind", "key", "at", "detail"])
                    }
                );
                Ok(())
            })
        }
    }
}
