//! `semel audit verify` and `semel audit export`: a store's audit log, or
//! an export, read from its files, with no broker running.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use semel_server::config::ConfigExt as _;

use crate::output::{Exit, outln};

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

pub struct VerifyArgs {
    pub store: Option<PathBuf>,
    pub export: Option<PathBuf>,
    pub database: Option<String>,
    pub key: Option<String>,
    pub key_file: Option<PathBuf>,
    pub trusted: Vec<PathBuf>,
    pub witness_keys: Vec<String>,
    pub witness_quorum: Option<usize>,
    pub json: bool,
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let VerifyArgs {
        store,
        export,
        database,
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
    // The PostgreSQL store is verified as its export, streamed (never
    // written to disk: it holds national numbers) into the same check an
    // auditor runs on an export file.
    if database.is_some() {
        anyhow::ensure!(
            key.is_some() || key_file.is_some(),
            "with --database, give the broker's verifier key (--verifier-key or --verifier-key-file), as the operator published it"
        );
    }
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
        (None, None) if database.is_some() => {
            let url = database.clone().unwrap_or_default();
            // First the proof a broker makes at start (the head, the tree
            // and the newest checkpoint agree, the tail chains to them),
            // then the whole log, every row's query columns checked against
            // its signed encoding as it is read.
            let pg = semel_postgres::PgAudit::connect_read_only(&url)
                .await
                .context("connect to the PostgreSQL store")?;
            let proved = match pg.prove(&verifier).await {
                Ok(_) => Ok(()),
                Err(semel_postgres::PgError::Corrupt(why)) => {
                    Err(semel_store::verify::VerifyFailure::Input(why))
                }
                Err(e) => return Err(anyhow::Error::new(e).context("read the PostgreSQL store")),
            };
            drop(pg);
            match proved {
                Err(f) => Err(f),
                Ok(()) => {
                    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(64);
                    let exporting = tokio::spawn(write_database_export(
                        url,
                        Export::To(tx),
                        "jsonl".into(),
                        true,
                    ));
                    let verifying = tokio::task::spawn_blocking(move || {
                        let mut input = std::io::BufReader::new(Pipe {
                            rx,
                            chunk: Vec::new(),
                            at: 0,
                        });
                        semel_store::verify::verify_export_trusting(&mut input, &verifier, &policy)
                    });
                    let result = verifying.await.context("the verification task")?;
                    match exporting.await.context("the export task")? {
                        Ok(n) => {
                            eprintln!("read {n} entries from the PostgreSQL store");
                            result
                        }
                        // A row that is not what was signed (missing,
                        // altered, its columns disagreeing): tampering.
                        Err(e) if crate::is_integrity_failure(&e) => {
                            Err(semel_store::verify::VerifyFailure::Input(format!("{e:#}")))
                        }
                        // The database could not be read: trouble.
                        Err(e) => return Err(e),
                    }
                }
            }
        }
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
        (None, None) => anyhow::bail!("give --store, --export or --database"),
    };
    let hex = |h: &[u8]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    match result {
        Ok(r) => {
            if r.excerpt {
                let size = r.last_checkpoint.unwrap_or(0);
                if json {
                    outln!(
                        "{}",
                        serde_json::json!({
                            "verified": true,
                            "excerpt": true,
                            "entries": r.entries,
                            "checkpoint": size,
                            "root": hex(&r.root),
                        })
                    );
                } else {
                    outln!(
                        "verified: an excerpt of {} entries, each proven to be in the log of the signed checkpoint of {size} entries (root {}), its readable fields those of its signed encoding",
                        r.entries,
                        hex(&r.root)
                    );
                    outln!(
                        "note: an excerpt proves the entries it holds, not that the query's answer was complete"
                    );
                }
                return Ok(Exit::Done.into());
            }
            let unsigned = r.entries - r.last_checkpoint.unwrap_or(0);
            let epoch = r.epoch.as_ref().map(|e| {
                let lost = e.statement.lost();
                (
                    serde_json::json!({
                        "previous_origin": e.statement.previous.origin,
                        "previous_size": e.statement.previous.size,
                        "previous_root": hex(&e.statement.previous.root),
                        "lost_from": lost.start,
                        "lost_to": lost.end,
                        "previous_signed_by_this_key": e.same_key,
                    }),
                    format!(
                        "epoch: this log begins a new epoch after {} (its checkpoint of {} entries, root {}, {}); entries {} to {} of that log ({} entries) were lost and are not in either",
                        e.statement.previous.origin,
                        e.statement.previous.size,
                        hex(&e.statement.previous.root),
                        if e.same_key {
                            "signed by this log's key"
                        } else {
                            "signed by another key: check it with that log's verifier key"
                        },
                        lost.start,
                        lost.end - 1,
                        lost.end - lost.start
                    ),
                )
            });
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
                        "epoch": epoch.as_ref().map(|e| &e.0),
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
                if let Some((_, said)) = &epoch {
                    outln!("{said}");
                }
                if unsigned > 0 {
                    outln!(
                        "note: the last {unsigned} entries are covered by no signed checkpoint yet: nothing proves they were not changed; check them again once a checkpoint covers them"
                    );
                }
            }
            Ok(Exit::Done.into())
        }
        // Not a verdict on the log: it could not be read (exit 1).
        Err(e) if !e.is_integrity() => Err(anyhow::anyhow!("{e}")),
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

/// `semel audit export --database`: the PostgreSQL store's log, in the
/// same format as a data directory's.
pub async fn export_database(
    url: String,
    output: Option<PathBuf>,
    format: String,
) -> anyhow::Result<ExitCode> {
    let n = write_database_export(url, Export::File(output), format, false).await?;
    eprintln!("exported {n} entries");
    Ok(Exit::Done.into())
}

/// Where a database export goes.
enum Export {
    /// A file, or standard output.
    File(Option<PathBuf>),
    /// A verifier reading it as it is written.
    To(std::sync::mpsc::SyncSender<Vec<u8>>),
}

/// The writing end of an in-memory pipe.
struct Sender(std::sync::mpsc::SyncSender<Vec<u8>>);

impl std::io::Write for Sender {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.send(buf.to_vec()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the verifier stopped")
        })?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The reading end: chunks as they come, the end when the writer is gone.
struct Pipe {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl std::io::Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(c) => {
                    self.chunk = c;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Writes the PostgreSQL store's log as an export; with `checked`, every
/// row is checked first as the scrub checks it (its query columns, its
/// link, its leaf), and a row that is not what was signed ends the export
/// with a [`semel_postgres::PgError::Corrupt`].
async fn write_database_export(
    url: String,
    to: Export,
    format: String,
    checked: bool,
) -> anyhow::Result<u64> {
    use std::io::Write;
    let format = match format.as_str() {
        "jsonl" => semel_store::verify::ExportFormat::JsonLines,
        "csv" => semel_store::verify::ExportFormat::Csv,
        other => anyhow::bail!("--format {other}: use jsonl or csv"),
    };
    let pg = semel_postgres::PgAudit::connect_read_only(&url)
        .await
        .context("connect to the PostgreSQL store")?;
    let checkpoints = pg
        .checkpoints(u64::MAX)
        .await
        .context("read the checkpoints")?;
    // Entries up to the head as it is now; later ones wait for the next
    // export.
    let (size, _) = pg.head().await.context("read the log's head")?;
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut out: Box<dyn Write> = match to {
            Export::File(Some(p)) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(&p).with_context(|| format!("create {}", p.display()))?,
            )),
            Export::File(None) => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            Export::To(tx) => Box::new(std::io::BufWriter::with_capacity(1 << 16, Sender(tx))),
        };
        let mut from = 0u64;
        let mut failed: Option<(u64, u64, semel_postgres::PgError)> = None;
        let mut next = || {
            let to = (from + 10_000).min(size);
            if from >= to {
                return Ok(Vec::new());
            }
            let read = if checked {
                rt.block_on(pg.checked_encodings(from, to))
            } else {
                rt.block_on(pg.encodings(from, to))
            };
            let batch = read.map_err(|e| {
                let why = format!("read entries {from}..{to}: {e}");
                failed = Some((from, to, e));
                semel_store::verify::VerifyFailure::Input(why)
            })?;
            from = to;
            Ok(batch)
        };
        let exported =
            semel_store::verify::export_entries(&checkpoints, &mut next, format, None, &mut out);
        if let Some((from, to, e)) = failed {
            return Err(anyhow::Error::new(e).context(format!("read entries {from}..{to}")));
        }
        let n = exported.map_err(|e| anyhow::anyhow!("{e}"))?;
        out.flush().context("write the export")?;
        Ok(n)
    })
    .await
    .context("the export task")?
}

