//! `semel audit`: the audit log, asked of a running broker (list, head,
//! checkpoint, accesses) or read from a store's files offline (verify,
//! export, in `audit/offline.rs`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use semel_client::AuditFilter;
use serde_json::Value as Json;

use crate::conn::{Conn, connect, report};
use crate::output::{out, outln};

mod offline;

// Parsed once per run: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum AuditCommand {
    /// Entries, newest first.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Entries about this citizen (national or BIS number).
        /// `-` reads it from standard input, `@FILE` from a file: either keeps it
        /// out of the process list and the shell's history.
        #[arg(long, value_parser = crate::cli::citizen_arg)]
        citizen: Option<String>,
        /// Consumer enterprise number.
        #[arg(long)]
        consumer: Option<String>,
        /// The person (the token's sub) who made the calls.
        #[arg(long)]
        person: Option<String>,
        /// An authorisation reference, e.g. BSC/2024/017.
        #[arg(long)]
        authorisation: Option<String>,
        /// Entries about this dataset.
        #[arg(long)]
        dataset: Option<String>,
        /// allowed or refused.
        #[arg(long)]
        decision: Option<String>,
        /// A reason code, e.g. NO_ACTIVE_FILE.
        #[arg(long)]
        reason: Option<String>,
        /// From this time on (RFC 3339, e.g. 2026-11-01T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 20)]
        limit: i32,
        /// Continue a listing where the previous page ended (it prints the token).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Number of entries and hash of the last one.
    Head {
        #[command(flatten)]
        conn: Conn,
    },
    /// The newest signed checkpoint (C2SP signed note) and the broker's verifier key.
    Checkpoint {
        #[command(flatten)]
        conn: Conn,
    },
    /// Verify a store's audit log or an export offline: sequence, hash chain, Merkle tree and every signed checkpoint (and, with --database, every row's query columns); names the first entry that does not match. Exit 0 if all holds, 4 for any integrity failure (an entry missing, altered, reordered or forked, a column that disagrees), 1 only when the input cannot be read (no connection, no such file).
    Verify {
        /// The broker's data directory (data_dir in semel.toml; the demo's is semel-data/store).
        #[arg(long, conflicts_with_all = ["export", "database"], required_unless_present_any = ["export", "database"])]
        store: Option<PathBuf>,
        /// A JSON Lines export made with `semel audit export`.
        #[arg(long, conflicts_with = "database")]
        export: Option<PathBuf>,
        /// The PostgreSQL store's URL (store.url in semel.toml): its log is exported and the
        /// export verified, as an auditor's copy would be.
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        /// The broker's verifier key (name+hash+key), as the operator published it.
        #[arg(long, conflicts_with = "verifier_key_file")]
        verifier_key: Option<String>,
        /// A file holding the verifier key.
        #[arg(long)]
        verifier_key_file: Option<PathBuf>,
        /// A checkpoint an auditor saw (a signed note, as `semel audit checkpoint` prints it, with
        /// its witnesses' cosignatures): the log must reach it and reproduce its root; repeatable.
        #[arg(long = "trusted-checkpoint")]
        trusted: Vec<PathBuf>,
        /// A witness's verifier key whose cosignature the trusted checkpoints must carry; repeatable.
        #[arg(long = "witness-key")]
        witness_keys: Vec<String>,
        /// How many of the --witness-key witnesses must have cosigned (default: all of them).
        #[arg(long)]
        witness_quorum: Option<usize>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Export a store's whole audit log, with its signed checkpoints, for auditors.
    Export {
        /// The broker's data directory (data_dir in semel.toml; the demo's is semel-data/store).
        #[arg(
            long,
            conflicts_with = "database",
            required_unless_present = "database"
        )]
        store: Option<PathBuf>,
        /// The PostgreSQL store's URL (store.url in semel.toml), instead of a data directory.
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        /// Where to write; standard output when omitted.
        #[arg(long)]
        output: Option<PathBuf>,
        /// jsonl (verifiable: entries, encodings and checkpoints) or csv (readable fields).
        #[arg(long, default_value = "jsonl")]
        format: String,
    },
    /// Begin a new epoch of the log, when entries its witnesses cosigned
    /// are lost for good (the operator guide's incident procedure): on an
    /// empty store, under a new audit.origin, the first entry states the
    /// previous origin's newest cosigned checkpoint and the entries lost.
    /// Run it with the broker stopped.
    NewEpoch {
        /// The broker's configuration file: its store (empty), its new audit.origin and its
        /// signing key.
        #[arg(long)]
        config: PathBuf,
        /// The previous origin's newest checkpoint its witnesses cosigned (the signed note, as
        /// `semel audit checkpoint` printed it or the witness keeps it).
        #[arg(long)]
        previous_checkpoint: PathBuf,
        /// How many of the previous log's entries the kept store still holds (`semel audit
        /// verify` on it says): the entries from there to the checkpoint's size are lost.
        #[arg(long)]
        held: u64,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Who consulted a citizen's data (as the citizen, or an auditor).
    Accesses {
        #[command(flatten)]
        conn: Conn,
        /// The citizen's national or BIS number.
        /// `-` reads it from standard input, `@FILE` from a file: either keeps it
        /// out of the process list and the shell's history.
        #[arg(long, value_parser = crate::cli::citizen_arg)]
        citizen: String,
        /// At most this many accesses.
        #[arg(long, default_value_t = 20)]
        limit: i32,
    },
}

