//! Witnesses of the audit log (c2sp.org/tlog-witness): an independent
//! party (the supervisory commission, the data-protection authority) keeps
//! the last checkpoint of the log it saw and cosigns a new one only when a
//! consistency proof shows the new one extends it. An operator who rewrites
//! or rolls back the log, keys in hand, cannot get the new history cosigned,
//! and auditors who require cosignatures see the difference.
//!
//! Both sides live here: the witness's HTTP service (`semel witness serve`)
//! and the broker's client, which submits every new checkpoint to the
//! configured witnesses and keeps the cosignatures with it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use semel_core::checkpoint::{
    AddCheckpoint, Checkpoint, Cosigner, NoteVerifier, WitnessRefusal, b64, witness_decide,
};
use serde::{Deserialize, Serialize};

/// What a witness remembers of each log: its last cosigned checkpoint.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WitnessState {
    logs: BTreeMap<String, Seen>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Seen {
    size: u64,
    /// Base64 root hash.
    root: String,
    /// The note as cosigned, for the record.
    note: String,
}

/// A witness: its key, the logs it follows, and what it has seen.
pub struct Witness {
    cosigner: Cosigner,
    logs: HashMap<String, NoteVerifier>,
    state: Mutex<WitnessState>,
    state_path: PathBuf,
    /// How many checkpoints it refused as inconsistent with what it
    /// cosigned (evidence of a rewritten or rolled-back log).
    inconsistent: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness")
            .field("name", &self.cosigner.name())
            .finish_non_exhaustive()
    }
}

impl Witness {
    /// Opens (or creates) a witness in `dir`: `witness.key` (Ed25519,
    /// PKCS#8) and `state.json`, following the logs of these verifier keys.
    pub fn open(dir: &Path, name: &str, logs: &[String]) -> anyhow::Result<Witness> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let key = semel_store::load_or_create_signing_key(&dir.join("witness.key"))?;
        let mut followed = HashMap::new();
        for vkey in logs {
            let v =
                NoteVerifier::parse(vkey).map_err(|e| anyhow::anyhow!("log key {vkey}: {e}"))?;
            followed.insert(v.name().to_owned(), v);
        }
        let state_path = dir.join("state.json");
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("read {}", state_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => WitnessState::default(),
            Err(e) => return Err(e).with_context(|| format!("read {}", state_path.display())),
        };
        Ok(Witness {
            cosigner: Cosigner::new(name, key),
            logs: followed,
            state: Mutex::new(state),
            state_path,
            inconsistent: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many checkpoints this witness refused since it opened because
    /// they were inconsistent with what it cosigned (a fork, a failed
    /// consistency proof): each is logged as a warning.
    pub fn inconsistent(&self) -> u64 {
        self.inconsistent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The size of the newest checkpoint of `origin` it cosigned (0: none).
    pub fn cosigned_size(&self, origin: &str) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .logs
            .get(origin)
            .map_or(0, |s| s.size)
    }

    /// The witness's verifier key, for brokers and auditors.
    pub fn verifier_key(&self) -> String {
        self.cosigner.verifier_key()
    }

    /// Handles an `add-checkpoint` body: the cosignature line, or the HTTP
    /// status and body of the refusal. Checking against the last cosigned
    /// checkpoint and recording the new one happen under one lock, and the
    /// new one is durable before the cosignature leaves.
    pub fn add_checkpoint(&self, body: &str) -> Result<String, (StatusCode, String)> {
        let refuse = |r: WitnessRefusal| -> (StatusCode, String) {
            match r {
                WitnessRefusal::BadRequest(m) => (StatusCode::BAD_REQUEST, format!("{m}\n")),
                WitnessRefusal::UnknownLog => (
                    StatusCode::NOT_FOUND,
                    "this witness does not follow that log\n".into(),
                ),
                WitnessRefusal::Forbidden => (
                    StatusCode::FORBIDDEN,
                    "no signature by the log's key verifies\n".into(),
                ),
                WitnessRefusal::Conflict(size) => (StatusCode::CONFLICT, format!("{size}\n")),
                WitnessRefusal::BadProof => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "the consistency proof does not verify\n".into(),
                ),
            }
        };
        let req = AddCheckpoint::parse(body).map_err(refuse)?;
        let origin = req.note.split('\n').next().unwrap_or_default();
        let log = self
            .logs
            .get(origin)
            .ok_or_else(|| refuse(WitnessRefusal::UnknownLog))?;
        let checkpoint = log
            .verify(&req.note)
            .map_err(|_| refuse(WitnessRefusal::Forbidden))?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let last = state.logs.get(origin).map(|s| Checkpoint {
            origin: origin.to_owned(),
            size: s.size,
            root: b64::decode(&s.root)
                .and_then(|r| r.try_into().ok())
                .unwrap_or([0; 32]),
        });
        if let Err(r) = witness_decide(last.as_ref(), req.old, &req.proof, &checkpoint) {
            // A 409 to a client that offered another old size than the one
            // cosigned is how the protocol tells a client what it does not
            // know yet (every broker after a restart asks from 0): not
            // evidence of anything. Evidence is a proof that fails, or the
            // same size as cosigned, asked from it, with another root.
            let forked = matches!(r, WitnessRefusal::Conflict(_))
                && last
                    .as_ref()
                    .is_some_and(|l| l.size == req.old && l.size == checkpoint.size);
            if matches!(r, WitnessRefusal::BadProof) || forked {
                // Evidence of a log that rewrote its history: kept in the
                // witness's log for its operator.
                self.inconsistent
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    origin,
                    cosigned = last.as_ref().map_or(0, |l| l.size),
                    offered = checkpoint.size,
                    "refused a checkpoint inconsistent with the one cosigned before"
                );
            }
            return Err(refuse(r));
        }
        state.logs.insert(
            origin.to_owned(),
            Seen {
                size: checkpoint.size,
                root: b64::encode(&checkpoint.root),
                note: req.note.clone(),
            },
        );
        let bytes = serde_json::to_vec_pretty(&*state).map_err(|e| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encode the state: {e}\n"),
            )
        })?;
        if let Err(e) = write_durably(&self.state_path, &bytes) {
            // Not recorded: not cosigned. Reload what is on disk.
            state.logs.remove(origin);
            if let Some(l) = last {
                state.logs.insert(
                    origin.to_owned(),
                    Seen {
                        size: l.size,
                        root: b64::encode(&l.root),
                        note: String::new(),
                    },
                );
            }
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the witness cannot record the checkpoint: {e}\n"),
            ));
        }
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(self.cosigner.cosign(&checkpoint, time))
    }
}

fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Serves `POST /add-checkpoint` (plain HTTP: the protocol's integrity rests
/// on signatures, and checkpoints are public) until `shutdown`.
pub async fn serve_witness(
    listener: tokio::net::TcpListener,
    witness: Arc<Witness>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(url = %format!("http://{addr}"), name = witness.cosigner.name(), "witness listening");
    }
    let app = axum::Router::new()
        .route(
            "/add-checkpoint",
            axum::routing::post(move |body: String| {
                let witness = witness.clone();
                async move {
                    let result =
                        tokio::task::spawn_blocking(move || witness.add_checkpoint(&body)).await;
                    let (status, body) = match result {
                        Ok(Ok(lines)) => (StatusCode::OK, lines),
                        Ok(Err(refusal)) => refusal,
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                    };
                    let content_type = if status == StatusCode::CONFLICT {
                        "text/x.tlog.size"
                    } else {
                        "text/plain; charset=utf-8"
                    };
                    (
                        status,
                        [(axum::http::header::CONTENT_TYPE, content_type)],
                        body,
                    )
                }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

pub use semel_config::settings::WitnessTarget;

/// What a witness answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Its cosignature lines.
    Cosigned(String),
    /// It has cosigned this size last: submit again from it.
    Conflict(u64),
    /// Anything else: the status and the body.
    Refused(u16, String),
}

/// The largest answer read from a witness.
const MAX_ANSWER: usize = 64 * 1024;

/// Submits one `add-checkpoint` request.
pub async fn submit(url: &str, req: &AddCheckpoint) -> anyhow::Result<Submitted> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<hyper::body::Bytes>>();
    let uri = format!("{}/add-checkpoint", url.trim_end_matches('/'));
    let request = hyper::Request::post(&uri)
        .header("content-type", "text/plain; charset=utf-8")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(
            req.body(),
        )))
        .with_context(|| format!("build a request to {uri}"))?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .with_context(|| format!("{uri} did not answer within 10 s"))?
        .with_context(|| format!("reach {uri}"))?;
    let status = response.status().as_u16();
    // A witness answers a few signature lines: an answer larger than that
    // is read no further (a witness that misbehaves cannot fill memory).
    let limited = http_body_util::Limited::new(response.into_body(), MAX_ANSWER);
    let body = tokio::time::timeout(Duration::from_secs(10), limited.collect())
        .await
        .with_context(|| format!("{uri}: the answer did not arrive within 10 s"))?
        .map_err(|e| anyhow::anyhow!("read the answer of {uri}: {e} (at most {MAX_ANSWER} bytes)"))?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    Ok(match status {
        200 => Submitted::Cosigned(body),
        409 => match body.trim().parse() {
            Ok(size) => Submitted::Conflict(size),
            Err(_) => Submitted::Refused(status, body),
        },
        _ => Submitted::Refused(status, body),
    })
}

