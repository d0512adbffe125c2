//! `semel`: the broker, its demo, and a command line for lookups, the
//! registry and the audit log. Thin: it parses arguments, checks the
//! configuration before binding any port, and calls `semel_server` (to
//! serve) or `semel_client` (to call a broker). Each group of commands is a
//! module of its own; this file starts the runtime and the logs, and
//! dispatches.

use std::process::ExitCode;

use clap::Parser;
use semel_server::Config;

mod admin;
mod applications;
mod audit;
mod bench;
mod catalogue;
mod cli;
mod conn;
mod demo;
mod health;
mod lookup;
mod mutations;
mod output;
mod persons;
mod pki;
mod registry;
mod serve;
mod token;
mod witness;

use cli::{Cli, Command, LogFormat};
use output::Exit;

/// mimalloc instead of the system allocator: under load glibc's malloc and
/// free were about a tenth of the broker's CPU (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Everything this process writes is its own: the audit log, the sled
    // store, keys, tokens and certificates are created readable by their
    // owner only (no window between writing a key and restricting it).
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
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
        Command::Serve(args) => Config::load(&args.config)
            .ok()
            .and_then(|c| c.telemetry_settings()),
        Command::Demo(args) => {
            args.otlp_endpoint
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
        Err(e) if is_integrity_failure(&e) => {
            eprintln!("error: {e:#}");
            Exit::NotVerified.into()
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::Failed.into()
        }
    }
}

/// Whether an error is an integrity failure (a store holding what its
/// brokers did not write: `semel serve` refusing a log that does not prove
/// itself) rather than an operational one (a connection, a file): exit 4,
/// not 1, so that tampering is told from trouble.
pub(crate) fn is_integrity_failure(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<semel_postgres::PgError>(),
            Some(semel_postgres::PgError::Corrupt(_))
        ) || matches!(
            c.downcast_ref::<semel_store::StoreError>(),
            Some(semel_store::StoreError::Corrupt(_))
        )
    })
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
        Command::Demo(args) => demo::run(args).await,
        Command::DemoSources(args) => demo::run_sources(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Lookup(args) => lookup::run(args).await,
        Command::Files { conn, command } => persons::files(conn, command).await,
        Command::Consent { conn, command } => persons::consent(conn, command).await,
        Command::Source { conn, command } => mutations::source(conn, command).await,
        Command::Subscribe(args) => mutations::subscribe(args).await,
        Command::Catalogue(args) => catalogue::run(args).await,
        Command::Admin { conn, command } => admin::run(conn, command).await,
        Command::Registry { conn, command } => registry::run(conn, command).await,
        Command::Applications { conn, command } => applications::run(conn, command).await,
        Command::Membership { conn, command } => applications::run_membership(conn, command).await,
        Command::Bench(args) => bench::run(args).await,
        Command::BenchMutations(args) => bench::run_mutations(args).await,
        Command::BenchServer(args) => bench::serve(args).await,
        Command::Health(args) => health::run(args).await,
        Command::Pki { json, command } => pki::run(command, json),
        Command::Token(args) => token::run(args),
        Command::Completions { shell } => cli::completions(shell),
        Command::Audit { command } => audit::run(command).await,
        Command::Witness(command) => witness::run(command).await,
    }
}

/// Resolves on Ctrl-C or SIGTERM: the broker, the demo, the witness and the
/// bench server then finish what is in flight and stop. The signals are
/// taken over when this is called, not when it is first awaited: a signal
/// that arrives while a broker is still starting stops it cleanly once it
/// has started (its last checkpoint signed), rather than killing it.
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        [
            ("SIGINT", signal(SignalKind::interrupt())),
            ("SIGTERM", signal(SignalKind::terminate())),
        ]
    };
    async move {
        #[cfg(unix)]
        {
            let [(a, first), (b, second)] = signals;
            let wait = |name: &'static str, s: std::io::Result<tokio::signal::unix::Signal>| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "listen for {name}");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                () = wait(a, first) => {}
                () = wait(b, second) => {}
            }
        }
        #[cfg(not(unix))]
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "listen for ctrl-c");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down: finishing lookups in flight");
    }
}