pub async fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify {
            store,
            export,
            database,
            verifier_key,
            verifier_key_file,
            trusted,
            witness_keys,
            witness_quorum,
            json,
        } => {
            offline::verify(offline::VerifyArgs {
                store,
                export,
                database,
                key: verifier_key,
                key_file: verifier_key_file,
                trusted,
                witness_keys,
                witness_quorum,
                json,
            })
            .await
        }
        AuditCommand::Export {
            store,
            database,
            output,
            format,
        } => match (store, database) {
            (Some(store), _) => offline::export(&store, output.as_deref(), &format),
            (None, Some(url)) => offline::export_database(url, output, format).await,
            (None, None) => anyhow::bail!("give --store or --database"),
        },
        AuditCommand::NewEpoch {
            config,
            previous_checkpoint,
            held,
            json,
        } => offline::new_epoch(&config, &previous_checkpoint, held, json).await,
        command => remote(command).await,
    }
}

/// The audit commands that ask a running broker.
async fn remote(command: AuditCommand) -> anyhow::Result<ExitCode> {
    let (conn, call) = match command {
        AuditCommand::List {
            conn,
            citizen,
            consumer,
            person,
            authorisation,
            dataset,
            decision,
            reason,
            since,
            until,
            limit,
            page_token,
        } => (
            conn,
            AuditCall::List(Box::new(AuditFilter {
                citizen,
                consumer,
                end_user: person,
                authorisation,
                dataset,
                decision,
                reason,
                since,
                until,
                limit,
                page_token,
            })),
        ),
        AuditCommand::Head { conn } => (conn, AuditCall::Head),
        AuditCommand::Checkpoint { conn } => (conn, AuditCall::Checkpoint),
        AuditCommand::Accesses {
            conn,
            citizen,
            limit,
        } => (conn, AuditCall::Accesses(citizen, limit)),
        AuditCommand::Verify { .. }
        | AuditCommand::Export { .. }
        | AuditCommand::NewEpoch { .. } => {
            unreachable!("read from files, not asked of a broker")
        }
    };
    let client = connect(&conn, Some("operator")).await?;
    let result = match call {
        AuditCall::List(filter) => client.audit_list(*filter).await,
        AuditCall::Head => client.audit_head().await,
        AuditCall::Checkpoint => client.latest_checkpoint().await,
        AuditCall::Accesses(citizen, limit) => client.citizen_accesses(citizen, limit).await,
    };
    report(conn.json, result, print_audit)
}

enum AuditCall {
    List(Box<AuditFilter>),
    Head,
    Checkpoint,
    Accesses(String, i32),
}

fn print_audit(v: &Json) -> anyhow::Result<()> {
    if let Some(key) = v["verifier_key"].as_str() {
        match v["signed_note"].as_str() {
            Some(note) => out!("{note}"),
            None => outln!("no checkpoint signed yet"),
        }
        outln!("\nverifier key: {key}");
        return Ok(());
    }
    if let Some(accesses) = v["accesses"].as_array() {
        if accesses.is_empty() {
            outln!("no one consulted this citizen's data");
        }
        for a in accesses {
            let s = |k: &str| a[k].as_str().unwrap_or("").to_owned();
            let fields: Vec<&str> = a["fields"]
                .as_array()
                .map(|f| f.iter().filter_map(Json::as_str).collect())
                .unwrap_or_default();
            let checked: Vec<&str> = a["checked_fields"]
                .as_array()
                .map(|f| f.iter().filter_map(Json::as_str).collect())
                .unwrap_or_default();
            let what = if s("action").starts_with("consent") {
                format!(
                    "registered: {} ({}{})",
                    s("action"),
                    if s("dataset").is_empty() {
                        "every dataset".to_owned()
                    } else {
                        s("dataset")
                    },
                    if s("decision") == "allowed" {
                        String::new()
                    } else {
                        format!(", refused: {}", s("reason"))
                    }
                )
            } else if s("decision") == "allowed" {
                let mut got = fields.join(", ");
                if !checked.is_empty() {
                    if !got.is_empty() {
                        got.push_str(", and ");
                    }
                    got.push_str(&format!("a yes/no answer about {}", checked.join(", ")));
                }
                format!(
                    "received {got} from {} ({})",
                    s("source_name"),
                    s("dataset")
                )
            } else {
                format!("was refused {} ({})", s("dataset"), s("reason"))
            };
            outln!(
                "{} {} ({}) {what}, purpose {}",
                s("time"),
                s("consumer_name"),
                s("consumer_kbo"),
                s("purpose")
            );
        }
        return Ok(());
    }
    let Some(entries) = v["entries"].as_array() else {
        outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return Ok(());
    };
    for e in entries {
        let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
        let outcome = if s("reason").is_empty() {
            s("outcome")
        } else {
            format!("{} {}", s("outcome"), s("reason"))
        };
        let by = match (s("end_user").as_str(), s("operation").as_str()) {
            ("", "semel.v1.LookupService/Lookup") => String::new(),
            (u, "semel.v1.LookupService/Lookup") => format!(" ({u})"),
            (u, op) => format!(" ({}) {op}", if u.is_empty() { "-" } else { u }),
        };
        outln!(
            "#{} {} consumer {}{by} citizen {} {} [{}] purpose {} auth {} → {} {}",
            e["sequence"],
            s("time"),
            s("consumer_kbo"),
            s("citizen"),
            s("dataset"),
            e["fields_requested"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(Json::as_str)
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default(),
            s("purpose"),
            match (
                s("authorisation_reference").as_str(),
                e["authorisation_version"].as_u64().unwrap_or(0),
            ) {
                ("", _) => "-".to_owned(),
                (r, 0) => r.to_owned(),
                (r, v) => format!("{r} v{v}"),
            },
            s("decision"),
            outcome
        );
    }
    if let Some(t) = v["next_page_token"].as_str().filter(|t| !t.is_empty()) {
        outln!("(more: --page-token {t})");
    }
    Ok(())
}
