//! `semel bench`: starts the system under test as a child process, drives
//! each target in turn, and reports side by side; and `semel bench-server`,
//! the system it starts.

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use semel_bench::load::{
    BenchAddrs, BenchServerOptions, LoadOptions, LoadReport, Target, memory_kib, run_bench_server,
    run_load, time_citizen_query,
};

use crate::output::{Exit, outln};

#[derive(Args)]
pub struct BenchArgs {
    /// Seconds of measurement per target.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of warm-up per target, not measured.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Requests in flight (closed loop: each worker waits for its answer).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections the workers share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Share of lookups Semel must refuse, in percent.
    #[arg(long, default_value_t = 10)]
    pub refused_percent: u64,
    /// Which targets, in order: direct, null, semel, semel-http (Semel's HTTP/JSON face, one
    /// HTTP/1.1 connection per worker), semel-pg (Semel on PostgreSQL, with --store), semel-pg2
    /// (two brokers on that database, the connections spread over both).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,null,semel,semel-http"
    )]
    pub targets: Vec<String>,
    /// Also run Semel on this PostgreSQL database (postgresql://…; its tables are created if
    /// missing) and drive it as the target semel-pg, after semel unless --targets says otherwise.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Fill the audit log with this many entries before starting the broker.
    #[arg(long, default_value_t = 0)]
    pub preload_audit: u64,
    /// Keep the system's data here (reused across runs, e.g. a preloaded log); a temporary directory by default.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// At least this many synthetic people.
    #[arg(long, default_value_t = 10_000)]
    pub population: usize,
    /// Repeat the targets, interleaved, this many times; the ratios are
    /// reported per round and as a median (paired rounds resist the drift
    /// of a shared machine better than one long run each).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Stop each target after this many measured requests instead of after --duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Run the server under this command, e.g. "valgrind --tool=callgrind" (for profiles).
    #[arg(long)]
    pub server_wrapper: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct BenchServerArgs {
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long)]
    pub ready_file: PathBuf,
    #[arg(long)]
    pub seed: u64,
    #[arg(long)]
    pub population: usize,
    #[arg(long, default_value_t = 0)]
    pub preload_audit: u64,
    #[arg(long)]
    pub store: Option<String>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let targets = args
        .targets
        .iter()
        .map(|t| t.parse::<Target>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut targets = targets;
    if args.store.is_some() && !targets.contains(&Target::SemelPostgres) {
        targets.push(Target::SemelPostgres);
    }
    anyhow::ensure!(
        args.store.is_some() || !targets.iter().any(|t| t.needs_store()),
        "the targets semel-pg and semel-pg2 need --store postgresql://…"
    );
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
        .args(args.store.iter().flat_map(|u| ["--store", u.as_str()]))
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
            break serde_json::from_slice(&bytes).context("read the bench server's addresses")?;
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

/// Semel on PostgreSQL relative to Semel on the embedded store in one
/// round: throughput, p99.
fn postgresql_ratio(reports: &[LoadReport]) -> Option<(f64, f64)> {
    let find = |name: &str| reports.iter().find(|r| r.target == name);
    let (p, e) = find("semel postgresql").zip(find("semel"))?;
    (e.throughput > 0.0 && e.p99_us > 0).then(|| {
        (
            p.throughput / e.throughput,
            p.p99_us as f64 / e.p99_us as f64,
        )
    })
}

/// Semel's HTTP/JSON face relative to its gRPC face in one round:
/// throughput, p99.
fn http_ratio(reports: &[LoadReport]) -> Option<(f64, f64)> {
    let find = |name: &str| reports.iter().find(|r| r.target == name);
    let (h, g) = find("semel http").zip(find("semel"))?;
    (g.throughput > 0.0 && g.p99_us > 0).then(|| {
        (
            h.throughput / g.throughput,
            h.p99_us as f64 / g.p99_us as f64,
        )
    })
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
    args: &BenchArgs,
    addrs: &BenchAddrs,
    rounds: &[Vec<LoadReport>],
    memory: Option<(u64, u64)>,
    query: Option<(Duration, usize)>,
) -> anyhow::Result<()> {
    let per_round: Vec<(f64, f64)> = rounds.iter().filter_map(|r| ratio(r)).collect();
    let ratios = median(per_round.iter().map(|r| r.0).collect())
        .zip(median(per_round.iter().map(|r| r.1).collect()));
    let cpu = median(rounds.iter().filter_map(|r| cpu_ratio(r)).collect());
    let pg_rounds: Vec<(f64, f64)> = rounds.iter().filter_map(|r| postgresql_ratio(r)).collect();
    let pg = median(pg_rounds.iter().map(|r| r.0).collect())
        .zip(median(pg_rounds.iter().map(|r| r.1).collect()));
    let http_rounds: Vec<(f64, f64)> = rounds.iter().filter_map(|r| http_ratio(r)).collect();
    let http = median(http_rounds.iter().map(|r| r.0).collect())
        .zip(median(http_rounds.iter().map(|r| r.1).collect()));
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
            "http_vs_grpc_per_round": http_rounds.iter().map(|(t, p)| serde_json::json!({"throughput": t, "p99": p})).collect::<Vec<_>>(),
            "http_vs_grpc": http.map(|(t, p)| serde_json::json!({"throughput": t, "p99": p})),
            "postgresql_vs_embedded_per_round": pg_rounds.iter().map(|(t, p)| serde_json::json!({"throughput": t, "p99": p})).collect::<Vec<_>>(),
            "postgresql_vs_embedded": pg.map(|(t, p)| serde_json::json!({"throughput": t, "p99": p})),
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
            if r.target == "semel postgresql" {
                outln!(
                    "semel postgresql audit log: {syncs} sequencing transactions while measuring, {:.1} entries per transaction, {mean:.0} µs per transaction",
                    r.requests as f64 / syncs as f64
                );
            } else {
                outln!(
                    "semel audit log: {syncs} syncs while measuring, {:.1} entries per sync, {mean:.0} µs per write + sync",
                    r.requests as f64 / syncs as f64
                );
            }
        }
        if let Some(t) = r.postgresql_transactions {
            outln!(
                "semel postgresql: {t} PostgreSQL transactions while measuring (its statistics, reported by backends once a second): {:.2} per lookup",
                t as f64 / r.requests.max(1) as f64
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
    if pg_rounds.len() > 1 {
        let list: Vec<String> = pg_rounds
            .iter()
            .map(|(t, p)| format!("{t:.2}×/{p:.2}×"))
            .collect();
        outln!(
            "semel postgresql / semel per round (throughput/p99): {}",
            list.join("  ")
        );
    }
    if let Some((t, p)) = http {
        let what = if http_rounds.len() > 1 {
            ", median"
        } else {
            ""
        };
        outln!("semel http / semel (gRPC){what}: throughput {t:.2}×, p99 {p:.2}×");
    }
    if let Some((t, p)) = pg {
        let what = if pg_rounds.len() > 1 { ", median" } else { "" };
        outln!("semel postgresql / semel (embedded){what}: throughput {t:.2}×, p99 {p:.2}×");
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

/// `semel bench-server`: the system `semel bench` measures, until it is
/// stopped.
pub async fn serve(args: BenchServerArgs) -> anyhow::Result<ExitCode> {
    let BenchServerArgs {
        data_dir,
        ready_file,
        seed,
        population,
        preload_audit,
        store,
    } = args;
    let opts = BenchServerOptions {
        data_dir,
        seed,
        population,
        preload_audit,
        postgresql: store,
    };
    run_bench_server(opts, &ready_file, crate::shutdown_signal()).await?;
    Ok(Exit::Done.into())
}

/// `semel bench-mutations`: the fan-out of published changes.
#[derive(clap::Args)]
pub struct BenchMutationsArgs {
    /// Consumers subscribed, each holding a file on every person.
    #[arg(long, default_value_t = 38)]
    pub consumers: usize,
    /// People in the synthetic population.
    #[arg(long, default_value_t = 10_000)]
    pub population: usize,
    /// Concurrent publishing connections of the source.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Changes per publication.
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Run the broker on this PostgreSQL database instead of the embedded store (the
    /// database must exist: `createdb` it first; a fresh one per run).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Publish this many changes per second in all (open loop: latency at that load);
    /// default: as fast as the broker answers (closed loop: the most it takes).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Subscribe through a second broker on the same database (PostgreSQL only): the
    /// latency of a change published through one broker and delivered through another.
    #[arg(long, requires = "store")]
    pub second_broker: bool,
    /// With --second-broker: that broker finds the changes by polling (every 250 ms)
    /// instead of being notified, as brokers did before they listened (the baseline).
    #[arg(long, requires = "second_broker")]
    pub second_broker_polls: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run_mutations(args: BenchMutationsArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.consumers >= 1, "--consumers: at least 1");
    anyhow::ensure!(
        (1..=1000).contains(&args.batch),
        "--batch: between 1 and 1000"
    );
    let dir = std::env::temp_dir().join(format!("semel-bench-mutations-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let report = semel_bench::fanout::run_fanout(semel_bench::fanout::FanoutOptions {
        consumers: args.consumers,
        population: args.population,
        publishers: args.publishers.max(1),
        batch: args.batch,
        warmup: std::time::Duration::from_secs_f64(args.warmup),
        duration: std::time::Duration::from_secs_f64(args.duration),
        postgresql: args.store.clone(),
        data_dir: dir.clone(),
        rate: args.rate,
        second_broker: args.second_broker,
        second_broker_polls: args.second_broker_polls,
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let r = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "store {} · subscribed through {} · {} consumers with a file on each of {} people · {} publishers × {} changes per call{} · {:.1} s",
            r.store,
            r.subscribed_through,
            r.consumers,
            r.population,
            r.publishers,
            r.batch,
            r.rate
                .map(|r| format!(" · {r:.0} changes/s asked"))
                .unwrap_or_default(),
            r.seconds
        );
        println!(
            "changes accepted  {:>9.0}/s ({} changes)",
            r.changes_per_s, r.changes
        );
        println!(
            "deliveries        {:>9.0}/s ({} deliveries)",
            r.deliveries_per_s, r.deliveries
        );
        println!(
            "publish → delivery  p50 {:.1} ms · p90 {:.1} ms · p99 {:.1} ms · max {:.1} ms",
            r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms
        );
        println!("missing deliveries  {}", r.missing);
    }
    Ok(if r.missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
