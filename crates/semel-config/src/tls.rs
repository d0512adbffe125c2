//! `[tls]` and `[operator]`: the broker's certificate, key and client CAs,
//! when they are reloaded, and the organisation running it.

use std::path::PathBuf;
use std::time::Duration;

use semel_core::Kbo;
use serde::Deserialize;

use super::Config;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The broker's certificate chain (PEM). It also identifies the broker to sources.
    pub cert: PathBuf,
    /// The broker's private key (PEM).
    pub key: PathBuf,
    /// CA bundle that organisations' client certificates must chain to.
    pub client_ca: PathBuf,
    /// Certificate revocation lists (PEM or DER files) of those CAs and
    /// their intermediates: a client certificate one of them lists fails
    /// the handshake. Reloaded with the CA bundle.
    #[serde(default)]
    pub client_crls: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorSection {
    pub kbo: String,
    pub name: String,
}

impl Config {
    /// The files reloaded on change or SIGHUP.
    pub fn reload_poll(&self) -> Option<Duration> {
        (self.reload_poll_ms > 0).then(|| Duration::from_millis(self.reload_poll_ms))
    }

    pub fn operator_kbo(&self) -> anyhow::Result<Kbo> {
        Kbo::parse(&self.operator.kbo).map_err(|e| anyhow::anyhow!("operator.kbo: {e}"))
    }
}
