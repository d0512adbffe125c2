//! `semel source publish` and `semel subscribe`: a source's changes, and
//! a consumer receiving those about the citizens it holds files on.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use semel_client::NewMutation;
use serde_json::Value as Json;

use crate::conn::{Conn, connect, print_value, report};
use crate::output::{Exit, outln};

#[derive(Subcommand)]
pub enum SourceCommand {
    /// Publish a change of one of your datasets about a citizen: every consumer holding a
    /// file on them, and authorised for the data, is told.
    Publish {
        /// The dataset, e.g. national_register.residence.
        #[arg(long)]
        dataset: String,
        /// The citizen's national or BIS number.
        /// `-` reads it from standard input, `@FILE` from a file: either keeps it
        /// out of the process list and the shell's history.
        #[arg(long, value_parser = crate::cli::citizen_arg)]
        citizen: String,
        /// created, changed or ended.
        #[arg(long, default_value = "changed")]
        kind: String,
        /// The day the change takes effect (YYYY-MM-DD); today when omitted.
        #[arg(long)]
        effective_date: Option<String>,
        /// A changed field's new value, name=value (repeat for several).
        #[arg(long = "field")]
        fields: Vec<String>,
        /// Your id of the event; publishing it again stores nothing new. A new one when omitted.
        #[arg(long)]
        event_id: Option<String>,
    },
}

pub async fn source(conn: Conn, command: SourceCommand) -> anyhow::Result<ExitCode> {
    let client = connect(&conn, None).await?;
    let SourceCommand::Publish {
        dataset,
        citizen,
        kind,
        effective_date,
        fields,
        event_id,
    } = command;
    let event_id = event_id.unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!("cli-{}", now.as_nanos())
    });
    let result = client
        .publish_mutations(vec![NewMutation {
            event_id,
            dataset,
            citizen,
            kind,
            effective_date: effective_date.unwrap_or_default(),
            fields,
        }])
        .await;
    report(conn.json, result, |v| {
        print_value(v, &["source_event_id", "duplicate", "request_id"])
    })
}

#[derive(Args)]
pub struct SubscribeArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Start after this position (default: after the last one acknowledged).
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Do not acknowledge what is received (it comes again next time).
    #[arg(long)]
    pub no_ack: bool,
    /// Stop after this many changes (default: run until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    pub for_seconds: Option<u64>,
}

/// Prints the caller's changes as they arrive, acknowledging each once
/// printed.
pub async fn subscribe(args: SubscribeArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.conn, None).await?;
    let mut subscription = match client.subscribe(args.after).await {
        Ok(s) => s,
        Err(e) => return report(args.conn.json, Err(e), |_| Ok(())),
    };
    let deadline = args
        .for_seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut received = 0u64;
    loop {
        if args.count.is_some_and(|c| received >= c) {
            return Ok(Exit::Done.into());
        }
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, subscription.next()).await {
                Ok(n) => n,
                Err(_) => return Ok(Exit::Done.into()),
            },
            None => subscription.next().await,
        };
        let item = match next {
            Ok(Some(item)) => item,
            Ok(None) => return Ok(Exit::Done.into()),
            Err(e) => return report(args.conn.json, Err(e), |_| Ok(())),
        };
        if args.conn.json {
            outln!("{}", serde_json::to_string(&item)?);
        } else {
            outln!("{}", describe(&item));
        }
        if let Some(position) = item.get("position").and_then(Json::as_u64) {
            received += 1;
            if !args.no_ack
                && let Err(e) = client.acknowledge_mutations(position).await
            {
                return report(args.conn.json, Err(e), |_| Ok(()));
            }
        }
    }
}

/// One line for people: what changed, about whom (the number's last
/// digits only), under which authorisation.
fn describe(item: &Json) -> String {
    if let Some(lost) = item.get("lost") {
        return format!(
            "LOST positions {} to {}: they were not acknowledged within the retention period; reconcile with the source",
            lost["first_position"], lost["last_position"]
        );
    }
    let s = |k: &str| item[k].as_str().unwrap_or_default().to_owned();
    let fields = match item["fields"].as_object() {
        Some(f) if !f.is_empty() => f
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), str::to_owned)))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "no value".to_owned(),
    };
    let checked = item["checked_fields"]
        .as_array()
        .filter(|a| !a.is_empty())
        .map(|a| {
            format!(
                " (changed, not shown: {})",
                a.iter()
                    .filter_map(Json::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .unwrap_or_default();
    format!(
        "#{} {} {} of {} effective {}: {}{} [{}; file {}; event {} from {}]",
        item["position"],
        s("kind"),
        s("dataset"),
        s("citizen"),
        s("effective_date"),
        fields,
        checked,
        s("authorisation_reference"),
        s("file_id"),
        s("source_event_id"),
        s("source_kbo"),
    )
}