pub fn export(store: &Path, output: Option<&Path>, format: &str) -> anyhow::Result<ExitCode> {
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

/// `semel audit new-epoch`: the new log's first entry, on an empty store
/// under a new origin, states the previous origin's newest cosigned
/// checkpoint and the entries lost; a last checkpoint signs it.
pub async fn new_epoch(
    config: &Path,
    previous: &Path,
    held: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = semel_server::Config::load(config)?;
    let note = std::fs::read_to_string(previous)
        .with_context(|| format!("read the previous checkpoint {}", previous.display()))?;
    let statement = semel_core::epoch::EpochStatement::new(&note, held)?;
    let signer = config.checkpoint_signer()?;
    let origin = signer.name().to_owned();
    if statement.previous.origin == origin {
        anyhow::bail!(
            "audit.origin is still {origin}, the previous log's: a new epoch has a new origin (e.g. {origin}/epoch-2); set it in the configuration"
        );
    }
    let verifier_key = signer.verifier_key();
    let verifier = semel_core::checkpoint::NoteVerifier::parse(&verifier_key)
        .map_err(|e| anyhow::anyhow!("the checkpoint key: {e}"))?;
    let same_key = statement.signed_by_same_key(&verifier)?;
    let opened = match config.store.postgresql() {
        None => {
            semel_server::stores::open_embedded(
                config.data_dir.clone(),
                config.checkpoint_settings()?,
            )
            .await?
        }
        Some(url) => {
            // No scrub: the command writes one entry and stops.
            let mut settings = config.pg_settings();
            settings.scrub.entries_per_second = 0;
            semel_server::stores::open_postgresql(url, signer, settings).await?
        }
    };
    let storage = &opened.storage;
    let begun =
        semel_server::stores::begin_epoch(storage, config.operator_kbo()?, &statement).await;
    // A last checkpoint signs the statement (or whatever was appended).
    let closed = storage.audit.close().await;
    let sequence = begun?;
    closed.context("sign the new epoch's first checkpoint")?;
    let lost = statement.lost();
    if json {
        outln!(
            "{}",
            serde_json::json!({
                "origin": origin,
                "verifier_key": verifier_key,
                "statement_entry": sequence,
                "previous_origin": statement.previous.origin,
                "previous_size": statement.previous.size,
                "lost_from": lost.start,
                "lost_to": lost.end,
                "previous_signed_by_this_key": same_key,
            })
        );
    } else {
        outln!(
            "new epoch {origin}: entry {sequence} states that it follows {} (cosigned at {} entries) and that entries {} to {} ({} entries) were lost",
            statement.previous.origin,
            statement.previous.size,
            lost.start,
            lost.end - 1,
            lost.end - lost.start
        );
        outln!("verifier key (give it to the witnesses and auditors): {verifier_key}");
        if !same_key {
            outln!(
                "note: the previous checkpoint is not signed by this key: auditors check it with the previous verifier key"
            );
        }
    }
    Ok(Exit::Done.into())
}
