//! `semel files` and `semel consent`: the persons directory (an
//! organisation's files on citizens, replaced numbers) and citizens'
//! consents.

use std::process::ExitCode;

use clap::Subcommand;
use semel_client::{NewConsent, NewFile};

use crate::conn::{Conn, connect, print_value, report};

#[derive(Subcommand)]
pub enum FilesCommand {
    /// Open a file on a citizen; the register must know the number.
    Register {
        /// The citizen's national or BIS number.
        /// `-` reads it from standard input, `@FILE` from a file: either keeps it
        /// out of the process list and the shell's history.
        #[arg(long, value_parser = crate::cli::citizen_arg)]
        citizen: String,
        /// Capacity code, e.g. RIS_APPLICANT, RIS_COHABITANT, PUPIL.
        #[arg(long)]
        capacity: String,
        /// provisional (examining a request) or definitive.
        #[arg(long, default_value = "provisional")]
        phase: String,
        /// First day covered (YYYY-MM-DD); today when omitted.
        #[arg(long)]
        begin_date: Option<String>,
        /// Last day covered (YYYY-MM-DD); open-ended when omitted.
        #[arg(long)]
        end_date: Option<String>,
        /// Your own file number.
        #[arg(long)]
        reference: Option<String>,
    },
    /// Close a file: it covers no day after --end-date (today when omitted).
    Close {
        /// The citizen's national or BIS number.
        /// `-` reads it from standard input, `@FILE` from a file: either keeps it
        /// out of the process list and the shell's history.
        #[arg(long, value_parser = crate::cli::citizen_arg)]
        citizen: String,
        /// The file's id, as `files register` or `files list` print it.
        #[arg(long)]
        id: String,
        /// Last day covered (YYYY-MM-DD); today when omitted.
        #[arg(long)]
        end_date: Option<String>,
    },
    /// Your organisation's files on a citizen.
    List {
        /// The citizen's national or BIS number.
        /// `-` reads it from standard input, `@FILE` from a file: either keeps it
        /// out of the process list and the shell's history.
        #[arg(long, value_parser = crate::cli::citizen_arg)]
        citizen: String,
    },
    /// Record that the register replaced a national number (the register or the operator).
    Replace {
        /// The number replaced (e.g. a BIS number).
        #[arg(long)]
        old: String,
        /// The number in force from now on.
        #[arg(long)]
        new: String,
    },
    /// Take back a replacement recorded by mistake: the old number stands on its own again.
    Unreplace {
        /// The number that was replaced.
        #[arg(long)]
        old: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
pub enum ConsentCommand {
    /// Record a consent. At a counter, --evidence (the signed form's reference) is required.
    Give {
        /// The citizen's national or BIS number.
        /// `-` reads it from standard input, `@FILE` from a file: either keeps it
        /// out of the process list and the shell's history.
        #[arg(long, value_parser = crate::cli::citizen_arg)]
        citizen: String,
        /// Purpose code, e.g. SOCIAL_HOUSING.
        #[arg(long)]
        purpose: String,
        /// The consumer it is given to (enterprise number); on a portal, any consumer when omitted.
        #[arg(long)]
        consumer: Option<String>,
        /// Datasets covered; every dataset for the purpose when omitted.
        #[arg(long, value_delimiter = ',')]
        datasets: Vec<String>,
        /// The reference of the signed consent form (required at a counter).
        #[arg(long)]
        evidence: Option<String>,
        /// When it ends (RFC 3339); until withdrawn when omitted.
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Withdraw a consent; the next lookup that needs it is refused.
    Withdraw {
        /// The citizen's national or BIS number.
        /// `-` reads it from standard input, `@FILE` from a file: either keeps it
        /// out of the process list and the shell's history.
        #[arg(long, value_parser = crate::cli::citizen_arg)]
        citizen: String,
        /// The consent's id, as `consent list` prints it.
        #[arg(long)]
        id: String,
    },
    /// A citizen's consents, as you may see them.
    List {
        /// The citizen's national or BIS number.
        /// `-` reads it from standard input, `@FILE` from a file: either keeps it
        /// out of the process list and the shell's history.
        #[arg(long, value_parser = crate::cli::citizen_arg)]
        citizen: String,
    },
}

pub async fn files(conn: Conn, command: FilesCommand) -> anyhow::Result<ExitCode> {
    let client = connect(&conn, None).await?;
    let columns: &[&str] = &[
        "id",
        "capacity",
        "phase",
        "begin_date",
        "end_date",
        "consumer_reference",
        "closed_at",
    ];
    let result = match command {
        FilesCommand::Register {
            citizen,
            capacity,
            phase,
            begin_date,
            end_date,
            reference,
        } => {
            client
                .register_file(NewFile {
                    citizen,
                    capacity,
                    phase,
                    begin_date,
                    end_date,
                    reference,
                })
                .await
        }
        FilesCommand::Close {
            citizen,
            id,
            end_date,
        } => client.close_file(citizen, id, end_date).await,
        FilesCommand::List { citizen } => client.list_files(citizen).await,
        FilesCommand::Replace { old, new } => client.replace_number(old, new).await,
        FilesCommand::Unreplace { old, reason } => client.undo_replacement(old, reason).await,
    };
    report(conn.json, result, |v| print_value(v, columns))
}

pub async fn consent(conn: Conn, command: ConsentCommand) -> anyhow::Result<ExitCode> {
    let client = connect(&conn, None).await?;
    let columns: &[&str] = &[
        "id",
        "consumer_kbo",
        "purpose",
        "datasets",
        "channel",
        "given_at",
        "expires_at",
        "withdrawn_at",
    ];
    let result = match command {
        ConsentCommand::Give {
            citizen,
            purpose,
            consumer,
            datasets,
            evidence,
            expires_at,
        } => {
            client
                .give_consent(NewConsent {
                    citizen,
                    consumer,
                    purpose,
                    datasets,
                    evidence,
                    expires_at,
                })
                .await
        }
        ConsentCommand::Withdraw { citizen, id } => client.withdraw_consent(citizen, id).await,
        ConsentCommand::List { citizen } => client.list_consents(citizen).await,
    };
    report(conn.json, result, |v| print_value(v, columns))
}
