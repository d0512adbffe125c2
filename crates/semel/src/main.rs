//! `semel`: the broker, its demo, and a command line for lookups, the
//! registry and the audit log. Thin: it parses arguments, checks the
//! configuration before binding any port, and calls `semel_server`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use semel_client::{
    AuditFilter, CallError, Client, ClientConfig, LookupArgs, NewAuthorisation, NewConsent,
    NewDataset, NewFile,
};
use semel_server::{Config, Demo, DemoOptions};
use serde_json::Value as Json;

mod output;
use output::{Exit, out, outln};

/// mimalloc instead of the system allocator: under load glibc's malloc and
/// free were about a tenth of the broker's CPU (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "semel",
    version,
    about = "Semel: an only-once data-exchange broker for Brussels administrations"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "SEMEL_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker with the demo sources and registry on the embedded store.
    Demo {
        /// Where the store, the development PKI and demo.json live.
        #[arg(long, default_value = "semel-data")]
        data_dir: PathBuf,
        /// The broker's address.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// Seed of the synthetic population.
        #[arg(long, default_value_t = 20_170_717)]
        seed: u64,
        /// At least this many synthetic people.
        #[arg(long, default_value_t = 10_000)]
        population: usize,
        /// Where to serve Prometheus metrics (plain HTTP, /metrics).
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics_listen: SocketAddr,
        /// Serve no metrics.
        #[arg(long)]
        no_metrics: bool,
        /// Export trace spans to this OpenTelemetry collector (OTLP/gRPC), e.g. http://127.0.0.1:4317.
        #[arg(long)]
        otlp_endpoint: Option<String>,
    },
    /// Run the broker alone, from a configuration file.
    Serve {
        /// The configuration file (TOML; deploy/semel.example.toml documents every key).
        #[arg(long)]
        config: PathBuf,
        /// Check the configuration and exit, without binding any port: every
        /// value, and every certificate, key, CA bundle and JWKS it names is
        /// loaded; all problems are reported.
        #[arg(long)]
        check_config: bool,
        /// With --check-config: print the result as JSON
        /// ({"valid": …, "problems": […]}).
        #[arg(long, requires = "check_config")]
        json: bool,
    },
    /// Look up data about a citizen, as a consumer organisation.
    Lookup {
        #[command(flatten)]
        conn: Conn,
        /// National or BIS number, bare or formatted (93.05.18-223.61).
        #[arg(long)]
        citizen: String,
        /// e.g. national_register.residence
        #[arg(long)]
        dataset: String,
        /// Comma-separated field names.
        #[arg(long, value_delimiter = ',', required_unless_present = "check")]
        fields: Vec<String>,
        /// A yes/no check instead of a value, e.g. `nis_code=21004` or
        /// `income_years[income_year=2024].taxable_income_cents<2000000`
        /// (operators = != < <= > >=); repeatable.
        #[arg(long)]
        check: Vec<String>,
        /// Purpose code, e.g. RIS_ELIGIBILITY.
        #[arg(long)]
        purpose: String,
        /// The data as they stood on this date (YYYY-MM-DD).
        #[arg(long)]
        reference_date: Option<String>,
        /// Your own reference (case number), kept in the audit entry.
        #[arg(long)]
        reference: Option<String>,
    },
    /// Open, close and list your organisation's files on citizens (persons directory).
    Files {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: FilesCommand,
    },
    /// Give, withdraw and list citizens' consents (at a counter, or as the citizen on a portal).
    Consent {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: ConsentCommand,
    },
    /// Manage organisations, datasets and authorisations (operator).
    Admin {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Measure Semel against a direct call to the source and a null forwarder, in one run.
    Bench(BenchArgs),
    /// The system `semel bench` measures (started by it; not for direct use).
    #[command(hide = true)]
    BenchServer {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        ready_file: PathBuf,
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        population: usize,
        #[arg(long, default_value_t = 0)]
        preload_audit: u64,
    },
    /// Check a broker's health (grpc.health.v1, over TLS, no client certificate): exit 0 when SERVING.
    Health {
        /// Broker address; by default the demo's.
        #[arg(long)]
        broker: Option<String>,
        /// CA bundle the broker's certificate chains to; by default the demo's.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// A service name such as semel.v1.LookupService; the whole broker by default.
        #[arg(long, default_value = "")]
        service: String,
        /// The name the broker's certificate must carry, when it is not the
        /// host in --broker: a production certificate names its DNS name
        /// only, so a probe of https://127.0.0.1:50051 gives that name here.
        #[arg(long, env = "SEMEL_SERVER_NAME")]
        server_name: Option<String>,
        /// The demo's data directory, when --broker and --ca are not given.
        #[arg(long, default_value = "semel-data", env = "SEMEL_DEMO_DIR")]
        data_dir: PathBuf,
        /// Print JSON ({"broker", "service", "status", "error"}) instead of the status.
        #[arg(long)]
        json: bool,
    },
    /// Development PKI: a CA and organisation certificates (never for production).
    Pki {
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Mint a test token with the development issuer's key (never for production).
    Token {
        /// The development PKI directory holding issuer.key (created if missing).
        #[arg(long, default_value = "semel-data/pki")]
        dir: PathBuf,
        /// The person: an identifier, or a citizen's national number.
        #[arg(long)]
        sub: String,
        /// The enterprise number of the person's organisation.
        #[arg(long)]
        org: String,
        /// Comma-separated: admin, consumer, source, auditor, citizen.
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// Seconds until it expires.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        /// The token's `aud`: the broker's tokens.audience.
        #[arg(long, default_value = "semel")]
        audience: String,
        /// Print JSON (the token with its claims) instead of the token alone.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script, e.g. `semel completions bash > /etc/bash_completion.d/semel`.
    Completions {
        /// bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
    /// Read the audit log: from a running broker (list, head, checkpoint, accesses), or a
    /// store's files offline (verify, export).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run a witness of audit logs (c2sp.org/tlog-witness): it cosigns each checkpoint it can
    /// prove consistent with the last one it saw, and refuses rollbacks and forks.
    #[command(subcommand)]
    Witness(WitnessCommand),
}

#[derive(Subcommand)]
enum WitnessCommand {
    /// Serve POST /add-checkpoint until SIGTERM or Ctrl-C.
    Serve {
        /// Address to listen on (plain HTTP: cosignatures carry their own integrity).
        #[arg(long, default_value = "127.0.0.1:8701")]
        listen: std::net::SocketAddr,
        /// The witness's directory: its key (witness.key, created if missing) and state.json.
        #[arg(long)]
        dir: PathBuf,
        /// The witness's name, e.g. witness.commission.brussels/w1.
        #[arg(long)]
        name: String,
        /// The verifier key of a log it follows (name+hash+key), as its operator published it; repeatable.
        #[arg(long = "log", required = true)]
        logs: Vec<String>,
    },
    /// Print the witness's verifier key, for brokers (audit.witnesses) and auditors (--witness-key).
    Key {
        /// The witness's directory (its key is created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The witness's name.
        #[arg(long)]
        name: String,
    },
}

/// How to reach the broker: a demo data directory and an organisation, or
/// explicit files.
#[derive(Args)]
struct Conn {
    /// The demo's data directory (its demo.json names the broker and files).
    #[arg(
        long,
        global = true,
        default_value = "semel-data",
        env = "SEMEL_DEMO_DIR"
    )]
    data_dir: PathBuf,
    /// Act as this demo organisation: a slug such as cpas-anderlecht, or its enterprise number.
    #[arg(long = "as", global = true)]
    as_org: Option<String>,
    /// Broker address, e.g. https://broker.example:50051 (instead of the demo's).
    #[arg(long, global = true, requires_all = ["ca", "cert", "key"])]
    broker: Option<String>,
    /// CA bundle that the broker's certificate chains to.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Your organisation's client certificate.
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// Its private key.
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    /// A file holding the person's token (JWT); the demo mints one when omitted.
    #[arg(long, global = true, env = "SEMEL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Seconds of measurement per target.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of warm-up per target, not measured.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Requests in flight (closed loop: each worker waits for its answer).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the workers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Share of lookups Semel must refuse, in percent.
    #[arg(long, default_value_t = 10)]
    refused_percent: u64,
    /// Which targets, in order: direct, null, semel.
    #[arg(long, value_delimiter = ',', default_value = "direct,null,semel")]
    targets: Vec<String>,
    /// Fill the audit log with this many entries before starting the broker.
    #[arg(long, default_value_t = 0)]
    preload_audit: u64,
    /// Keep the system's data here (reused across runs, e.g. a preloaded log); a temporary directory by default.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// At least this many synthetic people.
    #[arg(long, default_value_t = 10_000)]
    population: usize,
    /// Repeat the targets, interleaved, this many times; the ratios are
    /// reported per round and as a median (paired rounds resist the drift
    /// of a shared machine better than one long run each).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Stop each target after this many measured requests instead of after --duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Run the server under this command, e.g. "valgrind --tool=callgrind" (for profiles).
    #[arg(long)]
    server_wrapper: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create a development CA in DIR (ca.crt, ca.key) if there is none.
    Init {
        /// The development PKI directory.
        #[arg(long, default_value = "semel-data/pki")]
        dir: PathBuf,
    },
    /// Issue a certificate for an organisation, signed by the CA in DIR:
    /// writes <stem>.crt and <stem>.key, with organizationIdentifier NTRBE-<KBO>.
    Issue {
        /// The development PKI directory.
        #[arg(long, default_value = "semel-data/pki")]
        dir: PathBuf,
        /// Enterprise number of the organisation.
        #[arg(long)]
        kbo: String,
        /// Organisation name, for the subject.
        #[arg(long)]
        name: String,
        /// File name stem; the enterprise number by default.
        #[arg(long)]
        stem: Option<String>,
        /// A DNS name the certificate names (repeatable); then it names only
        /// these, like a production certificate (no localhost, no 127.0.0.1).
        #[arg(long = "dns-name")]
        dns_names: Vec<String>,
    },
    /// Create the development token issuer in DIR (issuer.key, issuer.jwks.json) if there is none.
    Issuer {
        /// The development PKI directory.
        #[arg(long, default_value = "semel-data/pki")]
        dir: PathBuf,
    },
    /// Print a certificate's SHA-256 fingerprint and serial, as revocations name them.
    Fingerprint {
        /// The certificate (PEM).
        cert: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertCommand {
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
enum PurposeCommand {
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
enum AdminCommand {
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
enum OrgCommand {
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
}

#[derive(Subcommand)]
enum DatasetCommand {
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
}

#[derive(Subcommand)]
enum AuthorisationCommand {
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
}

#[derive(Subcommand)]
enum FilesCommand {
    /// Open a file on a citizen; the register must know the number.
    Register {
        /// The citizen's national or BIS number.
        #[arg(long)]
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
        #[arg(long)]
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
        #[arg(long)]
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
enum ConsentCommand {
    /// Record a consent. At a counter, --evidence (the signed form's reference) is required.
    Give {
        /// The citizen's national or BIS number.
        #[arg(long)]
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
        #[arg(long)]
        citizen: String,
        /// The consent's id, as `consent list` prints it.
        #[arg(long)]
        id: String,
    },
    /// A citizen's consents, as you may see them.
    List {
        /// The citizen's national or BIS number.
        #[arg(long)]
        citizen: String,
    },
}

#[derive(clap::Args)]
struct NewAuthorisationArgs {
    /// The authorisation's reference, e.g. BSC/2024/017 (letters, digits, / - . _).
    #[arg(long)]
    reference: String,
    /// The consumer it authorises (enterprise number).
    #[arg(long)]
    consumer: String,
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

#[derive(Subcommand)]
enum AuditCommand {
    /// Entries, newest first.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Entries about this citizen (national or BIS number).
        #[arg(long)]
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
    /// Verify a store's audit log or an export offline: sequence, hash chain, Merkle tree and every signed checkpoint; names the first entry that does not match. Exit 0 only if all holds.
    Verify {
        /// The broker's data directory (data_dir in semel.toml; the demo's is semel-data/store).
        #[arg(long, conflicts_with = "export", required_unless_present = "export")]
        store: Option<PathBuf>,
        /// A JSON Lines export made with `semel audit export`.
        #[arg(long)]
        export: Option<PathBuf>,
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
        #[arg(long)]
        store: PathBuf,
        /// Where to write; standard output when omitted.
        #[arg(long)]
        output: Option<PathBuf>,
        /// jsonl (verifiable: entries, encodings and checkpoints) or csv (readable fields).
        #[arg(long, default_value = "jsonl")]
        format: String,
    },
    /// Who consulted a citizen's data (as the citizen, or an auditor).
    Accesses {
        #[command(flatten)]
        conn: Conn,
        /// The citizen's national or BIS number.
        #[arg(long)]
        citizen: String,
        /// At most this many accesses.
        #[arg(long, default_value_t = 20)]
        limit: i32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return Exit::Failed.into();
        }
    };
    // Traces, when asked for: the broker's configuration, or the demo's flag.
    // A configuration that does not load is reported by `serve` itself.
    let telemetry = match &cli.command {
        Command::Serve { config, .. } => Config::load(config)
            .ok()
            .and_then(|c| c.telemetry_settings()),
        Command::Demo { otlp_endpoint, .. } => {
            otlp_endpoint
                .as_ref()
                .map(|e| semel_server::telemetry::TelemetrySettings {
                    otlp_endpoint: e.clone(),
                    service_name: "semel".into(),
                    sample_ratio: 1.0,
                })
        }
        _ => None,
    };
    let _telemetry = {
        let _runtime = runtime.enter();
        match init_logging(cli.log_format, telemetry.as_ref()) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("error: {e:#}");
                return Exit::Failed.into();
            }
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        // The reader went away (`semel audit list | head -1`): what it
        // wanted it has; end quietly, as `ls | head` does.
        Err(e) if output::is_closed_output(&e) => Exit::Done.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::Failed.into()
        }
    }
}

/// Logs on stderr and, when configured, trace export. The guard flushes
/// the traces when `main` ends.
fn init_logging(
    format: LogFormat,
    telemetry: Option<&semel_server::telemetry::TelemetrySettings>,
) -> anyhow::Result<Option<semel_server::telemetry::TelemetryGuard>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEMEL_LOG").unwrap_or_else(|_| {
        "info,h2=warn,tower=warn,hyper=warn,sled=warn,opentelemetry=warn".into()
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (otel, guard) = match telemetry {
        Some(t) => {
            let (layer, guard) = semel_server::telemetry::otlp_layer(t)?;
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    // Trace spans are at debug level: exported when a collector is set,
    // never formatted into the logs, and free when neither wants them
    // (their callsites stay disabled).
    use tracing_subscriber::Layer;
    type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;
    let otel: Option<Boxed> = otel.map(|l| {
        l.with_filter(semel_server::telemetry::export_filter())
            .boxed()
    });
    let logs: Boxed = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let layers: Vec<Boxed> = otel.into_iter().chain([logs]).collect();
    tracing_subscriber::registry().with(layers).init();
    Ok(guard)
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Demo {
            data_dir,
            listen,
            seed,
            population,
            metrics_listen,
            no_metrics,
            otlp_endpoint: _,
        } => {
            let opts = DemoOptions {
                listen,
                seed,
                population,
                metrics_listen: (!no_metrics).then_some(metrics_listen),
                ..DemoOptions::new(data_dir)
            };
            let demo = Demo::start(opts).await?;
            // The broker runs whether or not anyone reads the banner.
            if let Err(e) = print_demo_banner(&demo) {
                tracing::warn!(error = %e, "print the demo banner");
            }
            demo.run_until(shutdown_signal()).await?;
            Ok(Exit::Done.into())
        }
        Command::Serve {
            config,
            check_config,
            json,
        } => {
            if check_config {
                return check_configuration(&config, json);
            }
            let config = Config::load(&config)?;
            let prepared = semel_server::server::prepare(&config).await?;
            let metrics_listener = match config.metrics_listen {
                Some(addr) => Some(
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("bind the metrics port {addr}"))?,
                ),
                None => None,
            };
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("bind {}", config.listen))?;
            let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
            let metrics = metrics_listener.map(|l| {
                tokio::spawn(semel_server::server::serve_metrics(
                    l,
                    prepared.broker.clone(),
                    async {
                        let _ = metrics_stopped.await;
                    },
                ))
            });
            semel_server::server::serve_broker(listener, prepared, shutdown_signal()).await?;
            let _ = stop_metrics.send(());
            if let Some(m) = metrics {
                m.await.context("metrics task")??;
            }
            Ok(Exit::Done.into())
        }
        Command::Lookup {
            conn,
            citizen,
            dataset,
            fields,
            purpose,
            reference_date,
            reference,
            check,
        } => {
            let checks = check
                .iter()
                .map(|c| semel_client::parse_check(c))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let client = connect(&conn, None).await?;
            let args = LookupArgs {
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
        Command::Files { conn, command } => {
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
                FilesCommand::Unreplace { old, reason } => {
                    client.undo_replacement(old, reason).await
                }
            };
            report(conn.json, result, |v| print_value(v, columns))
        }
        Command::Consent { conn, command } => {
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
                ConsentCommand::Withdraw { citizen, id } => {
                    client.withdraw_consent(citizen, id).await
                }
                ConsentCommand::List { citizen } => client.list_consents(citizen).await,
            };
            report(conn.json, result, |v| print_value(v, columns))
        }
        Command::Admin { conn, command } => {
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
                        dataset,
                        fields,
                        purpose,
                        legal_basis,
                        issuing_body,
                        valid_from,
                        valid_until,
                        confidential_until,
                        check_fields,
                        questions,
                        capacities,
                        consent_required,
                    } = *args;
                    client
                        .create_authorisation(NewAuthorisation {
                            reference,
                            consumer,
                            dataset,
                            fields,
                            check_fields,
                            questions,
                            capacities,
                            consent_required,
                            purpose,
                            legal_basis,
                            issuing_body,
                            valid_from,
                            valid_until,
                            confidential_until,
                        })
                        .await
                }
                AdminCommand::Authorisation(AuthorisationCommand::Suspend {
                    reference,
                    reason,
                }) => {
                    client
                        .set_authorisation_suspended(reference, true, reason)
                        .await
                }
                AdminCommand::Authorisation(AuthorisationCommand::Reinstate { reference }) => {
                    client
                        .set_authorisation_suspended(reference, false, String::new())
                        .await
                }
            };
            report(conn.json, result, |v| print_value(v, columns))
        }
        Command::Bench(args) => bench::run(args).await,
        Command::Pki { json, command } => dev_pki(command, json),
        Command::Token {
            dir,
            sub,
            org,
            roles,
            ttl,
            audience,
            json,
        } => {
            let org = semel_core::Kbo::parse(&org).map_err(|e| anyhow::anyhow!("--org: {e}"))?;
            let roles = roles
                .iter()
                .map(|r| {
                    semel_core::UserRole::parse(r).with_context(|| {
                        format!(
                            "--roles: {r:?} is not one of admin, consumer, source, auditor, citizen"
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let issuer = semel_demo::issuer::DevIssuer::ensure(&dir)?;
            let token = issuer.mint(&semel_demo::issuer::TokenRequest {
                subject: &sub,
                organisation: org,
                roles: &roles,
                audience: &audience,
                expires_in: ttl,
                not_before: None,
                bound_to: None,
            })?;
            if json {
                let v = serde_json::json!({
                    "token": token,
                    "issuer": issuer.issuer,
                    "sub": sub,
                    "org": org.as_str(),
                    "roles": roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                    "audience": audience,
                    "expires_in_s": ttl,
                });
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                outln!("{token}");
            }
            Ok(Exit::Done.into())
        }
        Command::Health {
            broker,
            ca,
            service,
            data_dir,
            server_name,
            json,
        } => {
            let (broker, ca) = match (broker, ca) {
                (Some(b), Some(c)) => (b, c),
                (b, c) => {
                    let demo = semel_server::demo::client_config(&data_dir, "operator")?;
                    (b.unwrap_or(demo.broker), c.unwrap_or(demo.ca))
                }
            };
            let checked = semel_client::check_health(
                &broker,
                &ca,
                server_name.as_deref().filter(|n| !n.is_empty()),
                &service,
            )
            .await;
            let status = if json {
                let (status, error) = match &checked {
                    Ok(s) => (Some(s.clone()), None),
                    Err(e) => (None, Some(format!("{e:#}"))),
                };
                let v = serde_json::json!({
                    "broker": broker,
                    "service": service,
                    "status": status,
                    "error": error,
                });
                outln!("{}", serde_json::to_string_pretty(&v)?);
                status.unwrap_or_default()
            } else {
                let status = checked?;
                outln!("{status}");
                status
            };
            Ok(if status == "SERVING" {
                Exit::Done
            } else {
                Exit::Failed
            }
            .into())
        }
        Command::Completions { shell } => {
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
        Command::BenchServer {
            data_dir,
            ready_file,
            seed,
            population,
            preload_audit,
        } => {
            let opts = semel_server::bench::BenchServerOptions {
                data_dir,
                seed,
                population,
                preload_audit,
            };
            semel_server::bench::run_bench_server(opts, &ready_file, shutdown_signal()).await?;
            Ok(Exit::Done.into())
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    store,
                    export,
                    verifier_key,
                    verifier_key_file,
                    trusted,
                    witness_keys,
                    witness_quorum,
                    json,
                },
        } => audit_verify(VerifyArgs {
            store,
            export,
            key: verifier_key,
            key_file: verifier_key_file,
            trusted,
            witness_keys,
            witness_quorum,
            json,
        }),
        Command::Witness(command) => witness(command).await,
        Command::Audit {
            command:
                AuditCommand::Export {
                    store,
                    output,
                    format,
                },
        } => audit_export(&store, output.as_deref(), &format),
        Command::Audit { command } => audit_remote(command).await,
    }
}

/// The audit commands that ask a running broker.
async fn audit_remote(command: AuditCommand) -> anyhow::Result<ExitCode> {
    let (conn, call) = match command {
        AuditCommand::List {
            conn,
            citizen,
            consumer,
            person,
            authorisation,
            dataset,
            decision,
            since,
            until,
            limit,
            page_token,
        } => (
            conn,
            AuditCall::List(AuditFilter {
                citizen,
                consumer,
                end_user: person,
                authorisation,
                dataset,
                decision,
                since,
                until,
                limit,
                page_token,
            }),
        ),
        AuditCommand::Head { conn } => (conn, AuditCall::Head),
        AuditCommand::Checkpoint { conn } => (conn, AuditCall::Checkpoint),
        AuditCommand::Accesses {
            conn,
            citizen,
            limit,
        } => (conn, AuditCall::Accesses(citizen, limit)),
        AuditCommand::Verify { .. } | AuditCommand::Export { .. } => {
            unreachable!("read from files, not asked of a broker")
        }
    };
    let client = connect(&conn, Some("operator")).await?;
    let result = match call {
        AuditCall::List(filter) => client.audit_list(filter).await,
        AuditCall::Head => client.audit_head().await,
        AuditCall::Checkpoint => client.latest_checkpoint().await,
        AuditCall::Accesses(citizen, limit) => client.citizen_accesses(citizen, limit).await,
    };
    report(conn.json, result, print_audit)
}

enum AuditCall {
    List(AuditFilter),
    Head,
    Checkpoint,
    Accesses(String, i32),
}

mod bench {
    //! `semel bench`: starts the system under test as a child process, drives
    //! each target in turn, and reports side by side.

    use std::process::{Command, ExitCode, Stdio};
    use std::time::{Duration, Instant};

    use crate::output::{Exit, outln};
    use anyhow::Context;
    use semel_server::bench::{
        BenchAddrs, LoadOptions, LoadReport, Target, memory_kib, run_load, time_citizen_query,
    };

    pub async fn run(args: super::BenchArgs) -> anyhow::Result<ExitCode> {
        let targets = args
            .targets
            .iter()
            .map(|t| match t.as_str() {
                "direct" => Ok(Target::Direct),
                "null" => Ok(Target::NullForwarder),
                "semel" => Ok(Target::Semel),
                other => anyhow::bail!("unknown target {other}; use direct, null or semel"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (dir, temporary) = match &args.data_dir {
            Some(d) => (d.clone(), false),
            None => (
                std::env::temp_dir().join(format!("semel-bench-{}", std::process::id())),
                true,
            ),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let ready = dir.join("bench-ready.json");
        let _ = std::fs::remove_file(&ready);
        let log =
            std::fs::File::create(dir.join("bench-server.log")).context("create the server log")?;
        let exe = std::env::current_exe()?;
        let wrapper: Vec<&str> = args
            .server_wrapper
            .as_deref()
            .map(|w| w.split_whitespace().collect())
            .unwrap_or_default();
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        // Its own process group, stopped as one when the run ends.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .args(["bench-server", "--data-dir"])
            .arg(&dir)
            .arg("--ready-file")
            .arg(&ready)
            .args([
                "--seed",
                "20170717",
                "--population",
                &args.population.to_string(),
                "--preload-audit",
                &args.preload_audit.to_string(),
            ])
            .env("SEMEL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start semel bench-server")?;
        let pid = child.id();
        // Under a wrapper (valgrind, perf) the pid is the wrapper's: its CPU
        // time and memory are not the server's.
        let server_pid = args.server_wrapper.is_none().then_some(pid);
        let waited = Instant::now();
        if args.preload_audit > 0 {
            eprintln!(
                "preloading the audit log with {} entries (reused when --data-dir is kept)…",
                args.preload_audit
            );
        }
        let addrs: BenchAddrs = loop {
            if let Ok(bytes) = std::fs::read(&ready) {
                break serde_json::from_slice(&bytes)
                    .context("read the bench server's addresses")?;
            }
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "the bench server exited ({status}); see {}",
                    dir.join("bench-server.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        eprintln!(
            "system under test ready after {:.1} s (broker start {:.0} ms, {} audit entries)",
            waited.elapsed().as_secs_f64(),
            addrs.startup_ms,
            addrs.preloaded_entries
        );
        let opts = LoadOptions {
            concurrency: args.concurrency,
            connections: args.connections,
            warmup: Duration::from_secs_f64(args.warmup),
            duration: Duration::from_secs_f64(args.duration),
            refused_percent: args.refused_percent,
            requests: args.requests,
            server_pid,
        };
        // Whatever happens while measuring, the server is stopped after.
        let measured = async {
            let mut rounds: Vec<Vec<LoadReport>> = Vec::new();
            for round in 0..args.rounds.max(1) {
                let mut reports = Vec::new();
                for t in &targets {
                    eprintln!(
                        "round {}: driving {} for {}+{} s…",
                        round + 1,
                        t.name(),
                        args.warmup,
                        args.duration
                    );
                    reports.push(run_load(&addrs, *t, &opts).await?);
                }
                rounds.push(reports);
            }
            let memory = server_pid.and_then(memory_kib);
            let query = if addrs.preloaded_entries > 0 {
                Some(time_citizen_query(&addrs, QUERY_CITIZEN, 20).await?)
            } else {
                None
            };
            anyhow::Ok((rounds, memory, query))
        }
        .await;
        // The whole process group: a wrapper (`/usr/bin/time`, `perf`) may
        // not pass the signal on to the server it started.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg("--")
            .arg(format!("-{pid}"))
            .status();
        let status = child.wait()?;
        if temporary {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let (rounds, memory, query) = measured?;
        print(&args, &addrs, &rounds, memory, query)?;
        if !status.success() {
            eprintln!("warning: the bench server exited with {status}");
        }
        Ok(Exit::Done.into())
    }

    /// Semel's and the null forwarder's reports of one round.
    fn semel_and_null(reports: &[LoadReport]) -> Option<(&LoadReport, &LoadReport)> {
        let find = |name: &str| reports.iter().find(|r| r.target == name);
        find("semel").zip(find("null forwarder"))
    }

    /// Semel's throughput and p99 relative to the null forwarder in one round.
    fn ratio(reports: &[LoadReport]) -> Option<(f64, f64)> {
        let (s, n) = semel_and_null(reports)?;
        (n.throughput > 0.0 && n.p99_us > 0).then(|| {
            (
                s.throughput / n.throughput,
                s.p99_us as f64 / n.p99_us as f64,
            )
        })
    }

    /// Semel's server CPU per request relative to the null forwarder's.
    fn cpu_ratio(reports: &[LoadReport]) -> Option<f64> {
        let (s, n) = semel_and_null(reports)?;
        let (s, n) = (s.server_cpu_us?, n.server_cpu_us?);
        (n > 0.0).then(|| s / n)
    }

    fn median(mut v: Vec<f64>) -> Option<f64> {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(v[n / 2]),
            _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    /// A citizen of the demo population with many entries after a preload.
    const QUERY_CITIZEN: &str = "93051822361";

    fn print(
        args: &super::BenchArgs,
        addrs: &BenchAddrs,
        rounds: &[Vec<LoadReport>],
        memory: Option<(u64, u64)>,
        query: Option<(Duration, usize)>,
    ) -> anyhow::Result<()> {
        let per_round: Vec<(f64, f64)> = rounds.iter().filter_map(|r| ratio(r)).collect();
        let ratios = median(per_round.iter().map(|r| r.0).collect())
            .zip(median(per_round.iter().map(|r| r.1).collect()));
        let cpu = median(rounds.iter().filter_map(|r| cpu_ratio(r)).collect());
        let reports: Vec<&LoadReport> = rounds.iter().flatten().collect();
        if args.json {
            let v = serde_json::json!({
                "concurrency": args.concurrency,
                "connections": args.connections,
                "refused_percent": args.refused_percent,
                "rounds": rounds,
                "semel_vs_null_per_round": per_round.iter().map(|(t, p)| serde_json::json!({"throughput": t, "p99": p})).collect::<Vec<_>>(),
                "semel_vs_null": ratios.map(|(t, p)| serde_json::json!({"throughput": t, "p99": p})),
                "semel_vs_null_server_cpu": cpu,
                "server_memory_kib": memory.map(|(peak, now)| serde_json::json!({"peak": peak, "current": now})),
                "audit_entries_at_start": addrs.preloaded_entries,
                "broker_startup_ms": addrs.startup_ms,
                "citizen_query": query.map(|(d, n)| serde_json::json!({"best_ms": d.as_secs_f64() * 1000.0, "entries": n})),
            });
            outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            return Ok(());
        }
        outln!(
            "\nconcurrency {} over {} connections, {}% refused, {:.0} s per target\n",
            args.concurrency,
            args.connections,
            args.refused_percent,
            args.duration
        );
        outln!(
            "{:<15} {:>10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>9} {:>9}",
            "target",
            "requests",
            "req/s",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "p999 µs",
            "max µs",
            "errors",
            "refused",
            "srv CPU",
            "gen CPU"
        );
        let micros = |c: Option<f64>| c.map_or_else(|| "-".to_owned(), |c| format!("{c:.0} µs"));
        for r in &reports {
            outln!(
                "{:<15} {:>10} {:>9.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>9} {:>9}",
                r.target,
                r.requests,
                r.throughput,
                r.p50_us,
                r.p90_us,
                r.p99_us,
                r.p999_us,
                r.max_us,
                r.errors,
                r.refused,
                micros(r.server_cpu_us),
                micros(r.generator_cpu_us)
            );
        }
        for r in reports
            .iter()
            .filter(|r| r.audit_syncs.is_some_and(|s| s > 0))
        {
            if let (Some(syncs), Some(mean)) = (r.audit_syncs, r.audit_sync_mean_us) {
                outln!(
                    "semel audit log: {syncs} syncs while measuring, {:.1} entries per sync, {mean:.0} µs per write + sync",
                    r.requests as f64 / syncs as f64
                );
            }
        }
        if reports.iter().any(|r| r.server_cpu_us.is_some()) {
            outln!(
                "(srv CPU: the server process's CPU time per request, broker or null forwarder and source together; gen CPU: the generator's)"
            );
        }
        if per_round.len() > 1 {
            let list: Vec<String> = per_round
                .iter()
                .map(|(t, p)| format!("{t:.2}×/{p:.2}×"))
                .collect();
            outln!(
                "\nsemel / null forwarder per round (throughput/p99): {}",
                list.join("  ")
            );
        }
        if let Some((t, p)) = ratios {
            let what = if per_round.len() > 1 { ", median" } else { "" };
            outln!("semel / null forwarder{what}: throughput {t:.2}×, p99 {p:.2}×");
        }
        if let Some(c) = cpu {
            outln!(
                "semel / null forwarder, server CPU per request{}: {c:.2}×",
                if per_round.len() > 1 { ", median" } else { "" }
            );
        }
        if let Some((peak, now)) = memory {
            outln!(
                "server process (broker + sources + null forwarder) resident memory: peak {} MiB, now {} MiB",
                peak / 1024,
                now / 1024
            );
        }
        outln!(
            "audit entries when the broker started: {}, broker start {:.0} ms",
            addrs.preloaded_entries,
            addrs.startup_ms
        );
        if let Some((d, n)) = query {
            outln!(
                "auditor's query by citizen (best of 20): {:.2} ms, {n} entries",
                d.as_secs_f64() * 1000.0
            );
        }
        Ok(())
    }
}

/// The verifier key to check checkpoints with: the one given, or (for an
/// operator checking their own store) the one of the broker's signing key.
fn verifier_key(
    key: Option<String>,
    key_file: Option<PathBuf>,
    store: Option<&Path>,
    origin_hint: Option<&str>,
) -> anyhow::Result<semel_core::checkpoint::NoteVerifier> {
    let text = match (key, key_file) {
        (Some(k), _) => k,
        (None, Some(f)) => std::fs::read_to_string(&f)
            .with_context(|| format!("read the verifier key {}", f.display()))?,
        (None, None) => {
            let store = store.context(
                "give the broker's verifier key with --verifier-key or --verifier-key-file, as the operator published it",
            )?;
            let (path, key) = semel_store::verify::own_verifier_key(store, origin_hint)?
                .with_context(|| {
                    format!(
                        "no --verifier-key given, and no signing key found in {}; give the verifier key with --verifier-key",
                        store.display()
                    )
                })?;
            eprintln!(
                "note: no --verifier-key given; trusting the broker's own signing key {} (an outside auditor passes the published key)",
                path.display()
            );
            key
        }
    };
    semel_core::checkpoint::NoteVerifier::parse(&text)
        .map_err(|e| anyhow::anyhow!("the verifier key: {e}"))
}

struct VerifyArgs {
    store: Option<PathBuf>,
    export: Option<PathBuf>,
    key: Option<String>,
    key_file: Option<PathBuf>,
    trusted: Vec<PathBuf>,
    witness_keys: Vec<String>,
    witness_quorum: Option<usize>,
    json: bool,
}

fn audit_verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let VerifyArgs {
        store,
        export,
        key,
        key_file,
        trusted,
        witness_keys,
        witness_quorum,
        json,
    } = args;
    let trusted_notes = trusted
        .iter()
        .map(|p| {
            let note = std::fs::read_to_string(p)
                .with_context(|| format!("read the trusted checkpoint {}", p.display()))?;
            anyhow::ensure!(
                note.contains("\n\n\u{2014} "),
                "{} holds no signed checkpoint (a note: origin, size, root, an empty line, signatures); save the signed_note of `semel audit checkpoint --json`",
                p.display()
            );
            Ok(note)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The log's name, for the broker's own key when none is given: the
    // store's checkpoints, or else the trusted checkpoint's.
    let origin_hint = trusted_notes
        .first()
        .and_then(|n| n.split('\n').next())
        .map(str::to_owned);
    let verifier = verifier_key(key, key_file, store.as_deref(), origin_hint.as_deref())?;
    let witnesses = witness_keys
        .iter()
        .map(|k| {
            semel_core::checkpoint::CosignatureVerifier::parse(k)
                .map_err(|e| anyhow::anyhow!("--witness-key {k}: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let quorum = witness_quorum.unwrap_or(witnesses.len());
    anyhow::ensure!(
        quorum <= witnesses.len(),
        "--witness-quorum {quorum}: only {} --witness-key given",
        witnesses.len()
    );
    let policy = semel_store::verify::TrustPolicy {
        trusted: trusted_notes,
        witnesses,
        quorum,
    };
    let result = match (&store, &export) {
        (Some(dir), _) => {
            semel_store::verify::verify_dir_trusting(&dir.join("audit"), &verifier, &policy)
        }
        (None, Some(file)) => {
            let f = std::fs::File::open(file)
                .with_context(|| format!("open the export {}", file.display()))?;
            semel_store::verify::verify_export_trusting(
                &mut std::io::BufReader::new(f),
                &verifier,
                &policy,
            )
        }
        (None, None) => anyhow::bail!("give --store or --export"),
    };
    let hex = |h: &[u8]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    match result {
        Ok(r) => {
            let unsigned = r.entries - r.last_checkpoint.unwrap_or(0);
            if json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "verified": true,
                        "entries": r.entries,
                        "checkpoints": r.checkpoints,
                        "newest_checkpoint": r.last_checkpoint,
                        "trusted_checkpoints": r.trusted,
                        "entries_after_newest_checkpoint": unsigned,
                        "root": hex(&r.root),
                    })
                );
            } else {
                outln!(
                    "verified: {} entries, hash chain and Merkle tree intact, {} signed checkpoints (newest covers {} entries), {} trusted checkpoints reached, root {}",
                    r.entries,
                    r.checkpoints,
                    r.last_checkpoint
                        .map_or_else(|| "none".to_owned(), |s| s.to_string()),
                    r.trusted,
                    hex(&r.root)
                );
                if unsigned > 0 {
                    outln!(
                        "note: the last {unsigned} entries are covered by no signed checkpoint yet: nothing proves they were not changed; check them again once a checkpoint covers them"
                    );
                }
            }
            Ok(Exit::Done.into())
        }
        Err(e) => {
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"verified": false, "error": e.to_string()})
                );
            } else {
                eprintln!("NOT VERIFIED: {e}");
            }
            Ok(Exit::NotVerified.into())
        }
    }
}

async fn witness(command: WitnessCommand) -> anyhow::Result<ExitCode> {
    match command {
        WitnessCommand::Key { dir, name } => {
            let w = semel_server::witness::Witness::open(&dir, &name, &[])?;
            outln!("{}", w.verifier_key());
        }
        WitnessCommand::Serve {
            listen,
            dir,
            name,
            logs,
        } => {
            let w = std::sync::Arc::new(semel_server::witness::Witness::open(&dir, &name, &logs)?);
            eprintln!("witness {name}: key {}", w.verifier_key());
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("bind {listen}"))?;
            semel_server::witness::serve_witness(listener, w, shutdown_signal()).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn audit_export(store: &Path, output: Option<&Path>, format: &str) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let format = match format {
        "jsonl" => semel_store::verify::ExportFormat::JsonLines,
        "csv" => semel_store::verify::ExportFormat::Csv,
        other => anyhow::bail!("--format {other}: use jsonl or csv"),
    };
    let audit = store.join("audit");
    let log_len = std::fs::metadata(audit.join("log"))
        .with_context(|| format!("{} holds no audit log", store.display()))?
        .len();
    // Written in the export's header for reference; auditors check with
    // the key the operator published.
    // (Only once a checkpoint names the log: before, there is no key to name.)
    let key = semel_store::verify::origin_of(&audit)
        .ok()
        .flatten()
        .and_then(|_| {
            semel_store::verify::own_verifier_key(store, None)
                .ok()
                .flatten()
        })
        .map(|(_, key)| key);
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(log_len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {msg} ({eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut out: Box<dyn Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let n = semel_store::verify::export(
        &audit,
        format,
        key.as_deref(),
        &mut out,
        &mut |done, offset| {
            if done % 4096 == 0 {
                bar.set_position(offset);
                bar.set_message(format!("{done} entries"));
            }
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    out.flush().context("write the export")?;
    bar.finish_and_clear();
    eprintln!("exported {n} entries");
    Ok(Exit::Done.into())
}

fn dev_pki(command: PkiCommand, json: bool) -> anyhow::Result<ExitCode> {
    use semel_demo::pki::{DevPki, Subject};
    let path = |p: &Path| p.display().to_string();
    // Each subcommand's result, as (JSON key, text label, value).
    let fields: Vec<(&str, &str, String)> = match command {
        PkiCommand::Init { dir } => {
            let pki = DevPki::ensure(&dir, &[])?;
            vec![("ca", "CA", path(&pki.ca_cert()))]
        }
        PkiCommand::Issue {
            dir,
            kbo,
            name,
            stem,
            dns_names,
        } => {
            let kbo = semel_core::Kbo::parse(&kbo).map_err(|e| anyhow::anyhow!("--kbo: {e}"))?;
            let pki = DevPki::ensure(&dir, &[])?;
            let stem = stem.unwrap_or_else(|| kbo.as_str().to_owned());
            let subject = Subject {
                file_stem: &stem,
                kbo,
                name: &name,
            };
            let files = if dns_names.is_empty() {
                pki.issue(&subject)?
            } else {
                pki.issue_for_names(&subject, &dns_names)?
            };
            vec![
                ("certificate", "certificate", path(&files.cert)),
                ("key", "key", path(&files.key)),
            ]
        }
        PkiCommand::Issuer { dir } => {
            let issuer = semel_demo::issuer::DevIssuer::ensure(&dir)?;
            vec![
                ("issuer", "issuer", issuer.issuer.clone()),
                ("private_key", "private key", path(&issuer.key_file())),
                (
                    "jwks",
                    "public keys (JWKS, for [[tokens.issuers]])",
                    path(&issuer.jwks_file()),
                ),
            ]
        }
        PkiCommand::Fingerprint { cert } => {
            let ids = semel_server::tls::certificate_ids(&cert)?;
            vec![
                ("sha256_fingerprint", "sha256 fingerprint", ids.fingerprint),
                ("serial", "serial number", ids.serial),
                (
                    "issuer_name_sha256",
                    "issuer name sha256",
                    ids.issuer_name_sha256,
                ),
            ]
        }
    };
    if json {
        let v: serde_json::Map<String, Json> = fields
            .into_iter()
            .map(|(k, _, v)| (k.to_owned(), Json::String(v)))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (_, label, value) in fields {
            outln!("{label}: {value}");
        }
    }
    Ok(Exit::Done.into())
}

async fn connect(conn: &Conn, default_org: Option<&str>) -> anyhow::Result<Client> {
    let config = match (&conn.broker, &conn.ca, &conn.cert, &conn.key) {
        (Some(broker), Some(ca), Some(cert), Some(key)) => ClientConfig {
            broker: broker.clone(),
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
            token: None,
        },
        _ => {
            let who = conn
                .as_org
                .as_deref()
                .or(default_org)
                .context("say which organisation you act as: --as cpas-anderlecht (or give --broker, --ca, --cert and --key)")?;
            semel_server::demo::client_config(&conn.data_dir, who)?
        }
    };
    let config = match &conn.token_file {
        Some(path) => ClientConfig {
            token: Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("read the token {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            ..config
        },
        None => config,
    };
    Client::connect(&config).await
}

/// Prints an answer (or the broker's error) and says how the command ends:
/// `--json` prints the whole answer, or the error's code, reason, message
/// and request id, on stdout; otherwise `text` renders it for people and
/// errors go to stderr.
/// `semel serve --check-config`: every problem with the values and the
/// files, at once.
fn check_configuration(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let problems = match Config::read(path) {
        Ok(config) => {
            let mut problems = config.problems();
            problems.extend(config.file_problems());
            problems
        }
        // A file that does not parse has nothing more to check.
        Err(e) => vec![format!("{e:#}")],
    };
    if json {
        let v = serde_json::json!({
            "config": path.display().to_string(),
            "valid": problems.is_empty(),
            "problems": problems,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else if problems.is_empty() {
        outln!("configuration is valid");
    } else {
        for p in &problems {
            eprintln!("error: {p}");
        }
        eprintln!("{} problem(s) in {}", problems.len(), path.display());
    }
    Ok(if problems.is_empty() {
        Exit::Done
    } else {
        Exit::Failed
    }
    .into())
}

fn report(
    json: bool,
    result: Result<Json, CallError>,
    text: impl FnOnce(&Json) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    match result {
        Ok(v) => {
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                text(&v)?;
            }
            Ok(Exit::Done.into())
        }
        Err(e) => {
            if json {
                outln!("{}", serde_json::to_string_pretty(&e.to_json())?);
            } else {
                let label = match e.code.as_str() {
                    "PermissionDenied" | "Unauthenticated" => "refused",
                    "NotFound" => "not found",
                    _ => "error",
                };
                eprintln!("{label}: {e}");
            }
            Ok(Exit::Refused.into())
        }
    }
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

/// A list as a table of `columns`, or an object field by field.
fn print_value(v: &Json, columns: &[&str]) -> anyhow::Result<()> {
    match v {
        Json::Array(items) => out!("{}", output::table(items, columns)),
        other => out!("{}", output::record(other)),
    }
    Ok(())
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
            if s("authorisation_reference").is_empty() {
                "-".to_owned()
            } else {
                s("authorisation_reference")
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

fn print_demo_banner(demo: &Demo) -> anyhow::Result<()> {
    let exe = std::env::current_exe().ok();
    let cwd = std::env::current_dir().ok();
    let semel = match (&exe, &cwd) {
        (Some(e), Some(c)) => e
            .strip_prefix(c)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| e.clone()),
        (Some(e), None) => e.clone(),
        _ => PathBuf::from("semel"),
    };
    let dd = demo.data_dir.display();
    let flag = match &cwd {
        Some(c) if demo.data_dir == c.join("semel-data") => String::new(),
        _ => format!(" --data-dir {dd}"),
    };
    let s = semel.display();
    outln!(
        "\nSemel demo broker listening on https://{addr} (mutual TLS)\n\
         \n  data directory   {dd}\n  audit log        {dd}/store/audit/log\n  development PKI  {dd}/pki (ca.crt, broker.crt, <enterprise number>.crt/.key per organisation, issuer.key/issuer.jwks.json)\n  tokens           {dd}/tokens (<organisation>.jwt, citizen.jwt; valid for a day)\n  population       {people} synthetic people in {households} households\n\
         \nTry, in another terminal:\n\
         \n  # a CPAS checks an RIS applicant's residence (allowed)\
         \n  {s} lookup{flag} --as cpas-anderlecht --citizen 93.05.18-223.61 --dataset national_register.residence --fields street,house_number,postal_code,municipality --purpose RIS_ELIGIBILITY\
         \n  # ...and the household composition\
         \n  {s} lookup{flag} --as cpas-anderlecht --citizen 93051822361 --dataset national_register.household --fields household_size,members --purpose RIS_ELIGIBILITY\
         \n  # a commune asks for more than school enrolment allows (refused: FIELD_NOT_ALLOWED)\
         \n  {s} lookup{flag} --as commune-schaerbeek --citizen 93051822361 --dataset national_register.residence --fields street,nis_code --purpose SCHOOL_ENROLMENT\
         \n  # an expired authorisation (refused: AUTHORISATION_EXPIRED)\
         \n  {s} lookup{flag} --as ville-bruxelles --citizen 85073003328 --dataset spf_finances.taxable_income --fields latest_taxable_income_cents --purpose SOCIAL_HOUSING\
         \n  # what the audit log recorded about that citizen\
         \n  {s} audit list{flag} --citizen 93051822361\
         \n  # ...and what the citizen sees of it, through the citizen portal\
         \n  {s} audit accesses{flag} --as irisbox --token-file {dd}/tokens/citizen.jwt --citizen 93051822361\
         \n  {s} admin{flag} authorisation list\n\
         \nStop with Ctrl-C; the state survives a restart.{metrics}\n",
        addr = demo.broker_addr,
        metrics = demo
            .metrics_addr
            .map(|a| format!(" Metrics: http://{a}/metrics"))
            .unwrap_or_default(),
        people = demo.population.people.len(),
        households = demo.population.households.len(),
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down: finishing lookups in flight");
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

    #[test]
    fn the_exit_codes_are_the_documented_ones() {
        let guide = include_str!("../../../docs/operator-guide.md");
        let section = guide
            .split("## The command line: output and exit codes")
            .nth(1)
            .expect("the operator guide has the exit codes section");
        let documented: Vec<u8> = section
            .lines()
            .skip_while(|l| !l.starts_with("| code |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                l.trim_start_matches('|')
                    .split('|')
                    .next()
                    .and_then(|c| c.trim().parse().ok())
                    .expect("a code")
            })
            .collect();
        let code: Vec<u8> = super::Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(documented, code);
    }
}
