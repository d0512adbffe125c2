//! `semel catalogue`: what an organisation may call, and who may call it.

use std::process::ExitCode;

use clap::Args;
use serde_json::{Value as Json, json};

use crate::conn::{Conn, connect, report};
use crate::output;

#[derive(Args)]
pub struct CatalogueArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Another organisation's catalogue, by enterprise number (the operator's administrators
    /// and auditors of the whole log only); default: your own.
    #[arg(long)]
    pub of: Option<String>,
}

/// Prints, as a consumer, each dataset the organisation may use and on
/// what conditions; as a source, who may call its datasets for what.
pub async fn run(args: CatalogueArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.conn, None).await?;
    let result = client.catalogue(args.of.unwrap_or_default()).await;
    report(args.conn.json, result, |v| {
        output::out!(
            "{} ({}), on {}\n\nMay call, as a consumer:\n{}\nCalled by, as a source:\n{}",
            v["name"].as_str().unwrap_or_default(),
            v["kbo"].as_str().unwrap_or_default(),
            v["as_of"].as_str().unwrap_or_default(),
            output::table(&rows(&v["may_call"]), MAY_CALL),
            output::table(&rows(&v["called_by"]), CALLED_BY),
        );
        Ok(())
    })
}

const MAY_CALL: &[&str] = &[
    "dataset",
    "source",
    "purpose",
    "authorisation",
    "state",
    "valid",
    "fields",
    "check_fields",
    "questions",
    "capacities",
    "consent_required",
    "legal_basis",
];

const CALLED_BY: &[&str] = &[
    "dataset",
    "consumer",
    "purpose",
    "authorisation",
    "state",
    "valid",
    "fields",
    "check_fields",
    "questions",
];

/// The entries as table rows: fields with their types, validity as a span.
fn rows(entries: &Json) -> Vec<Json> {
    let typed = |fields: &Json| {
        fields
            .as_array()
            .map(|fs| {
                fs.iter()
                    .map(|f| {
                        format!(
                            "{} ({})",
                            f["name"].as_str().unwrap_or_default(),
                            f["type"].as_str().unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    entries
        .as_array()
        .map(|es| {
            es.iter()
                .map(|e| {
                    let mut row = e.clone();
                    row["authorisation"] = e["authorisation_reference"].clone();
                    row["fields"] = json!(typed(&e["fields"]));
                    row["check_fields"] = json!(typed(&e["check_fields"]));
                    row["source"] = json!(format!(
                        "{} {}",
                        e["source_kbo"].as_str().unwrap_or_default(),
                        e["source_name"].as_str().unwrap_or_default()
                    ));
                    row["consumer"] = json!(format!(
                        "{} {}",
                        e["consumer_kbo"].as_str().unwrap_or_default(),
                        e["consumer_name"].as_str().unwrap_or_default()
                    ));
                    if e["capacities"].as_array().is_none_or(Vec::is_empty) {
                        // No capacity named: a file in any capacity.
                        row["capacities"] = json!("any");
                    }
                    let until = e["valid_until"].as_str().unwrap_or_default();
                    row["valid"] = json!(format!(
                        "{} to {}",
                        e["valid_from"].as_str().unwrap_or_default(),
                        if until.is_empty() { "open" } else { until }
                    ));
                    row
                })
                .collect()
        })
        .unwrap_or_default()
}
