//! `semel applications`: a consumer applies for an authorisation; the
//! supervisory body approves or rejects it; the parties follow it.

use std::process::ExitCode;

use clap::Subcommand;
use semel_client::NewAuthorisation;

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
    let client = connect(&conn, None).await?;
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
    /// The dataset, e.g. national_register.residence.
    #[arg(long)]
    dataset: String,
    /// Fields to read.
    #[arg(long, value_delimiter = ',')]
    fields: Vec<String>,
    /// Scalar fields only to test for equality.
    #[arg(long, value_delimiter = ',')]
    check_fields: Vec<String>,
    /// A yes/no question, `NAME: check` (repeat).
    #[arg(long = "question")]
    questions: Vec<String>,
    /// Capacities your files will have (default: any).
    #[arg(long, value_delimiter = ',')]
    capacities: Vec<String>,
    /// Lookups would need the citizen's consent.
    #[arg(long)]
    consent_required: bool,
    /// Be told of the dataset's changes.
    #[arg(long)]
    receives_mutations: bool,
    /// The purpose code.
    #[arg(long)]
    purpose: String,
    /// The law it rests on.
    #[arg(long)]
    legal_basis: String,
    /// The body asked, e.g. "Brussels Supervisory Commission".
    #[arg(long)]
    issuing_body: String,
    /// YYYY-MM-DD
    #[arg(long)]
    valid_from: String,
    /// YYYY-MM-DD; open-ended when omitted.
    #[arg(long)]
    valid_until: Option<String>,
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
                dataset,
                fields,
                check_fields,
                questions,
                capacities,
                consent_required,
                receives_mutations,
                purpose,
                legal_basis,
                issuing_body,
                valid_from,
                valid_until,
                justification,
            } = *args;
            (
                client
                    .apply_for_authorisation(
                        NewAuthorisation {
                            reference,
                            consumer: String::new(),
                            dataset,
                            fields,
                            check_fields,
                            questions,
                            capacities,
                            consent_required,
                            receives_mutations,
                            purpose,
                            legal_basis,
                            issuing_body,
                            valid_from,
                            valid_until,
                            confidential_until: None,
                        },
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
