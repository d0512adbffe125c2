//! Reloading the broker's certificate and key, the CA bundles with their
//! revocation lists, and the issuers' keys while it runs: on SIGHUP, and
//! when a file changes. Nothing is swapped unless everything loads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::state::Broker;
use crate::tls::{self, TlsFiles};
use crate::tokens::{TokenSettings, TokenVerifier};

/// The files the broker can reload while it runs: its certificate and key,
/// the CA bundles with their revocation lists, and the issuers' keys.
#[derive(Debug, Clone)]
pub struct ReloadFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    /// CRLs of the client CAs (`tls.client_crls`).
    pub client_crls: Vec<PathBuf>,
    pub sources_ca: PathBuf,
    /// CRLs of the sources' CAs (`sources.crls`).
    pub sources_crls: Vec<PathBuf>,
    pub tokens: TokenSettings,
}

impl ReloadFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![
            self.cert.as_path(),
            self.key.as_path(),
            self.client_ca.as_path(),
            self.sources_ca.as_path(),
        ];
        paths.extend(self.client_crls.iter().map(PathBuf::as_path));
        paths.extend(self.sources_crls.iter().map(PathBuf::as_path));
        paths.extend(self.tokens.issuers.iter().map(|i| i.jwks.as_path()));
        paths
    }
}

/// Reloads certificates and keys without a restart. Nothing is swapped
/// unless everything loads: a half-written file leaves the running
/// configuration in place (and is retried on the next change).
pub struct Reloader {
    files: ReloadFiles,
    broker: Arc<Broker>,
    /// The TLS server config each new connection uses.
    pub tls: Arc<ArcSwap<rustls::ServerConfig>>,
    stamps: Mutex<Vec<Option<(std::time::SystemTime, u64)>>>,
}

impl Reloader {
    /// Watches `files`, whose current load is `tls` (the broker holds the
    /// rest of it).
    pub fn new(
        files: ReloadFiles,
        broker: Arc<Broker>,
        tls: Arc<rustls::ServerConfig>,
    ) -> Arc<Reloader> {
        let stamps = Mutex::new(stamps(&files));
        Arc::new(Reloader {
            files,
            broker,
            tls: Arc::new(ArcSwap::from(tls)),
            stamps,
        })
    }

    /// Reloads every file now.
    pub fn reload(&self) -> anyhow::Result<()> {
        let now = stamps(&self.files);
        let (tls, source_tls, tokens) = load_all(&self.files)?;
        // All or nothing: the one step that can fail comes first (the
        // sources' channels, rebuilt with the new configuration and put
        // back as they were if one cannot be); only then are the server's
        // TLS configuration and the token verifier swapped, which cannot.
        self.broker
            .set_source_tls(source_tls)
            .map_err(|e| anyhow::anyhow!("reconnect to sources: {}", e.message))?;
        self.tls.store(tls);
        self.broker.set_tokens(Arc::new(tokens));
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) = now;
        tracing::info!("certificates, CA bundles, revocation lists and issuers' keys reloaded");
        Ok(())
    }

    /// Reloads if a file changed since the last load.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let now = stamps(&self.files);
        if *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) == now {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// Reloads on SIGHUP, and when a file changes if `poll` is set, until
    /// the task is aborted. The SIGHUP handler is installed before this
    /// returns, so the broker never dies of a SIGHUP once it serves.
    pub fn watch(self: Arc<Self>, poll: Option<Duration>) -> tokio::task::JoinHandle<()> {
        #[cfg(unix)]
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        tokio::spawn(self.watch_loop(poll, hangup))
    }

    async fn watch_loop(
        self: Arc<Self>,
        poll: Option<Duration>,
        #[cfg(unix)] mut hangup: Option<tokio::signal::unix::Signal>,
    ) {
        let mut tick = tokio::time::interval(poll.unwrap_or(Duration::from_secs(3600)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<()>();
            // Reloading reads files and the registry: off the async workers.
            let forced = tokio::select! {
                () = hup => {
                    tracing::info!("SIGHUP: reloading certificates and keys");
                    true
                }
                _ = tick.tick(), if poll.is_some() => false,
            };
            let me = self.clone();
            let result = tokio::task::spawn_blocking(move || {
                if forced {
                    me.reload().map(|()| true)
                } else {
                    me.reload_if_changed()
                }
            })
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("reload task failed: {e}")));
            if let Err(e) = result {
                tracing::error!(error = %format!("{e:#}"), "reload failed; the running certificates and keys stay in use");
            }
        }
    }
}

fn stamps(files: &ReloadFiles) -> Vec<Option<(std::time::SystemTime, u64)>> {
    files
        .paths()
        .into_iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// What [`load_all`] reads: the server TLS config, the client TLS config
/// for sources, and the token verifier.
pub type Loaded = (
    Arc<rustls::ServerConfig>,
    Arc<rustls::ClientConfig>,
    TokenVerifier,
);

/// Loads every reloadable file; fails if anything is unusable.
pub fn load_all(files: &ReloadFiles) -> anyhow::Result<Loaded> {
    let tls = tls::server_config(&TlsFiles {
        cert: &files.cert,
        key: &files.key,
        client_ca: &files.client_ca,
        client_crls: &files.client_crls,
    })?;
    let source_tls = tls::source_client_config(
        &files.sources_ca,
        &files.sources_crls,
        &files.cert,
        &files.key,
    )?;
    let tokens = TokenVerifier::load(&files.tokens)?;
    Ok((tls, source_tls, tokens))
}

/// The files [`Reloader`] watches, as the configuration names them.
pub(super) fn reload_files(config: &Config) -> anyhow::Result<ReloadFiles> {
    Ok(ReloadFiles {
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
        client_ca: config.tls.client_ca.clone(),
        client_crls: config.tls.client_crls.clone(),
        sources_ca: config.sources_ca().to_path_buf(),
        sources_crls: config.sources.crls.clone(),
        tokens: config.token_settings()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reload reads and checks every file before it swaps anything: a
    /// sources' CA that cannot be read fails the load, so the running TLS
    /// configuration, token keys and source channels stay (issue 35,
    /// finding 11; `Reloader::reload` swaps only after `load_all`, and the
    /// sources' channels, the one step that can still fail, first).
    #[test]
    fn an_unreadable_sources_ca_fails_the_load_before_anything_is_swapped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kbo = semel_core::Kbo::parse("0212345668").expect("kbo");
        let pki = semel_demo::pki::DevPki::ensure(
            &dir.path().join("pki"),
            &[semel_demo::pki::Subject {
                file_stem: "broker",
                kbo,
                name: "Broker",
            }],
        )
        .expect("pki");
        let broker = pki.files("broker");
        let bad_ca = dir.path().join("sources-ca.crt");
        std::fs::write(
            &bad_ca,
            "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let files = |sources_ca: PathBuf| ReloadFiles {
            cert: broker.cert.clone(),
            key: broker.key.clone(),
            client_ca: pki.ca_cert(),
            client_crls: Vec::new(),
            sources_ca,
            sources_crls: Vec::new(),
            tokens: TokenSettings {
                audience: "semel".into(),
                leeway_s: 30,
                issuers: Vec::new(),
            },
        };
        assert!(load_all(&files(pki.ca_cert())).is_ok());
        assert!(load_all(&files(bad_ca)).is_err());
    }
}
