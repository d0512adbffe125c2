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
    AddCheckpoint, Checkpoint, CosignatureVerifier, Cosigner, NoteVerifier, WitnessRefusal, b64,
    witness_decide,
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
        })
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
            if matches!(r, WitnessRefusal::BadProof)
                || (matches!(r, WitnessRefusal::Conflict(_))
                    && last.as_ref().is_some_and(|l| l.size == checkpoint.size))
            {
                // Evidence of a log that rewrote its history: kept in the
                // witness's log for its operator.
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

/// A witness the broker submits its checkpoints to.
#[derive(Debug, Clone)]
pub struct WitnessTarget {
    /// The submission prefix, e.g. `http://witness.example:8701`.
    pub url: String,
    pub key: CosignatureVerifier,
}

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
