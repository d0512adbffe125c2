//! `semel lookup`: a consumer organisation looks up data about a citizen,
//! or asks yes/no questions about it.

use std::process::ExitCode;

use clap::Args;
use serde_json::Value as Json;

use crate::conn::{Conn, connect, report};
use crate::output::outln;

#[derive(Args)]
pub struct LookupArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// National or BIS number, bare or formatted (93.05.18-223.61).
    /// `-` reads it from standard input, `@FILE` from a file: either keeps it
    /// out of the process list and the shell's history.
    #[arg(long, value_parser = crate::cli::citizen_arg)]
    pub citizen: String,
    /// e.g. national_register.residence
    #[arg(long)]
    pub dataset: String,
    /// Comma-separated field names.
    #[arg(long, value_delimiter = ',', required_unless_present = "check")]
    pub fields: Vec<String>,
    /// A yes/no check instead of a value, e.g. `nis_code=21004` or
    /// `income_years[income_year=2024].taxable_income_cents<2000000`
    /// (operators = != < <= > >=); repeatable.
    #[arg(long)]
    pub check: Vec<String>,
    /// Purpose code, e.g. RIS_ELIGIBILITY.
    #[arg(long)]
    pub purpose: String,
    /// The data as they stood on this date (YYYY-MM-DD).
    #[arg(long)]
    pub reference_date: Option<String>,
    /// Your own reference (case number), kept in the audit entry.
    #[arg(long)]
    pub reference: Option<String>,
}

pub async fn run(args: LookupArgs) -> anyhow::Result<ExitCode> {
    let LookupArgs {
        conn,
        citizen,
        dataset,
        fields,
        purpose,
        reference_date,
        reference,
        check,
    } = args;
    let checks = check
        .iter()
        .map(|c| semel_client::parse_check(c))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = connect(&conn, None).await?;
    let args = semel_client::LookupArgs {
        citizen,
        dataset,
        fields,
        purpose,
        reference_date,
        consumer_reference: reference,
        checks,
    };
    report(conn.json, client.lookup(args).await, print_lookup)
}

fn print_lookup(v: &Json) -> anyhow::Result<()> {
    outln!(
        "allowed by {} · source {} · request {}",
        v["authorisation_reference"].as_str().unwrap_or(""),
        v["source_kbo"].as_str().unwrap_or(""),
        v["request_id"].as_str().unwrap_or("")
    );
    if let Some(fields) = v["fields"].as_object() {
        let width = fields.keys().map(String::len).max().unwrap_or(0);
        for (k, val) in fields {
            match val {
                Json::String(s) => outln!("  {k:width$}  {s}"),
                Json::Array(items) if items.iter().all(Json::is_object) => {
                    outln!("  {k:width$}");
                    for item in items {
                        outln!("    - {item}");
                    }
                }
                other => outln!("  {k:width$}  {other}"),
            }
        }
    }
    if let Some(checks) = v["checks"].as_array() {
        for c in checks {
            outln!(
                "  check {}: {}",
                c["field"].as_str().unwrap_or(""),
                c["answer"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}
