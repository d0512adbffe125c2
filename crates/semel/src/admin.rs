//! `semel admin`: the operator's commands on the registry (certificates,
//! purposes, organisations, datasets, authorisations).

use std::process::ExitCode;

use clap::Subcommand;
use semel_client::{AuthorisationPatch, DatasetPatch, NewAuthorisation, NewDataset};

use crate::conn::{Conn, connect, print_value, report};

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Client certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// The purposes catalogue.
    #[command(subcommand)]
    Purpose(PurposeCommand),
    /// Organisations.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Datasets.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Authorisations.
    #[command(subcommand)]
    Authorisation(AuthorisationCommand),
}

#[derive(Subcommand)]
pub enum CertCommand {
    /// Revoke a client certificate: every call made with it is refused from now on.
    Revoke {
        /// SHA-256 fingerprint (hex), as `semel pki fingerprint` prints it.
        #[arg(long, conflicts_with = "serial", required_unless_present = "serial")]
        fingerprint: Option<String>,
        /// Serial number (hex), with --issuer-name-sha256: serials are unique per issuer only.
        #[arg(long, requires = "issuer_name_sha256")]
        serial: Option<String>,
        /// SHA-256 of the certificate's issuer name (hex), as `semel pki fingerprint` prints it.
        #[arg(long, requires = "serial")]
        issuer_name_sha256: Option<String>,
        /// Why, for the record (e.g. "key compromised").
        #[arg(long)]
        reason: String,
    },
    /// Revoked certificates, newest first.
    List,
}

#[derive(Subcommand)]
pub enum PurposeCommand {
    /// The purposes catalogue.
    List,
    /// Add a purpose; authorisations and lookups can then name it.
    Create {
        /// e.g. RIS_ELIGIBILITY
        #[arg(long)]
        code: String,
        /// What the purpose is, in a sentence.
        #[arg(long)]
        description: String,
        /// The law or decision that allows it.
        #[arg(long)]
        legal_basis: String,
    },
}