pub use semel_config::settings::WitnessSettings;

/// What one witness said of the log's newest checkpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum Reconciled {
    /// It cosigned it: its cosignature lines.
    Confirmed(String),
    /// It cosigned a larger checkpoint than the log's newest: the log lost
    /// entries it had signed (a restore, a standby that was behind).
    Behind { witness: u64, log: u64 },
    /// It cosigned another checkpoint of the same size: a fork.
    Forked { size: u64 },
    /// It refused the proof that the log extends what it cosigned: the
    /// entries it saw were rewritten.
    Inconsistent { witness: u64, log: u64 },
    /// Another refusal (400, 403, 404): the status and the answer.
    Refused(u16, String),
    /// No usable answer (not reached, a 5xx, a cosignature that does not
    /// verify, no proof to offer): not evidence of anything.
    Unreachable(String),
}

/// Asks one witness to cosign `latest`, from the size it last cosigned
/// (`known`, learnt from its 409 when it is not known yet, as the protocol
/// intends), with a consistency proof: the answer shows whether the log is
/// consistent with the newest checkpoint the witness cosigned for it.
pub async fn reconcile(
    audit: &dyn semel_storage::AuditStore,
    target: &WitnessTarget,
    known: &mut u64,
    latest: &semel_storage::SignedCheckpoint,
) -> Reconciled {
    let size = latest.checkpoint.size;
    for _ in 0..4 {
        let old = *known;
        if old > size {
            return Reconciled::Behind {
                witness: old,
                log: size,
            };
        }
        let proof = if old == 0 || old == size {
            Vec::new()
        } else {
            match audit.consistency_proof(old, size).await {
                Ok(p) => p,
                Err(e) => {
                    return Reconciled::Unreachable(format!(
                        "no consistency proof from {old} to {size} entries: {e}"
                    ));
                }
            }
        };
        let req = AddCheckpoint {
            old,
            proof,
            note: latest.note.clone(),
        };
        match submit(&target.url, &req).await {
            Ok(Submitted::Cosigned(lines)) => {
                if target
                    .key
                    .verify(&format!("{}{lines}", latest.note))
                    .is_ok()
                {
                    *known = size;
                    return Reconciled::Confirmed(lines);
                }
                return Reconciled::Unreachable(
                    "it answered with a cosignature that does not verify with its key".into(),
                );
            }
            // Its size is the one offered, yet it refuses: the same size
            // with another root.
            Ok(Submitted::Conflict(at)) if at == old && at == size => {
                return Reconciled::Forked { size };
            }
            Ok(Submitted::Conflict(at)) if at == old => {
                return Reconciled::Refused(409, format!("{at}"));
            }
            Ok(Submitted::Conflict(at)) => *known = at,
            Ok(Submitted::Refused(422, _)) => {
                return Reconciled::Inconsistent {
                    witness: old,
                    log: size,
                };
            }
            Ok(Submitted::Refused(status, body)) if status >= 500 || status == 429 => {
                return Reconciled::Unreachable(format!("it answered {status}: {}", body.trim()));
            }
            Ok(Submitted::Refused(status, body)) => {
                return Reconciled::Refused(status, body.trim().to_owned());
            }
            Err(e) => return Reconciled::Unreachable(format!("{e:#}")),
        }
    }
    Reconciled::Unreachable("its size kept changing while it was asked".into())
}

/// What to do about the log after asking the witnesses.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A quorum confirmed the newest checkpoint (or there is none yet).
    Confirmed,
    /// Too few witnesses answered: why.
    Unconfirmed(String),
    /// Witnesses saw another history than this log's: what to say.
    Refused(String),
}

/// What the operator is told to do when witnesses saw more or another
/// history than the log holds.
pub const RECOVERY: &str = "restore the newest copy of the log, or replay the missing entries from the standby or an export, then restart; if they are lost for good, start a new log under a new origin (operator guide, \"The log is behind or forked from its witnesses\")";

