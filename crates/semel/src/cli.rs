//! The shape of the command line: `semel`'s global options and its
//! commands. The options of each command live with its code
//! (`lookup::LookupArgs`, `admin::AdminCommand`, ...).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::conn::Conn;
use crate::output::Exit;
use crate::{
    admin, audit, bench, catalogue, demo, health, lookup, mutations, persons, pki, serve, token,
    witness,
};

#[derive(Parser)]
#[command(
    name = "semel",
    version,
    about = "Semel: an only-once data-exchange broker for Brussels administrations",
    after_help = "Exit codes: 0 done (semel health: serving); 1 the command could not do its work \
        (configuration, files, connection; semel health: not serving); 2 the command line is wrong; \
        3 the broker answered with an error; 4 an integrity failure: semel audit verify found the \
        log altered, or semel serve refused to start on an audit log that does not prove itself."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "SEMEL_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the broker with the demo sources and registry on the embedded store.
    Demo(demo::DemoArgs),
    /// Serve the demo sources alone (started by `semel demo --store`, so
    /// that they outlive either broker): their endpoints go to
    /// <data-dir>/sources.json.
    DemoSources(demo::DemoSourcesArgs),
    /// Run the broker alone, from a configuration file.
    Serve(serve::ServeArgs),
    /// Look up data about a citizen, as a consumer organisation.
    Lookup(lookup::LookupArgs),
    /// Open, close and list your organisation's files on citizens (persons directory).
    Files {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: persons::FilesCommand,
    },
    /// Give, withdraw and list citizens' consents (at a counter, or as the citizen on a portal).
    Consent {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: persons::ConsentCommand,
    },
    /// Publish changes of your datasets, as an authentic source (mutations).
    Source {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: mutations::SourceCommand,
    },
    /// Receive, as a consumer, the changes about citizens you hold files on, as they are
    /// published; each is acknowledged once printed.
    Subscribe(mutations::SubscribeArgs),
    /// What your organisation may call (datasets, fields, purposes, conditions) and, as a
    /// source, who may call its datasets for what.
    Catalogue(catalogue::CatalogueArgs),
    /// Manage organisations, datasets and authorisations (operator).
    Admin {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
    /// Apply for membership (an administration not registered yet, by its certificate); approve
    /// or reject applications (operator).
    Membership {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: crate::applications::MembershipCommand,
    },
    /// Apply for an authorisation (consumer); approve or reject applications (supervisory body).
    Applications {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: crate::applications::ApplicationsCommand,
    },
    /// The registry as reviewed files: export it, plan (--dry-run) and apply changes (operator).
    Registry {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: crate::registry::RegistryCommand,
    },
    /// Measure Semel against a direct call to the source and a null forwarder, in one run.
    Bench(bench::BenchArgs),
    /// Measure the fan-out of published changes to many subscribed consumers.
    BenchMutations(bench::BenchMutationsArgs),
    /// The system `semel bench` measures (started by it; not for direct use).
    #[command(hide = true)]
    BenchServer(bench::BenchServerArgs),
    /// Check a broker's health (grpc.health.v1, over TLS, no client certificate): exit 0 when SERVING.
    Health(health::HealthArgs),
    /// Development PKI: a CA and organisation certificates (never for production).
    Pki {
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: pki::PkiCommand,
    },
    /// Mint a test token with the development issuer's key (never for production).
    Token(token::TokenArgs),
    /// Print a shell completion script, e.g. `semel completions bash > /etc/bash_completion.d/semel`.
    Completions {
        /// bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
    /// Read the audit log: from a running broker (list, head, checkpoint, accesses), or a
    /// store's files offline (verify, export).
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Run a witness of audit logs (c2sp.org/tlog-witness): it cosigns each checkpoint it can
    /// prove consistent with the last one it saw, and refuses rollbacks and forks.
    #[command(subcommand)]
    Witness(witness::WitnessCommand),
}

/// `semel completions`: the completion script of this command line.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "semel", &mut script);
    match std::io::Write::write_all(&mut std::io::stdout(), &script) {
        // A reader that stops early (`| head`) is not an error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("write the completion script")
        }
        _ => Ok(Exit::Done.into()),
    }
}

/// A citizen's number given on the command line: as it is, or `-` to read
/// it from standard input (its first line), or `@FILE` to read it from a
/// file, so that it appears neither in the process list (`ps`) nor in the
/// shell's history.
pub fn citizen_arg(given: &str) -> Result<String, String> {
    let read = |what: &str, text: std::io::Result<String>| {
        text.map(|t| t.lines().next().unwrap_or_default().trim().to_owned())
            .map_err(|e| format!("read the citizen's number from {what}: {e}"))
    };
    match given {
        "-" => {
            let mut line = String::new();
            read(
                "standard input",
                std::io::stdin().read_line(&mut line).map(|_| line),
            )
        }
        _ => match given.strip_prefix('@') {
            Some(path) => read(path, std::fs::read_to_string(path)),
            None => Ok(given.to_owned()),
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        // Catches clashing flags (e.g. a subcommand's --key against the
        // global --key) before a user does.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn every_subcommand_and_option_says_what_it_is_for() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") || arg.is_hide_set() {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.is_hide_set() || sub.get_name() == "help" {
                    continue;
                }
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(sub_path.clone());
                }
                walk(sub, &sub_path, missing);
            }
        }
        let mut command = <super::Cli as clap::CommandFactory>::command();
        command.build();
        let mut missing = Vec::new();
        walk(&command, "semel", &mut missing);
        assert!(missing.is_empty(), "no help text:\n{}", missing.join("\n"));
    }

    #[test]
    fn offline_audit_commands_offer_no_connection_options() {
        let command = <super::Cli as clap::CommandFactory>::command();
        let audit = command.find_subcommand("audit").expect("audit");
        for offline in ["verify", "export"] {
            let sub = audit.find_subcommand(offline).expect(offline);
            let ids: Vec<&str> = sub.get_arguments().map(|a| a.get_id().as_str()).collect();
            for conn in ["broker", "as_org", "token_file", "cert"] {
                assert!(!ids.contains(&conn), "audit {offline} offers --{conn}");
            }
        }
        let list = audit.find_subcommand("list").expect("list");
        assert!(list.get_arguments().any(|a| a.get_id() == "broker"));
    }

    #[test]
    fn the_command_lines_variables_are_not_configuration_overrides() {
        fn walk(cmd: &clap::Command, found: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if let Some(env) = arg.get_env() {
                    found.push(env.to_string_lossy().into_owned());
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, found);
            }
        }
        let mut found = Vec::new();
        walk(&<super::Cli as clap::CommandFactory>::command(), &mut found);
        assert!(!found.is_empty());
        for name in found {
            assert!(
                semel_server::config::COMMAND_LINE_VARIABLES.contains(&name.as_str()),
                "{name} is read by the command line: add it to COMMAND_LINE_VARIABLES, or `semel serve` takes it for a configuration key"
            );
        }
    }
}
