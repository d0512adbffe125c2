//! `semel applications`: a consumer applies for an authorisation; the
//! supervisory body approves or rejects it; the parties follow it.

use std::process::ExitCode;

use crate::admin::AuthorisationTerms;
use clap::Subcommand;

use crate::conn::{Conn, connect, print_value, report};

#[derive(Subcommand)]
pub enum ApplicationsCommand {
    /// Applications you may see (your own; for a source, those on its datasets; the supervisory
    /// body and the operator: all), newest first.
    List {
        /// Only those waiting for a decision.
        #[arg(long)]
        pending: bool,
    },
    /// Apply, as a consumer, for an authorisation (or for an amendment of one you hold, under
    /// its reference). Nothing is allowed until the supervisory body approves it.
    Submit(Box<SubmitArgs>),
    /// Approve an application as asked (the supervisory body).
    Approve {
        /// The application's id.
        id: String,
        /// The reasons, for the parties.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Reject an application, with reasons (the supervisory body).
    Reject {
        /// The application's id.
        id: String,
        /// The reasons, for the applicant (required).
        #[arg(long)]
        note: String,
    },
}

#[derive(Subcommand)]
pub enum MembershipCommand {
    /// Apply for membership with your organisation's certificate (no token needed): your
    /// organisation is not registered yet.
    Apply {
        /// Your legal name.
        #[arg(long)]
        name: String,
        /// Roles asked for, comma-separated: source, consumer, citizen_portal.
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// Who to contact.
        #[arg(long)]
        contact: String,
        /// Endpoints, datasets, why.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Applications for membership (operator), newest first.
    List {
        /// Only those waiting for a decision.
        #[arg(long)]
        pending: bool,
    },
    /// Approve an application: registers the organisation (operator).
    Approve {
        /// The application's id.
        id: String,
        /// The roles granted (default: those asked).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// The reasons.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Reject an application, with reasons (operator).
    Reject {
        /// The application's id.
        id: String,
        /// The reasons, for the applicant (required).
        #[arg(long)]
        note: String,
    },
}

pub async fn run_membership(conn: Conn, command: MembershipCommand) -> anyhow::Result<ExitCode> {
    // Deciding is the operator's (the demo's by default); applying is the
    // applicant's, with its own certificate.
    let default = match command {
        MembershipCommand::Apply { .. } => None,
        _ => Some("operator"),
    };
    let client = connect(&conn, default).await?;
    let (result, columns): (_, &[&str]) = match command {
        MembershipCommand::Apply {
            name,
            roles,
            contact,
            note,
        } => (
            client
                .apply_for_membership(name, &roles, contact, note)
                .await,
            &[],
        ),
        MembershipCommand::List { pending } => (
            client.membership_applications(pending).await,
            &[
                "id",
                "state",
                "kbo",
                "name",
                "roles",
                "contact",
                "applied_at",
                "decided_by",
                "decision_note",
            ],
        ),
        MembershipCommand::Approve { id, roles, note } => {
            (client.decide_membership(id, true, &roles, note).await, &[])
        }
        MembershipCommand::Reject { id, note } => {
            (client.decide_membership(id, false, &[], note).await, &[])
        }
    };
    report(conn.json, result, |v| print_value(v, columns))
}

#[derive(clap::Args)]
pub struct SubmitArgs {
    /// The reference asked for, e.g. BSC/2026/201 (or one your organisation holds, to amend it).
    #[arg(long)]
    reference: String,
    #[command(flatten)]
    terms: AuthorisationTerms,
    /// Why your organisation needs it.
    #[arg(long)]
    justification: String,
}

pub async fn run(conn: Conn, command: ApplicationsCommand) -> anyhow::Result<ExitCode> {
    let client = connect(&conn, None).await?;
    let (result, columns): (_, &[&str]) = match command {
        ApplicationsCommand::List { pending } => (
            client.authorisation_applications(pending).await,
            &[
                "id",
                "state",
                "reference",
                "applicant_kbo",
                "dataset",
                "purpose",
                "fields",
                "applied_at",
                "decided_by_kbo",
                "approved_version",
                "decision_note",
            ],
        ),
        ApplicationsCommand::Submit(args) => {
            let SubmitArgs {
                reference,
                terms,
                justification,
            } = *args;
            (
                client
                    .apply_for_authorisation(
                        terms.into_new(reference, String::new()),
                        justification,
                    )
                    .await,
                &[],
            )
        }
        ApplicationsCommand::Approve { id, note } => {
            (client.decide_application(id, true, note).await, &[])
        }
        ApplicationsCommand::Reject { id, note } => {
            (client.decide_application(id, false, note).await, &[])
        }
    };
    report(conn.json, result, |v| print_value(v, columns))
}