#[derive(Subcommand)]
pub enum OrgCommand {
    /// Registered organisations.
    List,
    /// Register an organisation, with the roles it plays.
    Create {
        /// Its enterprise number (KBO/BCE), e.g. 0212344876.
        #[arg(long)]
        kbo: String,
        /// Its name.
        #[arg(long)]
        name: String,
        /// Comma-separated organisation roles: source, consumer, operator (the organisation
        /// running the broker; its people act with tokens carrying the user role `admin`),
        /// auditor (a supervisory body), citizen_portal.
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
    },
    /// Suspend an organisation: every call it makes is refused until it is reinstated.
    Suspend {
        /// Its enterprise number.
        kbo: String,
        /// Why, for the record.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift an organisation's suspension.
    Reinstate {
        /// Its enterprise number.
        kbo: String,
    },
    /// Amend an organisation: its name, its roles (a role still in use cannot be dropped).
    Amend {
        /// Its enterprise number.
        kbo: String,
        /// Its new legal name.
        #[arg(long)]
        name: Option<String>,
        /// Its roles, all of them (comma-separated, as for create).
        #[arg(long, value_delimiter = ',')]
        roles: Option<Vec<String>>,
        /// Why, for the record.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
pub enum DatasetCommand {
    /// Registered datasets, with their fields and types.
    List,
    /// Register a dataset published by a source organisation.
    Create {
        /// e.g. national_register.residence
        #[arg(long)]
        name: String,
        /// Enterprise number of the source.
        #[arg(long)]
        source: String,
        /// What the dataset holds, in a sentence.
        #[arg(long)]
        description: String,
        /// The source's SourceService address, https://host:port
        #[arg(long)]
        endpoint: String,
        /// A field, as name:type:description (type: string, int, bool, date, record, list). Repeat for each field.
        #[arg(long = "field", required = true)]
        fields: Vec<String>,
        /// The source answers for past reference dates.
        #[arg(long)]
        keeps_history: bool,
    },
    /// Amend a dataset: describe it, add fields (its source may), move its endpoint, remove
    /// or retype fields (the operator may; fields only when no authorisation names them).
    Amend {
        /// e.g. national_register.residence
        name: String,
        /// The source's new SourceService address, https://host:port
        #[arg(long)]
        endpoint: Option<String>,
        /// A new description.
        #[arg(long)]
        description: Option<String>,
        /// Whether the source answers for past reference dates.
        #[arg(long)]
        keeps_history: Option<bool>,
        /// A field to add (or replace), as name:type:description. Repeat for each.
        #[arg(long = "add-field")]
        add_fields: Vec<String>,
        /// A field to remove. Repeat for each.
        #[arg(long = "remove-field")]
        remove_fields: Vec<String>,
        /// Why, for the record.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Withdraw a dataset for good (its source or the operator): it serves no lookup or change
    /// any more, and stays on record.
    Withdraw {
        /// e.g. national_register.residence
        name: String,
        /// Why, for the record (required: a withdrawal is final).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
pub enum AuthorisationCommand {
    /// Authorisations, all or for one consumer or dataset.
    List {
        /// Only this consumer's (enterprise number).
        #[arg(long)]
        consumer: Option<String>,
        /// Only for this dataset.
        #[arg(long)]
        dataset: Option<String>,
    },
    /// Record an authorisation (a sectoral committee's or a law's) that lets a consumer read a dataset for a purpose.
    Create(Box<NewAuthorisationArgs>),
    /// Suspend an authorisation: lookups under it are refused until it is reinstated.
    Suspend {
        /// Its reference, e.g. BSC/2024/017.
        reference: String,
        /// Why, for the record.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift an authorisation's suspension.
    Reinstate {
        /// Its reference.
        reference: String,
    },
    /// Amend an authorisation (an amended deliberation): a new version under
    /// the same reference, with what you give changed and the rest kept.
    /// Lookups follow it at once; earlier versions stay readable.
    Amend(Box<AmendAuthorisationArgs>),
    /// Revoke an authorisation for good: a last version that allows nothing.
    Revoke {
        /// Its reference.
        reference: String,
        /// Why, for the record (required: a revocation is final).
        #[arg(long)]
        reason: String,
    },
    /// Every version of an authorisation, oldest first: what was allowed on any day.
    Versions {
        /// Its reference.
        reference: String,
    },
}

#[derive(clap::Args)]
pub struct AmendAuthorisationArgs {
    /// Its reference, e.g. BSC/2024/017.
    reference: String,
    /// The version you reviewed and amend (default: the current one). If it
    /// changed meanwhile, nothing is amended.
    #[arg(long)]
    version: Option<u32>,
    /// Why, for the record (e.g. the amending deliberation).
    #[arg(long, default_value = "")]
    reason: String,
    /// Fields that may be read (replaces the list; "" empties it).
    #[arg(long, value_delimiter = ',')]
    fields: Option<Vec<String>>,
    /// Scalar fields that may only be tested for equality (replaces the list).
    #[arg(long, value_delimiter = ',')]
    check_fields: Option<Vec<String>>,
    /// A yes/no question it allows, `NAME: check` (repeat; replaces the list).
    #[arg(long = "question")]
    questions: Option<Vec<String>>,
    /// Capacities it accepts (replaces the list; "" means any).
    #[arg(long, value_delimiter = ',')]
    capacities: Option<Vec<String>>,
    /// Whether lookups need the citizen's consent.
    #[arg(long)]
    consent_required: Option<bool>,
    /// Whether the consumer is told of the dataset's changes.
    #[arg(long)]
    receives_mutations: Option<bool>,
    /// The purpose code.
    #[arg(long)]
    purpose: Option<String>,
    /// The law or decision it rests on.
    #[arg(long)]
    legal_basis: Option<String>,
    /// Who granted it.
    #[arg(long)]
    issuing_body: Option<String>,
    /// YYYY-MM-DD
    #[arg(long)]
    valid_from: Option<String>,
    /// YYYY-MM-DD; "" makes it open-ended.
    #[arg(long)]
    valid_until: Option<String>,
    /// YYYY-MM-DD; "" makes it not confidential.
    #[arg(long)]
    confidential_until: Option<String>,
}

#[derive(clap::Args)]
pub struct NewAuthorisationArgs {
    /// The authorisation's reference, e.g. BSC/2024/017 (letters, digits, / - . _).
    #[arg(long)]
    reference: String,
    /// The consumer it authorises (enterprise number).
    #[arg(long)]
    consumer: String,
    #[command(flatten)]
    terms: AuthorisationTerms,
}

/// What an authorisation allows, as `authorisation create` and
/// `applications submit` take it.
#[derive(clap::Args)]
pub struct AuthorisationTerms {
    /// The dataset it opens, e.g. national_register.residence.
    #[arg(long)]
    dataset: String,
    /// Fields that may be read.
    #[arg(long, value_delimiter = ',')]
    fields: Vec<String>,
    /// Scalar fields that may only be tested for equality with a value the consumer gives.
    #[arg(long, value_delimiter = ',')]
    check_fields: Vec<String>,
    /// A yes/no question it allows, `NAME: check` with `*` for what the consumer gives, e.g.
    /// 'INCOME_BELOW_CEILING: income_years[income_year=*].taxable_income_cents<2500000'
    /// (repeat for several).
    #[arg(long = "question")]
    questions: Vec<String>,
    /// Capacities of the persons directory it accepts (default: any).
    #[arg(long, value_delimiter = ',')]
    capacities: Vec<String>,
    /// Lookups need the citizen's consent.
    #[arg(long)]
    consent_required: bool,
    /// The consumer is told of the dataset's changes (mutations) about the
    /// citizens it holds a file on.
    #[arg(long)]
    receives_mutations: bool,
    /// The purpose code it is for (from the purposes catalogue).
    #[arg(long)]
    purpose: String,
    /// The law or decision it rests on.
    #[arg(long)]
    legal_basis: String,
    /// Who granted it, e.g. "Brussels Sectoral Committee".
    #[arg(long)]
    issuing_body: String,
    /// YYYY-MM-DD
    #[arg(long)]
    valid_from: String,
    /// YYYY-MM-DD; open-ended when omitted.
    #[arg(long)]
    valid_until: Option<String>,
    /// For investigations: lookups stay out of the citizen's view until this day (YYYY-MM-DD).
    #[arg(long)]
    confidential_until: Option<String>,
}

impl AuthorisationTerms {
    /// The authorisation for `consumer` under `reference` (an empty
    /// consumer is the caller's organisation, for an application).
    pub fn into_new(self, reference: String, consumer: String) -> NewAuthorisation {
        let AuthorisationTerms {
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
            confidential_until,
        } = self;
        NewAuthorisation {
            reference,
            consumer,
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
            confidential_until,
        }
    }
}

pub async fn run(conn: Conn, command: AdminCommand) -> anyhow::Result<ExitCode> {
    let client = connect(&conn, Some("operator")).await?;
    let columns = admin_columns(&command);
    let result = match command {
        AdminCommand::Cert(CertCommand::Revoke {
            fingerprint,
            serial,
            issuer_name_sha256,
            reason,
        }) => {
            client
                .revoke_certificate(fingerprint, serial, issuer_name_sha256, reason)
                .await
        }
        AdminCommand::Cert(CertCommand::List) => client.revoked_certificates().await,
        AdminCommand::Purpose(PurposeCommand::List) => client.list_purposes().await,
        AdminCommand::Purpose(PurposeCommand::Create {
            code,
            description,
            legal_basis,
        }) => client.create_purpose(code, description, legal_basis).await,
        AdminCommand::Org(OrgCommand::List) => client.list_organisations().await,
        AdminCommand::Org(OrgCommand::Create { kbo, name, roles }) => {
            client.create_organisation(kbo, name, &roles).await
        }
        AdminCommand::Org(OrgCommand::Suspend { kbo, reason }) => {
            client.set_organisation_suspended(kbo, true, reason).await
        }
        AdminCommand::Org(OrgCommand::Amend {
            kbo,
            name,
            roles,
            reason,
        }) => client.amend_organisation(kbo, name, roles, reason).await,
        AdminCommand::Dataset(DatasetCommand::Amend {
            name,
            endpoint,
            description,
            keeps_history,
            add_fields,
            remove_fields,
            reason,
        }) => {
            client
                .amend_dataset(
                    name,
                    DatasetPatch {
                        description,
                        endpoint,
                        keeps_history,
                        add_fields,
                        remove_fields,
                    },
                    reason,
                )
                .await
        }
        AdminCommand::Dataset(DatasetCommand::Withdraw { name, reason }) => {
            client.withdraw_dataset(name, reason).await
        }
        AdminCommand::Org(OrgCommand::Reinstate { kbo }) => {
            client
                .set_organisation_suspended(kbo, false, String::new())
                .await
        }
        AdminCommand::Dataset(DatasetCommand::List) => client.list_datasets().await,
        AdminCommand::Dataset(DatasetCommand::Create {
            name,
            source,
            description,
            endpoint,
            fields,
            keeps_history,
        }) => {
            client
                .create_dataset(NewDataset {
                    name,
                    source,
                    description,
                    endpoint,
                    fields,
                    keeps_history,
                })
                .await
        }
        AdminCommand::Authorisation(AuthorisationCommand::List { consumer, dataset }) => {
            client.list_authorisations(consumer, dataset).await
        }
        AdminCommand::Authorisation(AuthorisationCommand::Create(args)) => {
            let NewAuthorisationArgs {
                reference,
                consumer,
                terms,
            } = *args;
            client
                .create_authorisation(terms.into_new(reference, consumer))
                .await
        }
        AdminCommand::Authorisation(AuthorisationCommand::Suspend { reference, reason }) => {
            client
                .set_authorisation_suspended(reference, true, reason)
                .await
        }
        AdminCommand::Authorisation(AuthorisationCommand::Reinstate { reference }) => {
            client
                .set_authorisation_suspended(reference, false, String::new())
                .await
        }
        AdminCommand::Authorisation(AuthorisationCommand::Amend(args)) => {
            let AmendAuthorisationArgs {
                reference,
                version,
                reason,
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
                confidential_until,
            } = *args;
            client
                .amend_authorisation(
                    reference,
                    version,
                    AuthorisationPatch {
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
                        confidential_until,
                    },
                    reason,
                )
                .await
        }
        AdminCommand::Authorisation(AuthorisationCommand::Revoke { reference, reason }) => {
            client.revoke_authorisation(reference, reason).await
        }
        AdminCommand::Authorisation(AuthorisationCommand::Versions { reference }) => {
            client.authorisation_versions(reference).await
        }
    };
    report(conn.json, result, |v| print_value(v, columns))
}

/// The columns of the tables `semel admin` prints (`--json` has every field).
fn admin_columns(command: &AdminCommand) -> &'static [&'static str] {
    match command {
        AdminCommand::Cert(_) => &[
            "sha256_fingerprint",
            "serial_number",
            "revoked_at",
            "reason",
        ],
        AdminCommand::Purpose(_) => &["code", "legal_basis", "description"],
        AdminCommand::Org(_) => &["kbo", "name", "roles", "status", "created_at"],
        AdminCommand::Dataset(_) => &["name", "source_kbo", "keeps_history", "endpoint", "fields"],
        AdminCommand::Authorisation(_) => &[
            "reference",
            "consumer_kbo",
            "dataset",
            "purpose",
            "status",
            "version",
            "valid_from",
            "valid_until",
            "consent_required",
            "capacities",
            "fields",
            "check_fields",
        ],
    }
}