/// The broker's side of witnessing: what each witness cosigned, and since
/// when the log has gone unconfirmed or refused.
#[derive(Debug)]
pub struct Witnessing {
    settings: WitnessSettings,
    known: Vec<u64>,
    /// The size each witness confirmed last (in this process).
    confirmed: Vec<u64>,
    /// Since when too few witnesses confirmed; `None` while a quorum does.
    unconfirmed_since: Option<std::time::Instant>,
    /// Since when witnesses refuse the log's checkpoints.
    refused_since: Option<std::time::Instant>,
    /// Whether a quorum has confirmed the log since the broker started.
    started: bool,
}

/// The readiness condition witnessing sets.
pub const CONDITION: &str = "witnesses";

impl Witnessing {
    pub fn new(settings: WitnessSettings) -> Witnessing {
        let n = settings.targets.len();
        Witnessing {
            settings,
            known: vec![0; n],
            confirmed: vec![0; n],
            unconfirmed_since: None,
            refused_since: None,
            started: false,
        }
    }

    pub fn settings(&self) -> &WitnessSettings {
        &self.settings
    }

    /// Asks every witness that has not confirmed the newest checkpoint yet
    /// about it; keeps their cosignatures with it.
    pub async fn round(&mut self, audit: &dyn semel_storage::AuditStore) -> Verdict {
        let mut restarts = 0;
        'again: loop {
            let latest = match audit.latest_checkpoint().await {
                Ok(Some(latest)) => latest,
                // Nothing signed yet: nothing a witness could contradict.
                // The first checkpoint is asked about within an interval.
                Ok(None) => {
                    self.started = true;
                    return Verdict::Confirmed;
                }
                Err(e) => {
                    return Verdict::Unconfirmed(format!(
                        "the log's newest checkpoint cannot be read: {e}"
                    ));
                }
            };
            let size = latest.checkpoint.size;
            let mut cosigned = latest.note.clone();
            let mut confirmed = 0;
            let mut refusals = Vec::new();
            let mut unreachable = Vec::new();
            for (i, w) in self.settings.targets.iter().enumerate() {
                if self.confirmed[i] == size {
                    confirmed += 1;
                    continue;
                }
                match reconcile(audit, w, &mut self.known[i], &latest).await {
                    Reconciled::Confirmed(lines) => {
                        cosigned.push_str(&lines);
                        self.confirmed[i] = size;
                        confirmed += 1;
                    }
                    Reconciled::Behind { witness, log } => {
                        // On a shared database another broker may have
                        // signed a newer checkpoint meanwhile: ask again
                        // about the newest before calling it a rollback.
                        if restarts < 2
                            && let Ok(Some(newer)) = audit.latest_checkpoint().await
                            && newer.checkpoint.size > size
                        {
                            restarts += 1;
                            continue 'again;
                        }
                        refusals.push(format!(
                            "the audit log is behind what its witnesses cosigned: witness {url} cosigned a checkpoint of {witness} entries, this log's newest checkpoint holds {log}; entries {log} to {last} it signed are missing (a restore from an older copy, or a standby that was behind promoted); {RECOVERY}",
                            url = w.url,
                            last = witness - 1,
                        ));
                    }
                    Reconciled::Forked { size } => refusals.push(format!(
                        "the audit log forked from what its witnesses cosigned: witness {url} cosigned another checkpoint of {size} entries than this log's checkpoint of {size} entries (same size, another root): entries were rewritten or lost and replaced; {RECOVERY}",
                        url = w.url,
                    )),
                    Reconciled::Inconsistent { witness, log } => refusals.push(format!(
                        "the audit log forked from what its witnesses cosigned: witness {url} cosigned a checkpoint of {witness} entries and refuses the proof that this log's checkpoint of {log} entries extends it: entries it saw were rewritten, or lost and replaced; {RECOVERY}",
                        url = w.url,
                    )),
                    Reconciled::Refused(status, answer) => refusals.push(format!(
                        "witness {url} refuses the checkpoint of {size} entries ({status}: {answer}); check that it follows this log's key (audit.origin and the verifier key)",
                        url = w.url,
                    )),
                    Reconciled::Unreachable(why) => {
                        unreachable.push(format!("{}: {why}", w.url));
                    }
                }
            }
            if cosigned != latest.note
                && let Err(e) = audit.set_cosigned(&cosigned).await
            {
                tracing::error!(error = %e, "cosigned checkpoint not kept");
            }
            let now = std::time::Instant::now();
            if !refusals.is_empty() {
                let since = *self.refused_since.get_or_insert(now);
                let why = refusals.join("; ");
                if now.duration_since(since) >= self.settings.refusal_grace {
                    return Verdict::Refused(why);
                }
                tracing::error!(reason = %why, grace_ms = self.settings.refusal_grace.as_millis() as u64, "witnesses refuse the log's checkpoint; the log halts if they still do after the grace");
            } else {
                self.refused_since = None;
            }
            if confirmed >= self.settings.quorum && refusals.is_empty() {
                self.started = true;
                self.unconfirmed_since = None;
                return Verdict::Confirmed;
            }
            let since = *self.unconfirmed_since.get_or_insert(now);
            let why = format!(
                "{confirmed} of the {} witnesses (quorum {}) confirmed the checkpoint of {size} entries{}{}",
                self.settings.targets.len(),
                self.settings.quorum,
                if unreachable.is_empty() {
                    ""
                } else {
                    "; not reached: "
                },
                unreachable.join("; "),
            );
            if !self.started || now.duration_since(since) >= self.settings.unconfirmed_bound {
                return Verdict::Unconfirmed(why);
            }
            if since == now {
                tracing::warn!(reason = %why, "witnesses not reached; the broker goes on serving within audit.witness_unreachable_ms");
            }
            return Verdict::Confirmed;
        }
    }
}

#[cfg(test)]
mod answer_tests {
    use super::*;

    /// A witness whose answer never ends is read no further than
    /// `MAX_ANSWER`: the submission fails, memory stays bounded.
    #[tokio::test]
    async fn a_witness_answer_is_read_to_a_bound() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route(
            "/add-checkpoint",
            axum::routing::post(|| async { "x".repeat(4 * MAX_ANSWER) }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let req = AddCheckpoint {
            old: 0,
            proof: Vec::new(),
            note: "semel.test/log\n1\nAAAA\n\n— semel.test/log AAAA\n".into(),
        };
        let err = submit(&format!("http://{addr}"), &req)
            .await
            .expect_err("an answer too large");
        assert!(err.to_string().contains("at most"), "{err:#}");
    }
}

#[cfg(test)]
mod witness_tests {
    use super::*;
    use semel_core::checkpoint::NoteSigner;

    fn signer(dir: &Path) -> NoteSigner {
        let key = semel_store::load_or_create_signing_key(&dir.join("log.key")).expect("key");
        NoteSigner::new("semel.test/audit", key)
    }

    fn checkpoint(size: u64, root: u8) -> Checkpoint {
        Checkpoint {
            origin: "semel.test/audit".into(),
            size,
            root: [root; 32],
        }
    }

    /// A broker that restarts asks from 0 and learns the witness's size
    /// from its 409, as the protocol intends: that is no evidence of
    /// anything, and the witness says nothing of it (the demo's witness
    /// used to log "refused a checkpoint inconsistent … cosigned=98
    /// offered=98" at every clean restart). The same size asked from it
    /// with another root is a fork, and is said.
    #[test]
    fn a_restarting_broker_learning_the_size_is_not_called_a_fork() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = signer(dir.path());
        let w = Witness::open(
            &dir.path().join("w"),
            "witness.test/w",
            &[log.verifier_key()],
        )
        .expect("open");
        let note = log.sign(&checkpoint(1, 1));
        let ask = |old: u64, note: &str| {
            w.add_checkpoint(
                &AddCheckpoint {
                    old,
                    proof: Vec::new(),
                    note: note.to_owned(),
                }
                .body(),
            )
        };
        ask(0, &note).expect("first sight");
        assert_eq!(w.cosigned_size("semel.test/audit"), 1);
        // A restart: the same checkpoint, asked from 0.
        let (status, body) = ask(0, &note).expect_err("the client must learn the size");
        assert_eq!((status, body.trim()), (StatusCode::CONFLICT, "1"));
        assert_eq!(w.inconsistent(), 0, "learning the size is not a fork");
        // Asked again from the size learnt: the same root is cosigned again.
        ask(1, &note).expect("the same checkpoint again");
        assert_eq!(w.inconsistent(), 0);
        // The same size with another root: a fork, refused and counted.
        let fork = log.sign(&checkpoint(1, 2));
        let (status, _) = ask(1, &fork).expect_err("a fork");
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(w.inconsistent(), 1);
    }
}
